"""Worker processes for the local corpus build: tokenizing (pass 1) and making instances (pass 2) on every core.

Both passes are pure functions of their inputs, so they split into independent tasks whose results the build
consumes in submission order; the corpus is therefore byte for byte the one a single process writes, for any
number of workers:

- pass 1: runs of documents' paragraphs -> their sentences (`RawDocument.sentences`), tokenized: (wordpiece
  ids, word starts, sentence lengths) as flat arrays, what `tokenize_document` makes (a book is cut into runs
  of `CHARACTERS_PER_TASK`, so one long document does not hold a worker while the others wait; short documents,
  a JSON Lines file's paragraphs or web pages, go together up to that size, so that handing a task over, ~0.2 ms
  of this process's time, is not paid per document);
- pass 2: a run of consecutive documents of the memory-mapped token store -> their instances, serialized, per
  split (`split_records_of`; an instance reads random segments of any document, so every worker maps the
  whole store; memory stays a few documents per worker).

The build's own process reads the files' lines (so non-UTF-8 text and empty inputs are reported as before), appends to
the token store and writes the records to the split files (`split_files`): bytes only, so the workers, not
this process, set the speed. At most `2 * num_workers` tasks are in flight, which bounds memory. Workers start
with "spawn" (the parent may hold threads), all at once when the pool is made (so their start-up overlaps the
parent's own set-up), and each runs its tokenizer and numeric libraries single-threaded
(`worker_env.single_threaded_children`): the processes are the parallelism.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from bert_jax.data import batch_workers, worker_env
from bert_jax.data.corpus_spec import KEY_BASE, CorpusOptions, document_key, split_records_of, tokenize_document
from bert_jax.data.documents import RawDocument
from bert_jax.data.token_store import TokenStore

CHARACTERS_PER_TASK = 100_000  # pass 1: text per task (a long book is split into several)
TOKENS_PER_TASK = 200_000  # pass 2: documents per task, up to about this many tokens (at least one document)

# The worker's state, set once per process by `_start_worker` (spawned processes share nothing).
_options: CorpusOptions | None = None
_tokenizer: Any = None
_instance_config: Any = None
_stores: dict[str, TokenStore] = {}


MAX_AUTO_WORKERS = 16  # this process's own share (reading lines, writing files: ~15% here) caps the gain beyond


def auto_num_workers(cores: int | None = None) -> int:
    """Build workers for `--num_workers=-1`: one per core a build may use (it has the host to itself), none on
    one core (a single worker only adds the hand-over; on 2 cores here 2 workers build 1.5x faster than none)."""
    cores = batch_workers.available_cores() if cores is None else cores
    return 0 if cores < 2 else min(MAX_AUTO_WORKERS, cores)


def resolve_num_workers(num_workers: int) -> int:
    """`--num_workers` as given (-1 = automatic) -> the number of build worker processes."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < -1:
        raise ValueError(f"num_workers must be -1 (automatic), 0 (this process) or a count, got {num_workers!r}.")
    return auto_num_workers() if num_workers == -1 else num_workers


class BuildWorkerError(RuntimeError):
    """A build worker died or could not start; the message names the fix."""


def _start_worker(options: CorpusOptions) -> None:
    global _options, _tokenizer, _instance_config
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _options = options
    _tokenizer = options.tokenizer()
    _instance_config = options.instance_config(_tokenizer)


def _tokenize_runs(runs: list[tuple[list[str], bool]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """`_tokenize` of each run (pieces, split) of one task, in order."""
    return [_tokenize(pieces, split) for pieces, split in runs]


def _tokenize(pieces: list[str], split: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A run of a document's pieces (`RawDocument`), split into sentences and tokenized, as flat arrays: (ids
    int32, word starts uint8, lengths of the non-empty tokenized sentences) and the number of sentences."""
    sentences = RawDocument(pieces, split).sentences()
    encoded = tokenize_document(_tokenizer, sentences)
    lengths = np.fromiter((len(ids) for ids, _ in encoded), np.int64, len(encoded))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in encoded), np.int32, total)
    starts = np.fromiter(itertools.chain.from_iterable(starts for _, starts in encoded), np.uint8, total)
    return ids, starts, lengths, len(sentences)


def _split_records(store_dir: str, first: int, last: int) -> list[tuple[str, bytes, np.ndarray]]:
    """The serialized instances of store documents [first, last), per split: (split, its records concatenated,
    their lengths), each split's records in the order `split_records_of` makes them (a blob pickles fast)."""
    store = _stores.get(store_dir)
    if store is None:
        store = _stores[store_dir] = TokenStore(store_dir)
    by_split: dict[str, list[bytes]] = {}
    for index in range(first, last):
        file_index, doc_index = divmod(int(store.keys[index]), KEY_BASE)
        key = document_key(file_index, doc_index)
        for split, record in split_records_of(_options, _instance_config, store, index, key):
            by_split.setdefault(split, []).append(record)
    return [
        (split, b"".join(records), np.fromiter(map(len, records), np.int64, len(records)))
        for split, records in sorted(by_split.items())
    ]


def _piece_runs(document: RawDocument) -> list[list[str]]:
    """A document's pieces in runs of about `CHARACTERS_PER_TASK` (sentences never cross pieces)."""
    runs: list[list[str]] = [[]]
    size = 0
    for piece in document.pieces:
        if size >= CHARACTERS_PER_TASK:
            runs.append([])
            size = 0
        runs[-1].append(piece)
        size += len(piece)
    return runs


def document_ranges(store: TokenStore, tokens_per_task: int | None = None) -> list[tuple[int, int]]:
    """Consecutive document ranges [first, last) of about `tokens_per_task` (default `TOKENS_PER_TASK`) tokens
    each, one document at least."""
    tokens_per_task = tokens_per_task or TOKENS_PER_TASK
    ranges, first, tokens = [], 0, 0
    for index, count in enumerate(store.document_token_counts()):
        tokens += int(count)
        if tokens >= tokens_per_task:
            ranges.append((first, index + 1))
            first, tokens = index + 1, 0
    if first < len(store):
        ranges.append((first, len(store)))
    return ranges


class BuildWorkers:
    """A pool of `num_workers` build processes (see the module docstring); a context manager."""

    def __init__(self, options: CorpusOptions, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"BuildWorkers needs num_workers >= 1, got {num_workers}.")
        self.num_workers = num_workers
        self._pool = concurrent.futures.ProcessPoolExecutor(
            num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(options,)
        )
        worker_env.start_all(self._pool, num_workers)  # they load their tokenizers while this process sets up

    def _ordered(self, calls: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """Results of `calls` ((function, *args) each), in order, with at most 2 * num_workers in flight."""
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        calls = iter(calls)
        try:
            for call in calls:
                pending.append(self._pool.submit(*call))
                if len(pending) >= 2 * self.num_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise BuildWorkerError(
                "A corpus build worker died or could not start (killed, out of memory, or a script that calls "
                "build_corpus without `if __name__ == '__main__':`); rerun with fewer --num_workers (0 builds in "
                "this process)."
            ) from None
        finally:
            for future in pending:
                future.cancel()

    def tokenize_documents(
        self, documents: Iterable[tuple[int, RawDocument]]
    ) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray], int]]:
        """(key, document) -> (key, (ids, word starts, sentence lengths), number of sentences): each document
        split into sentences and tokenized, as flat arrays (`TokenStoreWriter.add_flat`), in input order."""
        runs_left: collections.deque[tuple[int, int]] = collections.deque()  # (key, runs) per document submitted

        def calls() -> Iterator[tuple[Any, ...]]:
            """Tasks of about `CHARACTERS_PER_TASK`: a long document's runs one by one, short documents together."""
            task: list[tuple[list[str], bool]] = []
            size = 0
            for key, document in documents:
                runs = _piece_runs(document)
                runs_left.append((key, len(runs)))
                for run in runs:
                    task.append((run, document.split))
                    size += sum(map(len, run))
                    if size >= CHARACTERS_PER_TASK:
                        yield (_tokenize_runs, task)
                        task, size = [], 0
            if task:
                yield (_tokenize_runs, task)

        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
        for results in self._ordered(calls()):
            for part in results:  # a document's runs may span tasks: its parts gather until it is whole
                parts.append(part)
                key, runs = runs_left[0]
                if len(parts) < runs:
                    continue
                runs_left.popleft()
                ids, starts, lengths = (np.concatenate([part[column] for part in parts]) for column in range(3))
                yield key, (ids, starts, lengths), sum(part[3] for part in parts)
                parts = []

    def split_records(
        self, store_dir: str, store: TokenStore, documents_done: Callable[[int], Any] | None = None
    ) -> Iterator[tuple[str, bytes]]:
        """Every (split, serialized instance) of the corpus; each split's in the order a single process makes
        them (splits are written to files of their own). `documents_done(n)` after each task, with the documents
        done so far."""
        ranges = document_ranges(store)
        calls = ((_split_records, store_dir, first, last) for first, last in ranges)
        for (_, last), parts in zip(ranges, self._ordered(calls), strict=True):
            for split, blob, lengths in parts:
                offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
                for start, end in itertools.pairwise(offsets):
                    yield split, blob[start:end]
            if documents_done is not None:
                documents_done(last)

    def close(self) -> None:
        """Stops the workers without waiting for them to exit (~0.1 s of interpreter teardown each, which
        overlaps what the caller does next; the pool joins them in the background and at exit)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> BuildWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
