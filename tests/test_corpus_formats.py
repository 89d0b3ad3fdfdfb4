"""Corpora in the formats users have: JSON Lines (.gz, .zst), Parquet, Hugging Face save_to_disk folders.

The report this answers: 3,000 WikiText paragraphs written as data.jsonl built "without a word of warning" with the
JSON keys, quotes and ids as training text, and data.parquet ended in "The corpus is empty ... (binary)". Here the
same 3,000 paragraphs (WikiText-2's, from the shared data) are written as plain text, one per line (the independent
reference: the text reader, sniffed as one document per line), and in every record format: each builds the corpus
the plain text builds, token for token and shard file for shard file, locally and from gs://; the job trains on a
JSON Lines file; and every mistake a user can make with these inputs ends in one line that names the fix.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bert_jax.data import build_workers, documents, text_records
from bert_jax.data.corpus import CorpusOptions, build_corpus
from tests.conftest import REPO_ROOT, shared_path

PARAGRAPHS = 3000
ROWS_PER_GROUP = 500  # Parquet row groups (and Arrow record batches) of the test files: several per file


def _paragraphs(count: int) -> list[str]:
    """WikiText-2's paragraphs: the non-blank lines that are not ` = Heading = ` lines, of valid then test."""
    paragraphs = []
    for split in ("valid", "test"):
        for line in shared_path("wikitext2", f"wiki.{split}.tokens").read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("= "):
                paragraphs.append(line)
    assert len(paragraphs) >= count
    return paragraphs[:count]


def _records(texts: list[str]) -> list[dict]:
    return [{"id": i, "text": text} for i, text in enumerate(texts)]


def write_jsonl(path: os.PathLike, records: list[dict]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in records).encode()
    name = str(path)
    if name.endswith(".gz"):
        lines = gzip.compress(lines)
    elif name.endswith(".zst"):
        import zstandard

        lines = zstandard.ZstdCompressor().compress(lines)
    with open(path, "wb") as f:
        f.write(lines)


def write_parquet(path: os.PathLike, records: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(records), str(path), row_group_size=ROWS_PER_GROUP)


def write_saved_dataset(folder: os.PathLike, records: list[dict], shards: int = 2) -> None:
    """A dataset as `datasets.Dataset.save_to_disk` writes it (with `datasets` when installed; otherwise the same
    layout with pyarrow: Arrow IPC stream files `data-0000i-of-0000N.arrow`, `state.json`, `dataset_info.json`)."""
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        datasets.Dataset.from_list(records).save_to_disk(str(folder), num_shards=shards)
        return
    os.makedirs(folder)
    table = pa.Table.from_pylist(records)
    per_shard = -(-len(records) // shards)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    for i, name in enumerate(names):
        with pa.OSFile(os.path.join(folder, name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(i * per_shard, per_shard), max_chunksize=ROWS_PER_GROUP)
    state = {
        "_data_files": [{"filename": name} for name in names],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump(state, f)
    features = {name: {"dtype": str(table.schema.field(name).type), "_type": "Value"} for name in table.schema.names}
    with open(os.path.join(folder, "dataset_info.json"), "w") as f:
        json.dump({"citation": "", "description": "", "features": features, "homepage": "", "license": ""}, f)


FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "save_to_disk")


def write_inputs(directory: os.PathLike, texts: list[str]) -> dict[str, str]:
    """The texts as plain text (one per line) and in every record format, under `directory`: {format: path}."""
    records = _records(texts)
    paths = {"text": os.path.join(directory, "data.txt")}
    with open(paths["text"], "w", encoding="utf-8") as f:
        f.write("".join(text + "\n" for text in texts))
    for fmt in FORMATS:
        path = os.path.join(directory, "data_saved" if fmt == "save_to_disk" else f"data.{fmt}")
        if fmt == "jsonl.zst" and not _has_zstandard():
            continue
        if fmt.startswith("jsonl"):
            write_jsonl(path, records)
        elif fmt == "parquet":
            write_parquet(path, records)
        else:
            write_saved_dataset(path, records)
        paths[fmt] = path
    return paths


def _has_zstandard() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def _options(*inputs: str, **overrides) -> CorpusOptions:
    vocab = str(shared_path("vocab", "bert-base-uncased-vocab.txt"))
    return CorpusOptions(input_files=tuple(inputs), vocab_file=vocab, **overrides)


def _shards(dataset_dir: str) -> dict[str, bytes]:
    """The corpus's array_record shards (both splits), by name: its instances, serialized, in order."""
    names = sorted(name for name in os.listdir(dataset_dir) if ".array_record-" in name)
    assert names
    return {name: open(os.path.join(dataset_dir, name), "rb").read() for name in names}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    return write_inputs(tmp_path_factory.mktemp("inputs"), _paragraphs(PARAGRAPHS))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The plain-text build: the independent reference every format must equal."""
    return build_corpus(_options(inputs["text"]), tmp_path_factory.mktemp("reference"), num_shards=2)


def test_the_plain_text_reference_is_one_document_per_paragraph(reference, inputs):
    assert reference.read_stats.formats == {inputs["text"]: "documents"}
    assert reference.num_documents == PARAGRAPHS and reference.num_tokens > 300_000


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_builds_the_corpus_the_plain_text_builds(fmt, inputs, reference, tmp_path):
    if fmt not in inputs:
        pytest.skip("zstandard is not installed (pip install zstandard)")
    built = build_corpus(_options(inputs[fmt]), tmp_path, num_shards=2)
    expected = "hf_dataset" if fmt == "save_to_disk" else fmt.split(".")[0]
    assert built.read_stats.formats == {inputs[fmt]: expected}
    assert (built.num_documents, built.num_tokens) == (reference.num_documents, reference.num_tokens)
    assert built.num_examples == reference.num_examples
    assert _shards(built.dataset_dir) == _shards(reference.dataset_dir)  # the same instances, in the same order


def test_a_json_lines_build_over_workers_is_the_plain_text_corpus(inputs, reference, tmp_path, monkeypatch):
    """Records are documents as a text file's are: the build's workers split and tokenize them (small tasks here,
    so that they spread over both workers) and the corpus is the same byte for byte."""
    monkeypatch.setattr(build_workers, "CHARACTERS_PER_TASK", 20_000)
    built = build_corpus(_options(inputs["jsonl"]), tmp_path, num_shards=2, num_workers=2)
    assert built.num_tokens == reference.num_tokens
    assert _shards(built.dataset_dir) == _shards(reference.dataset_dir)


def test_parquet_is_read_one_row_group_at_a_time(inputs, monkeypatch):
    groups = []
    read_row_group = pq.ParquetFile.read_row_group

    def spy(self, index, *args, **kwargs):
        groups.append(index)
        return read_row_group(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    texts = text_records.iter_texts(inputs["parquet"], text_records.PARQUET, "text")
    assert next(texts) == _paragraphs(1)[0] and groups == [0]  # streaming: only the first group read so far
    assert len(list(texts)) == PARAGRAPHS - 1
    assert groups == list(range(PARAGRAPHS // ROWS_PER_GROUP))


def test_the_progress_bar_counts_a_parquet_files_text_not_its_compressed_bytes(inputs):
    text_bytes = os.path.getsize(inputs["text"])
    assert os.path.getsize(inputs["parquet"]) < 0.7 * text_bytes
    assert abs(text_records.local_size(inputs["parquet"], "text") - text_bytes) < 0.05 * text_bytes


def test_inputs_mix_formats_in_globs_and_comma_lists(tmp_path):
    texts = _paragraphs(40)
    (tmp_path / "a.txt").write_text("".join(t + "\n" for t in texts[:10]), encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl.gz", _records(texts[10:20]))
    write_parquet(tmp_path / "c.parquet", _records(texts[20:30]))
    write_saved_dataset(tmp_path / "d_saved", _records(texts[30:]))
    (tmp_path / "not_a_dataset").mkdir()  # a plain folder a glob matches is left out
    files = documents.expand_input_files(f"{tmp_path}/*.txt,{tmp_path}/[b-c]*,{tmp_path}/d_saved/")
    assert files == [str(tmp_path / n) for n in ("a.txt", "b.jsonl.gz", "c.parquet", "d_saved")]
    assert documents.expand_input_files(str(tmp_path / "*"))[-1] == str(tmp_path / "d_saved")
    stats = documents.ReadStats()
    read = list(documents.iter_documents(files, "documents", stats))
    assert read == [documents.split_sentences(t) for t in texts]
    assert list(stats.formats.values()) == ["documents", "jsonl", "parquet", "hf_dataset"]
    with pytest.raises(documents.CorpusError, match="not_a_dataset' is a folder but not a dataset saved with"):
        documents.expand_input_files(str(tmp_path / "not_a_dataset"))


def test_a_record_is_one_document_its_lines_paragraphs(tmp_path):
    """A record's text is split as a document-per-line line is; its lines are paragraphs (a heading line is its
    own sentence, never glued to the next); null and blank texts are no document."""
    records = [
        {"text": "Early life\nHe was born in 1900. He died in 1990."},
        {"text": None},
        {"text": "  "},
        {"text": "Mr. Smith went to Washington. It rained"},
    ]
    write_jsonl(tmp_path / "r.jsonl", records)
    (tmp_path / "r.txt").write_text("Mr. Smith went to Washington. It rained\n")
    read = list(documents.iter_documents([str(tmp_path / "r.jsonl")]))
    assert read == [
        ["Early life", "He was born in 1900.", "He died in 1990."],
        next(documents.iter_documents([str(tmp_path / "r.txt")], "documents")),
    ]


def test_the_text_field_is_chosen_and_enters_the_fingerprint_only_when_not_the_default(tmp_path):
    texts = _paragraphs(20)
    write_jsonl(tmp_path / "body.jsonl", [{"body": t, "text": 7} for t in texts])
    path = str(tmp_path / "body.jsonl")
    assert list(documents.iter_documents([path], text_field="body")) == [documents.split_sentences(t) for t in texts]
    assert _options(path).config_name() == _options(path, text_field="text").config_name()
    assert _options(path, text_field="body").config_name() != _options(path).config_name()
    with pytest.raises(ValueError, match="text_field must name a field"):
        _options(path, text_field="")


# ---------------------------------------------------------------------------------------------------------------
# Every mistake ends in one line that names the fix


def _error(paths, text_field: str = "text") -> str:
    with pytest.raises(documents.CorpusError) as caught:
        list(documents.iter_documents([str(p) for p in paths], text_field=text_field))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_missing_field_or_column_lists_the_ones_there(tmp_path):
    records = [{"id": 1, "title": "T", "body": "Some text."}]
    write_jsonl(tmp_path / "a.jsonl", records)
    write_parquet(tmp_path / "a.parquet", records)
    write_saved_dataset(tmp_path / "saved", records, shards=1)
    message = _error([tmp_path / "a.jsonl"])
    assert message.startswith(f"{tmp_path / 'a.jsonl'}:1: the record has no 'text' field (its fields: 'id', 'title', ")
    assert "--text_field" in message and "data.text_field" in message
    message = _error([tmp_path / "a.parquet"])
    assert "no column 'text' (its columns: 'id' (int64), 'title' (string), 'body' (string))" in message
    assert "--text_field" in message
    assert "no column 'text' (its columns: 'id' (int64), 'title' (string), 'body' (string))" in _error(
        [tmp_path / "saved"]
    )


def test_a_field_or_column_that_is_not_a_string_says_its_type(tmp_path):
    records = [{"text": ["a list", "of strings"], "n": 3}]
    write_jsonl(tmp_path / "a.jsonl", records)
    write_parquet(tmp_path / "a.parquet", records)
    write_saved_dataset(tmp_path / "saved", records, shards=1)
    assert "a.jsonl:1: the 'text' field is a JSON array, not a string" in _error([tmp_path / "a.jsonl"])
    assert "a.jsonl:1: the 'n' field is a JSON number, not a string" in _error([tmp_path / "a.jsonl"], "n")
    assert "the column 'text' is of type list<element: string>, not string" in _error([tmp_path / "a.parquet"])
    assert "the column 'n' is of type int64, not string" in _error([tmp_path / "saved"], "n")


def test_an_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "Fine."}\n\n{"text": "Broken\n["not", "an object"]\n')
    assert f"{path}:3: invalid JSON (" in _error([path])
    path.write_text('{"text": "Fine."}\n["not", "an object"]\n')
    assert f"{path}:2: a JSON array, not an object" in _error([path])
    pretty = tmp_path / "one_document.json"
    pretty.write_text(json.dumps([{"text": "A."}, {"text": "B."}], indent=2))
    assert "one JSON array: convert it, e.g. jq -c '.[]'" in _error([pretty])


def test_empty_files_are_skipped_and_an_empty_corpus_says_so(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    write_jsonl(tmp_path / "empty.jsonl.gz", [])
    (tmp_path / "zero_bytes.parquet").write_bytes(b"")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), str(tmp_path / "no_rows.parquet"))
    names = ("empty.jsonl", "empty.jsonl.gz", "zero_bytes.parquet", "no_rows.parquet")
    message = _error([tmp_path / name for name in names])
    assert message.startswith("The corpus is empty: 4 input file(s) gave no sentence (skipped: ")
    assert all(f"{tmp_path / name} (empty)" in message for name in names)


def test_binary_and_misnamed_files(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 40)
    message = _error([binary])  # today's rule for an unknown binary file: skipped, and the corpus is empty
    assert f"(skipped: {binary} (binary))" in message and "recognized by name" in message
    write_parquet(tmp_path / "data.parquet", [{"text": "A."}])
    os.rename(tmp_path / "data.parquet", tmp_path / "data.jsonl")
    assert "data.jsonl: binary data (NUL bytes), not JSON Lines text" in _error([tmp_path / "data.jsonl"])
    write_jsonl(tmp_path / "c.jsonl.gz", [{"text": "A."}])
    os.rename(tmp_path / "c.jsonl.gz", tmp_path / "c.jsonl")
    assert "c.jsonl: the file is gzip-compressed; name it " in _error([tmp_path / "c.jsonl"])
    (tmp_path / "d.jsonl.gz").write_text('{"text": "not compressed"}\n')
    assert "d.jsonl.gz" in _error([tmp_path / "d.jsonl.gz"]) and "cannot decompress it" in _error(
        [tmp_path / "d.jsonl.gz"]
    )


def test_a_parquet_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    write_jsonl(path, [{"text": "A sentence."}])
    message = _error([path])
    assert message.startswith(f"{path}: not a Parquet file (it cannot be opened: ")
    assert "rename it if it holds text or JSON Lines" in message


def test_zst_without_zstandard_names_the_install(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd whatever")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    assert "reading .zst files needs the zstandard package: pip install zstandard" in _error([tmp_path / "a.jsonl.zst"])


def test_a_dataset_dict_folder_asks_for_one_split(tmp_path):
    write_saved_dataset(tmp_path / "dd" / "train", [{"text": "A."}], shards=1)
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(documents.CorpusError, match=r"DatasetDict saved with save_to_disk \(splits: train, test\); "):
        documents.expand_input_files(str(tmp_path / "dd"))
    assert documents.expand_input_files(str(tmp_path / "dd" / "train")) == [str(tmp_path / "dd" / "train")]


def test_the_cli_takes_text_field_and_reports_a_wrong_one_in_one_line(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": 0, "body": "A sentence."}])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax_tools.build_corpus",
            f"--input_files={tmp_path / 'a.jsonl'}",
            f"--vocab_file={shared_path('vocab', 'bert-base-uncased-vocab.txt')}",
            f"--output_dir={tmp_path / 'out'}",
            "--text_field=content",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"bert-jax-build-corpus: error: {tmp_path / 'a.jsonl'}:1: the record has no 'content' field (its fields: "
        "'id', 'body'); set --text_field (bert-jax-build-corpus) or data.text_field (bert-jax-pretrain) to the field "
        "that holds the text."
    )


# ---------------------------------------------------------------------------------------------------------------
# Object storage and the job


def test_record_inputs_on_gs_build_the_local_corpus(gcs, tmp_path):
    from bert_jax import storage

    bucket = gcs.create_bucket("corpus-formats")
    (tmp_path / "local").mkdir()
    local = write_inputs(tmp_path / "local", _paragraphs(400))
    remote = {}
    for fmt in ("jsonl", "parquet", "save_to_disk"):
        remote[fmt] = f"{bucket}/inputs/{os.path.basename(local[fmt])}"
        if fmt == "save_to_disk":
            storage.upload_tree(local[fmt], remote[fmt])
        else:
            storage.upload_file(local[fmt], remote[fmt])
    assert documents.expand_input_files(f"{bucket}/inputs/*") == sorted(remote.values())
    order = ("jsonl", "parquet", "save_to_disk")
    options = dict(max_seq_length=64, eval_fraction=0.02)
    from_gs = build_corpus(_options(*(remote[f] for f in order), **options), tmp_path / "gs_build", num_shards=2)
    here = build_corpus(_options(*(local[f] for f in order), **options), tmp_path / "local_build", num_shards=2)
    assert from_gs.read_stats.formats == dict(
        zip([remote[f] for f in order], ["jsonl", "parquet", "hf_dataset"], strict=True)
    )
    assert from_gs.num_tokens == here.num_tokens and from_gs.num_documents == 3 * 400
    assert _shards(from_gs.dataset_dir) == _shards(here.dataset_dir)


def test_the_job_config_carries_text_field_to_the_corpus_options(tmp_path):
    from bert_jax.jobs import config as job_config
    from bert_jax.jobs import pretraining
    from tests.test_experiments import load

    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"body": "A sentence."}])
    job = job_config.parse(
        load("bert_tiny", f"--config.data.train_files={data}", "--config.data.text_field=body"), expect="pretrain"
    )
    options = pretraining.corpus_options(job.data)
    assert options.input_files == (str(data),) and options.text_field == "body"
    assert pretraining.corpus_options(job_config.parse(load("bert_tiny"), expect="pretrain").data).text_field == "text"
    with pytest.raises(job_config.ConfigError, match=r"data\.text_field='': name the field"):
        job_config.parse(load("bert_tiny", "--config.data.text_field="), expect="pretrain")


@pytest.mark.slow
def test_the_job_trains_on_a_json_lines_file(tmp_path):
    from tests.pretrain_cli import pretrain_command

    data = tmp_path / "data.jsonl"
    write_jsonl(data, _records(_paragraphs(600)))
    command = pretrain_command(
        str(tmp_path / "run"),
        f"--config.data.train_files={data}",
        "--config.num_train_steps=3",
        "--config.global_batch_size=8",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=3",
        "--config.eval_batches=1",
        "--config.data.eval_fraction=0.02",
        "--config.peak_flops_per_device=1e11",
        "--config.optimizer.warmup_steps=1",
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Corpus built in" in done.stdout and "600 documents" in done.stdout
    assert os.path.exists(tmp_path / "run" / "export" / "hf" / "config.json")
