"""The corpus build's progress bar: silent on short work, a redrawn line on terminals, plain lines in logs."""

from __future__ import annotations

import io

from bert_jax.data.progress import ProgressBar


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_short_work_prints_nothing():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar("Tokenizing", 10e6, delay=2.0, stream=out, clock=clock)
    for done in range(1, 11):
        clock.now += 0.1  # 1 s in all: under the delay
        bar.update(done * 1e6)
    bar.close()
    assert out.getvalue() == ""


def test_log_lines_at_most_every_interval_with_rate_and_time_left():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar("Tokenizing", 100e6, delay=2.0, log_every=30.0, stream=out, clock=clock)
    for second in range(1, 101):  # 1 MB/s for 100 s
        clock.now += 1.0
        bar.update(second * 1e6)
    bar.close()
    lines = out.getvalue().splitlines()
    # first draw after the delay (t=2 s), then every 30 s: t = 2, 32, 62, 92
    assert len(lines) == 4, lines
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[1].startswith("Tokenizing:  32%") and "32.0/100.0 MB" in lines[1]
    assert "1.00 MB/s" in lines[1] and "1m08s left" in lines[1]


def test_terminal_redraws_one_line_and_clears_it_at_the_end():
    clock, out = FakeClock(), FakeTerminal()
    bar = ProgressBar("Tokenizing", 10e6, delay=0.0, stream=out, clock=clock)
    for step in range(1, 11):
        clock.now += 1.0
        bar.update(step * 1e6)
    bar.close()
    text = out.getvalue()
    assert "\n" not in text  # one line, redrawn in place
    assert text.count("\r") == 11  # 10 draws + the clearing at close
    assert "[" + "#" * 24 + "]" in text and text.endswith("\r\x1b[K")


def test_progress_never_passes_the_total():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar("Writing", 50, unit="documents", scale=1.0, delay=0.0, stream=out, clock=clock)
    clock.now += 1.0
    bar.update(80)
    assert out.getvalue().startswith("Writing: 100%") and "50.0/50.0 documents" in out.getvalue()
