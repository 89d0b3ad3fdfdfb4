"""bert-jax-pretrain: the pretraining job (absl flags + an ml_collections config file).

  bert-jax-pretrain --config=experiments/bert_tiny.py --workdir=/tmp/bert_tiny
  bert-jax-pretrain --config=experiments/bert_base_phase1.py --workdir=/mnt/bucket/run --config.num_train_steps=1000

Only this entry point reads flags (it lives in tools/, not in the library); the job itself is
`bert_jax.jobs.pretraining.train_and_evaluate(job, workdir)` on the parsed config (`tools/launch.run_job`).
Run the same command again to resume: the job continues from the workdir's latest checkpoint. Stopped by
SIGTERM or Ctrl-C (or a preemption notice on multi-host), it saves a checkpoint of the current step and
exits with status 0.
"""

from __future__ import annotations

import os

from absl import flags
from bert_jax_tools import launch
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiments/*.py config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the corpus, metrics, TensorBoard logs and exports go.")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU, SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (only where it is not auto-detected).")
flags.DEFINE_integer("num_processes", None, "Number of processes (only where it is not auto-detected).")
flags.DEFINE_integer("process_id", None, "This process's index (only where it is not auto-detected).")
flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    20,
    "Multi-process: a process whose heartbeats stop this long is taken for dead and every process stops (JAX's "
    "default is 100 s).",
)


def main(argv: list[str]) -> None:
    launch.start_main(argv)
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # CPU processes need a collectives backend (GPU/TPU ignore this setting).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
        )
    launch.run_job("pretrain", FLAGS.config, FLAGS.workdir)


def run() -> None:
    """Console-script entry point; configuration and data mistakes end in one line, not a traceback."""
    launch.run_job_main("bert-jax-pretrain", main)


if __name__ == "__main__":
    launch.launch("pretrain", run)
