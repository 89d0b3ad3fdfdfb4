"""Fine-tuning data: GLUE, CoNLL-2003 and SQuAD readers, features and answer decoding.

The real files under ../shared/data are checked against their published counts (GLUE dev sizes and label
distributions, CoNLL-2003 sentences/tokens/entities, SQuAD dev questions/articles). GLUE features are compared
with transformers' slow BertTokenizer (the original tokenizer's port, with its own pair truncation). SQuAD
features are checked end to end: every labelled span decodes back to its gold answer, and gold-position
one-hot logits decode to (almost) perfect exact match through the n-best decoder. Hand-worked cases pin the
windowing, max-context and decoding rules.
"""

from __future__ import annotations

import collections
import json
import pathlib
import unicodedata

import numpy as np
import pytest

from bert_jax.finetune import conll_data, glue_data, metrics, squad_data
from bert_jax.finetune.conll_data import (
    CONLL2003_LABELS,
    NerSentence,
    ner_features,
    read_conll,
    tags_from_token_predictions,
)
from bert_jax.finetune.glue_data import Example, GlueFormatError, glue_features, read_glue_split, truncate_seq_pair
from bert_jax.finetune.squad_data import (
    doc_windows,
    postprocess_predictions,
    read_squad,
    split_by_article,
    squad_features,
    whitespace_words,
)
from bert_jax.tokenizers import WordPieceTokenizer
from tests.conftest import REPO_ROOT, shared_path

VOCAB = REPO_ROOT / "bert_jax" / "assets" / "vocab.txt"


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    """The standard uncased BERT vocab, bundled with the package."""
    return WordPieceTokenizer(VOCAB)


# ----------------------------------------------------------------------------------------------------------
# GLUE.
# ----------------------------------------------------------------------------------------------------------

# task -> (dev rows, dev label counts, train rows) from the GLUE files' published statistics.
GLUE_DEV = {
    "sst2": (872, {"0": 428, "1": 444}, 67349),
    "cola": (1043, {"0": 322, "1": 721}, 8551),
    "mrpc": (408, {"0": 129, "1": 279}, 3668),
    "rte": (277, {"entailment": 146, "not_entailment": 131}, 2490),
    "stsb": (1500, None, 5749),
}


@pytest.mark.parametrize("task", list(GLUE_DEV))
def test_glue_real_files_have_published_counts(task: str) -> None:
    glue_dir = shared_path("glue")
    dev_rows, dev_labels, train_rows = GLUE_DEV[task]
    dev = read_glue_split(glue_dir, task, "dev")
    assert len(dev) == dev_rows
    assert len(read_glue_split(glue_dir, task, "train")) == train_rows
    assert len({e.guid for e in dev}) == dev_rows
    if dev_labels is None:
        scores = np.array([e.label for e in dev])
        assert scores.min() == 0.0 and scores.max() == 5.0
    else:
        assert dict(collections.Counter(e.label for e in dev)) == dev_labels
    paired = glue_data.get_task(task).text_b is not None
    assert all((e.text_b is not None) == paired and e.text_a for e in dev)


def test_glue_rows_read_like_the_files() -> None:
    glue_dir = shared_path("glue")
    rte = read_glue_split(glue_dir, "RTE", "dev")[0]
    assert rte.text_a.startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert (rte.text_b, rte.label, rte.guid) == ("Christopher Reeve had an accident.", "not_entailment", "dev-0")
    # MRPC: the BOM does not hide the header; an unbalanced quote stays in its field.
    mrpc = read_glue_split(glue_dir, "MRPC", "dev")[0]
    assert mrpc.label == "1"
    assert mrpc.text_b == '"The foodservice pie business does not fit our long-term growth strategy.'
    # CoLA: no header, and the last row has no final newline.
    cola = read_glue_split(glue_dir, "cola", "dev")
    assert cola[0].text_a == "The sailors rode the breeze clear of the rocks."
    assert cola[-1].text_a.endswith("about himself.")
    stsb = read_glue_split(glue_dir, "STS-B", "dev")[0]
    assert (stsb.text_a, stsb.text_b, stsb.label) == (
        "A man with a hard hat is dancing.",
        "A man wearing a hard hat is dancing.",
        5.0,
    )


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_glue_malformed_rows_name_file_and_line(tmp_path: pathlib.Path) -> None:
    bad_fields = _write(
        tmp_path / "RTE" / "dev.tsv", 'index\tsentence1\tsentence2\tlabel\n0\ta "b\tc\tentailment\n1\tx\ty\n'
    )
    with pytest.raises(GlueFormatError, match=rf"{bad_fields}:3: expected 4 tab-separated fields, found 3"):
        read_glue_split(tmp_path, "rte", "dev")
    examples = read_glue_split(tmp_path, "rte", "dev", skip_malformed=True)
    assert [(e.text_a, e.label) for e in examples] == [('a "b', "entailment")]

    _write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(GlueFormatError, match=r"dev.tsv:2: label 'maybe' is not one of"):
        read_glue_split(tmp_path, "rte", "dev")

    _write(tmp_path / "STS-B" / "dev.tsv", "sentence1\tsentence2\tscore\na\tb\tfive\n")
    with pytest.raises(GlueFormatError, match=r"dev.tsv:2: score 'five' is not a finite number"):
        read_glue_split(tmp_path, "stsb", "dev")

    _write(tmp_path / "SST-2" / "dev.tsv", "text\tlabel\ngood\t1\n")
    with pytest.raises(GlueFormatError, match=r"dev.tsv:1: the header .* has no column 'sentence'"):
        read_glue_split(tmp_path, "sst2", "dev")

    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\n\nbad\t0\n")
    with pytest.raises(GlueFormatError, match=r"dev.tsv:3: blank line between rows"):
        read_glue_split(tmp_path, "sst2", "dev")

    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n\n\n")
    assert len(read_glue_split(tmp_path, "sst2", "dev")) == 2  # trailing blank lines are fine

    _write(tmp_path / "CoLA" / "train.tsv", "src\t1\t\tOK sentence.\nsrc\t0\t*\n")
    with pytest.raises(GlueFormatError, match=r"train.tsv:2: expected 4"):
        read_glue_split(tmp_path, "cola", "train")

    with pytest.raises(FileNotFoundError, match="QNLI"):
        read_glue_split(tmp_path, "qnli", "dev")
    with pytest.raises(ValueError, match="has no split 'dev'"):
        read_glue_split(tmp_path, "mnli", "dev")


def test_glue_test_split_has_no_labels(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "CoLA" / "test.tsv", "index\tsentence\n0\tBill left.\n1\tLeft Bill.\n")
    examples = read_glue_split(tmp_path, "cola", "test")
    assert [(e.guid, e.text_a, e.label) for e in examples] == [
        ("test-0", "Bill left.", None),
        ("test-1", "Left Bill.", None),
    ]
    _write(
        tmp_path / "MNLI" / "dev_mismatched.tsv",
        "index\tsentence1\tsentence2\tlabel1\tgold_label\n0\ta\tb\tneutral\tneutral\n",
    )
    assert read_glue_split(tmp_path, "mnli-mm", "dev")[0].label == "neutral"
    assert read_glue_split(tmp_path, "MNLI", "dev_mismatched")[0].text_b == "b"
    features = glue_features(examples, WordPieceTokenizer(VOCAB), 16, "cola")
    assert features["labels"].tolist() == [-1, -1]


def test_truncate_seq_pair_removes_from_the_longer_side() -> None:
    cases = [((5, 3, 6), (3, 3)), ((3, 3, 5), (3, 2)), ((10, 1, 4), (3, 1)), ((2, 2, 10), (2, 2)), ((4, 7, 0), (0, 0))]
    for (len_a, len_b, max_length), expected in cases:
        a, b = list(range(len_a)), list(range(100, 100 + len_b))
        truncate_seq_pair(a, b, max_length)
        assert (len(a), len(b)) == expected
        assert a == list(range(len(a))) and b == list(range(100, 100 + len(b)))  # cut from the end


def test_glue_features_layout(tokenizer: WordPieceTokenizer) -> None:
    examples = [
        Example("dev-0", "The cat sat.", "A dog ran far away today.", "entailment"),
        Example("dev-1", "Hi", None, "0"),
    ]
    pair = glue_features(examples[:1], tokenizer, 12, "rte")
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    a, b = tokenizer.encode("The cat sat."), tokenizer.encode("A dog ran far away today.")
    assert (len(a), len(b)) == (4, 7)  # 14 tokens with specials: b (the longer side) loses two
    assert pair["input_ids"][0].tolist() == [cls, *a, sep, *b[:5], sep]
    assert pair["token_type_ids"][0].tolist() == [0] * 6 + [1] * 6
    assert pair["attention_mask"][0].tolist() == [1] * 12
    assert pair["labels"].tolist() == [0] and pair["labels"].dtype == np.int32
    single = glue_features(examples[1:], tokenizer, 8, "sst2")
    assert single["input_ids"][0].tolist() == [cls, *tokenizer.encode("Hi"), sep] + [0] * 5
    assert single["token_type_ids"][0].tolist() == [0] * 8
    assert single["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert single["labels"].tolist() == [0]
    assert all(v.dtype == np.int32 and v.shape[0] == 1 for v in single.values())
    regression = glue_features([Example("x", "a", "b", 3.8)], tokenizer, 8, "STS-B")
    assert regression["labels"].dtype == np.float32 and regression["labels"].tolist() == [pytest.approx(3.8)]
    with pytest.raises(ValueError, match="no room"):
        glue_features(examples[:1], tokenizer, 2, "rte")
    with pytest.raises(ValueError, match="not one of the rte labels"):
        glue_features([Example("x", "a", "b", "0")], tokenizer, 8, "rte")


@pytest.mark.parametrize(("task", "max_seq_length"), [("rte", 64), ("mrpc", 48), ("cola", 12)])
def test_glue_features_match_transformers_bert_tokenizer(task: str, max_seq_length: int, tokenizer) -> None:
    transformers = pytest.importorskip("transformers", reason="install the test extra: pip install -e '.[test]'")
    reference = transformers.BertTokenizer(str(VOCAB), do_lower_case=True)
    examples = read_glue_split(shared_path("glue"), task, "dev")[:80]  # the reference is slow
    features = glue_features(examples, tokenizer, max_seq_length, task)
    truncated = 0
    for i, example in enumerate(examples):
        expected = reference(
            example.text_a,
            example.text_b,
            max_length=max_seq_length,
            truncation="longest_first",
            padding="max_length",
        )
        truncated += expected["attention_mask"][-1]
        assert features["input_ids"][i].tolist() == expected["input_ids"], example.guid
        assert features["token_type_ids"][i].tolist() == expected["token_type_ids"], example.guid
        assert features["attention_mask"][i].tolist() == expected["attention_mask"], example.guid
    assert truncated > 20  # the comparison covers truncation
    task_labels = glue_data.get_task(task).labels
    assert [task_labels[k] for k in features["labels"]] == [e.label for e in examples]


# ----------------------------------------------------------------------------------------------------------
# CoNLL-2003.
# ----------------------------------------------------------------------------------------------------------

# file -> (documents, sentences, tokens, entities per type): the published CoNLL-2003 English statistics.
CONLL_COUNTS = {
    "train": (946, 14041, 203621, {"PER": 6600, "LOC": 7140, "ORG": 6321, "MISC": 3438}),
    "valid": (216, 3250, 51362, {"PER": 1842, "LOC": 1837, "ORG": 1341, "MISC": 922}),
    "test": (231, 3453, 46435, {"PER": 1617, "LOC": 1668, "ORG": 1661, "MISC": 702}),
}


@pytest.fixture(scope="module")
def conll_test() -> list[NerSentence]:
    return read_conll(shared_path("conll2003", "test.txt"))


@pytest.mark.parametrize("split", list(CONLL_COUNTS))
def test_conll_real_files_have_published_counts(split: str) -> None:
    sentences = read_conll(shared_path("conll2003", f"{split}.txt"))
    documents, num_sentences, tokens, entities = CONLL_COUNTS[split]
    assert len(sentences) == num_sentences
    assert sum(len(s.words) for s in sentences) == tokens
    assert len({s.document for s in sentences}) == documents
    assert max(s.document for s in sentences) == documents - 1
    counted = collections.Counter(kind for s in sentences for kind, _, _ in metrics.get_entities(s.tags))
    assert dict(counted) == entities
    assert sum(counted.values()) == sum(entities.values())
    assert {t for s in sentences for t in s.tags} == set(CONLL2003_LABELS)
    assert all(len(s.words) == len(s.tags) == len(s.pos) == len(s.chunks) > 0 for s in sentences)


def test_conll_first_sentences(conll_test: list[NerSentence]) -> None:
    first = conll_test[0]
    assert first.words[:3] == ("SOCCER", "-", "JAPAN")
    assert first.tags[2] == "B-LOC" and first.pos[2] == "NNP" and first.chunks[2] == "B-NP"
    assert conll_test[1].words == ("Nadim", "Ladki")
    assert metrics.get_entities(conll_test[1].tags) == [("PER", 0, 2)]


def _to_iob1(tags: tuple[str, ...]) -> list[str]:
    """IOB2 -> IOB1: B- only where an entity directly follows one of the same type, I- everywhere else."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("B-") and not (i > 0 and tags[i - 1] != "O" and tags[i - 1][2:] == tag[2:]):
            tag = "I-" + tag[2:]
        out.append(tag)
    return out


def test_conll_entities_are_the_same_in_iob1(conll_test: list[NerSentence]) -> None:
    iob1 = [_to_iob1(s.tags) for s in conll_test]
    assert sum(t.startswith("B-") for tags in iob1 for t in tags) < 100  # IOB1 really differs
    for sentence, tags in zip(conll_test, iob1, strict=True):
        assert metrics.get_entities(tags, scheme="IOB1") == metrics.get_entities(sentence.tags)
    gold = [list(s.tags) for s in conll_test]
    assert metrics.ner_metrics(gold, gold)["f1"] == 1.0


def test_conll_reader_edge_cases(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path / "x.txt",
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n-DOCSTART- -X- -X- O\nPeter NNP B-NP B-PER",
    )
    sentences = read_conll(path)
    assert [(s.words, s.tags, s.document) for s in sentences] == [
        (("EU", "rejects"), ("B-ORG", "O"), 0),
        (("Peter",), ("B-PER",), 1),
    ]
    bad = _write(tmp_path / "bad.txt", "EU NNP B-NP B-ORG\nrejects O\n")
    with pytest.raises(conll_data.ConllFormatError, match=rf"{bad}:2: expected 4 space-separated columns"):
        read_conll(bad)
    with pytest.raises(ValueError, match="2 tags"):
        NerSentence(("a",), ("O", "O"))


def test_conll_features_label_the_first_piece(tokenizer: WordPieceTokenizer) -> None:
    sentence = NerSentence(("Ssangyong", "Ladki", "scored"), ("B-PER", "I-PER", "O"))
    pieces = [tokenizer.encode(w) for w in sentence.words]
    assert [len(p) for p in pieces] == [4, 2, 1]  # ss ##ang ##yon ##g / lad ##ki / scored
    features = ner_features([sentence], tokenizer, 12)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    assert features.input_ids[0].tolist() == [cls, *pieces[0], *pieces[1], *pieces[2], sep, 0, 0, 0]
    assert features.labels[0].tolist() == [-1, 1, -1, -1, -1, 2, -1, 0, -1, -1, -1, -1]
    assert features.attention_mask[0].tolist() == [1] * 9 + [0] * 3
    assert features.word_positions[0].tolist() == [1, 5, 7]
    # Truncated to 5 pieces: "Ladki" keeps its first piece, "scored" loses its only one.
    short = ner_features([sentence], tokenizer, 7)
    assert short.word_positions[0].tolist() == [1, 5, -1] and short.num_truncated_words == 1
    assert short.input_ids[0].tolist() == [cls, *pieces[0], pieces[1][0], sep]
    predictions = np.zeros((1, 7), dtype=np.int64)
    predictions[0, 1], predictions[0, 5] = 1, 2
    assert tags_from_token_predictions(predictions, short) == [["B-PER", "I-PER", "O"]]
    unlabelled = ner_features([NerSentence(("x",))], tokenizer, 4)
    assert unlabelled.labels.tolist() == [[-1, -1, -1, -1]]
    with pytest.raises(ValueError, match="tag 'B-FOO'"):
        ner_features([NerSentence(("x",), ("B-FOO",))], tokenizer, 4)


@pytest.mark.parametrize(("max_seq_length", "truncated_words"), [(256, 0), (128, None)])
def test_conll_features_round_trip_the_gold_tags(
    conll_test: list[NerSentence], tokenizer: WordPieceTokenizer, max_seq_length: int, truncated_words: int | None
) -> None:
    features = ner_features(conll_test, tokenizer, max_seq_length)
    gold = [list(s.tags) for s in conll_test]
    labelled = features.labels >= 0
    assert labelled.sum() == sum(len(s.words) for s in conll_test) - features.num_truncated_words
    # Labels sit on word-initial pieces only, never on [CLS], [SEP], padding or "##" pieces.
    tokens = np.array(tokenizer.convert_ids_to_tokens(features.input_ids[labelled].tolist()))
    assert not any(t.startswith("##") or t in ("[CLS]", "[SEP]", "[PAD]") for t in tokens)
    # Feeding the gold labels back as predictions recovers the gold tags (minus truncated words).
    predicted = tags_from_token_predictions(np.where(labelled, features.labels, 0), features)
    result = metrics.ner_metrics(gold, predicted)
    if truncated_words == 0:
        assert features.num_truncated_words == 0
        assert predicted == gold and result["f1"] == 1.0
    else:
        assert 0 < features.num_truncated_words < 50
        assert 0.999 < result["f1"] < 1.0 and result["precision"] == 1.0
    one_hot = np.eye(len(CONLL2003_LABELS))[np.where(labelled, features.labels, 0)]
    assert tags_from_token_predictions(one_hot, features) == predicted


# ----------------------------------------------------------------------------------------------------------
# SQuAD: reading and splitting.
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squad_examples() -> list[squad_data.SquadExample]:
    return read_squad(shared_path("squad", "dev-v1.1.json"))


@pytest.fixture(scope="module")
def squad_split(squad_examples):
    return split_by_article(squad_examples, eval_fraction=0.2, seed=0)


def test_squad_dev_has_published_counts(squad_examples) -> None:
    assert len(squad_examples) == 10570
    assert len({e.article_index for e in squad_examples}) == 48
    assert len({e.title for e in squad_examples}) == 48
    assert len({e.context for e in squad_examples}) == 2067
    assert sum(len(e.answers) for e in squad_examples) == 34726
    assert len({e.qas_id for e in squad_examples}) == 10570
    first = squad_examples[0]
    assert (first.qas_id, first.question) == (
        "56be4db0acb8001400a502ec",
        "Which NFL team represented the AFC at Super Bowl 50?",
    )
    assert first.target == squad_data.SquadAnswer("Denver Broncos", 177) and first.title == "Super_Bowl_50"
    assert all(e.target is not None and not e.is_impossible for e in squad_examples)
    assert all(e.context[e.target.start : e.target.end] == e.target.text for e in squad_examples)


def test_split_by_article_is_deterministic_and_disjoint(squad_examples, squad_split) -> None:
    train, evaluation = squad_split
    assert len(train) + len(evaluation) == len(squad_examples)
    train_articles = {e.article_index for e in train}
    eval_articles = {e.article_index for e in evaluation}
    assert not train_articles & eval_articles
    assert len(eval_articles) == round(0.2 * 48) and len(train_articles) == 38
    assert not {e.context for e in train} & {e.context for e in evaluation}
    again = split_by_article(squad_examples, eval_fraction=0.2, seed=0)
    assert [e.qas_id for e in again[1]] == [e.qas_id for e in evaluation]
    other = split_by_article(squad_examples, eval_fraction=0.2, seed=1)
    assert {e.article_index for e in other[1]} != eval_articles
    order = {e.qas_id: i for i, e in enumerate(squad_examples)}
    assert [order[e.qas_id] for e in evaluation] == sorted(order[e.qas_id] for e in evaluation)
    with pytest.raises(ValueError, match="eval_fraction"):
        split_by_article(squad_examples, eval_fraction=1.0)


def test_whitespace_words_hand_worked() -> None:
    words, starts, char_to_word = whitespace_words("  a bc\u202fd\n")
    assert words == ["a", "bc", "d"] and starts == [2, 4, 7]
    assert char_to_word == [-1, -1, 0, 0, 1, 1, 1, 2, 2]
    assert whitespace_words("") == ([], [], [])


def _v2_json() -> dict:
    context = "Super Bowl 50 was played at Levi's Stadium in Santa Clara."
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "SB",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": "where",
                                "question": "Where?",
                                "answers": [{"text": "Santa Clara", "answer_start": context.index("Santa")}],
                                "is_impossible": False,
                            },
                            {
                                "id": "who",
                                "question": "Who won the Super Bowl?",
                                "answers": [],
                                "plausible_answers": [{"text": "Super Bowl 50", "answer_start": 0}],
                                "is_impossible": True,
                            },
                            {
                                "id": "off",
                                "question": "Broken offset?",
                                "answers": [{"text": "Santa Clara", "answer_start": 3}],
                                "is_impossible": False,
                            },
                        ],
                    }
                ],
            }
        ],
    }


def test_read_squad_v2_and_unlocatable_answers(tmp_path: pathlib.Path) -> None:
    examples = read_squad(_v2_json())
    assert [e.qas_id for e in examples] == ["where", "who", "off"]
    assert examples[1].is_impossible and examples[1].answers == () and examples[1].target is None
    assert examples[2].target is None and examples[2].answer_texts == ("Santa Clara",)
    path = _write(tmp_path / "v2.json", json.dumps(_v2_json()))
    assert [e.qas_id for e in read_squad(path, drop_unlocatable=True)] == ["where", "who"]
    broken = _v2_json()
    del broken["data"][0]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(squad_data.SquadFormatError, match="question where: missing field 'question'"):
        read_squad(broken)


# ----------------------------------------------------------------------------------------------------------
# SQuAD: windows and features (hand-worked).
# ----------------------------------------------------------------------------------------------------------


def test_doc_windows_hand_worked() -> None:
    assert doc_windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert doc_windows(14, 6, 3) == [(0, 6), (3, 6), (6, 6), (9, 5)]
    assert doc_windows(5, 10, 2) == [(0, 5)]
    assert doc_windows(0, 5, 2) == [(0, 0)]
    assert doc_windows(7, 3, 5) == [(0, 3), (3, 3), (6, 1)]  # the stride never skips past a window's end
    with pytest.raises(ValueError):
        doc_windows(5, 0, 1)


def test_max_context_hand_worked() -> None:
    windows = [(0, 6), (3, 6), (6, 6), (9, 5)]
    best = squad_data._max_context_window(windows, 14)
    # piece 4: window 0 scores min(4, 1) + 0.06, window 1 min(1, 4) + 0.06: a tie, the first window wins.
    # piece 5: window 0 min(5, 0) + .06 < window 1 min(2, 3) + .06. piece 7: tie of windows 1 and 2 -> 1.
    # piece 10: window 2 min(4, 1) + 0.06 beats window 3 min(1, 3) + 0.05 (the shorter window loses).
    assert best.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


@pytest.fixture(scope="module")
def windowed(tokenizer):
    """The v2 toy examples with windows of 6 context pieces, stride 3 (question "Where?" has 2 pieces)."""
    examples = read_squad(_v2_json())
    return examples, squad_features(examples[:1], tokenizer, max_seq_length=11, doc_stride=3, max_query_length=64)


def test_squad_features_hand_worked(windowed, tokenizer) -> None:
    examples, features = windowed
    context_pieces = tokenizer.encode(examples[0].context)
    assert len(context_pieces) == 14 and len(tokenizer.encode("Where?")) == 2
    assert len(features) == 4 and features.window_index.tolist() == [0, 1, 2, 3]
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    question = tokenizer.encode("Where?")
    assert features.input_ids[1].tolist() == [cls, *question, sep, *context_pieces[3:9], sep]
    assert features.input_ids[3].tolist() == [cls, *question, sep, *context_pieces[9:14], sep, 0]
    assert features.token_type_ids[3].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    assert features.attention_mask[3].tolist() == [1] * 10 + [0]
    # "Santa Clara" is pieces 11-12, entirely inside the last window only (at 11 - 9 + 4 = 6).
    assert features.start_positions.tolist() == [0, 0, 0, 6]
    assert features.end_positions.tolist() == [0, 0, 0, 7]
    assert features.answer_in_window.tolist() == [False, False, False, True]
    assert squad_data.decode_span(examples, features, 3, 6, 7) == "Santa Clara"
    assert squad_data.decode_span(examples, features, 1, 7, 9) == "Levi's"  # original case and apostrophe
    # Words: "Levi's" is word 6; its pieces levi ' s sit at positions 6-8 of window 1.
    assert features.token_to_word[1].tolist() == [-1, -1, -1, -1, 3, 4, 5, 6, 6, 6, -1]
    assert features.token_char_start[1, 4] == examples[0].context.index("was")
    # Max context (see test_max_context_hand_worked): piece 4 belongs to window 0, piece 5 to window 1.
    assert features.token_is_max_context[0, 4 + 4] and not features.token_is_max_context[1, 4 - 3 + 4]
    assert features.token_is_max_context[1, 5 - 3 + 4]
    with pytest.raises(ValueError, match="not a span of context pieces"):
        squad_data.decode_span(examples, features, 3, 2, 7)


def test_squad_features_keep_original_text_of_accented_and_odd_words(tokenizer) -> None:
    context = "Café  Müller (1978) paid £20,980 to O'Neil\u200b—then left.\nEnd"
    answers = ["Café  Müller", "1978", "£20,980", "O'Neil", "left", "Müller (1978)"]
    data = [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": context,
                    "qas": [
                        {"id": str(i), "question": "q", "answers": [{"text": a, "answer_start": context.index(a)}]}
                        for i, a in enumerate(answers)
                    ],
                }
            ],
        }
    ]
    examples = read_squad(data)
    features = squad_features(examples, tokenizer, max_seq_length=64)
    decoded = [
        squad_data.decode_span(examples, features, i, features.start_positions[i], features.end_positions[i])
        for i in range(len(features))
    ]
    assert decoded == answers
    # Decomposed accents (combining marks) stay with their letter.
    decomposed = unicodedata.normalize("NFD", "Café Müller won")
    examples = read_squad(
        [{"paragraphs": [{"context": decomposed, "qas": [{"id": "x", "question": "q", "answers": []}]}]}]
    )
    features = squad_features(examples, tokenizer, max_seq_length=32)
    n = int(features.attention_mask[0].sum())
    assert squad_data.decode_span(examples, features, 0, 3, n - 3) == decomposed[: decomposed.index(" won")]
    assert squad_data.decode_span(examples, features, 0, 3, 3) == unicodedata.normalize("NFD", "Café")


def test_squad_features_argument_errors(tokenizer) -> None:
    examples = read_squad(_v2_json())
    with pytest.raises(ValueError, match="no room for context"):
        squad_features(examples, tokenizer, max_seq_length=5)  # "Where?" is 2 pieces: 5 - 2 - 3 = 0
    empty = read_squad([{"paragraphs": [{"context": " ", "qas": [{"id": "e", "question": "q?", "answers": []}]}]}])
    features = squad_features(empty, tokenizer, max_seq_length=16)
    assert len(features) == 1 and features.answer_in_window.tolist() == [False]
    result = postprocess_predictions(empty, features, np.zeros((1, 16)), np.zeros((1, 16)))
    assert result.predictions == {"e": ""}


# ----------------------------------------------------------------------------------------------------------
# SQuAD: decoding (hand-worked).
# ----------------------------------------------------------------------------------------------------------


def test_postprocess_picks_the_best_valid_span(windowed) -> None:
    examples, features = windowed
    start, end = np.zeros((4, 11), np.float32), np.zeros((4, 11), np.float32)
    # Window 1: "played at" (pieces 4-5, positions 5-6) scores 20 but piece 4 has its max context in window 0.
    start[1, 5], end[1, 6] = 10, 10
    # Window 3: "Santa Clara" (positions 6-7) scores 12. A query position scores 30 but is not context.
    start[3, 6], end[3, 7] = 6, 6
    start[3, 2], end[3, 2] = 15, 15
    result = postprocess_predictions(examples[:1], features, start, end, n_best_size=20, max_answer_length=30)
    nbest = result.nbest["where"]
    assert result.predictions == {"where": "Santa Clara"}
    assert [(e["text"], e["start_logit"] + e["end_logit"]) for e in nbest[:2]] == [("Santa Clara", 12.0), ("at", 10.0)]
    assert max(e["start_logit"] + e["end_logit"] for e in nbest) == 12.0  # never the 20 of "played at" in window 1
    texts = [e["text"] for e in nbest]
    assert len(texts) == len(set(texts)) == 20  # de-duplicated across windows
    assert sum(e["probability"] for e in nbest) == pytest.approx(1.0)
    assert result.null_score_diff == {}
    # max_answer_length=1 rules out the two-piece answer.
    short = postprocess_predictions(examples[:1], features, start, end, max_answer_length=1)
    assert short.predictions["where"] == "at"
    # n_best_size=2: only the two best starts and ends of each window are paired ([CLS] or the query's "?"
    # with "santa" / "clara"), which leaves one valid span.
    narrow = postprocess_predictions(examples[:1], features, start, end, n_best_size=2)
    assert [e["text"] for e in narrow.nbest["where"]] == ["Santa Clara"]


def test_postprocess_never_returns_an_end_before_the_start(windowed) -> None:
    examples, features = windowed
    start, end = np.full((4, 11), -100.0), np.full((4, 11), -100.0)
    start[3, 7], end[3, 6] = 50, 50  # "Clara" ... "Santa": reversed
    result = postprocess_predictions(examples[:1], features, start, end)
    best = result.nbest["where"][0]
    assert best["start_logit"] + best["end_logit"] == -50.0  # one strong logit, never both
    assert result.predictions["where"] == "Clara"  # first of the -50 ties: start 7 with end 7


def test_postprocess_v2_null_threshold(tokenizer) -> None:
    examples = read_squad(_v2_json())[:2]
    features = squad_features(examples, tokenizer, max_seq_length=64)
    assert features.start_positions.tolist()[1] == 0 and not features.answer_in_window[1]  # impossible -> [CLS]
    start, end = np.zeros((2, 64), np.float32), np.zeros((2, 64), np.float32)
    row = 0
    s, e = int(features.start_positions[row]), int(features.end_positions[row])
    start[row, s], end[row, e] = 4, 4  # "Santa Clara": 8
    start[row, 0], end[row, 0] = 5, 5  # null: 10
    start[1, 0], end[1, 0] = 5, 5
    result = postprocess_predictions(examples, features, start, end, version_2_with_negative=True)
    assert result.predictions == {"where": "", "who": ""}
    assert result.null_score_diff["where"] == pytest.approx(2.0)
    assert "" in [entry["text"] for entry in result.nbest["where"]]
    lenient = postprocess_predictions(
        examples, features, start, end, version_2_with_negative=True, null_score_diff_threshold=3.0
    )
    assert lenient.predictions["where"] == "Santa Clara"
    scores = metrics.squad_evaluate(examples, lenient.predictions)
    assert scores["HasAns_exact_match"] == 100.0 and scores["NoAns_total"] == 1.0
    v1 = postprocess_predictions(examples, features, start, end)
    assert v1.predictions["where"] == "Santa Clara" and "" not in [x["text"] for x in v1.nbest["where"]]
    with pytest.raises(ValueError, match="do not match"):
        postprocess_predictions(examples, features, start[:1], end)


# ----------------------------------------------------------------------------------------------------------
# SQuAD: the real dev set end to end.
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squad_train_features(squad_split, tokenizer):
    return squad_features(squad_split[0], tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64)


@pytest.fixture(scope="module")
def squad_eval_features(squad_split, tokenizer):
    return squad_features(squad_split[1], tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64)


def test_squad_labelled_spans_decode_to_the_gold_answer(squad_split, squad_train_features) -> None:
    train, features = squad_split[0], squad_train_features
    rows = np.flatnonzero(features.answer_in_window)
    assert len(rows) > 0.97 * len(train)  # nearly every question has a window holding its answer
    matches = 0
    for row in rows:
        example = train[features.example_index[row]]
        text = squad_data.decode_span(train, features, row, features.start_positions[row], features.end_positions[row])
        matches += metrics.normalize_answer(text) == metrics.normalize_answer(example.target.text)
    assert matches / len(rows) >= 0.99, f"{matches} of {len(rows)}"


def test_squad_feature_invariants(squad_split, squad_train_features, tokenizer) -> None:
    train, features = squad_split[0], squad_train_features
    assert features.input_ids.shape[1] == 384 and len(features) > len(train)
    assert set(features.example_index.tolist()) == set(range(len(train)))
    assert (features.input_ids[:, 0] == tokenizer.cls_id).all()
    assert ((features.input_ids == tokenizer.sep_id).sum(axis=1) == 2).all()
    context = features.token_char_start >= 0
    assert (features.token_type_ids[context] == 1).all() and (features.attention_mask[context] == 1).all()
    assert not features.token_is_max_context[~context].any()
    # Every context piece (an example and a character offset) has its max context in exactly one window.
    rows = np.broadcast_to(features.example_index[:, None], context.shape)
    keys = rows[context].astype(np.int64) * 10**7 + features.token_char_start[context]
    _, piece, windows_per_piece = np.unique(keys, return_inverse=True, return_counts=True)
    assert windows_per_piece.max() > 1  # long contexts do overlap
    max_context_count = np.bincount(piece, weights=features.token_is_max_context[context])
    assert (max_context_count == 1).all()
    # Labels point inside the context of their window.
    labelled = np.flatnonzero(features.answer_in_window)
    assert context[labelled, features.start_positions[labelled]].all()
    assert (features.end_positions[labelled] >= features.start_positions[labelled]).all()
    assert (features.start_positions[~features.answer_in_window] == 0).all()


def test_squad_oracle_logits_decode_to_near_perfect_scores(squad_split, squad_eval_features) -> None:
    evaluation, features = squad_split[1], squad_eval_features
    rows = np.arange(len(features))
    start = np.zeros(features.input_ids.shape, np.float32)
    end = np.zeros(features.input_ids.shape, np.float32)
    start[rows, features.start_positions] = 1.0
    end[rows, features.end_positions] = 1.0
    result = postprocess_predictions(evaluation, features, start, end, n_best_size=20, max_answer_length=30)
    scores = metrics.squad_evaluate(evaluation, result.predictions)
    assert set(result.predictions) == {e.qas_id for e in evaluation}
    assert scores["exact_match"] >= 99.0 and scores["f1"] >= 99.0, scores


def test_squad_piece_spans_spell_the_pieces(squad_examples, tokenizer) -> None:
    """Each piece's character span, lowercased and accent-stripped, is the piece's text (the alignment is exact)."""
    contexts = list(dict.fromkeys(e.context for e in squad_examples))[::10]
    tokenized = squad_data._tokenize_contexts(contexts, tokenizer)
    checked = 0
    for context, pieces in zip(contexts, tokenized, strict=True):
        for token, start, end in zip(
            tokenizer.convert_ids_to_tokens(pieces.ids.tolist()), pieces.char_start, pieces.char_end, strict=True
        ):
            if token == "[UNK]":
                continue
            text = unicodedata.normalize("NFD", context[start:end].lower())
            assert "".join(c for c in text if unicodedata.category(c) != "Mn") == token.removeprefix("##")
            checked += 1
    assert checked > 30000


@pytest.mark.slow
def test_squad_context_tokenization_equals_word_by_word(squad_examples, tokenizer) -> None:
    """Tokenizing a whole context gives exactly the original's word-by-word pieces, on all 2067 contexts."""
    contexts = list(dict.fromkeys(e.context for e in squad_examples))
    whole = squad_data._tokenize_contexts(contexts, tokenizer)
    for context, pieces in zip(contexts, whole, strict=True):
        ids, spans = squad_data._tokenize_by_word(context, tokenizer, lowercase=True)
        assert pieces.ids.tolist() == ids
        assert pieces.char_start.tolist() == [s for s, _ in spans]


@pytest.mark.slow
def test_squad_full_dev_oracle(squad_examples, tokenizer) -> None:
    """All 10570 dev questions: labelled spans and the oracle decoding against every gold answer."""
    features = squad_features(squad_examples, tokenizer)
    rows = np.arange(len(features))
    start = np.zeros(features.input_ids.shape, np.float32)
    end = np.zeros(features.input_ids.shape, np.float32)
    start[rows, features.start_positions] = 1.0
    end[rows, features.end_positions] = 1.0
    result = postprocess_predictions(squad_examples, features, start, end)
    scores = metrics.squad_evaluate(shared_path("squad", "dev-v1.1.json"), result.predictions)
    assert scores["exact_match"] >= 99.5 and scores["f1"] >= 99.5, scores


@pytest.mark.slow
def test_conll_train_features_round_trip(tokenizer) -> None:
    sentences = read_conll(shared_path("conll2003", "train.txt"))
    features = ner_features(sentences, tokenizer, 256)
    labelled = features.labels >= 0
    predicted = tags_from_token_predictions(np.where(labelled, features.labels, 0), features)
    assert features.num_truncated_words == 0
    assert predicted == [list(s.tags) for s in sentences]
