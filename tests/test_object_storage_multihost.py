"""Hosts that share no disk: two real processes whose only shared place is a bucket (the GCS emulator).

Each process has its own HOME, TMPDIR, working directory and input cache; the input text is in the bucket and
`--workdir` is `gs://...`. Process 0 builds the corpus and uploads it, process 1 downloads it into its own
cache; both train on a data=4 x fsdp=2 mesh (`jax.distributed` on 127.0.0.1, gloo CPU collectives, 4 simulated
devices each), writing their own checkpoint shards to the bucket; both are killed with SIGKILL after step 7 of
12 and restarted with the same command. The result equals, bitwise (exported params and every logged loss),
the same two processes run uninterrupted; and it equals one process of 8 simulated devices on a local disk to
1e-5 relative (the processes reduce over gloo, that reference inside one process, so the last bits differ).
Slow (minutes on 2 cores): `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_path
from tests.gcs_emulator import free_port
from tests.pretrain_cli import kill_all, pretrain_command, stderr_text

pytestmark = pytest.mark.slow

STEPS = 12
TIMEOUT_SECONDS = 1500


def _command(workdir: str, train_files: str, distributed: list[str]) -> list[str]:
    return pretrain_command(
        workdir,
        *distributed,
        f"--config.data.train_files={train_files}",
        "--config.data.max_seq_length=64",
        "--config.data.max_predictions_per_seq=10",
        "--config.data.eval_fraction=0.02",
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
    )


def _env(devices: int, home: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env.update({"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", **(extra or {})})
    if home is not None:  # a host of its own: nothing on disk in common with the other process
        for name in ("HOME", "TMPDIR", "cwd"):
            os.makedirs(os.path.join(home, name), exist_ok=True)
        env.update(
            HOME=os.path.join(home, "HOME"),
            TMPDIR=os.path.join(home, "TMPDIR"),
            BERT_JAX_CACHE_DIR=os.path.join(home, "HOME", ".cache", "bert_jax"),
            PYTHONPATH=str(REPO_ROOT),
        )
    return env


def _start_pair(hosts: list[str], workdir: str, train_files: str, emulator_env: dict[str, str]):
    port = free_port()
    processes = []
    for i, home in enumerate(hosts):
        distributed = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
        stderr = tempfile.TemporaryFile("w+")
        process = subprocess.Popen(
            _command(workdir, train_files, distributed),
            cwd=os.path.join(home, "cwd"),
            env=_env(4, home, emulator_env),
            stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
        process.stderr_file = stderr
        processes.append(process)
    return processes


def _losses(lines: list[str]) -> dict[int, dict]:
    records = {}
    for line in lines:
        record = json.loads(line)
        if "loss" in record:
            records[record["step"]] = record
    return records


def _params(export_dir: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(export_dir, "bert_jax", "params.safetensors"))


def test_two_hosts_sharing_only_a_bucket_build_train_die_and_resume(gcs, tmp_path):
    from bert_jax import storage

    bucket = gcs.create_bucket(f"no-shared-disk-{time.time_ns() % 10**8}")
    book = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    sample = shared_path("bert_sample", "sample_text.txt")
    for path in (book, sample):
        storage.upload_file(str(path), f"{bucket}/text/{path.name}")
    train_files = f"{bucket}/text/*.txt"
    workdir = f"{bucket}/run"
    hosts = [str(tmp_path / "host0"), str(tmp_path / "host1")]

    reference_dir = tmp_path / "reference"
    reference_stderr = tempfile.TemporaryFile("w+")
    reference = subprocess.Popen(
        _command(str(reference_dir), train_files, []),
        cwd=REPO_ROOT,
        env=_env(8, str(tmp_path / "reference-host"), gcs.env()),
        stdout=subprocess.DEVNULL,
        stderr=reference_stderr,
        text=True,
    )
    reference.stderr_file = reference_stderr
    pair = _start_pair(hosts, workdir, train_files, gcs.env())
    try:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        seen = []
        while time.monotonic() < deadline:
            line = pair[0].stdout.readline()
            if not line:
                pytest.fail(
                    f"process 0 ended early:\n{''.join(seen)[-2000:]}\n{stderr_text(pair[0])}\n{stderr_text(pair[1])}"
                )
            seen.append(line)
            if line.startswith(f"step 7/{STEPS}"):
                break
        assert any(line.startswith("Corpus built") for line in seen), "".join(seen)
        kill_all(pair)  # SIGKILL both, wherever they are (possibly inside an asynchronous save)
        committed = [
            int(name)
            for name in storage.listdir(f"{workdir}/checkpoints")
            if name.isdigit() and storage.exists(f"{workdir}/checkpoints/{name}/commit_success.txt")
        ]
        assert committed and max(committed) < STEPS
        pair = _start_pair(hosts, workdir, train_files, gcs.env())
        out, _ = pair[0].communicate(timeout=TIMEOUT_SECONDS)
        pair[1].wait(timeout=300)
        assert pair[0].returncode == 0 and pair[1].returncode == 0, stderr_text(pair[0]) + stderr_text(pair[1])
        assert f"Resumed from the checkpoint of step {max(committed)}" in out and "Corpus reused" in out
        assert reference.wait(timeout=TIMEOUT_SECONDS) == 0, stderr_text(reference)
    finally:
        kill_all([*pair, reference])

    # Process 1 read the corpus from its own cache, downloaded from the bucket; neither wrote into its cwd.
    cache = os.path.join(hosts[1], "HOME", ".cache", "bert_jax", "gs", bucket.removeprefix("gs://"), "run", "corpus")
    assert any("dataset_info.json" in files for _, _, files in os.walk(cache)), cache
    assert all(os.listdir(os.path.join(home, "cwd")) == [] for home in hosts)

    ours, theirs = _params(storage.local_tree(f"{workdir}/export")), _params(str(reference_dir / "export"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)
    logged = _losses(storage.read_text(f"{workdir}/metrics.jsonl").splitlines())
    expected = _losses((reference_dir / "metrics.jsonl").read_text().splitlines())
    assert sorted(logged) == sorted(expected) == list(range(1, STEPS + 1))
    for step in logged:
        for key in ("loss", "mlm_loss", "grad_norm"):
            assert logged[step][key] == pytest.approx(expected[step][key], rel=1e-5), (step, key)
    assert logged[STEPS]["loss"] < logged[1]["loss"]

    # Bitwise: the same two processes run uninterrupted (fresh hosts, another workdir in the bucket) end with the
    # very same params and losses as the pair that was killed and restarted.
    straight_dir = f"{bucket}/uninterrupted"
    straight = _start_pair([str(tmp_path / "host2"), str(tmp_path / "host3")], straight_dir, train_files, gcs.env())
    try:
        straight[0].communicate(timeout=TIMEOUT_SECONDS)
        straight[1].wait(timeout=300)
        assert straight[0].returncode == 0 and straight[1].returncode == 0, stderr_text(straight[0]) + stderr_text(
            straight[1]
        )
    finally:
        kill_all(straight)
    uninterrupted = _params(storage.local_tree(f"{straight_dir}/export"))
    for name in ours:
        np.testing.assert_array_equal(ours[name], uninterrupted[name], err_msg=name)
    straight_logged = _losses(storage.read_text(f"{straight_dir}/metrics.jsonl").splitlines())
    for step in logged:
        for key in ("loss", "mlm_loss", "grad_norm"):
            assert logged[step][key] == straight_logged[step][key], (step, key)
