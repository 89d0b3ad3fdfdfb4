"""bert-jax-predict: label new text with a fine-tuned model; JSON lines out.

  echo "a gripping, beautifully acted film" | bert-jax-predict --workdir=/tmp/sst2
  bert-jax-predict --workdir=/tmp/ner --input=sentences.txt --output=entities.jsonl
  printf 'Who wrote it?\tThe book was written by Mary Shelley.\n' | bert-jax-predict --workdir=/tmp/squad

Input, one item per line: GLUE "text" or "text_a<TAB>text_b"; NER a sentence; SQuAD "question<TAB>context"
or {"question": ..., "context": ...}. The task, labels, vocabulary and sequence length come from the
workdir's checkpoint.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from bert_jax import storage
from bert_jax.finetune.predict import PredictError, Predictor
from bert_jax.launcher import quiet
from bert_jax.training import checkpoint

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The bert-jax-finetune workdir.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("input", "-", "Input file, '-' for stdin.")
flags.DEFINE_string("output", "-", "Output JSON lines file, '-' for stdout.")
flags.DEFINE_integer("batch_size", 32, "Lines per jitted batch.")


def main(argv: list[str]) -> None:
    storage.check_paths({"workdir": FLAGS.workdir, "input": FLAGS.input, "output": FLAGS.output})
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    predictor = Predictor.from_workdir(FLAGS.workdir, FLAGS.step, FLAGS.batch_size)
    if FLAGS.input == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with storage.open_file(FLAGS.input, "rb") as f:
                lines = f.read().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise PredictError(f"{FLAGS.input} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    lines = [line for line in lines if line.strip()]
    records = predictor.predict(lines)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if FLAGS.output == "-":
        sys.stdout.write(text)
    else:
        storage.write_text(FLAGS.output, text)


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    quiet.quiet_native_logs()  # also EPATH_USE_TF=false: gs:// through gcsfs
    try:
        app.run(main)
    except (PredictError, checkpoint.CheckpointError, FileNotFoundError, ValueError, storage.StorageError) as e:
        raise SystemExit(f"bert-jax-predict: error: {e}") from None


if __name__ == "__main__":
    run()
