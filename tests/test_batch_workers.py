"""Batches from worker processes and the batch-at-once record decoder: the same batches, only faster.

References: for workers, the pipeline's documented batches recomputed row by row (`tests.test_pipeline`); for the
decoder, protobuf's own parser through TFDS (the records are written by TFDS, and hand-made ones by protobuf's
serializer).
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from bert_jax.data import batch_workers, instance_records
from bert_jax.data.pipeline import PipelineConfig, PretrainingBatches
from bert_jax.errors import ConfigError
from bert_jax.jobs import config as job_config
from tests import test_data_end_to_end, test_pipeline
from tests.test_pipeline import SMALL_G, assert_batches_equal, documented_order, expected_batch, masking_config

# Fixtures shared with the pipeline's own tests: real WikiText-2 instances, and a corpus built from real text.
real_items = test_pipeline.real_items
small_items = test_pipeline.small_items
corpus_dir = test_data_end_to_end.corpus_dir


def pipeline_config(**overrides) -> PipelineConfig:
    values = {"global_batch_size": SMALL_G, "max_seq_length": 128, "seed": 5, "prefetch": 0, "num_epochs": 2}
    return PipelineConfig(**{**values, **overrides})


def take(batches, count: int) -> list[dict]:
    return [next(batches) for _ in range(count)]


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_worker_batches_equal_the_documented_batches(small_items, num_workers):
    """Across an epoch boundary (12 batches per epoch), in order, bitwise, whatever the worker count."""
    cfg = masking_config()
    with PretrainingBatches(small_items, pipeline_config(num_workers=num_workers), cfg) as batches:
        produced = list(batches)  # two epochs, then StopIteration
    assert len(produced) == 24
    for k, batch in enumerate(produced):
        epoch, batch_in_epoch = divmod(k, 12)
        order = documented_order(len(small_items), 5, epoch)
        indices = order[batch_in_epoch * SMALL_G : (batch_in_epoch + 1) * SMALL_G]
        assert_batches_equal(batch, expected_batch(small_items, indices, seed=5, epoch=epoch, cfg=cfg))


def test_resume_onto_another_worker_count_is_exact(small_items):
    cfg = masking_config()
    with PretrainingBatches(small_items, pipeline_config(), cfg) as reference:
        expected = take(reference, 16)
    with PretrainingBatches(small_items, pipeline_config(num_workers=2), cfg) as first:
        head = take(first, 10)
        state = first.state()
    assert state["epoch"] == 0 and state["batch_in_epoch"] == 10  # the batches in flight are not counted
    for num_workers in (0, 3):
        with PretrainingBatches(small_items, pipeline_config(num_workers=num_workers), cfg, start_state=state) as b:
            tail = take(b, 6)
        for got, want in zip(head + tail, expected, strict=True):
            assert_batches_equal(got, want)


def test_processes_and_workers_split_rows_the_same_way(small_items):
    cfg = masking_config()
    with PretrainingBatches(small_items, pipeline_config(), cfg) as whole:
        full = take(whole, 3)
    halves = []
    for process_index in range(2):
        with PretrainingBatches(
            small_items, pipeline_config(num_workers=2), cfg, process_index=process_index, process_count=2
        ) as part:
            halves.append(take(part, 3))
    for k in range(3):
        for key in full[k]:
            np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]), full[k][key])


class UnpicklableSource(list):
    def __reduce__(self):
        raise TypeError("this source holds an open handle")


def test_a_source_that_cannot_go_to_workers_names_the_fix(small_items):
    batches = PretrainingBatches(UnpicklableSource(small_items), pipeline_config(num_workers=2), masking_config())
    with pytest.raises(batch_workers.BatchWorkerError, match=r"data\.num_workers=0"):
        next(batches)
    batches.close()


class FailingSource(list):
    """Raises for one index inside the worker process."""

    def __getitem__(self, index):
        if index == 7:
            raise RuntimeError("cannot read record 7")
        return list.__getitem__(self, index)


def test_a_reader_error_in_a_worker_reaches_the_consumer(small_items):
    source = FailingSource(small_items)
    with PretrainingBatches(source, pipeline_config(num_workers=2, shuffle=False), masking_config()) as batches:
        with pytest.raises(RuntimeError, match="cannot read record 7"):
            next(batches)  # batch 0 holds indices 0..15


def test_a_killed_worker_is_one_clear_error_and_close_frees_everything(small_items):
    batches = PretrainingBatches(small_items, pipeline_config(num_workers=2, num_epochs=None), masking_config())
    next(batches)
    workers = batches._prefetcher._workers
    pids = list(workers._executor._processes)
    memory_name = workers._memory.name
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(batch_workers.BatchWorkerError, match=r"lower data\.num_workers"):
        for _ in range(50):
            next(batches)
    batches.close()
    assert not os.path.exists(f"/dev/shm/{memory_name.lstrip('/')}")
    assert not [t for t in threading.enumerate() if t.name.startswith("bert_jax-pretraining")]


def test_tfds_corpus_through_workers_equals_the_thread(corpus_dir):
    from bert_jax.data.corpus import masking_config_from_corpus, open_corpus

    masking = masking_config_from_corpus(corpus_dir, max_predictions_per_seq=20)
    results = []
    for num_workers in (0, 2):
        config = PipelineConfig(global_batch_size=64, max_seq_length=128, seed=3, num_workers=num_workers)
        with PretrainingBatches(open_corpus(corpus_dir, "train"), config, masking) as batches:
            results.append(take(batches, 4))
    for got, want in zip(results[1], results[0], strict=True):
        assert_batches_equal(got, want)


# --- the decoder -------------------------------------------------------------------------------------------------


def test_fast_decoder_equals_tfds_on_every_record_of_a_real_corpus(corpus_dir):
    from bert_jax.data.corpus import open_corpus

    for split in ("train", "validation"):
        source = open_corpus(corpus_dir, split)
        indices = list(range(len(source)))
        fast = source.read_columns(indices)
        reference = instance_records.columns_of_items(source.tfds_source.__getitems__(indices))
        assert fast.keys() == reference.keys()
        for key in reference:
            assert fast[key].dtype == reference[key].dtype, key
            np.testing.assert_array_equal(fast[key], reference[key], err_msg=key)


def example_bytes(fields: dict[str, list[int]]) -> bytes:
    """A tf.train.Example serialized by protobuf itself (TFDS's copy of the proto)."""
    from tensorflow_datasets.core.example_parser import tf_example_pb2

    example = tf_example_pb2.Example()
    for key, values in fields.items():
        example.features.feature[key].int64_list.value.extend(values)
    return example.SerializeToString()


def test_decoder_reads_multibyte_and_negative_varints_like_protobuf():
    rows = [
        {
            "tokens": [101, 30521, 2**31 - 1, 0, 102],
            "segment_ids": [0, 0, 1, 1, 1],
            "word_starts": [0, 1, 1, 0, 1],
            "is_random_next": [1],
        },
        {
            "tokens": [101, 127, 128, 16384],
            "segment_ids": [0, 0, 0, 0],
            "word_starts": [1, 1, 1, 1],
            "is_random_next": [0],
        },
    ]
    columns = instance_records.decode_instances([example_bytes(row) for row in rows])
    np.testing.assert_array_equal(columns["tokens"], [101, 30521, 2**31 - 1, 0, 102, 101, 127, 128, 16384])
    np.testing.assert_array_equal(columns["lengths"], [5, 4])
    np.testing.assert_array_equal(columns["is_random_next"], [1, 0])
    np.testing.assert_array_equal(columns["word_starts"], [False, True, True, False, True, True, True, True, True])
    np.testing.assert_array_equal(
        instance_records.decode_varints(np.frombuffer(example_bytes({"x": [-5]})[-10:], np.uint8)), [-5]
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"tokens": [1, 2], "segment_ids": [0, 0], "word_starts": [1, 1]},  # no is_random_next
        {"tokens": [1, 2], "segment_ids": [0], "word_starts": [1, 1], "is_random_next": [0]},  # uneven
        {"tokens": [1, 2], "segment_ids": [0, 0], "word_starts": [1, 1], "is_random_next": [0, 1]},
    ],
)
def test_records_outside_the_layout_go_to_tfds(fields):
    with pytest.raises(instance_records.UnexpectedLayout):
        instance_records.decode_instances([example_bytes(fields)])


def test_unpacked_and_float_features_are_outside_the_layout():
    from tensorflow_datasets.core.example_parser import tf_example_pb2

    example = tf_example_pb2.Example()
    example.features.feature["tokens"].float_list.value.extend([1.0])
    with pytest.raises(instance_records.UnexpectedLayout):
        instance_records.field_spans(example.SerializeToString())
    # field 1 of Int64List as unpacked varints (tag 0x08): Example{features{feature{"t": int64_list{1, 2}}}}
    int64_list = b"\x08\x01\x08\x02"
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list
    entry = b"\x0a\x01t" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    record = b"\x0a" + bytes([len(features)]) + features
    assert list(tf_example_pb2.Example.FromString(record).features.feature["t"].int64_list.value) == [1, 2]
    with pytest.raises(instance_records.UnexpectedLayout):
        instance_records.field_spans(record)


# --- how many workers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (7, 0), (8, 2), (16, 4), (96, 16), (208, 16)])
def test_automatic_worker_count(cores, workers):
    assert batch_workers.auto_num_workers(cores) == workers


@pytest.mark.parametrize("value", [-2, 1.5, True, "4"])
def test_a_bad_num_workers_is_a_config_error(value):
    import ml_collections

    config = ml_collections.ConfigDict(
        {
            "num_train_steps": 10,
            "log_every_steps": 1,
            "eval_every_steps": 1,
            "checkpoint_every_steps": 1,
            "max_checkpoints_to_keep": 1,
            "num_microbatches": 1,
            "global_batch_size": 8,
            "model": {"size": "tiny"},
            "data": {"num_workers": value, "vocab_file": "vocab.txt"},
        }
    )
    with pytest.raises(ConfigError, match=r"data\.num_workers"):
        job_config.parse(config, expect="pretrain")


_PARENT_SCRIPT = """
import sys, time
import numpy as np
from bert_jax.data.masking import MaskingConfig
from bert_jax.data.pipeline import PipelineConfig, PretrainingBatches

if __name__ == "__main__":
    item = {"tokens": np.array([101, 5, 6, 7, 102], np.int32), "segment_ids": np.zeros(5, np.int32),
            "word_starts": np.ones(5, bool), "is_random_next": 0}
    masking = MaskingConfig(vocab_size=200, mask_id=103, special_ids=(0, 101, 102))
    batches = PretrainingBatches([item] * 64, PipelineConfig(global_batch_size=8, max_seq_length=8, seed=0,
                                 num_workers=2), masking)
    next(batches)
    print("ready", flush=True)
    time.sleep(120)
"""


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(_PARENT_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        children = [
            int(pid)
            for pid in subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        ]
        assert len(children) >= 2  # the two workers (and multiprocessing's resource tracker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid)]
    assert not alive, f"processes {alive} outlived their killed parent"


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
