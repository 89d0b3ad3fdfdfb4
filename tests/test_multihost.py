"""Multi-host training: two real processes train the same steps as one process, to the same losses.

Two processes (`jax.distributed` on 127.0.0.1, CPU collectives over gloo, 4 simulated CPU devices each: 8 global
devices) and, as the reference, one process with 8 simulated devices each run `tests/multihost_worker.py`: the
real pipeline (a corpus built here from the BERT sample text and a Gutenberg book; every process reads only its
rows of each global batch, `PretrainingBatches(process_index=..., process_count=...)`, and
`global_batch_from_process_local` puts them together), `state_shardings` / `create_train_state` /
`jit_train_step` with dropout on, 4 steps on a pure data-parallel mesh (data=8) and on a ZeRO-3 mesh
(data=4 x fsdp=2, so params and Adam moments are split across the two processes). Checked:

- every global batch the two processes assemble is bytewise the one-process batch (sha256 of the gathered arrays),
  each process feeding 8 of its 16 rows;
- losses, MLM losses and gradient norms of every step, and the sums of squares of the initial and final params
  (jitted reductions over the sharded params), agree with the one-process run to 1e-5 relative (float32), and the
  two processes report bitwise the same values;
- the hybrid mesh `MeshConfig(dcn_data=2, data=2, fsdp=2)` (processes as DCN granules) puts process 0's devices
  on the first half of the data axis, exactly as the data=4 x fsdp=2 mesh that is trained on;
- `global_batch_from_process_local` refuses a mesh whose batch axes do not separate the processes (data=1 x
  tensor=8 across both), where each process's own rows would otherwise become inconsistent copies of one shard.

All three processes start together, since compiling dominates and XLA compiles mostly on one core; any failure
or the time limit kills all of them. Slow (minutes on a loaded 2-core machine): `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pytest

from bert_jax.data.corpus import CorpusOptions, build_corpus
from tests.conftest import REPO_ROOT, shared_path

pytestmark = pytest.mark.slow

NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4
MESHES = ("data=-1", "data=4,fsdp=2")
LAYOUTS = ("data=4,fsdp=2", "dcn_data=2,data=2,fsdp=2")
FEEDS = ("data=-1", "data=1,tensor=8")
STEPS = 4
RTOL = 1e-5
TIMEOUT_SECONDS = 1800  # compiles are slow on a loaded machine: ~5 minutes measured with a load average of 10


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
    """A small real corpus (sample text + Alice in Wonderland, 64-token instances), built before any worker starts."""
    options = CorpusOptions(
        input_files=(
            str(shared_path("bert_sample", "sample_text.txt")),
            str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt")),
        ),
        vocab_file=str(shared_path("vocab", "bert-base-uncased-vocab.txt")),
        max_seq_length=64,
    )
    return build_corpus(options, tmp_path_factory.mktemp("multihost_corpus"), num_shards=2).dataset_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Worker:
    """One `python -m tests.multihost_worker` subprocess, its stdout and stderr in temporary files."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.stdout, self.stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.multihost_worker", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.stdout,
            stderr=self.stderr,
        )

    def tail(self) -> str:
        """The end of stderr, without XLA's (harmless) SPMD rematerialization warnings."""
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().splitlines() if "Involuntary full rematerialization" not in line]
        return "\n".join(lines)[-3000:]

    def report(self) -> dict[str, Any]:
        """The JSON report: the last line of stdout (gloo prints its connection messages there too)."""
        self.stdout.seek(0)
        return json.loads(self.stdout.read().strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.kill()
        self.stdout.close()
        self.stderr.close()


def _wait_all(workers: list[_Worker], timeout: float) -> None:
    """Waits for every worker; on a failure or the deadline kills them all (a process whose peer died would block in
    a collective) and fails with each one's stderr."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [w.process.poll() for w in workers]
        failed = [w for w, code in zip(workers, codes, strict=True) if code not in (None, 0)]
        if not failed and all(code == 0 for code in codes):
            return
        if failed or time.monotonic() > deadline:
            for w in workers:
                w.kill()
            why = f"{', '.join(w.name for w in failed)} failed" if failed else f"timed out after {timeout:.0f} s"
            details = "\n\n".join(f"--- {w.name} (exit code {w.process.returncode}) ---\n{w.tail()}" for w in workers)
            pytest.fail(f"multi-host workers: {why}\n{details}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def runs(corpus_dir) -> dict[str, Any]:
    """The reference (one process, 8 devices) and the two processes' reports, run concurrently."""
    common = [f"--corpus={corpus_dir}", f"--steps={STEPS}", *(f"--mesh={m}" for m in MESHES)]
    common += [f"--layout={m}" for m in LAYOUTS] + [f"--feed={m}" for m in FEEDS]
    port = _free_port()
    workers = [
        _Worker("reference", [*common, "--num_processes=1", f"--local_devices={NUM_PROCESSES * DEVICES_PER_PROCESS}"])
    ]
    workers += [
        _Worker(
            f"process {i}",
            [
                *common,
                f"--num_processes={NUM_PROCESSES}",
                f"--process_id={i}",
                f"--local_devices={DEVICES_PER_PROCESS}",
                f"--port={port}",
            ],
        )
        for i in range(NUM_PROCESSES)
    ]
    start = time.perf_counter()
    try:
        _wait_all(workers, TIMEOUT_SECONDS)
        reports = [w.report() for w in workers]
    finally:
        for w in workers:
            w.close()
    return {"reference": reports[0], "processes": reports[1:], "seconds": time.perf_counter() - start}


def test_the_processes_form_one_8_device_job(runs):
    reference, processes = runs["reference"], runs["processes"]
    assert (reference["process_count"], reference["device_count"]) == (1, 8)
    for i, report in enumerate(processes):
        assert report["process_index"] == i
        assert report["process_count"] == NUM_PROCESSES
        assert (report["device_count"], report["local_device_count"]) == (8, DEVICES_PER_PROCESS)
        assert report["device_processes"] == [0] * DEVICES_PER_PROCESS + [1] * DEVICES_PER_PROCESS
        assert report["train_instances"] == reference["train_instances"]


@pytest.mark.parametrize("mesh", MESHES)
def test_each_process_feeds_its_rows_of_the_same_global_batches(runs, mesh):
    reference = runs["reference"]["meshes"][mesh]
    assert reference["local_rows"] == 16
    for report in runs["processes"]:
        result = report["meshes"][mesh]
        assert result["local_rows"] == reference["local_rows"] // NUM_PROCESSES
        assert result["mesh_shape"] == reference["mesh_shape"]
        assert result["batch_sha256"] == reference["batch_sha256"]
    assert len(set(reference["batch_sha256"])) == STEPS  # four different batches


@pytest.mark.parametrize("mesh", MESHES)
def test_two_processes_train_to_the_same_losses_as_one(runs, mesh):
    reference = runs["reference"]["meshes"][mesh]
    first, second = (report["meshes"][mesh] for report in runs["processes"])
    keys = ("losses", "mlm_losses", "grad_norms", "init_sum_of_squares", "final_sum_of_squares", "step")
    # The metrics and checksums are replicated outputs: both processes hold the same bits.
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    assert first["step"] == reference["step"] == STEPS
    for key in keys[:-1]:
        np.testing.assert_allclose(first[key], reference[key], rtol=RTOL, atol=0, err_msg=f"{mesh}: {key}")
    # The steps really train: the loss and the params move by far more than the tolerance.
    assert reference["losses"][-1] < reference["losses"][0] * (1 - 100 * RTOL)
    assert abs(reference["final_sum_of_squares"] / reference["init_sum_of_squares"] - 1) > 100 * RTOL


def test_the_fsdp_mesh_splits_params_across_processes_and_the_hybrid_mesh_matches_it(runs):
    for i, report in enumerate(runs["processes"]):
        fsdp = report["meshes"]["data=4,fsdp=2"]
        # data axis first: process 0 owns the first two data rows (both fsdp shards each), process 1 the last two.
        assert fsdp["mesh_processes"] == [[[0], [0]], [[0], [0]], [[1], [1]], [[1], [1]]], i
        hybrid = report["layouts"]["dcn_data=2,data=2,fsdp=2"]
        assert hybrid["mesh_shape"] == fsdp["mesh_shape"] == {"data": 4, "fsdp": 2, "tensor": 1}
        assert hybrid["mesh_device_ids"] == report["layouts"]["data=4,fsdp=2"]["mesh_device_ids"]


def test_feeding_a_mesh_that_does_not_split_the_batch_over_the_processes_is_refused(runs):
    # One process: tensor=8 with a replicated batch is fine, the process's rows are the whole batch.
    assert runs["reference"]["feeds"]["data=1,tensor=8"] == {"rows": list(range(8))}
    for report in runs["processes"]:
        # Process p feeds rows [100p, 100p + 8): data parallel, the global batch is process 0's rows, then 1's.
        assert report["feeds"]["data=-1"] == {"rows": list(range(8)) + list(range(100, 108))}
        # Both processes would hold the single batch shard, each with different rows: a clear error instead.
        error = report["feeds"]["data=1,tensor=8"]["error"]
        assert error.startswith("ConfigError: ") and "do not separate the 2 processes" in error, error
