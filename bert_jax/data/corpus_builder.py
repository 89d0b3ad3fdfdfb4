"""Builds the pretraining corpus and publishes it as a TFDS dataset through TFDS's public API only.

This module writes the array_record shards itself (`split_files.SplitShardsWriter`: the corpus's records, serialized
where they are made) and then describes them with `tfds.folder_dataset.write_metadata`, the documented way to make
files written outside TFDS a TFDS dataset; readers open it with `tfds.builder_from_directory`. No TFDS builder is
subclassed and no protected TFDS method or attribute is used, so a TFDS release that changes its builder internals
cannot change or break a build (an earlier version overrode `_download_and_prepare` and read `_data_dir_root`).
Corpora written by that version have the same layout, files and metadata keys and open the same way.

Kept apart from `corpus.py` so that TensorFlow Datasets (and TensorFlow under it) is imported only by code that
builds or opens a corpus: training on synthetic batches or on arrays (the benchmark, fine-tuning, a GPU/TPU image
without TensorFlow) never pays for it. `corpus.build_corpus` is the entry point; see `corpus.py` for the format.

Layout: `<output_dir>/bert_pretraining_corpus/<config name>/1.0.0/`, written in a sibling `1.0.0.incomplete.*`
directory and renamed into place once `dataset_info.json` is written, so a directory holding it is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from bert_jax.data import documents as documents_lib
from bert_jax.data import text_records
from bert_jax.data.build_workers import BuildWorkers
from bert_jax.data.corpus_spec import (
    DATASET_NAME,
    KEY_BASE,
    VERSION,
    CorpusOptions,
    dataset_subdir,
    document_key,
    instances_of,
    split_records_of,
    tokenize_document,
)
from bert_jax.data.instance_records import encode_instance
from bert_jax.data.progress import ProgressBar
from bert_jax.data.split_files import ARRAY_RECORD_OPTIONS, SplitShardsWriter
from bert_jax.data.token_store import TokenStore, TokenStoreWriter

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset_info.json"  # written last (by the rename of the whole directory): its presence = complete
DESCRIPTION = "BERT pretraining instances: [CLS] A [SEP] B [SEP] token ids, segment ids, word starts."

# TFDS log lines that describe its own bookkeeping, not the user's data ("Using custom data configuration: ...",
# "Variant folder ... has no dataset_info.json"). Only these are dropped; every other TFDS warning still shows.
_TFDS_CHATTER = ("Using custom data configuration", "Variant folder")


class _DropTfdsChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TFDS_CHATTER)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """TFDS without its bookkeeping log lines (the build prints one line of its own, and a bar of its own on long
    builds). TFDS draws no progress bar here: the build never runs TFDS's `download_and_prepare`."""
    absl_logger = logging.getLogger("absl")  # TFDS logs through absl.logging, which is this logger
    chatter = _DropTfdsChatter()
    absl_logger.addFilter(chatter)
    try:
        yield
    finally:
        absl_logger.removeFilter(chatter)


def features() -> tfds.features.FeaturesDict:
    """The corpus's TFDS features: what `tfds.builder_from_directory(...).as_data_source()` decodes a record into."""
    return tfds.features.FeaturesDict(
        {
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "segment_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "word_starts": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "is_random_next": np.int64,
        }
    )


class CorpusBuild:
    """One corpus build under `output_dir` (see the module docstring): `prepare()` writes and publishes it unless
    `is_prepared()`; `read_stats`, `num_documents` and `num_tokens` describe a local build afterwards."""

    def __init__(
        self,
        *,
        options: CorpusOptions,
        output_dir: str,
        show_progress: bool = False,
        num_workers: int = 0,
        tokenizer: Any = None,
    ) -> None:
        self._options = options
        self._output_dir = os.fspath(output_dir)
        self._num_workers = num_workers  # local builds: 0 tokenizes and makes instances in this process
        self._workers: BuildWorkers | None = None
        self._store_dir: str | None = None
        self._show_progress = show_progress
        # The caller's, who has loaded `options.tokenizer()` to check the vocabulary before the build, or loaded once
        self._tokenizer: Any = tokenizer
        self.data_dir = os.path.join(self._output_dir, dataset_subdir(options))
        self.read_stats = documents_lib.ReadStats()
        self.num_documents: int | None = None  # set by a local build (Beam workers count for themselves)
        self.num_tokens: int | None = None

    def tokenizer(self) -> Any:
        """The corpus's tokenizer, loaded on first use (a WordPiece vocabulary takes ~20 ms to load)."""
        if self._tokenizer is None:
            self._tokenizer = self._options.tokenizer()
        return self._tokenizer

    def is_prepared(self) -> bool:
        """Whether the corpus of these options is already complete under `output_dir` (then `prepare` reuses it)."""
        return os.path.exists(os.path.join(self.data_dir, DATASET_INFO))

    def prepare(self, num_shards: int | None = None, beam_options: Any = None) -> None:
        """Writes the shards into a fresh `*.incomplete.*` directory, publishes them (`write_metadata`) and renames
        the directory into place; nothing is left behind on failure, and a prepared corpus is left as it is."""
        if self.is_prepared():
            return
        parent = os.path.dirname(self.data_dir)
        os.makedirs(parent, exist_ok=True)
        incomplete = tempfile.mkdtemp(prefix=f"{VERSION}.incomplete.", dir=parent)
        try:
            if self._options.use_beam:
                split_infos = _beam_write_splits(self._options, incomplete, num_shards, beam_options)
            else:
                self._store_dir = tempfile.mkdtemp(prefix="bert_jax_tokens_", dir=self._output_dir)
                if self._num_workers > 0:
                    self._workers = BuildWorkers(self._options, self._num_workers)
                self._tokenize_to_store(self._store_dir)
                split_infos = self._write_splits(incomplete, num_shards)
            self._publish(incomplete, split_infos)
            try:
                os.replace(incomplete, self.data_dir)
            except OSError:
                if not self.is_prepared():
                    raise
                shutil.rmtree(incomplete, ignore_errors=True)  # another build of the same options finished first
        except BaseException:
            shutil.rmtree(incomplete, ignore_errors=True)
            raise
        finally:
            self.cleanup()

    def _publish(self, directory: str, split_infos: list[tfds.core.SplitInfo]) -> None:
        """`dataset_info.json`, `features.json` and `metadata.json` for the shards in `directory`, by
        `tfds.folder_dataset.write_metadata` (the shards are checked by the caller; TF is not needed to read)."""
        tokenizer = self.tokenizer()
        metadata = tfds.core.MetadataDict(
            options=dataclasses.asdict(self._options),
            vocab_size=tokenizer.vocab_size,
            special_ids=dict(tokenizer.special_ids),
        )
        if self.num_documents is not None:  # kept with the corpus, so a job that reuses it reports the same figures
            metadata.update(num_documents=self.num_documents, num_tokens=self.num_tokens)
        tfds.folder_dataset.write_metadata(
            data_dir=directory,
            features=features(),
            split_infos=split_infos,
            version=VERSION,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=tfds.core.Path(directory), dataset_name=DATASET_NAME, filetype_suffix="array_record"
            ),
            check_data=False,
            description=DESCRIPTION,
            metadata=metadata,
        )

    def _tokenize_to_store(self, directory: str) -> None:
        """Pass 1: every document, tokenized, appended to an on-disk store."""
        writer = TokenStoreWriter(directory)
        # Local inputs' bytes (a tfds: or remote input, or a vanished file: 0, no size to report progress against)
        sizes = [text_records.local_size(path, self._options.text_field) for path in self._options.input_files]
        bar = ProgressBar("Tokenizing the corpus", sum(sizes)) if self._show_progress else None
        progress = {"files_done": 0, "read": 0}

        def documents() -> Iterator[tuple[int, documents_lib.RawDocument]]:
            for file_index, path in enumerate(self._options.input_files):
                progress["read"] = 0
                for doc_index, document in enumerate(
                    documents_lib.iter_file_raw_documents(
                        path, self._options.text_format, self.read_stats, self._options.text_field
                    )
                ):
                    yield file_index * KEY_BASE + doc_index, document
                    if bar is not None:  # characters + line ends: close to the bytes of the file read so far
                        progress["read"] += sum(len(piece) + 1 for piece in document.pieces)
                        bar.update(progress["files_done"] + min(progress["read"], sizes[file_index]))
                progress["files_done"] += sizes[file_index]

        if self._workers is not None:
            for key, (ids, starts, lengths), num_sentences in self._workers.tokenize_documents(documents()):
                writer.add_flat(ids, starts, lengths, key=key)
                self.read_stats.sentences += num_sentences
        else:
            tokenizer = self.tokenizer()
            for key, document in documents():
                sentences = document.sentences()
                writer.add(tokenize_document(tokenizer, sentences), key=key)
                self.read_stats.sentences += len(sentences)
        if bar is not None:
            bar.close()
        writer.close()
        documents_lib.check_not_empty(self.read_stats, len(self._options.input_files))
        if writer.num_documents == 0:
            raise documents_lib.CorpusError("The corpus is empty: no sentence produced any token.")
        self.num_documents, self.num_tokens = writer.num_documents, writer.num_tokens
        logger.info("Tokenized %d documents, %d tokens.", writer.num_documents, writer.num_tokens)

    def _write_splits(self, directory: str, num_shards: int | None) -> list[tfds.core.SplitInfo]:
        """Pass 2: the instances of every document, random segments from the whole memory-mapped corpus, each
        serialized and written to its split's shards in one pass over the documents."""
        assert self._store_dir is not None
        store = TokenStore(self._store_dir)
        bar = (
            ProgressBar("Writing the instances", len(store), unit="documents", scale=1.0)
            if self._show_progress
            else None
        )
        writers = {
            split: SplitShardsWriter(directory, DATASET_NAME, split, num_shards) for split in self._options.splits
        }
        try:
            if self._workers is not None:
                records = self._workers.split_records(self._store_dir, store, bar.update if bar is not None else None)
            else:
                records = self._split_records_here(store, bar)
            for split, record in records:
                writers[split].write(record)
            for split, writer in writers.items():
                if writer.num_records == 0:
                    raise no_instance_error(split, self._options.eval_fraction)
        except BaseException:
            for writer in writers.values():
                writer.discard()
            raise
        if bar is not None:
            bar.close()
        return [writer.close() for writer in writers.values()]

    def _split_records_here(self, store: TokenStore, bar: ProgressBar | None) -> Iterator[tuple[str, bytes]]:
        config = self._options.instance_config(self.tokenizer())
        for index, key in enumerate(store.keys):
            file_index, doc_index = divmod(int(key), KEY_BASE)
            yield from split_records_of(self._options, config, store, index, document_key(file_index, doc_index))
            if bar is not None:
                bar.update(index + 1)

    def cleanup(self) -> None:
        """Stops the build's worker processes and removes its token store (also after a failed build)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self._store_dir:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            self._store_dir = None


def no_instance_error(split: str, eval_fraction: float) -> documents_lib.CorpusError:
    """The error for a split that got no instance, naming the fix."""
    if split == "train":
        return documents_lib.CorpusError(
            "The corpus produced no training instance (every document was empty after tokenization)."
        )
    return documents_lib.CorpusError(
        f"The {split} split got no instance: the corpus is too small for eval_fraction={eval_fraction}. Raise "
        "--eval_fraction, add text, or pass --eval_fraction=0 for no validation split."
    )


# ----------------------------------------------------------------------------------------------------------
# The Apache Beam engine: the same per-document code as a Beam pipeline whose last step writes the shards.
#
# Documents are spread over `beam_buckets` buckets by a stable hash of their key; a bucket is tokenized and turned
# into instances on one worker (random next segments from the same bucket). Each instance goes to shard
# crc32(key) % shards of its split (`num_shards`, or `beam_buckets` when not given); a shard's records are written
# in key order, so the files are the same on any runner. Shards are written under the build's directory, which the
# runner's workers must reach (the host's own disk for the DirectRunner; a shared file system otherwise).


def _bucket_of(document_key: str, buckets: int) -> int:
    return zlib.crc32(document_key.encode()) % buckets


def _read_file_documents(options: CorpusOptions, file_index: int) -> Iterator[tuple[int, tuple[str, list[str]]]]:
    path = options.input_files[file_index]
    documents = documents_lib.iter_file_documents(path, options.text_format, text_field=options.text_field)
    for doc_index, sentences in enumerate(documents):
        key = document_key(file_index, doc_index)
        yield _bucket_of(key, options.beam_buckets), (key, sentences)


def _bucket_records(
    options: CorpusOptions, shards: int, bucket: tuple[int, Sequence[tuple[str, list[str]]]]
) -> Iterator[tuple[tuple[str, int], tuple[str, bytes]]]:
    """((split, shard), (key, record)) of every instance of one bucket of documents."""
    _, members = bucket
    tokenizer = options.tokenizer()
    config = options.instance_config(tokenizer)
    store, keys = [], []
    for key, sentences in sorted(members):  # a deterministic order whatever order the runner delivered them in
        tokenized = tokenize_document(tokenizer, sentences)
        if tokenized:
            store.append([(np.asarray(ids, np.int32), np.asarray(starts, bool)) for ids, starts in tokenized])
            keys.append(key)
    for split in options.splits:
        for index, key in enumerate(keys):
            for instance_key, example in instances_of(options, config, store, index, key, split):
                yield (split, zlib.crc32(instance_key.encode()) % shards), (instance_key, encode_instance(example))


def _beam_shard_path(directory: str, split: str, shard: int) -> str:
    return os.path.join(directory, f"{DATASET_NAME}-{split}.beam-shard-{shard:05d}")


def _write_beam_shard(directory: str, group: tuple[tuple[str, int], Sequence[tuple[str, bytes]]]) -> None:
    """One shard's records, in key order, plus a `.json` with its record count and bytes (read back by the driver)."""
    (split, shard), keyed = group
    path = _beam_shard_path(directory, split, shard)
    writer = array_record_module.ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)
    num_bytes = 0
    records = sorted(keyed)
    for _, record in records:
        writer.write(record)
        num_bytes += len(record)
    writer.close()
    with open(f"{path}.json", "w") as f:
        json.dump({"num_records": len(records), "num_bytes": num_bytes}, f)


def _beam_write_splits(
    options: CorpusOptions, directory: str, num_shards: int | None, beam_options: Any
) -> list[tfds.core.SplitInfo]:
    """Runs the Beam pipeline (`beam_options`: the runner's options) and names its shards as TFDS does."""
    try:
        import apache_beam as beam
    except ImportError:
        raise documents_lib.CorpusError(
            "use_beam needs Apache Beam, which is not installed: pip install apache-beam (or build without --use_beam)."
        ) from None
    if beam_options is None:  # one local worker: a laptop's or a test's build
        beam_options = beam.options.pipeline_options.PipelineOptions(
            ["--runner=DirectRunner", "--direct_num_workers=1"]
        )
    shards = num_shards or options.beam_buckets
    with beam.Pipeline(options=beam_options) as pipeline:
        _ = (
            pipeline
            | "Files" >> beam.Create(list(range(len(options.input_files))))
            | "Read" >> beam.FlatMap(lambda i: _read_file_documents(options, i))
            | "Bucket" >> beam.GroupByKey()
            | "Instances" >> beam.FlatMap(lambda bucket: _bucket_records(options, shards, bucket))
            | "Shard" >> beam.GroupByKey()
            | "Write" >> beam.Map(lambda group: _write_beam_shard(directory, group))
        )
    split_infos = []
    for split in options.splits:
        written = [shard for shard in range(shards) if os.path.exists(_beam_shard_path(directory, split, shard))]
        if not written:
            raise no_instance_error(split, options.eval_fraction)
        template = tfds.core.ShardedFileTemplate(
            data_dir=tfds.core.Path(directory), dataset_name=DATASET_NAME, split=split, filetype_suffix="array_record"
        )
        lengths, num_bytes = [], 0
        for index, shard in enumerate(written):
            path = _beam_shard_path(directory, split, shard)
            with open(f"{path}.json") as f:
                counts = json.load(f)
            os.remove(f"{path}.json")
            os.replace(path, os.fspath(template.sharded_filepath(shard_index=index, num_shards=len(written))))
            lengths.append(int(counts["num_records"]))
            num_bytes += int(counts["num_bytes"])
        split_infos.append(
            tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes, filename_template=template)
        )
    return split_infos
