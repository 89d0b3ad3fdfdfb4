"""Hugging Face tokenizer.json files (`HuggingFaceTokenizer`): ids, special tokens, word starts, errors, configs, and
pretraining on one end to end (corpus, whole-word masking, checkpoint, export, fine-tuning's tokenizer from it).

Every tokenizer.json is made here with the `tokenizers` library (nothing is downloaded):
  * a byte-level BPE trained on WikiText-2 lines, its special tokens added after the vocabulary with a
    TemplateProcessing post-processor that adds [CLS]/[SEP], as ModernBERT's tokenizer.json is laid out;
  * a WordPiece one from the BERT uncased vocab.txt (BertNormalizer + BertPreTokenizer): an independent check
    against our own `WordPieceTokenizer`, id for id and flag for flag.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import runpy
import subprocess
import sys
import time

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bert_jax import tokenizers
from bert_jax.errors import ConfigError
from bert_jax.jobs import config as job_config
from bert_jax.tokenizers import HuggingFaceTokenizer, TokenizerError, WordPieceTokenizer, load_tokenizer
from bert_jax.training import checkpoint
from tests.conftest import REPO_ROOT, shared_path

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


# ----------------------------------------------------------------------------------------------------------
# Configs and saved tokenizers.
# ----------------------------------------------------------------------------------------------------------


def _tiny_config():
    return runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()


def test_exactly_one_tokenizer(bpe_file, bert_vocab):
    with pytest.raises(TokenizerError, match=r"exactly one of .*got vocab_file and tokenizer_file"):
        load_tokenizer(vocab_file=bert_vocab, tokenizer_file=bpe_file)
    with pytest.raises(TokenizerError, match=r"exactly one of .*tokenizer_file.*got none"):
        load_tokenizer()
    assert isinstance(load_tokenizer(tokenizer_file=str(bpe_file)), HuggingFaceTokenizer)

    config = _tiny_config()
    config.data.tokenizer_file = str(bpe_file)  # the demo sets vocab_file
    with pytest.raises(ConfigError, match=r"data\.vocab_file and data\.tokenizer_file are both set.*") as raised:
        job_config.parse(config, expect="pretrain")
    assert "--config.data.vocab_file=''" in str(raised.value) and "\n" not in str(raised.value)
    config.data.vocab_file = ""
    job = job_config.parse(config, expect="pretrain")
    assert job.data.tokenizer_file == str(bpe_file)
    config.data.tokenizer_file = ""
    with pytest.raises(ConfigError, match=r"No tokenizer: set data\.vocab_file .* data\.tokenizer_file"):
        job_config.parse(config, expect="pretrain")
    config.data.corpus_dir = "/some/corpus"  # a built corpus knows its vocabulary
    assert job_config.parse(config, expect="pretrain").data.corpus_dir == "/some/corpus"

    finetune = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
    finetune.vocab_file, finetune.tokenizer_file = str(bert_vocab), str(bpe_file)
    with pytest.raises(ConfigError, match=r"vocab_file and tokenizer_file are both set") as raised:
        job_config.parse(finetune, expect="finetune")
    assert "\n" not in str(raised.value)


def test_a_tokenizer_json_on_gs(gcs, bpe_file, tmp_path):
    """Read as the other tokenizer files are: a verified copy in the host cache, and into the checkpoint payload."""
    from bert_jax import storage

    bucket = gcs.create_bucket(f"t-tokenizer-json-{time.time_ns() % 10**8}")
    remote = f"{bucket}/tokenizers/tokenizer.json"
    storage.upload_file(str(bpe_file), remote)
    tokenizer = load_tokenizer(tokenizer_file=remote)
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    assert tokenizer.encode("The unbelievable cat") == HuggingFaceTokenizer(bpe_file).encode("The unbelievable cat")
    assert checkpoint.tokenizer_payload(tokenizer_file=remote) == {"tokenizer.json": bpe_file.read_text("utf-8")}


def test_checkpoint_payload_round_trip(bpe_file, tmp_path):
    payload = checkpoint.tokenizer_payload(tokenizer_file=str(bpe_file))
    assert set(payload) == {"tokenizer.json"}
    json.dumps(payload)  # what the checkpoint's JSON item holds
    restored = checkpoint.load_payload_tokenizer(payload, str(tmp_path))
    assert isinstance(restored, HuggingFaceTokenizer)
    text = "The unbelievable cat"
    assert restored.encode_with_word_starts(text) == HuggingFaceTokenizer(bpe_file).encode_with_word_starts(text)
    with pytest.raises(checkpoint.CheckpointError, match="No tokenizer among the saved files"):
        checkpoint.load_payload_tokenizer({}, str(tmp_path))


def _build_corpus_cli(*flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bert_jax_tools.build_corpus", *flags]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)


def test_build_corpus_cli_takes_a_tokenizer_file(bpe_file, bert_vocab, tmp_path):
    from bert_jax.data import corpus

    sample = shared_path("bert_sample", "sample_text.txt")
    common = [f"--input_files={sample}", "--max_seq_length=64", "--num_shards=1", "--eval_fraction=0"]
    built = _build_corpus_cli(*common, f"--tokenizer_file={bpe_file}", f"--output_dir={tmp_path / 'c'}")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "Read 1 file(s): 3 documents, 31 sentences." in built.stdout
    (dataset,) = corpus.find_dataset_dirs(tmp_path / "c")
    metadata = corpus.corpus_metadata(dataset)
    tokenizer = HuggingFaceTokenizer(bpe_file)
    assert int(metadata["vocab_size"]) == tokenizer.vocab_size
    assert {k: int(v) for k, v in metadata["special_ids"].items()} == dict(tokenizer.special_ids)
    both = _build_corpus_cli(
        *common, f"--tokenizer_file={bpe_file}", f"--vocab_file={bert_vocab}", f"--output_dir={tmp_path / 'd'}"
    )
    assert both.returncode != 0 and "Traceback" not in both.stderr
    last = both.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-jax-build-corpus: error: pass exactly one of vocab_file"), last
    assert "got vocab_file and tokenizer_file" in last


# ----------------------------------------------------------------------------------------------------------
# End to end: corpus, pretraining with whole-word masking, checkpoint, export, fine-tuning's tokenizer.
# ----------------------------------------------------------------------------------------------------------


def _words(tokens: np.ndarray, word_starts: np.ndarray, length: int, specials: set[int]) -> list[list[int]]:
    """The positions of each word of one row, as masking sees them (a special token ends a word)."""
    words: list[list[int]] = []
    previous_special = True
    for position in range(length):
        if int(tokens[position]) in specials:
            previous_special = True
            continue
        if word_starts[position] or previous_special:
            words.append([])
        words[-1].append(position)
        previous_special = False
    return words


def test_pretraining_on_a_tokenizer_json_masks_whole_words_and_carries_it_to_fine_tuning(
    bpe_file, tmp_path, monkeypatch
):
    from bert_jax.data import corpus, pipeline
    from bert_jax.jobs import finetune_plan, pretraining
    from bert_jax.training import export

    lines = wikitext_lines(1500)
    text = tmp_path / "wiki.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = HuggingFaceTokenizer(bpe_file)

    masked_batches = []
    original_mask_batch = pipeline.mask_batch

    def recording_mask_batch(tokens, word_starts, example_ids, config, **kwargs):
        out = original_mask_batch(tokens, word_starts, example_ids, config, **kwargs)
        masked_batches.append((tokens.copy(), word_starts.copy(), kwargs["lengths"].copy(), config, out))
        return out

    monkeypatch.setattr(pipeline, "mask_batch", recording_mask_batch)
    config = _tiny_config()
    config.data.train_files = str(text)
    config.data.vocab_file = ""
    config.data.tokenizer_file = str(bpe_file)
    config.data.whole_word = True
    config.data.num_workers = 0
    config.data.eval_fraction = 0.05
    config.num_train_steps, config.global_batch_size = 3, 8
    config.log_every_steps, config.eval_every_steps, config.eval_batches = 1, 3, 1
    config.peak_flops_per_device = 1e11
    config.optimizer.warmup_steps = 1
    workdir = tmp_path / "run"
    result = pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), str(workdir))
    assert result.step == 3 and np.isfinite(result.eval_metrics["loss"])

    # The corpus: built with the tokenizer.json (its vocabulary and special ids), the file kept beside it.
    (corpus_dir,) = corpus.find_dataset_dirs(workdir / "corpus")
    metadata = corpus.corpus_metadata(corpus_dir)
    assert int(metadata["vocab_size"]) == tokenizer.vocab_size == BPE_VOCAB + 5
    assert {k: int(v) for k, v in metadata["special_ids"].items()} == dict(tokenizer.special_ids)
    assert (pathlib.Path(corpus_dir) / "tokenizer.json").read_bytes() == bpe_file.read_bytes()

    # Whole-word masking on the batches the job trained and evaluated on: a word is masked whole or not at all.
    assert masked_batches
    specials = {tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id}
    multi_piece_words_masked = 0
    for tokens, word_starts, lengths, masking, out in masked_batches:
        assert (
            masking.whole_word and masking.mask_id == tokenizer.mask_id and masking.vocab_size == tokenizer.vocab_size
        )
        for row in range(len(tokens)):
            pieces = tokenizer.convert_ids_to_tokens(tokens[row, : lengths[row]])
            # The stored flags are the tokenizer's: every "Ġ" piece starts a word.
            assert all(word_starts[row, k] for k, piece in enumerate(pieces) if piece.startswith("Ġ"))
            masked = set(out["masked_lm_positions"][row][out["masked_lm_weights"][row] > 0].tolist())
            assert masked
            for word in _words(tokens[row], word_starts[row], lengths[row], specials):
                hit = masked & set(word)
                assert not hit or hit == set(word), (pieces, word, sorted(masked))
                multi_piece_words_masked += bool(hit) and len(word) > 1
    assert multi_piece_words_masked > 10  # the check covered words of several pieces

    # Checkpoint and exports carry the tokenizer.json.
    directory = checkpoint.checkpoint_dir(str(workdir))
    ckpt = checkpoint.Checkpointer(directory, save_every_steps=1, async_save=False, remove_unfinished=False)
    try:
        assert ckpt.read_tokenizer(3) == {"tokenizer.json": bpe_file.read_text(encoding="utf-8")}
    finally:
        ckpt.close()
    hf_dir, native_dir = workdir / "export" / "hf", workdir / "export" / "bert_jax"
    for directory in (hf_dir, native_dir):
        assert (directory / "tokenizer.json").read_bytes() == bpe_file.read_bytes()
        assert not (directory / "vocab.txt").exists()
    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert hf_config["vocab_size"] == tokenizer.vocab_size and hf_config["pad_token_id"] == tokenizer.pad_id
    tokenizer_config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["mask_token"] == "[MASK]" and tokenizer_config["pad_token"] == "[PAD]"
    exported = tmp_path / "exported"
    export.export_checkpoint(str(workdir), str(exported), fmt="hf")
    assert (exported / "tokenizer.json").read_bytes() == bpe_file.read_bytes()

    # Fine-tuning finds it: from the export, from the workdir's checkpoint, and as its own setting.
    sentence = "The unbelievable cat sat on the mat."
    for init_from in (native_dir, hf_dir, workdir):
        finetune = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
        finetune.init_from = str(init_from)
        model_config, found, _, payload = finetune_plan.model_and_tokenizer(job_config.parse(finetune))
        assert isinstance(found, HuggingFaceTokenizer), init_from
        assert set(payload) == {"tokenizer.json"}
        assert model_config.vocab_size == found.vocab_size == tokenizer.vocab_size
        assert found.encode(sentence) == tokenizer.encode(sentence)
    finetune = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
    finetune.tokenizer_file, finetune.model.size = str(bpe_file), "tiny"
    model_config, found, _, _ = finetune_plan.model_and_tokenizer(job_config.parse(finetune))
    assert isinstance(found, HuggingFaceTokenizer) and model_config.vocab_size == tokenizer.vocab_size

    # transformers reads the exported tokenizer as ours does.
    transformers = pytest.importorskip("transformers")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tokenizer(sentence, add_special_tokens=False)["input_ids"] == tokenizer.encode(sentence)
    assert hf_tokenizer.mask_token_id == tokenizer.mask_id and hf_tokenizer.pad_token_id == tokenizer.pad_id
