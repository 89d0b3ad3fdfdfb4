"""bert-jax-convert: convert BERT weights between Hugging Face, original TF and bert_jax layouts.

  bert-jax-convert --input=uncased_L-12_H-768_A-12 --output_dir=bert-base-hf --output_format=hf \
      --vocab_file=uncased_L-12_H-768_A-12/vocab.txt
  bert-jax-convert --input=some-hf-bert-dir --output_dir=ours --output_format=native

The input format is detected (a Hugging Face directory, a TF checkpoint directory or prefix with its
bert_config.json, or a bert_jax directory) unless --input_format says it.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from bert_jax import convert, storage

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Model to convert: a directory or a TF checkpoint prefix.", required=True)
flags.DEFINE_enum("input_format", "auto", ["auto", "hf", "tf", "native"], "Format of --input.")
flags.DEFINE_string("tf_config_file", None, "bert_config.json of a TF checkpoint, if not beside it.")
flags.DEFINE_string("output_dir", None, "Directory to write (must be new or empty).", required=True)
flags.DEFINE_enum("output_format", "hf", ["hf", "native"], "hf: config.json + model.safetensors; native: bert_jax.")
flags.DEFINE_string("vocab_file", None, "vocab.txt to ship with the weights (default: the input's, if any).")
flags.DEFINE_bool("lowercase", True, "Whether the vocab is uncased (written to tokenizer_config.json).")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir (only after the new one is complete).")


def main(argv: list[str]) -> None:
    storage.require_local(
        {
            "input": FLAGS.input,
            "tf_config_file": FLAGS.tf_config_file,
            "output_dir": FLAGS.output_dir,
            "vocab_file": FLAGS.vocab_file,
        }
    )
    del argv
    kind = convert.detect_format(FLAGS.input) if FLAGS.input_format == "auto" else FLAGS.input_format
    if kind == "tf":
        config, params = convert.from_tf_checkpoint(FLAGS.input, FLAGS.tf_config_file)
    else:
        config, params = {"hf": convert.from_hf, "native": convert.from_native}[kind](FLAGS.input)
    vocab_file = FLAGS.vocab_file
    if vocab_file is None and os.path.isdir(FLAGS.input) and os.path.exists(os.path.join(FLAGS.input, "vocab.txt")):
        vocab_file = os.path.join(FLAGS.input, "vocab.txt")
    if FLAGS.output_format == "hf":
        convert.to_hf(config, params, FLAGS.output_dir, vocab_file, FLAGS.lowercase, FLAGS.overwrite)
    else:
        convert.to_native(config, params, FLAGS.output_dir, vocab_file, FLAGS.overwrite)
    heads = "with" if "cls" in params else "without"
    logging.info("Wrote %s (%s format, %s pretraining heads).", FLAGS.output_dir, FLAGS.output_format, heads)
    print(f"Converted {FLAGS.input} ({kind}) -> {FLAGS.output_dir} ({FLAGS.output_format}), {heads} pretraining heads.")


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    try:
        app.run(main)
    except (convert.ConversionError, FileExistsError, ValueError) as e:
        raise SystemExit(f"bert-jax-convert: error: {e}") from None


if __name__ == "__main__":
    run()
