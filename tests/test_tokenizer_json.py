"""Hugging Face tokenizer.json files (`HuggingFaceTokenizer`): ids, special tokens, word starts, errors.

Every tokenizer.json is made here with the `tokenizers` library (nothing is downloaded):
  * a byte-level BPE trained on WikiText-2 lines, its special tokens added after the vocabulary with a
    TemplateProcessing post-processor that adds [CLS]/[SEP], as ModernBERT's tokenizer.json is laid out;
  * a WordPiece one from the BERT uncased vocab.txt (BertNormalizer + BertPreTokenizer): an independent check
    against our own `WordPieceTokenizer`, id for id and flag for flag.
"""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bert_jax import tokenizers
from bert_jax.tokenizers import HuggingFaceTokenizer, TokenizerError, WordPieceTokenizer, load_tokenizer
from tests.conftest import shared_path

BPE_SPECIALS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")
BPE_VOCAB = 2000
# Single-spaced text with punctuation, a contraction, digits, non-ASCII and a special token spelled out.
EXTRA_TEXTS = (
    "The unbelievable cat's hat.",
    "In 2019 the café served crème brûlée , naïvely .",
    "Fill in the [MASK] please",
    "日本語 text",
    "",
)


def wikitext_lines(count: int | None = None) -> list[str]:
    """Non-empty lines of WikiText-2's validation split, stripped (single spaces throughout)."""
    path = shared_path("wikitext2", "wiki.valid.tokens")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:count]


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory) -> pathlib.Path:
    """A byte-level BPE on 400 WikiText lines, ModernBERT's layout: specials added after the vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([line for line in wikitext_lines(600) if not line.startswith("=")][:400], trainer)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, lstrip=token == "[MASK]", normalized=False) for token in BPE_SPECIALS]
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def bert_vocab() -> pathlib.Path:
    return shared_path("vocab", "bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def wordpiece_file(tmp_path_factory, bert_vocab) -> pathlib.Path:
    """BERT uncased as a tokenizer.json: WordPiece.from_file + BertNormalizer + BertPreTokenizer."""
    tokenizer = Tokenizer(models.WordPiece.from_file(str(bert_vocab), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.add_special_tokens(list(tokenizers.SPECIAL_TOKENS))
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", 102), ("[CLS]", 101))
    tokenizer.decoder = decoders.WordPiece()
    path = tmp_path_factory.mktemp("wordpiece") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def _small_json(tmp_path: pathlib.Path, tokens: list[str], unk: str | None, name: str = "tokenizer.json") -> str:
    """A whitespace-split WordLevel tokenizer.json over `tokens` (ids in order)."""
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / name
    tokenizer.save(str(path))
    return str(path)


def _grouped(tokenizer: tokenizers.Tokenizer, text: str) -> list[str]:
    """The pieces of `text` joined into the words its word-start flags mark."""
    ids, starts = tokenizer.encode_with_word_starts(text)
    words: list[str] = []
    for token, start in zip(tokenizer.convert_ids_to_tokens(ids), starts, strict=True):
        if start:
            words.append(token)
        else:
            words[-1] += token
    return words


# ----------------------------------------------------------------------------------------------------------
# Ids and special tokens.
# ----------------------------------------------------------------------------------------------------------


def test_bpe_ids_are_the_librarys_without_the_post_processors_specials(bpe_file):
    ours = load_tokenizer(tokenizer_file=bpe_file)
    library = Tokenizer.from_file(str(bpe_file))
    texts = wikitext_lines(1000) + list(EXTRA_TEXTS)
    expected = [library.encode(text, add_special_tokens=False).ids for text in texts]
    assert ours.encode_batch(texts) == expected
    assert [ids for ids, _ in ours.encode_batch_with_word_starts(texts)] == expected
    assert ours.encode(texts[0]) == expected[0]
    # The file's post-processor does add [CLS] ... [SEP]; our encoding leaves that to the pipeline.
    with_specials = library.encode(texts[0]).ids
    assert with_specials == [ours.cls_id, *expected[0], ours.sep_id]
    assert ours.cls_id not in expected[0] and ours.sep_id not in expected[0]
    # A special token spelled out in the text is its id (an added token), as in WordPieceTokenizer.
    assert ours.mask_id in ours.encode("Fill in the [MASK] please")
    assert ours.decode(ours.encode(texts[0])) == texts[0]  # byte-level BPE decodes losslessly


def test_bpe_special_ids_and_vocab_size(bpe_file):
    ours = HuggingFaceTokenizer(bpe_file)
    library = Tokenizer.from_file(str(bpe_file))
    assert dict(ours.special_ids) == {token: library.token_to_id(token) for token in BPE_SPECIALS}
    # Added after the trained vocabulary, as ModernBERT's are: the model's size counts them.
    assert sorted(ours.special_ids.values()) == list(range(BPE_VOCAB, BPE_VOCAB + 5))
    assert ours.vocab_size == library.get_vocab_size(with_added_tokens=True) == BPE_VOCAB + 5
    assert library.get_vocab_size(with_added_tokens=False) == BPE_VOCAB
    assert ours.convert_ids_to_tokens([ours.mask_id, ours.pad_id]) == ["[MASK]", "[PAD]"]
    assert ours.convert_tokens_to_ids(["[CLS]", "no-such-token"]) == [ours.cls_id, ours.unk_id]
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.convert_ids_to_tokens([ours.vocab_size])


def test_truncation_and_padding_in_the_file_are_ignored(bpe_file, tmp_path):
    library = Tokenizer.from_file(str(bpe_file))
    library.enable_truncation(max_length=4)
    library.enable_padding(length=64, pad_id=BPE_VOCAB + 3, pad_token="[PAD]")
    path = tmp_path / "tokenizer.json"
    library.save(str(path))
    text = wikitext_lines(1)[0]
    ids = HuggingFaceTokenizer(path).encode(text)
    assert ids == Tokenizer.from_file(str(bpe_file)).encode(text, add_special_tokens=False).ids and len(ids) > 4


def test_wordpiece_json_equals_our_wordpiece_tokenizer(wordpiece_file, bert_vocab):
    """An independent check both ways: the library's BERT pipeline from a tokenizer.json against our exact
    WordPiece, ids and word starts, on every WikiText-2 validation line (428 of them with non-ASCII text)."""
    ours_json = load_tokenizer(tokenizer_file=wordpiece_file)
    wordpiece = WordPieceTokenizer(bert_vocab)
    texts = wikitext_lines() + list(EXTRA_TEXTS)
    assert sum(not text.isascii() for text in texts) > 100
    assert ours_json.encode_batch_with_word_starts(texts) == wordpiece.encode_batch_with_word_starts(texts)
    assert ours_json.encode_batch(texts) == wordpiece.encode_batch(texts)
    assert dict(ours_json.special_ids) == dict(wordpiece.special_ids)
    assert ours_json.vocab_size == wordpiece.vocab_size == 30522


def test_roberta_style_names_and_the_models_own_unknown_token(tmp_path):
    roberta = _small_json(tmp_path, ["<s>", "<pad>", "</s>", "<unk>", "hello", "world", "<mask>"], "<unk>")
    tokenizer = HuggingFaceTokenizer(roberta)
    assert dict(tokenizer.special_ids) == {"[CLS]": 0, "[PAD]": 1, "[SEP]": 2, "[UNK]": 3, "[MASK]": 6}
    assert tokenizer.special_tokens == {
        "[CLS]": "<s>",
        "[PAD]": "<pad>",
        "[SEP]": "</s>",
        "[UNK]": "<unk>",
        "[MASK]": "<mask>",
    }
    assert tokenizer.encode("hello there world") == [4, 3, 5]
    oov = _small_json(tmp_path, ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "<oov>", "a"], "<oov>", name="oov.json")
    assert HuggingFaceTokenizer(oov).unk_id == 4  # no [UNK] or <unk>: the model's unknown token, whatever its name


@pytest.mark.parametrize(
    "tokens, missing",
    [
        (["[CLS]", "[SEP]", "[PAD]", "[UNK]", "a"], r"\[MASK\] \(or <mask>\)"),
        (["[CLS]", "[SEP]", "[MASK]", "[UNK]", "a"], r"\[PAD\] \(or <pad>\)"),
        (["<s>", "</s>", "<unk>", "a"], r"\[PAD\] \(or <pad>\), \[MASK\] \(or <mask>\)"),
    ],
)
def test_a_missing_mask_or_pad_token_is_one_line_naming_it(tmp_path, tokens, missing):
    path = _small_json(tmp_path, tokens, tokens[-2])
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) " + missing) as raised:
        load_tokenizer(tokenizer_file=path)
    assert "\n" not in str(raised.value)


def test_other_files_passed_as_tokenizer_file_say_what_they_are(tmp_path, bert_vocab):
    with pytest.raises(TokenizerError, match="pass it as vocab_file"):
        load_tokenizer(tokenizer_file=bert_vocab)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(TokenizerError, match=r"is not a Hugging Face tokenizer\.json"):
        load_tokenizer(tokenizer_file=config)
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tokenizer_file=tmp_path / "missing.json")


def test_pickles_for_worker_processes(bpe_file):
    tokenizer = HuggingFaceTokenizer(bpe_file)
    clone = pickle.loads(pickle.dumps(tokenizer))
    texts = list(EXTRA_TEXTS)
    assert clone.encode_batch_with_word_starts(texts) == tokenizer.encode_batch_with_word_starts(texts)
    assert dict(clone.special_ids) == dict(tokenizer.special_ids)
    with pytest.raises(TokenizerError, match="not one string"):
        tokenizer.encode_batch("a text")


def test_lowercase_does_not_apply(bpe_file):
    cased = load_tokenizer(tokenizer_file=bpe_file, lowercase=True)
    assert cased.encode("The Cat") == load_tokenizer(tokenizer_file=bpe_file, lowercase=False).encode("The Cat")
    assert cased.encode("The Cat") != cased.encode("the cat")  # no normalizer in the file: case is kept


# ----------------------------------------------------------------------------------------------------------
# Word starts.
# ----------------------------------------------------------------------------------------------------------


def test_word_starts_hand_checked(bpe_file, wordpiece_file):
    bpe = HuggingFaceTokenizer(bpe_file)
    ids, starts = bpe.encode_with_word_starts("The unbelievable cat")
    pieces = bpe.convert_ids_to_tokens(ids)
    assert len(pieces) > 3, pieces  # "unbelievable" is several pieces of this small vocabulary
    # "The" | "Ġun..." + its continuations | "Ġcat": the Ġ pieces start words, the rest of the word does not.
    assert pieces[0] == "The" and pieces[1].startswith("Ġun") and pieces[-1] == "Ġcat"
    assert starts == [True, True] + [False] * (len(pieces) - 3) + [True]
    # Byte-level words are GPT-2's: " cat", "'s", " hat", "." (split by the pre-tokenizer, whatever the merges).
    assert _grouped(bpe, "The unbelievable cat's hat.") == ["The", "Ġunbelievable", "Ġcat", "'s", "Ġhat", "."]
    # A multi-byte character is one or more byte pieces inside its word, never a word of its own.
    assert _grouped(bpe, "a crème brûlée") == ["a", "Ġcr" + "Ã¨" + "me", "Ġbr" + "Ã»" + "l" + "Ã©" + "e"]
    assert _grouped(bpe, "Fill the [MASK] now") == ["Fill", "Ġthe", "[MASK]", "Ġnow"]

    wordpiece = HuggingFaceTokenizer(wordpiece_file)
    ids, starts = wordpiece.encode_with_word_starts("The tokenizable cat's hat.")
    assert wordpiece.convert_ids_to_tokens(ids) == ["the", "token", "##iza", "##ble", "cat", "'", "s", "hat", "."]
    assert starts == [True, True, False, False, True, True, True, True, True]


def test_bpe_word_starts_are_the_pre_tokenizers_words(bpe_file):
    """On WikiText: a piece starts a word exactly when it is the first piece of one of the pre-tokenizer's words
    (computed here from `pre_tokenize_str`'s offsets), and every "Ġ" piece does."""
    tokenizer = HuggingFaceTokenizer(bpe_file)
    pre_tokenizer = Tokenizer.from_file(str(bpe_file)).pre_tokenizer
    texts = wikitext_lines(1000)
    checked = 0
    for text, (ids, starts) in zip(texts, tokenizer.encode_batch_with_word_starts(texts), strict=True):
        word_offsets = {start for _, (start, _) in pre_tokenizer.pre_tokenize_str(text)}
        offsets = tokenizer.tokenizer.encode(text, add_special_tokens=False).offsets
        expected = [
            start in word_offsets and (k == 0 or offsets[k - 1][0] != start) for k, (start, _) in enumerate(offsets)
        ]
        assert starts == expected, text
        pieces = tokenizer.convert_ids_to_tokens(ids)
        assert all(start for piece, start in zip(pieces, starts, strict=True) if piece.startswith("Ġ")), text
        checked += sum(not start for start in starts)
    assert checked > 1000  # plenty of continuation pieces
