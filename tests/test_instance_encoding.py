"""The corpus build's own record encoder writes the message TFDS's serializer writes, for any values."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.example_parser import tf_example_pb2

from bert_jax.data import instance_records

FEATURES = tfds.features.FeaturesDict(
    {
        "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "segment_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "word_starts": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
        "is_random_next": np.int64,
    }
)


def parsed(record: bytes) -> tf_example_pb2.Example:
    return tf_example_pb2.Example.FromString(record)


@pytest.mark.parametrize("length", [0, 1, 7, 128, 512])
@pytest.mark.parametrize("largest_id", [2, 128, 30_522, 2**16, 2**31 - 1])
def test_encoded_instance_is_the_message_tfds_serializes(length, largest_id):
    rng = np.random.default_rng(length * 7 + largest_id)
    example = {
        "tokens": rng.integers(0, largest_id, length).astype(np.int32),
        "segment_ids": rng.integers(0, 2, length).astype(np.int32),
        "word_starts": rng.integers(0, 2, length).astype(bool),
        "is_random_next": int(rng.integers(0, 2)),
    }
    ours = instance_records.encode_instance(example)
    assert parsed(ours) == parsed(FEATURES.serialize_example(example))  # field for field; map order aside
    decoded = FEATURES.deserialize_example_np(ours)  # TFDS's own decoder reads it back
    for key in ("tokens", "segment_ids", "word_starts"):
        np.testing.assert_array_equal(decoded[key], example[key], err_msg=key)
    assert int(decoded["is_random_next"]) == example["is_random_next"]


def test_encoded_instances_decode_in_a_batch():
    examples = [
        {"tokens": [101, 30521, 0, 102], "segment_ids": [0, 0, 1, 1], "word_starts": [0, 1, 1, 0], "is_random_next": 1},
        {
            "tokens": [101, 127, 128, 16384],
            "segment_ids": [0, 1, 1, 1],
            "word_starts": [1, 1, 0, 1],
            "is_random_next": 0,
        },
    ]
    columns = instance_records.decode_instances([instance_records.encode_instance(x) for x in examples])
    np.testing.assert_array_equal(columns["tokens"], [101, 30521, 0, 102, 101, 127, 128, 16384])
    np.testing.assert_array_equal(columns["lengths"], [4, 4])
    np.testing.assert_array_equal(columns["is_random_next"], [1, 0])


def test_varints_match_protobuf_for_every_width():
    values = np.array([0, 1, 127, 128, 16383, 16384, 2**21, 2**31 - 1, 2**40, -1, -(2**31)], np.int64)
    example = tf_example_pb2.Example()
    example.features.feature["x"].int64_list.value.extend(values.tolist())
    packed = instance_records.encode_varints(values)
    assert len(packed) < 0x70  # so every length below is one byte
    int64_list = b"\x0a" + bytes([len(packed)]) + packed  # Int64List.value (field 1), packed
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list  # Feature.int64_list (field 3)
    entry = b"\x0a\x01x\x12" + bytes([len(feature)]) + feature  # map entry: key (1), value (2)
    features = b"\x0a" + bytes([len(entry)]) + entry
    assert example.SerializeToString() == b"\x0a" + bytes([len(features)]) + features
