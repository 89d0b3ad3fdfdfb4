"""The environment worker processes start in: one thread of numeric libraries each, the processes being the
parallelism.

A spawned worker inherits the parent's environment at the moment it starts. Without a thread limit, importing
numpy in every worker starts an OpenBLAS thread pool of one thread per core, which costs ~0.1 s of CPU per
worker on a 2-core host (a third of a build worker's start-up) and, on a 200-core host, hundreds of threads
that nothing uses. `single_threaded_children` sets the limits only while the workers start, so the parent's
own libraries (already loaded, or loaded later) keep their settings.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Iterator

SINGLE_THREAD_VARIABLES = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """Processes started inside this block run their numeric libraries single-threaded; the parent's
    environment is restored on exit (a variable the user set explicitly is left as the user set it)."""
    saved = {name: os.environ.get(name) for name in SINGLE_THREAD_VARIABLES}
    for name, value in SINGLE_THREAD_VARIABLES.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ready() -> None:
    """The warm-up task of `start_all`: returns once its worker has started."""


def start_all(pool: concurrent.futures.ProcessPoolExecutor, num_workers: int) -> list[concurrent.futures.Future]:
    """Starts all `num_workers` processes of `pool` now, single-threaded, and returns their warm-up futures.

    A process pool starts a process per task submitted while none is idle, so without this its workers start
    one by one as the first tasks arrive, each loading its libraries while the caller already waits for
    results; started here, they load while the caller sets up its own work.
    """
    with single_threaded_children():
        return [pool.submit(_ready) for _ in range(num_workers)]
