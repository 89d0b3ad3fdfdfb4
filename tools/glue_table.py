"""bert-jax-glue-table: bert_jax vs transformers fine-tuned with the same recipe on GLUE tasks, several seeds.

  bert-jax-glue-table --model_dir=<a Hugging Face BERT or ModernBERT directory> --data_dir=/path/to/glue \
      --out_dir=/tmp/glue_table [--tasks=glue_stsb,glue_sst2] [--seeds=0,1,2] [--sides=bert_jax,transformers]
      [--learning_rate=1e-3 --steps=600 ...: one setting for every task, e.g. for a small model]

Run from the repository root (the task configs come from --config_dir, default experiments/). Each run is
its own process, one after the other; finished runs are kept in <out_dir>/runs.jsonl (a rerun skips them) and
the table goes to <out_dir>/table.md and stdout. Needs the test extra (torch, transformers).
"""

from __future__ import annotations

from absl import app, flags

from bert_jax.harness import glue_table

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model_dir",
    None,
    "The pretrained model both sides start from (a Hugging Face BERT or ModernBERT directory with a vocab.txt).",
    required=True,
)
flags.DEFINE_string("data_dir", None, "The GLUE root (one folder per task).", required=True)
flags.DEFINE_string("out_dir", None, "Where the runs, their logs and the table go.", required=True)
flags.DEFINE_list("tasks", list(glue_table.TABLE_TASKS), "Tasks (rows of the table).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds per task and side.")
flags.DEFINE_list("sides", list(glue_table.SIDES), "bert_jax and/or transformers.")
flags.DEFINE_string("config_dir", "experiments", "The directory of the glue_<task>.py configs.")
flags.DEFINE_float("learning_rate", 0, "Peak learning rate for every task (0: each row's own, 5e-5).")
flags.DEFINE_integer("steps", 0, "Training steps for every task (0: each row's own).")
flags.DEFINE_integer("batch_size", 0, "Global batch size for every task (0: each row's own, 16).")
flags.DEFINE_integer("max_seq_length", 0, "Sequence length for every task (0: each row's own).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        overrides = {
            "learning_rate": FLAGS.learning_rate, "steps": FLAGS.steps, "batch_size": FLAGS.batch_size,
            "max_seq_length": FLAGS.max_seq_length,
        }  # fmt: skip
        tasks = glue_table.tasks_named(FLAGS.tasks, **overrides)
        seeds = [int(seed) for seed in FLAGS.seeds]
        table = glue_table.build_table(
            tasks, seeds, FLAGS.model_dir, FLAGS.data_dir, FLAGS.config_dir, FLAGS.out_dir, FLAGS.sides
        )
    except (glue_table.TableError, ValueError) as e:
        raise SystemExit(f"bert-jax-glue-table: {e}") from None
    print(table, end="")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
