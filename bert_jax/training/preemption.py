"""Stop requests for a training loop: SIGTERM (and Ctrl-C) on one host, the preemption notice on many.

A cluster scheduler preempts a job with SIGTERM and kills it some seconds later. The loop asks
`should_stop(step)` after every step; once it says yes, the loop saves a checkpoint of that step, waits
for it to be written and exits cleanly. The first signal only sets a flag (the step in flight finishes
normally); further signals while stopping are reported and ignored, so an impatient second SIGTERM or
Ctrl-C cannot interrupt the checkpoint being written.

With several processes (`jax.distributed`), every process must stop at the same step, so the decision
comes from JAX's preemption sync manager (`multihost_utils.reached_preemption_sync_point`), which the
coordination service feeds with the SIGTERM any process receives; no signal handler of ours is installed
there.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import jax


class StopRequest:
    """Installs the handlers on creation (main thread only) and puts the previous ones back on `close`."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._multiprocess = jax.process_count() > 1
        if self._multiprocess or threading.current_thread() is not threading.main_thread():
            return
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            print(f"{name} received again: still saving the checkpoint, please wait.", file=sys.stderr, flush=True)
            return
        self.signal_name = name
        print(
            f"{name} received: finishing this step, then saving a checkpoint and exiting.", file=sys.stderr, flush=True
        )

    def should_stop(self, step: int) -> bool:
        """True once a stop was requested (on every process at the same `step` in a multi-process job)."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = self.signal_name or "preemption notice"
                    return True
            except RuntimeError:  # no preemption sync manager in this jax.distributed setup
                return False
            return False
        return self.signal_name is not None

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
