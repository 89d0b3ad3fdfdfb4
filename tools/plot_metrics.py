"""bert-jax-plot: a PNG of pretraining curves (loss, accuracy, learning rate, throughput) from metrics.jsonl.

  bert-jax-plot --workdirs=/tmp/bert_tiny                       # writes /tmp/bert_tiny/metrics.png
  bert-jax-plot --workdirs=runs/tiny,runs/mini --output=tiny_vs_mini.png --title="tiny vs mini"

Runs are overlaid, one colour each, labelled by workdir name (or --names). A workdir of a running job can be
plotted at any time; a half-written last line is skipped and steps repeated by a resumed run keep their latest
value (see bert_jax/harness/plotting.py), each with a warning on stderr.
"""

from __future__ import annotations

import sys

from absl import app, flags

from bert_jax import storage
from bert_jax.harness import plotting
from bert_jax.launcher import quiet

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Pretraining workdirs (or metrics.jsonl files), comma-separated.", required=True)
flags.DEFINE_string("output", None, "PNG to write (default: metrics.png in the workdir, when there is only one).")
flags.DEFINE_list("names", None, "Legend labels, one per workdir (default: the workdirs' names).")
flags.DEFINE_string("title", None, "Figure title.")
flags.DEFINE_integer("width", 1400, "Image width in pixels.")
flags.DEFINE_integer("height", 900, "Image height in pixels.")


def main(argv: list[str]) -> None:
    storage.check_paths({"workdirs": ",".join(FLAGS.workdirs or []), "output": FLAGS.output})
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])} (pass workdirs as --workdirs=a,b)")
    output = FLAGS.output
    if output is None:
        if len(FLAGS.workdirs) != 1:
            raise ValueError(f"{len(FLAGS.workdirs)} workdirs given: pass --output=FILE.png for the combined plot.")
        only = FLAGS.workdirs[0]
        output = (
            storage.join(only, "metrics.png")
            if storage.is_remote(only)
            else plotting.metrics_path(only).removesuffix(".jsonl") + ".png"
        )
    # A remote workdir is read from this host's copy of its metrics.jsonl (its cache directory keeps the name).
    local = [_local_metrics(w) for w in FLAGS.workdirs]
    with storage.local_output(output) as local_output:
        runs = plotting.plot_workdirs(
            local, local_output, names=FLAGS.names, title=FLAGS.title, size_px=(FLAGS.width, FLAGS.height)
        )
    for run in runs:
        for warning in run.warnings:
            print(f"bert-jax-plot: warning: {warning}", file=sys.stderr)
    for run in runs:
        print(plotting.summarize_run(run))
    print(f"Wrote {output}")


def _local_metrics(workdir: str) -> str:
    if not storage.is_remote(workdir):
        return workdir
    path = workdir if workdir.endswith(".jsonl") else storage.join(workdir, "metrics.jsonl")
    return storage.local_copy(path)


def run() -> None:
    """Console-script entry point; unreadable metrics and bad flags end in one line, not a traceback."""
    quiet.quiet_native_logs()  # also EPATH_USE_TF=false: gs:// through gcsfs
    try:
        app.run(main)
    except (ValueError, OSError) as e:
        raise SystemExit(f"bert-jax-plot: error: {e}") from None


if __name__ == "__main__":
    run()
