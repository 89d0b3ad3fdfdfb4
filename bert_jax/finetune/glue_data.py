"""GLUE: readers for the benchmark's TSV files and fixed-shape sentence(-pair) classification features.

Each task's layout is the one GLUE's download script produces (and the original BERT `run_classifier.py`
reads): a folder per task (`CoLA/`, `SST-2/`, `MRPC/`, `STS-B/`, `QQP/`, `MNLI/`, `QNLI/`, `RTE/`, `WNLI/`) with
`train.tsv`, `dev.tsv` and `test.tsv` (MNLI: `dev_matched.tsv`, `dev_mismatched.tsv`, `test_matched.tsv`,
`test_mismatched.tsv`). `GLUE_TASKS` records, per task, which columns hold text_a, text_b and the label and
the label set (None for STS-B, a regression on [0, 5]).

Reading rules, all deliberate:
  * Tab-separated, quoting disabled (`csv.QUOTE_NONE`): GLUE's texts contain unbalanced `"` that a quoting
    reader would swallow across lines. A UTF-8 byte-order mark (MRPC) is dropped.
  * Columns are found by header name where the file has a header, so MNLI's train and dev files (12 and 16
    columns) both work; CoLA's train/dev files have no header and are read by position (4 columns).
  * Every row must have as many fields as the header (or 4 for CoLA); a label must be in the task's label
    set (or parse as a finite float for STS-B). Anything else raises `GlueFormatError` naming the file and
    line, since a silently dropped or shifted row changes the dev score. Trailing blank lines are ignored (a
    blank line between rows is an error). QQP's train file has a few broken rows: pass `skip_malformed=True` to
    drop such rows (with a logged count) instead.
  * Test splits have no labels: `Example.label` is None there (the label column is read if present).

`glue_features` turns examples into the model's inputs, like `run_classifier.convert_single_example`:
[CLS] a [SEP] (b [SEP]), token types 0 for [CLS] a [SEP] and 1 for b [SEP], zero padding, attention mask 1 on
real tokens; a pair too long for `max_seq_length` loses tokens from the end of its longer side, one at a time
(`truncate_seq_pair`), a single text from its end.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bert_jax.finetune.metrics import canonical_glue_task
from bert_jax.tokenizers import Tokenizer

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class GlueFormatError(ValueError):
    """A GLUE file that does not have the expected layout; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One GLUE example: `guid` ("<split>-<row index>"), the text(s) and the label (None for test splits).

    `label` is the label string as written in the file (e.g. "entailment", "1"), or a float for STS-B.
    """

    guid: str
    text_a: str
    text_b: str | None = None
    label: str | float | None = None


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's data lives and how its rows read.

    `text_a`, `text_b` and `label` are header names; `headerless` gives, for train/dev files without a header
    (CoLA), the 0-based columns (text_a, text_b or None, label) and the number of fields per row. `labels` is the
    ordered label set (label id = index), None for regression. `splits` maps split name -> file name.
    """

    name: str
    directory: str
    text_a: str
    text_b: str | None
    label: str
    labels: tuple[str, ...] | None
    splits: Mapping[str, str]
    headerless: tuple[int, int | None, int, int] | None = None

    @property
    def is_regression(self) -> bool:
        """True for STS-B: the label is a float score, not a class."""
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression: the model's output width)."""
        return 1 if self.labels is None else len(self.labels)


_STANDARD_SPLITS = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_BINARY = ("0", "1")
_NLI_2 = ("entailment", "not_entailment")
_MNLI = ("contradiction", "entailment", "neutral")  # run_classifier's order

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", "CoLA", "sentence", None, "label", _BINARY, _STANDARD_SPLITS, headerless=(3, None, 1, 4)),
        GlueTask("sst2", "SST-2", "sentence", None, "label", _BINARY, _STANDARD_SPLITS),
        GlueTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BINARY, _STANDARD_SPLITS),
        GlueTask("stsb", "STS-B", "sentence1", "sentence2", "score", None, _STANDARD_SPLITS),
        GlueTask("qqp", "QQP", "question1", "question2", "is_duplicate", _BINARY, _STANDARD_SPLITS),
        GlueTask(
            "mnli",
            "MNLI",
            "sentence1",
            "sentence2",
            "gold_label",
            _MNLI,
            {
                "train": "train.tsv",
                "dev_matched": "dev_matched.tsv",
                "dev_mismatched": "dev_mismatched.tsv",
                "test_matched": "test_matched.tsv",
                "test_mismatched": "test_mismatched.tsv",
            },
        ),
        GlueTask(
            "mnli-m",
            "MNLI",
            "sentence1",
            "sentence2",
            "gold_label",
            _MNLI,
            {"train": "train.tsv", "dev": "dev_matched.tsv", "test": "test_matched.tsv"},
        ),
        GlueTask(
            "mnli-mm",
            "MNLI",
            "sentence1",
            "sentence2",
            "gold_label",
            _MNLI,
            {"train": "train.tsv", "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"},
        ),
        GlueTask("qnli", "QNLI", "question", "sentence", "label", _NLI_2, _STANDARD_SPLITS),
        GlueTask("rte", "RTE", "sentence1", "sentence2", "label", _NLI_2, _STANDARD_SPLITS),
        GlueTask("wnli", "WNLI", "sentence1", "sentence2", "label", _BINARY, _STANDARD_SPLITS),
    )
}


def get_task(task: str | GlueTask) -> GlueTask:
    """The `GlueTask` for a name in any usual spelling ("SST-2", "sst2", "STS-B", "MNLI-MM", ...)."""
    if isinstance(task, GlueTask):
        return task
    name = canonical_glue_task(task)
    if name not in GLUE_TASKS:
        raise ValueError(f"GLUE task {task!r} has no data reader; readable tasks: {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[name]


def _parse_label(task: GlueTask, raw: str, where: str) -> str | float:
    """The label as stored in `Example`: checked against the label set, or a finite float for regression."""
    if task.labels is None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise GlueFormatError(f"{where}: score {raw!r} is not a finite number.")
        return value
    if raw not in task.labels:
        raise GlueFormatError(f"{where}: label {raw!r} is not one of {list(task.labels)}.")
    return raw


def read_glue_tsv(
    path: PathLike, task: str | GlueTask, split: str, skip_malformed: bool = False, with_labels: bool | None = None
) -> list[Example]:
    """The examples of one GLUE TSV file (`split` names the guids and, for CoLA, says whether there is a header).

    `with_labels` defaults to False for splits whose name starts with "test" and True otherwise; when False the
    label column is read if the header has one, else labels are None. `skip_malformed` drops rows with the
    wrong number of fields or a bad label (logging how many) instead of raising `GlueFormatError`.
    """
    task = get_task(task)
    path = pathlib.Path(path)
    if with_labels is None:
        with_labels = not split.startswith("test")
    if not path.is_file():
        raise FileNotFoundError(f"GLUE {task.name} {split} file not found: {path}")
    examples: list[Example] = []
    skipped: list[int] = []
    blank_lines: list[int] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        if task.headerless is not None and not split.startswith("test"):
            a_col, b_col, label_col, num_fields = task.headerless
            label_col = label_col if with_labels else None
        else:
            header = next(_checked_rows(rows, path), None)
            if header is None:
                raise GlueFormatError(f"{path}: the file is empty (expected a header line).")
            a_col, b_col, label_col = (
                _column(header, name, path, required)
                for name, required in ((task.text_a, True), (task.text_b, True), (task.label, with_labels))
            )
            num_fields = len(header)
        for row in _checked_rows(rows, path):
            line = rows.line_num
            if not row or row == [""]:
                blank_lines.append(line)
                continue
            where = f"{path}:{line}"
            try:
                if blank_lines:
                    raise GlueFormatError(f"{path}:{blank_lines[0]}: blank line between rows.")
                if len(row) != num_fields:
                    raise GlueFormatError(f"{where}: expected {num_fields} tab-separated fields, found {len(row)}.")
                label = None if label_col is None else _parse_label(task, row[label_col], where)
            except GlueFormatError:
                if not skip_malformed or blank_lines:
                    raise
                skipped.append(line)
                continue
            text_b = None if b_col is None else row[b_col]
            examples.append(Example(f"{split}-{len(examples) + len(skipped)}", row[a_col], text_b, label))
    if skipped:
        logger.warning("Skipped %d malformed rows of %s (lines %s...).", len(skipped), path, skipped[:5])
    return examples


def _checked_rows(rows: Iterator[list[str]], path: pathlib.Path) -> Iterator[list[str]]:
    """`rows`, turning the csv module's own errors (a NUL byte, a huge field) into `GlueFormatError`s."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise GlueFormatError(f"{path}:{getattr(rows, 'line_num', '?')}: {e}") from None
        yield row


def _column(header: list[str], name: str | None, path: pathlib.Path, required: bool) -> int | None:
    """The index of column `name` in `header` (None for no such column when it is optional or `name` is None)."""
    if name is None:
        return None
    if name in header:
        return header.index(name)
    if not required:
        return None
    raise GlueFormatError(f"{path}:1: the header {header} has no column {name!r}.")


def read_glue_split(
    glue_dir: PathLike, task: str | GlueTask, split: str, skip_malformed: bool = False
) -> list[Example]:
    """The examples of `split` ("train", "dev", "test"; MNLI: "dev_matched", ...) of `task` under `glue_dir`.

    `glue_dir` is the GLUE root, holding one folder per task (`glue_dir/SST-2/dev.tsv`).
    """
    task = get_task(task)
    if split not in task.splits:
        raise ValueError(f"GLUE {task.name} has no split {split!r}; its splits: {', '.join(task.splits)}.")
    path = pathlib.Path(glue_dir) / task.directory / task.splits[split]
    return read_glue_tsv(path, task, split, skip_malformed=skip_malformed)


def truncate_seq_pair(tokens_a: list[int], tokens_b: list[int], max_length: int) -> None:
    """Shortens the pair in place to `max_length` tokens in total, removing from the end of the longer one (b on a tie).

    One token at a time from whichever is longer, like the original: a long premise loses tokens before a short
    hypothesis does, and neither is cut more than needed.
    """
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def glue_features(
    examples: Sequence[Example], tokenizer: Tokenizer, max_seq_length: int, task: str | GlueTask
) -> dict[str, np.ndarray]:
    """Fixed-shape model inputs for `examples`: [CLS] a [SEP] (b [SEP]), padded to `max_seq_length`.

    Returns int32 arrays "input_ids", "attention_mask" (1 on real tokens) and "token_type_ids" (0 for
    [CLS] a [SEP], 1 for b [SEP]), each [N, max_seq_length], and "labels" [N]: int32 class ids (index in
    `task.labels`; -1 where the example has no label) or float32 scores for STS-B (NaN where unlabelled).
    """
    task = get_task(task)
    has_pair = any(e.text_b is not None for e in examples)
    if max_seq_length < (3 if has_pair else 2):
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for text between [CLS] and [SEP].")
    n = len(examples)
    input_ids = np.full((n, max_seq_length), tokenizer.pad_id, dtype=np.int32)
    token_type_ids = np.zeros((n, max_seq_length), dtype=np.int32)
    attention_mask = np.zeros((n, max_seq_length), dtype=np.int32)
    ids_a = tokenizer.encode_batch([e.text_a for e in examples])
    b_texts = [e.text_b for e in examples if e.text_b is not None]
    ids_b = iter(tokenizer.encode_batch(b_texts) if b_texts else [])
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for i, example in enumerate(examples):
        a = list(ids_a[i])
        if example.text_b is not None:
            b = list(next(ids_b))
            truncate_seq_pair(a, b, max_seq_length - 3)
            tokens = [cls, *a, sep, *b, sep]
            first_segment = len(a) + 2
        else:
            del a[max_seq_length - 2 :]
            tokens = [cls, *a, sep]
            first_segment = len(tokens)
        input_ids[i, : len(tokens)] = tokens
        attention_mask[i, : len(tokens)] = 1
        token_type_ids[i, first_segment : len(tokens)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": label_array(examples, task),
    }


def label_array(examples: Sequence[Example], task: str | GlueTask) -> np.ndarray:
    """The examples' labels as the model's targets: int32 class ids (-1: none) or float32 scores (NaN: none)."""
    task = get_task(task)
    if task.labels is None:
        return np.array([math.nan if e.label is None else float(e.label) for e in examples], dtype=np.float32)
    index = {label: i for i, label in enumerate(task.labels)}
    try:
        return np.array([-1 if e.label is None else index[str(e.label)] for e in examples], dtype=np.int32)
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} is not one of the {task.name} labels {list(task.labels)}.") from None
