"""Decoding a batch of serialized corpus instances (`tf.train.Example` records) straight into numpy columns.

TFDS decodes a record field by field into Python objects and numpy arrays, about 75 microseconds per instance:
three quarters of a batch's time in the input pipeline. The corpus's records have one fixed layout (four
int64 lists, written by TFDS as packed varints), so a batch is decoded here in two steps: a short walk over each
record's protobuf framing finds where each field's packed values lie, then the values of all the batch's
records are decoded at once, vectorized over the concatenated varint bytes. A record in any other layout (an
unpacked list, a field of another type, a missing field) raises `UnexpectedLayout`, and the caller falls back
to TFDS's own decoder, so the fast path never changes what is read, only how fast.

`encode_instance` is the inverse, for the corpus build: the same record TFDS's serializer writes for an
instance (the same protobuf message, field for field), faster, so that the build's worker processes can
serialize and its own process only writes bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

INSTANCE_FIELDS = ("tokens", "segment_ids", "word_starts", "is_random_next")

_LENGTH_DELIMITED_FIELD_1 = 0x0A  # field 1, wire type 2: Example.features, Features.feature, MapEntry.key, packed
_MAP_ENTRY_VALUE = 0x12  # field 2, wire type 2: MapEntry.value (a Feature)
_INT64_LIST = 0x1A  # field 3, wire type 2: Feature.int64_list


class UnexpectedLayout(ValueError):
    """A record is not four packed int64 lists; decode it with TFDS instead."""


def _varint(record: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    result = shift = 0
    while True:
        try:
            byte = record[pos]
        except IndexError:
            raise UnexpectedLayout("truncated varint") from None
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _frame(record: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """The length-delimited field at `pos`: (tag, start of its payload, end of its payload), inside `limit`."""
    tag, pos = _varint(record, pos)
    length, pos = _varint(record, pos)
    if pos + length > limit:
        raise UnexpectedLayout("a field longer than its enclosing frame")
    return tag, pos, pos + length


def _packed_values_span(record: bytes, pos: int, end: int) -> tuple[int, int]:
    """Where the packed varints of the Feature at [pos, end) lie; it must hold an int64 list."""
    tag, pos, list_end = _frame(record, pos, end)
    if tag != _INT64_LIST or list_end != end:
        raise UnexpectedLayout("a feature that is not exactly one int64 list")
    if pos == end:
        return pos, pos
    tag, pos, values_end = _frame(record, pos, end)
    if tag != _LENGTH_DELIMITED_FIELD_1 or values_end != end:
        raise UnexpectedLayout("an int64 list that is not packed")
    return pos, end


def field_spans(record: bytes) -> dict[str, tuple[int, int]]:
    """For each feature of one serialized Example: the (start, end) byte span of its packed int64 values."""
    spans: dict[str, tuple[int, int]] = {}
    pos, size = 0, len(record)
    while pos < size:
        tag, pos, end = _frame(record, pos, size)
        if tag != _LENGTH_DELIMITED_FIELD_1:
            raise UnexpectedLayout("an Example field other than `features`")
        while pos < end:
            tag, pos, entry_end = _frame(record, pos, end)
            if tag != _LENGTH_DELIMITED_FIELD_1:
                raise UnexpectedLayout("a Features field other than the feature map")
            key, span = None, None
            while pos < entry_end:
                tag, pos, field_end = _frame(record, pos, entry_end)
                if tag == _LENGTH_DELIMITED_FIELD_1:
                    key = record[pos:field_end].decode("utf-8")
                elif tag == _MAP_ENTRY_VALUE:
                    span = _packed_values_span(record, pos, field_end)
                else:
                    raise UnexpectedLayout("an unknown map entry field")
                pos = field_end
            if key is None or span is None or key in spans:
                raise UnexpectedLayout("a feature map entry without key or value, or a repeated key")
            spans[key] = span
    return spans


def decode_varints(data: np.ndarray) -> np.ndarray:
    """int64 values of the concatenated varints in `data` (uint8); values are two's complement like protobuf's."""
    if data.size == 0:
        return np.zeros(0, np.int64)
    last = data < 0x80
    if not last[-1]:
        raise UnexpectedLayout("truncated varint")
    if last.all():  # every value below 128 (segment ids, flags, most of a small vocabulary)
        return data.astype(np.int64)
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    if (ends - starts).max() > 9:
        raise UnexpectedLayout("a varint longer than 10 bytes")
    byte_of_value = np.arange(data.size) - np.repeat(starts, ends - starts + 1)
    parts = (data & 0x7F).astype(np.uint64) << (7 * byte_of_value).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts).view(np.int64)


def decode_instances(records: Sequence[bytes]) -> dict[str, np.ndarray]:
    """A batch of serialized instances as columns, in the form of `columns_of_items`.

    Raises `UnexpectedLayout` when a record is not four packed int64 lists of consistent lengths; the caller
    then decodes with TFDS, whose items the pipeline checks (and names the offending instance).
    """
    spans = [field_spans(record) for record in records]
    columns: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for field in INSTANCE_FIELDS:
        try:
            pieces = [record[slice(*record_spans[field])] for record, record_spans in zip(records, spans, strict=True)]
        except KeyError:
            raise UnexpectedLayout(f"a record without {field!r}") from None
        data = np.frombuffer(b"".join(pieces), np.uint8)
        columns[field] = decode_varints(data)
        offsets = np.cumsum([0, *(len(piece) for piece in pieces)])
        value_ends = np.concatenate([[0], np.cumsum(data < 0x80)])
        counts[field] = value_ends[offsets[1:]] - value_ends[offsets[:-1]]
    if (counts["is_random_next"] != 1).any():
        raise UnexpectedLayout("is_random_next is not one value per record")
    lengths = counts["tokens"].astype(np.int64)
    if (counts["segment_ids"] != lengths).any() or (counts["word_starts"] != lengths).any():
        raise UnexpectedLayout("per-token fields of different lengths")  # TFDS's decoding names the instance
    return {
        "segment_lengths": lengths,
        "start_lengths": lengths,
        "tokens": columns["tokens"].astype(np.int32),
        "segment_ids": columns["segment_ids"].astype(np.int32),
        "word_starts": columns["word_starts"] != 0,
        "lengths": lengths,
        "is_random_next": columns["is_random_next"].astype(np.int32),
    }


# The order TFDS's serializer (protobuf's map) writes the features in; any order decodes the same.
_ENCODED_ORDER = ("word_starts", "tokens", "is_random_next", "segment_ids")
_ENCODED_KEYS = {field: bytes((_LENGTH_DELIMITED_FIELD_1, len(field))) + field.encode() for field in _ENCODED_ORDER}


def _varint_bytes(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # two's complement, as protobuf writes a negative int64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS: list[bytes] = []  # the varints of 0 .. 2**16 - 1 (every id of a real vocabulary), made on first use


def _small_varints() -> list[bytes]:
    if not _SMALL_VARINTS:
        _SMALL_VARINTS.extend(_varint_bytes(value) for value in range(1 << 16))
    return _SMALL_VARINTS


def encode_varints(values: np.ndarray) -> bytes:
    """Concatenated protobuf varints of `values` (int64, negatives as two's complement)."""
    values = np.asarray(values).astype(np.int64, copy=False)
    if values.size == 0:
        return b""
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high < 0x80:  # flags, segment ids, labels: one byte each
        return values.astype(np.uint8).tobytes()
    if low >= 0 and high < 1 << 16:  # token ids: a table lookup per value beats numpy on a few hundred values
        table = _small_varints()
        return b"".join([table[value] for value in values.tolist()])
    return b"".join(_varint_bytes(value) for value in values.view(np.uint64).tolist())


def _length_delimited(tag: int, payload: bytes) -> bytes:
    size = len(payload)
    return bytes((tag, size)) + payload if size < 0x80 else bytes((tag,)) + _varint_bytes(size) + payload


def _feature_entry(field: str, packed: bytes) -> bytes:
    """One entry of the Features map: the key and a Feature holding one packed int64 list."""
    int64_list = _length_delimited(_LENGTH_DELIMITED_FIELD_1, packed) if packed else b""
    feature = _length_delimited(_MAP_ENTRY_VALUE, _length_delimited(_INT64_LIST, int64_list))
    return _length_delimited(_LENGTH_DELIMITED_FIELD_1, _ENCODED_KEYS[field] + feature)


def encode_instance(example: Mapping[str, Any]) -> bytes:
    """One instance (`tokens`, `segment_ids`, `word_starts`, `is_random_next`) as a serialized `tf.train.Example`:
    four packed int64 lists, the message TFDS's `FeaturesDict.serialize_example` writes for the corpus's
    features (protobuf leaves the order of map entries open; this one is fixed) and `decode_instances` reads."""
    features = b"".join(
        _feature_entry(field, _varint_bytes(int(value)) if np.ndim(value) == 0 else encode_varints(value))
        for field, value in ((field, example[field]) for field in _ENCODED_ORDER)
    )
    return _length_delimited(_LENGTH_DELIMITED_FIELD_1, features)


_ITEM_KEYS = ("tokens", "segment_ids", "word_starts", "is_random_next")


def columns_of_items(items: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Instance dicts -> columns: `tokens`, `segment_ids` (int32) and `word_starts` (bool), each the batch's values
    concatenated in item order; `lengths`, `segment_lengths`, `start_lengths` [b] int64 (the three fields' own
    lengths, which the pipeline checks are equal); `is_random_next` [b] int32."""
    batch = len(items)
    try:
        lengths = np.fromiter((len(item["tokens"]) for item in items), np.int64, count=batch)
        segment_lengths = np.fromiter((len(item["segment_ids"]) for item in items), np.int64, count=batch)
        start_lengths = np.fromiter((len(item["word_starts"]) for item in items), np.int64, count=batch)
        labels = np.fromiter((item["is_random_next"] for item in items), np.int32, count=batch)
    except KeyError as missing:
        raise ValueError(f"source items need the keys {_ITEM_KEYS}; one lacks {missing}") from None

    def joined(key: str, dtype: type) -> np.ndarray:
        return (
            np.concatenate([np.asarray(item[key]) for item in items]).astype(dtype, copy=False)
            if batch
            else np.zeros(0, dtype)
        )

    return {
        "tokens": joined("tokens", np.int32),
        "segment_ids": joined("segment_ids", np.int32),
        "word_starts": joined("word_starts", bool),
        "lengths": lengths,
        "segment_lengths": segment_lengths,
        "start_lengths": start_lengths,
        "is_random_next": labels,
    }
