"""Worker processes start single-threaded and all at once; the parent's environment is left as it was."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

from bert_jax.data import worker_env


def _thread_settings() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in worker_env.SINGLE_THREAD_VARIABLES}


def test_children_start_single_threaded_and_the_parent_keeps_its_environment(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # set by the user: kept, in the children too
    before = _thread_settings()
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    try:
        warm_up = worker_env.start_all(pool, 2)
        assert _thread_settings() == before
        assert len(pool._processes) == 2  # both started by the warm-up, before any real task
        for future in warm_up:
            future.result(timeout=60)
        seen = pool.submit(_thread_settings).result(timeout=60)
    finally:
        pool.shutdown()
    assert seen["OPENBLAS_NUM_THREADS"] == "1" and seen["OMP_NUM_THREADS"] == "1"
    assert seen["MKL_NUM_THREADS"] == "3"
    assert seen["TOKENIZERS_PARALLELISM"] == (before["TOKENIZERS_PARALLELISM"] or "false")
