"""NSP instance creation: hand-worked small corpora, invariants of the original algorithm, and real-text statistics.

References are the published rules of google-research/bert's `create_pretraining_data.py` (restated in
`bert_jax/data/instances.py`): synthetic corpora give every token a unique id, so each token of an instance can
be traced back to its (document, sentence, position) and the rules checked exactly.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

from bert_jax.data.instances import (
    Instance,
    InstanceConfig,
    LazyDocumentStore,
    create_instances_from_document,
    iter_instances,
    pad_instances,
    truncate_seq_pair,
)
from tests.conftest import shared_path

CLS, SEP = 101, 102
FIRST_ID = 1000  # synthetic token ids start here, above every special id


def synthetic_corpus(sentence_lengths: list[list[int]]) -> tuple[list[list[tuple]], dict[int, tuple[int, int, int]]]:
    """Documents whose tokens are all distinct, and a map token id -> (document, sentence, position).

    Every third piece of a sentence is a continuation ("##") piece, so word starts are not all True.
    """
    documents, origin = [], {}
    next_id = FIRST_ID
    for d, lengths in enumerate(sentence_lengths):
        document = []
        for s, length in enumerate(lengths):
            ids = list(range(next_id, next_id + length))
            for k, token in enumerate(ids):
                origin[token] = (d, s, k)
            document.append((ids, [k % 3 != 2 for k in range(length)]))
            next_id += length
        documents.append(document)
    return documents, origin


def split_segments(instance: Instance) -> tuple[np.ndarray, np.ndarray]:
    """A and B of `[CLS] A [SEP] B [SEP]`, checking the layout on the way."""
    tokens = instance.tokens
    seps = np.flatnonzero(tokens == SEP)
    assert tokens[0] == CLS and len(seps) == 2 and seps[1] == len(tokens) - 1
    a, b = tokens[1 : seps[0]], tokens[seps[0] + 1 : -1]
    expected_segments = np.r_[np.zeros(len(a) + 2), np.ones(len(b) + 1)]
    np.testing.assert_array_equal(instance.segment_ids, expected_segments)
    return a, b


def is_contiguous(ids: np.ndarray) -> bool:
    """Unique synthetic ids that form one unbroken run of a document's token stream."""
    return bool(np.all(np.diff(ids) == 1))


def config(max_seq_length: int = 128, short_seq_prob: float = 0.1, **kwargs) -> InstanceConfig:
    return InstanceConfig(
        cls_id=CLS, sep_id=SEP, max_seq_length=max_seq_length, short_seq_prob=short_seq_prob, **kwargs
    )


# --- hand-worked small cases -------------------------------------------------------------------------------------


def test_layout_limits_and_word_starts_travel_with_tokens():
    rng = np.random.default_rng(0)
    documents, origin = synthetic_corpus([list(rng.integers(1, 40, size=30)) for _ in range(8)])
    instances = list(iter_instances(documents, config(64), seed=3))
    assert len(instances) > 50
    for instance in instances:
        a, b = split_segments(instance)
        assert len(a) >= 1 and len(b) >= 1 and len(instance.tokens) <= 64
        assert instance.tokens.dtype == np.int32 and instance.word_starts.dtype == bool
        pieces = np.concatenate([a, b])
        expected_starts = [origin[int(t)][2] % 3 != 2 for t in pieces]
        actual_starts = np.r_[instance.word_starts[1 : len(a) + 1], instance.word_starts[len(a) + 2 : -1]]
        np.testing.assert_array_equal(actual_starts, expected_starts)
        assert instance.word_starts[[0, len(a) + 1, -1]].all()  # specials: a unit of their own


def test_segments_come_from_the_right_documents():
    rng = np.random.default_rng(1)
    documents, origin = synthetic_corpus([list(rng.integers(3, 25, size=300)) for _ in range(6)])
    instances = list(iter_instances(documents, config(96), seed=5))
    random_sources = set()
    assert sum(i.is_random_next for i in instances) > 100
    for instance in instances:
        a, b = split_segments(instance)
        assert is_contiguous(a) and is_contiguous(b)
        assert {origin[int(t)][0] for t in a} == {instance.document_index}
        b_documents = {origin[int(t)][0] for t in b}
        if instance.is_random_next:
            assert b_documents == {instance.random_document_index} != {instance.document_index}
            random_sources.add((instance.document_index, instance.random_document_index))
        else:
            assert b_documents == {instance.document_index} and instance.random_document_index == -1
            assert b[0] > a[-1]  # the actual continuation follows A
    # Every document has been the random source of some other document (draws cover the others).
    assert {source for _, source in random_sources} == set(range(6))


def test_chunking_and_put_back_cover_each_document_exactly_once():
    # Sentences of 10 tokens and 100 tokens per pair: a chunk is exactly 10 sentences and a random B exactly
    # fills the rest, so nothing is ever truncated. Then, by the original algorithm, the segments that come from
    # the document itself (A, plus B when it is the actual next) tile the document in order: the sentences a
    # random B left unused were put back and start the next chunk.
    documents, _ = synthetic_corpus([[10] * n for n in (37, 23, 51, 12, 40)])
    cfg = config(103, short_seq_prob=0.0)
    saw_put_back = False
    a_sentences = []
    for d, document in enumerate(documents):
        own = []
        for instance in create_instances_from_document(documents, d, cfg, seed=11):
            a, b = split_segments(instance)
            own.append(a if instance.is_random_next else np.r_[a, b])
            saw_put_back |= instance.is_random_next and instance.chunk_sentences >= 2
            if instance.is_random_next:
                assert len(a) + len(b) <= 100 and len(b) % 10 == 0  # whole sentences, never truncated
            if instance.chunk_sentences == 10:
                a_sentences.append(len(a) // 10)
        document_tokens = np.concatenate([np.asarray(ids) for ids, _ in document])
        np.testing.assert_array_equal(np.concatenate(own), document_tokens)
    assert saw_put_back
    # A takes a uniform number of the chunk's sentences, 1 to 9 here.
    assert set(a_sentences) == set(range(1, 10))


def test_single_sentence_document_gives_one_instance_with_a_random_b():
    documents, origin = synthetic_corpus([[7], [20, 20, 20], [15, 15]])
    (instance,) = create_instances_from_document(documents, 0, config(), seed=0)
    a, b = split_segments(instance)
    np.testing.assert_array_equal(a, np.arange(FIRST_ID, FIRST_ID + 7))
    assert instance.is_random_next and instance.chunk_sentences == 1
    assert instance.random_document_index in (1, 2)
    assert {origin[int(t)][0] for t in b} == {instance.random_document_index}


def test_one_document_corpus_takes_random_b_from_the_same_document():
    # No other document exists: the original ends up sampling the same document (after 10 failed retries); we do
    # the same, still labelling B random. It must not crash or loop.
    documents, origin = synthetic_corpus([[12] * 60])
    instances = list(create_instances_from_document(documents, 0, config(64), seed=2))
    random_ones = [i for i in instances if i.is_random_next]
    assert random_ones and len(random_ones) < len(instances)
    for instance in random_ones:
        _, b = split_segments(instance)
        assert instance.random_document_index == 0 and {origin[int(t)][0] for t in b} == {0}


def test_very_long_sentence_is_truncated_to_the_limit():
    documents, origin = synthetic_corpus([[500], [30, 30], [30, 30]])
    (instance,) = create_instances_from_document(documents, 0, config(128, short_seq_prob=0.0), seed=4)
    a, b = split_segments(instance)
    assert len(instance.tokens) == 128 and len(a) + len(b) == 125
    assert is_contiguous(a) and {origin[int(t)][0] for t in a} == {0}
    # A (500) is longer until it is cut to len(B), then removals alternate; B has 30 tokens here.
    assert len(a) == 125 - len(b) and len(b) == 30


def test_truncation_ends_are_random():
    # A has 60 tokens, B 2, room for 61: one token leaves A, from the front or the back with probability 1/2.
    documents, _ = synthetic_corpus([[60], [2], [2]])
    front = 0
    for seed in range(400):
        (instance,) = create_instances_from_document(documents, 0, config(64, short_seq_prob=0.0), seed=seed)
        a, _ = split_segments(instance)
        assert len(a) == 59
        front += a[0] > FIRST_ID
    assert 160 < front < 240  # Binomial(400, 1/2): sd 10


@pytest.mark.parametrize("seed", range(3))
def test_truncation_counts_match_the_one_at_a_time_original(seed):
    def original_counts(length_a: int, length_b: int, max_num_tokens: int) -> tuple[int, int]:
        removed = [0, 0]
        lengths = [length_a, length_b]
        while sum(lengths) > max_num_tokens:
            longer = 0 if lengths[0] > lengths[1] else 1  # a tie removes from B
            lengths[longer] -= 1
            removed[longer] += 1
        return removed[0], removed[1]

    rng = np.random.default_rng(seed)
    for _ in range(400):
        length_a, length_b = (int(x) for x in rng.integers(1, 300, size=2))
        max_num_tokens = int(rng.integers(2, 260))
        slice_a, slice_b = truncate_seq_pair(length_a, length_b, max_num_tokens, rng)
        kept_a, kept_b = len(range(length_a)[slice_a]), len(range(length_b)[slice_b])
        assert (length_a - kept_a, length_b - kept_b) == original_counts(length_a, length_b, max_num_tokens)
        assert kept_a >= 1 and kept_b >= 1


def test_truncation_removes_from_front_and_back_by_fair_coin_flips():
    rng = np.random.default_rng(7)
    fronts = np.array([truncate_seq_pair(1000, 1, 2, rng)[0].start for _ in range(400)])
    # 999 removals from A, each from the front with probability 1/2: Binomial(999, 1/2), mean 499.5, sd 15.8.
    assert abs(fronts.mean() - 499.5) < 4 * 15.8 / np.sqrt(400)
    assert 12 < fronts.std() < 20  # a fixed rule (alternating ends, say) would have no spread at all


def test_short_targets_per_document_and_per_instance():
    documents, _ = synthetic_corpus([[8] * 100 for _ in range(4)])
    default = [next(create_instances_from_document(documents, 0, config(), seed=s)) for s in range(2000)]
    short = np.array([i.target_seq_length < 125 for i in default])
    assert abs(short.mean() - 0.1) < 0.03  # sd 0.0067
    # Once per document (original): every instance of a document shares the target.
    for seed in range(50):
        targets = {i.target_seq_length for i in create_instances_from_document(documents, 1, config(), seed=seed)}
        assert len(targets) == 1
    # Per instance: each instance's target is an independent draw.
    documents, _ = synthetic_corpus([[8] * 3000 for _ in range(4)])
    per_instance = list(iter_instances(documents, config(short_target_per_instance=True), seed=0))
    targets = np.array([i.target_seq_length for i in per_instance])
    assert len(targets) > 800 and targets.min() >= 2 and targets.max() <= 125
    assert abs((targets < 125).mean() - 0.1) < 0.04


def test_determinism_does_not_depend_on_order_or_other_documents():
    rng = np.random.default_rng(2)
    documents, _ = synthetic_corpus([list(rng.integers(2, 30, size=25)) for _ in range(6)])
    cfg = config(64)
    forward = list(iter_instances(documents, cfg, seed=9))
    backward = list(iter_instances(documents, cfg, seed=9, document_indices=reversed(range(6))))
    only_three = list(create_instances_from_document(documents, 3, cfg, seed=9))

    def key(instances: list[Instance], d: int) -> list[bytes]:
        return [i.tokens.tobytes() for i in instances if i.document_index == d]

    for d in range(6):
        assert key(forward, d) == key(backward, d)
    assert key(forward, 3) == key(only_three, 3)
    assert key(forward, 3) != key(list(iter_instances(documents, cfg, seed=10)), 3)
    assert key(forward, 3) != key(list(iter_instances(documents, cfg, seed=9, dupe_index=1)), 3)


def test_lazy_store_loads_on_demand_and_gives_the_same_instances():
    rng = np.random.default_rng(4)
    documents, _ = synthetic_corpus([list(rng.integers(2, 30, size=25)) for _ in range(20)])
    loads = []
    store = LazyDocumentStore(len(documents), lambda j: loads.append(j) or documents[j], cache_size=3)
    lazy = [i.tokens.tobytes() for i in iter_instances(store, config(64), seed=1)]
    eager = [i.tokens.tobytes() for i in iter_instances(documents, config(64), seed=1)]
    assert lazy == eager
    assert len(store._cache) <= 3 and len(set(loads)) == 20 and len(loads) > 20  # evicted and reloaded


def test_rejects_bad_documents_and_configs():
    with pytest.raises(ValueError, match="empty"):
        list(create_instances_from_document([[], [([1], [True])]], 0, config(), seed=0))
    with pytest.raises(ValueError, match="equal length"):
        list(create_instances_from_document([[([1, 2], [True])]], 0, config(), seed=0))
    with pytest.raises(ValueError, match="max_seq_length"):
        config(4)


def test_pad_instances():
    documents, _ = synthetic_corpus([[5, 6], [7, 8]])
    instances = list(iter_instances(documents, config(32), seed=0))
    batch = pad_instances(instances, 32)
    for row, instance in enumerate(instances):
        n = len(instance.tokens)
        assert batch["lengths"][row] == n
        np.testing.assert_array_equal(batch["tokens"][row, :n], instance.tokens)
        assert not batch["tokens"][row, n:].any() and not batch["word_starts"][row, n:].any()
        assert batch["next_sentence_labels"][row] == int(instance.is_random_next)
    with pytest.raises(ValueError, match="more than max_seq_length"):
        pad_instances(instances, 8)


# --- real text ---------------------------------------------------------------------------------------------------


def wikitext_documents(path) -> list[list[str]]:
    """WikiText articles as documents: ' = Title = ' opens one; section headings and blank lines are dropped;
    each remaining line (a paragraph) is a sentence."""
    documents: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("= ="):
            continue
        if re.fullmatch(r"= .* =", text):
            documents.append([])
        elif documents:
            documents[-1].append(text)
    return [d for d in documents if d]


def book_sentences(path) -> list[str]:
    """A Gutenberg book as one document: paragraphs (blank-line separated), unwrapped, cut after . ! or ?
    (optionally followed by a closing quote)."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        text = " ".join(paragraph.split())
        sentences += [s for s in re.split(r"(?<=[.!?])\s+|(?<=[.!?][\"\u201d\u2019])\s+", text) if s]
    return sentences


@functools.lru_cache(maxsize=1)
def real_corpus() -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """WikiText-2 valid (60 articles) + two Gutenberg books, tokenized by BertTokenizerFast (uncased vocab)."""
    transformers = pytest.importorskip("transformers")
    vocab_path = shared_path("vocab", "bert-base-uncased-vocab.txt")
    texts = wikitext_documents(shared_path("wikitext2", "wiki.valid.tokens"))
    for book in ("pg84-frankenstein.txt", "pg1342-pride-and-prejudice.txt"):
        texts.append(book_sentences(shared_path("gutenberg", book)))
    tokenizer = transformers.BertTokenizerFast(str(vocab_path))
    continuation = np.array([t.startswith("##") for t in vocab_path.read_text(encoding="utf-8").splitlines()])
    corpus = []
    for sentences in texts:
        encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
        corpus.append([(np.array(ids, np.int32), ~continuation[ids]) for ids in encoded if ids])
    return corpus


@functools.lru_cache(maxsize=1)
def real_instances(dupes: int = 10) -> tuple[Instance, ...]:
    """Instances of `real_corpus` at max_seq_length 128 over `dupes` passes (the original's dupe_factor 10)."""
    corpus = real_corpus()
    cfg = config(128)
    return tuple(i for dupe in range(dupes) for i in iter_instances(corpus, cfg, seed=2024, dupe_index=dupe))


def test_real_text_instance_statistics():
    corpus = real_corpus()
    instances = real_instances()
    streams = [np.concatenate([ids for ids, _ in document]).tobytes() for document in corpus]

    def occurs_in(segment: np.ndarray, document: int) -> bool:
        needle, haystack = segment.tobytes(), streams[document]
        start = haystack.find(needle)
        while start >= 0 and start % 4:  # int32 alignment
            start = haystack.find(needle, start + 1)
        return start >= 0

    lengths = np.array([len(i.tokens) for i in instances])
    assert lengths.max() <= 128 and lengths.min() >= 5
    random_next = np.array([i.is_random_next for i in instances])
    eligible = np.array([i.chunk_sentences >= 2 for i in instances])
    assert eligible.sum() > 20_000
    # B is random with probability 1/2 when the chunk has >= 2 sentences (sd 0.35pt here), always otherwise.
    assert abs(random_next[eligible].mean() - 0.5) < 0.01
    assert random_next[~eligible].all()
    for instance in instances[::7]:
        a, b = split_segments(instance)
        assert occurs_in(a, instance.document_index)
        source = instance.random_document_index if instance.is_random_next else instance.document_index
        assert occurs_in(b, source)
        assert instance.is_random_next == (source != instance.document_index)
    # Short targets are drawn once per (document, pass): 62 x 10 draws, p = 0.1 (sd 1.2pt).
    targets = {(i.document_index, k): i.target_seq_length < 125 for k, i in _passes(instances)}
    assert len(targets) == 10 * len(corpus)
    assert 0.06 < np.mean(list(targets.values())) < 0.14


def _passes(instances: tuple[Instance, ...]):
    """(pass index, instance): a pass restarts when the document index stops increasing."""
    dupe, previous = 0, -1
    for instance in instances:
        if instance.document_index < previous:
            dupe += 1
        previous = instance.document_index
        yield dupe, instance


def test_splitting_single_sentence_chunks_balances_random_next():
    """With the option, a one-sentence chunk is cut into A and its real continuation half the time: 50% overall."""
    corpus = real_corpus()
    store = [list(doc) for doc in corpus]
    balanced = config(split_single_sentence_chunks=True, short_target_per_instance=True)
    instances = [i for d in range(3) for i in iter_instances(store, balanced, seed=5, dupe_index=d)]
    random_next = np.array([i.is_random_next for i in instances])
    assert len(instances) > 10_000
    assert abs(random_next.mean() - 0.5) < 0.01  # sd about 0.5pt at this size
    streams = [np.concatenate([ids for ids, _ in document]).tobytes() for document in corpus]
    for instance in [i for i in instances if not i.is_random_next][::5]:
        a, b = split_segments(instance)
        # A then B is the document's own text (possibly trimmed at the outer ends by truncation).
        assert a.tobytes() in streams[instance.document_index] and b.tobytes() in streams[instance.document_index]
