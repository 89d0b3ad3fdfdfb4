"""CoNLL-2003 named-entity recognition: the column-format reader and token-classification features.

File format (the shared task's `eng.train` / `eng.testa` / `eng.testb`, as usually distributed): one token
per line with four space-separated columns `word POS chunk NER`, a blank line after each sentence, and a
`-DOCSTART- -X- -X- O` line (followed by a blank line) at the start of each document. `read_conll` returns the
sentences (document markers are not sentences; each sentence remembers its document's index).

Features follow the usual BERT recipe for tagging (the BERT paper's CoNLL-2003 setup): each word is split into
WordPiece pieces on its own, the word's tag is the label of its FIRST piece, and every other position (later
pieces of a word, [CLS], [SEP], padding) has label -1, which the loss must ignore. A sentence longer than
`max_seq_length - 2` pieces is truncated; its words that lose their first piece get no position (-1) and are
predicted "O" by `tags_from_token_predictions`, so truncation costs recall instead of silently vanishing from
the evaluation. A word that tokenizes to nothing (only characters the tokenizer deletes) becomes one [UNK]
piece so that every word keeps a position.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from bert_jax.tokenizers import Tokenizer

PathLike = str | os.PathLike[str]

# The CoNLL-2003 tag set in IOB2 form; a label id is the index here.
CONLL2003_LABELS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC")
IGNORE_LABEL = -1  # the label of positions that carry no tag (the loss masks them out)
DOCSTART = "-DOCSTART-"
_COLUMNS = 4


class ConllFormatError(ValueError):
    """A CoNLL file line that does not have the expected columns; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class NerSentence:
    """One sentence: its words and NER tags (empty when unlabelled), POS and chunk tags, and document index."""

    words: tuple[str, ...]
    tags: tuple[str, ...] = ()
    pos: tuple[str, ...] = ()
    chunks: tuple[str, ...] = ()
    document: int = 0

    def __post_init__(self) -> None:
        for name in ("tags", "pos", "chunks"):
            column = getattr(self, name)
            if column and len(column) != len(self.words):
                raise ValueError(f"a sentence with {len(self.words)} words has {len(column)} {name}.")


def read_conll(path: PathLike) -> list[NerSentence]:
    """The sentences of a CoNLL-2003 file (four columns `word POS chunk NER`; see the module docstring).

    Raises `ConllFormatError` (file and line) for a line without exactly four columns. A file that does not end
    with a blank line still yields its last sentence; a -DOCSTART- line right after a token closes that sentence.
    """
    path = pathlib.Path(path)
    sentences: list[NerSentence] = []
    rows: list[list[str]] = []
    document = -1  # becomes 0 at the first -DOCSTART- (or stays 0 for files without any)

    def flush() -> None:
        if rows:
            words, pos, chunks, tags = (tuple(column) for column in zip(*rows, strict=True))
            sentences.append(NerSentence(words, tags, pos, chunks, max(document, 0)))
            rows.clear()

    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                flush()
                continue
            if fields[0] == DOCSTART:
                flush()
                document += 1
                continue
            if len(fields) != _COLUMNS:
                raise ConllFormatError(
                    f"{path}:{number}: expected {_COLUMNS} space-separated columns (word POS chunk NER), "
                    f"found {len(fields)}: {line.rstrip()!r}"
                )
            rows.append(fields)
    flush()
    return sentences


@dataclasses.dataclass
class NerFeatures:
    """Token-classification inputs for a list of sentences, one row per sentence.

    `input_ids`, `attention_mask`, `token_type_ids` (all zero) and `labels` (label id on each word's first
    piece, -1 elsewhere) are int32 [N, max_seq_length]. `word_positions[i][j]` is the position of word j's first
    piece in row i, -1 when truncation removed it. `num_truncated_words` counts those words.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    word_positions: list[np.ndarray]
    num_truncated_words: int

    def as_model_inputs(self) -> dict[str, np.ndarray]:
        """The arrays a model and loss consume, by name."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
            "labels": self.labels,
        }


def ner_features(
    sentences: Sequence[NerSentence],
    tokenizer: Tokenizer,
    max_seq_length: int,
    labels: Sequence[str] = CONLL2003_LABELS,
) -> NerFeatures:
    """[CLS] pieces [SEP] per sentence, padded to `max_seq_length`, labels on first pieces (module docstring).

    Sentences without tags get -1 everywhere. A tag outside `labels` raises ValueError naming the sentence.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for a word between [CLS] and [SEP].")
    label_ids = {label: i for i, label in enumerate(labels)}
    n = len(sentences)
    input_ids = np.full((n, max_seq_length), tokenizer.pad_id, dtype=np.int32)
    attention_mask = np.zeros((n, max_seq_length), dtype=np.int32)
    label_array = np.full((n, max_seq_length), IGNORE_LABEL, dtype=np.int32)
    all_words = [word for sentence in sentences for word in sentence.words]
    word_pieces = iter(tokenizer.encode_batch(all_words) if all_words else [])
    word_positions: list[np.ndarray] = []
    truncated = 0
    room = max_seq_length - 2
    for i, sentence in enumerate(sentences):
        tokens = [tokenizer.cls_id]
        positions = np.full(len(sentence.words), -1, dtype=np.int32)
        for j in range(len(sentence.words)):
            pieces = next(word_pieces) or [tokenizer.unk_id]
            label = IGNORE_LABEL
            if sentence.tags:
                tag = sentence.tags[j]
                if tag not in label_ids:
                    raise ValueError(f"sentence {i}, word {j} ({sentence.words[j]!r}): tag {tag!r} is not in {labels}.")
                label = label_ids[tag]
            if len(tokens) - 1 >= room:
                truncated += 1
                continue
            positions[j] = len(tokens)
            label_array[i, len(tokens)] = label
            tokens.extend(pieces[: room - (len(tokens) - 1)])
        tokens.append(tokenizer.sep_id)
        input_ids[i, : len(tokens)] = tokens
        attention_mask[i, : len(tokens)] = 1
        word_positions.append(positions)
    return NerFeatures(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=np.zeros((n, max_seq_length), dtype=np.int32),
        labels=label_array,
        word_positions=word_positions,
        num_truncated_words=truncated,
    )


def tags_from_token_predictions(
    predictions: np.ndarray, features: NerFeatures, labels: Sequence[str] = CONLL2003_LABELS
) -> list[list[str]]:
    """Per-word tags from per-token predictions: each word takes the prediction at its first piece.

    `predictions` is [N, max_seq_length] label ids, or [N, max_seq_length, num_labels] scores (argmax taken).
    Words removed by truncation get "O". The result lines up with the sentences' words, ready for
    `metrics.ner_metrics`.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim == 3:
        predictions = predictions.argmax(axis=-1)
    if predictions.shape != features.input_ids.shape:
        raise ValueError(f"predictions have shape {predictions.shape}, the features {features.input_ids.shape}.")
    sentences = []
    for row, positions in zip(predictions, features.word_positions, strict=True):
        kept = positions >= 0
        ids = np.zeros(len(positions), dtype=np.int64)
        ids[kept] = row[positions[kept]]
        tags = [labels[k] for k in ids]
        for j in np.flatnonzero(~kept):
            tags[j] = "O"
        sentences.append(tags)
    return sentences
