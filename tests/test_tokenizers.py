"""Tokenizers: WordPiece ids against the original BERT tokenizer, word starts, SentencePiece, bad inputs, training.

The reference for WordPiece is transformers' slow `BertTokenizer` (pure Python, a port of the original
tokenizer), compared id for id on real corpora (WikiText-2, SST-2, CoNLL-2003), on every ASCII character in
context, on hard Unicode strings and (slow-marked) on every code point. SentencePiece is checked against the
`sentencepiece` package itself.
"""

from __future__ import annotations

import csv
import functools
import json
import pathlib
import pickle
import subprocess
import sys

import pytest
import sentencepiece

from bert_jax import tokenizers
from bert_jax.tokenizers import (
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    TokenizerError,
    WordPieceTokenizer,
    load_tokenizer,
    train_sentencepiece,
    train_wordpiece,
)
from tests.conftest import REPO_ROOT, shared_path

HARD_STRINGS = [
    "Café naïve résumé Ångström",
    "中文字符 日本語のテキスト 한국어",
    "emoji 😀👍🏽 👨\u200d👩\u200d👧 flags 🇯🇵",
    "control\x00chars\x07here \u200bzero\u200bwidth \ufeffbom joiner\u200dx",
    "combining e\u0301 a\u0308 n\u0303 o\u0302\u0323 \u0301alone",
    "x" * 150,
    "a" * 100 + " " + "b" * 101,
    "é" * 100 + " " + "e\u0301" * 60,
    "mixed scripts: Москва, Αθήνα, القاهرة, תל אביב, मुंबई, กรุงเทพ, 東京 and ĲSSELMEER",
    "ΟΔΟΣ Σ ΣΑΣ İstanbul ß ﬁ ǅ Ǆ ᾈ",
    "",
    "   \t\n  ",
    "\u2028line\u2029para\x85next\x0bvt\x0cff\x1cfs",
    "\ufffd replacement \u00a0nbsp\u3000ideographic\u2009thin",
    "punct: \u00bf\u00a1\u00ab\u00bb\u2014\u2013\u2026\u2018\u2019\u201c\u201d\u2022\u2020\u2021\u00a7\u00b6 $^`|~ (a)[b]{c} <d> e/f\\g",
    "numbers 3.14 1,000,000 ½ ² Ⅻ ١٢٣",
    "can't won't it's U.S.A. e-mail @user #tag http://x.org/a?b=c&d",
    "[MASK] a[MASK]b [mask] [CLS][SEP] [UNK]x [PAD]",
    "unassigned \u0378 private \ue000 surrogate-free tag \U000e0001 end",
]

# Characters on which the `tokenizers` library's Unicode tables disagree with Python's (the reference's),
# found by sweeping every code point: its CJK range typo (it starts the block at U+2B920), characters its
# tables do not know yet (unassigned to it, new marks and punctuation), category changes, lone surrogates.
DIVERGENT_CHARACTERS = [
    "\U0002b820",
    "\U0002b91f",
    "\u0378",
    "\u0890",
    "\u0898",
    "\u061d",
    "\u166d",
    "\u1734",
    "\u2e55",
    "\U000e0001",
    "\U0010ffff",
    "\ud800",
]


# ----------------------------------------------------------------------------------------------------------
# Data and references.
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def wikitext_lines() -> list[str]:
    """Every line of WikiText-2 validation (blank lines and headings included)."""
    text = shared_path("wikitext2", "wiki.valid.tokens").read_text(encoding="utf-8")
    return text.split("\n")


@functools.cache
def sst2_sentences() -> list[str]:
    """The sentence column of SST-2 train and dev (TSV, quoting disabled: the text has unbalanced quotes)."""
    sentences = []
    for split in ("train", "dev"):
        with shared_path("glue", "SST-2", f"{split}.tsv").open(encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows)
            column = header.index("sentence")
            sentences.extend(row[column] for row in rows)
    return sentences


@functools.cache
def conll_sentences() -> list[str]:
    """CoNLL-2003 train/valid/test sentences: the first column of each block joined by spaces, -DOCSTART- skipped."""
    sentences = []
    for split in ("train", "valid", "test"):
        words: list[str] = []
        for line in shared_path("conll2003", f"{split}.txt").read_text(encoding="utf-8").split("\n"):
            fields = line.split()
            if fields and fields[0] != "-DOCSTART-":
                words.append(fields[0])
            elif not fields and words:
                sentences.append(" ".join(words))
                words = []
        if words:
            sentences.append(" ".join(words))
    return sentences


@functools.cache
def all_corpus_lines() -> list[str]:
    return wikitext_lines() + sst2_sentences() + conll_sentences()


@functools.cache
def sample_lines() -> list[str]:
    """A deterministic sample: 2000 lines evenly spread over the corpora, plus every non-ASCII line."""
    lines = all_corpus_lines()
    stride = len(lines) // 2000
    spread = lines[::stride][:2000]
    return spread + [line for line in lines if not line.isascii()]


@pytest.fixture(scope="module")
def vocab_path() -> pathlib.Path:
    return shared_path("vocab", "bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def reference(vocab_path):
    """transformers' slow BertTokenizer, uncased: the original tokenizer's behaviour."""
    transformers = pytest.importorskip("transformers", reason="install the test extra: pip install -e '.[test]'")
    return transformers.BertTokenizer(str(vocab_path), do_lower_case=True)


@pytest.fixture(scope="module")
def reference_cased(vocab_path):
    transformers = pytest.importorskip("transformers", reason="install the test extra: pip install -e '.[test]'")
    return transformers.BertTokenizer(str(vocab_path), do_lower_case=False)


@pytest.fixture(scope="module")
def wordpiece(vocab_path) -> WordPieceTokenizer:
    return WordPieceTokenizer(vocab_path)


def reference_ids(reference, text: str) -> list[int]:
    return reference.convert_tokens_to_ids(reference.tokenize(text))


def assert_same_ids(ours: list[list[int]], reference, texts: list[str]) -> None:
    """Id-for-id equality, reporting the first few differing texts with both token lists."""
    assert len(ours) == len(texts)
    diffs = []
    for text, ids in zip(texts, ours, strict=True):
        expected = reference_ids(reference, text)
        if ids != expected:
            diffs.append(
                f"{text[:80]!r}\n  ours: {reference.convert_ids_to_tokens(ids)[:20]}"
                f"\n  ref:  {reference.convert_ids_to_tokens(expected)[:20]}"
            )
    assert not diffs, f"{len(diffs)} of {len(texts)} texts differ:\n" + "\n".join(diffs[:5])


def code_point_chunks(code_points: list[int], contexts_per_chunk: int = 256) -> list[str]:
    """Texts that put each code point in several contexts: inside a word, alone, after a capital, before a mark."""
    contexts = [f"x{chr(c)}y {chr(c)} A{chr(c)}\u0301 " for c in code_points]
    return ["".join(contexts[i : i + contexts_per_chunk]) for i in range(0, len(contexts), contexts_per_chunk)]


# ----------------------------------------------------------------------------------------------------------
# WordPiece ids == the original tokenizer's.
# ----------------------------------------------------------------------------------------------------------


def test_matches_reference_on_corpus_sample_and_hard_strings(wordpiece, reference):
    texts = sample_lines() + HARD_STRINGS
    assert_same_ids([wordpiece.encode(t) for t in texts], reference, texts)
    assert wordpiece.encode_batch(texts) == [wordpiece.encode(t) for t in texts]


@pytest.mark.slow
def test_matches_reference_on_every_corpus_line(wordpiece, reference):
    texts = all_corpus_lines()
    assert len(texts) > 90_000
    assert_same_ids(wordpiece.encode_batch(texts), reference, texts)


def test_cased_matches_reference(vocab_path, reference_cased):
    cased = WordPieceTokenizer(vocab_path, lowercase=False)
    # Cased keeps a whitespace-separated special token whole even when it only appears after cleaning.
    texts = sample_lines()[::3] + HARD_STRINGS + ["x [MA\x00SK] y", "[SE\u200bP]", "中[CLS]", "a[MA\x07SK]b"]
    assert_same_ids(cased.encode_batch(texts), reference_cased, texts)


def test_every_ascii_character_in_context_matches_reference(wordpiece, reference):
    """All pairs of ASCII characters inside a word: proves the library pipeline used for ASCII is exact."""
    texts = [f"a{chr(c)}{chr(d)}b {chr(c)}Z" for c in range(128) for d in range(128)]
    assert_same_ids(wordpiece.encode_batch(texts), reference, texts)


def test_characters_where_the_fast_library_differs_match_reference(wordpiece, reference):
    texts = [f"x{c}y {c} A{c}\u0301 \u4e2d{c}" for c in DIVERGENT_CHARACTERS]
    assert_same_ids(wordpiece.encode_batch(texts), reference, texts)


def test_sampled_code_points_match_reference(wordpiece, reference):
    """Every 61st code point (surrogates included), each in several contexts."""
    texts = code_point_chunks(list(range(0, sys.maxunicode + 1, 61)))
    assert_same_ids(wordpiece.encode_batch(texts), reference, texts)


@pytest.mark.slow
@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_every_code_point_matches_reference(vocab_path, lowercase):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizer(str(vocab_path), do_lower_case=lowercase)
    texts = code_point_chunks(list(range(sys.maxunicode + 1)))
    assert_same_ids(WordPieceTokenizer(vocab_path, lowercase).encode_batch(texts), reference, texts)


def test_literal_special_tokens_become_special_ids(wordpiece, reference):
    ids = wordpiece.encode("a [MASK] b[SEP]c")
    assert ids == reference_ids(reference, "a [MASK] b[SEP]c")
    assert ids[1] == wordpiece.mask_id and ids[3] == wordpiece.sep_id
    assert wordpiece.encode("[mask]") == reference_ids(reference, "[mask]") != [wordpiece.mask_id]


def test_special_ids_and_vocab_match_reference(wordpiece, reference):
    assert wordpiece.vocab_size == len(reference.vocab) == 30522
    assert dict(wordpiece.vocab) == dict(reference.vocab)
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id) == (
        reference.pad_token_id,
        reference.unk_token_id,
        reference.cls_token_id,
        reference.sep_token_id,
        reference.mask_token_id,
    )
    assert wordpiece.convert_tokens_to_ids(["the", "##ing", "no-such-token"]) == reference.convert_tokens_to_ids(
        ["the", "##ing", "no-such-token"]
    )


def test_decode_and_convert_ids_to_tokens(wordpiece, reference):
    text = "Tokenization of unaffable words, isn't it?"
    ids = wordpiece.encode(text)
    tokens = wordpiece.convert_ids_to_tokens(ids)
    assert tokens == reference.convert_ids_to_tokens(ids)
    assert any(t.startswith("##") for t in tokens)
    assert wordpiece.decode(ids) == reference.convert_tokens_to_string(tokens)
    assert wordpiece.decode([wordpiece.cls_id, *ids], skip_special_tokens=True) == wordpiece.decode(ids)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        wordpiece.convert_ids_to_tokens([-1])


def test_tokenizers_survive_pickling(wordpiece, spm_model):
    """Data pipelines hand tokenizers to worker processes."""
    text = "Pickled na\u00efve [MASK] text"
    for tokenizer in (wordpiece, SentencePieceTokenizer(spm_model)):
        clone = pickle.loads(pickle.dumps(tokenizer))
        assert clone.encode_with_word_starts(text) == tokenizer.encode_with_word_starts(text)
        assert dict(clone.special_ids) == dict(tokenizer.special_ids)
        assert clone.encode_batch([]) == []


def test_encode_batch_rejects_a_single_string(wordpiece):
    with pytest.raises(TokenizerError, match="not one string"):
        wordpiece.encode_batch("a text")


# ----------------------------------------------------------------------------------------------------------
# Word starts (whole-word masking).
# ----------------------------------------------------------------------------------------------------------


def test_word_starts_are_exactly_the_non_continuation_pieces(wordpiece):
    texts = sample_lines()
    encoded = wordpiece.encode_batch_with_word_starts(texts)
    continuations = 0
    for text, (ids, starts) in zip(texts, encoded, strict=True):
        assert ids == wordpiece.encode(text)
        assert len(starts) == len(ids)
        tokens = wordpiece.convert_ids_to_tokens(ids)
        assert starts == [not t.startswith("##") for t in tokens], text
        continuations += starts.count(False)
    assert continuations > 1000  # the check above is not vacuous


def test_reassembled_words_match_reference_basic_tokenizer(wordpiece, reference):
    texts = [t for t in sample_lines() if "[" not in t] + [t for t in HARD_STRINGS if "[" not in t]
    unknown_words = 0
    for text in texts:
        ids, starts = wordpiece.encode_with_word_starts(text)
        words: list[str] = []
        for token, start in zip(wordpiece.convert_ids_to_tokens(ids), starts, strict=True):
            words.append(token) if start else words.__setitem__(-1, words[-1] + token.removeprefix("##"))
        # BertTokenizer.tokenize lowercases character by character before its basic tokenizer runs (so a
        # final capital sigma becomes U+03C3); the basic tokenizer alone would lowercase whole words (U+03C2).
        expected = reference.basic_tokenizer.tokenize("".join(c.lower() for c in text))
        assert wordpiece.basic_tokenize(text) == expected, text
        assert len(words) == len(expected), text
        for word, basic in zip(words, expected, strict=True):
            assert word in (basic, "[UNK]"), text
            unknown_words += word == "[UNK]" != basic
    assert unknown_words > 0  # long words and unknown characters were exercised


def test_word_starts_with_specials_and_non_ascii(wordpiece):
    ids, starts = wordpiece.encode_with_word_starts("Ångströms [MASK] naïveté")
    assert wordpiece.convert_ids_to_tokens(ids)[:3] == ["ang", "##strom", "##s"]
    assert starts == [not t.startswith("##") for t in wordpiece.convert_ids_to_tokens(ids)]
    assert starts[ids.index(wordpiece.mask_id)] is True
    assert wordpiece.encode_with_word_starts("") == ([], [])


# ----------------------------------------------------------------------------------------------------------
# Bad vocab files.
# ----------------------------------------------------------------------------------------------------------

_GOOD_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s"]


def _write(tmp_path: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_vocab_without_special_tokens_names_them_and_the_fix(tmp_path):
    path = _write(tmp_path, "vocab.txt", b"[PAD]\n[UNK]\n[SEP]\nthe\ncat\n")
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) \[CLS\] \[MASK\]\. .*bert-jax-train-vocab"):
        WordPieceTokenizer(path)


BAD_VOCABS = [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"\n\n \n", "is empty"),
    ("latin1.txt", "\n".join([*_GOOD_TOKENS, "café"]).encode("latin-1"), "is not UTF-8"),
    (
        "dups.txt",
        "\n".join([*_GOOD_TOKENS, "the", "cat"]).encode(),
        r"2 token\(s\) more than once: 'the' \(lines 6",
    ),
    ("tokenizer.json", json.dumps({"model": {"vocab": {"[PAD]": 0}}}).encode(), "is a JSON file"),
    ("list.json", json.dumps(_GOOD_TOKENS).encode(), "is a JSON file"),
    ("gap.txt", "\n".join([*_GOOD_TOKENS[:3], "", *_GOOD_TOKENS[3:]]).encode(), "line 4 is blank"),
    ("spm.vocab", "\n".join(f"{t}\t-1.5" for t in _GOOD_TOKENS).encode(), "whitespace.*SentencePiece .vocab"),
    ("nul.bin", b"[PAD]\n\x00\x01\x02\n", "binary file"),
]


@pytest.mark.parametrize("name, data, message", BAD_VOCABS, ids=[case[0] for case in BAD_VOCABS])
def test_bad_vocab_files_are_rejected_clearly(tmp_path, name, data, message):
    with pytest.raises(TokenizerError, match=message):
        WordPieceTokenizer(_write(tmp_path, name, data))


def test_missing_vocab_file_and_directory(tmp_path):
    with pytest.raises(TokenizerError, match="vocab file not found"):
        WordPieceTokenizer(tmp_path / "nope.txt")
    with pytest.raises(TokenizerError, match="not a file"):
        WordPieceTokenizer(tmp_path)


def test_sentencepiece_model_passed_as_vocab(spm_model):
    with pytest.raises(TokenizerError, match=r"is a SentencePiece model.*spm_model"):
        WordPieceTokenizer(spm_model)


def test_crlf_and_byte_order_mark_vocab_is_accepted(tmp_path):
    path = _write(tmp_path, "vocab.txt", "\ufeff".encode() + "\r\n".join(_GOOD_TOKENS).encode() + b"\r\n")
    tokenizer = WordPieceTokenizer(path)
    assert tokenizer.vocab_size == len(_GOOD_TOKENS)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("The cats dog")) == ["the", "cat", "##s", "[UNK]"]


# ----------------------------------------------------------------------------------------------------------
# SentencePiece.
# ----------------------------------------------------------------------------------------------------------


def _book_slice(tmp_path: pathlib.Path, book: str, chars: int) -> pathlib.Path:
    """The first `chars` characters of a Gutenberg book, as a training file."""
    text = shared_path("gutenberg", book).read_text(encoding="utf-8")[:chars]
    path = tmp_path / f"{book}.{chars}.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("spm")
    corpus = _book_slice(tmp, "pg11-alice-in-wonderland.txt", 120_000)
    return train_sentencepiece([corpus], 600, tmp / "spm.model")


def _held_out_lines() -> list[str]:
    text = shared_path("gutenberg", "pg84-frankenstein.txt").read_text(encoding="utf-8")
    return [line for line in text.split("\n")[200:800] if line.strip()]


def test_sentencepiece_matches_sentencepiece_package(spm_model):
    ours = SentencePieceTokenizer(spm_model)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    lines = [*_held_out_lines(), "Café naïve 😀 [MASK] x", ""]
    assert ours.encode_batch(lines) == [processor.encode(line) for line in lines]
    for line in lines:
        ids, starts = ours.encode_with_word_starts(line)
        pieces = processor.encode(line, out_type=str)
        assert ids == processor.encode(line) == ours.encode(line)
        assert starts == [p.startswith("\u2581") for p in pieces], line
        assert ours.convert_ids_to_tokens(ids) == [processor.id_to_piece(i) for i in ids]
        assert ours.decode(ids) == processor.decode(ids)
    assert ours.vocab_size == processor.get_piece_size() == 600
    assert ours.vocab[processor.id_to_piece(42)] == 42


def test_sentencepiece_special_ids(spm_model):
    ours = SentencePieceTokenizer(spm_model)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    assert [ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id] == [0, 1, 2, 3, 4]
    assert [processor.id_to_piece(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert processor.pad_id() == 0 and processor.unk_id() == 1
    assert all(processor.is_control(i) for i in (2, 3, 4))
    # Control symbols are never produced from text: "[MASK]" in the text is ordinary characters.
    assert ours.mask_id not in ours.encode("a [MASK] b")
    assert ours.decode([ours.cls_id, *ours.encode("alice"), ours.sep_id]) == "alice"


def _train_raw_spm(tmp_path: pathlib.Path, name: str, **options) -> pathlib.Path:
    """A SentencePiece model trained directly with the package (not via bert_jax), with `options`."""
    corpus = _book_slice(tmp_path, "pg11-alice-in-wonderland.txt", 60_000)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / name), vocab_size=300, minloglevel=2, **options
    )
    return tmp_path / f"{name}.model"


def test_sentencepiece_model_without_specials_is_rejected(tmp_path):
    model = _train_raw_spm(tmp_path, "plain")
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) \[PAD\] \[CLS\] \[SEP\] \[MASK\]"):
        SentencePieceTokenizer(model)


def test_sentencepiece_user_defined_specials_and_model_pad(tmp_path):
    model = _train_raw_spm(tmp_path, "userdef", user_defined_symbols="[CLS],[SEP],[MASK]", pad_id=3)
    ours = SentencePieceTokenizer(model)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    assert ours.pad_id == processor.pad_id() == 3 and ours.unk_id == processor.unk_id()
    assert [ours.cls_id, ours.sep_id, ours.mask_id] == [processor.piece_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]")]
    # User-defined symbols are matched in text.
    assert ours.mask_id in ours.encode("a [MASK] b")


def test_sentencepiece_bad_model_files(tmp_path, vocab_path):
    with pytest.raises(TokenizerError, match=r"not a SentencePiece model.*pass it as vocab_file"):
        SentencePieceTokenizer(vocab_path)
    with pytest.raises(TokenizerError, match="SentencePiece model not found"):
        SentencePieceTokenizer(tmp_path / "missing.model")


# ----------------------------------------------------------------------------------------------------------
# The factory.
# ----------------------------------------------------------------------------------------------------------


def test_load_tokenizer_picks_the_right_kind(vocab_path, spm_model):
    wordpiece = load_tokenizer(vocab_file=vocab_path, lowercase=False)
    assert isinstance(wordpiece, WordPieceTokenizer) and not wordpiece.lowercase
    assert isinstance(load_tokenizer(spm_model=spm_model), SentencePieceTokenizer)
    assert isinstance(wordpiece, tokenizers.Tokenizer)
    with pytest.raises(TokenizerError, match=r"exactly one.*got none"):
        load_tokenizer()
    with pytest.raises(TokenizerError, match=r"exactly one.*got vocab_file and spm_model"):
        load_tokenizer(vocab_file=vocab_path, spm_model=spm_model)


# ----------------------------------------------------------------------------------------------------------
# Training vocabularies.
# ----------------------------------------------------------------------------------------------------------

SENTENCE = "It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife."


def _assert_usable_vocab(path: pathlib.Path, max_size: int) -> WordPieceTokenizer:
    """Specials first, each token once, loadable, and a sentence of the book round-trips without [UNK]."""
    tokens = path.read_text(encoding="utf-8").split("\n")[:-1]
    assert tokens[:5] == list(SPECIAL_TOKENS)
    assert len(set(tokens)) == len(tokens) and 1000 < len(tokens) <= max_size
    tokenizer = WordPieceTokenizer(path)
    ids = tokenizer.encode(SENTENCE)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == " ".join(tokenizer.basic_tokenize(SENTENCE))
    return tokenizer


def test_train_wordpiece(tmp_path):
    pytest.importorskip("transformers")
    import transformers

    corpus = _book_slice(tmp_path, "pg1342-pride-and-prejudice.txt", 250_000)
    output = train_wordpiece([corpus], 2000, tmp_path / "out" / "vocab.txt")
    tokenizer = _assert_usable_vocab(output, 2000)
    # The original tokenizer reads the trained vocab the same way.
    reference = transformers.BertTokenizer(str(output), do_lower_case=True)
    assert tokenizer.encode(SENTENCE) == reference_ids(reference, SENTENCE)
    assert any(t.startswith("##") for t in tokenizer.convert_ids_to_tokens(tokenizer.encode("unwillingness")))

    with pytest.raises(FileExistsError, match=r"already exists.*overwrite"):
        train_wordpiece([corpus], 2000, output)
    train_wordpiece([corpus], 1500, output, overwrite=True)
    assert len(output.read_text(encoding="utf-8").split("\n")) <= 1501


def test_training_argument_errors(tmp_path):
    with pytest.raises(TokenizerError, match="input file not found"):
        train_wordpiece([tmp_path / "missing.txt"], 100, tmp_path / "v.txt")
    corpus = _write(tmp_path, "c.txt", b"some text\n")
    with pytest.raises(TokenizerError, match="must exceed"):
        train_wordpiece([corpus], 5, tmp_path / "v.txt")
    with pytest.raises(TokenizerError, match="model_type"):
        train_sentencepiece([corpus], 100, tmp_path / "m.model", model_type="word")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.train_vocab", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )


def test_train_vocab_cli(tmp_path):
    corpus = _book_slice(tmp_path, "pg1342-pride-and-prejudice.txt", 250_000)
    output = tmp_path / "vocab.txt"
    args = [f"--input_files={tmp_path}/*.txt", "--vocab_size=2000", f"--output={output}", "--model_type=wordpiece"]
    result = _run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    _assert_usable_vocab(output, 2000)

    before = output.read_bytes()
    refused = _run_cli(*args[:1], "--vocab_size=1500", *args[2:])
    assert refused.returncode != 0
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert output.read_bytes() == before

    model = tmp_path / "spm" / "tokenizer.model"
    result = _run_cli(f"--input_files={corpus}", "--vocab_size=800", f"--output={model}", "--model_type=sentencepiece")
    assert result.returncode == 0, result.stderr
    spm = SentencePieceTokenizer(model)
    assert spm.vocab_size == 800
    assert [spm.pad_id, spm.unk_id, spm.cls_id, spm.sep_id, spm.mask_id] == [0, 1, 2, 3, 4]
    assert spm.decode(spm.encode(SENTENCE)) == SENTENCE.lower()
