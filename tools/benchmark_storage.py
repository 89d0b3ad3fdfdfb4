"""bert-jax-benchmark-storage: checkpoint save/restore MB/s on a directory or bucket, and corpus download time.

  bert-jax-benchmark-storage --dir=gs://BUCKET/scratch --megabytes=352
  bert-jax-benchmark-storage --dir=/tmp/scratch --corpus_dir=gs://BUCKET/run/corpus

Prints one JSON line per measurement (`bert_jax.harness.storage_benchmark`).
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from bert_jax import storage
from bert_jax.launcher import quiet

FLAGS = flags.FLAGS
flags.DEFINE_string("dir", None, "Where the checkpoints are written (a local directory or gs://...).", required=True)
flags.DEFINE_float("megabytes", 352.0, "Size of the synthetic train state (params + two moments).")
flags.DEFINE_integer("repeats", 3, "Saves and restores timed (medians are reported).")
flags.DEFINE_string("corpus_dir", None, "Also time copying this (remote) corpus into a fresh host cache.")


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    storage.check_paths({"dir": FLAGS.dir, "corpus_dir": FLAGS.corpus_dir})
    from bert_jax.harness import storage_benchmark

    print(json.dumps(storage_benchmark.checkpoint_throughput(FLAGS.dir, FLAGS.megabytes, FLAGS.repeats)))
    if FLAGS.corpus_dir:
        print(json.dumps(storage_benchmark.corpus_download(FLAGS.corpus_dir)))


def run() -> None:
    """Console-script entry point; path mistakes end in one line."""
    quiet.quiet_native_logs()
    try:
        app.run(main)
    except (storage.StorageError, ValueError, OSError) as e:
        raise SystemExit(f"bert-jax-benchmark-storage: error: {e}") from None


if __name__ == "__main__":
    run()
