"""Evaluation metrics for fine-tuning: GLUE, SQuAD (v1.1 and v2.0) and entity-level NER.

Everything is plain numpy/Python, so evaluation does not pull in scikit-learn or scipy; the tests check each
function against those libraries (and against hand-worked cases) instead.

Classification and regression (`accuracy`, `f1_binary`, `matthews_corrcoef`, `pearson`, `spearman`) follow
scikit-learn's and scipy's definitions, including their degenerate cases:

  * F1 with no positive prediction and no positive label is 0.0 (scikit-learn's zero_division default).
  * Matthews correlation is 0.0 when a row or column of the confusion matrix is all zero, e.g. when every
    prediction is the same class (scikit-learn does the same); it works for any number of classes (Gorodkin's
    R_K statistic), which reduces to the binary formula for two.
  * Pearson and Spearman are NaN when either input is constant (no variance: the correlation is undefined),
    as in scipy. A GLUE STS-B run that predicts one value for everything therefore reports NaN, which is
    more honest than a made-up 0.

`glue_metrics(task, predictions, labels)` returns the metrics GLUE reports for each task, as fractions in [0, 1]
(multiply by 100 for the leaderboard's percent).

SQuAD: `squad_evaluate` reproduces the official evaluation scripts. Answers are normalized the official way
(lowercase, drop ASCII punctuation, drop the articles "a", "an", "the" as whole words, collapse whitespace);
exact match and token F1 are the maximum over a question's gold answers; the averages are in percent. The
v2.0 rules differ only for empty answers: gold answers that normalize to "" are dropped, a question left
without gold answers (unanswerable) has the single gold answer "", and an empty prediction then scores 1 for
both EM and F1 (under v1.1 the F1 of two empty strings is 0). v2.0 results also break the scores down into
answerable (HasAns) and unanswerable (NoAns) questions. A question without a prediction scores 0 (v1.1's rule;
the v2.0 script skips it instead, which inflates the average).

NER: `ner_metrics` scores entities, not tokens, like conlleval and seqeval: an entity is (type, start, end) in one
sentence, and a predicted entity counts only when type and both boundaries match a gold one. Inputs are lists
of sentences, so no entity can run from the end of one sentence into the next. See `get_entities` for how a tag
sequence is read.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import pathlib
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

ArrayLike = Sequence[Any] | np.ndarray

# ----------------------------------------------------------------------------------------------------------
# Classification and regression.
# ----------------------------------------------------------------------------------------------------------


def _paired(predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D arrays of the same, non-zero length (a clear error otherwise)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(f"predictions and labels must be 1-D, got shapes {p.shape} and {y.shape}.")
    if p.shape != y.shape:
        raise ValueError(f"predictions ({p.shape[0]}) and labels ({y.shape[0]}) differ in length.")
    if p.size == 0:
        raise ValueError("no predictions to score (empty inputs).")
    return p, y


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """The fraction of predictions equal to their label."""
    p, y = _paired(predictions, labels)
    return float(np.mean(p == y))


def f1_binary(predictions: ArrayLike, labels: ArrayLike, positive: Any = 1) -> float:
    """F1 of the positive class (`positive`, 1 by default): 2·TP / (2·TP + FP + FN).

    0.0 when there is neither a positive prediction nor a positive label (the ratio is 0/0), as scikit-learn.
    """
    p, y = _paired(predictions, labels)
    tp = np.sum((p == positive) & (y == positive))
    fp = np.sum((p == positive) & (y != positive))
    fn = np.sum((p != positive) & (y == positive))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient (multiclass R_K; the usual phi coefficient for two classes).

    In [-1, 1]; 0.0 when undefined (all predictions, or all labels, in one class), as scikit-learn.
    """
    p, y = _paired(predictions, labels)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    true_codes, pred_codes = codes[: len(y)], codes[len(y) :]
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (true_codes, pred_codes), 1.0)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    n = float(len(y))
    correct = float(np.trace(confusion))
    cov_true_pred = correct * n - float(true_counts @ pred_counts)
    cov_pred_pred = n * n - float(pred_counts @ pred_counts)
    cov_true_true = n * n - float(true_counts @ true_counts)
    if cov_pred_pred == 0.0 or cov_true_true == 0.0:
        return 0.0
    return float(cov_true_pred / math.sqrt(cov_true_true * cov_pred_pred))


def _finite_pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Two float64 vectors of equal length >= 2 without NaN or infinity (correlations need at least two points)."""
    a, b = _paired(x, y)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.size < 2:
        raise ValueError("a correlation needs at least two points.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("correlation inputs contain NaN or infinity.")
    return a, b


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two validated vectors; NaN if either is constant."""
    if np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    # Scale first so the sums of squares cannot overflow for huge values.
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.clip(a @ b, -1.0, 1.0))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation coefficient; NaN when either input is constant (undefined, as in scipy)."""
    return _pearson(*_finite_pair(x, y))


def rank_average(x: ArrayLike) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the mean of the ranks they span (scipy's method="average")."""
    values = np.asarray(x)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(new_group) - 1  # group index of each sorted position
    starts = np.flatnonzero(new_group)
    ends = np.concatenate([starts[1:], [len(values)]])  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation: Pearson's r of the average ranks (ties share a rank); NaN if either input is constant."""
    a, b = _finite_pair(x, y)
    return _pearson(rank_average(a), rank_average(b))


# Canonical GLUE task names and the metrics the GLUE benchmark reports for each.
_GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_corrcoef",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "mnli-m": ("accuracy",),
    "mnli-mm": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "ax": ("matthews_corrcoef",),
}
_GLUE_ALIASES = {
    "sst": "sst2",
    "sts": "stsb",
    "mnlim": "mnli-m",
    "mnlimatched": "mnli-m",
    "mnlimm": "mnli-mm",
    "mnlimismatched": "mnli-mm",
}


def canonical_glue_task(task: str) -> str:
    """The canonical name of a GLUE task ("CoLA", "SST-2", "sts_b", "MNLI-MM", "mnli_mismatched", ...)."""
    key = re.sub(r"[-_\s]", "", task.lower())
    key = _GLUE_ALIASES.get(key, key)
    if key not in _GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {', '.join(_GLUE_METRICS)}.")
    return key


def glue_metrics(task: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """GLUE's standard metrics for `task`, as fractions in [0, 1] (correlations in [-1, 1]).

    cola (and the ax diagnostic): {"matthews_corrcoef"}; sst2, mnli, mnli-m, mnli-mm, qnli, rte, wnli:
    {"accuracy"}; mrpc, qqp: {"accuracy", "f1"} (F1 of class 1, the paraphrase / duplicate class); stsb:
    {"pearson", "spearmanr"} on the regression outputs. Classification predictions are class ids (the argmax).
    """
    name = canonical_glue_task(task)
    compute = {
        "matthews_corrcoef": matthews_corrcoef,
        "accuracy": accuracy,
        "f1": f1_binary,
        "pearson": pearson,
        "spearmanr": spearman,
    }
    return {metric: compute[metric](predictions, labels) for metric in _GLUE_METRICS[name]}


# ----------------------------------------------------------------------------------------------------------
# SQuAD.
# ----------------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official SQuAD answer normalization: lowercase, drop punctuation, drop articles, collapse whitespace.

    Punctuation is ASCII's (`string.punctuation`), so e.g. an en dash stays; "a", "an", "the" go only as whole
    words (regex word boundaries), after punctuation is removed, as in the official script.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 if the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str, *, v2: bool = False) -> float:
    """Token-level F1 between normalized answers (bag-of-words overlap, counting repeats).

    When either side normalizes to nothing: v1.1 rules give 0.0; v2.0 rules (`v2=True`) give 1.0 if both are
    empty (a correct "no answer") and 0.0 otherwise.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    if v2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, gold_answers: Sequence[str], *, v2: bool = False) -> tuple[float, float]:
    """(exact match, F1) of one prediction: each the maximum over the gold answers.

    v2.0 rules: gold answers that normalize to "" are dropped and an unanswerable question (none left) has the
    single gold answer "". Under v1.1 rules a question without gold answers scores (0, 0).
    """
    golds = list(gold_answers)
    if v2:
        golds = [g for g in golds if normalize_answer(g)] or [""]
    if not golds:
        return 0.0, 0.0
    exact = max(squad_exact_match(prediction, g) for g in golds)
    f1 = max(squad_f1(prediction, g, v2=v2) for g in golds)
    return exact, f1


SquadDataset = str | os.PathLike | Mapping[str, Any] | Iterable[Any]


def _questions_from_articles(articles: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[str], bool]]:
    """(id, gold answer texts, is_impossible) of every question in SQuAD-format articles."""
    questions = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                questions.append((str(qa["id"]), answers, bool(qa.get("is_impossible", False))))
    return questions


def _gold_questions(dataset: SquadDataset) -> tuple[list[tuple[str, list[str], bool]], str | None]:
    """The questions of any accepted dataset form, and the JSON's version string if there is one."""
    if isinstance(dataset, str | os.PathLike):
        with pathlib.Path(dataset).open(encoding="utf-8") as f:
            dataset = json.load(f)
    if isinstance(dataset, Mapping):
        if isinstance(dataset.get("data"), list):
            return _questions_from_articles(dataset["data"]), dataset.get("version")
        # qid -> gold answers; an empty list marks an unanswerable question.
        return [(str(qid), list(answers), not answers) for qid, answers in dataset.items()], None
    items = list(dataset)
    if items and isinstance(items[0], Mapping):
        return _questions_from_articles(items), None
    questions = []
    for item in items:
        if not (hasattr(item, "qas_id") and hasattr(item, "answer_texts")):
            raise TypeError(
                "squad_evaluate takes a SQuAD JSON (path, dict or list of articles), a mapping question id -> "
                f"gold answers, or examples with qas_id and answer_texts (e.g. squad_data.SquadExample); got {item!r}."
            )
        texts = list(item.answer_texts)
        questions.append((str(item.qas_id), texts, bool(getattr(item, "is_impossible", not texts))))
    return questions, None


def squad_evaluate(
    dataset: SquadDataset, predictions: Mapping[str, str], version: Literal["1.1", "2.0"] | None = None
) -> dict[str, float]:
    """Official-style SQuAD scores of `predictions` (question id -> answer text) against `dataset`, in percent.

    `dataset` is a path to a SQuAD JSON file, the parsed JSON (with "data"), its list of articles, a mapping
    question id -> gold answer texts, or a sequence of examples with `qas_id` and `answer_texts` (such as
    `squad_data.SquadExample`). Every question of `dataset` counts; one missing from `predictions` scores 0
    (logged); predictions for other ids are ignored.

    `version` picks the rules (see the module docstring); by default v2.0 when the JSON's version says so or
    any question is unanswerable, else v1.1. Returns {"exact_match", "f1"} for v1.1, as the official script;
    v2.0 adds "total" and, for each non-empty group, "HasAns_exact_match", "HasAns_f1", "HasAns_total",
    "NoAns_exact_match", "NoAns_f1", "NoAns_total".
    """
    questions, json_version = _gold_questions(dataset)
    if not questions:
        raise ValueError("the dataset has no questions.")
    if version is None:
        declared_v2 = json_version is not None and str(json_version).lstrip("v").startswith("2")
        version = "2.0" if declared_v2 or any(impossible for _, _, impossible in questions) else "1.1"
    if version not in ("1.1", "2.0"):
        raise ValueError(f"version must be '1.1' or '2.0', got {version!r}.")
    v2 = version == "2.0"
    missing = 0
    groups: dict[str, list[tuple[float, float]]] = {"HasAns": [], "NoAns": []}
    every: list[tuple[float, float]] = []
    for qid, golds, impossible in questions:
        if qid in predictions:
            scores = squad_scores(predictions[qid], golds, v2=v2)
        else:
            missing += 1
            scores = (0.0, 0.0)
        every.append(scores)
        has_answer = bool(golds) and not impossible
        groups["HasAns" if has_answer else "NoAns"].append(scores)
    if missing:
        logger.warning("%d of %d questions have no prediction; they score 0.", missing, len(questions))

    def percent(scores: list[tuple[float, float]]) -> tuple[float, float]:
        exact = 100.0 * sum(e for e, _ in scores) / len(scores)
        f1 = 100.0 * sum(f for _, f in scores) / len(scores)
        return exact, f1

    exact, f1 = percent(every)
    result = {"exact_match": exact, "f1": f1}
    if v2:
        result["total"] = float(len(every))
        for name, scores in groups.items():
            if scores:
                group_exact, group_f1 = percent(scores)
                result.update(
                    {
                        f"{name}_exact_match": group_exact,
                        f"{name}_f1": group_f1,
                        f"{name}_total": float(len(scores)),
                    }
                )
    return result


# ----------------------------------------------------------------------------------------------------------
# Named-entity recognition (entity level).
# ----------------------------------------------------------------------------------------------------------

Entity = tuple[str, int, int]  # (type, start, end): tokens start .. end-1 of one sentence
TagScheme = Literal["IOB1", "IOB2"]


def _split_tag(tag: str) -> tuple[str, str]:
    """("O", "") or (prefix, type) for "B-TYPE" / "I-TYPE"; anything else is an error."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not 'O', 'B-<type>' or 'I-<type>' (IOB1/IOB2 tags).")


def get_entities(tags: Sequence[str], scheme: TagScheme = "IOB2", strict: bool = False) -> list[Entity]:
    """The entities (type, start, end-exclusive) of one sentence's tag sequence, in order.

    Default (conlleval's reading, also seqeval's default mode): an entity is a maximal run of tokens of one
    type; a B- tag always starts a new entity, and an I- tag starts one when it follows O or a token of
    another type. This reads proper IOB1 (where I- opens an entity and B- only separates two adjacent
    entities of the same type) and proper IOB2 (every entity opens with B-) correctly, and reads ill-formed
    IOB2 from a model (an I- after O) the way conlleval and the published CoNLL-2003 scores do, so the
    result does not depend on `scheme` unless `strict`.

    `strict=True` (IOB2 only, like seqeval's strict mode): only B- opens an entity; an I- that does not
    continue an entity of its own type belongs to no entity, and neither do the I- tokens after it until the
    next B-. Raises ValueError for a tag that is neither O nor B-/I-<type>, or for strict IOB1.
    """
    if scheme not in ("IOB1", "IOB2"):
        raise ValueError(f"scheme must be 'IOB1' or 'IOB2', got {scheme!r}.")
    if strict and scheme != "IOB2":
        raise ValueError("strict mode applies to IOB2 only: every IOB1 sequence already has one reading.")
    if isinstance(tags, str):
        raise TypeError("get_entities takes one sentence's tags as a sequence of strings, not one string.")
    entities: list[Entity] = []
    current: tuple[str, int] | None = None  # (type, start) of the open entity
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag)
        continues = prefix == "I" and current is not None and current[0] == kind
        if continues:
            continue
        if current is not None:
            entities.append((current[0], current[1], i))
            current = None
        if prefix == "B" or (prefix == "I" and not strict):
            current = (kind, i)
    if current is not None:
        entities.append((current[0], current[1], len(tags)))
    return entities


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; each 0.0 where its denominator is 0."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _check_sentences(sentences: Sequence[Sequence[str]], name: str) -> None:
    """Rejects a flat tag list where a list of sentences belongs (it would be scored character by character)."""
    if isinstance(sentences, str) or (len(sentences) and isinstance(sentences[0], str)):
        raise TypeError(f"{name} must be a list of sentences (each a list of tags), not one flat list of tags.")


def ner_metrics(
    true_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    scheme: TagScheme = "IOB2",
    strict: bool = False,
) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1 (conlleval semantics) over sentences of gold and predicted tags.

    `true_tags[i]` and `pred_tags[i]` are the tags of sentence i and must have the same length; entities are read
    per sentence with `get_entities(tags, scheme, strict)`, so none crosses a sentence boundary. A predicted
    entity is correct when its type, start and end all equal a gold entity's. Returns floats in [0, 1]:
    {"precision", "recall", "f1", "accuracy" (token-level tag accuracy), "num_gold", "num_pred", "num_correct",
    "per_type": {type: {"precision", "recall", "f1", "support" (gold count)}}}.
    """
    _check_sentences(true_tags, "true_tags")
    _check_sentences(pred_tags, "pred_tags")
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} gold sentences but {len(pred_tags)} predicted ones.")
    gold_counts: collections.Counter[str] = collections.Counter()
    pred_counts: collections.Counter[str] = collections.Counter()
    correct_counts: collections.Counter[str] = collections.Counter()
    tokens = matching_tokens = 0
    for index, (gold, pred) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(gold) != len(pred):
            raise ValueError(f"sentence {index}: {len(gold)} gold tags but {len(pred)} predicted tags.")
        gold_entities = set(get_entities(gold, scheme, strict))
        pred_entities = set(get_entities(pred, scheme, strict))
        gold_counts.update(kind for kind, _, _ in gold_entities)
        pred_counts.update(kind for kind, _, _ in pred_entities)
        correct_counts.update(kind for kind, _, _ in gold_entities & pred_entities)
        tokens += len(gold)
        matching_tokens += sum(g == p for g, p in zip(gold, pred, strict=True))
    if tokens == 0:
        raise ValueError("no tokens to score (no sentences, or only empty ones).")
    num_gold, num_pred, num_correct = (sum(c.values()) for c in (gold_counts, pred_counts, correct_counts))
    precision, recall, f1 = _prf(num_correct, num_pred, num_gold)
    per_type = {}
    for kind in sorted(gold_counts.keys() | pred_counts.keys()):
        p, r, f = _prf(correct_counts[kind], pred_counts[kind], gold_counts[kind])
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "support": gold_counts[kind]}
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": matching_tokens / tokens,
        "num_gold": num_gold,
        "num_pred": num_pred,
        "num_correct": num_correct,
        "per_type": per_type,
    }
