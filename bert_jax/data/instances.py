"""Next-sentence-prediction instances from documents, with the original `create_pretraining_data.py` semantics.

A document is a sequence of sentences; a sentence is a pair `(token_ids, word_starts)` of equal, non-zero length
(`word_starts[k]` is True when piece k begins a word, i.e. is not a "##" continuation). For each document the
original algorithm, followed here step by step:

  * `max_num_tokens = max_seq_length - 3` (room for [CLS] A [SEP] B [SEP]); the target length is
    `max_num_tokens`, or with probability `short_seq_prob` a uniform integer in [2, max_num_tokens]. As in the
    original this is drawn ONCE PER DOCUMENT (per pass); `short_target_per_instance=True` redraws it after each
    instance instead.
  * Sentences accumulate into a chunk until it reaches the target length or the document ends. Segment A is the
    first `a_end` sentences of the chunk, `a_end` uniform in [1, len(chunk) - 1] (1 for a one-sentence chunk).
  * With probability 0.5, or always when the chunk has one sentence, B is "random": sentences from a uniformly
    random position of another document, taken until they reach `target - len(A)`; the chunk's unused sentences
    are put back (the next chunk starts with them). Otherwise B is the rest of the chunk.
  * The pair is truncated to `max_num_tokens` by repeatedly removing one token from the longer segment (B on a
    tie), from its front or its back with probability 1/2 each.

Streaming and determinism: `create_instances_from_document` needs only the current document and, for random
segments, `len(documents)` and `documents[j]`; any `DocumentStore` (a list, or `LazyDocumentStore`, which loads
documents on demand and keeps a few) will do, so memory is bounded by a few documents, not the corpus. Every
random choice for document i comes from `np.random.default_rng([seed, dupe_index, i])`, so its instances do not
depend on which other documents were processed, in what order, or by which process.

Deviations from the original, all deliberate:
  * The random document is drawn uniformly among the OTHER documents (the original retries 10 times and may, with
    tiny probability, keep the same one). With a single document there is no other one: B is then a random
    segment of that same document, still labelled random (`is_random_next=True`), exactly what the original ends
    up doing; a one-document corpus works but its next-sentence labels are noisy.
  * numpy's Generator replaces Python's `random.Random`, so streams differ from the original's (the
    distributions do not); truncation draws the number of front removals as Binomial(n, 1/2), which is the
    distribution of n independent coin flips.
  * Word-start flags travel with their tokens unchanged: after a front truncation a segment may begin with a
    continuation piece (`word_starts` False). Consumers must treat such a piece as starting a word, as
    `bert_jax.data.masking` does (it starts a new word after any special token).
  * [CLS] and [SEP] get `word_starts=True` (each is a unit of its own). They are never maskable: the masking code
    recognises them by id, not by this flag.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np

Sentence = tuple[Sequence[int], Sequence[bool]]
Document = Sequence[Sentence]
_Piece = tuple[np.ndarray, np.ndarray]  # (int32 token ids, bool word starts) of one sentence or segment


class DocumentStore(Protocol):
    """What instance creation needs from a corpus: its size and random access to one document."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Document: ...


class LazyDocumentStore:
    """Documents loaded on demand by `load(index)`, keeping the `cache_size` most recently used ones.

    Instance creation touches the current document and one random document per random-next instance, so a small
    cache bounds memory to a few documents whatever the corpus size.
    """

    def __init__(self, num_documents: int, load: Callable[[int], Document], cache_size: int = 4) -> None:
        if num_documents < 1 or cache_size < 1:
            raise ValueError(f"need num_documents >= 1 and cache_size >= 1, got {num_documents}, {cache_size}")
        self._num_documents = num_documents
        self._load = load
        self._cache_size = cache_size
        self._cache: collections.OrderedDict[int, Document] = collections.OrderedDict()

    def __len__(self) -> int:
        return self._num_documents

    def __getitem__(self, index: int) -> Document:
        if not 0 <= index < self._num_documents:
            raise IndexError(f"document {index} out of range [0, {self._num_documents})")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        document = self._load(index)
        self._cache[index] = document
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return document


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstanceConfig:
    """How instances are cut: sequence length, short-sequence probability and the two special ids."""

    cls_id: int
    sep_id: int
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    short_target_per_instance: bool = False
    # The original makes B random whenever the chunk is a single sentence (a sentence that fills the target, or
    # a document's last one), which pushes the random-next rate above 50% (52% on books + WikiText). When set,
    # such a chunk is instead cut at a random word boundary into A and its actual continuation B half the time.
    split_single_sentence_chunks: bool = False

    def __post_init__(self) -> None:
        if self.max_seq_length < 5:
            raise ValueError(
                f"max_seq_length must be >= 5 (3 specials + 1 token per segment), got {self.max_seq_length}"
            )
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")

    @property
    def max_num_tokens(self) -> int:
        """Tokens available to A and B together: the sequence minus [CLS] and two [SEP]."""
        return self.max_seq_length - 3


@dataclasses.dataclass(frozen=True, eq=False)
class Instance:
    """One unpadded NSP example: `[CLS] A [SEP] B [SEP]` and where it came from.

    `tokens` int32, `segment_ids` int32 (0 for [CLS] A [SEP], 1 for B [SEP]), `word_starts` bool (True for the
    specials). `random_document_index` is the document B was taken from when `is_random_next`, else -1.
    `target_seq_length` and `chunk_sentences` (sentences in the chunk A was cut from; 1 forces a random B) are
    provenance, kept for statistics and debugging.
    """

    tokens: np.ndarray
    segment_ids: np.ndarray
    word_starts: np.ndarray
    is_random_next: bool
    document_index: int
    random_document_index: int
    target_seq_length: int
    chunk_sentences: int


def document_rng(seed: int, dupe_index: int, document_index: int) -> np.random.Generator:
    """The generator behind every random choice for one document in one pass (`dupe_index`) over the corpus."""
    return np.random.default_rng([seed, dupe_index, document_index])


def iter_instances(
    documents: DocumentStore,
    config: InstanceConfig,
    *,
    seed: int,
    dupe_index: int = 0,
    document_indices: Iterable[int] | None = None,
) -> Iterator[Instance]:
    """Instances of `document_indices` (default: all documents, in order), one document after another.

    Pass a shard of the indices to split the work across processes; the result per document is the same.
    """
    indices = range(len(documents)) if document_indices is None else document_indices
    for document_index in indices:
        yield from create_instances_from_document(documents, document_index, config, seed=seed, dupe_index=dupe_index)


def create_instances_from_document(
    documents: DocumentStore, document_index: int, config: InstanceConfig, *, seed: int, dupe_index: int = 0
) -> Iterator[Instance]:
    """Yields the instances of document `document_index`, in order (see the module docstring for the rules)."""
    rng = document_rng(seed, dupe_index, document_index)
    document = documents[document_index]
    if len(document) == 0:
        raise ValueError(f"document {document_index} is empty; drop empty documents when building the store")
    target = _draw_target_length(rng, config)
    chunk: list[_Piece] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        sentence = _sentence_arrays(document[i], document_index, i)
        chunk.append(sentence)
        chunk_length += len(sentence[0])
        if i == len(document) - 1 or chunk_length >= target:
            instance, unused = _instance_from_chunk(chunk, documents, document_index, target, config, rng)
            yield instance
            i -= unused  # put the unused sentences back: the next chunk starts with them
            chunk, chunk_length = [], 0
            if config.short_target_per_instance:
                target = _draw_target_length(rng, config)
        i += 1


def truncate_seq_pair(
    length_a: int, length_b: int, max_num_tokens: int, rng: np.random.Generator
) -> tuple[slice, slice]:
    """Slices of A and B that keep at most `max_num_tokens` tokens in total, cut as the original does.

    The original removes one token at a time from the longer segment (B on a tie), from the front or the back
    with probability 1/2. Which segment loses each token depends only on the lengths, so the counts are computed
    directly; the front removals of a segment are then Binomial(count, 1/2).
    """
    removed_a, removed_b = _removal_counts(length_a, length_b, max_num_tokens)
    front_a = int(rng.binomial(removed_a, 0.5)) if removed_a else 0
    front_b = int(rng.binomial(removed_b, 0.5)) if removed_b else 0
    return (
        slice(front_a, length_a - (removed_a - front_a)),
        slice(front_b, length_b - (removed_b - front_b)),
    )


def pad_instances(instances: Sequence[Instance], max_seq_length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Stacks instances into fixed-shape arrays: tokens/segment_ids/word_starts [B, T], lengths and NSP labels [B].

    `next_sentence_labels` is 1 when B is random, as in the original. Padding is `pad_id` / 0 / False.
    """
    batch = len(instances)
    tokens = np.full((batch, max_seq_length), pad_id, np.int32)
    segment_ids = np.zeros((batch, max_seq_length), np.int32)
    word_starts = np.zeros((batch, max_seq_length), bool)
    lengths = np.zeros(batch, np.int32)
    for row, instance in enumerate(instances):
        n = len(instance.tokens)
        if n > max_seq_length:
            raise ValueError(f"instance {row} has {n} tokens, more than max_seq_length={max_seq_length}")
        tokens[row, :n] = instance.tokens
        segment_ids[row, :n] = instance.segment_ids
        word_starts[row, :n] = instance.word_starts
        lengths[row] = n
    labels = np.array([int(instance.is_random_next) for instance in instances], np.int32)
    return {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "word_starts": word_starts,
        "lengths": lengths,
        "next_sentence_labels": labels,
    }


def _draw_target_length(rng: np.random.Generator, config: InstanceConfig) -> int:
    """`max_num_tokens`, or with probability `short_seq_prob` a uniform integer in [2, max_num_tokens]."""
    if rng.random() < config.short_seq_prob:
        return int(rng.integers(2, config.max_num_tokens + 1))
    return config.max_num_tokens


def _sentence_arrays(sentence: Sentence, document_index: int, sentence_index: int) -> _Piece:
    """A sentence as (int32 ids, bool word starts), checked: equal lengths, at least one token."""
    token_ids, word_starts = sentence
    ids = np.asarray(token_ids, dtype=np.int32)
    starts = np.asarray(word_starts, dtype=bool)
    if ids.ndim != 1 or ids.shape != starts.shape or ids.size == 0:
        raise ValueError(
            f"document {document_index}, sentence {sentence_index}: need non-empty 1-D token_ids and word_starts of "
            f"equal length, got shapes {ids.shape} and {starts.shape}"
        )
    return ids, starts


def _concat(pieces: Sequence[_Piece]) -> _Piece:
    """Joins sentences into one segment."""
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def _instance_from_chunk(
    chunk: list[_Piece],
    documents: DocumentStore,
    document_index: int,
    target: int,
    config: InstanceConfig,
    rng: np.random.Generator,
) -> tuple[Instance, int]:
    """One instance from a full chunk, and how many of the chunk's sentences go back to the document."""
    split = _split_sentence(chunk[0], rng) if len(chunk) == 1 and config.split_single_sentence_chunks else None
    if split is not None:  # the coin came up "actual continuation" inside the one sentence
        (segment_a, segment_b), random_index, unused = split, -1, 0
    else:
        a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
        segment_a = _concat(chunk[:a_end])
        if len(chunk) == 1 or rng.random() < 0.5:
            random_index = _other_document_index(rng, len(documents), document_index)
            segment_b = _random_segment(documents[random_index], random_index, target - len(segment_a[0]), rng)
            unused = len(chunk) - a_end
        else:
            random_index, segment_b, unused = -1, _concat(chunk[a_end:]), 0
    slice_a, slice_b = truncate_seq_pair(len(segment_a[0]), len(segment_b[0]), config.max_num_tokens, rng)
    instance = _assemble(
        (segment_a[0][slice_a], segment_a[1][slice_a]),
        (segment_b[0][slice_b], segment_b[1][slice_b]),
        config,
        document_index=document_index,
        random_document_index=random_index,
        target_seq_length=target,
        chunk_sentences=len(chunk),
    )
    return instance, unused


def _split_sentence(sentence: _Piece, rng: np.random.Generator) -> tuple[_Piece, _Piece] | None:
    """Half the time, the sentence cut at a uniformly random word boundary (None: keep it whole)."""
    ids, starts = sentence
    boundaries = np.flatnonzero(starts[1:]) + 1
    if rng.random() < 0.5 or boundaries.size == 0:
        return None
    cut = int(boundaries[rng.integers(boundaries.size)])
    return (ids[:cut], starts[:cut]), (ids[cut:], starts[cut:])


def _other_document_index(rng: np.random.Generator, num_documents: int, document_index: int) -> int:
    """A uniformly random document other than `document_index`; the same one only when it is the only one."""
    if num_documents == 1:
        return document_index
    other = int(rng.integers(num_documents - 1))
    return other + 1 if other >= document_index else other


def _random_segment(document: Document, document_index: int, target_length: int, rng: np.random.Generator) -> _Piece:
    """Sentences from a uniformly random start in `document`, until they reach `target_length` tokens (>= 1 sentence)."""
    if len(document) == 0:
        raise ValueError(f"document {document_index} is empty; drop empty documents when building the store")
    start = int(rng.integers(len(document)))
    pieces: list[_Piece] = []
    length = 0
    for j in range(start, len(document)):
        pieces.append(_sentence_arrays(document[j], document_index, j))
        length += len(pieces[-1][0])
        if length >= target_length:
            break
    return _concat(pieces)


def _removal_counts(length_a: int, length_b: int, max_num_tokens: int) -> tuple[int, int]:
    """How many tokens the original's one-at-a-time truncation takes from A and from B.

    The longer segment loses tokens until the two are equal (or the excess is gone); from equal lengths the
    removals alternate B, A, B, ... because a tie goes to B.
    """
    excess = length_a + length_b - max_num_tokens
    if excess <= 0:
        return 0, 0
    difference = length_a - length_b
    first = min(abs(difference), excess)
    rest = excess - first
    removed_a = (first if difference > 0 else 0) + rest // 2
    removed_b = (first if difference < 0 else 0) + rest - rest // 2
    return removed_a, removed_b


def _assemble(segment_a: _Piece, segment_b: _Piece, config: InstanceConfig, **provenance: int) -> Instance:
    """`[CLS] A [SEP] B [SEP]` with its segment ids and word starts."""
    ids_a, starts_a = segment_a
    ids_b, starts_b = segment_b
    if ids_a.size == 0 or ids_b.size == 0:
        raise AssertionError("truncation left an empty segment")  # impossible for max_seq_length >= 5
    cls, sep = np.array([config.cls_id], np.int32), np.array([config.sep_id], np.int32)
    special = np.ones(1, bool)
    tokens = np.concatenate([cls, ids_a, sep, ids_b, sep])
    word_starts = np.concatenate([special, starts_a, special, starts_b, special])
    segment_ids = np.zeros(tokens.shape, np.int32)
    segment_ids[ids_a.size + 2 :] = 1
    return Instance(
        tokens=tokens,
        segment_ids=segment_ids,
        word_starts=word_starts,
        is_random_next=provenance["random_document_index"] >= 0,
        **provenance,
    )
