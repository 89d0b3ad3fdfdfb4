"""Plots of a pretraining run's `metrics.jsonl`: loss, accuracy, learning rate and throughput, runs overlaid.

    runs = [read_metrics("runs/tiny"), read_metrics("runs/mini")]
    plot_runs(runs, "curves.png")

`metrics.jsonl` (written by `metrics_log.MetricsLog`) holds one JSON object per logged step: train records
`{"step", "loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "learning_rate", "tokens_per_sec",
"grad_norm", "mfu"}` and eval records with the same names prefixed `eval_` (`eval_loss`, `eval_mlm_accuracy`,
...). Reading is meant for live and damaged files, so that a plot can be made at any time:

- a missing or empty file is a `MetricsFileError` naming the file and the likely cause;
- a last line without its newline that does not parse is the write a killed job left unfinished: it is
  ignored with a warning (so is any other line that does not parse, naming its line number);
- steps that repeat (a run resumed from a checkpoint logs again from the restored step) keep the latest value:
  when a metric's step goes back, the points that metric had at that step and after come from the earlier
  attempt, whose work the resumed run redid, so they are dropped.

The figure is drawn on matplotlib's Agg canvas through the object API (no pyplot, no global backend switch),
so this works headless and inside other programs. Each run gets one colour; each metric one line style.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"

# The panels: (title, y label, [(metric key, legend label, line style)]). Eval metrics are drawn with markers
# (there are few eval points); the style of a metric is the same in every run, the colour tells runs apart.
PANELS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "Loss",
        "loss",
        (
            ("loss", "train total", "-"),
            ("mlm_loss", "train MLM", "--"),
            ("nsp_loss", "train NSP", ":"),
            ("eval_loss", "eval total", "-"),
            ("eval_mlm_loss", "eval MLM", "--"),
            ("eval_nsp_loss", "eval NSP", ":"),
        ),
    ),
    (
        "Accuracy",
        "accuracy",
        (
            ("mlm_accuracy", "train MLM", "-"),
            ("nsp_accuracy", "train NSP", ":"),
            ("eval_mlm_accuracy", "eval MLM", "-"),
            ("eval_mlm_accuracy_at_mask", "eval MLM at [MASK]", "-."),
            ("eval_nsp_accuracy", "eval NSP", ":"),
        ),
    ),
    ("Learning rate", "learning rate", (("learning_rate", "learning rate", "-"),)),
    ("Throughput", "tokens / s", (("tokens_per_sec", "train tokens/s", "-"),)),
)
PLOTTED_KEYS: tuple[str, ...] = tuple(key for _, _, lines in PANELS for key, _, _ in lines)


class MetricsFileError(ValueError):
    """A metrics file that cannot be plotted (missing, empty, nothing readable); the message names it."""


@dataclasses.dataclass(frozen=True)
class Series:
    """One metric over training: `steps` ascending and unique, `values[i]` logged at `steps[i]`."""

    steps: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.steps)


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """Everything read from one run's metrics file.

    `series` maps each metric name found (train names as logged, eval names with their `eval_` prefix) to its
    `Series`; `warnings` are the problems that were worked around (unparsable lines, resumed steps), in file
    order, each a full sentence naming the file.
    """

    name: str
    path: str
    series: Mapping[str, Series]
    warnings: tuple[str, ...] = ()

    @property
    def last_step(self) -> int | None:
        """The largest step of any metric, or None when there is none."""
        return max((s.steps[-1] for s in self.series.values() if s.steps), default=None)

    def num_records(self, kind: str = "train") -> int:
        """Distinct steps with at least one train metric (`kind="train"`) or eval metric (`kind="eval"`)."""
        if kind not in ("train", "eval"):
            raise ValueError(f"kind must be 'train' or 'eval', got {kind!r}.")
        is_eval = kind == "eval"
        return len({step for key, s in self.series.items() if key.startswith("eval_") == is_eval for step in s.steps})


def metrics_path(workdir_or_file: str | os.PathLike[str]) -> str:
    """The metrics file of a workdir (`<workdir>/metrics.jsonl`), or the path itself when it names a file."""
    path = os.fspath(workdir_or_file)
    return os.path.join(path, METRICS_FILE) if os.path.isdir(path) else path


def read_metrics(workdir_or_file: str | os.PathLike[str], name: str | None = None) -> RunMetrics:
    """Reads a run's metrics (see the module docstring for how damaged and resumed files are handled).

    `workdir_or_file` is a pretraining workdir or a metrics file; `name` labels the run in plots (default:
    the workdir's name). Raises `MetricsFileError` when the file is missing, empty or has no usable record.
    """
    path = metrics_path(workdir_or_file)
    if name is None:
        name = run_names([workdir_or_file])[0]
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        where = os.fspath(workdir_or_file)
        hint = (
            f"{where} exists but has no {METRICS_FILE}: the job writes it at its first log step (log_every_steps)"
            if os.path.isdir(where)
            else f"pass a pretraining workdir or its {METRICS_FILE}"
        )
        raise MetricsFileError(f"{path}: no such file; {hint}.") from None
    except IsADirectoryError:
        raise MetricsFileError(f"{path} is a directory, not a metrics file.") from None
    if not text.strip():
        raise MetricsFileError(
            f"{path} is empty: the run has not logged a step yet (the job writes a record every log_every_steps "
            "steps); plot it again later."
        )
    series, warnings = parse_records(text, path)
    if not series:
        lines = sum(1 for line in text.splitlines() if line.strip())
        raise MetricsFileError(
            f"{path} has no readable metrics record: none of its {lines} line(s) is a JSON object with a step; "
            f"is it a {METRICS_FILE} written by bert-jax-pretrain?"
        )
    return RunMetrics(name=name, path=path, series=series, warnings=tuple(warnings))


def parse_records(text: str, source: str = "metrics.jsonl") -> tuple[dict[str, Series], list[str]]:
    """The metric series in a metrics file's `text`, and warnings about what was skipped or replaced.

    `source` names the file in the warnings. Every numeric field except `step` becomes a series; see the module
    docstring for truncated lines and repeated steps.
    """
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()  # the empty string after the final newline
    points: dict[str, dict[int, float]] = {}
    last_step: dict[str, int] = {}  # the step of each metric's latest point, so appending stays O(1)
    warnings: list[str] = []
    replaced: dict[str, list[int]] = {}  # metric -> steps it went back to
    bad_lines: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_line(line)
        if record is None:
            if number == len(lines) and not complete:
                warnings.append(
                    f"{source}: ignored the unfinished last line {number} (the job was probably stopped while "
                    "writing it)."
                )
            else:
                bad_lines.append(number)
            continue
        step = record["step"]
        for key, value in record.items():
            if key == "step" or not _is_number(value):
                continue
            series = points.setdefault(key, {})
            if key in last_step and step <= last_step[key]:
                replaced.setdefault(key, []).append(step)
                for stale in [s for s in series if s >= step]:
                    del series[stale]
            series[step] = float(value)
            last_step[key] = step
    if bad_lines:
        warnings.insert(0, f"{source}: skipped {len(bad_lines)} unreadable line(s): {_line_list(bad_lines)}.")
    if replaced:
        # Every metric of a run goes back at the same restarts; report the restart steps once.
        restarts = sorted({step for steps in replaced.values() for step in steps})
        warnings.append(
            f"{source}: steps repeat (a resumed run?): logging went back to step(s) {_line_list(restarts)}; "
            "kept the latest value for each step and dropped the earlier attempt's later points."
        )
    result = {
        key: Series(steps=tuple(sorted(values)), values=tuple(values[s] for s in sorted(values)))
        for key, values in points.items()
        if values
    }
    return result, warnings


def _parse_line(line: str) -> dict[str, Any] | None:
    """One record, or None when the line is not a JSON object with an integer `step`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return record


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _line_list(numbers: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def run_names(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Legend labels for runs: each workdir's name, with parent directories added until the labels differ.

    A path to a metrics file is named after the directory holding it.
    """
    parts = []
    for path in paths:
        path = os.path.normpath(os.path.abspath(os.fspath(path)))
        if os.path.basename(path) == METRICS_FILE or os.path.isfile(path):
            path = os.path.dirname(path)
        parts.append([p for p in path.split(os.sep) if p] or [os.sep])
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def make_figure(
    runs: Sequence[RunMetrics],
    *,
    title: str | None = None,
    size_px: tuple[int, int] = (1400, 900),
    dpi: int = 100,
) -> Figure:
    """The figure of `runs`: a 2 x 2 grid of panels (loss, accuracy, learning rate, throughput), `size_px` pixels.

    Each panel's lines are added in `PANELS` order, run by run (a metric a run lacks is skipped); a panel with no
    data says so. Returned on an Agg canvas, not shown or saved.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not runs:
        raise ValueError("Plotting needs at least one run.")
    width, height = size_px
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (panel_title, ylabel, lines) in zip(figure.subplots(2, 2).flatten(), PANELS, strict=True):
        styles: dict[str, Line2D] = {}  # legend of line styles (metrics); the figure legend has the colours (runs)
        for run, color in zip(runs, colors, strict=True):
            for key, label, style in lines:
                series = run.series.get(key)
                if not series:
                    continue
                marker = "o" if key.startswith("eval_") else None
                ax.plot(series.steps, series.values, linestyle=style, marker=marker, markersize=4, color=color, gid=key)
                styles.setdefault(label, Line2D([], [], color="0.3", linestyle=style, marker=marker, markersize=4))
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if any(key == "learning_rate" for key, _, _ in lines):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        if len(styles) > 1:
            ax.legend(list(styles.values()), list(styles), fontsize="small", loc="best")
        elif not styles:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    handles = [Line2D([], [], color=c, linewidth=2) for c in colors]
    figure.legend(handles, [run.name for run in runs], loc="outside lower center", ncols=min(len(runs), 6))
    if title:
        figure.suptitle(title)
    return figure


def plot_runs(
    runs: Sequence[RunMetrics],
    output: str | os.PathLike[str],
    *,
    title: str | None = None,
    size_px: tuple[int, int] = (1400, 900),
    dpi: int = 100,
) -> str:
    """Writes `make_figure(runs)` as the PNG `output` (`size_px` pixels); returns its path.

    The image goes to a temporary file that is then renamed, so a viewer never sees half an image.
    """
    figure = make_figure(runs, title=title, size_px=size_px, dpi=dpi)
    output = os.fspath(output)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(output)}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=dpi)
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return output


def summarize_run(run: RunMetrics) -> str:
    """One line about a run: its name, last step, record counts and the final loss values when present."""
    parts = [f"{run.name}: {run.num_records('train')} train / {run.num_records('eval')} eval records"]
    if run.last_step is not None:
        parts.append(f"up to step {run.last_step}")
    for key in ("loss", "eval_loss"):
        series = run.series.get(key)
        if series and math.isfinite(series.values[-1]):
            parts.append(f"last {key} {series.values[-1]:.4f}")
    return ", ".join(parts)


def plot_workdirs(
    workdirs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    size_px: tuple[int, int] = (1400, 900),
) -> list[RunMetrics]:
    """Reads every workdir's metrics and plots them together into `output`; returns the runs read.

    `names` overrides the legend labels (one per workdir). Raises `MetricsFileError` on the first workdir whose
    metrics cannot be read (nothing is written then); warnings are on each returned run.
    """
    if not workdirs:
        raise MetricsFileError("No workdir given: pass at least one pretraining workdir.")
    if names is not None and len(names) != len(workdirs):
        raise ValueError(f"{len(names)} name(s) for {len(workdirs)} workdir(s); give one name per workdir.")
    labels = list(names) if names is not None else run_names(workdirs)
    runs = [read_metrics(workdir, label) for workdir, label in zip(workdirs, labels, strict=True)]
    plot_runs(runs, output, title=title, size_px=size_px)
    return runs
