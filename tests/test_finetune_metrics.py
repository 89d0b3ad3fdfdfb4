"""Fine-tuning metrics against independent references.

Classification and correlation metrics are compared with scikit-learn and scipy on random fixtures (ties,
constant inputs, imbalanced and degenerate labels included). SQuAD scoring is checked on hand-worked cases of
the official rules (v1.1 and v2.0). Entity-level NER scores are checked on hand-worked cases and against a
token-by-token port of conlleval's chunk start/end rules written here, on random tag sequences.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from bert_jax.finetune import metrics
from bert_jax.finetune.metrics import (
    accuracy,
    f1_binary,
    get_entities,
    glue_metrics,
    matthews_corrcoef,
    ner_metrics,
    normalize_answer,
    pearson,
    rank_average,
    spearman,
    squad_evaluate,
    squad_exact_match,
    squad_f1,
    squad_scores,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the classification reference")
scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is the correlation reference")


# ----------------------------------------------------------------------------------------------------------
# Classification.
# ----------------------------------------------------------------------------------------------------------


def _label_fixtures() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, predictions, labels): random, imbalanced, tiny and degenerate binary cases."""
    rng = np.random.default_rng(0)
    cases = []
    for n in (1, 2, 7, 100, 5000):
        cases.append((f"random-{n}", rng.integers(0, 2, n), rng.integers(0, 2, n)))
    labels = (rng.random(1000) < 0.1).astype(int)
    noisy = np.where(rng.random(1000) < 0.2, 1 - labels, labels)
    cases.append(("imbalanced-noisy", noisy, labels))
    cases.append(("all-zero-predictions", np.zeros(50, int), rng.integers(0, 2, 50)))
    cases.append(("all-one-predictions", np.ones(50, int), rng.integers(0, 2, 50)))
    cases.append(("no-positives-anywhere", np.zeros(20, int), np.zeros(20, int)))
    cases.append(("perfect", labels, labels))
    cases.append(("all-wrong", 1 - labels, labels))
    return cases


@pytest.mark.parametrize(
    ("name", "predictions", "labels"), _label_fixtures(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_binary_metrics_match_sklearn(name: str, predictions: np.ndarray, labels: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on the undefined cases it resolves to 0
        expected_acc = sklearn_metrics.accuracy_score(labels, predictions)
        expected_f1 = sklearn_metrics.f1_score(labels, predictions, zero_division=0)
        expected_mcc = sklearn_metrics.matthews_corrcoef(labels, predictions)
    assert accuracy(predictions, labels) == pytest.approx(expected_acc, abs=1e-12)
    assert f1_binary(predictions, labels) == pytest.approx(expected_f1, abs=1e-12)
    assert matthews_corrcoef(predictions, labels) == pytest.approx(expected_mcc, abs=1e-12)


@pytest.mark.parametrize("num_classes", [3, 5])
def test_multiclass_mcc_and_accuracy_match_sklearn(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 3000)
    predictions = np.where(rng.random(3000) < 0.6, labels, rng.integers(0, num_classes, 3000))
    assert matthews_corrcoef(predictions, labels) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12
    )
    assert accuracy(predictions, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))
    # A class that only the predictions use, and string labels.
    words = np.array(["contradiction", "entailment", "neutral"])
    assert matthews_corrcoef(words[predictions % 3], words[labels % 2]) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(words[labels % 2], words[predictions % 3]), abs=1e-12
    )


def test_hand_worked_binary_counts() -> None:
    # TP=2, FP=1, FN=1, TN=2: F1 = 4/6; MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 3/9.
    predictions = [1, 1, 1, 0, 0, 0]
    labels = [1, 1, 0, 1, 0, 0]
    assert f1_binary(predictions, labels) == pytest.approx(2 / 3)
    assert matthews_corrcoef(predictions, labels) == pytest.approx(1 / 3)
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    assert matthews_corrcoef([0, 0, 0], [0, 1, 0]) == 0.0  # one predicted class: undefined -> 0


@pytest.mark.parametrize(
    ("predictions", "labels"),
    [([1, 0], [1]), ([], []), ([[1, 0]], [[1, 0]])],
    ids=["length-mismatch", "empty", "two-dimensional"],
)
def test_bad_inputs_are_rejected(predictions: list, labels: list) -> None:
    for fn in (accuracy, f1_binary, matthews_corrcoef, pearson, spearman):
        with pytest.raises(ValueError):
            fn(predictions, labels)


# ----------------------------------------------------------------------------------------------------------
# Correlations.
# ----------------------------------------------------------------------------------------------------------


def _correlation_fixtures() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    cases = [
        ("independent", x, rng.normal(size=500)),
        ("correlated", x, 2.0 * x + rng.normal(size=500)),
        ("anti-correlated", x, -x + 0.1 * rng.normal(size=500)),
        ("two-points", np.array([0.0, 1.0]), np.array([3.0, -1.0])),
        ("many-ties", rng.integers(0, 4, 300).astype(float), rng.integers(0, 3, 300).astype(float)),
        ("sts-like-ties", np.round(rng.uniform(0, 5, 1500) * 5) / 5, np.round(rng.uniform(0, 5, 1500), 1)),
        ("large-offset", 1e6 + x, 1e6 + x + 1e-3 * rng.normal(size=500)),
        ("tiny-scale", 1e-9 * x, 1e-9 * (x + rng.normal(size=500))),
        ("monotone-nonlinear", x, np.exp(3 * x)),
    ]
    return cases


@pytest.mark.parametrize(("name", "x", "y"), _correlation_fixtures(), ids=lambda v: v if isinstance(v, str) else "")
def test_correlations_match_scipy(name: str, x: np.ndarray, y: np.ndarray) -> None:
    assert pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-9)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-9)
    np.testing.assert_allclose(rank_average(x), scipy_stats.rankdata(x, method="average"))


def test_constant_input_gives_nan_like_scipy() -> None:
    constant, varying = np.full(10, 0.1), np.arange(10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(scipy_stats.pearsonr(constant, varying)[0])
        assert math.isnan(scipy_stats.spearmanr(varying, constant)[0])
    assert math.isnan(pearson(constant, varying))
    assert math.isnan(spearman(varying, constant))
    assert math.isnan(glue_metrics("stsb", constant, varying)["pearson"])


def test_correlations_reject_non_finite_and_single_points() -> None:
    with pytest.raises(ValueError, match="NaN"):
        pearson([1.0, math.nan, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="two points"):
        spearman([1.0], [2.0])


def test_spearman_hand_worked_ties() -> None:
    # x ranks: 1, 2.5, 2.5, 4; y ranks: 1, 2, 3, 4 -> Pearson of the ranks.
    assert rank_average([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    ranks_x, ranks_y = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    dx, dy = ranks_x - ranks_x.mean(), ranks_y - ranks_y.mean()
    expected = (dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy))
    assert spearman([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------------------
# GLUE metric sets.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "keys"),
    [
        ("CoLA", {"matthews_corrcoef"}),
        ("SST-2", {"accuracy"}),
        ("mrpc", {"accuracy", "f1"}),
        ("QQP", {"accuracy", "f1"}),
        ("STS-B", {"pearson", "spearmanr"}),
        ("MNLI", {"accuracy"}),
        ("mnli-m", {"accuracy"}),
        ("MNLI_mismatched", {"accuracy"}),
        ("qnli", {"accuracy"}),
        ("RTE", {"accuracy"}),
        ("wnli", {"accuracy"}),
    ],
)
def test_glue_metrics_per_task(task: str, keys: set[str]) -> None:
    rng = np.random.default_rng(2)
    if "pearson" in keys:
        labels = rng.uniform(0, 5, 200)
        predictions = labels + rng.normal(size=200)
    else:
        labels = rng.integers(0, 2, 200)
        predictions = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    result = glue_metrics(task, predictions, labels)
    assert set(result) == keys
    references = {
        "accuracy": lambda: sklearn_metrics.accuracy_score(labels, predictions),
        "f1": lambda: sklearn_metrics.f1_score(labels, predictions),
        "matthews_corrcoef": lambda: sklearn_metrics.matthews_corrcoef(labels, predictions),
        "pearson": lambda: scipy_stats.pearsonr(predictions, labels)[0],
        "spearmanr": lambda: scipy_stats.spearmanr(predictions, labels)[0],
    }
    for key, value in result.items():
        assert isinstance(value, float)
        assert value == pytest.approx(references[key](), abs=1e-12)


def test_glue_metrics_unknown_task() -> None:
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics("squad", [1], [1])


# ----------------------------------------------------------------------------------------------------------
# SQuAD (hand-worked cases of the official rules).
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Denver Broncos.", "denver broncos"),
        ("an apple, a pear & the plum!", "apple pear plum"),
        ("theater another athens", "theater another athens"),  # articles only as whole words
        ("  lots \t of\nspace  ", "lots of space"),
        ("O'Neil's (1998)", "oneils 1998"),
        ("A", ""),
        ("", ""),
        ("café—bar", "café—bar"),  # non-ASCII punctuation is kept, as in the official script
        ("the-end", "theend"),  # punctuation goes first, so "the" is no longer a word of its own
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_squad_f1_and_exact_match_hand_worked() -> None:
    assert squad_exact_match("the Denver Broncos!", "Denver Broncos") == 1.0
    assert squad_exact_match("Denver", "Denver Broncos") == 0.0
    assert squad_f1("Carolina Panthers", "Denver Broncos") == 0.0  # no overlap
    # pred {denver, broncos, team} vs gold {broncos}: P = 1/3, R = 1, F1 = 0.5.
    assert squad_f1("Denver Broncos team", "Broncos") == pytest.approx(0.5)
    # Repeated tokens count as a multiset: common = {x: 1, y: 1}; P = R = 2/3.
    assert squad_f1("x x y", "x y y") == pytest.approx(2 / 3)
    # Articles and punctuation do not count as tokens.
    assert squad_f1("The Broncos.", "broncos") == 1.0


def test_squad_scores_take_the_max_over_gold_answers() -> None:
    assert squad_scores("Broncos", ["Denver Broncos", "the Broncos"]) == (1.0, 1.0)
    exact, f1 = squad_scores("Denver", ["Denver Broncos", "Carolina", "Denver Broncos team"])
    assert exact == 0.0
    assert f1 == pytest.approx(2 / 3)  # best: "Denver Broncos" (P = 1, R = 1/2)


def test_squad_empty_strings_v1_and_v2_rules() -> None:
    assert squad_exact_match("", "") == 1.0
    assert squad_f1("", "") == 0.0  # v1.1: no common token, F1 0
    assert squad_f1("", "", v2=True) == 1.0  # v2.0: both empty is a correct "no answer"
    assert squad_f1("the", "", v2=True) == 1.0  # "the" normalizes to nothing
    assert squad_f1("Broncos", "", v2=True) == 0.0
    assert squad_f1("", "Broncos", v2=True) == 0.0
    # v2.0: gold answers that normalize to "" are dropped; none left means the gold answer is "".
    assert squad_scores("", ["a", "."], v2=True) == (1.0, 1.0)
    assert squad_scores("something", [], v2=True) == (0.0, 0.0)
    assert squad_scores("", [], v2=True) == (1.0, 1.0)
    assert squad_scores("anything", []) == (0.0, 0.0)


def _squad_json(
    questions: list[tuple[str, list[str]]], version: str = "1.1", impossible: set[str] = frozenset()
) -> dict:
    context = "Denver Broncos beat the Carolina Panthers in Santa Clara."
    qas = []
    for qid, answers in questions:
        qa = {
            "id": qid,
            "question": "?",
            "answers": [{"text": a, "answer_start": max(context.find(a), 0)} for a in answers],
        }
        if version == "v2.0":
            qa["is_impossible"] = qid in impossible
        qas.append(qa)
    return {"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_squad_evaluate_v1_percentages_and_missing_predictions(tmp_path, caplog) -> None:
    dataset = _squad_json(
        [
            ("q1", ["Denver Broncos", "Broncos"]),
            ("q2", ["Carolina Panthers"]),
            ("q3", ["Santa Clara"]),
            ("q4", ["Denver"]),
        ]
    )
    predictions = {"q1": "the Broncos", "q2": "Panthers", "q3": "Levi's Stadium", "extra": "ignored"}
    # q1: EM 1 F1 1; q2: EM 0, F1 = 2*(1*0.5)/1.5 = 2/3; q3: 0/0; q4: missing -> 0/0.
    expected = {"exact_match": 100 * 1 / 4, "f1": 100 * (1 + 2 / 3) / 4}
    result = squad_evaluate(dataset, predictions)
    assert set(result) == {"exact_match", "f1"}
    assert result == pytest.approx(expected)
    assert "1 of 4 questions have no prediction" in caplog.text
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dataset))
    assert squad_evaluate(path, predictions) == pytest.approx(expected)
    assert squad_evaluate(dataset["data"], predictions) == pytest.approx(expected)
    golds = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Carolina Panthers"], "q3": ["Santa Clara"], "q4": ["Denver"]}
    assert squad_evaluate(golds, predictions) == pytest.approx(expected)


def test_squad_evaluate_v2_splits_answerable_and_unanswerable() -> None:
    dataset = _squad_json(
        [("a1", ["Denver Broncos"]), ("a2", ["Santa Clara"]), ("n1", []), ("n2", []), ("n3", [])],
        version="v2.0",
        impossible={"n1", "n2", "n3"},
    )
    # a1 right, a2 answered "" (wrong), n1 "" (right), n2 a span (wrong), n3 "The." (normalizes to "": right).
    predictions = {"a1": "Denver Broncos", "a2": "", "n1": "", "n2": "Carolina", "n3": "The."}
    result = squad_evaluate(dataset, predictions)
    assert result["HasAns_total"] == 2 and result["NoAns_total"] == 3 and result["total"] == 5
    assert result["HasAns_exact_match"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(50.0)
    assert result["NoAns_exact_match"] == pytest.approx(100 * 2 / 3)
    assert result["NoAns_f1"] == pytest.approx(100 * 2 / 3)
    assert result["exact_match"] == pytest.approx(60.0)
    # The same dataset scored by the v1.1 rules: the empty answers no longer score.
    v1 = squad_evaluate(dataset, predictions, version="1.1")
    assert set(v1) == {"exact_match", "f1"}
    assert v1["exact_match"] == pytest.approx(20.0)


def test_squad_evaluate_detects_v2_from_unanswerable_questions() -> None:
    golds = {"a": ["x"], "b": []}
    result = squad_evaluate(golds, {"a": "x", "b": ""})
    assert result["exact_match"] == 100.0 and result["NoAns_total"] == 1


# ----------------------------------------------------------------------------------------------------------
# NER (entity level).
# ----------------------------------------------------------------------------------------------------------


def test_get_entities_hand_worked() -> None:
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert get_entities(["O", "B-LOC", "I-LOC"]) == [("LOC", 1, 3)]  # entity at sentence end
    assert get_entities(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]
    assert get_entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3)]  # type change
    assert get_entities([]) == []
    # IOB1: I- opens an entity; B- only separates adjacent entities of the same type.
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
    expected = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 7)]
    assert get_entities(iob1, scheme="IOB1") == expected
    # Default IOB2 reads an I- after O the conlleval way (opens an entity); strict mode ignores it.
    ill_formed = ["O", "I-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    assert get_entities(ill_formed) == [("PER", 1, 3), ("LOC", 3, 5), ("ORG", 5, 6)]
    assert get_entities(ill_formed, strict=True) == [("LOC", 3, 5)]
    assert get_entities(["B-PER", "I-LOC", "I-PER"], strict=True) == [("PER", 0, 1)]


def test_get_entities_rejects_bad_tags_and_arguments() -> None:
    for bad in (["PER"], ["E-PER"], ["B-"], ["b-PER"]):
        with pytest.raises(ValueError, match="not 'O'"):
            get_entities(bad)
    with pytest.raises(ValueError, match="strict"):
        get_entities(["I-PER"], scheme="IOB1", strict=True)
    with pytest.raises(ValueError, match="scheme"):
        get_entities(["O"], scheme="BILOU")  # type: ignore[arg-type]


def test_ner_metrics_type_mismatch() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]
    result = ner_metrics(gold, pred)
    assert (result["num_gold"], result["num_pred"], result["num_correct"]) == (2, 2, 1)
    assert result["precision"] == result["recall"] == result["f1"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_type"]["ORG"]["support"] == 0
    assert result["per_type"]["PER"]["f1"] == 1.0


def test_ner_metrics_boundary_mismatch_scores_nothing() -> None:
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "O"]]
    pred = [["B-PER", "O", "O"], ["B-LOC", "I-LOC", "O"]]
    result = ner_metrics(gold, pred)
    assert (result["num_gold"], result["num_pred"], result["num_correct"]) == (2, 2, 0)
    assert result["f1"] == 0.0


def test_ner_metrics_hand_worked_precision_recall() -> None:
    # gold: PER(0,2) LOC(3,4) | MISC(0,1); pred: PER(0,2) ORG(3,4) | MISC(0,1) LOC(2,3).
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-MISC", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-MISC", "O", "B-LOC"]]
    result = ner_metrics(gold, pred)
    assert result["precision"] == pytest.approx(2 / 4)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))


def test_ner_entities_never_cross_sentence_boundaries() -> None:
    # Read as one sequence, the gold PER would be one 2-token entity and the prediction two entities.
    gold = [["O", "B-PER"], ["I-PER", "O"]]
    pred = [["O", "B-PER"], ["B-PER", "O"]]
    assert ner_metrics(gold, pred)["f1"] == 1.0
    assert ner_metrics(gold, pred, scheme="IOB1")["f1"] == 1.0
    flat_gold, flat_pred = [[t for s in gold for t in s]], [[t for s in pred for t in s]]
    assert ner_metrics(flat_gold, flat_pred)["f1"] == 0.0
    # Strict IOB2: the leading I-PER of sentence 2 is no entity (it cannot continue sentence 1's).
    strict = ner_metrics(gold, pred, strict=True)
    assert (strict["num_gold"], strict["num_pred"], strict["num_correct"]) == (1, 2, 1)


def test_ner_metrics_iob1_scheme() -> None:
    gold = [["I-ORG", "I-ORG", "B-ORG", "O", "I-PER"]]
    pred = [["I-ORG", "I-ORG", "I-ORG", "O", "I-PER"]]  # merges the two adjacent ORGs
    result = ner_metrics(gold, pred, scheme="IOB1")
    assert (result["num_gold"], result["num_pred"], result["num_correct"]) == (3, 2, 1)
    assert result["precision"] == pytest.approx(1 / 2)
    assert result["recall"] == pytest.approx(1 / 3)


def test_ner_metrics_no_entities_and_bad_inputs() -> None:
    result = ner_metrics([["O", "O"]], [["O", "O"]])
    assert (result["precision"], result["recall"], result["f1"], result["accuracy"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(TypeError, match="list of sentences"):
        ner_metrics(["B-PER", "O"], ["B-PER", "O"])
    with pytest.raises(ValueError, match="sentence 1"):
        ner_metrics([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="2 gold sentences"):
        ner_metrics([["O"], ["O"]], [["O"]])


def _conlleval_chunks(tags: list[str]) -> set[tuple[str, int, int]]:
    """Chunks by conlleval's own start/end-of-chunk rules, one token at a time (an independent reference)."""

    def split(tag: str) -> tuple[str, str]:
        return ("O", "") if tag == "O" else (tag[0], tag[2:])

    def end_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
        return (
            (prev_tag == "B" and tag == "B")
            or (prev_tag == "B" and tag == "O")
            or (prev_tag == "I" and tag == "B")
            or (prev_tag == "I" and tag == "O")
            or (prev_tag != "O" and prev_type != kind)
        )

    def start_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
        return (
            (prev_tag == "B" and tag == "B")
            or (prev_tag == "I" and tag == "B")
            or (prev_tag == "O" and tag == "B")
            or (prev_tag == "O" and tag == "I")
            or (tag != "O" and prev_type != kind)
        )

    chunks = set()
    prev_tag, prev_type, start = "O", "", None
    for i, full in enumerate([*tags, "O"]):
        tag, kind = split(full)
        if start is not None and end_of_chunk(prev_tag, tag, prev_type, kind):
            chunks.add((prev_type, start, i))
            start = None
        if start_of_chunk(prev_tag, tag, prev_type, kind):
            start = i
        prev_tag, prev_type = tag, kind
    return chunks


def test_entities_match_conlleval_rules_on_random_sequences() -> None:
    rng = np.random.default_rng(3)
    alphabet = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(3000):
        tags = [alphabet[k] for k in rng.integers(0, len(alphabet), rng.integers(0, 12))]
        expected = _conlleval_chunks(tags)
        assert set(get_entities(tags)) == expected, tags
        assert set(get_entities(tags, scheme="IOB1")) == expected, tags


def test_ner_metrics_on_random_sentences_match_a_direct_count() -> None:
    rng = np.random.default_rng(4)
    alphabet = ["O", "O", "O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    gold, pred = [], []
    for _ in range(300):
        n = int(rng.integers(1, 15))
        gold.append([alphabet[k] for k in rng.integers(0, len(alphabet), n)])
        pred.append([t if rng.random() < 0.8 else alphabet[rng.integers(0, len(alphabet))] for t in gold[-1]])
    gold_set = {(i, *c) for i, tags in enumerate(gold) for c in _conlleval_chunks(tags)}
    pred_set = {(i, *c) for i, tags in enumerate(pred) for c in _conlleval_chunks(tags)}
    result = ner_metrics(gold, pred)
    assert result["num_correct"] == len(gold_set & pred_set)
    assert result["precision"] == pytest.approx(len(gold_set & pred_set) / len(pred_set))
    assert result["recall"] == pytest.approx(len(gold_set & pred_set) / len(gold_set))
    assert metrics.ner_metrics(pred, gold)["precision"] == pytest.approx(result["recall"])
