"""bert-jax-benchmark: time the pretraining job's train step for an experiments/*.py config on this machine.

  bert-jax-benchmark --config=experiments/bert_mini.py --config.global_batch_size=16 --steps=5
  bert-jax-benchmark --config=experiments/bert_base_phase1.py --config.global_batch_size=8 --steps=3
  bert-jax-benchmark --config=experiments/bert_tiny.py --input=pipeline --workdir=/tmp/bench   # real batches
  bert-jax-benchmark --config=experiments/bert_mini.py --steps=3 --profile_dir=/tmp/prof   # + time per model op

The config and its --config.* overrides load exactly as for bert-jax-pretrain; the step is the job's own
(bert_jax/harness/benchmark.py). Progress goes to stderr; stdout gets a table and, last, one JSON line with every
measurement (step_ms_median, sequences_per_sec, tokens_per_sec, model_tflops_per_sec, mfu, compile_s,
peak_rss_mb, device memory, the configuration and versions).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from bert_jax import tokenizers
from bert_jax.data import documents
from bert_jax.harness import benchmark, op_profile
from bert_jax.jobs import config as job_config
from bert_jax.launcher import host_memory, quiet

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiments/*.py config file.", lock_config=True)
flags.mark_flags_as_required(["config"])
flags.DEFINE_integer("steps", 10, "Timed train steps.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed train steps after compiling, before the timed ones.", lower_bound=0)
flags.DEFINE_enum(
    "input",
    "synthetic",
    list(benchmark.INPUTS),
    "synthetic: one full-length batch of the real "
    "shapes, kept on the devices; pipeline: the job's input pipeline over the corpus.",
)
flags.DEFINE_float(
    "peak_flops",
    None,
    "Peak FLOP/s per device for MFU (default: the config's "
    "peak_flops_per_device, else a matmul measured in the compute dtype).",
)
flags.DEFINE_string(
    "workdir",
    None,
    "--input=pipeline: build (or reuse) the corpus in WORKDIR/corpus "
    "(default: a temporary directory, removed afterwards).",
)
flags.DEFINE_string(
    "profile_dir",
    None,
    "Trace the timed steps with jax.profiler into this directory (perfetto trace) and print where the step's time "
    "goes per model op (on a CPU this turns on XLA's per-thunk events; the step times include the tracing).",
)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU, SLURM).")


def _say(message: str) -> None:
    print(f"[bert-jax-benchmark] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.profile_dir:
        op_profile.enable_cpu_op_tracing()  # before JAX creates its backend, which reads XLA_FLAGS once
    import jax

    if FLAGS.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
    config_file = config_flags.get_config_filename(FLAGS["config"])
    options = benchmark.BenchmarkOptions(
        steps=FLAGS.steps,
        warmup=FLAGS.warmup,
        input=FLAGS.input,
        peak_flops=FLAGS.peak_flops,
        corpus_workdir=FLAGS.workdir,
        config_name=os.path.splitext(os.path.basename(config_file))[0],
        profile_dir=FLAGS.profile_dir,
    )
    result = benchmark.run_benchmark(job_config.parse(FLAGS.config, expect="pretrain"), options, progress=_say)
    if jax.process_index() == 0:
        print(benchmark.format_table(result))
        print(json.dumps(result), flush=True)


def run() -> None:
    """Console-script entry point; configuration and data mistakes end in one line, not a traceback."""
    try:
        app.run(main)
    except (ValueError, documents.CorpusError, tokenizers.TokenizerError, FileNotFoundError) as e:
        raise SystemExit(f"bert-jax-benchmark: error: {e}") from None


if __name__ == "__main__":
    quiet.quiet_native_logs()
    host_memory.restart_with_hugepage_malloc()
    run()
