"""Multi-process jobs: when a peer dies, the survivors end with one line that names it, not JAX's fatal dump.

JAX's distributed client aborts a process whose peer stopped sending heartbeats (`heartbeat_timeout_seconds`)
with a C++ fatal error: "Terminating process because the JAX distributed service detected fatal errors ...",
"Fatal Python error: Aborted" and pages of thread stacks and module names. Nothing inside the process can catch
that, so a multi-process entry point runs the job as a child process (`run_supervised`): the child's stdout goes
straight through, its stderr line by line until the fatal marker appears; the dump after it is held back, and the
parent prints one line naming the process that stopped responding and how to resume. SIGTERM (a scheduler, a
preemption notice), SIGHUP and SIGUSR1 are passed on to the child, whose own handlers save a checkpoint; SIGINT
from a terminal reaches the child directly. The child is killed if the parent dies (Linux), leaving no orphan.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

FATAL_MARKER = "Terminating process because the JAX distributed service detected fatal errors"
DUMP_ENV = "BERT_JAX_PEER_DUMP"  # set to 1 to see JAX's dump after the one line too
SUPERVISED_ENV = "BERT_JAX_SUPERVISED"  # set in the child, so that it does not supervise itself again
MULTI_PROCESS_FLAGS = ("--distributed", "--coordinator_address", "--num_processes")
# How JAX 0.10's coordination service names the dead: "The following tasks are unhealthy (stopped sending
# heartbeats):\n1" in a client's poll, "Task 1 heartbeat timeout" when a barrier (e.g. at shutdown) failed.
_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*([\d\s,]+)")
_TIMED_OUT = re.compile(r"Task (\d+) heartbeat timeout")


def wants_supervision(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """A multi-process run (by its flags or `JAX_COORDINATOR_ADDRESS`) that is not already the supervised child."""
    if environ.get(SUPERVISED_ENV):
        return False
    multi = any(arg.split("=", 1)[0] in MULTI_PROCESS_FLAGS for arg in argv if arg != "--nodistributed")
    return multi or bool(environ.get("JAX_COORDINATOR_ADDRESS"))


def peer_failure_line(program: str, dump: str) -> str:
    """The one line for a dump that followed the fatal marker: which process stopped responding, what to do."""
    match = _UNHEALTHY.search(dump)
    ids = [int(i) for i in re.findall(r"\d+", match.group(1))] if match else []
    ids = ids or sorted({int(i) for i in _TIMED_OUT.findall(dump)})
    if ids:
        who = f"process {ids[0]}" if len(ids) == 1 else "processes " + ", ".join(str(i) for i in ids)
    else:
        who = "the coordinator (process 0) or another process"
    return (
        f"{program}: error: {who} stopped responding (no heartbeats: killed, preempted or its host failed), so this "
        "process stopped too. Start every process again with the same command: the job resumes from the latest "
        "complete checkpoint in the workdir."
    )


def run_supervised(command: Sequence[str], environ: Mapping[str, str], program: str) -> NoReturn:
    """Runs `command` as a child and exits with its status; a peer failure ends in `peer_failure_line`."""
    child = subprocess.Popen(
        list(command),
        env={**environ, SUPERVISED_ENV: "1"},
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, lambda number, _frame: child.send_signal(number))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child itself (same process group)
    held: list[str] | None = None  # the fatal dump, once it started
    own_errors: list[str] = []  # the job's own one-line errors: printed at the end unless a peer failure explains them
    assert child.stderr is not None
    for line in child.stderr:
        if held is None and FATAL_MARKER in line:
            held = []
        if held is not None:
            held.append(line)
        elif line.startswith(f"{program}: error:"):
            own_errors.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    status = child.wait()
    if held is not None:
        if os.environ.get(DUMP_ENV):  # the held-back dump, for debugging
            sys.stderr.write("".join(held))
        print(peer_failure_line(program, "".join(held)), file=sys.stderr, flush=True)
        raise SystemExit(1)
    sys.stderr.write("".join(own_errors))
    sys.stderr.flush()
    raise SystemExit(status if status >= 0 else 128 - status)


def _die_with_parent() -> None:
    """In the child (Linux): SIGKILL it when the supervising parent dies, so a killed job leaves no orphan."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def supervise_if_multi_process(program: str) -> None:
    """Entry points call this first: in a multi-process run it does not return (the job runs as a child: this
    interpreter with the same arguments)."""
    if wants_supervision(sys.argv[1:], os.environ) and getattr(sys, "orig_argv", None):
        run_supervised([sys.executable, *sys.orig_argv[1:]], os.environ, program)
