"""bert-jax-plot: a PNG of pretraining curves (loss, accuracy, learning rate, throughput) from metrics.jsonl.

  bert-jax-plot --workdirs=/tmp/bert_tiny                       # writes /tmp/bert_tiny/metrics.png
  bert-jax-plot --workdirs=runs/tiny,runs/mini --output=tiny_vs_mini.png --title="tiny vs mini"

Runs are overlaid, one colour each, labelled by workdir name (or --names). A workdir of a running job can be
plotted at any time; a half-written last line is skipped and steps repeated by a resumed run keep their latest
value (see bert_jax/plotting.py), each with a warning on stderr.
"""

from __future__ import annotations

import sys

from absl import app, flags

from bert_jax import plotting, storage

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Pretraining workdirs (or metrics.jsonl files), comma-separated.", required=True)
flags.DEFINE_string("output", None, "PNG to write (default: metrics.png in the workdir, when there is only one).")
flags.DEFINE_list("names", None, "Legend labels, one per workdir (default: the workdirs' names).")
flags.DEFINE_string("title", None, "Figure title.")
flags.DEFINE_integer("width", 1400, "Image width in pixels.")
flags.DEFINE_integer("height", 900, "Image height in pixels.")


def main(argv: list[str]) -> None:
    storage.require_local({"workdirs": ",".join(FLAGS.workdirs or []), "output": FLAGS.output})
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])} (pass workdirs as --workdirs=a,b)")
    output = FLAGS.output
    if output is None:
        if len(FLAGS.workdirs) != 1:
            raise ValueError(f"{len(FLAGS.workdirs)} workdirs given: pass --output=FILE.png for the combined plot.")
        output = plotting.metrics_path(FLAGS.workdirs[0]).removesuffix(".jsonl") + ".png"
    runs = plotting.plot_workdirs(
        FLAGS.workdirs, output, names=FLAGS.names, title=FLAGS.title, size_px=(FLAGS.width, FLAGS.height)
    )
    for run in runs:
        for warning in run.warnings:
            print(f"bert-jax-plot: warning: {warning}", file=sys.stderr)
    for run in runs:
        print(plotting.summarize_run(run))
    print(f"Wrote {output}")


def run() -> None:
    """Console-script entry point; unreadable metrics and bad flags end in one line, not a traceback."""
    try:
        app.run(main)
    except (ValueError, OSError) as e:
        raise SystemExit(f"bert-jax-plot: error: {e}") from None


if __name__ == "__main__":
    run()
