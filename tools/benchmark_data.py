"""bert-jax-benchmark-data: corpus build MB/s and input-pipeline examples/s on this machine.

  taskset -c 0 bert-jax-benchmark-data --input_files='bert_jax/assets/corpus/*.txt' \
      --vocab_file=bert_jax/assets/vocab.txt --output_dir=/tmp/bench_corpus

Builds the corpus into a fresh directory (timing the whole build, over `--build_workers` processes; `--reuse`
keeps one built earlier), then times `--batches` batches of the masked-LM pipeline after `--warmup` batches
(which also start `--num_workers` worker processes), and prints one JSON line. With workers, the time per batch is the time between batches as the
consumer sees them: the pipeline's throughput.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time

from absl import app, flags, logging

from bert_jax.data import batch_workers, build_workers, corpus, documents, pipeline
from bert_jax.launcher import quiet

FLAGS = flags.FLAGS
flags.DEFINE_string("input_files", None, "Text files: a glob or a comma-separated list.", required=True)
flags.DEFINE_string("vocab_file", None, "WordPiece vocab.txt.", required=True)
flags.DEFINE_string("output_dir", None, "A scratch directory (emptied first).", required=True)
flags.DEFINE_integer("max_seq_length", 128, "Sequence length.")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked positions per sequence.")
flags.DEFINE_integer("global_batch_size", 256, "Batch size of the timed pipeline.")
flags.DEFINE_integer("batches", 40, "Timed batches.")
flags.DEFINE_integer("warmup", 3, "Untimed batches first.")
flags.DEFINE_integer("prefetch", 0, "Batches prepared ahead by a thread (0: time the work itself).")
flags.DEFINE_integer("num_workers", 0, "Worker processes making batches (0: this process; -1: the job's default).")
flags.DEFINE_integer(
    "build_workers",
    -1,
    "Worker processes building the corpus (0: this process; -1: one per core, as bert-jax-build-corpus).",
)
flags.DEFINE_bool(
    "reuse", False, "Reuse a corpus already built in --output_dir with the same options (no build timing)."
)


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TFDS's "Generating dataset" / "Load dataset info" INFO lines
    files = tuple(documents.expand_input_files(FLAGS.input_files))
    megabytes = sum(os.path.getsize(f) for f in files) / 1e6
    if not FLAGS.reuse:
        shutil.rmtree(FLAGS.output_dir, ignore_errors=True)
    options = corpus.CorpusOptions(input_files=files, vocab_file=FLAGS.vocab_file, max_seq_length=FLAGS.max_seq_length)
    num_build_workers = build_workers.resolve_num_workers(FLAGS.build_workers)
    result = corpus.build_corpus(options, FLAGS.output_dir, num_workers=num_build_workers)
    # The build's own seconds, as its "Corpus built in" line reports them: TFDS's import (~0.25 s, once per
    # process) and the vocabulary check before the build are not build throughput.
    build_seconds = result.seconds
    masking = corpus.masking_config_from_corpus(result.dataset_dir, FLAGS.max_predictions_per_seq)
    num_workers = batch_workers.resolve_num_workers(FLAGS.num_workers)
    config = pipeline.PipelineConfig(
        global_batch_size=FLAGS.global_batch_size,
        max_seq_length=FLAGS.max_seq_length,
        seed=0,
        prefetch=FLAGS.prefetch,
        num_workers=num_workers,
    )
    times = []
    with pipeline.PretrainingBatches(corpus.open_corpus(result.dataset_dir), config, masking) as batches:
        for _ in range(FLAGS.warmup):
            next(batches)
        for _ in range(FLAGS.batches):
            t = time.perf_counter()
            next(batches)
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "input_mb": round(megabytes, 3),
                "num_workers": num_workers,
                "cores": batch_workers.available_cores(),
                "instances": result.num_examples["train"],
                "corpus_reused": result.reused,
                "build_workers": None if result.reused else num_build_workers,
                "build_seconds": round(build_seconds, 2),
                "build_mb_per_sec": None if result.reused else round(megabytes / build_seconds, 3),
                "batch_ms_median": round(1000 * median, 2),
                "pipeline_examples_per_sec": round(FLAGS.global_batch_size / median, 1),
            }
        )
    )


def run() -> None:
    quiet.quiet_native_logs()
    app.run(main)


if __name__ == "__main__":
    run()
