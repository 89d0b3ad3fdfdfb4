"""The corpus build over worker processes writes the corpus a single process writes, byte for byte.

Real text (the BERT sample, Alice in Wonderland, part of WikiText-2) with tasks made small, so that a book is
split and tokenized in many runs of paragraphs and the instances come from many document ranges: every file of the dataset
directory (the array_record shards of both splits, dataset_info.json, features.json) is identical for 0, 1 and
3 workers, and so is the dataset directory's name (the corpus fingerprint).
"""

from __future__ import annotations

import os

import pytest

from bert_jax.data import build_workers
from bert_jax.data.corpus import CorpusOptions, build_corpus
from bert_jax.data.token_store import TokenStore, TokenStoreWriter
from tests.conftest import shared_path


def _options() -> CorpusOptions:
    wiki = shared_path("wikitext2", "wiki.valid.tokens")
    files = (
        str(shared_path("bert_sample", "sample_text.txt")),
        str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt")),
        f"{wiki}",
    )
    vocab = str(shared_path("vocab", "bert-base-uncased-vocab.txt"))
    return CorpusOptions(input_files=files, vocab_file=vocab, max_seq_length=64, dupe_factor=2)


def _files(dataset_dir: str) -> dict[str, bytes]:
    names = sorted(os.listdir(dataset_dir))
    return {name: open(os.path.join(dataset_dir, name), "rb").read() for name in names}


def test_any_number_of_workers_writes_the_same_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(build_workers, "CHARACTERS_PER_TASK", 5_000)
    monkeypatch.setattr(build_workers, "TOKENS_PER_TASK", 20_000)
    results = {n: build_corpus(_options(), tmp_path / f"workers{n}", num_shards=3, num_workers=n) for n in (0, 1, 3)}
    reference = _files(results[0].dataset_dir)
    assert sum(name.startswith("bert_pretraining_corpus-validation") for name in reference) == 3
    assert results[0].num_documents > 50 and results[0].num_examples["train"] > 5_000
    for n in (1, 3):
        assert os.path.relpath(results[n].dataset_dir, tmp_path / f"workers{n}") == os.path.relpath(
            results[0].dataset_dir, tmp_path / "workers0"
        )
        files = _files(results[n].dataset_dir)
        assert sorted(files) == sorted(reference)
        different = [name for name in reference if files[name] != reference[name]]
        assert not different, (n, different)
        assert (results[n].num_documents, results[n].num_tokens) == (results[0].num_documents, results[0].num_tokens)
        assert results[n].read_stats == results[0].read_stats  # sentences are counted where they are split


def test_document_ranges_cover_the_store_in_order(tmp_path):
    writer = TokenStoreWriter(tmp_path)
    lengths = [5, 30, 1, 1, 1, 50, 2]
    for key, length in enumerate(lengths):
        writer.add([(list(range(1, length + 1)), [True] * length)], key=key)
    writer.close()
    store = TokenStore(tmp_path)
    assert list(store.document_token_counts()) == lengths
    assert build_workers.document_ranges(store, tokens_per_task=30) == [(0, 2), (2, 6), (6, 7)]
    assert build_workers.document_ranges(store, tokens_per_task=1000) == [(0, 7)]


def test_a_bad_worker_count_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        build_corpus(_options(), tmp_path, num_workers=-1)
    assert not os.listdir(tmp_path)


def test_benchmark_data_builds_over_build_workers_and_reports_the_count(tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    alice = str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt"))
    vocab = str(shared_path("vocab", "bert-base-uncased-vocab.txt"))
    reports = []
    for workers in (0, 2):
        command = [sys.executable, "-m", "tools.benchmark_data", f"--input_files={alice}", f"--vocab_file={vocab}"]
        command += [f"--output_dir={tmp_path / str(workers)}", f"--build_workers={workers}", "--batches=2"]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [report["build_workers"] for report in reports] == [0, 2]
    assert reports[0]["instances"] == reports[1]["instances"] > 300  # the same corpus either way
    assert all(report["build_mb_per_sec"] > 0 for report in reports)
