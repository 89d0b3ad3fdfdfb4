"""The GLUE comparison table: bert_jax and transformers fine-tuned with one recipe, side by side, several seeds.

For each task and seed it runs `bert-jax-finetune` (the task's experiments/ config with the table's settings)
and then `bert_jax.harness.torch_reference` (transformers + torch AdamW as `transformers.Trainer` does), both from
the same Hugging Face directory, BERT or ModernBERT (each side picks its own model of that family),
each in its own process, one after the other on the same machine, and records the dev metric and each run's
whole wall time (start-up, tokenization and compiles included). Every finished run is appended to
`<out_dir>/runs.jsonl` at once, so an interrupted table resumes where it stopped; `table.md` is rewritten
after every run with the mean and spread (min-max) per task.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bert_jax.models import families

SIDES = ("bert_jax", "transformers")


@dataclasses.dataclass(frozen=True)
class TableTask:
    """One task's row: the recipe both sides run (batch 16, lr 5e-5, warmup 10%, weight decay 0.01)."""

    name: str
    metric: str
    max_seq_length: int
    steps: int
    batch_size: int = 16
    learning_rate: float = 5e-5

    @property
    def settings(self) -> str:
        """The recipe in words; a run counts for a row only when it ran these settings."""
        return f"{self.steps} x {self.batch_size}, seq {self.max_seq_length}, lr {self.learning_rate:g}"


TABLE_TASKS = {
    task.name: task
    for task in (
        TableTask("glue_sst2", "accuracy", 64, 250),
        TableTask("glue_stsb", "pearson", 128, 300),
        TableTask("glue_mrpc", "f1", 128, 300),
        # CoLA at the others' 300 x 16, lr 5e-5 answers the majority class (MCC 0 on both sides): 3 epochs here.
        TableTask("glue_cola", "matthews_corrcoef", 32, 800, batch_size=32, learning_rate=1e-4),
        TableTask("glue_rte", "accuracy", 128, 300),
    )
}


class TableError(ValueError):
    """A task or setting the table cannot run."""


def tasks_named(names: Sequence[str], **overrides: float) -> list[TableTask]:
    """The named tasks' rows; `overrides` (steps, batch_size, max_seq_length, learning_rate; 0 = the row's own)
    set one setting for every task, e.g. the higher learning rate a small model needs."""
    unknown = [name for name in names if name not in TABLE_TASKS]
    if unknown:
        raise TableError(f"No table settings for {', '.join(unknown)}; the table's tasks: {', '.join(TABLE_TASKS)}.")
    fields = {field.name for field in dataclasses.fields(TableTask)} - {"name", "metric"}
    bad = [key for key, value in overrides.items() if key not in fields or value < 0]
    if bad:
        raise TableError(f"Cannot set {', '.join(bad)}; settings are {', '.join(sorted(fields))}, each >= 0.")
    chosen = {key: type(getattr(TABLE_TASKS[names[0]], key))(value) for key, value in overrides.items() if value}
    return [dataclasses.replace(TABLE_TASKS[name], **chosen) for name in names]


def model_family(model_dir: str) -> str:
    """The model family of a Hugging Face directory (its `config.json`'s `model_type`: "bert" or "modernbert")."""
    model_type = families.hf_model_type(model_dir)
    for family in families.FAMILIES.values():
        if family.model_type == model_type:
            return family.name
    raise TableError(
        f"{model_dir}: model_type {model_type!r} is not a family this table runs ({', '.join(families.FAMILIES)})."
    )


def ours_command(task: TableTask, seed: int, model_dir: str, data_dir: str, config_dir: str, workdir: str) -> list[str]:
    """`bert-jax-finetune` with the table's recipe (the config's default optimizer recipe, `transformers`), the
    model's family (`model.family`, set only when it is not BERT) read from `model_dir`."""
    family = model_family(model_dir)
    flags = {
        "init_from": model_dir,
        **({} if family == families.DEFAULT_FAMILY else {"model.family": family}),
        "data_dir": data_dir,
        "max_seq_length": task.max_seq_length,
        "global_batch_size": task.batch_size,
        "num_train_steps": task.steps,
        "learning_rate": task.learning_rate,
        "warmup_fraction": 0.1,
        "weight_decay": 0.01,
        "seed": seed,
        "eval_every_steps": task.steps,
        "checkpoint_every_steps": 10 * task.steps,  # the final save only
        "compilation_cache_dir": "off",  # every run compiles, as a user's first run does
    }
    config = os.path.join(config_dir, f"{task.name}.py")
    # The job by its module name, as its own process (the installed `bert-jax-finetune` runs the same main).
    return [
        sys.executable, "-m", "bert_jax_tools.finetune", f"--config={config}", f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in flags.items()),
    ]  # fmt: skip


def reference_command(task: TableTask, seed: int, model_dir: str, data_dir: str, output: str) -> list[str]:
    return [
        sys.executable, "-m", "bert_jax.harness.torch_reference", f"--task={task.name}", f"--model_dir={model_dir}",
        f"--data_dir={data_dir}", f"--steps={task.steps}", f"--batch_size={task.batch_size}",
        f"--max_seq_length={task.max_seq_length}", f"--learning_rate={task.learning_rate}", f"--seed={seed}",
        f"--output={output}",
    ]  # fmt: skip


def _run(command: list[str], log_path: str) -> float:
    """Runs `command` with its output in `log_path`; its wall seconds. A failed run raises with the log's tail."""
    started = time.perf_counter()
    env = {**os.environ, "USE_TF": "0", "TF_CPP_MIN_LOG_LEVEL": "3", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code:
        with open(log_path, encoding="utf-8") as log:
            tail = "".join(log.readlines()[-15:])
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {code}; the end of {log_path}:\n{tail}")
    return time.perf_counter() - started


def run_one(
    side: str, task: TableTask, seed: int, model_dir: str, data_dir: str, config_dir: str, out_dir: str
) -> dict:
    """One run of one side: {side, task, seed, metrics, wall_seconds}."""
    name = f"{task.name}_seed{seed}_{side}"
    workdir = os.path.join(out_dir, name)
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(out_dir, f"{name}.log")
    if side == "bert_jax":
        seconds = _run(ours_command(task, seed, model_dir, data_dir, config_dir, workdir), log_path)
        with open(os.path.join(workdir, "eval_results.json"), encoding="utf-8") as f:
            results = json.load(f)
        scores = {k: v for k, v in results.items() if isinstance(v, float)}
    else:
        output = os.path.join(workdir, "result.json")
        seconds = _run(reference_command(task, seed, model_dir, data_dir, output), log_path)
        with open(output, encoding="utf-8") as f:
            scores = json.load(f)["metrics"]
    return {
        "side": side, "task": task.name, "seed": seed, "settings": task.settings, "metrics": scores,
        "wall_seconds": round(seconds, 1),
    }  # fmt: skip


def _key(run: dict) -> tuple[str, str | None]:
    """A run's row: its task and settings (None for records written before settings were recorded)."""
    return run["task"], run.get("settings")


def read_runs(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def render(runs: Sequence[dict], tasks: Sequence[TableTask]) -> str:
    """The markdown table: per task and side, the metric's mean and min-max over seeds, and the mean wall time."""
    lines = [
        "| task (dev metric) | settings | bert_jax: mean (min-max) | transformers: mean (min-max) | seeds | "
        "wall time per run, bert_jax / transformers |",
        "|---|---|---|---|---|---|",
    ]
    for task in tasks:
        cells, times, seeds = [], [], []
        for side in SIDES:
            mine = [r for r in runs if _key(r) == (task.name, task.settings) and r["side"] == side]
            values = np.asarray([r["metrics"][task.metric] for r in mine])
            seeds.append(len(mine))
            if len(values):
                cells.append(f"{values.mean():.3f} ({values.min():.3f}-{values.max():.3f})")
                times.append(f"{np.mean([r['wall_seconds'] for r in mine]) / 60:.1f} min")
            else:
                cells.append("-")
                times.append("-")
        settings = task.settings
        seed_cell = str(seeds[0]) if seeds[0] == seeds[1] else " / ".join(map(str, seeds))
        lines.append(f"| {task.name} ({task.metric}) | {settings} | {cells[0]} | {cells[1]} | {seed_cell} | "
                     f"{' / '.join(times)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def build_table(
    tasks: Sequence[TableTask],
    seeds: Sequence[int],
    model_dir: str,
    data_dir: str,
    config_dir: str,
    out_dir: str,
    sides: Sequence[str] = SIDES,
    say: Callable[[str], Any] = print,
) -> str:
    """Runs every (task, seed, side) not yet in `<out_dir>/runs.jsonl`; returns (and writes) the table."""
    unknown = [side for side in sides if side not in SIDES]
    if unknown:
        raise TableError(f"Unknown side {unknown[0]!r}; use {' and/or '.join(SIDES)}.")
    for name, path in (("model_dir", model_dir), ("data_dir", data_dir), ("config_dir", config_dir)):
        if not os.path.isdir(path):
            raise TableError(f"{name}={path} is not a directory.")
    os.makedirs(out_dir, exist_ok=True)
    runs_path = os.path.join(out_dir, "runs.jsonl")
    runs = read_runs(runs_path)
    done = {(*_key(r), r["seed"], r["side"]) for r in runs}
    for task in tasks:
        for seed in seeds:
            for side in sides:
                if (task.name, task.settings, seed, side) in done:
                    continue
                run = run_one(side, task, seed, model_dir, data_dir, config_dir, out_dir)
                runs.append(run)
                with open(runs_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(run) + "\n")
                say(f"{task.name} seed {seed} {side}: {task.metric} {run['metrics'][task.metric]:.4f} "
                    f"in {run['wall_seconds']:.0f} s")  # fmt: skip
                with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
                    f.write(render(runs, tasks))
    table = render(runs, tasks)
    with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(table)
    return table
