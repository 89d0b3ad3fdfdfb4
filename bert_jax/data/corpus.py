"""The pretraining corpus: text files -> NSP instances in a sharded TFDS dataset (array_record files).

`build_corpus(options, output_dir)` runs the corpus build (`corpus_builder.CorpusBuild`) that
reads the input text (`documents.py`), tokenizes it (`tokenizers.py`), and writes NSP instances with the
original `create_pretraining_data.py` semantics (`instances.py`) as two splits, "train" and "validation",
in array_record shards it writes itself and publishes with `tfds.folder_dataset.write_metadata` (TFDS's public
API for a dataset made outside TFDS), so that `tfds.builder_from_directory` opens it.
Instances hold unpadded token ids and word-start flags; masking happens later, at batch time.

Two engines, one result format:
  * local (default): two streaming passes in one process. Pass 1 tokenizes every document into an on-disk
    `TokenStore`; pass 2 memory-maps it and creates instances, drawing random next segments from the whole
    corpus. Memory stays at a few documents whatever the corpus size.
  * Apache Beam (`use_beam=True`): the same per-document code as a Beam pipeline (DirectRunner here;
    Dataflow, Spark or Flink for Wikipedia-size corpora). Documents are spread over `beam_buckets`
    buckets by a stable hash of their position, and random next segments come from another document
    of the same bucket, so a worker holds one bucket (corpus / buckets) in memory.

A dataset is identified by a fingerprint of its options and inputs (its config name, a directory level), so a
build with different options goes to a new directory and never overwrites an earlier corpus; rebuilding with the
same options reuses the prepared one.

Object storage: an `output_dir` on gs:// is built in this host's cache (`storage.cache_path`) and uploaded
with `dataset_info.json` last (TFDS and `find_dataset_dirs` take a directory without it for unfinished); a
corpus already there is downloaded into the cache (verified by size and MD5) and reused. array_record reads
local files, so `local_dataset_dir` gives every reader a verified local copy of a remote corpus.

Reading: `open_corpus(path, split)` returns a random-access source (`len`, `[i]`, `__getitems__`) of dicts
with `tokens`, `segment_ids`, `word_starts`, `is_random_next`, without TensorFlow ops on the read path.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bert_jax import storage
from bert_jax.data import documents as documents_lib
from bert_jax.data import instance_records, record_files
from bert_jax.data.corpus_spec import (
    CorpusOptions,
    dataset_subdir,
)
from bert_jax.data.masking import MaskingConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Entry points


@dataclasses.dataclass
class BuildResult:
    """What `build_corpus` made (or found): where, how many instances per split, and its size."""

    dataset_dir: str
    num_examples: dict[str, int]
    reused: bool
    read_stats: documents_lib.ReadStats
    num_documents: int | None = None  # None: a Beam build, or a corpus built before these were recorded
    num_tokens: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the console: built or reused, documents / tokens / instances, seconds, where."""
        sizes = []
        if self.num_documents is not None:
            sizes.append(f"{self.num_documents:,} documents")
        if self.num_tokens is not None:
            sizes.append(f"{self.num_tokens:,} tokens")
        sizes.append(" + ".join(f"{n:,} {split}" for split, n in self.num_examples.items()) + " instances")
        how = "reused (built earlier with the same options)" if self.reused else f"built in {self.seconds:.1f} s"
        return f"Corpus {how}: {', '.join(sizes)} in {self.dataset_dir}"


def build_corpus(
    options: CorpusOptions,
    output_dir: str | os.PathLike[str],
    num_shards: int | None = None,
    beam_options: Any = None,
    show_progress: bool = False,
    num_workers: int = 0,
) -> BuildResult:
    """Builds (or reuses, when already prepared with the same options) the corpus under `output_dir`.

    Bad input ends in a `CorpusError` or `TokenizerError` before anything is written; a build that
    produced no training instance is removed again and reported. `show_progress` draws a progress bar on
    stderr for builds that run longer than a few seconds (local builds; Beam runners report their own).
    `num_workers` > 0 tokenizes and makes the instances of a local build in that many worker processes
    (`build_workers`); the corpus is the same byte for byte, and so is its fingerprint.
    """
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 (0: build in this process), got {num_workers!r}.")
    documents_lib.expand_input_files(list(options.input_files))  # every input exists (or a clear error)
    tokenizer = options.tokenizer()  # a bad vocabulary fails here, before any reading; the build reuses it
    output_dir = os.fspath(output_dir)
    if storage.is_remote(output_dir):
        return _build_remote(options, output_dir, num_shards, beam_options, show_progress, num_workers)
    os.makedirs(output_dir, exist_ok=True)
    from bert_jax.data.corpus_builder import quiet_tfds

    start = time.perf_counter()
    with quiet_tfds():
        built, reused = _build(options, output_dir, num_shards, beam_options, show_progress, num_workers, tokenizer)
        import tensorflow_datasets as tfds

        info = tfds.builder_from_directory(built.data_dir).info  # what every reader will see
    counts = {split: info.splits[split].num_examples for split in options.splits}
    if counts["train"] == 0:
        shutil.rmtree(built.data_dir, ignore_errors=True)
        raise documents_lib.CorpusError(
            "The corpus produced no training instance (every document was empty after tokenization)."
        )
    for path, name in ((options.vocab_file, "vocab.txt"), (options.tokenizer_file, "tokenizer.json")):
        copy = os.path.join(built.data_dir, name)
        if path and not os.path.exists(copy):
            shutil.copyfile(storage.local_copy(path), copy)
    metadata = info.metadata or {}
    return BuildResult(
        built.data_dir,
        counts,
        reused,
        built.read_stats,
        num_documents=metadata.get("num_documents"),
        num_tokens=metadata.get("num_tokens"),
        seconds=time.perf_counter() - start,
    )


DATASET_INFO = "dataset_info.json"  # written last (uploads; the build's rename): a directory without it is unfinished


def _build_remote(
    options: CorpusOptions,
    output_dir: str,
    num_shards: int | None,
    beam_options: Any,
    show_progress: bool,
    num_workers: int,
) -> BuildResult:
    """`build_corpus` onto object storage: reuse the uploaded corpus, or build in the host cache and upload."""
    remote = storage.join(output_dir, dataset_subdir(options))
    if storage.exists(storage.join(remote, DATASET_INFO)):
        storage.local_tree(remote)  # the cache now holds a verified copy, which TFDS finds prepared
    result = build_corpus(options, storage.cache_path(output_dir), num_shards, beam_options, show_progress, num_workers)
    storage.upload_tree(result.dataset_dir, remote, last=(DATASET_INFO,))
    return dataclasses.replace(result, dataset_dir=remote)


def local_dataset_dir(path: str | os.PathLike[str]) -> str:
    """The one prepared corpus at or under `path`, as a local directory (a verified cached copy when remote)."""
    path = os.fspath(path)
    if not storage.is_remote(path):
        dirs = find_dataset_dirs(path)
    else:
        dirs = [match.rsplit("/", 1)[0] for match in _remote_dataset_infos(path)]
    if len(dirs) != 1:
        raise documents_lib.CorpusError(
            f"{path} holds {len(dirs)} prepared corpora{': ' + ', '.join(dirs) if dirs else ''}; point it at "
            "exactly one (build one with bert-jax-build-corpus)."
        )
    return storage.local_tree(dirs[0]) if storage.is_remote(dirs[0]) else dirs[0]


def _remote_dataset_infos(path: str) -> list[str]:
    """The `dataset_info.json` files at `path` or up to three levels below it (`<name>/<config>/<version>`)."""
    found: list[str] = []
    for depth in range(4):
        found += storage.glob(storage.join(path, *(["*"] * depth), DATASET_INFO))
    return sorted(m for m in found if "incomplete" not in m.rsplit("/", 2)[-2])


def _build(
    options: CorpusOptions,
    output_dir: str,
    num_shards: int | None,
    beam_options: Any,
    show_progress: bool,
    num_workers: int,
    tokenizer: Any = None,
) -> tuple[Any, bool]:
    """The corpus build (`corpus_builder.CorpusBuild`, prepared now unless it already was) and whether it already
    was; `tokenizer` is `options.tokenizer()` when the caller has loaded it already."""
    from bert_jax.data.corpus_builder import CorpusBuild

    built = CorpusBuild(
        options=options,
        output_dir=output_dir,
        show_progress=show_progress,
        num_workers=num_workers,
        tokenizer=tokenizer,
    )
    reused = built.is_prepared()
    built.prepare(num_shards=num_shards, beam_options=beam_options)
    return built, reused


def find_dataset_dirs(path: str | os.PathLike[str]) -> list[str]:
    """Prepared dataset version directories (holding dataset_info.json) at or under `path`."""
    path = os.fspath(path)
    found = []
    for root, _, files in os.walk(path):
        if "dataset_info.json" in files and "incomplete" not in os.path.basename(root):
            found.append(root)
    return sorted(found)


def open_corpus(path: str | os.PathLike[str], split: str = "train") -> CorpusSource:
    """A random-access source over one split of a built corpus (or any prepared TFDS dataset directory).

    `path` is the dataset version directory or an output directory holding exactly one prepared corpus.
    """
    dirs = find_dataset_dirs(path)
    if not dirs:
        raise documents_lib.CorpusError(
            f"No prepared corpus under {path}; build one with bert-jax-build-corpus --output_dir={path}."
        )
    if len(dirs) > 1:
        raise documents_lib.CorpusError(f"{path} holds {len(dirs)} corpora ({', '.join(dirs)}); pass the one to use.")
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(dirs[0])
    if split not in builder.info.splits:
        raise documents_lib.CorpusError(f"{dirs[0]} has no split {split!r} (it has {', '.join(builder.info.splits)}).")
    return CorpusSource(builder.as_data_source(split=split))


class CorpusSource(collections.abc.Sequence):
    """One split of a corpus: TFDS's random-access data source, plus `read_columns`, which decodes a whole batch of
    records at once (`instance_records`), about 8x faster than TFDS's per-record decoding and identical to it.

    `read_columns` reads the records itself (`record_files.RecordFiles`, one thread, half the CPU of TFDS's
    thread-pooled read). Picklable (TFDS's source and the record files reopen their files), so batch worker
    processes get their own.
    """

    def __init__(self, tfds_source: Any) -> None:
        self.tfds_source = tfds_source
        split_info = tfds_source.dataset_info.splits[tfds_source.split]
        self.records = record_files.RecordFiles(split_info.filepaths, split_info.shard_lengths)
        if len(self.records) != len(tfds_source):
            raise documents_lib.CorpusError(
                f"The {tfds_source.split} split's files hold {len(self.records)} records but its dataset info says "
                f"{len(tfds_source)}; rebuild the corpus."
            )

    def __len__(self) -> int:
        return len(self.tfds_source)

    def __getitem__(self, index: Any) -> Any:
        return self.tfds_source[index]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self.tfds_source.__getitems__(indices)

    def read_columns(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The instances at `indices` as columns (`instance_records.columns_of_items`); TFDS decodes any record
        not in the corpus's own layout."""
        records = self.records.read(indices)
        try:
            return instance_records.decode_instances(records)
        except instance_records.UnexpectedLayout:
            return instance_records.columns_of_items(self.tfds_source.__getitems__(indices))


def corpus_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options, vocabulary size and special ids a corpus was built with."""
    dirs = find_dataset_dirs(path)
    if len(dirs) != 1:
        raise documents_lib.CorpusError(f"Expected one prepared corpus under {path}, found {len(dirs)}.")
    import tensorflow_datasets as tfds

    return dict(tfds.builder_from_directory(dirs[0]).info.metadata)


def masking_config_from_corpus(
    path: str | os.PathLike[str],
    max_predictions_per_seq: int,
    masked_lm_prob: float = 0.15,
    whole_word: bool = True,
) -> MaskingConfig:
    """The masking setup for a built corpus: its vocabulary size and special ids, plus the masking knobs."""
    metadata = corpus_metadata(path)
    special = metadata["special_ids"]
    return MaskingConfig(
        vocab_size=int(metadata["vocab_size"]),
        mask_id=int(special["[MASK]"]),
        pad_id=int(special["[PAD]"]),
        special_ids=(int(special["[PAD]"]), int(special["[CLS]"]), int(special["[SEP]"])),
        max_predictions=max_predictions_per_seq,
        masked_lm_prob=masked_lm_prob,
        whole_word=whole_word,
    )
