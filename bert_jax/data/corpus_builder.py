"""The TFDS builder of the pretraining corpus (`BertPretrainingCorpus`) and its Apache Beam engine.

Kept apart from `corpus.py` so that TensorFlow Datasets (and TensorFlow under it) is imported only by code that
builds or opens a corpus: training on synthetic batches or on arrays (the benchmark, fine-tuning, a GPU/TPU image
without TensorFlow) never pays for it. `corpus.build_corpus` is the entry point; see `corpus.py` for the format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from bert_jax.data import documents as documents_lib
from bert_jax.data.build_workers import BuildWorkers
from bert_jax.data.corpus_spec import (
    KEY_BASE,
    CorpusOptions,
    document_key,
    instances_of,
    split_records_of,
    tokenize_document,
)
from bert_jax.data.progress import ProgressBar
from bert_jax.data.split_files import SplitShardsWriter
from bert_jax.data.token_store import TokenStore, TokenStoreWriter

logger = logging.getLogger(__name__)

# TFDS log lines that describe its own bookkeeping, not the user's data: a builder with a config of its own
# ("Using custom data configuration: ...") and a version folder not yet written ("Variant folder ... has no
# dataset_info.json"). Only these are dropped; every other TFDS warning still reaches the console.
_TFDS_CHATTER = ("Using custom data configuration", "Variant folder")


class _DropTfdsChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TFDS_CHATTER)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """TFDS without its bookkeeping log lines and tqdm bars (we print one line of our own, and a bar of
    ours on long builds); both come back as they were on exit."""
    absl_logger = logging.getLogger("absl")  # TFDS logs through absl.logging, which is this logger
    chatter = _DropTfdsChatter()
    absl_logger.addFilter(chatter)
    bars_were_on = getattr(tfds.core.utils.tqdm_utils, "_active", True)
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        absl_logger.removeFilter(chatter)
        if bars_were_on:
            tfds.enable_progress_bar()


def _input_bytes(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # a tfds: input or a vanished file: no size to report progress against
        return 0


@dataclasses.dataclass(eq=False)
class CorpusBuilderConfig(tfds.core.BuilderConfig):
    options: CorpusOptions | None = None


class BertPretrainingCorpus(tfds.core.GeneratorBasedBuilder):
    """NSP instances for BERT pretraining, built from the user's text (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Unpadded NSP instances with word-start flags; masking happens at batch time."
    }

    def __init__(
        self,
        *,
        options: CorpusOptions,
        data_dir: str,
        show_progress: bool = False,
        num_workers: int = 0,
        tokenizer: Any = None,
        **kwargs: Any,
    ):
        config = CorpusBuilderConfig(name=options.config_name(), options=options, description="bert_jax corpus")
        self._options = options
        self._num_workers = num_workers  # local builds: 0 tokenizes and makes instances in this process
        self._workers: BuildWorkers | None = None
        self._store_dir: str | None = None
        self._show_progress = show_progress
        # Built once per builder (`tokenizer`; TFDS asks for the info several times), or the caller's, who has
        # loaded `options.tokenizer()` to check the vocabulary before the build.
        self._tokenizer: Any = tokenizer
        self.read_stats = documents_lib.ReadStats()
        self.num_documents: int | None = None  # set by a local build (Beam workers count for themselves)
        self.num_tokens: int | None = None
        super().__init__(config=config, data_dir=data_dir, file_format="array_record", **kwargs)

    def tokenizer(self) -> Any:
        """The corpus's tokenizer, loaded on first use (a WordPiece vocabulary takes ~20 ms to load)."""
        if self._tokenizer is None:
            self._tokenizer = self._options.tokenizer()
        return self._tokenizer

    def _info(self) -> tfds.core.DatasetInfo:
        options = self._options
        tokenizer = self.tokenizer()
        metadata = tfds.core.MetadataDict(
            options=dataclasses.asdict(options),
            vocab_size=tokenizer.vocab_size,
            special_ids=dict(tokenizer.special_ids),
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="BERT pretraining instances: [CLS] A [SEP] B [SEP] token ids, segment ids, word starts.",
            features=tfds.features.FeaturesDict(
                {
                    "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "segment_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "word_starts": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
                    "is_random_next": np.int64,
                }
            ),
            metadata=metadata,
        )

    def _download_and_prepare(self, dl_manager: Any, download_config: Any) -> None:
        """Local builds write their shards themselves (`split_files`), from records serialized where they are
        made; Beam builds go through TFDS's generator path (`_split_generators`). TFDS's `download_and_prepare`
        around this gives both the same temporary directory, `dataset_info.json` and atomic rename."""
        if self._options.use_beam:
            super()._download_and_prepare(dl_manager, download_config)
            return
        self._store_dir = tempfile.mkdtemp(prefix="bert_jax_tokens_", dir=self._data_dir_root)
        if self._num_workers > 0:
            self._workers = BuildWorkers(self._options, self._num_workers)
        self._tokenize_to_store(self._store_dir)
        self.info.set_splits(tfds.core.SplitDict(self._write_splits(download_config.num_shards)))

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # Beam builds only (see `_download_and_prepare`)
        return {split: _beam_examples(self._options, split) for split in self._options.splits}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        raise NotImplementedError("Local builds write their splits in _download_and_prepare; Beam builds use Beam.")

    def _tokenize_to_store(self, directory: str) -> None:
        """Pass 1: every document, tokenized, appended to an on-disk store."""
        writer = TokenStoreWriter(directory)
        sizes = [_input_bytes(path) for path in self._options.input_files]
        bar = ProgressBar("Tokenizing the corpus", sum(sizes)) if self._show_progress else None
        progress = {"files_done": 0, "read": 0}

        def documents() -> Iterator[tuple[int, documents_lib.RawDocument]]:
            for file_index, path in enumerate(self._options.input_files):
                progress["read"] = 0
                for doc_index, document in enumerate(
                    documents_lib.iter_file_raw_documents(path, self._options.text_format, self.read_stats)
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
        # Kept with the corpus, so a job that reuses it reports the same figures as the build.
        self.info.metadata.update(num_documents=writer.num_documents, num_tokens=writer.num_tokens)
        logger.info("Tokenized %d documents, %d tokens.", writer.num_documents, writer.num_tokens)

    def _write_splits(self, num_shards: int | None) -> list[tfds.core.SplitInfo]:
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
            split: SplitShardsWriter(self.data_dir, self.name, split, num_shards) for split in self._options.splits
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

    # TFDS's own lines around a build ("Downloading and preparing dataset Unknown size ...", "Dataset ...
    # downloaded and prepared to ..."): nothing is downloaded here, and the job prints its own corpus line.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def cleanup(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self._store_dir:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            self._store_dir = None


# ----------------------------------------------------------------------------------------------------------
# The Apache Beam engine


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


def _bucket_of(document_key: str, buckets: int) -> int:
    return zlib.crc32(document_key.encode()) % buckets


def _read_file_documents(options: CorpusOptions, file_index: int) -> Iterator[tuple[int, tuple[str, list[str]]]]:
    path = options.input_files[file_index]
    for doc_index, sentences in enumerate(documents_lib.iter_file_documents(path, options.text_format)):
        key = document_key(file_index, doc_index)
        yield _bucket_of(key, options.beam_buckets), (key, sentences)


def _bucket_instances(
    options: CorpusOptions, split: str, bucket: tuple[int, Sequence[tuple[str, list[str]]]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Tokenizes one bucket of documents and creates their instances (random segments within the bucket)."""
    _, members = bucket
    tokenizer = options.tokenizer()
    config = options.instance_config(tokenizer)
    keyed = sorted(members)  # a deterministic order whatever order the runner delivered them in
    store, keys = [], []
    for key, sentences in keyed:
        tokenized = tokenize_document(tokenizer, sentences)
        if tokenized:
            store.append([(np.asarray(ids, np.int32), np.asarray(starts, bool)) for ids, starts in tokenized])
            keys.append(key)
    for index, key in enumerate(keys):
        yield from instances_of(options, config, store, index, key, split)


def _beam_examples(options: CorpusOptions, split: str) -> Any:
    beam = tfds.core.lazy_imports.apache_beam
    return (
        f"Files_{split}" >> beam.Create(list(range(len(options.input_files))))
        | f"Read_{split}" >> beam.FlatMap(lambda i: _read_file_documents(options, i))
        | f"Bucket_{split}" >> beam.GroupByKey()
        | f"Instances_{split}" >> beam.FlatMap(lambda bucket: _bucket_instances(options, split, bucket))
    )
