"""Worker processes for the local corpus build: tokenizing (pass 1) and making instances (pass 2) on every core.

Both passes are pure functions of their inputs, so they split into independent tasks whose results the build
consumes in submission order; the corpus is therefore byte for byte the one a single process writes, for any
number of workers:

- pass 1: a run of a document's sentences -> their (wordpiece ids, word starts), as `tokenize_document` does
  per sentence (a book is cut into runs of `SENTENCES_PER_TASK`, so one long document does not hold a worker
  while the others wait);
- pass 2: a run of consecutive documents of the memory-mapped token store -> the (key, example) pairs of one
  split, `instances_of` for each (an instance reads random segments of any document, so every worker maps the
  whole store; memory stays a few documents per worker).

The build's own process reads the files (so non-UTF-8 text and empty inputs are reported as before), writes the
token store and hands the examples to TFDS's writer. At most `2 * num_workers` tasks are in flight, which bounds
memory. Workers start with "spawn" (the parent may hold threads), and each runs its tokenizer single-threaded
(`TOKENIZERS_PARALLELISM=false`): the processes are the parallelism.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from bert_jax.data.corpus_spec import KEY_BASE, CorpusOptions, document_key, instances_of, tokenize_document
from bert_jax.data.token_store import TokenStore

SENTENCES_PER_TASK = 2048  # pass 1: sentences per task (a long book is split into several)
TOKENS_PER_TASK = 400_000  # pass 2: documents per task, up to about this many tokens (at least one document)

# The worker's state, set once per process by `_start_worker` (spawned processes share nothing).
_options: CorpusOptions | None = None
_tokenizer: Any = None
_instance_config: Any = None
_stores: dict[str, TokenStore] = {}


class BuildWorkerError(RuntimeError):
    """A build worker died or could not start; the message names the fix."""


def _start_worker(options: CorpusOptions) -> None:
    global _options, _tokenizer, _instance_config
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _options = options
    _tokenizer = options.tokenizer()
    _instance_config = options.instance_config(_tokenizer)


def _tokenize(sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run of sentences, tokenized, as flat arrays: (ids int32, word starts uint8, per-sentence lengths)."""
    encoded = tokenize_document(_tokenizer, sentences)
    lengths = np.fromiter((len(ids) for ids, _ in encoded), np.int64, len(encoded))
    ids = np.fromiter((i for ids, _ in encoded for i in ids), np.int32, int(lengths.sum()))
    starts = np.fromiter((s for _, starts in encoded for s in starts), np.uint8, int(lengths.sum()))
    return ids, starts, lengths


def _instances(store_dir: str, split: str, first: int, last: int) -> list[tuple[str, dict[str, Any]]]:
    """The (key, example) pairs of `split` made from store documents [first, last)."""
    store = _stores.get(store_dir)
    if store is None:
        store = _stores[store_dir] = TokenStore(store_dir)
    pairs = []
    for index in range(first, last):
        file_index, doc_index = divmod(int(store.keys[index]), KEY_BASE)
        key = document_key(file_index, doc_index)
        pairs.extend(instances_of(_options, _instance_config, store, index, key, split))
    return pairs


def _sentence_runs(sentences: list[str]) -> list[list[str]]:
    return [sentences[i : i + SENTENCES_PER_TASK] for i in range(0, len(sentences), SENTENCES_PER_TASK)] or [[]]


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
                "A corpus build worker died (killed, or out of memory); rerun with fewer --num_workers "
                "(0 builds in this process)."
            ) from None
        finally:
            for future in pending:
                future.cancel()

    def tokenize_documents(
        self, documents: Iterable[tuple[int, list[str]]]
    ) -> Iterator[tuple[int, list[tuple[np.ndarray, np.ndarray]]]]:
        """(key, sentences) -> (key, its non-empty sentences tokenized), in input order."""
        runs_left: collections.deque[tuple[int, int]] = collections.deque()  # (key, runs) per document submitted

        def calls() -> Iterator[tuple[Any, ...]]:
            for key, sentences in documents:
                runs = _sentence_runs(sentences)
                runs_left.append((key, len(runs)))
                for run in runs:
                    yield (_tokenize, run)

        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for part in self._ordered(calls()):
            parts.append(part)
            key, runs = runs_left[0]
            if len(parts) < runs:
                continue
            runs_left.popleft()
            sentences = []
            for ids, starts, lengths in parts:
                bounds = np.concatenate([[0], np.cumsum(lengths)])
                sentences += [(ids[a:b], starts[a:b]) for a, b in itertools.pairwise(bounds)]
            parts = []
            yield key, sentences

    def instances(
        self, store_dir: str, split: str, store: TokenStore, documents_done: Callable[[int], Any] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (key, example) of `split`, in the order a single process makes them; `documents_done(n)` after
        each task, with the documents done so far."""
        ranges = document_ranges(store)
        calls = ((_instances, store_dir, split, first, last) for first, last in ranges)
        for (_, last), pairs in zip(ranges, self._ordered(calls), strict=True):
            yield from pairs
            if documents_done is not None:
                documents_done(last)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BuildWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
