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

from bert_jax import storage
from bert_jax.launcher import quiet
from bert_jax.models import convert

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
    storage.check_paths(
        {
            "input": FLAGS.input,
            "tf_config_file": FLAGS.tf_config_file,
            "output_dir": FLAGS.output_dir,
            "vocab_file": FLAGS.vocab_file,
        }
    )
    del argv
    if storage.listdir(FLAGS.output_dir) and not FLAGS.overwrite and storage.is_remote(FLAGS.output_dir):
        raise FileExistsError(
            f"{FLAGS.output_dir} already exists and is not empty; choose another or pass --overwrite."
        )
    source = _local_source(FLAGS.input)
    kind = convert.detect_format(source) if FLAGS.input_format == "auto" else FLAGS.input_format
    if kind == "tf":
        tf_config = storage.local_input(FLAGS.tf_config_file) if FLAGS.tf_config_file else None
        config, params = convert.from_tf_checkpoint(source, tf_config)
    else:
        config, params = {"hf": convert.from_hf, "native": convert.from_native}[kind](source)
    vocab_file = storage.local_input(FLAGS.vocab_file) if FLAGS.vocab_file else None
    if vocab_file is None and os.path.isdir(source) and os.path.exists(os.path.join(source, "vocab.txt")):
        vocab_file = os.path.join(source, "vocab.txt")
    last = (convert.HF_CONFIG, convert.NATIVE_CONFIG)
    with storage.local_output(FLAGS.output_dir, last=last, replace=FLAGS.overwrite) as output_dir:
        if FLAGS.output_format == "hf":
            convert.to_hf(config, params, output_dir, vocab_file, FLAGS.lowercase, FLAGS.overwrite)
        else:
            convert.to_native(config, params, output_dir, vocab_file, FLAGS.overwrite)
    heads = "with" if "cls" in params else "without"
    logging.info("Wrote %s (%s format, %s pretraining heads).", FLAGS.output_dir, FLAGS.output_format, heads)
    print(f"Converted {FLAGS.input} ({kind}) -> {FLAGS.output_dir} ({FLAGS.output_format}), {heads} pretraining heads.")


def _local_source(path: str) -> str:
    """The input as a local path: a remote directory, file, or TF checkpoint prefix (its .index and .data files)."""
    if not storage.is_remote(path) or storage.exists(path):
        return storage.local_input(path)
    files = storage.glob(path + ".*")  # a TF checkpoint prefix: model.ckpt -> model.ckpt.index, .data-*
    if not files:
        raise FileNotFoundError(f"{path} does not exist.")
    for name in files:
        storage.local_copy(name)
    return storage.cache_path(path)


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    quiet.quiet_native_logs()  # also EPATH_USE_TF=false: gs:// through gcsfs
    try:
        app.run(main)
    except (convert.ConversionError, FileExistsError, ValueError, storage.StorageError) as e:
        raise SystemExit(f"bert-jax-convert: error: {e}") from None


if __name__ == "__main__":
    run()
