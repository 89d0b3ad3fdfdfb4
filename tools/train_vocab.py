"""bert-jax-train-vocab: train a WordPiece vocab.txt or a SentencePiece model for BERT pretraining.

  bert-jax-train-vocab --input_files='corpus/*.txt' --vocab_size=30522 --output=vocab.txt
  bert-jax-train-vocab --model_type=sentencepiece --input_files=a.txt,b.txt --vocab_size=32000 --output=spm.model

Either way [PAD] [UNK] [CLS] [SEP] [MASK] get ids 0-4. The training itself lives in bert_jax.tokenizers
(train_wordpiece / train_sentencepiece); this file only reads flags. An existing output is never replaced
unless --overwrite is given.
"""

from __future__ import annotations

from absl import app, flags

from bert_jax import storage, tokenizers
from bert_jax.data import documents
from bert_jax.launcher import quiet

FLAGS = flags.FLAGS
flags.DEFINE_string("input_files", None, "Text files: a comma-separated list of paths or globs.", required=True)
flags.DEFINE_integer("vocab_size", 30522, "Number of tokens to learn, special tokens included.")
flags.DEFINE_string(
    "output", None, "Path of the vocab.txt (wordpiece) or .model (sentencepiece) to write.", required=True
)
flags.DEFINE_enum("model_type", "wordpiece", ["wordpiece", "sentencepiece"], "Which kind of vocabulary to train.")
flags.DEFINE_bool("lowercase", True, "Uncased: lowercase (and, for WordPiece, strip accents) before training.")
flags.DEFINE_integer("min_frequency", 2, "WordPiece only: ignore merges seen fewer times than this.")
flags.DEFINE_bool("overwrite", False, "Replace --output if it already exists.")


def main(argv: list[str]) -> None:
    storage.check_paths({"input_files": FLAGS.input_files, "output": FLAGS.output})
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    files = documents.expand_input_files(FLAGS.input_files)
    if storage.is_remote(FLAGS.output) and storage.exists(FLAGS.output) and not FLAGS.overwrite:
        raise FileExistsError(f"{FLAGS.output} exists; pass --overwrite to replace it.")
    local_files = [storage.local_input(f) for f in files]  # the trainers read local files
    with storage.local_output(FLAGS.output) as output:
        if FLAGS.model_type == "wordpiece":
            path = tokenizers.train_wordpiece(
                local_files,
                FLAGS.vocab_size,
                output,
                lowercase=FLAGS.lowercase,
                min_frequency=FLAGS.min_frequency,
                overwrite=FLAGS.overwrite,
            )
            tokenizer = tokenizers.WordPieceTokenizer(path, lowercase=FLAGS.lowercase)
        else:
            path = tokenizers.train_sentencepiece(
                local_files, FLAGS.vocab_size, output, lowercase=FLAGS.lowercase, overwrite=FLAGS.overwrite
            )
            tokenizer = tokenizers.SentencePieceTokenizer(path)
    where = FLAGS.output if storage.is_remote(FLAGS.output) else path
    print(f"wrote {where}: {FLAGS.model_type}, {tokenizer.vocab_size} tokens, trained on {len(files)} file(s)")


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    quiet.quiet_native_logs()  # also EPATH_USE_TF=false: gs:// through gcsfs
    try:
        app.run(main)
    except (tokenizers.TokenizerError, documents.CorpusError, storage.UnsupportedPathError, OSError) as e:
        raise SystemExit(f"bert-jax-train-vocab: error: {e}") from None


if __name__ == "__main__":
    run()
