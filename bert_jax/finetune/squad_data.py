"""SQuAD v1.1 / v2.0: the JSON reader, a by-article split, windowed features and n-best answer decoding.

The feature and decoding semantics are those of the original BERT `run_squad.py`:

  * The context is split into words on whitespace (space, tab, CR, LF, U+202F), each word into WordPiece
    pieces; the question's pieces are cut to `max_query_length`.
  * A feature is [CLS] question [SEP] window [SEP] with token types 0 / 1. A context longer than
    `max_seq_length - len(question) - 3` pieces is cut into overlapping windows, each starting `doc_stride`
    pieces after the previous one. A piece that lies in several windows has its "max context" in the window
    where min(pieces to its left, pieces to its right) + 0.01 * window length is largest (the first such window
    on a tie); only there may a predicted answer start at it.
  * Training targets: the start/end positions of the answer's pieces when the whole answer lies in the
    window, else 0 ([CLS]); unanswerable (v2.0) questions always point at [CLS].
  * Decoding: for every feature of a question, the `n_best_size` highest start and end logits are paired; a
    pair is a candidate when both lie in the context part of the window, start <= end, the span has at most
    `max_answer_length` pieces and the start has its max context in this window. Candidates are ranked by
    start + end logit and de-duplicated by text. Under v2.0 the null answer (both logits at [CLS]) competes:
    the question is predicted unanswerable when the smallest null score over its features exceeds the best
    span's score by more than `null_score_diff_threshold`.

Deliberate differences:
  * Text mapping. Instead of re-projecting the normalized pieces onto the words (`get_final_text`), every
    piece carries the character span it came from in the context, computed once when the features are built
    by aligning the tokenizer's pieces with the context's characters (lowercasing and accent stripping keep
    that alignment for nearly all text; where it fails, for a word or for a SentencePiece model, the pieces
    fall back to their whole word's span, which is also what `get_final_text` falls back to). An answer is
    then `context[start_char(first piece) : end_char(last piece)]`: the original casing, spacing and
    characters, cut at piece boundaries (so "50" inside "50th" stays "50").
  * The training target is located by characters: the pieces that overlap the annotated answer
    characters. The original locates whole words, then searches them for the answer's pieces
    (`_improve_answer_span`); both land on the same pieces except where the word-level search fails.
  * An answer is usable as a target when the context at `answer_start` spells it (ignoring whitespace
    differences); the first usable answer of a question is its target. The original keeps only training
    questions whose (single) answer passes a looser word-level check and drops the rest; `read_squad` keeps
    them by default (target None, labelled [CLS]) and drops them with `drop_unlocatable=True`.
  * A question whose context has no pieces still gets one feature (an empty window) and the prediction "";
    with no valid span at all the prediction is "" rather than the original's placeholder "empty".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bert_jax.tokenizers import UNK, Tokenizer, is_cjk, is_control, is_punctuation, is_whitespace

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# The original run_squad's whitespace: where the context splits into words.
SQUAD_WHITESPACE = frozenset(" \t\r\n\u202f")
_WORD_PATTERN = re.compile("[^ \t\r\n\u202f]+")


class SquadFormatError(ValueError):
    """A SQuAD JSON document that lacks a required field; the message says where."""


@dataclasses.dataclass(frozen=True)
class SquadAnswer:
    """A gold answer: its text and the character offset where it starts in the context."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """The character offset just past the answer."""
        return self.start + len(self.text)


@dataclasses.dataclass(frozen=True, eq=False)
class SquadExample:
    """One question with its context, gold answers (none for unanswerable ones) and training target.

    `target` is the first gold answer that the context actually spells at its offset (None when the question
    is unanswerable or no answer is usable). `article_index` is the article's position in the file, which
    `split_by_article` groups by.
    """

    qas_id: str
    question: str
    context: str
    answers: tuple[SquadAnswer, ...]
    is_impossible: bool
    title: str
    article_index: int
    target: SquadAnswer | None

    @property
    def answer_texts(self) -> tuple[str, ...]:
        """The gold answer texts (what `metrics.squad_evaluate` scores against)."""
        return tuple(answer.text for answer in self.answers)


def whitespace_words(context: str) -> tuple[list[str], list[int], list[int]]:
    """The context's words (split on SQuAD's whitespace), each word's start offset, and each char's word.

    `char_to_word[c]` is the index of the word containing character c; a whitespace character maps to the
    word before it (-1 before the first word), as in the original.
    """
    matches = list(_WORD_PATTERN.finditer(context))
    words = [m.group() for m in matches]
    starts = [m.start() for m in matches]
    char_to_word = _word_of(starts, np.arange(len(context))).tolist()
    return words, starts, char_to_word


def _word_of(word_starts: Sequence[int], offsets: np.ndarray) -> np.ndarray:
    """The index of the word containing (or, for whitespace, preceding) each character offset; -1 before the first."""
    return np.searchsorted(np.asarray(word_starts, dtype=np.int64), offsets, side="right").astype(np.int32) - 1


def _answer_is_spelled(context: str, answer: SquadAnswer) -> bool:
    """Whether the context at the answer's offset spells its text, ignoring whitespace differences."""
    if not answer.text.strip() or answer.start < 0 or answer.end > len(context):
        return False
    return context[answer.start : answer.end].split() == answer.text.split()


def _articles(source: PathLike | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The list of articles of a SQuAD JSON path, parsed document or article list."""
    if isinstance(source, str | os.PathLike):
        with pathlib.Path(source).open(encoding="utf-8") as f:
            source = json.load(f)
    if isinstance(source, Mapping):
        if not isinstance(source.get("data"), list):
            raise SquadFormatError('a SQuAD document is an object with a "data" list of articles.')
        return source["data"]
    return list(source)


def read_squad(
    source: PathLike | Mapping[str, Any] | Sequence[Mapping[str, Any]], drop_unlocatable: bool = False
) -> list[SquadExample]:
    """The questions of a SQuAD v1.1 or v2.0 JSON file (path, parsed document or its list of articles).

    v2.0's unanswerable questions (`is_impossible`) keep an empty `answers` (their "plausible_answers" are not
    gold). `drop_unlocatable=True` leaves out answerable questions none of whose answers is spelled in the
    context at its offset (what the original does to training data), logging how many.
    """
    examples: list[SquadExample] = []
    dropped = 0
    for article_index, article in enumerate(_articles(source)):
        title = str(article.get("title", f"article-{article_index}"))
        for paragraph_index, paragraph in enumerate(_field(article, "paragraphs", f"article {article_index}")):
            where = f"article {article_index} ({title}), paragraph {paragraph_index}"
            context = _field(paragraph, "context", where)
            for qa in _field(paragraph, "qas", where):
                qas_id = str(_field(qa, "id", where))
                question = _field(qa, "question", f"{where}, question {qas_id}")
                is_impossible = bool(qa.get("is_impossible", False))
                answers = tuple(
                    SquadAnswer(
                        str(_field(a, "text", f"question {qas_id}")),
                        int(_field(a, "answer_start", f"question {qas_id}")),
                    )
                    for a in ([] if is_impossible else qa.get("answers", []))
                )
                target = next((a for a in answers if _answer_is_spelled(context, a)), None)
                if answers and target is None and drop_unlocatable:
                    dropped += 1
                    continue
                examples.append(
                    SquadExample(qas_id, question, context, answers, is_impossible, title, article_index, target)
                )
    if dropped:
        logger.warning("Dropped %d questions whose answers are not found in the context at their offsets.", dropped)
    return examples


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    """`obj[key]`, or a `SquadFormatError` saying which field is missing where."""
    try:
        return obj[key]
    except (KeyError, TypeError):
        raise SquadFormatError(f"{where}: missing field {key!r}.") from None


def split_by_article(
    examples: Sequence[SquadExample], eval_fraction: float = 0.2, seed: int = 0
) -> tuple[list[SquadExample], list[SquadExample]]:
    """Splits examples into (train, eval) parts by whole articles, so no context is seen in both.

    Deterministic: the distinct `article_index` values, in order, are permuted by
    `numpy.random.default_rng(seed)`, and the first round(eval_fraction * number of articles) of the
    permutation (at least one, and at most all but one, when there are two or more articles) form the eval
    part. Examples keep their order within each part. The same file, fraction and seed always give the same
    split.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    articles = sorted({e.article_index for e in examples})
    if len(articles) < 2:
        raise ValueError(f"need at least two articles to split, got {len(articles)}.")
    num_eval = min(max(round(eval_fraction * len(articles)), 1), len(articles) - 1)
    order = np.random.default_rng(seed).permutation(len(articles))
    eval_articles = {articles[i] for i in order[:num_eval]}
    train = [e for e in examples if e.article_index not in eval_articles]
    evaluation = [e for e in examples if e.article_index in eval_articles]
    return train, evaluation


# ----------------------------------------------------------------------------------------------------------
# Pieces with character spans.
# ----------------------------------------------------------------------------------------------------------

_WORD, _SPACE, _SINGLE = "w", "s", "p"  # kinds of normalized characters: in a word, a separator, a word of its own
_ASCII_KIND = {
    i: (_SPACE if chr(i) in " \t\n\r" else _SINGLE if is_punctuation(chr(i)) else "d" if is_control(chr(i)) else _WORD)
    for i in range(128)
}


@dataclasses.dataclass(frozen=True)
class _NormalizedText:
    """The basic tokenizer's view of a text, one entry per normalized character.

    `chars[k]` is a normalized character, `kinds[k]` its kind (word / separator / single), `origin[k]` the
    index of the original character it came from. `deleted[c]` is True for an original character that
    produced nothing (a control character, or a combining mark removed by accent stripping).
    """

    chars: str
    kinds: str
    origin: Sequence[int]
    deleted: Sequence[bool]


def _normalize(text: str, lowercase: bool) -> _NormalizedText:
    """Character-by-character version of `tokenizers.basic_tokenize`'s normalization, keeping the origins."""
    if text.isascii():
        kinds = text.translate(_ASCII_KIND)
        if "d" not in kinds:
            chars = text.lower() if lowercase else text
            return _NormalizedText(chars, kinds, range(len(text)), [False] * len(text))
    cache = _CHAR_CACHE[lowercase]
    chars, kinds, origin, deleted = [], [], [], []
    for index, char in enumerate(text):
        produced = cache.get(char)
        if produced is None:
            produced = cache[char] = _normalize_char(char, lowercase)
        normalized, kind = produced
        deleted.append(not normalized)
        chars.append(normalized)
        kinds.append(kind)
        origin.extend([index] * len(normalized))
    return _NormalizedText("".join(chars), "".join(kinds), origin, deleted)


# Each character's (normalized chars, kinds), per casing mode; bounded by the number of distinct characters seen.
_CHAR_CACHE: dict[bool, dict[str, tuple[str, str]]] = {True: {}, False: {}}


def _normalize_char(char: str, lowercase: bool) -> tuple[str, str]:
    """What one original character becomes: its normalized characters and their kinds ("" if it is deleted)."""
    if is_control(char):
        return "", ""
    if is_whitespace(char):
        return " ", _SPACE
    if is_cjk(ord(char)):
        return char, _SINGLE
    if lowercase:
        char = "".join(c for c in unicodedata.normalize("NFD", char.lower()) if unicodedata.category(c) != "Mn")
    kinds = "".join(_SINGLE if is_punctuation(c) else _SPACE if c.isspace() else _WORD for c in char)
    return "".join(" " if c.isspace() else c for c in char), kinds


def _align_pieces(text: str, pieces: Sequence[str], lowercase: bool) -> list[tuple[int, int]] | None:
    """The character span in `text` of each WordPiece piece of `text`, or None if they cannot be aligned.

    Pieces are matched in order against the normalized characters: "##" marks a continuation, [UNK] covers one
    whole basic-tokenizer word (a run of word characters, or one single character). A span runs from the
    original character of its first normalized character to just past the original character of its last,
    extended over the combining marks that accent stripping deleted after it (so an accent stays with its
    letter); other deleted characters (controls, zero-width spaces) belong to no piece.
    """
    norm = _normalize(text, lowercase)
    chars, kinds, origin, deleted = norm.chars, norm.kinds, norm.origin, norm.deleted
    n = len(chars)
    spans: list[tuple[int, int]] = []
    position = 0
    for piece in pieces:
        while position < n and kinds[position] == _SPACE:
            position += 1
        if position >= n:
            return None
        if piece == UNK:
            end = position + 1
            if kinds[position] == _WORD:
                while end < n and kinds[end] == _WORD:
                    end += 1
        else:
            body = piece[2:] if len(piece) > 2 and piece.startswith("##") else piece
            end = position + len(body)
            if chars[position:end] != body:
                return None
        start_char = origin[position]
        end_char = origin[end - 1] + 1
        while end_char < len(text) and deleted[end_char] and unicodedata.category(text[end_char]) == "Mn":
            end_char += 1
        spans.append((start_char, end_char))
        position = end
    if kinds[position:].strip(_SPACE):
        return None
    return spans


@dataclasses.dataclass(frozen=True)
class _TokenizedContext:
    """A context's pieces: ids, whitespace-word index and character span [start, end) of each."""

    ids: np.ndarray
    word: np.ndarray
    char_start: np.ndarray
    char_end: np.ndarray


def _tokenize_contexts(contexts: Sequence[str], tokenizer: Tokenizer) -> list[_TokenizedContext]:
    """Pieces with character spans for each context (see the module docstring for the alignment).

    The context is tokenized in one go, which gives the same pieces as tokenizing each whitespace word (the
    basic tokenizer splits at all of SQuAD's whitespace too). If the pieces do not align with the characters
    (rare Unicode, SentencePiece), the context is redone word by word and each word that still does not align
    gives all its pieces the whole word's span.
    """
    lowercase = bool(getattr(tokenizer, "lowercase", True))
    out = []
    for context, ids in zip(contexts, tokenizer.encode_batch(contexts), strict=True):
        spans = _align_pieces(context, tokenizer.convert_ids_to_tokens(ids), lowercase)
        if spans is None:
            ids, spans = _tokenize_by_word(context, tokenizer, lowercase)
        starts = np.asarray([s for s, _ in spans], dtype=np.int32)
        word_starts = [m.start() for m in _WORD_PATTERN.finditer(context)]
        out.append(
            _TokenizedContext(
                ids=np.asarray(ids, dtype=np.int32),
                word=_word_of(word_starts, starts),
                char_start=starts,
                char_end=np.asarray([e for _, e in spans], dtype=np.int32),
            )
        )
    return out


def _tokenize_by_word(context: str, tokenizer: Tokenizer, lowercase: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """The original's word-by-word tokenization, with piece spans aligned per word (whole word on failure)."""
    words, starts, _ = whitespace_words(context)
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for word, start, word_ids in zip(words, starts, tokenizer.encode_batch(words) if words else [], strict=True):
        word_spans = _align_pieces(word, tokenizer.convert_ids_to_tokens(word_ids), lowercase)
        if word_spans is None:
            word_spans = [(0, len(word))] * len(word_ids)
        ids.extend(word_ids)
        spans.extend((start + s, start + e) for s, e in word_spans)
    return ids, spans


# ----------------------------------------------------------------------------------------------------------
# Features.
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadFeatures:
    """Windowed question-answering features; row i is one window of example `example_index[i]`.

    Model inputs, int32 [N, max_seq_length]: `input_ids`, `attention_mask`, `token_type_ids`. Targets, int32
    [N]: `start_positions`, `end_positions` (0 = [CLS]: no answer in this window, or none at all);
    `answer_in_window` [N] says which rows have a real span. Decoding metadata, [N, max_seq_length]:
    `token_to_word` (the context word of each context piece, -1 elsewhere), `token_char_start` /
    `token_char_end` (its character span in the example's context, -1 elsewhere) and `token_is_max_context`.
    `window_index` [N] numbers an example's windows from 0.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    answer_in_window: np.ndarray
    example_index: np.ndarray
    window_index: np.ndarray
    token_to_word: np.ndarray
    token_char_start: np.ndarray
    token_char_end: np.ndarray
    token_is_max_context: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def as_model_inputs(self, with_targets: bool = True) -> dict[str, np.ndarray]:
        """The arrays a model (and, `with_targets`, its loss) consumes, by name."""
        inputs = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }
        if with_targets:
            inputs |= {"start_positions": self.start_positions, "end_positions": self.end_positions}
        return inputs


def doc_windows(num_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of the windows over `num_tokens` context pieces, as the original slides them.

    Each window takes up to `max_tokens` pieces; the next starts min(length, doc_stride) pieces later; the last
    one reaches the end. An empty context gives one empty window.
    """
    if max_tokens < 1 or doc_stride < 1:
        raise ValueError(f"max_tokens ({max_tokens}) and doc_stride ({doc_stride}) must be positive.")
    windows = []
    start = 0
    while True:
        length = min(num_tokens - start, max_tokens)
        windows.append((start, length))
        if start + length >= num_tokens:
            return windows
        start += min(length, doc_stride)


def _max_context_window(windows: Sequence[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """For each context piece, the window where it has the most context (first on a tie), as the original."""
    positions = np.arange(num_tokens)
    best_score = np.full(num_tokens, -np.inf)
    best_window = np.zeros(num_tokens, dtype=np.int64)
    for w, (start, length) in enumerate(windows):
        end = start + length - 1
        inside = (positions >= start) & (positions <= end)
        score = np.minimum(positions - start, end - positions) + 0.01 * length
        better = inside & (score > best_score)
        best_score[better] = score[better]
        best_window[better] = w
    return best_window


def squad_features(
    examples: Sequence[SquadExample],
    tokenizer: Tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> SquadFeatures:
    """The windowed features of `examples` (module docstring); every example gets at least one row.

    Targets are filled for every example with a `target` answer, so the same features serve training and
    evaluation; the loss should use them only for training data.
    """
    if max_query_length < 0:
        raise ValueError(f"max_query_length must be >= 0, got {max_query_length}.")
    contexts = list(dict.fromkeys(e.context for e in examples))
    tokenized = dict(zip(contexts, _tokenize_contexts(contexts, tokenizer), strict=True))
    questions = tokenizer.encode_batch([e.question for e in examples]) if examples else []
    columns: dict[str, list[Any]] = {f.name: [] for f in dataclasses.fields(SquadFeatures)}
    for example_index, (example, question) in enumerate(zip(examples, questions, strict=True)):
        context = tokenized[example.context]
        query = list(question[:max_query_length])
        offset = len(query) + 2  # where the window's first piece sits: after [CLS] query [SEP]
        if max_seq_length - offset - 1 < 1:
            raise ValueError(
                f"max_seq_length={max_seq_length} leaves no room for context after question {example.qas_id!r} "
                f"({len(query)} pieces) and [CLS] [SEP] [SEP]; raise it or lower max_query_length."
            )
        num_tokens = len(context.ids)
        windows = doc_windows(num_tokens, max_seq_length - len(query) - 3, doc_stride)
        best_window = _max_context_window(windows, num_tokens)
        target = _target_pieces(context, example.target)
        for window_index, (start, length) in enumerate(windows):
            row = _window_row(context, query, start, length, max_seq_length, tokenizer)
            row["token_is_max_context"][offset : offset + length] = best_window[start : start + length] == window_index
            in_window = target is not None and start <= target[0] and target[1] < start + length
            row["start_positions"] = target[0] - start + offset if in_window else 0
            row["end_positions"] = target[1] - start + offset if in_window else 0
            row["answer_in_window"] = in_window
            row["example_index"] = example_index
            row["window_index"] = window_index
            for name, value in row.items():
                columns[name].append(value)
    return _stack(columns, max_seq_length)


def _target_pieces(context: _TokenizedContext, answer: SquadAnswer | None) -> tuple[int, int] | None:
    """First and last context piece overlapping the answer's characters (None: no answer or no such piece)."""
    if answer is None:
        return None
    overlapping = np.flatnonzero((context.char_start < answer.end) & (context.char_end > answer.start))
    if overlapping.size == 0:
        return None
    return int(overlapping[0]), int(overlapping[-1])


def _window_row(
    context: _TokenizedContext, query: list[int], start: int, length: int, max_seq_length: int, tokenizer: Tokenizer
) -> dict[str, Any]:
    """The sequence-shaped arrays of one window (targets and indices are filled in by the caller)."""
    offset = len(query) + 2
    end = offset + length
    window = slice(start, start + length)
    input_ids = np.full(max_seq_length, tokenizer.pad_id, dtype=np.int32)
    input_ids[:offset] = [tokenizer.cls_id, *query, tokenizer.sep_id]
    input_ids[offset:end] = context.ids[window]
    input_ids[end] = tokenizer.sep_id
    attention_mask = np.zeros(max_seq_length, dtype=np.int32)
    attention_mask[: end + 1] = 1
    token_type_ids = np.zeros(max_seq_length, dtype=np.int32)
    token_type_ids[offset : end + 1] = 1
    token_to_word, char_start, char_end = (np.full(max_seq_length, -1, dtype=np.int32) for _ in range(3))
    token_to_word[offset:end] = context.word[window]
    char_start[offset:end] = context.char_start[window]
    char_end[offset:end] = context.char_end[window]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "token_to_word": token_to_word,
        "token_char_start": char_start,
        "token_char_end": char_end,
        "token_is_max_context": np.zeros(max_seq_length, dtype=bool),
    }


_PER_ROW = ("start_positions", "end_positions", "answer_in_window", "example_index", "window_index")
_BOOLEAN = ("answer_in_window", "token_is_max_context")


def _stack(columns: dict[str, list[Any]], max_seq_length: int) -> SquadFeatures:
    """`SquadFeatures` from per-row values (empty arrays of the right shapes when there are no rows)."""
    arrays = {}
    for name, values in columns.items():
        dtype = bool if name in _BOOLEAN else np.int32
        shape = (len(values),) if name in _PER_ROW else (len(values), max_seq_length)
        arrays[name] = np.asarray(values, dtype=dtype).reshape(shape)
    return SquadFeatures(**arrays)


# ----------------------------------------------------------------------------------------------------------
# Decoding.
# ----------------------------------------------------------------------------------------------------------


def decode_span(examples: Sequence[SquadExample], features: SquadFeatures, row: int, start: int, end: int) -> str:
    """The context text of pieces `start..end` (inclusive sequence positions) of feature row `row`.

    Both must be context pieces of that window and start <= end; the text is the original context from the
    first piece's first character to the last piece's last one.
    """
    first, last = int(features.token_char_start[row, start]), int(features.token_char_end[row, end])
    if first < 0 or last < 0 or end < start:
        raise ValueError(f"positions {start}..{end} of feature {row} are not a span of context pieces.")
    return examples[int(features.example_index[row])].context[first:last]


@dataclasses.dataclass
class SquadPredictions:
    """Decoded answers: `predictions` (question id -> answer text, "" for unanswerable), `nbest` (question id
    -> ranked candidates, each {"text", "start_logit", "end_logit", "probability"}) and, under v2.0,
    `null_score_diff` (question id -> null score minus best span score; above the threshold means no answer).
    """

    predictions: dict[str, str]
    nbest: dict[str, list[dict[str, Any]]]
    null_score_diff: dict[str, float]


def postprocess_predictions(
    examples: Sequence[SquadExample],
    features: SquadFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> SquadPredictions:
    """Answer texts from per-feature start/end logits ([N, max_seq_length]) by n-best span decoding.

    See the module docstring for the rules. Examples without any feature row are predicted "".
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if start_logits.shape != features.input_ids.shape or end_logits.shape != features.input_ids.shape:
        raise ValueError(
            f"logits of shapes {start_logits.shape} / {end_logits.shape} do not match the features "
            f"{features.input_ids.shape}."
        )
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError("n_best_size and max_answer_length must be positive.")
    rows_of: dict[int, list[int]] = {}
    for row, example_index in enumerate(features.example_index.tolist()):
        rows_of.setdefault(example_index, []).append(row)
    result = SquadPredictions({}, {}, {})
    for example_index, example in enumerate(examples):
        rows = rows_of.get(example_index, [])
        candidates, null = _candidates(features, rows, start_logits, end_logits, n_best_size, max_answer_length)
        if version_2_with_negative and null is not None:
            candidates.append(null)
        candidates.sort(key=lambda c: -(c[3] + c[4]))  # stable: ties keep their collection order
        nbest = _nbest(examples, features, candidates, n_best_size)
        if version_2_with_negative and null is not None and all(entry["text"] for entry in nbest):
            nbest.append(_entry("", null[3], null[4]))
        if not nbest:
            nbest.append(_entry("", 0.0, 0.0))
        scores = np.array([entry["start_logit"] + entry["end_logit"] for entry in nbest])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        for entry, probability in zip(nbest, probabilities, strict=True):
            entry["probability"] = float(probability)
        result.nbest[example.qas_id] = nbest
        if not version_2_with_negative:
            result.predictions[example.qas_id] = nbest[0]["text"]
            continue
        best = next((entry for entry in nbest if entry["text"]), None)
        if best is None or null is None:
            result.predictions[example.qas_id] = "" if best is None else best["text"]
            continue
        diff = null[3] + null[4] - best["start_logit"] - best["end_logit"]
        result.null_score_diff[example.qas_id] = diff
        result.predictions[example.qas_id] = "" if diff > null_score_diff_threshold else best["text"]
    return result


_Candidate = tuple[int, int, int, float, float]  # (feature row, start, end, start logit, end logit)


def _candidates(
    features: SquadFeatures,
    rows: Sequence[int],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> tuple[list[_Candidate], _Candidate | None]:
    """Valid (start, end) pairs from each row's top start and end logits, and the row with the smallest null score."""
    candidates: list[_Candidate] = []
    null: _Candidate | None = None
    for row in rows:
        starts_logit, ends_logit = start_logits[row], end_logits[row]
        null_score = float(starts_logit[0]) + float(ends_logit[0])
        if null is None or null_score < null[3] + null[4]:
            null = (row, 0, 0, float(starts_logit[0]), float(ends_logit[0]))
        top_starts = np.argsort(-starts_logit, kind="stable")[:n_best_size]
        top_ends = np.argsort(-ends_logit, kind="stable")[:n_best_size]
        in_context = features.token_char_start[row] >= 0
        start_ok = in_context[top_starts] & features.token_is_max_context[row][top_starts]
        end_ok = in_context[top_ends]
        lengths = top_ends[None, :] - top_starts[:, None] + 1
        valid = start_ok[:, None] & end_ok[None, :] & (lengths >= 1) & (lengths <= max_answer_length)
        for i, j in zip(*np.nonzero(valid), strict=True):
            start, end = int(top_starts[i]), int(top_ends[j])
            candidates.append((row, start, end, float(starts_logit[start]), float(ends_logit[end])))
    return candidates, null


def _entry(text: str, start_logit: float, end_logit: float) -> dict[str, Any]:
    """One n-best entry (its probability is filled in once the list is complete)."""
    return {"text": text, "start_logit": start_logit, "end_logit": end_logit}


def _nbest(
    examples: Sequence[SquadExample], features: SquadFeatures, candidates: Iterable[_Candidate], n_best_size: int
) -> list[dict[str, Any]]:
    """The first `n_best_size` candidates with distinct texts (the null candidate, start 0, has text "")."""
    nbest: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row, start, end, start_logit, end_logit in candidates:
        if len(nbest) >= n_best_size:
            break
        text = decode_span(examples, features, row, start, end) if start > 0 else ""
        if text in seen:
            continue
        seen.add(text)
        nbest.append(_entry(text, start_logit, end_logit))
    return nbest
