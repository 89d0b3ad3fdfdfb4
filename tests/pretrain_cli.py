"""Helpers for the tests that run the pretraining CLI as real processes (kill, restart, several processes)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def pretrain_command(workdir: str, *overrides: str, config: str = "bert_tiny.py") -> list[str]:
    """`python -m bert_jax_tools.pretrain --config=experiments/<config> --workdir=<workdir> <overrides>`."""
    return [
        sys.executable,
        "-m",
        "bert_jax_tools.pretrain",
        f"--config={REPO_ROOT / 'experiments' / config}",
        f"--workdir={workdir}",
        *overrides,
    ]


def kill_all(processes: list[subprocess.Popen]) -> None:
    """SIGKILL every process still running, and reap them all."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def stderr_text(process: subprocess.Popen, limit: int = 3000) -> str:
    """The tail of a process's stderr captured in a temporary file (`stderr=tempfile.TemporaryFile("w+")`,
    kept as `process.stderr_file`)."""
    process.stderr_file.seek(0)
    return process.stderr_file.read()[-limit:]
