"""bert-jax-embed: sentence embeddings and their cosine similarities from any BERT weights.

  bert-jax-embed --model=DIR --text="A cat sits on the mat." --text="A kitten rests on a rug."

DIR is a Hugging Face directory, a bert_jax export or an original TF checkpoint directory, with its
vocab.txt (or pass --vocab_file).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from bert_jax import storage, tokenizers
from bert_jax.launcher import quiet
from bert_jax.models import convert, embed

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Model directory (Hugging Face, bert_jax or TF checkpoint).", required=True)
flags.DEFINE_multi_string("text", None, "A text to embed (repeat the flag for several).", required=True)
flags.DEFINE_string("vocab_file", None, "WordPiece vocab.txt (default: the model directory's).")
flags.DEFINE_enum("pooling", "mean", ["mean", "cls"], "mean over tokens, or BERT's pooled [CLS] output.")
flags.DEFINE_integer("max_length", 128, "Longest sequence, [CLS] and [SEP] included.")


def _lowercase_of(model_dir: str) -> bool:
    """do_lower_case from the directory's tokenizer_config.json (uncased unless it says otherwise)."""
    path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return bool(json.load(f).get("do_lower_case", True))
    return True


def main(argv: list[str]) -> None:
    storage.check_paths({"model": FLAGS.model, "vocab_file": FLAGS.vocab_file})
    del argv
    model = storage.local_input(FLAGS.model)
    config, params = convert.load_pretrained(model)
    model_dir = model if os.path.isdir(model) else os.path.dirname(model)
    vocab_file = FLAGS.vocab_file or os.path.join(model_dir, "vocab.txt")
    tokenizer = tokenizers.load_tokenizer(vocab_file=vocab_file, lowercase=_lowercase_of(model_dir))
    batch = embed.single_segment_batch(tokenizer, FLAGS.text, FLAGS.max_length)
    vectors = embed.sentence_embeddings(config, params["bert"], batch, FLAGS.pooling)
    print(
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {len(FLAGS.text)} texts, {FLAGS.pooling} pooling"
    )
    for text, vector in zip(FLAGS.text, vectors, strict=True):
        head = " ".join(f"{v:+.3f}" for v in vector[:6])
        print(f"  [{head} ...] |v|={np.linalg.norm(vector):.3f}  {text}")
    print("cosine similarity:")
    for text, row in zip(FLAGS.text, embed.cosine_similarities(vectors), strict=True):
        print("  " + " ".join(f"{v:6.3f}" for v in row) + f"  {text[:40]}")


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    quiet.quiet_native_logs()  # also EPATH_USE_TF=false: gs:// through gcsfs
    try:
        app.run(main)
    except (convert.ConversionError, tokenizers.TokenizerError, ValueError, OSError) as e:
        raise SystemExit(f"bert-jax-embed: error: {e}") from None


if __name__ == "__main__":
    run()
