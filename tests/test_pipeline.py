"""Pretraining batches: order, resumption, process sharding, epochs, layout, errors and evaluation padding.

References are the documented rules of `bert_jax/data/pipeline.py`, recomputed here independently: the epoch
order is `default_rng([seed, epoch, ORDER_STREAM]).permutation(N)` (identity without shuffling), global batch k
is `perm[k*G:(k+1)*G]`, process p takes rows `[p*b:(p+1)*b]`, and batches are padded row by row in a plain loop
and masked with `mask_batch(..., example_ids=global indices, seed, epoch)`. Sources are real WikiText-2 (valid)
NSP instances built with `iter_instances` and BertTokenizerFast.
"""

from __future__ import annotations

import gc
import json
import threading
import time

import numpy as np
import pytest

from bert_jax.data.documents import iter_file_documents
from bert_jax.data.instances import InstanceConfig, iter_instances
from bert_jax.data.masking import MaskingConfig, mask_batch
from bert_jax.data.pipeline import (
    ORDER_STREAM,
    PipelineConfig,
    PretrainingBatches,
    epoch_permutation,
    jax_process_topology,
    padded_eval_batches,
)
from tests.conftest import shared_path

PAD, CLS, SEP, MASK, VOCAB = 0, 101, 102, 103, 30522
T = 128
KEYS_INT32_BT = ("input_ids", "attention_mask", "token_type_ids")
KEYS_INT32_BP = ("masked_lm_positions", "masked_lm_ids")
SMALL_N, SMALL_G = 203, 16  # 12 full batches per epoch, an 11-instance tail dropped
PREFETCH_THREAD = "bert_jax-pretraining-prefetch"


def masking_config(max_predictions: int = 20) -> MaskingConfig:
    return MaskingConfig(vocab_size=VOCAB, mask_id=MASK, special_ids=(PAD, CLS, SEP), max_predictions=max_predictions)


def pipeline_config(**overrides) -> PipelineConfig:
    values = {"global_batch_size": SMALL_G, "max_seq_length": T, "seed": 5, "prefetch": 0, **overrides}
    return PipelineConfig(**values)


@pytest.fixture(scope="module")
def real_items() -> list[dict[str, np.ndarray]]:
    """WikiText-2 valid -> NSP instances (seq 128) as source items with exactly the builder's keys."""
    transformers = pytest.importorskip("transformers")
    vocab_path = shared_path("vocab", "bert-base-uncased-vocab.txt")
    text_path = shared_path("wikitext2", "wiki.valid.tokens")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab_path))
    pieces = vocab_path.read_text(encoding="utf-8").splitlines()
    word_start = np.array([not piece.startswith("##") for piece in pieces])  # by id: "##" pieces continue a word
    documents = []
    for sentences in iter_file_documents(str(text_path), "wikitext"):
        encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
        document = [(np.array(ids, np.int32), word_start[ids]) for ids in encoded if ids]
        if document:
            documents.append(document)
    config = InstanceConfig(cls_id=CLS, sep_id=SEP, max_seq_length=T)
    return [
        {
            "tokens": instance.tokens.astype(np.int32),
            "segment_ids": instance.segment_ids.astype(np.int32),
            "word_starts": instance.word_starts.astype(bool),
            "is_random_next": np.int64(instance.is_random_next),
        }
        for instance in iter_instances(documents, config, seed=11)
    ]


@pytest.fixture(scope="module")
def small_items(real_items) -> list[dict[str, np.ndarray]]:
    return real_items[:SMALL_N]


class RecordingSource:
    """A tfds-like random-access source that records every `__getitems__` call."""

    def __init__(self, items, fail_at: int | None = None):
        self.items = items
        self.fail_at = fail_at
        self.calls: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]

    def __getitems__(self, keys):
        self.calls.append(list(keys))
        if self.fail_at in keys:
            raise RuntimeError(f"cannot read record {self.fail_at}")
        return [self.items[k] for k in keys]


def documented_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The module docstring's rule, written out here."""
    return np.random.default_rng([seed, epoch, ORDER_STREAM]).permutation(n) if shuffle else np.arange(n)


def expected_batch(items, indices, *, seed: int, epoch: int, cfg: MaskingConfig) -> dict[str, np.ndarray]:
    """The batch of `indices`, padded one row at a time and masked with the global indices as example ids."""
    b = len(indices)
    tokens, segments = np.zeros((b, T), np.int32), np.zeros((b, T), np.int32)
    starts, attention = np.zeros((b, T), bool), np.zeros((b, T), np.int32)
    lengths, labels = np.zeros(b, np.int64), np.zeros(b, np.int32)
    for row, index in enumerate(indices):
        item = items[index]
        n = len(item["tokens"])
        tokens[row, :n], segments[row, :n], starts[row, :n] = item["tokens"], item["segment_ids"], item["word_starts"]
        attention[row, :n], lengths[row], labels[row] = 1, n, int(item["is_random_next"])
    masked = mask_batch(tokens, starts, np.asarray(indices), cfg, seed=seed, epoch=epoch, lengths=lengths)
    return {**masked, "attention_mask": attention, "token_type_ids": segments, "next_sentence_labels": labels}


def assert_batches_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def concat_rows(batches: list[dict]) -> dict:
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PREFETCH_THREAD and t.is_alive()]


# --- order -------------------------------------------------------------------------------------------------------


def test_epoch_permutation_follows_the_documented_rule():
    np.testing.assert_array_equal(epoch_permutation(7, seed=3, epoch=4, shuffle=False), np.arange(7))
    for n, seed, epoch in [(1, 0, 0), (10, 1, 2), (5000, 7, 0), (5000, 7, 1)]:
        perm = epoch_permutation(n, seed=seed, epoch=epoch)
        np.testing.assert_array_equal(perm, documented_order(n, seed, epoch))
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    base = epoch_permutation(5000, seed=7, epoch=0)
    assert (base != epoch_permutation(5000, seed=7, epoch=1)).mean() > 0.99
    assert (base != epoch_permutation(5000, seed=8, epoch=0)).mean() > 0.99


def test_unshuffled_first_batches_are_the_first_indices_split_by_process(small_items):
    sources = [RecordingSource(small_items) for _ in range(2)]
    for p, source in enumerate(sources):
        batches = PretrainingBatches(
            source, pipeline_config(shuffle=False), masking_config(), process_index=p, process_count=2
        )
        next(batches), next(batches)
    assert sources[0].calls == [list(range(0, 8)), list(range(16, 24))]
    assert sources[1].calls == [list(range(8, 16)), list(range(24, 32))]


# --- content and layout ------------------------------------------------------------------------------------------


def test_batches_equal_an_independent_recomputation(real_items):
    cfg, seed, g = masking_config(), 9, 64
    source = RecordingSource(real_items)
    batches = PretrainingBatches(source, pipeline_config(global_batch_size=g, seed=seed), cfg)
    per_epoch = len(real_items) // g
    assert batches.batches_per_epoch == per_epoch and batches.local_batch_size == g
    for k in range(per_epoch + 2):  # into the second epoch
        epoch, within = divmod(k, per_epoch)
        indices = documented_order(len(real_items), seed, epoch)[within * g : (within + 1) * g]
        batch = next(batches)
        assert source.calls[-1] == indices.tolist()  # one __getitems__ call per batch, with the global indices
        assert_batches_equal(batch, expected_batch(real_items, indices, seed=seed, epoch=epoch, cfg=cfg))
    assert len(source.calls) == per_epoch + 2


def test_shapes_dtypes_padding_and_labels(real_items):
    source = RecordingSource(real_items)
    with PretrainingBatches(source, pipeline_config(global_batch_size=128, prefetch=2), masking_config()) as batches:
        for k in range(5):
            batch = next(batches)
            check_layout(batch, [real_items[i] for i in source.calls[k]], b=128, p=20)  # calls are in batch order


def check_layout(batch: dict, items: list[dict], *, b: int, p: int) -> None:
    """Shapes, dtypes, padding, attention, segments, NSP labels and where masks may fall."""
    for key in KEYS_INT32_BT:
        assert batch[key].shape == (b, T) and batch[key].dtype == np.int32, key
    for key in KEYS_INT32_BP:
        assert batch[key].shape == (b, p) and batch[key].dtype == np.int32, key
    assert batch["masked_lm_weights"].shape == (b, p) and batch["masked_lm_weights"].dtype == np.float32
    assert batch["next_sentence_labels"].shape == (b,) and batch["next_sentence_labels"].dtype == np.int32
    lengths = np.array([len(item["tokens"]) for item in items])
    np.testing.assert_array_equal(batch["attention_mask"].sum(axis=1), lengths)
    np.testing.assert_array_equal(batch["attention_mask"], np.arange(T)[None, :] < lengths[:, None])
    np.testing.assert_array_equal(batch["next_sentence_labels"], [int(item["is_random_next"]) for item in items])
    for row, item in enumerate(items):
        n = lengths[row]
        np.testing.assert_array_equal(batch["token_type_ids"][row, :n], item["segment_ids"])
        assert not batch["token_type_ids"][row, n:].any() and not batch["input_ids"][row, n:].any()  # [PAD] = 0
        real = batch["masked_lm_weights"][row] > 0
        positions = batch["masked_lm_positions"][row, real]
        assert real.any() and (positions > 0).all() and (positions < n).all()
        assert not np.isin(item["tokens"][positions], [CLS, SEP]).any()
        np.testing.assert_array_equal(batch["masked_lm_ids"][row, real], item["tokens"][positions])
        unmasked = np.setdiff1d(np.arange(n), positions)
        np.testing.assert_array_equal(batch["input_ids"][row, unmasked], item["tokens"][unmasked])


# --- resumption and processes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_stream(small_items) -> list[dict]:
    """Three uninterrupted epochs (36 batches) on one process, synchronous."""
    with PretrainingBatches(small_items, pipeline_config(num_epochs=3), masking_config()) as batches:
        stream = list(batches)
    assert len(stream) == 36
    return stream


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("cut", [0, 5, 11, 12, 13, 30, 35])
def test_resume_from_a_saved_state_is_bitwise_exact(small_items, reference_stream, prefetch, cut):
    config = pipeline_config(num_epochs=3, prefetch=prefetch)
    with PretrainingBatches(small_items, config, masking_config()) as batches:
        for k in range(cut):
            assert_batches_equal(next(batches), reference_stream[k])
        saved = json.loads(json.dumps(batches.state()))  # survives a checkpoint round trip
    assert (saved["epoch"], saved["batch_in_epoch"]) == divmod(cut, 12)
    with PretrainingBatches(small_items, config, masking_config(), start_state=saved) as resumed:
        rest = list(resumed)
    assert len(rest) == 36 - cut
    for batch, expected in zip(rest, reference_stream[cut:], strict=True):
        assert_batches_equal(batch, expected)


def test_restore_rewinds_a_prefetching_iterator(small_items, reference_stream):
    with PretrainingBatches(small_items, pipeline_config(num_epochs=3, prefetch=3), masking_config()) as batches:
        for _ in range(10):
            next(batches)
        saved = batches.state()
        for _ in range(6):  # past the epoch boundary, with batches of epoch 1 already queued
            next(batches)
        batches.restore(saved)
        assert batches.state() == saved
        for k in range(10, 16):
            assert_batches_equal(next(batches), reference_stream[k])


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_each_global_batch_by_rows(small_items, reference_stream, process_count):
    sources = [RecordingSource(small_items) for _ in range(process_count)]
    pipelines = [
        PretrainingBatches(
            sources[p], pipeline_config(num_epochs=3), masking_config(), process_index=p, process_count=process_count
        )
        for p in range(process_count)
    ]
    for k in range(15):  # across the first epoch boundary
        parts = [next(pipeline) for pipeline in pipelines]
        assert all(part["input_ids"].shape[0] == SMALL_G // process_count for part in parts)
        assert_batches_equal(concat_rows(parts), reference_stream[k])
        read = [set(source.calls[k]) for source in sources]
        assert sum(map(len, read)) == len(set().union(*read)) == SMALL_G  # disjoint
    assert [pipeline.state() for pipeline in pipelines] == [pipelines[0].state()] * process_count


def test_state_saved_on_one_process_restores_on_two(small_items, reference_stream):
    with PretrainingBatches(small_items, pipeline_config(num_epochs=3, prefetch=2), masking_config()) as single:
        for _ in range(9):
            next(single)
        saved = single.state()
    pipelines = [
        PretrainingBatches(
            small_items,
            pipeline_config(num_epochs=3),
            masking_config(),
            process_index=p,
            process_count=2,
            start_state=saved,
        )
        for p in range(2)
    ]
    for k in range(9, 36):
        assert_batches_equal(concat_rows([next(pipeline) for pipeline in pipelines]), reference_stream[k])
    for pipeline in pipelines:
        with pytest.raises(StopIteration):
            next(pipeline)


# --- epochs ------------------------------------------------------------------------------------------------------


def test_epochs_cover_each_instance_once_with_fresh_order_and_masks(small_items):
    source = RecordingSource(small_items)
    with PretrainingBatches(source, pipeline_config(num_epochs=3), masking_config()) as batches:
        stream = list(batches)
        with pytest.raises(StopIteration):
            next(batches)
        assert (batches.state()["epoch"], batches.state()["batch_in_epoch"]) == (3, 0)
    assert len(stream) == 3 * 12 and len(source.calls) == 36
    orders = [np.concatenate(source.calls[12 * e : 12 * (e + 1)]) for e in range(3)]
    for order in orders:
        assert len(order) == len(set(order.tolist())) == SMALL_N - SMALL_N % SMALL_G  # once each, tail dropped
    assert (orders[0] != orders[1]).mean() > 0.9 and (orders[1] != orders[2]).mean() > 0.9
    positions = [concat_rows(stream[12 * e : 12 * (e + 1)])["masked_lm_positions"] for e in range(2)]
    rows = [dict(zip(order.tolist(), range(len(order)), strict=True)) for order in orders[:2]]
    both = set(rows[0]) & set(rows[1])
    assert len(both) > 150
    same = [np.array_equal(positions[0][rows[0][i]], positions[1][rows[1][i]]) for i in both]
    assert np.mean(same) < 0.05  # a new mask each epoch for the same instance


def test_prefetched_iteration_ends_after_num_epochs(small_items):
    with PretrainingBatches(small_items, pipeline_config(num_epochs=2, prefetch=4), masking_config()) as batches:
        assert sum(1 for _ in batches) == 24
        assert list(batches) == []


# --- prefetch thread ---------------------------------------------------------------------------------------------


def test_reader_errors_reach_the_consumer_after_the_good_batches(small_items):
    source = RecordingSource(small_items, fail_at=37)  # unshuffled: in global batch 2
    batches = PretrainingBatches(source, pipeline_config(shuffle=False, prefetch=2), masking_config())
    with batches:
        next(batches), next(batches)
        with pytest.raises(RuntimeError, match="cannot read record 37"):
            next(batches)
        assert batches.state()["batch_in_epoch"] == 2  # the failed batch is still the next one
    assert not prefetch_threads()
    with pytest.raises(ValueError, match="closed"):
        next(batches)


def test_close_and_garbage_collection_stop_the_thread(small_items):
    batches = PretrainingBatches(small_items, pipeline_config(prefetch=2), masking_config())
    next(batches)
    assert prefetch_threads()
    batches.close()
    assert not prefetch_threads()
    abandoned = PretrainingBatches(small_items, pipeline_config(prefetch=2), masking_config())
    next(abandoned)
    del abandoned
    gc.collect()
    deadline = time.monotonic() + 10
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not prefetch_threads()


def test_plain_sequence_and_getitems_sources_agree(small_items):
    plain = PretrainingBatches(small_items, pipeline_config(), masking_config())
    recorded = PretrainingBatches(RecordingSource(small_items), pipeline_config(), masking_config())
    for _ in range(3):
        assert_batches_equal(next(plain), next(recorded))


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"global_batch_size": 0}, "global_batch_size must be an integer >= 1"),
        ({"max_seq_length": 0}, "max_seq_length"),
        ({"seed": -1}, "seed"),
        ({"prefetch": -1}, "prefetch"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"shuffle": 1}, "shuffle"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        pipeline_config(**overrides)


def test_errors_name_the_problem(small_items):
    cfg = masking_config()
    with pytest.raises(ValueError, match="global_batch_size 16 is not divisible by process_count 3"):
        PretrainingBatches(small_items, pipeline_config(), cfg, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index 2 is out of range for process_count 2"):
        PretrainingBatches(small_items, pipeline_config(), cfg, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="empty"):
        PretrainingBatches([], pipeline_config(), cfg)
    with pytest.raises(ValueError, match="10 instances, fewer than one global batch of 16"):
        PretrainingBatches(small_items[:10], pipeline_config(), cfg)
    longest = max(range(SMALL_N), key=lambda i: len(small_items[i]["tokens"]))
    n = len(small_items[longest]["tokens"])
    short = PretrainingBatches(small_items, pipeline_config(max_seq_length=n - 1, shuffle=False), cfg)
    with pytest.raises(ValueError, match=f"instance {longest} has {n} tokens, more than max_seq_length={n - 1}"):
        list(short)


def test_mismatched_restore_is_refused(small_items):
    cfg = masking_config()
    with PretrainingBatches(small_items, pipeline_config(), cfg) as batches:
        next(batches)
        saved = batches.state()
    cases = [
        (small_items[:200], pipeline_config(), "dataset_size 203 \\(here 200\\)"),
        (small_items, pipeline_config(seed=6), "seed 5 \\(here 6\\)"),
        (small_items, pipeline_config(global_batch_size=32), "global_batch_size 16 \\(here 32\\)"),
        (small_items, pipeline_config(shuffle=False), "shuffle True \\(here False\\)"),
    ]
    for items, config, match in cases:
        with pytest.raises(ValueError, match=match):
            PretrainingBatches(items, config, cfg, start_state=saved)
    with pytest.raises(ValueError, match="format version 0"):
        PretrainingBatches(small_items, pipeline_config(), cfg, start_state={**saved, "version": 0})
    with pytest.raises(ValueError, match="batch_in_epoch 12 is outside"):
        PretrainingBatches(small_items, pipeline_config(), cfg, start_state={**saved, "batch_in_epoch": 12})
    with pytest.raises(ValueError, match="lacks epoch"):
        PretrainingBatches(
            small_items, pipeline_config(), cfg, start_state={k: v for k, v in saved.items() if k != "epoch"}
        )


# --- evaluation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_instance_once(small_items, process_count):
    cfg = masking_config()
    sources = [RecordingSource(small_items) for _ in range(process_count)]
    streams = [
        list(
            padded_eval_batches(
                sources[p],
                cfg,
                global_batch_size=SMALL_G,
                max_seq_length=T,
                seed=3,
                process_index=p,
                process_count=process_count,
            )
        )
        for p in range(process_count)
    ]
    assert all(len(stream) == 13 for stream in streams)  # ceil(203 / 16), the same on every process
    counts = np.zeros(SMALL_N)
    for k in range(13):
        batch = concat_rows([stream[k] for stream in streams])
        indices = np.concatenate([source.calls[k] for source in sources])
        weights = batch.pop("example_weights")
        assert weights.dtype == np.float32 and weights.shape == (SMALL_G,)
        slots = np.arange(k * SMALL_G, (k + 1) * SMALL_G)
        np.testing.assert_array_equal(weights, slots < SMALL_N)
        np.testing.assert_array_equal(indices[weights > 0], slots[slots < SMALL_N])  # in order, no shuffle
        np.add.at(counts, indices, weights)
        expected = expected_batch(small_items, indices, seed=3, epoch=0, cfg=cfg)
        expected["masked_lm_weights"] = expected["masked_lm_weights"] * weights[:, None]
        assert_batches_equal(batch, expected)
        assert not batch["masked_lm_weights"][weights == 0].any()
    np.testing.assert_array_equal(counts, np.ones(SMALL_N))
    if process_count == 2:  # hand check: the last global batch holds 192..202 and 5 padding rows
        np.testing.assert_array_equal(streams[1][-1]["example_weights"], [1, 1, 1, 0, 0, 0, 0, 0])


def test_eval_of_a_source_smaller_than_one_batch_and_errors(small_items):
    batches = list(padded_eval_batches(small_items[:3], masking_config(), global_batch_size=8, max_seq_length=T))
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0]["example_weights"], [1, 1, 1, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="empty"):  # raised at the call, not at the first batch
        padded_eval_batches([], masking_config(), global_batch_size=8, max_seq_length=T)
    with pytest.raises(ValueError, match="global_batch_size 8 is not divisible by process_count 3"):
        padded_eval_batches(small_items, masking_config(), global_batch_size=8, max_seq_length=T, process_count=3)


# --- helpers and speed -------------------------------------------------------------------------------------------


def test_jax_process_topology_of_a_single_process():
    pytest.importorskip("jax")
    assert jax_process_topology() == {"process_index": 0, "process_count": 1}


def test_throughput_seq128_batch256(real_items):
    """Far above what a BERT-base seq-128 train step consumes on a 2-core CPU (~1.2 sequences/s)."""
    with PretrainingBatches(
        real_items, pipeline_config(global_batch_size=256, prefetch=0), masking_config()
    ) as batches:
        next(batches)  # the epoch's permutation
        start = time.perf_counter()
        for _ in range(4):
            next(batches)
        rate = 4 * 256 / (time.perf_counter() - start)
    assert rate > 120, f"{rate:.0f} sequences/s"
