"""A progress bar of our own for long host-side work (the corpus build), quiet when the work is short.

TFDS's tqdm bars are disabled while we build (they print escape codes into logs and show TFDS's internal
phases); this one reports what a user cares about: how much of the input is done, how fast, how long is left.
It stays silent for the first `delay` seconds, so a build of the demo corpus prints nothing but its result
line. On a terminal it redraws one line in place; into a file or a pipe it writes a plain line at most every
`log_every` seconds, so CI logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressBar:
    """`update(done)` with `done` in units of `total` (bytes here); `close()` ends the line."""

    def __init__(
        self,
        label: str,
        total: float,
        *,
        unit: str = "MB",
        scale: float = 1e6,
        delay: float = 2.0,
        log_every: float = 30.0,
        stream: TextIO | None = None,
        clock=time.monotonic,
    ):
        self._label, self._total, self._unit, self._scale = label, max(float(total), 1.0), unit, scale
        self._delay, self._log_every = delay, log_every
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._clock = clock
        self._start = clock()
        self._last_draw: float | None = None
        self._done = 0.0
        self._drawn = False

    def update(self, done: float) -> None:
        """Records progress; draws when the work has run longer than `delay` and a redraw is due."""
        self._done = min(float(done), self._total)
        now = self._clock()
        if now - self._start < self._delay:
            return
        interval = 0.2 if self._tty else self._log_every
        if self._last_draw is not None and now - self._last_draw < interval:
            return
        self._last_draw = now
        self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar: label, percent, a bar on terminals, amount, rate and the time left."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        fraction = self._done / self._total
        rate = self._done / elapsed
        left = (self._total - self._done) / rate if rate > 0 else float("inf")
        eta = _format_duration(left) if left != float("inf") else "?"
        bar = ""
        if self._tty:
            filled = int(fraction * 24)
            bar = " [" + "#" * filled + "." * (24 - filled) + "]"
        return (
            f"{self._label}: {fraction:4.0%}{bar} {self._done / self._scale:,.1f}/{self._total / self._scale:,.1f} "
            f"{self._unit}, {rate / self._scale:,.2f} {self._unit}/s, {eta} left"
        )

    def _draw(self, now: float) -> None:
        text = self.line(now)
        if self._tty:
            self._stream.write("\r" + text + "\x1b[K")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Ends a drawn terminal line (so the next print starts on a fresh line); nothing if never drawn."""
        if self._drawn and self._tty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
