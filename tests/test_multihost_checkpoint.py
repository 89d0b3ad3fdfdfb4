"""Multi-host checkpoints: two real processes save, are killed with SIGKILL, restart and finish the same run.

The pretraining CLI runs as two processes (`jax.distributed` on 127.0.0.1, gloo CPU collectives, 4 simulated
devices each) on a data=4 x fsdp=2 mesh, so the params and Adam moments are split across the processes and each
process writes its own shards of every checkpoint. Both are killed (SIGKILL) after step 7 of 12 and restarted
with the same command: they resume from the last complete checkpoint and finish. The reference is one process
with 8 simulated devices on the same mesh, uninterrupted. Checked: the restart really resumed; the final
exported params and every logged loss equal the reference's (float32, 1e-5 relative: the processes reduce over
gloo, the reference inside one process). Slow (minutes on 2 cores): `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from bert_jax.data.corpus import CorpusOptions, build_corpus
from tests.conftest import REPO_ROOT, shared_path

pytestmark = pytest.mark.slow

STEPS = 12
TIMEOUT_SECONDS = 1500


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
    options = CorpusOptions(
        input_files=(
            str(shared_path("bert_sample", "sample_text.txt")),
            str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt")),
        ),
        vocab_file=str(REPO_ROOT / "bert_jax" / "assets" / "vocab.txt"),
        max_seq_length=64,
    )
    return build_corpus(options, tmp_path_factory.mktemp("corpus"), num_shards=2).dataset_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, corpus_dir: str, distributed: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bert_jax_tools.pretrain",
        f"--config={REPO_ROOT / 'experiments' / 'bert_tiny.py'}",
        f"--workdir={workdir}",
        *distributed,
        f"--config.data.corpus_dir={corpus_dir}",
        "--config.data.max_seq_length=64",
        "--config.data.max_predictions_per_seq=10",
        f"--config.num_train_steps={STEPS}",
        "--config.global_batch_size=16",
        "--config.mesh.data=4",
        "--config.mesh.fsdp=2",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=100",
        "--config.eval_batches=1",
        "--config.checkpoint_every_steps=3",
        "--config.peak_flops_per_device=1e11",
        "--config.optimizer.warmup_steps=2",
    ]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return {**env, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _start_pair(workdir, corpus_dir) -> list[subprocess.Popen]:
    port = _free_port()
    processes = []
    for i in range(2):
        distributed = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
        processes.append(
            subprocess.Popen(
                _command(workdir, corpus_dir, distributed),
                cwd=REPO_ROOT,
                env=_env(4),
                stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                stderr=tempfile.TemporaryFile("w+"),
                text=True,
            )
        )
    return processes


def _kill(processes) -> None:
    for p in processes:
        if p.poll() is None:
            p.kill()
        p.wait()


def _stderr(process: subprocess.Popen) -> str:
    process.stderr.seek(0)
    return process.stderr.read()[-3000:]


def _latest_records(workdir) -> dict[int, dict]:
    records = {}
    for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8"):
        record = json.loads(line)
        if "loss" in record:
            records[record["step"]] = record
    return records


def _params(workdir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "export", "bert_jax", "params.safetensors"))


def test_two_processes_killed_mid_run_resume_to_the_uninterrupted_result(corpus_dir, tmp_path):
    reference_dir, pair_dir = tmp_path / "reference", tmp_path / "pair"
    reference = subprocess.Popen(
        _command(reference_dir, corpus_dir, []),
        cwd=REPO_ROOT,
        env=_env(8),
        stdout=subprocess.DEVNULL,
        stderr=tempfile.TemporaryFile("w+"),
        text=True,
    )
    pair = _start_pair(pair_dir, corpus_dir)
    try:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        seen = []
        while time.monotonic() < deadline:
            line = pair[0].stdout.readline()
            if not line:
                pytest.fail(f"process 0 ended early:\n{''.join(seen)[-2000:]}\n{_stderr(pair[0])}\n{_stderr(pair[1])}")
            seen.append(line)
            if line.startswith(f"step 7/{STEPS}"):
                break
        _kill(pair)  # SIGKILL both, wherever they are (possibly inside an asynchronous save)
        saved = sorted(int(e) for e in os.listdir(pair_dir / "checkpoints") if e.isdigit())
        assert saved and saved[-1] < STEPS
        pair = _start_pair(pair_dir, corpus_dir)
        out, _ = pair[0].communicate(timeout=TIMEOUT_SECONDS)
        pair[1].wait(timeout=300)
        assert pair[0].returncode == 0 and pair[1].returncode == 0, _stderr(pair[0]) + _stderr(pair[1])
        assert f"Resumed from the checkpoint of step {saved[-1]}" in out
        assert reference.wait(timeout=TIMEOUT_SECONDS) == 0, _stderr(reference)
    finally:
        _kill([*pair, reference])

    ours, theirs = _params(pair_dir), _params(reference_dir)
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)
    logged, expected = _latest_records(pair_dir), _latest_records(reference_dir)
    assert sorted(logged) == sorted(expected) == list(range(1, STEPS + 1))
    for step in logged:
        for key in ("loss", "mlm_loss", "grad_norm"):
            assert logged[step][key] == pytest.approx(expected[step][key], rel=1e-5), (step, key)
    # The run trained: the final params differ from the resumed checkpoint's by far more than the tolerance.
    assert logged[STEPS]["loss"] < logged[1]["loss"]
