"""The TFDS corpus builder: real text -> sharded NSP instances; Beam equals local; reuse; bad input."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bert_jax import tokenizers
from bert_jax.data import documents
from bert_jax.data.corpus import CorpusOptions, build_corpus, find_dataset_dirs, open_corpus
from tests.conftest import REPO_ROOT, shared_path

CLS, SEP = 101, 102


def _options(**overrides) -> CorpusOptions:
    files = (
        str(shared_path("bert_sample", "sample_text.txt")),
        str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt")),
    )
    fields = dict(input_files=files, vocab_file=str(shared_path("vocab", "bert-base-uncased-vocab.txt")))
    fields.update(overrides)
    return CorpusOptions(**fields)


def _all(dataset_dir: str, split: str) -> list[dict]:
    source = open_corpus(dataset_dir, split)
    return source.__getitems__(list(range(len(source))))


def _content(items: list[dict]) -> list[tuple]:
    return sorted(
        (tuple(x["tokens"]), tuple(x["segment_ids"]), tuple(x["word_starts"]), int(x["is_random_next"])) for x in items
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return build_corpus(_options(max_seq_length=64), out, num_shards=3)


def test_instances_have_the_original_layout(built):
    items = _all(built.dataset_dir, "train")
    assert built.num_examples["train"] == len(items) > 300
    assert built.num_examples["validation"] > 0
    for x in items:
        tokens, segments = x["tokens"], x["segment_ids"]
        assert len(tokens) <= 64 and tokens.dtype == np.int32
        seps = np.flatnonzero(tokens == SEP)
        assert tokens[0] == CLS and len(seps) == 2 and seps[1] == len(tokens) - 1
        assert seps[0] >= 2 and seps[1] - seps[0] >= 2  # A and B are non-empty
        np.testing.assert_array_equal(segments, (np.arange(len(tokens)) > seps[0]).astype(np.int32))
        assert x["word_starts"].shape == tokens.shape
    labels = np.array([x["is_random_next"] for x in items])
    assert 0.35 < labels.mean() < 0.75  # both kinds occur (the exact 50% is checked on chunked pairs elsewhere)


def test_segments_are_real_contiguous_text(built):
    """Each non-random A and B is a contiguous run of the document's tokens (an independent tokenizer)."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizerFast(str(shared_path("vocab", "bert-base-uncased-vocab.txt")))
    alice = next(documents.iter_documents([str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt"))]))
    stream = " " + " ".join(str(i) for s in alice for i in reference(s, add_special_tokens=False)["input_ids"]) + " "
    checked = 0
    for x in _all(built.dataset_dir, "train")[:400]:
        tokens = x["tokens"]
        seps = np.flatnonzero(tokens == SEP)
        a, b = tokens[1 : seps[0]], tokens[seps[0] + 1 : seps[1]]
        joined = " " + " ".join(map(str, a)) + " "
        if joined in stream:
            checked += 1
            if not x["is_random_next"]:
                assert " " + " ".join(map(str, b)) + " " in stream
    assert checked > 250  # most instances come from Alice (the sample text is 3 short documents)


def test_shards_and_vocab_are_written(built):
    files = os.listdir(built.dataset_dir)
    assert sum(f.startswith("bert_pretraining_corpus-train.array_record") for f in files) == 3
    assert "vocab.txt" in files
    assert open_corpus(os.path.dirname(os.path.dirname(built.dataset_dir)), "train") is not None


def test_deterministic_for_a_seed_and_reused_not_overwritten(built, tmp_path):
    again = build_corpus(_options(max_seq_length=64), tmp_path / "again", num_shards=2)
    assert _content(_all(again.dataset_dir, "train")) == _content(_all(built.dataset_dir, "train"))
    shard = os.path.join(again.dataset_dir, sorted(os.listdir(again.dataset_dir))[0])
    mtime = os.path.getmtime(shard)
    reused = build_corpus(_options(max_seq_length=64), tmp_path / "again", num_shards=2)
    assert reused.reused and os.path.getmtime(shard) == mtime
    other = build_corpus(_options(max_seq_length=64, seed=7), tmp_path / "again", num_shards=2)
    assert other.dataset_dir != again.dataset_dir and len(find_dataset_dirs(tmp_path / "again")) == 2
    assert _content(_all(other.dataset_dir, "train")) != _content(_all(again.dataset_dir, "train"))
    with pytest.raises(documents.CorpusError, match="holds 2 corpora"):
        open_corpus(tmp_path / "again")


def test_beam_with_one_bucket_equals_the_local_build(built, tmp_path):
    pytest.importorskip("apache_beam")
    beam = build_corpus(_options(max_seq_length=64, use_beam=True, beam_buckets=1), tmp_path, num_shards=2)
    for split in ("train", "validation"):
        assert _content(_all(beam.dataset_dir, split)) == _content(_all(built.dataset_dir, split))


@pytest.mark.slow
def test_beam_with_buckets_is_valid_and_deterministic(tmp_path):
    pytest.importorskip("apache_beam")
    options = _options(max_seq_length=64, use_beam=True, beam_buckets=4)
    first = build_corpus(options, tmp_path / "a", num_shards=2)
    second = build_corpus(dataclasses.replace(options), tmp_path / "b", num_shards=2)
    items = _all(first.dataset_dir, "train")
    assert _content(items) == _content(_all(second.dataset_dir, "train"))
    assert all(len(x["tokens"]) <= 64 and x["tokens"][0] == CLS for x in items)


def test_existing_tfds_text_dataset_as_input(tmp_path):
    """A prepared TFDS dataset with a `text` feature (the layout of TFDS `wikipedia`) is read from disk."""
    articles = [
        "Anarchism is a political philosophy. It is sceptical of authority.\nIt calls for the abolition of the state.",
        "Autism is a neurodevelopmental condition. It affects communication.",
        "Albedo is the fraction of sunlight that is reflected. Fresh snow reflects most of it.",
    ]
    builder = _TinyWiki(data_dir=str(tmp_path / "tfds"), articles=articles)
    builder.download_and_prepare()
    spec = f"tfds:{builder.data_dir}#train"
    docs = list(documents.iter_documents(documents.expand_input_files(spec)))
    assert sorted(len(d) for d in docs) == [2, 2, 3]
    assert "It calls for the abolition of the state." in docs[[len(d) for d in docs].index(3)]
    result = build_corpus(_options(input_files=(spec,), max_seq_length=32, eval_fraction=0.0), tmp_path / "out")
    assert result.num_examples["train"] >= 3
    with pytest.raises(documents.CorpusError, match="not a prepared TFDS dataset"):
        documents.expand_input_files(f"tfds:{tmp_path}")


class _TinyWiki(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, articles: list[str], **kwargs):
        self._articles = articles
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"title": tfds.features.Text(), "text": tfds.features.Text()})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, text in enumerate(self._articles):
            yield i, {"title": f"t{i}", "text": text}


def test_a_corpus_too_small_for_its_validation_split_is_a_clear_error(tmp_path):
    sample = str(shared_path("bert_sample", "sample_text.txt"))
    with pytest.raises(documents.CorpusError, match=r"too small for eval_fraction=0\.001"):
        build_corpus(_options(input_files=(sample,), eval_fraction=0.001), tmp_path)


def test_empty_corpus_and_bad_vocab_fail_before_writing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(documents.CorpusError, match="corpus is empty"):
        build_corpus(_options(input_files=(str(empty),)), tmp_path / "out1")
    assert find_dataset_dirs(tmp_path / "out1") == []
    bad_vocab = tmp_path / "vocab.txt"
    bad_vocab.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(tokenizers.TokenizerError, match=r"\[CLS\]"):
        build_corpus(_options(vocab_file=str(bad_vocab)), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    with pytest.raises(documents.CorpusError, match="No prepared corpus"):
        open_corpus(tmp_path / "out1")


def test_cli_builds_and_reports_user_errors_in_one_line(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    vocab = str(shared_path("vocab", "bert-base-uncased-vocab.txt"))
    sample = str(shared_path("bert_sample", "sample_text.txt"))
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax_tools.build_corpus",
            f"--input_files={sample}",
            f"--vocab_file={vocab}",
            f"--output_dir={tmp_path / 'c'}",
            "--max_seq_length=64",
            "--num_shards=2",
            "--eval_fraction=0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "Read 1 file(s): 3 documents, 31 sentences." in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax_tools.build_corpus",
            f"--input_files={tmp_path / 'missing*.txt'}",
            f"--vocab_file={vocab}",
            f"--output_dir={tmp_path / 'd'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("bert-jax-build-corpus: error: Input")


def test_sentencepiece_corpus_builds_and_masks_with_its_own_special_ids(tmp_path):
    """A SentencePiece model (trained here on a real book) drives the same builder and masking config."""
    from bert_jax.data.corpus import masking_config_from_corpus

    book = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    model = tokenizers.train_sentencepiece([book], 800, tmp_path / "spm.model")
    spm = tokenizers.SentencePieceTokenizer(model)
    options = _options(input_files=(str(book),), vocab_file=None, spm_model=str(model), max_seq_length=64)
    result = build_corpus(options, tmp_path / "out", num_shards=2)
    items = _all(result.dataset_dir, "train")
    assert len(items) > 100
    for x in items[:200]:
        tokens = x["tokens"]
        assert tokens[0] == spm.cls_id and tokens[-1] == spm.sep_id and len(tokens) <= 64
        assert np.count_nonzero(tokens == spm.sep_id) == 2
        pieces = spm.convert_ids_to_tokens(tokens.tolist())
        for piece, start in zip(pieces, x["word_starts"], strict=True):
            if piece.startswith("▁"):
                assert start  # every "▁" piece starts a word (a sentence's first piece does too, "▁" or not)
        flagged = [p.startswith("▁") for p, s in zip(pieces, x["word_starts"], strict=True) if s and p[0] != "["]
        assert np.mean(flagged) > 0.9
    masking = masking_config_from_corpus(result.dataset_dir, 10)
    assert masking.mask_id == spm.mask_id and masking.vocab_size == spm.vocab_size
    assert set(masking.special_ids) == {spm.pad_id, spm.cls_id, spm.sep_id}


def test_record_files_read_the_records_tfds_reads_across_shards_in_any_order(built):
    import pickle
    import threading

    from bert_jax.data.record_files import RecordFiles

    source = open_corpus(built.dataset_dir, "train")
    records = source.records
    assert len(records.paths) == 3 and len(records) == len(source)
    order = np.random.default_rng(0).permutation(len(source))
    reference = source.tfds_source.data_source.__getitems__(order.tolist())  # array_record's own reader
    assert records.read(order) == reference
    assert records.read([]) == []
    copy = pickle.loads(pickle.dumps(records))  # reopens its files
    assert copy.read(order[::-1]) == reference[::-1]
    results = {}

    def read_in_thread(name, keys):
        results[name] = [records.read([key])[0] for key in keys]

    threads = [threading.Thread(target=read_in_thread, args=(n, order[n::2].tolist())) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == reference[0::2] and results[1] == reference[1::2]
    for bad in (len(source), -1):
        with pytest.raises(IndexError, match=f"record {bad} is out of range: the split has {len(source)} records"):
            records.read([0, bad])
    with pytest.raises(ValueError, match="2 record files but 1 lengths"):
        RecordFiles(records.paths[:2], records.lengths[:1])


def test_the_corpus_is_a_tfds_dataset_that_reads_as_the_records_on_disk(built):
    """`tfds.builder_from_directory` (TFDS's public reader) opens the corpus, and every split decodes, item for item,
    to the records in its array_record shards read with array_record's own reader."""
    from array_record.python import array_record_module

    from bert_jax.data import instance_records

    builder = tfds.builder_from_directory(built.dataset_dir)
    assert set(builder.info.splits) == {"train", "validation"}
    assert builder.info.metadata["vocab_size"] == tokenizers.load_tokenizer(_options().vocab_file).vocab_size
    for split in ("train", "validation"):
        info = builder.info.splits[split]
        on_disk = []
        for path, length in zip(info.filepaths, info.shard_lengths, strict=True):
            reader = array_record_module.ArrayRecordReader(os.fspath(path))
            assert reader.num_records() == length
            on_disk += reader.read_all()
            reader.close()
        source = builder.as_data_source(split=split)
        assert len(source) == len(on_disk) == built.num_examples[split]
        expected = instance_records.decode_instances(on_disk)
        read = instance_records.columns_of_items(source.__getitems__(list(range(len(source)))))
        for field, column in expected.items():
            np.testing.assert_array_equal(read[field], column, err_msg=field)


_TFDS_BUILDER_HOOKS = (
    "_info",
    "_split_generators",
    "_generate_examples",
    "_download_and_prepare",
    "_log_download_bytes",
    "_log_download_done",
)


def _private_tfds_uses(source: str) -> list[str]:
    """Where `source` subclasses something of TFDS, touches an underscore-prefixed TFDS attribute, or defines a TFDS
    builder hook: the uses that tie a build to TFDS's internals (`corpus_builder`'s docstring)."""
    import ast

    tree = ast.parse(source)
    aliases = {"tfds"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name.startswith("tensorflow_datasets")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tensorflow_datasets"):
            aliases |= {a.asname or a.name for a in node.names}
            if any(a.name.startswith("_") for a in node.names) or "._" in f".{node.module}":
                found = [f"line {node.lineno}: private import from {node.module}"]
                return found

    def rooted_in_tfds(node: ast.AST) -> bool:
        while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
            node = node.func if isinstance(node, ast.Call) else node.value
        return isinstance(node, ast.Name) and node.id in aliases

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(rooted_in_tfds(base) for base in node.bases):
            found.append(f"line {node.lineno}: class {node.name} subclasses TFDS")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and rooted_in_tfds(node):
            found.append(f"line {node.lineno}: TFDS attribute {node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and rooted_in_tfds(node.args[0])
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            found.append(f"line {node.lineno}: TFDS attribute {node.args[1].value} by {node.func.id}")
        elif isinstance(node, ast.FunctionDef) and node.name in _TFDS_BUILDER_HOOKS:
            found.append(f"line {node.lineno}: builder hook {node.name}")
    return found


def test_the_data_package_uses_only_public_tfds_api():
    bad = """
import tensorflow_datasets as tfds
class Corpus(tfds.core.GeneratorBasedBuilder):
    def _download_and_prepare(self, dl_manager, config):
        return tfds.core.utils.tqdm_utils._active or getattr(tfds.core, "_x")
"""
    assert len(_private_tfds_uses(bad)) == 4  # the check can fail
    assert _private_tfds_uses("from tensorflow_datasets.core import _private\n")
    data_package = REPO_ROOT / "bert_jax" / "data"
    for path in sorted(data_package.glob("*.py")):
        assert _private_tfds_uses(path.read_text()) == [], path.name


def test_a_build_leaves_only_the_finished_corpus_even_when_it_fails_or_races(built, tmp_path, monkeypatch):
    """Shards are written in a `*.incomplete.*` directory renamed into place: a failed build leaves neither it nor
    the token store, and a build that finds the same corpus finished meanwhile (another host) keeps that one."""
    import shutil

    from bert_jax.data import corpus_builder

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(documents.CorpusError, match="corpus is empty"):
        build_corpus(_options(input_files=(str(empty),)), tmp_path / "failed")
    left = [name for _, dirs, files in os.walk(tmp_path / "failed") for name in dirs + files]
    assert not [name for name in left if "incomplete" in name or name.startswith("bert_jax_tokens_")], left

    build = corpus_builder.CorpusBuild(options=_options(max_seq_length=64), output_dir=str(tmp_path / "race"))
    publish = build._publish

    def publish_while_another_finishes(directory, split_infos):
        publish(directory, split_infos)
        shutil.copytree(built.dataset_dir, build.data_dir)

    monkeypatch.setattr(build, "_publish", publish_while_another_finishes)
    build.prepare(num_shards=2)
    assert os.listdir(os.path.dirname(build.data_dir)) == ["1.0.0"]
    assert [name for name in os.listdir(tmp_path / "race") if name.startswith("bert_jax_tokens_")] == []
    assert _content(_all(build.data_dir, "train")) == _content(_all(built.dataset_dir, "train"))
