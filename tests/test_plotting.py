"""bert-jax-plot and bert_jax.harness.plotting: the data read from metrics.jsonl, the PNG, damaged files, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from matplotlib import image

from bert_jax.harness import plotting
from tests.conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# What MetricsLog writes: train records every 10 steps, eval records (prefixed eval_) at 20 and 30.
TRAIN = [
    {
        "step": step,
        "loss": 10.5 - step / 10,
        "mlm_loss": 9.75 - step / 10,
        "mlm_accuracy": step / 100,
        "nsp_loss": 0.75,
        "nsp_accuracy": 0.5 + step / 200,
        "learning_rate": step * 1e-5,
        "tokens_per_sec": 1000.0 + step,
        "grad_norm": 1.25,
        "mfu": 0.125,
    }
    for step in (10, 20, 30)
]
EVAL = [
    {
        "step": step,
        "eval_loss": 9.0 - step / 10,
        "eval_mlm_loss": 8.5 - step / 10,
        "eval_mlm_accuracy": step / 80,
        "eval_nsp_loss": 0.5,
        "eval_nsp_accuracy": 0.5 + step / 100,
    }
    for step in (20, 30)
]


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _workdir(tmp_path, name: str = "run", text: str | None = None):
    workdir = tmp_path / name
    workdir.mkdir(parents=True)
    records = [TRAIN[0], TRAIN[1], EVAL[0], TRAIN[2], EVAL[1]]  # the job's order: train, then eval, per step
    (workdir / "metrics.jsonl").write_text(_lines(records) if text is None else text)
    return workdir


def _expected(records: list[dict], key: str) -> plotting.Series:
    rows = [r for r in records if key in r]
    return plotting.Series(tuple(r["step"] for r in rows), tuple(float(r[key]) for r in rows))


def _plot_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.plot_metrics", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "MPLBACKEND": ""},  # the tool must not need a display or a backend setting
        timeout=120,
    )


# ---------------------------------------------------------------------------------------------------------------
# The data


def test_read_metrics_extracts_every_logged_value(tmp_path):
    run = plotting.read_metrics(_workdir(tmp_path))
    assert run.name == "run" and run.warnings == ()
    for key in TRAIN[0]:
        if key != "step":
            assert run.series[key] == _expected(TRAIN, key), key
    for key in EVAL[0]:
        if key != "step":
            assert run.series[key] == _expected(EVAL, key), key
    assert set(run.series) == (set(TRAIN[0]) | set(EVAL[0])) - {"step"}
    assert run.last_step == 30 and run.num_records("train") == 3 and run.num_records("eval") == 2
    # A metrics file may be given instead of its workdir.
    assert plotting.read_metrics(tmp_path / "run" / "metrics.jsonl").series == run.series


def test_repeated_steps_keep_the_latest_value(tmp_path):
    # A run resumed at step 20 after a first attempt had logged up to 40: steps 20 and 30 are logged again with
    # new values; the first attempt's step 40 is stale (the resumed run has not reached it yet) and is dropped.
    first = [{"step": s, "loss": 100.0 + s} for s in (10, 20, 30, 40)] + [{"step": 40, "eval_loss": 99.0}]
    resumed = [{"step": s, "loss": 200.0 + s} for s in (20, 30)] + [{"step": 30, "eval_loss": 98.0}]
    run = plotting.read_metrics(_workdir(tmp_path, text=_lines(first + resumed)))
    assert run.series["loss"] == plotting.Series((10, 20, 30), (110.0, 220.0, 230.0))
    assert run.series["eval_loss"] == plotting.Series((30,), (98.0,))
    assert len(run.warnings) == 1 and "steps repeat" in run.warnings[0] and "step(s) 20, 30" in run.warnings[0]
    # The same step logged twice in a row keeps the second value.
    twice = plotting.read_metrics(
        _workdir(tmp_path, "twice", _lines([{"step": 5, "loss": 1.0}, {"step": 5, "loss": 2.0}]))
    )
    assert twice.series["loss"] == plotting.Series((5,), (2.0,))


def test_truncated_last_line_is_ignored_with_a_warning(tmp_path):
    text = _lines(TRAIN[:2]) + json.dumps(TRAIN[2])[:25]  # killed mid-write: no closing brace, no newline
    run = plotting.read_metrics(_workdir(tmp_path, text=text))
    assert run.series["loss"] == _expected(TRAIN[:2], "loss")
    assert run.series["learning_rate"] == _expected(TRAIN[:2], "learning_rate")
    assert len(run.warnings) == 1 and "unfinished last line 3" in run.warnings[0]
    assert str(tmp_path / "run" / "metrics.jsonl") in run.warnings[0]


def test_unreadable_lines_inside_the_file_are_skipped_and_named(tmp_path):
    # A resumed job appends to an unfinished line: that line is garbage, the records around it are fine.
    garbage = json.dumps(TRAIN[1])[:20] + json.dumps(TRAIN[1]) + "\n"
    text = _lines(TRAIN[:1]) + garbage + "[1, 2]\n" + '{"loss": 1.0}\n' + "\n" + _lines(TRAIN[2:])
    run = plotting.read_metrics(_workdir(tmp_path, text=text))
    assert run.series["loss"] == _expected([TRAIN[0], TRAIN[2]], "loss")
    assert run.warnings == (f"{tmp_path / 'run' / 'metrics.jsonl'}: skipped 3 unreadable line(s): 2, 3, 4.",)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty: the run has not logged a step yet"),
        ("\n \n", "is empty: the run has not logged a step yet"),
        ("not json\n", "has no readable metrics record: none of its 1 line(s)"),
        ('{"step": 1', "has no readable metrics record: none of its 1 line(s)"),
    ],
)
def test_files_without_data_are_clear_errors(tmp_path, text, message):
    with pytest.raises(plotting.MetricsFileError, match=r"metrics\.jsonl") as error:
        plotting.read_metrics(_workdir(tmp_path, text=text))
    assert message in str(error.value)


def test_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "started").mkdir()
    with pytest.raises(plotting.MetricsFileError, match=r"exists but has no metrics\.jsonl: the job writes it at its"):
        plotting.read_metrics(tmp_path / "started")
    with pytest.raises(plotting.MetricsFileError, match=r"nowhere.*no such file; pass a pretraining workdir"):
        plotting.read_metrics(tmp_path / "nowhere")
    with pytest.raises(plotting.MetricsFileError, match="No workdir given"):
        plotting.plot_workdirs([], tmp_path / "x.png")


def test_run_names_are_workdir_names_made_unique():
    assert plotting.run_names(["/runs/tiny", "/runs/mini/"]) == ["tiny", "mini"]
    assert plotting.run_names(["/a/x/tiny", "/b/x/tiny"]) == ["a/x/tiny", "b/x/tiny"]
    assert plotting.run_names(["/runs/tiny/metrics.jsonl"]) == ["tiny"]


# ---------------------------------------------------------------------------------------------------------------
# The figure and the PNG


def test_figure_draws_the_extracted_series(tmp_path):
    first = plotting.read_metrics(_workdir(tmp_path, "first"))
    second = plotting.read_metrics(_workdir(tmp_path, "second", _lines(TRAIN)))  # no eval records
    figure = plotting.make_figure([first, second], size_px=(800, 600))
    loss, accuracy, rate, throughput = figure.axes
    drawn = {(line.get_color(), line.get_gid()): line for ax in figure.axes for line in ax.get_lines()}
    for color, run in (("C0", first), ("C1", second)):
        for key, series in run.series.items():
            if key in plotting.PLOTTED_KEYS:
                x, y = drawn[(color, key)].get_data()
                assert (tuple(x), tuple(y)) == (series.steps, series.values), (run.name, key)
    assert len(drawn) == 12 + 7  # every plotted metric of the first run, the 7 plotted train metrics of the second
    assert [ax.get_title() for ax in (loss, accuracy, rate, throughput)] == [
        "Loss",
        "Accuracy",
        "Learning rate",
        "Throughput",
    ]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["first", "second"]


def test_cli_writes_a_png_of_the_requested_size(tmp_path):
    workdir = _workdir(tmp_path)
    result = _plot_cli(f"--workdirs={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    output = workdir / "metrics.png"
    assert output.read_bytes()[:8] == PNG_MAGIC
    assert image.imread(output).shape == (900, 1400, 4)
    assert "run: 3 train / 2 eval records, up to step 30, last loss 7.5000, last eval_loss 6.0000" in result.stdout
    assert f"Wrote {output}" in result.stdout and result.stderr == ""
    assert not [name for name in os.listdir(workdir) if name.endswith(".tmp")]


def test_cli_overlays_runs_and_warns_about_damage(tmp_path):
    a = _workdir(tmp_path, "a")
    b = _workdir(tmp_path, "b", _lines(TRAIN) + '{"step": 4')
    output = tmp_path / "plots" / "both.png"
    result = _plot_cli(f"--workdirs={a},{b}", f"--output={output}", "--width=640", "--height=480", "--title=a vs b")
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.read_bytes()[:8] == PNG_MAGIC and image.imread(output).shape == (480, 640, 4)
    assert result.stderr.strip().startswith("bert-jax-plot: warning:") and "unfinished last line 4" in result.stderr


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp: [f"--workdirs={tmp / 'missing'}"], "no such file"),
        (lambda tmp: [f"--workdirs={_workdir(tmp, text='')}"], "is empty: the run has not logged a step yet"),
        (lambda tmp: [f"--workdirs={_workdir(tmp, 'a')},{_workdir(tmp, 'b')}"], "pass --output=FILE.png"),
        (lambda tmp: [f"--workdirs={_workdir(tmp)}", "--names=x,y", f"--output={tmp}/o.png"], "one name per workdir"),
    ],
)
def test_cli_errors_end_in_one_line(tmp_path, make_args, message):
    result = _plot_cli(*make_args(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-jax-plot: error:") and message in last, last
