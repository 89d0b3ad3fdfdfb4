"""bert-jax-finetune: fine-tune and evaluate on GLUE, CoNLL-2003 NER or SQuAD (absl flags + a config file).

  bert-jax-finetune --config=experiments/glue_sst2.py --workdir=/tmp/sst2 --config.init_from=/tmp/bert_tiny \\
      --config.data_dir=/path/to/glue
  bert-jax-finetune --config=experiments/conll_ner.py --workdir=/tmp/ner --config.init_from=bert-base-hf-dir \\
      --config.data_dir=/path/to/conll2003

Run the same command again to resume from the workdir's latest checkpoint. Only this entry point reads flags;
the job is `bert_jax.jobs.finetuning.finetune_and_evaluate(job, workdir)` on the parsed config.
"""

from __future__ import annotations

from absl import flags
from bert_jax_tools import launch
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiments/*.py fine-tuning config.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, eval_results.json and predictions go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    launch.start_main(argv)
    launch.run_job("finetune", FLAGS.config, FLAGS.workdir)


def run() -> None:
    """Console-script entry point; user errors end in one line, not a traceback."""
    launch.run_job_main("bert-jax-finetune", main)


if __name__ == "__main__":
    launch.launch("finetune", run)
