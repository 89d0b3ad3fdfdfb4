"""Text files -> documents (lists of sentences), streaming, robust to the input users really have.

Formats (`text_format`):
  * "sentences": the original `create_pretraining_data.py` format: one sentence per line, a blank line
    between documents.
  * "documents": one document per line; sentences are found by `split_sentences`.
  * "prose": books and articles: hard-wrapped lines, blank lines between paragraphs; a file is one
    document, sentences are found by `split_sentences` within each paragraph.
  * "wikitext": WikiText's `wiki.*.tokens` layout: an article starts at a ` = Title = ` line (sub-headings
    ` = = x = = ` are dropped), each other line is a paragraph.
  * "auto": chosen per file from its first 64 KiB (logged), see `sniff_format`.

Inputs with one document per record are recognized by name (`text_records`): JSON Lines (`*.jsonl`, `*.ndjson`,
`*.json`, also `.gz` / `.zst` compressed), Parquet (`*.parquet`) and a Hugging Face dataset saved with `save_to_disk`
(its folder): each record's `text_field` (default "text") is a document, its non-blank lines paragraphs split into
sentences as the "documents" format splits its lines (`text_format` applies to text files only).
An input may also be an existing TFDS text dataset already on disk (e.g. `wikipedia`), named
`tfds:<prepared dataset directory>[#split]`: each example's `text_field` feature is a document, its lines are
paragraphs split into sentences (`iter_tfds_documents`).

Bad input never ends in a traceback: undecodable bytes are replaced and counted (one warning per file),
binary and empty files are skipped with a warning, and a corpus that yields no sentence at all is a
`CorpusError` that says what was skipped; a record input that is not what its name says, or lacks the text field,
is a `CorpusError` naming the file (and line) and the fix. Memory is bounded by one document (one line for
"documents", one record for record inputs).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import logging
import os
import re
import statistics
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from bert_jax import storage
from bert_jax.data import text_records

logger = logging.getLogger(__name__)

TEXT_FORMATS = ("auto", "sentences", "documents", "prose", "wikitext")
DEFAULT_TEXT_FIELD = text_records.DEFAULT_TEXT_FIELD
_SNIFF_BYTES = 64 * 1024


class CorpusError(ValueError):
    """Input text that cannot become a corpus; the message says what was found and what to do."""


@dataclasses.dataclass
class ReadStats:
    """What reading the corpus saw: reported by the corpus builder and checked by tests."""

    files: int = 0
    documents: int = 0
    sentences: int = 0
    replaced_characters: int = 0
    skipped_files: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    formats: dict[str, str] = dataclasses.field(default_factory=dict)


TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """A document before sentence splitting: its paragraphs, each split by `split_sentences` (`split`), or its
    sentences already (the "sentences" format). Splitting is most of the cost of reading, so a parallel build
    does it in its worker processes (`build_workers`) and its own process only reads lines."""

    pieces: list[str]
    split: bool = True

    def sentences(self) -> list[str]:
        if not self.split:
            return [piece for piece in self.pieces if piece]
        return [sentence for piece in self.pieces for sentence in split_sentences(piece)]


def expand_input_files(spec: str | Sequence[str]) -> list[str]:
    """A glob, a comma-separated list (of files or globs) or a list -> sorted, de-duplicated input paths.

    Inputs are files, and folders of datasets saved with `save_to_disk` (other folders a glob matches are left
    out; one named alone is an error). `tfds:DIR[#split]` entries (prepared TFDS datasets) are kept as they are,
    after checking DIR exists.
    """
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    if not parts:
        raise CorpusError("No input files given; pass --input_files as a glob or a comma-separated list.")
    files: list[str] = []
    for part in parts:
        if part.startswith(TFDS_PREFIX):
            directory = part[len(TFDS_PREFIX) :].split("#")[0]
            if not os.path.isfile(os.path.join(directory, "dataset_info.json")):
                raise CorpusError(
                    f"{part}: {directory} is not a prepared TFDS dataset directory (no dataset_info.json)."
                )
            files.append(part)
            continue
        matches = storage.glob(part) if glob.has_magic(part) else [part]
        inputs = []
        for match in matches:
            if storage.isfile(match):
                inputs.append(match)
            elif text_records.is_dataset_folder(match):
                try:
                    text_records.check_dataset_folder(match)
                except text_records.RecordError as e:
                    raise CorpusError(str(e)) from None
                inputs.append(match.rstrip("/"))
            elif match == part and storage.isdir(match):
                raise CorpusError(
                    f"Input {part!r} is a folder but not a dataset saved with save_to_disk (no state.json); name its "
                    "files, e.g. with a glob."
                )
        if not inputs:
            raise CorpusError(f"Input {part!r} matches no file; check the path or the glob.")
        files.extend(inputs)
    return list(dict.fromkeys(files))


# ---------------------------------------------------------------------------------------------------
# Sentence splitting

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st prof sr jr vs etc e.g i.e mt no vol fig capt col gen lt rev hon messrs mme mlle "
    "sgt cpl maj cmdr adm gov pres jan feb mar apr jun jul aug sep sept oct nov dec approx dept est inc ltd co".split()
)
# A sentence end: terminal punctuation, optional closing quotes/brackets, whitespace, then something that
# can start a sentence (capital, digit, opening quote or bracket).
_BOUNDARY = re.compile(r"([.!?]+)([\"'”’)\]]*)\s+(?=[\"'“‘(\[]*[A-Z0-9À-Ý])")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def split_sentences(text: str) -> list[str]:
    """Splits running text into sentences with rules good enough for BERT's NSP segments.

    A boundary is `.`, `!` or `?` (closing quotes kept with the sentence) followed by whitespace and a
    capital, digit or opening quote, except after common abbreviations ("Mr.", "e.g.") and single-letter
    initials ("J. R. R. Tolkien"). Whitespace inside a sentence is collapsed to single spaces.
    """
    text = " ".join(text.split())
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if match.group(1) == ".":
            before = _WORD_BEFORE.search(text, max(0, match.start() - 32), match.start())
            word = before.group(1).lower() if before else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        end = match.end(2)
        sentences.append(text[start:end])
        start = match.end()
    if start < len(text):
        sentences.append(text[start:])
    return [s for s in sentences if s]


# ---------------------------------------------------------------------------------------------------
# Reading files


_CONTROL_BYTES = bytes([*range(9), *range(14, 32)])  # control characters other than tab, newlines, form feed


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    if not head:
        return False
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls / len(head) > 0.1


def sniff_format(head: str) -> str:
    """Guesses the format of a file from its beginning.

    WikiText if it has ` = Title = ` lines; "documents" when lines are long (median > 300 characters) and
    rarely separated by blank lines; "prose" when most lines are hard-wrapped (40-80 characters, not ending
    a sentence); otherwise the original one-sentence-per-line format.
    """
    lines = head.splitlines()[:2000]
    non_blank = [ln.strip() for ln in lines if ln.strip()]
    if not non_blank:
        return "sentences"
    if (
        sum(1 for ln in non_blank if re.fullmatch(r"= [^=].* =", ln)) >= 1
        and head.count(" @-@ ") + head.count(" = ") > 2
    ):
        return "wikitext"
    if statistics.median(len(ln) for ln in non_blank) > 300:
        return "documents"
    wrapped = sum(1 for ln in non_blank if 40 <= len(ln) <= 80 and not re.search(r"[.!?][\"'”’)]*$", ln))
    if wrapped / len(non_blank) > 0.4:
        return "prose"
    return "sentences"


class _CountingLines:
    """Iterates a file's lines (any line ending), counting replacement characters from bad bytes."""

    def __init__(self, path: str):
        self.path = path
        self.replaced = 0

    def __iter__(self) -> Iterator[str]:
        with storage.open_file(self.path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)
            for line in text:
                self.replaced += line.count("\ufffd")
                yield line.rstrip("\n")


def _paragraph_blocks(lines: Iterable[str]) -> Iterator[list[str]]:
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


def _sentences_format(lines: Iterable[str]) -> Iterator[RawDocument]:
    for block in _paragraph_blocks(lines):
        yield RawDocument([" ".join(ln.split()) for ln in block], split=False)


def _documents_format(lines: Iterable[str]) -> Iterator[RawDocument]:
    for line in lines:
        if line.strip():
            yield RawDocument([line])


def _prose_format(lines: Iterable[str]) -> Iterator[RawDocument]:
    paragraphs = [" ".join(block) for block in _paragraph_blocks(lines)]
    if paragraphs:
        yield RawDocument(paragraphs)


def _wikitext_format(lines: Iterable[str]) -> Iterator[RawDocument]:
    paragraphs: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if re.fullmatch(r"= [^=].* =", stripped):  # a new article
            if paragraphs:
                yield RawDocument(paragraphs)
            paragraphs = []
        elif re.fullmatch(r"(= )+.*( =)+", stripped):  # a section heading inside the article
            continue
        else:
            paragraphs.append(stripped)
    if paragraphs:
        yield RawDocument(paragraphs)


_READERS = {
    "sentences": _sentences_format,
    "documents": _documents_format,
    "prose": _prose_format,
    "wikitext": _wikitext_format,
}


def iter_tfds_documents(
    spec: str, stats: ReadStats | None = None, text_feature: str = DEFAULT_TEXT_FIELD
) -> Iterator[list[str]]:
    """Documents of a prepared TFDS text dataset: `tfds:DIR[#split]` (default split "train")."""
    yield from _sentences_of(_iter_tfds_raw_documents(spec, stats, text_feature), stats)


def _iter_tfds_raw_documents(spec: str, stats: ReadStats | None, text_feature: str) -> Iterator[RawDocument]:
    """`iter_tfds_documents` before sentence splitting.

    Each example's `text_feature` is one document; its non-blank lines are paragraphs, split into sentences.
    """
    import tensorflow_datasets as tfds

    stats = stats if stats is not None else ReadStats()
    directory, _, split = spec[len(TFDS_PREFIX) :].partition("#")
    builder = tfds.builder_from_directory(directory)
    split = split or "train"
    if split not in builder.info.splits:
        raise CorpusError(f"{spec}: no split {split!r} (the dataset has {', '.join(builder.info.splits)}).")
    if text_feature not in builder.info.features:
        raise CorpusError(f"{spec}: no {text_feature!r} feature (it has {', '.join(builder.info.features)}).")
    stats.formats[spec] = "tfds"
    stats.files += 1
    for example in _tfds_examples(builder, split):
        text = example[text_feature]
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        paragraphs = [line for line in text.splitlines() if line.strip()]
        if paragraphs:
            stats.documents += 1
            yield RawDocument(paragraphs)


def _tfds_examples(builder: Any, split: str) -> Iterable[dict[str, Any]]:
    """Examples as numpy: random access for array_record datasets, tf.data for TFRecord ones (e.g. wikipedia)."""
    import tensorflow_datasets as tfds

    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError:  # TFRecord files have no random access; stream them once.
        return tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    return (source[i] for i in range(len(source)))


def iter_file_documents(
    path: str, text_format: str = "auto", stats: ReadStats | None = None, text_field: str = DEFAULT_TEXT_FIELD
) -> Iterator[list[str]]:
    """Documents (each a non-empty list of sentences) of one input; see the module docstring."""
    stats = stats if stats is not None else ReadStats()
    yield from _sentences_of(iter_file_raw_documents(path, text_format, stats, text_field), stats)


def _sentences_of(raw_documents: Iterable[RawDocument], stats: ReadStats | None) -> Iterator[list[str]]:
    for raw in raw_documents:
        sentences = raw.sentences()
        if stats is not None:
            stats.sentences += len(sentences)
        yield sentences


def iter_file_raw_documents(
    path: str, text_format: str = "auto", stats: ReadStats | None = None, text_field: str = DEFAULT_TEXT_FIELD
) -> Iterator[RawDocument]:
    """`iter_file_documents` before sentence splitting: each document's paragraphs (never empty, and each
    yields at least one sentence). `stats` counts files and documents here; sentences, whoever splits."""
    if text_format not in TEXT_FORMATS:
        raise CorpusError(f"Unknown text format {text_format!r}; use one of {', '.join(TEXT_FORMATS)}.")
    stats = stats if stats is not None else ReadStats()
    if path.startswith(TFDS_PREFIX):
        yield from _iter_tfds_raw_documents(path, stats, text_field)
        return
    record_format = text_records.record_format(path)
    if record_format is not None:
        yield from _iter_record_raw_documents(path, record_format, stats, text_field)
        return
    try:
        with storage.open_file(path, "rb") as f:
            head_bytes = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise CorpusError(f"Cannot read input file {path}: {e.strerror}.") from None
    if not head_bytes.strip():
        logger.warning("Skipping %s: the file is empty.", path)
        stats.skipped_files.append((path, "empty"))
        return
    if _looks_binary(head_bytes):
        logger.warning("Skipping %s: it looks binary (NUL or control bytes), not text.", path)
        stats.skipped_files.append((path, "binary"))
        return
    fmt = sniff_format(head_bytes.decode("utf-8", errors="replace")) if text_format == "auto" else text_format
    stats.formats[path] = fmt
    stats.files += 1
    lines = _CountingLines(path)
    for document in _READERS[fmt](lines):
        if any(document.pieces):
            stats.documents += 1
            yield document
    if lines.replaced:
        stats.replaced_characters += lines.replaced
        logger.warning(
            "%s: %d undecodable byte sequence(s) replaced with U+FFFD (the file is not valid UTF-8).",
            path,
            lines.replaced,
        )


def _iter_record_raw_documents(path: str, fmt: str, stats: ReadStats, text_field: str) -> Iterator[RawDocument]:
    """The documents of a record input (`text_records`): each record's text, its non-blank lines the paragraphs
    (a one-line text is what the "documents" format makes of a line); null and blank texts are no document."""
    counts = text_records.RecordCounts()
    try:
        for text in text_records.iter_texts(path, fmt, text_field, counts):
            if not text:
                continue
            paragraphs = [line for line in text.splitlines() if line.strip()]
            if paragraphs:
                stats.documents += 1
                yield RawDocument(paragraphs)
    except text_records.RecordError as e:
        raise CorpusError(str(e)) from None
    if counts.records == 0:
        logger.warning("Skipping %s: the file is empty (no record).", path)
        stats.skipped_files.append((path, "empty"))
        return
    stats.formats[path] = fmt
    stats.files += 1
    if counts.replaced_characters:
        stats.replaced_characters += counts.replaced_characters
        logger.warning(
            "%s: %d undecodable byte sequence(s) replaced with U+FFFD (the file is not valid UTF-8).",
            path,
            counts.replaced_characters,
        )


def iter_documents(
    files: Sequence[str],
    text_format: str = "auto",
    stats: ReadStats | None = None,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> Iterator[list[str]]:
    """Documents of all inputs in order. Raises `CorpusError` at the end if no sentence was found."""
    stats = stats if stats is not None else ReadStats()
    for path in files:
        yield from iter_file_documents(path, text_format, stats, text_field)
    check_not_empty(stats, len(files))


def check_not_empty(stats: ReadStats, num_files: int) -> None:
    """Raises `CorpusError` (naming what was skipped) when reading found no sentence at all."""
    if stats.sentences == 0:
        skipped = "; ".join(f"{p} ({why})" for p, why in stats.skipped_files) or "none"
        raise CorpusError(
            f"The corpus is empty: {num_files} input file(s) gave no sentence (skipped: {skipped}). "
            "Point --input_files at UTF-8 text files, or at JSON Lines (*.jsonl, .gz, .zst), Parquet (*.parquet) or "
            "save_to_disk folders, which are recognized by name."
        )
