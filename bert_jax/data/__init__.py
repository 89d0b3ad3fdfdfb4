"""Pretraining data, from text files to masked-LM batches.

  documents    text files (several layouts, bad bytes, binary/empty files) -> documents of sentences
  text_records JSON Lines (.gz, .zst), Parquet, save_to_disk folders -> each record's text (documents' input)
  tokenizers   (bert_jax.tokenizers) sentences -> token ids + word-start flags
  instances    documents -> NSP instances ([CLS] A [SEP] B [SEP]), the original semantics, streaming
  token_store  the on-disk tokenized corpus that gives instance creation random access with bounded memory
  corpus       the build (local or Apache Beam) writing instances as sharded array_record files, published
               as a TFDS dataset with TFDS's public API (corpus_builder)
  masking      dynamic whole-word masking at batch time, a pure function of (seed, epoch, example index)
  pipeline     this process's fixed-shape batches in a resumable global order

Only the corpus builder touches TensorFlow Datasets; the batch path is plain numpy.

May import: the top-level modules (`sharding`, `storage`, `tokenizers`). Nothing of models, training,
jobs, compile, the harness or the launcher.
"""
