"""A dead peer in a multi-process job: the survivors end within 30 s in one line naming it, and a restart resumes.

Unit checks of `bert_jax.launcher.peer_watch` (when an entry point supervises, the line it prints for JAX's real dump text),
then two real pretraining processes on 127.0.0.1 (gloo): one is killed with SIGKILL after step 8; the other must
exit within 30 s with the one line (no "Fatal Python error", no module list), and both started again with the same
command resume from the last checkpoint and finish. Slow part: `pytest -m slow`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

import pytest

from bert_jax.launcher import peer_watch
from tests.conftest import REPO_ROOT, shared_path
from tests.gcs_emulator import free_port
from tests.pretrain_cli import kill_all, pretrain_command, stderr_text

# What JAX 0.10's distributed client printed here when the peer (task 1) was killed (abbreviated).
DUMP = (
    "F1202 06:48:35.212781 23671 client.h:80] Terminating process because the JAX distributed service detected fatal "
    "errors. This most likely indicates that another task died; see the other task logs for more details. "
    "absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks have "
    "crashed. Check the task logs for an earlier error\n*** Check failure stack trace: ***\nFatal Python error: Aborted\n"
)


def test_only_multi_process_runs_are_supervised():
    assert peer_watch.wants_supervision(["--config=x.py", "--distributed"], {})
    assert peer_watch.wants_supervision(["--coordinator_address=h:1", "--num_processes=2"], {})
    assert peer_watch.wants_supervision([], {"JAX_COORDINATOR_ADDRESS": "h:1"})
    assert not peer_watch.wants_supervision(["--config=x.py", "--workdir=/tmp/w"], {})
    assert not peer_watch.wants_supervision(["--distributed"], {peer_watch.SUPERVISED_ENV: "1"})  # the child


def test_the_line_names_the_process_that_stopped():
    line = peer_watch.peer_failure_line("bert-jax-pretrain", DUMP)
    assert line.startswith("bert-jax-pretrain: error: process 1 stopped responding") and "\n" not in line
    assert "Start every process again with the same command" in line
    shutdown = "INTERNAL: Shutdown barrier has failed. ... UNAVAILABLE: Task 1 heartbeat timeout. This indicates ..."
    assert "error: process 1 stopped responding" in peer_watch.peer_failure_line("bert-jax-pretrain", shutdown)
    assert "the coordinator (process 0)" in peer_watch.peer_failure_line("bert-jax-pretrain", "UNAVAILABLE: ...")


def _command(workdir: str, port: int, process_id: int) -> list[str]:
    return pretrain_command(
        workdir,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={process_id}",
        "--heartbeat_timeout_seconds=15",
        f"--config.data.train_files={shared_path('gutenberg', 'pg11-alice-in-wonderland.txt')}",
        "--config.num_train_steps=24",
        "--config.global_batch_size=8",
        "--config.mesh.data=4",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=1000",
        "--config.checkpoint_every_steps=4",
        "--config.optimizer.warmup_steps=2",
    )


def _start(workdir: str) -> list[subprocess.Popen]:
    """Both processes; each one's stderr goes to a temporary file kept as `.stderr_file`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    port = free_port()
    processes = []
    for i in range(2):
        stderr = tempfile.TemporaryFile("w+")
        process = subprocess.Popen(
            _command(workdir, port, i),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
        process.stderr_file = stderr
        processes.append(process)
    return processes


@pytest.mark.slow
def test_a_killed_peer_stops_the_survivor_in_one_line_and_a_restart_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    pair = _start(workdir)
    try:
        for line in pair[0].stdout:
            if line.startswith("step 8/"):
                break
        pair[1].send_signal(signal.SIGKILL)  # its job process follows (it dies with its supervisor)
        killed = time.monotonic()
        pair[0].stdout.read()
        pair[0].wait(timeout=120)
        waited = time.monotonic() - killed
        err = stderr_text(pair[0], limit=10**7)
        assert pair[0].returncode == 1 and waited < 30, (waited, err[-2000:])
        assert err.strip().splitlines()[-1].startswith("bert-jax-pretrain: error: process 1 stopped responding"), err
        assert "Fatal Python error" not in err and "Extension modules" not in err
        checkpoints = os.path.join(workdir, "checkpoints")
        complete = max(int(name) for name in os.listdir(checkpoints) if name.isdigit())  # 4 or 8
        pair = _start(workdir)
        out = pair[0].stdout.read()
        assert pair[0].wait(timeout=600) == 0 and pair[1].wait(timeout=120) == 0, stderr_text(pair[0])[-2000:]
        assert f"Resumed from the checkpoint of step {complete}" in out and complete >= 4, out[-2000:]
        assert "Exported the weights of step 24" in out
    finally:
        kill_all(pair)
