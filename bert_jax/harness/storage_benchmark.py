"""Checkpoint save / restore throughput and corpus download time on a given storage location (a local
directory or gs://), measured with the jobs' own code paths (`checkpoint.Checkpointer`, `corpus.local_dataset_dir`).

The train state is synthetic (float32 params plus two moments of the same shapes, like Adam's), its size chosen by
`megabytes`. Each save is timed until it is published (`wait_until_finished`), each restore until the arrays are
on the device. The checkpoints are removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np

from bert_jax import storage
from bert_jax.training import checkpoint

_SIDE = 1024  # each synthetic parameter is a 1024 x 1024 float32 matrix (4 MB)


def _state(megabytes: float) -> tuple[dict[str, Any], dict[str, Any]]:
    count = max(1, round(megabytes * 1e6 / 3 / (_SIDE * _SIDE * 4)))  # params + two moments
    rng = np.random.default_rng(0)
    params = {
        f"w{i:03d}": jax.numpy.asarray(rng.standard_normal((_SIDE, _SIDE), dtype=np.float32)) for i in range(count)
    }
    return params, {"mu": params, "nu": params}


def checkpoint_throughput(directory: str, megabytes: float = 352.0, repeats: int = 3) -> dict[str, Any]:
    """Median save and restore MB/s of a `megabytes` train state under `directory` (then removed)."""
    params, opt_state = _state(megabytes)
    size_mb = sum(x.nbytes for x in jax.tree.leaves((params, opt_state))) / 1e6
    target = storage.join(directory, f"bert-jax-benchmark-{os.getpid()}-{time.time_ns()}")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    saves, restores = [], []
    try:
        saver = checkpoint.Checkpointer(target, save_every_steps=1, max_to_keep=repeats)
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            saver.save(step, params, opt_state, {}, {})
            saver.wait_until_finished()
            saves.append(time.perf_counter() - start)
        saver.close()
        for _ in range(repeats):
            reader = checkpoint.Checkpointer(target, save_every_steps=1, max_to_keep=repeats)
            start = time.perf_counter()
            restored = reader.restore(abstract, {"mu": abstract, "nu": abstract})
            restores.append(time.perf_counter() - start)
            reader.close()
            assert restored is not None and restored.step == repeats
    finally:
        storage.rmtree(target)
    return {
        "directory": directory,
        "state_mb": round(size_mb, 1),
        "save_mb_per_sec": round(size_mb / statistics.median(saves), 1),
        "restore_mb_per_sec": round(size_mb / statistics.median(restores), 1),
        "save_seconds": [round(s, 3) for s in saves],
        "restore_seconds": [round(s, 3) for s in restores],
    }


def corpus_download(corpus_dir: str) -> dict[str, Any]:
    """Seconds to copy a remote corpus into a fresh host cache (verified), and to verify it again (the reuse path)."""
    from bert_jax.data import corpus

    previous = os.environ.get(storage.CACHE_ENV)
    fresh = tempfile.mkdtemp(prefix="bert-jax-benchmark-cache-")
    os.environ[storage.CACHE_ENV] = fresh
    try:
        start = time.perf_counter()
        local = corpus.local_dataset_dir(corpus_dir)
        download = time.perf_counter() - start
        start = time.perf_counter()
        corpus.local_dataset_dir(corpus_dir)
        verify = time.perf_counter() - start
        size_mb = sum(os.path.getsize(os.path.join(local, name)) for name in os.listdir(local)) / 1e6
    finally:
        if previous is None:
            os.environ.pop(storage.CACHE_ENV, None)
        else:
            os.environ[storage.CACHE_ENV] = previous
        shutil.rmtree(fresh, ignore_errors=True)
    return {
        "corpus_dir": corpus_dir,
        "corpus_mb": round(size_mb, 2),
        "download_seconds": round(download, 3),
        "download_mb_per_sec": round(size_mb / download, 1),
        "reverify_seconds": round(verify, 3),
    }
