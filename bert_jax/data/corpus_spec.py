"""What a pretraining corpus is made of: its options, document keys, and documents turned into instances.

Shared by the corpus's readers and entry points (`corpus`) and its build (`corpus_builder`), so that
neither imports the other's internals: an instance's key and split depend only on the options and on the
document's identity (`document_key`), never on which builder made it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bert_jax import storage, tokenizers
from bert_jax.data import documents as documents_lib
from bert_jax.data import text_records
from bert_jax.data.instance_records import encode_instance
from bert_jax.data.instances import Instance, InstanceConfig, create_instances_from_document

DATASET_NAME = "bert_pretraining_corpus"
VERSION = "1.0.0"  # the corpus's TFDS version: the last level of its directory (`<name>/<config name>/<version>`)
SPLITS = ("train", "validation")
KEY_BASE = 1_000_000_000  # documents per file in an integer document key (file_index * base + index)


@dataclasses.dataclass(frozen=True)
class CorpusOptions:
    """Everything that decides the content of a corpus (and so its fingerprint)."""

    input_files: tuple[str, ...]
    vocab_file: str | None = None
    spm_model: str | None = None
    tokenizer_file: str | None = None  # a Hugging Face tokenizer.json (exactly one of the three tokenizer files)
    lowercase: bool = True  # WordPiece only
    text_format: str = "auto"  # text files; record inputs (JSON Lines, Parquet, saved datasets) have one layout
    text_field: str = documents_lib.DEFAULT_TEXT_FIELD  # the record inputs' (and tfds: inputs') text field
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    # The original draws a short target once per document; with books as documents that makes a whole book
    # short (or not). Per instance keeps the intended 10% of short instances on any document size.
    short_target_per_instance: bool = True
    # See InstanceConfig.split_single_sentence_chunks: keeps the random-next rate at 50%.
    split_single_sentence_chunks: bool = True
    dupe_factor: int = 1
    seed: int = 12345
    eval_fraction: float = 0.01
    use_beam: bool = False
    beam_buckets: int = 64

    def __post_init__(self) -> None:
        if not self.input_files:
            raise documents_lib.CorpusError("No input files given; pass --input_files.")
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length must be at least 8, got {self.max_seq_length}.")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}.")
        if self.dupe_factor < 1:
            raise ValueError(f"dupe_factor must be >= 1, got {self.dupe_factor}.")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")
        if self.text_format not in documents_lib.TEXT_FORMATS:
            raise ValueError(
                f"text_format {self.text_format!r} unknown; use one of {', '.join(documents_lib.TEXT_FORMATS)}."
            )
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(
                f"text_field must name a field (default {documents_lib.DEFAULT_TEXT_FIELD!r}), got {self.text_field!r}."
            )
        if self.beam_buckets < 1:
            raise ValueError(f"beam_buckets must be >= 1, got {self.beam_buckets}.")

    def tokenizer(self) -> tokenizers.Tokenizer:
        return tokenizers.load_tokenizer(
            self.vocab_file, self.spm_model, self.lowercase, tokenizer_file=self.tokenizer_file
        )

    @property
    def splits(self) -> tuple[str, ...]:
        """ "train", plus "validation" when a fraction is held out."""
        return SPLITS if self.eval_fraction > 0 else ("train",)

    def instance_config(self, tokenizer: tokenizers.Tokenizer) -> InstanceConfig:
        return InstanceConfig(
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            max_seq_length=self.max_seq_length,
            short_seq_prob=self.short_seq_prob,
            short_target_per_instance=self.short_target_per_instance,
            split_single_sentence_chunks=self.split_single_sentence_chunks,
        )

    def fingerprint(self) -> str:
        """A short hash of the options and of the inputs' names, sizes and vocabulary contents."""
        digest = hashlib.sha256()
        fields = dataclasses.asdict(self)
        fields.pop("use_beam")  # same content either way up to the documented bucket rule
        if fields["tokenizer_file"] is None:
            fields.pop("tokenizer_file")  # a later field: corpora built before it keep their fingerprints
        if fields["text_field"] == documents_lib.DEFAULT_TEXT_FIELD:
            fields.pop("text_field")  # likewise
        digest.update(json.dumps(fields, sort_keys=True).encode())
        for path in self.input_files:
            location = path.removeprefix(documents_lib.TFDS_PREFIX).split("#")[0]
            size, mtime = text_records.input_size_and_mtime(location)
            digest.update(f"{path}:{storage.absolute(location)}:{size}:{mtime}".encode())
        for path in (self.vocab_file, self.spm_model, self.tokenizer_file):
            if path:
                with storage.open_file(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
        return digest.hexdigest()[:12]

    def config_name(self) -> str:
        engine = "beam" if self.use_beam else "local"
        return f"seq{self.max_seq_length}_{engine}_{self.fingerprint()}"


def dataset_subdir(options: CorpusOptions) -> str:
    """Where under an output directory the corpus of `options` lives (`<name>/<config name>/<version>`)."""
    return "/".join((DATASET_NAME, options.config_name(), VERSION))


def split_of(options: CorpusOptions, dupe_index: int, document_key: str, instance_index: int) -> str:
    """'validation' for a deterministic `eval_fraction` of instances (by a hash of their identity)."""
    key = f"{options.seed}/{dupe_index}/{document_key}/{instance_index}".encode()
    return "validation" if zlib.crc32(key) / 2**32 < options.eval_fraction else "train"


def example_of(instance: Instance) -> dict[str, Any]:
    """An instance as the corpus stores it."""
    return {
        "tokens": instance.tokens.astype(np.int32),
        "segment_ids": instance.segment_ids.astype(np.int32),
        "word_starts": instance.word_starts.astype(np.bool_),
        "is_random_next": int(instance.is_random_next),
    }


def document_key(file_index: int, document_index: int) -> str:
    """A document's identity: its file's position in the inputs and its position in that file."""
    return f"{file_index:06d}-{document_index:09d}"


def tokenize_document(tokenizer: tokenizers.Tokenizer, sentences: Sequence[str]) -> list[tuple[list[int], list[bool]]]:
    """A document's sentences as (wordpiece ids, word-start flags), empty sentences dropped."""
    return [(ids, starts) for ids, starts in tokenizer.encode_batch_with_word_starts(list(sentences)) if ids]


def instances_of(
    options: CorpusOptions,
    config: InstanceConfig,
    store: Any,
    document_index: int,
    document_key: str,
    split: str,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, example) of every instance of one tokenized document (in `store`) that falls in `split`."""
    for dupe in range(options.dupe_factor):
        instances = create_instances_from_document(store, document_index, config, seed=options.seed, dupe_index=dupe)
        for i, instance in enumerate(instances):
            if split_of(options, dupe, document_key, i) == split:
                yield f"{dupe}/{document_key}/{i}", example_of(instance)


def split_records_of(
    options: CorpusOptions, config: InstanceConfig, store: Any, document_index: int, document_key: str
) -> Iterator[tuple[str, bytes]]:
    """(split, serialized record) of every instance of one tokenized document, all splits in one pass, in the
    order `instances_of` makes them (the local build's form; `instance_records.encode_instance`)."""
    for dupe in range(options.dupe_factor):
        instances = create_instances_from_document(store, document_index, config, seed=options.seed, dupe_index=dupe)
        for i, instance in enumerate(instances):
            yield split_of(options, dupe, document_key, i), encode_instance(example_of(instance))
