"""bert-jax-export: weights from a pretraining checkpoint, for transformers or for our fine-tuning.

  bert-jax-export --workdir=/tmp/bert_tiny --output_dir=/tmp/bert_tiny_hf
  bert-jax-export --workdir=/tmp/bert_tiny --step=200 --output_dir=/tmp/tiny_200 --format=bert_jax

--format=hf writes config.json + model.safetensors + vocab/tokenizer files (transformers' BertForPreTraining
and BertModel load it); --format=bert_jax writes bert_config.json + params.safetensors (our fine-tuning).
"""

from __future__ import annotations

from absl import app, flags, logging

from bert_jax import storage
from bert_jax.launcher import quiet
from bert_jax.models import convert
from bert_jax.training import checkpoint
from bert_jax.training.export import FORMATS, export_checkpoint

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The pretraining run's workdir (or its checkpoints/ directory).", required=True)
flags.DEFINE_integer("step", None, "The checkpoint step to export (default: the latest complete one).")
flags.DEFINE_string("output_dir", None, "Directory to write (must be new or empty).", required=True)
flags.DEFINE_enum("format", "hf", list(FORMATS), "hf: a Hugging Face directory; bert_jax: our params-only layout.")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir (only after the new one is complete).")


def main(argv: list[str]) -> None:
    storage.check_paths({"workdir": FLAGS.workdir, "output_dir": FLAGS.output_dir})
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    step = export_checkpoint(
        FLAGS.workdir, FLAGS.output_dir, step=FLAGS.step, fmt=FLAGS.format, overwrite=FLAGS.overwrite
    )
    print(f"Exported step {step} of {FLAGS.workdir} to {FLAGS.output_dir} ({FLAGS.format}).")


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    quiet.quiet_native_logs()
    try:
        app.run(main)
    except (
        checkpoint.CheckpointError,
        convert.ConversionError,
        storage.StorageError,
        FileExistsError,
        ValueError,
    ) as e:
        raise SystemExit(f"bert-jax-export: error: {e}") from None


if __name__ == "__main__":
    run()
