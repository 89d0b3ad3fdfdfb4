"""Corpus inputs that hold one document per record: JSON Lines, Parquet, and Hugging Face datasets on disk.

A format is recognized by its name, never guessed from the content:
  * JSON Lines: `*.jsonl`, `*.ndjson` or `*.json` (as C4 and many Hugging Face hub files are), optionally
    compressed, `*.jsonl.gz` / `*.jsonl.zst` (zstd needs the `zstandard` package: `pip install zstandard`);
    one JSON object per line, the document's text in a named field (`text_field`, default "text");
  * Parquet: `*.parquet`, the text in a named string column, read one row group at a time;
  * a Hugging Face dataset saved with `Dataset.save_to_disk`: a folder holding `state.json` (which lists its
    Arrow IPC stream files, `data-00000-of-0000N.arrow`) and `dataset_info.json`; read with pyarrow alone (the
    `datasets` package is not needed), the text in a named column.
Local paths and gs:// alike (`storage`). `iter_texts` yields each record's text, in file order, streaming: memory is
one line (JSON Lines) or one row group's column (Parquet) or one record batch (Arrow), whatever the file's size.

Everything a user can get wrong is a `RecordError` whose one-line message names the file (and line) and the fix;
`documents` turns the texts into documents and the errors into `CorpusError`s. This module imports nothing of
`documents`, so each can be read alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
from collections.abc import Iterator
from typing import IO, Any

from bert_jax import storage

DEFAULT_TEXT_FIELD = "text"
JSON_LINES, PARQUET, HF_DATASET = "jsonl", "parquet", "hf_dataset"
RECORD_FORMATS = (JSON_LINES, PARQUET, HF_DATASET)
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
_COMPRESSIONS = (".gz", ".zst")
_STATE = "state.json"  # what marks a save_to_disk folder (with dataset_info.json), and lists its Arrow files
_DATASET_INFO = "dataset_info.json"
_DATASET_DICT = "dataset_dict.json"  # a DatasetDict's folder: one sub-folder per split
_ROWS_PER_SLICE = 1024  # Arrow rows turned into Python strings at a time
_GZIP_MAGIC, _ZSTD_MAGIC, _PARQUET_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PAR1"
_FIELD_FIX = "set --text_field (bert-jax-build-corpus) or data.text_field (bert-jax-pretrain)"


class RecordError(ValueError):
    """A record input that cannot be read as asked; the message names the file and the fix."""


@dataclasses.dataclass
class RecordCounts:
    """What `iter_texts` saw in one input: records (non-blank lines or rows) and undecodable byte sequences."""

    records: int = 0
    replaced_characters: int = 0


def record_format(path: str) -> str | None:
    """The record format an input's name says (`RECORD_FORMATS`), or None for a text file.

    A folder is a saved Hugging Face dataset when it holds `state.json` (one request on gs://, for names without
    an extension of a record format)."""
    name = path.rstrip("/").lower()
    for compression in _COMPRESSIONS:
        if name.endswith(compression) and name.removesuffix(compression).endswith(_JSON_SUFFIXES):
            return JSON_LINES
    if name.endswith(_JSON_SUFFIXES):
        return JSON_LINES
    if name.endswith(".parquet"):
        return PARQUET
    if is_dataset_folder(path):
        return HF_DATASET
    return None


def is_dataset_folder(path: str) -> bool:
    """Whether `path` is a folder written by `save_to_disk` (a `Dataset`; a `DatasetDict`'s is refused by
    `check_dataset_folder`)."""
    return storage.isdir(path) and (
        storage.exists(storage.join(path, _STATE)) or storage.exists(storage.join(path, _DATASET_DICT))
    )


def check_dataset_folder(path: str) -> None:
    """Raises `RecordError` for a folder that is not one saved `Dataset` (a `DatasetDict`: name one split)."""
    dict_file = storage.join(path, _DATASET_DICT)
    if storage.exists(dict_file) and not storage.exists(storage.join(path, _STATE)):
        try:
            splits = json.loads(storage.read_text(dict_file)).get("splits") or []
        except (ValueError, AttributeError):
            splits = []
        example = storage.join(path, str(splits[0])) if splits else storage.join(path, "train")
        raise RecordError(
            f"{path} is a DatasetDict saved with save_to_disk (splits: {', '.join(map(str, splits)) or '?'}); "
            f"name one split's folder, e.g. {example}."
        )


def input_size_and_mtime(path: str) -> tuple[int, int]:
    """An input's size and modification time for the corpus fingerprint: a file's own, and for a saved dataset
    the sum of its files' sizes and the newest of their times (a folder's own say nothing on object storage)."""
    if record_format(path) != HF_DATASET:
        return storage.size_and_mtime(path)
    total, newest = 0, 0
    for name in [_STATE, *_arrow_files(path)]:
        size, mtime = storage.size_and_mtime(storage.join(path, name))
        total, newest = total + size, max(newest, mtime)
    return total, newest


def iter_texts(path: str, fmt: str, text_field: str, counts: RecordCounts | None = None) -> Iterator[str | None]:
    """Each record's `text_field` (None where the record holds null), in order; see the module docstring."""
    counts = counts if counts is not None else RecordCounts()
    if fmt == JSON_LINES:
        return _json_lines_texts(path, text_field, counts)
    if fmt == PARQUET:
        return _parquet_texts(path, text_field, counts)
    if fmt == HF_DATASET:
        return _dataset_texts(path, text_field, counts)
    raise ValueError(f"Unknown record format {fmt!r}; one of {', '.join(RECORD_FORMATS)}.")


# ---------------------------------------------------------------------------------------------------
# JSON Lines


@contextlib.contextmanager
def _decompressed(path: str) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed as its name says (.gz, .zst), streamed."""
    with storage.open_file(path, "rb") as raw:
        name = path.lower()
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f
        elif name.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raise RecordError(
                    f"{path}: reading .zst files needs the zstandard package: pip install zstandard "
                    "(or pip install 'bert_jax[zstd]'), or decompress it first (zstd -d)."
                ) from None
            # Windows up to 2 GiB: files written with `zstd --long` (as some web corpora are) need more than the
            # library's default limit.
            reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(raw, read_across_frames=True)
            with io.BufferedReader(reader, buffer_size=1 << 20) as f:
                yield f
        else:
            yield raw


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _decompress_errors(path: str) -> tuple[type[BaseException], ...]:
    """What a corrupt compressed file raises while it is read (gzip.BadGzipFile is an OSError)."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError)
    if path.lower().endswith(".zst"):
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def _head(f: IO[bytes], size: int = 64) -> bytes:
    """The first bytes of `f`, left to be read again."""
    if hasattr(f, "peek"):
        return f.peek(size)[:size]
    head = f.read(size)
    f.seek(0)
    return head


def _json_lines_texts(path: str, text_field: str, counts: RecordCounts) -> Iterator[str | None]:
    name = path.lower()
    with _decompressed(path) as f:
        corrupt = _decompress_errors(path)
        lineno = 0
        try:
            _check_text_head(path, _head(f))
            for line in f:
                lineno += 1
                if not line.strip():
                    continue
                text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
                if lineno == 1:
                    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark
                counts.replaced_characters += text.count("\ufffd")
                counts.records += 1
                yield _json_record_text(path, lineno, text, text_field, name)
        except corrupt as e:
            where = f"{path}:{lineno + 1}" if lineno else path
            raise RecordError(f"{where}: cannot decompress it ({e}); check that it is what its name says.") from None


def _check_text_head(path: str, head: bytes) -> None:
    """A JSON Lines file that is really compressed, or binary, is refused with the fix."""
    if head.startswith(_GZIP_MAGIC):
        raise RecordError(f"{path}: the file is gzip-compressed; name it {path.rstrip('/')}.gz (formats go by name).")
    if head.startswith(_ZSTD_MAGIC):
        raise RecordError(f"{path}: the file is zstd-compressed; name it {path.rstrip('/')}.zst (formats go by name).")
    if b"\x00" in head:
        raise RecordError(f"{path}: binary data (NUL bytes), not JSON Lines text; check the file and its name.")


def _json_record_text(path: str, lineno: int, line: str, text_field: str, name: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        hint = "one JSON object per line (JSON Lines)"
        if lineno == 1 and line.lstrip().startswith("["):
            hint = (
                "JSON Lines, one object per line, not one JSON array: convert it, e.g. jq -c '.[]' in.json > out.jsonl"
            )
        elif name.endswith(".json") and lineno <= 2 and line.strip() in ("{", "["):
            hint = "JSON Lines, one object per line, not one pretty-printed JSON document"
        raise RecordError(
            f"{path}:{lineno}: invalid JSON ({e.msg}: column {e.colno}); the file must be {hint}."
        ) from None
    if not isinstance(record, dict):
        raise RecordError(
            f"{path}:{lineno}: a JSON {_json_type(record)}, not an object; each line must be one JSON object with "
            f"a {text_field!r} field."
        )
    if text_field not in record:
        fields = ", ".join(map(repr, record)) or "none"
        raise RecordError(
            f"{path}:{lineno}: the record has no {text_field!r} field (its fields: {fields}); {_FIELD_FIX} to the "
            "field that holds the text."
        )
    value = record[text_field]
    if value is not None and not isinstance(value, str):
        raise RecordError(
            f"{path}:{lineno}: the {text_field!r} field is a JSON {_json_type(value)}, not a string; {_FIELD_FIX} "
            "to a field that holds the text."
        )
    return value


# ---------------------------------------------------------------------------------------------------
# Arrow columns: Parquet files and saved Hugging Face datasets


def _is_text_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    checks = [pa.types.is_string, pa.types.is_large_string]
    if hasattr(pa.types, "is_string_view"):
        checks.append(pa.types.is_string_view)
    return any(check(arrow_type) for check in checks)


def _check_column(path: str, schema: Any, text_field: str) -> int:
    """The index of the text column in `schema`; a `RecordError` naming the columns, or the column's type."""
    names = list(schema.names)
    if text_field not in names:
        columns = ", ".join(f"{n!r} ({schema.field(i).type})" for i, n in enumerate(names)) or "none"
        raise RecordError(
            f"{path}: no column {text_field!r} (its columns: {columns}); {_FIELD_FIX} to the column that holds "
            "the text."
        )
    index = names.index(text_field)
    arrow_type = schema.field(index).type
    if not _is_text_type(arrow_type):
        raise RecordError(
            f"{path}: the column {text_field!r} is of type {arrow_type}, not string; {_FIELD_FIX} to a string column."
        )
    return index


def _column_texts(column: Any, counts: RecordCounts) -> Iterator[str | None]:
    """The strings of an Arrow array or chunked array, a slice at a time (bounded Python memory)."""
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    for chunk in chunks:
        for start in range(0, len(chunk), _ROWS_PER_SLICE):
            values = chunk.slice(start, _ROWS_PER_SLICE).to_pylist()
            counts.records += len(values)
            yield from values


def _parquet_texts(path: str, text_field: str, counts: RecordCounts) -> Iterator[str | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with storage.open_file(path, "rb") as f:
        head = f.read(4)
        if not head:
            return  # an empty file: the caller reports it
        f.seek(0)
        try:
            parquet = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            what = "it starts with Parquet's magic bytes but" if head == _PARQUET_MAGIC else "it"
            raise RecordError(
                f"{path}: not a Parquet file ({what} cannot be opened: {first_line}); check the file, or rename it "
                "if it holds text or JSON Lines (formats go by name)."
            ) from None
        _check_column(path, parquet.schema_arrow, text_field)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=[text_field], use_threads=False)
            yield from _column_texts(table.column(0), counts)


def _arrow_files(path: str) -> list[str]:
    """The Arrow files of a saved dataset, in order, from its `state.json`."""
    check_dataset_folder(path)
    state_path = storage.join(path, _STATE)
    try:
        state = json.loads(storage.read_text(state_path))
        files = [str(entry["filename"]) for entry in state["_data_files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise RecordError(
            f"{state_path}: not the state.json of a dataset saved with save_to_disk ({type(e).__name__}: {e}); "
            "save the dataset again."
        ) from None
    if state.get("_indices_data_files"):
        raise RecordError(
            f"{path}: the dataset was saved with an indices mapping (an old datasets release); save it again after "
            "dataset = dataset.flatten_indices()."
        )
    return files


def _dataset_texts(path: str, text_field: str, counts: RecordCounts) -> Iterator[str | None]:
    import pyarrow as pa

    for name in _arrow_files(path):
        file_path = storage.join(path, name)
        with storage.open_file(file_path, "rb") as f:
            head = f.read(6)
            f.seek(0)
            try:
                # save_to_disk writes the IPC stream format; the IPC file format ("ARROW1") is read too.
                reader = pa.ipc.open_file(f) if head == b"ARROW1" else pa.ipc.open_stream(f)
            except (pa.ArrowException, OSError) as e:
                raise RecordError(f"{file_path}: not an Arrow file ({e}); save the dataset again.") from None
            _check_column(file_path, reader.schema, text_field)
            if isinstance(reader, pa.ipc.RecordBatchFileReader):
                batches: Any = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = reader
            for batch in batches:
                yield from _column_texts(batch.column(text_field), counts)


def local_size(path: str, text_field: str = DEFAULT_TEXT_FIELD) -> int:
    """About the bytes of text an input on this host's disk holds (0 when remote or absent): the build's progress
    bar. A file's size; for Parquet (compressed, often half its text's size or less) the text column's uncompressed
    size from the file's footer: the text's bytes within a few per row (3,000 WikiText paragraphs: 1.77 MB for
    1.75 MB), less where texts repeat (dictionary encoding stores a repeated value once)."""
    if storage.is_remote(path):
        return 0
    try:
        if os.path.isdir(path):
            return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
        if path.lower().endswith(".parquet"):
            return _parquet_text_bytes(path, text_field)
        return os.path.getsize(path)
    except OSError:
        return 0


def _parquet_text_bytes(path: str, text_field: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as f:  # a file object: pyarrow never resolves the path with a filesystem of its own
            metadata = pq.ParquetFile(f).metadata
    except (pa.ArrowException, OSError):
        return os.path.getsize(path)  # not Parquet: reading it will say so
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            if column.path_in_schema == text_field:
                total += column.total_uncompressed_size
    return total or os.path.getsize(path)
