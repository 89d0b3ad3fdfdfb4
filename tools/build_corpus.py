"""bert-jax-build-corpus: text files -> a sharded TFDS corpus of BERT pretraining (NSP) instances.

  bert-jax-build-corpus --input_files='books/*.txt' --vocab_file=vocab.txt --output_dir=corpus \
      --max_seq_length=128 --num_shards=8

Inputs with one document per record are recognized by name: JSON Lines (`*.jsonl`, `*.ndjson`, `*.json`, also
`.gz` / `.zst`), Parquet (`*.parquet`) and datasets saved with Hugging Face's `save_to_disk` (the folder); the text is
the records' --text_field (default "text"):
  bert-jax-build-corpus --input_files='c4/*.json.gz,extra.parquet' --text_field=text --vocab_file=vocab.txt ...

The tokenizer is one of --vocab_file (WordPiece vocab.txt), --spm_model (SentencePiece) or --tokenizer_file (a
Hugging Face tokenizer.json such as ModernBERT's).

Wikipedia-size inputs: add --beam and a runner, e.g. (Dataflow)
  --beam --beam_pipeline_options="--runner=DataflowRunner,--project=P,--region=R,--temp_location=gs://B/tmp"
or --beam_pipeline_options="--runner=SparkRunner" / "--runner=FlinkRunner" (see docs/data.md).
"""

from __future__ import annotations

from absl import app, flags, logging

from bert_jax import storage, tokenizers
from bert_jax.data import build_workers, corpus, documents
from bert_jax.launcher import quiet

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "input_files",
    None,
    "Inputs: a glob or a comma-separated list (of files or globs): text files, JSON Lines (*.jsonl, *.ndjson, *.json, "
    "also .gz / .zst), Parquet (*.parquet), save_to_disk folders.",
    required=True,
)
flags.DEFINE_string("vocab_file", None, "WordPiece vocab.txt (or pass --spm_model or --tokenizer_file).")
flags.DEFINE_string("spm_model", None, "SentencePiece .model (or pass --vocab_file or --tokenizer_file).")
flags.DEFINE_string(
    "tokenizer_file",
    None,
    "Hugging Face tokenizer.json, e.g. ModernBERT's byte-level BPE (or pass --vocab_file or --spm_model).",
)
flags.DEFINE_bool(
    "lowercase", True, "Lowercase and strip accents (uncased WordPiece vocabularies; others normalize themselves)."
)
flags.DEFINE_string("output_dir", None, "Where the TFDS dataset is written.", required=True)
flags.DEFINE_enum(
    "text_format", "auto", list(documents.TEXT_FORMATS), "Layout of the input text files (auto: sniffed per file)."
)
flags.DEFINE_string(
    "text_field",
    documents.DEFAULT_TEXT_FIELD,
    "JSON Lines, Parquet and save_to_disk inputs (and tfds: ones): the field or column holding each document's text.",
)
flags.DEFINE_integer("max_seq_length", 128, "Tokens per instance, [CLS] and both [SEP] included.")
flags.DEFINE_float("short_seq_prob", 0.1, "Probability of a shorter target length (as the original).")
flags.DEFINE_integer("dupe_factor", 1, "Passes over the corpus with different NSP pairings (masking is dynamic).")
flags.DEFINE_integer("seed", 12345, "Seed for pairing, truncation and the validation split.")
flags.DEFINE_float("eval_fraction", 0.01, "Fraction of instances held out as the 'validation' split.")
flags.DEFINE_integer("num_shards", None, "Output files per split (default: TFDS picks by size).")
flags.DEFINE_integer(
    "num_workers",
    -1,
    "Local builds: worker processes that split, tokenize and make instances (-1: one per core, up to 16; 0: this "
    "process); the same corpus for any count.",
)
flags.DEFINE_bool("beam", False, "Build with Apache Beam (DirectRunner unless --beam_pipeline_options says).")
flags.DEFINE_integer("beam_buckets", 64, "Beam: document buckets; random next segments come from the same bucket.")
flags.DEFINE_string("beam_pipeline_options", None, "Beam: comma-separated pipeline options, e.g. --runner=...")


def main(argv: list[str]) -> None:
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TFDS's INFO lines; our own summary is printed
    storage.check_paths(
        {
            "input_files": FLAGS.input_files,
            "vocab_file": FLAGS.vocab_file,
            "spm_model": FLAGS.spm_model,
            "tokenizer_file": FLAGS.tokenizer_file,
            "output_dir": FLAGS.output_dir,
        }
    )
    del argv
    options = corpus.CorpusOptions(
        input_files=tuple(documents.expand_input_files(FLAGS.input_files)),
        vocab_file=FLAGS.vocab_file,
        spm_model=FLAGS.spm_model,
        tokenizer_file=FLAGS.tokenizer_file,
        lowercase=FLAGS.lowercase,
        text_format=FLAGS.text_format,
        text_field=FLAGS.text_field,
        max_seq_length=FLAGS.max_seq_length,
        short_seq_prob=FLAGS.short_seq_prob,
        dupe_factor=FLAGS.dupe_factor,
        seed=FLAGS.seed,
        eval_fraction=FLAGS.eval_fraction,
        use_beam=FLAGS.beam,
        beam_buckets=FLAGS.beam_buckets,
    )
    beam_options = None
    if FLAGS.beam and FLAGS.beam_pipeline_options:
        from apache_beam.options.pipeline_options import PipelineOptions

        beam_options = PipelineOptions(FLAGS.beam_pipeline_options.split(","))
    result = corpus.build_corpus(
        options,
        FLAGS.output_dir,
        FLAGS.num_shards,
        beam_options,
        show_progress=True,
        num_workers=build_workers.resolve_num_workers(FLAGS.num_workers),
    )
    stats = result.read_stats
    if not result.reused:
        skipped = f", skipped {len(stats.skipped_files)} file(s)" if stats.skipped_files else ""
        replaced = f", {stats.replaced_characters} undecodable bytes replaced" if stats.replaced_characters else ""
        print(
            f"Read {stats.files} file(s): {stats.documents} documents, {stats.sentences} sentences{skipped}{replaced}."
        )
    print(result.summary())
    logging.info("Corpus options: %s", options)  # with --verbosity=0


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    quiet.quiet_native_logs()
    try:
        app.run(main)
    except (documents.CorpusError, tokenizers.TokenizerError, storage.StorageError, ValueError, OSError) as e:
        raise SystemExit(f"bert-jax-build-corpus: error: {e}") from None


if __name__ == "__main__":
    run()
