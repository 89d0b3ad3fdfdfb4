"""Worker processes that make pretraining batches, so that the input uses more than one host core.

A batch is a pure function of (instance indices, epoch) given the source and the masking setup (see
`pipeline.py`), so any process can make any batch: the pool receives the assembler once per worker (pickled
at start), then one small task per batch (its indices and epoch) and sends back the finished numpy arrays.
The caller keeps the futures in batch order, so the batches come out in the same order and bitwise the same
for any number of workers, and the iterator state (the position of the next batch) does not depend on them.

Workers are started with "spawn", never "fork": the parent is a JAX process with threads of its own, which a
forked child would inherit in an arbitrary state. A worker that dies (killed, out of memory) breaks the pool;
the consumer then gets `BatchWorkerError` naming `data.num_workers`. A worker whose parent dies (even by SIGKILL)
exits within moments (a watchdog thread waits on the parent's sentinel). As with any "spawn" start, a script
that makes a pipeline with workers must guard its own top level with `if __name__ == "__main__":` (the console
scripts and `python -m` mains of this package do).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from typing import Any, Protocol

import numpy as np

from bert_jax.data import worker_env

# Cores per extra worker process when `num_workers` is automatic: the rest serve the training process (JAX's
# own threads, the device transfers). Hosts with fewer cores than this make batches in a thread of the job.
CORES_PER_AUTO_WORKER = 4
MAX_AUTO_WORKERS = 16


class BatchWorkerError(RuntimeError):
    """A worker process died or could not start; the message names the fix."""


class Assembler(Protocol):
    """What a worker needs: a picklable object whose `assemble(indices, epoch)` makes one batch."""

    def assemble(self, indices: np.ndarray, epoch: int) -> dict[str, np.ndarray]: ...


_ALIGN = 64  # byte alignment of each array inside a shared-memory slot


@dataclasses.dataclass(frozen=True)
class _InSharedMemory:
    """A finished batch left in shared-memory slot `slot`: per array, its dtype, shape and byte offset."""

    slot: int
    layout: dict[str, tuple[str, tuple[int, ...], int]]


class _Worker:
    """The state of one worker process: the assembler and the shared-memory block of batch slots."""

    assembler: Any = None
    memory: shared_memory.SharedMemory | None = None
    slot_bytes: int = 0


def _exit_when_the_parent_dies() -> None:
    """Worker-side watchdog: the task queue does not tell a worker that its parent was killed (every worker
    holds both ends of it), so a daemon thread waits on the parent's sentinel and ends the worker then."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="bert_jax-batch-worker-watchdog", daemon=True).start()


def _start_worker(pickled_assembler: bytes, memory_name: str | None, slot_bytes: int) -> None:
    _exit_when_the_parent_dies()
    _Worker.assembler = pickle.loads(pickled_assembler)
    if memory_name is not None:
        _Worker.memory = shared_memory.SharedMemory(name=memory_name)
        _Worker.slot_bytes = slot_bytes


def _make_batch(indices: np.ndarray, epoch: int, slot: int | None) -> dict[str, np.ndarray] | _InSharedMemory:
    """Makes one batch; copies it into `slot` of the shared memory when it fits (else it travels pickled)."""
    assert _Worker.assembler is not None, "the worker was not initialized"
    batch = _Worker.assembler.assemble(indices, epoch)
    if slot is None or _Worker.memory is None or _packed_bytes(batch) > _Worker.slot_bytes:
        return batch
    offset, layout = slot * _Worker.slot_bytes, {}
    for name, array in batch.items():
        array = np.ascontiguousarray(array)
        np.ndarray(array.shape, array.dtype, buffer=_Worker.memory.buf, offset=offset)[...] = array
        layout[name] = (array.dtype.str, array.shape, offset)
        offset += _aligned(array.nbytes)
    return _InSharedMemory(slot, layout)


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def _packed_bytes(batch: dict[str, np.ndarray]) -> int:
    return sum(_aligned(np.asarray(array).nbytes) for array in batch.values())


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_num_workers(cores: int | None = None) -> int:
    """Worker processes for `num_workers=-1`: one per `CORES_PER_AUTO_WORKER` cores, none on a small host.

    A laptop or this 2-core CI machine gets 0 (batches from a thread of the job: a worker there would only
    take a core from the training step); a TPU VM host (~200 cores) or an 8-GPU host gets `MAX_AUTO_WORKERS`.
    """
    cores = available_cores() if cores is None else cores
    workers = cores // CORES_PER_AUTO_WORKER
    return 0 if workers < 2 else min(MAX_AUTO_WORKERS, workers)


def resolve_num_workers(num_workers: int) -> int:
    """`num_workers` as configured (-1 = automatic) -> the number of worker processes to start."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int | np.integer) or num_workers < -1:
        raise ValueError(
            f"data.num_workers must be -1 (automatic), 0 (a thread of the job) or a number of worker processes, "
            f"got {num_workers!r}"
        )
    return auto_num_workers() if num_workers == -1 else int(num_workers)


class BatchWorkers:
    """A pool of `num_workers` processes making batches with a copy of `assembler`; `submit` returns futures.

    Finished batches come back through `slots` slots of one shared-memory block (`slot_bytes` each, at least one
    batch), so the consumer only copies them out instead of reading them from a pipe and unpickling them; a
    batch submitted while every slot is taken, or larger than a slot, travels pickled instead.
    """

    def __init__(self, assembler: Assembler, num_workers: int, *, slots: int = 0, slot_bytes: int = 0) -> None:
        if num_workers < 1:
            raise ValueError(f"BatchWorkers needs at least one worker, got {num_workers}")
        try:
            pickled = pickle.dumps(assembler)
        except Exception as error:
            raise BatchWorkerError(
                f"data.num_workers={num_workers} needs a source that can be sent to worker processes, and this one "
                f"cannot be pickled ({type(error).__name__}: {error}); use data.num_workers=0"
            ) from None
        self.num_workers = num_workers
        self._memory = None
        self._free_slots: collections.deque[int] = collections.deque()
        if slots > 0 and slot_bytes > 0:
            self._memory = shared_memory.SharedMemory(create=True, size=slots * _aligned(slot_bytes))
            self._free_slots.extend(range(slots))
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(pickled, self._memory.name if self._memory else None, _aligned(slot_bytes)),
        )
        worker_env.start_all(self._executor, num_workers)  # each unpickles its source while the job sets up

    def submit(self, indices: np.ndarray, epoch: int) -> concurrent.futures.Future:
        """Queues the batch of `indices` in `epoch`; pass its future to `result`, once."""
        slot = self._free_slots.popleft() if self._free_slots else None
        try:
            return self._executor.submit(_make_batch, indices, epoch, slot)
        except BrokenProcessPool as error:
            raise _broken(self.num_workers, error) from None

    def result(self, future: concurrent.futures.Future) -> dict[str, np.ndarray]:
        """The batch of `future` (waiting for it), copied out of its slot; a dead worker is a `BatchWorkerError`."""
        try:
            made = future.result()
        except BrokenProcessPool as error:
            raise _broken(self.num_workers, error) from None
        if not isinstance(made, _InSharedMemory):
            return made
        assert self._memory is not None
        batch = {
            name: np.ndarray(shape, np.dtype(dtype), buffer=self._memory.buf, offset=offset).copy()
            for name, (dtype, shape, offset) in made.layout.items()
        }
        self._free_slots.append(made.slot)
        return batch

    def close(self) -> None:
        """Cancels queued batches, waits for the workers to finish the batch each has in hand (milliseconds) and
        exit, so none outlives the pipeline, then frees the shared memory."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._memory is not None:
            self._memory.close()
            self._memory.unlink()
            self._memory = None


def _broken(num_workers: int, error: Exception) -> BatchWorkerError:
    return BatchWorkerError(
        f"a batch worker process died ({error}); with data.num_workers={num_workers} each worker holds a copy "
        "of the input pipeline: give the host more memory, lower data.num_workers, or use data.num_workers=0"
    )


def describe(num_workers: int) -> str:
    """How batches are made, for the job's console."""
    if num_workers == 0:
        return "batches made in a thread of this process (data.num_workers=0)"
    return f"batches made by {num_workers} worker process{'es' if num_workers > 1 else ''} (data.num_workers)"
