"""bert-jax-compile: compile a job's program for a TPU slice on this host, and say whether it fits.

  bert-jax-compile --config=experiments/bert_base_phase1.py --topology=v5p-8
  bert-jax-compile --config=experiments/glue_sst2.py --topology=v5e:2x2 --config.init_from=/tmp/bert_tiny
  bert-jax-compile --config=experiments/bert_large_lamb.py --topology=v5litepod-16 --config.num_microbatches=16
  bert-jax-compile --config=experiments/bert_tiny.py --topology=v5e:2x2 --num_slices=2

A pretraining config (`job = "pretrain"`) compiles `bert-jax-pretrain`'s train and eval steps; a fine-tuning
config (`job = "finetune"`) compiles `bert-jax-finetune`'s train and prediction steps, without the task's data. Needs libtpu (`pip install -e ".[tpu]"`), not a TPU. Prints a table and one JSON line (`{"compile": ...}`);
when the program does not fit, compiles up to --max_compiles cheaper variants and prints those that fit. Each
variant compiles in a child process of its own: a compiler crash in one (libtpu's segmentation fault, or the
host's out-of-memory killer) is that variant's row, "remat full: the TPU compiler crashed (signal 11, SIGSEGV)",
and the others are still compiled and printed.
Exit status: 0 fits, 1 does not fit, 2 a config or topology error (one line, before any compile).

  bert-jax-compile --config=experiments/bert_base_phase2.py --topology=v5p-8 --largest_batch

--largest_batch finds the largest batch per chip (rows per step, per microbatch; multiples of --batch_granularity,
or --powers_of_two) that fits, by compiling the config at a few global batch sizes (`bert_jax/compile/largest_batch.py`); it prints the
compiles, the answer with the table of its compile, and a JSON line (`{"largest_batch": ...}`); exit 0 when some
size fits, 1 when none does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax.launcher import quiet

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiments/*.py config file.", lock_config=True)
flags.DEFINE_string("topology", None, "A TPU slice: v4-8, v5p-8, v5litepod-16, v6e-8, ... or v5e:4x4, v5p:2x2x2.")
flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-center network (multislice; mesh.dcn_data).")
flags.DEFINE_bool("suggest", True, "When it does not fit, compile cheaper variants and print those that fit.")
flags.DEFINE_integer("max_compiles", 6, "At most this many variants are compiled for --suggest or --largest_batch.")
flags.DEFINE_bool(
    "largest_batch",
    False,
    "Instead of one compile: find the largest batch per chip that fits (rows per step, multiples of "
    "--batch_granularity), compiling the config at a few global batch sizes.",
)
flags.DEFINE_integer("batch_granularity", 8, "--largest_batch: sizes per chip are multiples of this many rows.")
flags.DEFINE_bool("powers_of_two", False, "--largest_batch: sizes per chip are powers of two (fewer compiles).")
flags.mark_flags_as_required(["config", "topology"])

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_CONFIG_ERROR = 0, 1, 2


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from bert_jax.compile import aot, fit, tpu_topology
    from bert_jax.jobs import config as job_config
    from bert_jax.jobs.plans import make_plan

    try:
        job = job_config.parse(FLAGS.config)
        where = tpu_topology.parse_topology(FLAGS.topology, FLAGS.num_slices)
        target = aot.slice_target(where)
        budget = fit.memory_budget(job, [])  # the job's fit_memory_gb: a smaller budget than the HBM
        if budget:
            target = dataclasses.replace(target, memory_bytes=budget)
        if FLAGS.largest_batch:
            _largest_batch(job, target)
        compiled = aot.compile_job(job, target, make_plan)
        report = compiled.report
    except ValueError as e:  # TopologyError, ConfigError: all before a compile ends
        print(f"bert-jax-compile: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    print(aot.format_report(report), flush=True)
    suggestions: list = []
    if not report.fits and FLAGS.suggest:
        print(f"Does not fit: trying up to {FLAGS.max_compiles} cheaper variants ...", flush=True)
        suggestions = aot.suggest_fits(
            compiled.config,
            target,
            make_plan,
            report,
            current=compiled.job,
            max_compiles=FLAGS.max_compiles,
            progress=lambda s: print(f"  {s}", flush=True),
        )
        print(aot.format_suggestions(suggestions))
        best = aot.best_fit(suggestions)
        print(f"Best fitting change: {best.change.flags}" if best else "None of the variants tried fits.")
    line = report.to_json()
    line["suggestions"] = [
        {"change": s.change.overrides, "fits": s.report.fits, "total_bytes": s.report.peak_bytes}
        if s.report is not None
        else {"change": s.change.overrides, "fits": False, "total_bytes": None, "crashed": s.crashed}
        for s in suggestions
        if s.report is not None or s.crashed
    ]
    print(json.dumps({"compile": line}), flush=True)
    raise SystemExit(EXIT_FITS if report.fits else EXIT_DOES_NOT_FIT)


def _largest_batch(job: Any, target: Any) -> None:
    """--largest_batch: the search, its lines and JSON line; exit 0 when some size fits, 1 when none does."""
    from bert_jax.compile import aot, largest_batch
    from bert_jax.jobs.plans import make_plan

    print(
        f"Finding the largest batch per chip that fits {target.name} (up to {FLAGS.max_compiles} compiles) ...",
        flush=True,
    )
    result = largest_batch.find_largest_batch(
        job,
        target,
        make_plan,
        granularity=FLAGS.batch_granularity,
        powers_of_two=FLAGS.powers_of_two,
        max_compiles=FLAGS.max_compiles,
        progress=lambda line: print(f"  {line}", flush=True),
    )
    best = result.best
    if best is not None:
        print(aot.format_report(best.report), flush=True)
    print(largest_batch.format_result(result))
    print(json.dumps({"largest_batch": {"topology": target.name, "num_slices": target.num_slices, **result.to_json()}}))
    raise SystemExit(EXIT_FITS if result.rows else EXIT_DOES_NOT_FIT)


def run() -> None:
    """Console-script entry point."""
    quiet.quiet_native_logs()
    # The compile needs libtpu's topology description, not a TPU backend: keep JAX on the CPU unless told
    # otherwise (on a host without TPUs, starting the TPU backend only prints libtpu's warnings).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if quiet.cpu_only_host_with_libtpu():
        from bert_jax.compile import tpu_topology

        tpu_topology.quiet_libtpu_for_aot()
    app.run(main)


if __name__ == "__main__":
    run()
