"""JAX's persistent compilation cache for the jobs: a restarted job loads its compiled programs from disk.

A pretraining or fine-tuning job compiles its train step, eval step and state initialization at every start
(20 s for BERT-base on a CPU, minutes for large models on accelerators). A job that restarts after a
preemption, or runs again with more steps, compiles the very same programs. With the cache on, the first
run writes every program that took longer than `jax_persistent_cache_min_compile_time_secs` (JAX's
default, 1 s) to disk and later runs read them back instead of compiling.

The job config's `compilation_cache_dir` says where:
- "" (the default): `<workdir>/jax_cache`, unless JAX's own setting (the `JAX_COMPILATION_CACHE_DIR`
  environment variable, or `jax.config`) already names a directory; then that one is kept.
- "off": no persistent cache, also when JAX's setting names one.
- any other path (a local directory or a URL JAX's cache supports, such as gs://): that directory.

On several hosts only process 0 writes entries (JAX's rule) and every process reads them, so the
directory must be on a file system every host sees, as the workdir already is. The cache keys include the
program, the devices and the compiler flags, so a changed config or mesh compiles afresh and never reuses a
stale program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

from bert_jax import storage

OFF = "off"
WORKDIR_SUBDIR = "jax_cache"

_REQUESTS_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
_HITS_EVENT = "/jax/compilation_cache/cache_hits"


class CompileCacheConfigError(ValueError):
    """A `compilation_cache_dir` setting that cannot be used."""


def resolve_directory(setting: str, workdir: str, jax_setting: str | None) -> str | None:
    """The cache directory a job uses (None: no cache) for its config `setting` (see the module docstring)."""
    if not isinstance(setting, str):
        raise CompileCacheConfigError(
            f"compilation_cache_dir must be a string ('' for <workdir>/{WORKDIR_SUBDIR}, '{OFF}', or a "
            f"directory), got {setting!r}."
        )
    setting = setting.strip()
    if setting.lower() == OFF:
        return None
    if setting:
        return setting
    if jax_setting:
        return jax_setting
    return storage.join(workdir, WORKDIR_SUBDIR)


def _point_jax_at(directory: str | None) -> None:
    if directory != jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", directory)
        # The cache object is created at the first compile and keeps its path; forget it so the next compile
        # opens the new directory (or none).
        compilation_cache.reset_cache()


@contextlib.contextmanager
def job_cache(setting: str, workdir: str) -> Iterator[str | None]:
    """Within the block JAX's persistent compilation cache is the job's directory (yields it; None: off).

    Enter it before the job compiles anything. On exit JAX's previous setting is back, so jobs run one after
    another in one process (tests, notebooks) each use their own directory and leave the process as it was.
    """
    previous = jax.config.jax_compilation_cache_dir
    directory = resolve_directory(setting, workdir, previous)
    if directory is not None and "://" not in directory:
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
    _point_jax_at(directory)
    try:
        yield directory
    finally:
        _point_jax_at(previous)


@dataclasses.dataclass
class CacheCounts:
    """Compilations that consulted the persistent cache, and how many of them it answered."""

    requests: int = 0
    hits: int = 0


_counts = CacheCounts()
_counts_lock = threading.Lock()


def _count_event(event: str, **_: object) -> None:
    if event in (_REQUESTS_EVENT, _HITS_EVENT):
        with _counts_lock:
            if event == _REQUESTS_EVENT:
                _counts.requests += 1
            else:
                _counts.hits += 1


# Process-wide from the first import on (JAX has no way to remove a listener); `since` takes differences.
jax.monitoring.register_event_listener(_count_event)


def counts() -> CacheCounts:
    """Cache requests and hits so far in this process (since this module was imported)."""
    with _counts_lock:
        return dataclasses.replace(_counts)


def since(start: CacheCounts) -> CacheCounts:
    """The requests and hits after `start` (a `counts()` taken earlier)."""
    now = counts()
    return CacheCounts(requests=now.requests - start.requests, hits=now.hits - start.hits)


def describe(directory: str | None, delta: CacheCounts) -> str:
    """One line for the job's log: where the cache is and what it answered."""
    if directory is None:
        return "compilation cache off"
    if delta.requests == 0:
        return f"compilation cache {directory}"
    return f"compilation cache {directory}: {delta.hits} of {delta.requests} programs loaded from it"


def first_step_line(seconds: float, directory: str | None, start: CacheCounts) -> str:
    """The jobs' log line after their first train-step call (which returns once the step is compiled or loaded)."""
    return f"Train step ready in {seconds:.1f} s ({describe(directory, since(start))})"
