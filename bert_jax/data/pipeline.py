"""Pretraining batches from a random-access source of instances: deterministic order, trivial resumption.

The source is any sequence of instance dicts (a list, or a `tfds` data source over array_record files) with
`len(source)`, `source[i]` and optionally `source.__getitems__(indices)` (one call per batch when present). Each
item holds exactly `tokens` (int32 [n], `[CLS] A [SEP] B [SEP]`, unpadded), `segment_ids` (int32 [n]),
`word_starts` (bool [n]) and `is_random_next` (integer scalar, 1 = B is random).

Order (the whole design rests on it; every process computes it independently, no communication):

  * Epoch e visits the instances in the order `epoch_permutation(N, seed=seed, epoch=e)`: a pure function of
    (seed, e), namely `np.random.default_rng([seed, e, ORDER_STREAM]).permutation(N)` (`arange(N)` with
    `shuffle=False`).
  * Global batch k of epoch e is `perm[k*G:(k+1)*G]` (G = global batch size). The incomplete tail of an epoch
    (`N % G` instances) is dropped; the next epoch starts with a new permutation.
  * Process p of P takes rows `[p*b:(p+1)*b]` of that global batch, b = G / P.
  * Masks come from `masking.mask_batch` with `example_ids` = the global instance indices and (seed, e), so an
    instance's mask depends on (seed, e, index) only: not on the process, the row or the batch-mates.

So the iterator's state is just the position of the next global batch, `{"epoch": e, "batch_in_epoch": k}`,
plus a format version and a fingerprint (dataset size, global batch size, seed, shuffle) that catches restoring
into a different pipeline. The state names no process, so a run can resume on another number of processes (same
global batch) and every global batch is bitwise the same.

Evaluation (`padded_eval_batches`): one pass in index order, the last global batch filled up with copies of the
first instances marked `example_weights` 0 (and their `masked_lm_weights` zeroed), so that every instance counts
exactly once and every process runs the same number of steps.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from bert_jax.data import batch_workers, instance_records
from bert_jax.data.masking import MaskingConfig, mask_batch

STATE_VERSION = 1
ORDER_STREAM = 0x4F524452  # "ORDR": keeps the order stream apart from any other stream seeded by (seed, epoch)
_FINGERPRINT_KEYS = ("dataset_size", "global_batch_size", "seed", "shuffle")
_POLL_SECONDS = 0.1  # how often a blocked producer / consumer checks whether the other side went away
_JOIN_SECONDS = 30.0

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """What fixes the batches: global batch size, padded length, seed, order, epochs; and how far to read ahead.

    `num_epochs=None` repeats forever. `prefetch` batches are prepared ahead by a background thread (0: batches
    are made synchronously in `next`). `num_workers` > 0 makes them in that many worker processes instead
    (`batch_workers.py`), `prefetch + 2 * num_workers` batches in flight; the batches are the same either way.
    """

    global_batch_size: int
    max_seq_length: int
    seed: int
    shuffle: bool = True
    num_epochs: int | None = None
    prefetch: int = 2
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require_int("global_batch_size", self.global_batch_size, minimum=1)
        _require_int("max_seq_length", self.max_seq_length, minimum=1)
        _require_int("seed", self.seed, minimum=0)
        _require_int("prefetch", self.prefetch, minimum=0)
        _require_int("num_workers", self.num_workers, minimum=0)
        if self.num_epochs is not None:
            _require_int("num_epochs", self.num_epochs, minimum=1)
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"shuffle must be a bool, got {self.shuffle!r}")


def _is_int(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    """Raises a ValueError naming the field unless `value` is an int >= minimum (bools rejected)."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def epoch_permutation(num_examples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of epoch `epoch`: `default_rng([seed, epoch, ORDER_STREAM]).permutation(num_examples)`.

    Identity (`arange`) when `shuffle` is False. Values are those of `Generator.permutation`; they are produced
    by shuffling an int32 `arange` in place (the same Fisher-Yates draws), halving memory for large corpora.
    """
    dtype = np.int32 if num_examples < 2**31 else np.int64
    order = np.arange(num_examples, dtype=dtype)
    if shuffle:
        np.random.default_rng([seed, epoch, ORDER_STREAM]).shuffle(order)
    return order


def jax_process_topology() -> dict[str, int]:
    """`{"process_index": ..., "process_count": ...}` of this JAX process, to pass as keyword arguments.

    The pipeline never asks JAX itself, so it runs (and is tested) without JAX and simulated processes are easy.
    """
    import jax  # imported here: only callers who want JAX's topology pay for it

    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


class _Position(NamedTuple):
    """Where the next global batch comes from."""

    epoch: int
    batch_in_epoch: int


class _Schedule:
    """Which global instance indices make up each (epoch, batch) and which rows of it belong to this process."""

    def __init__(self, dataset_size: int, config: PipelineConfig, process_index: int, process_count: int) -> None:
        self.dataset_size = dataset_size
        self.config = config
        self.local_batch_size = config.global_batch_size // process_count
        self.row_offset = process_index * self.local_batch_size
        self.batches_per_epoch = dataset_size // config.global_batch_size
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, permutation); replaced whole, thread-safe

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order, computed once per epoch (the last one is kept)."""
        cached = self._cached
        if cached is None or cached[0] != epoch:
            perm = epoch_permutation(self.dataset_size, seed=self.config.seed, epoch=epoch, shuffle=self.config.shuffle)
            cached = self._cached = (epoch, perm)
        return cached[1]

    def local_indices(self, position: _Position) -> np.ndarray:
        """This process's rows of global batch `position`: global instance indices, [b]."""
        start = position.batch_in_epoch * self.config.global_batch_size + self.row_offset
        return self.permutation(position.epoch)[start : start + self.local_batch_size]

    def following(self, position: _Position) -> _Position:
        """The position after `position` (the first batch of the next epoch after an epoch's last full batch)."""
        if position.batch_in_epoch + 1 >= self.batches_per_epoch:
            return _Position(position.epoch + 1, 0)
        return _Position(position.epoch, position.batch_in_epoch + 1)

    def finished(self, position: _Position) -> bool:
        """True once `num_epochs` epochs are done."""
        return self.config.num_epochs is not None and position.epoch >= self.config.num_epochs

    def positions(self, start: _Position) -> Iterator[_Position]:
        """Positions from `start` until the end (forever when `num_epochs` is None)."""
        position = start
        while not self.finished(position):
            yield position
            position = self.following(position)


class _Assembler:
    """Reads instances by global index and turns them into one fixed-shape, masked batch."""

    def __init__(self, source: Sequence[Mapping[str, Any]], max_seq_length: int, masking: MaskingConfig, seed: int):
        self.source = source
        self.max_seq_length = max_seq_length
        self.masking = masking
        self.seed = seed

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The instances at `indices` as columns (`instance_records.columns_of_items`): one `read_columns` call
        when the source decodes whole batches itself (`corpus.CorpusSource`), else one `__getitems__` call when it
        has one, else one lookup per index."""
        keys = indices.tolist()
        read_columns = getattr(self.source, "read_columns", None)
        if read_columns is not None:
            columns = read_columns(keys)
        else:
            getitems = getattr(self.source, "__getitems__", None)
            items = getitems(keys) if getitems is not None else [self.source[i] for i in keys]
            columns = instance_records.columns_of_items(items)
        if len(columns["lengths"]) != len(keys):
            raise ValueError(f"source returned {len(columns['lengths'])} items for {len(keys)} indices")
        return columns

    def batch_bytes(self, rows: int) -> int:
        """Bytes of one batch of `rows` rows: three int32 [rows, T] and three 4-byte [rows, P] arrays, labels."""
        return 4 * rows * (3 * self.max_seq_length + 3 * self.masking.max_predictions + 1)

    def assemble(self, indices: np.ndarray, epoch: int) -> Batch:
        """The batch of instances `indices` (global ids, which also key their masks) in epoch `epoch`."""
        padded = pad_columns(self.read(indices), indices, self.max_seq_length, self.masking.pad_id)
        masked = mask_batch(
            padded["tokens"],
            padded["word_starts"],
            indices,
            self.masking,
            seed=self.seed,
            epoch=epoch,
            lengths=padded["lengths"],
        )
        attention_mask = (np.arange(self.max_seq_length)[None, :] < padded["lengths"][:, None]).astype(np.int32)
        return {
            "input_ids": masked["input_ids"],
            "attention_mask": attention_mask,
            "token_type_ids": padded["segment_ids"],
            "masked_lm_positions": masked["masked_lm_positions"],
            "masked_lm_ids": masked["masked_lm_ids"],
            "masked_lm_weights": masked["masked_lm_weights"],
            "next_sentence_labels": padded["next_sentence_labels"],
        }


def pad_columns(
    columns: Mapping[str, np.ndarray], indices: np.ndarray, max_seq_length: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Instances as columns -> `tokens` / `segment_ids` / `word_starts` [b, T], `lengths` and NSP labels [b].

    Vectorized: each concatenated field is scattered into a preallocated array through the mask of real
    positions (row-major, so the concatenation order matches). `indices` only names offending instances in errors.
    """
    lengths = np.asarray(columns["lengths"], np.int64)
    batch = len(lengths)
    _check_lengths(lengths, columns["segment_lengths"], columns["start_lengths"], indices, max_seq_length)
    real = np.arange(max_seq_length)[None, :] < lengths[:, None]
    tokens = np.full((batch, max_seq_length), pad_id, np.int32)
    segment_ids = np.zeros((batch, max_seq_length), np.int32)
    word_starts = np.zeros((batch, max_seq_length), bool)
    tokens[real] = columns["tokens"]
    segment_ids[real] = columns["segment_ids"]
    word_starts[real] = columns["word_starts"]
    return {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "word_starts": word_starts,
        "lengths": lengths,
        "next_sentence_labels": np.asarray(columns["is_random_next"], np.int32),
    }


def _check_lengths(
    lengths: np.ndarray, segment_lengths: np.ndarray, start_lengths: np.ndarray, indices: np.ndarray, limit: int
) -> None:
    """Every item fits in `limit` tokens and its three per-token fields have one length."""
    too_long = np.flatnonzero(lengths > limit)
    if too_long.size:
        row = too_long[0]
        raise ValueError(
            f"instance {int(indices[row])} has {int(lengths[row])} tokens, more than max_seq_length={limit} "
            f"({too_long.size} such instance(s) in this batch); rebuild the data or raise max_seq_length"
        )
    uneven = np.flatnonzero((segment_lengths != lengths) | (start_lengths != lengths))
    if uneven.size:
        row = uneven[0]
        raise ValueError(
            f"instance {int(indices[row])}: tokens, segment_ids and word_starts have lengths "
            f"{int(lengths[row])}, {int(segment_lengths[row])}, {int(start_lengths[row])}; they must be equal"
        )


class _End:
    """Queued by the producer after the last batch."""


@dataclasses.dataclass
class _Failure:
    """Queued by the producer when making a batch raised; the consumer re-raises `error`."""

    error: Exception


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Puts `item`, waiting for room; gives up (False) once `stop` is set."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _produce(schedule: _Schedule, assembler: _Assembler, start: _Position, out: queue.Queue, stop: threading.Event):
    """Producer thread body: (position, batch) pairs from `start` on, then `_End`; a `_Failure` on error.

    It references only the schedule, the assembler and the queue, never the iterator, so an abandoned iterator
    can be garbage collected (its finalizer then stops this thread).
    """
    try:
        for position in schedule.positions(start):
            batch = assembler.assemble(schedule.local_indices(position), position.epoch)
            if not _put(out, (position, batch), stop):
                return
        _put(out, _End(), stop)
    except Exception as error:
        _put(out, _Failure(error), stop)


class _Prefetcher:
    """A daemon thread filling a bounded queue with upcoming batches."""

    def __init__(self, schedule: _Schedule, assembler: _Assembler, start: _Position, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.thread = threading.Thread(
            target=_produce,
            args=(schedule, assembler, start, self._queue, self._stop),
            name="bert_jax-pretraining-prefetch",
            daemon=True,
        )
        self.thread.start()

    def get(self) -> Any:
        """The next queued item; raises if the thread died without queueing anything (it never should)."""
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self.thread.is_alive() and self._queue.empty():
                    raise RuntimeError("prefetch thread ended without a result") from None

    def close(self) -> None:
        """Stops the thread and waits for it (it finishes the batch in hand, then sees the stop flag)."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(_JOIN_SECONDS)


class _PoolPrefetcher:
    """Batches from worker processes: futures submitted in batch order and collected in that order."""

    def __init__(
        self, schedule: _Schedule, assembler: _Assembler, start: _Position, depth: int, num_workers: int
    ) -> None:
        self._schedule = schedule
        self._positions = schedule.positions(start)
        self._in_flight: collections.deque = collections.deque()
        self._depth = depth
        self._workers = batch_workers.BatchWorkers(
            assembler, num_workers, slots=depth, slot_bytes=assembler.batch_bytes(schedule.local_batch_size)
        )

    def _top_up(self) -> None:
        while len(self._in_flight) < self._depth:
            position = next(self._positions, None)
            if position is None:
                return
            indices = self._schedule.local_indices(position)
            self._in_flight.append((position, self._workers.submit(indices, position.epoch)))

    def get(self) -> Any:
        """The next (position, batch), `_End` after the last, or a `_Failure` carrying what a worker raised."""
        try:
            self._top_up()
            if not self._in_flight:
                return _End()
            position, future = self._in_flight.popleft()
            batch = self._workers.result(future)
            self._top_up()  # keep the workers busy while the caller uses this batch
        except Exception as error:
            return _Failure(error)
        return position, batch

    def close(self) -> None:
        """Stops the workers; batches in flight are dropped."""
        self._in_flight.clear()
        self._workers.close()


class PretrainingBatches:
    """Iterator over this process's pretraining batches; see the module docstring for the order and the state.

    Each batch is a dict of numpy arrays: `input_ids`, `attention_mask`, `token_type_ids` [b, T] int32;
    `masked_lm_positions`, `masked_lm_ids` [b, P] int32 and `masked_lm_weights` [b, P] float32;
    `next_sentence_labels` [b] int32; b = global_batch_size / process_count, T = max_seq_length,
    P = masking.max_predictions. Use it as a context manager (or call `close`) to stop the prefetch thread or the worker processes.
    """

    def __init__(
        self,
        source: Sequence[Mapping[str, Any]],
        config: PipelineConfig,
        masking: MaskingConfig,
        *,
        process_index: int = 0,
        process_count: int = 1,
        start_state: Mapping[str, Any] | None = None,
    ) -> None:
        _check_topology(config.global_batch_size, process_index, process_count)
        size = len(source)
        if size == 0:
            raise ValueError("the source is empty: there is nothing to make batches from")
        if size < config.global_batch_size:
            raise ValueError(
                f"the source has {size} instances, fewer than one global batch of {config.global_batch_size}; "
                "lower global_batch_size or use more data"
            )
        self.config = config
        self._schedule = _Schedule(size, config, process_index, process_count)
        self._assembler = _Assembler(source, config.max_seq_length, masking, config.seed)
        self._position = _Position(0, 0)
        self._prefetcher: _Prefetcher | _PoolPrefetcher | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        if start_state is not None:
            self.restore(start_state)

    @property
    def local_batch_size(self) -> int:
        """Rows per batch on this process: global_batch_size / process_count."""
        return self._schedule.local_batch_size

    @property
    def batches_per_epoch(self) -> int:
        """Full global batches per epoch (the tail of N % global_batch_size instances is dropped)."""
        return self._schedule.batches_per_epoch

    def __iter__(self) -> PretrainingBatches:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise ValueError("this PretrainingBatches is closed")
        if self._schedule.finished(self._position):
            raise StopIteration
        if self.config.prefetch == 0 and self.config.num_workers == 0:
            batch = self.batch_at(*self._position)
            self._position = self._schedule.following(self._position)
            return batch
        return self._next_prefetched()

    def _next_prefetched(self) -> Batch:
        """The next batch from the producer thread (started here, lazily, from the current position)."""
        if self._prefetcher is None:
            if self.config.num_workers:
                depth = self.config.prefetch + 2 * self.config.num_workers
                self._prefetcher = _PoolPrefetcher(
                    self._schedule, self._assembler, self._position, depth, self.config.num_workers
                )
            else:
                self._prefetcher = _Prefetcher(self._schedule, self._assembler, self._position, self.config.prefetch)
            self._finalizer = weakref.finalize(self, self._prefetcher.close)
        item = self._prefetcher.get()
        if isinstance(item, _End):
            raise StopIteration
        if isinstance(item, _Failure):
            self._stop_prefetching()  # a later `next` retries from the same position
            raise item.error
        position, batch = item
        self._position = self._schedule.following(position)
        return batch

    def batch_at(self, epoch: int, batch_in_epoch: int) -> Batch:
        """This process's batch at any position (random access; does not move the iterator)."""
        if not (0 <= batch_in_epoch < self.batches_per_epoch and epoch >= 0):
            raise ValueError(f"no batch {batch_in_epoch} in epoch {epoch} ({self.batches_per_epoch} per epoch)")
        position = _Position(epoch, batch_in_epoch)
        return self._assembler.assemble(self._schedule.local_indices(position), epoch)

    def state(self) -> dict[str, Any]:
        """JSON-serializable position of the NEXT batch `next` will return (batches already prefetched excluded)."""
        return {
            "version": STATE_VERSION,
            "epoch": self._position.epoch,
            "batch_in_epoch": self._position.batch_in_epoch,
            **self._fingerprint(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues from `state` (from `state()` of a pipeline over the same data, seed and global batch size)."""
        _check_state(state, self._fingerprint(), self.batches_per_epoch)
        self._stop_prefetching()
        self._position = _Position(int(state["epoch"]), int(state["batch_in_epoch"]))

    def close(self) -> None:
        """Stops the prefetch thread; the iterator cannot be used afterwards."""
        self._stop_prefetching()
        self._closed = True

    def __enter__(self) -> PretrainingBatches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fingerprint(self) -> dict[str, Any]:
        """What a state must agree on to mean the same batches here."""
        return {
            "dataset_size": self._schedule.dataset_size,
            "global_batch_size": self.config.global_batch_size,
            "seed": self.config.seed,
            "shuffle": self.config.shuffle,
        }

    def _stop_prefetching(self) -> None:
        """Stops and forgets the producer thread (its queued batches are discarded)."""
        if self._finalizer is not None:
            self._finalizer()  # runs `_Prefetcher.close` once
        self._prefetcher = None
        self._finalizer = None


def _check_topology(global_batch_size: int, process_index: int, process_count: int) -> None:
    """process_count divides the global batch and process_index is one of the processes."""
    _require_int("process_count", process_count, minimum=1)
    _require_int("process_index", process_index, minimum=0)
    if process_index >= process_count:
        raise ValueError(f"process_index {process_index} is out of range for process_count {process_count}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}; "
            "every process must get the same number of rows"
        )


def _check_state(state: Mapping[str, Any], fingerprint: Mapping[str, Any], batches_per_epoch: int) -> None:
    """A clear error unless `state` is a current-format state of a pipeline with this fingerprint."""
    if not isinstance(state, Mapping):
        raise ValueError(f"a pipeline state is a dict from PretrainingBatches.state(), got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"pipeline state has format version {state.get('version')!r}; expected {STATE_VERSION}")
    missing = [key for key in ("epoch", "batch_in_epoch", *_FINGERPRINT_KEYS) if key not in state]
    if missing:
        raise ValueError(f"pipeline state lacks {', '.join(missing)}")
    differences = [f"{key} {state[key]!r} (here {here!r})" for key, here in fingerprint.items() if state[key] != here]
    if differences:
        raise ValueError(
            "pipeline state was saved for a different pipeline: " + "; ".join(differences) + ". Restore it only "
            "with the same data, seed, shuffle and global_batch_size (process_count may change)"
        )
    epoch, batch_in_epoch = state["epoch"], state["batch_in_epoch"]
    if not (_is_int(epoch) and _is_int(batch_in_epoch) and epoch >= 0):
        raise ValueError(f"pipeline state has epoch {epoch!r}, batch_in_epoch {batch_in_epoch!r}: need integers")
    if not 0 <= batch_in_epoch < batches_per_epoch:
        raise ValueError(f"pipeline state batch_in_epoch {batch_in_epoch} is outside [0, {batches_per_epoch})")


def padded_eval_batches(
    source: Sequence[Mapping[str, Any]],
    masking: MaskingConfig,
    *,
    global_batch_size: int,
    max_seq_length: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """One deterministic pass over every instance, in index order, for evaluation.

    Global batch k holds instances [k*G, (k+1)*G); the last one is filled up with copies of instances 0, 1, ...
    that carry `example_weights` 0 and all-zero `masked_lm_weights` (real rows: 1 and the mask's weights), so
    weighted metrics count each instance exactly once, and all processes run ceil(N / G) steps. Copies rather
    than all-padding rows keep every row's attention non-empty. Masks use (seed, epoch 0), fixed across runs.
    """
    _require_int("global_batch_size", global_batch_size, minimum=1)
    _require_int("max_seq_length", max_seq_length, minimum=1)
    _require_int("seed", seed, minimum=0)
    _check_topology(global_batch_size, process_index, process_count)
    if len(source) == 0:
        raise ValueError("the evaluation source is empty")
    assembler = _Assembler(source, max_seq_length, masking, seed)
    return _eval_batches(assembler, len(source), global_batch_size, process_index, process_count)


def _eval_batches(
    assembler: _Assembler, size: int, global_batch_size: int, process_index: int, process_count: int
) -> Iterator[Batch]:
    """The generator behind `padded_eval_batches` (separate so that argument errors surface at the call)."""
    local = global_batch_size // process_count
    for start in range(0, size, global_batch_size):
        slots = np.arange(start + process_index * local, start + (process_index + 1) * local)
        weights = (slots < size).astype(np.float32)
        batch = assembler.assemble(slots % size, epoch=0)
        batch["masked_lm_weights"] *= weights[:, None]
        batch["example_weights"] = weights
        yield batch
