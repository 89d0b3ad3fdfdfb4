"""bert-jax-pretrain: the pretraining job (absl flags + an ml_collections config file).

  bert-jax-pretrain --config=experiments/bert_tiny.py --workdir=/tmp/bert_tiny
  bert-jax-pretrain --config=experiments/bert_base_phase1.py --workdir=gs://... --config.num_train_steps=1000

Only this entry point reads flags; the job itself is `pretrain_loop.train_and_evaluate(config, workdir)`.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from bert_jax import tokenizers
from bert_jax.data import documents

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiments/*.py config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the corpus, metrics, TensorBoard logs and exports go.")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU, SLURM).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import jax

    if FLAGS.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
    from bert_jax import pretrain_loop

    pretrain_loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run() -> None:
    """Console-script entry point; configuration and data mistakes end in one line, not a traceback."""
    try:
        app.run(main)
    except (ValueError, documents.CorpusError, tokenizers.TokenizerError, FileNotFoundError) as e:
        raise SystemExit(f"bert-jax-pretrain: error: {e}") from None


if __name__ == "__main__":
    run()
