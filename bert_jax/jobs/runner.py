"""The one job runner around the step loop: workdir, compile cache, checkpoints, restore or create, the loop.

    with runner.job_workdir(job, workdir, paths) as where:
        fitted = fit.fit_job(job, make_plan, say=where.say, job=plan)
        with runner.open_checkpointer(job, where.path) as checkpointer:
            result = runner.train(job, where, fitted.job, checkpointer, task)

Both jobs (`pretraining`, `finetuning`) run through here; what differs between them is a `Task`: the batches
from a step on, the evaluation, the throughput figures of a log line, the state of a fresh start (a structured
start, a warm start) and what a restored checkpoint's metadata gives back (the input's position). Everything
else is written once: the paths checked before anything starts, the persistent compilation cache, the orbax
checkpointer (always closed, also on errors), resume from the latest checkpoint onto the current mesh, the
metrics log, the first step's compile line, the eval metrics logged, and the line a stopped job prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from bert_jax import storage
from bert_jax.jobs.config import JobConfig
from bert_jax.training import checkpoint, compile_cache, step_loop, train
from bert_jax.training.metrics_log import MetricsLog
from bert_jax.training.plan import Plan


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The job's absolute workdir, its compilation cache and whether this process prints."""

    path: str
    cache_dir: str | None
    cache_start: Any
    is_main: bool

    def say(self, line: str) -> None:
        """Prints `line` on process 0 only."""
        if self.is_main:
            print(line, flush=True)


@contextlib.contextmanager
def job_workdir(job: JobConfig, workdir: str, paths: Mapping[str, str | None]) -> Iterator[Workdir]:
    """Checks every path setting's scheme (before anything starts), creates the workdir, opens the cache.

    Compiled programs go to (and on a restart come from) the persistent compilation cache that
    `compilation_cache_dir` names (`compile_cache`; by default `<workdir>/jax_cache`).
    """
    storage.check_paths(
        {
            "workdir": workdir,
            "compilation_cache_dir": job.compilation_cache_dir,
            "init_from": job.init_from,
            **paths,
        }
    )
    workdir = storage.absolute(workdir)
    storage.makedirs(workdir)
    with compile_cache.job_cache(job.compilation_cache_dir, workdir) as cache_dir:
        yield Workdir(workdir, cache_dir, compile_cache.counts(), jax.process_index() == 0)


@contextlib.contextmanager
def open_checkpointer(job: JobConfig, workdir: str) -> Iterator[checkpoint.Checkpointer]:
    """The workdir's checkpointer; closed on the way out, also when anything fails (orbax threads must stop)."""
    checkpointer = checkpoint.Checkpointer(
        checkpoint.checkpoint_dir(workdir),
        save_every_steps=job.checkpoint_every_steps,
        max_to_keep=job.max_checkpoints_to_keep,
        timeout_seconds=job.checkpoint_timeout_seconds,
    )
    try:
        yield checkpointer
    finally:
        checkpointer.close()


@dataclasses.dataclass
class Task:
    """What a job plugs into the runner.

    batches(start_step) -> the loop's batches from that step on;
    evaluate(state, step) -> the eval metrics (the runner logs them as `eval_*`);
    rates(seconds, steps, tokens) -> the throughput values of a log line;
    fresh_state(state) -> the state of a fresh start from the plan's random one (structured or warm start);
    restored(meta) -> called with a restored checkpoint's metadata before the batches start (the input's state);
    ready() -> called once the state is restored or created, before the first step (e.g. the job's summary line);
    checkpoint_meta -> what every checkpoint records besides the state (the job's config, model config, ...).
    """

    total_steps: int
    batches: Callable[[int], Iterator[step_loop.LoopBatch]]
    evaluate: Callable[[train.TrainState, int], dict[str, float]]
    rates: Callable[[float, int, int], dict[str, float]]
    checkpoint_meta: Mapping[str, Any]
    tokenizer_files: Mapping[str, str] | None = None
    fresh_state: Callable[[train.TrainState], train.TrainState] = lambda state: state
    restored: Callable[[Mapping[str, Any]], None] = lambda meta: None
    ready: Callable[[], None] = lambda: None
    input_hint: str = ""
    close: Callable[[], None] = lambda: None
    evaluate_if_nothing_trained: bool = False  # a resumed, finished job still scores its model (fine-tuning)


@dataclasses.dataclass
class RunResult:
    """How the job's loop ended: the state, the last eval's metrics, the step, whether a signal stopped it."""

    state: train.TrainState
    eval_metrics: dict[str, float]
    step: int
    start_step: int
    stopped_by: str | None  # "SIGTERM", "SIGINT" or "preemption notice" when stopped early


def restore_or_create(
    job: JobConfig, plan: Plan, checkpointer: checkpoint.Checkpointer, task: Task, where: Workdir
) -> tuple[train.TrainState, int]:
    """(state, start step): the latest checkpoint restored onto the plan's shardings, or a fresh state."""
    abstract = plan.abstract_state()  # the restore target: shapes in the plan's shardings
    restored = checkpointer.restore(abstract.params, abstract.opt_state, plan.model_config)
    if restored is not None:
        step = jax.device_put(np.int32(restored.step), plan.shardings.step)
        task.restored(restored.meta)
        where.say(f"Resumed from the checkpoint of step {restored.step} in {checkpointer.directory}")
        return train.TrainState(step=step, params=restored.params, opt_state=restored.opt_state), restored.step
    state = train.create_train_state(plan.model, plan.optimizer, jax.random.key(job.seed), plan.shardings)
    return task.fresh_state(state), 0


def train_job(
    job: JobConfig,
    where: Workdir,
    plan: Plan,
    train_step: Callable[..., Any],
    checkpointer: checkpoint.Checkpointer,
    task: Task,
) -> RunResult:
    """Restores or creates the state, runs the step loop to `task.total_steps` (or a stop request)."""
    state, start_step = restore_or_create(job, plan, checkpointer, task, where)
    task.ready()
    log = MetricsLog(where.path, where.is_main)

    def evaluate(state: train.TrainState, step: int) -> dict[str, float]:
        results = task.evaluate(state, step)
        log.write(step, results, prefix="eval_")
        return results

    def first_step(seconds: float) -> None:
        where.say(compile_cache.first_step_line(seconds, where.cache_dir, where.cache_start))

    try:
        loop = step_loop.run(
            state,
            train_step,
            task.batches(start_step),
            step_loop.LoopSettings(task.total_steps, job.log_every_steps, job.eval_every_steps),
            start_step=start_step,
            checkpointer=checkpointer,
            log=log,
            hooks=step_loop.LoopHooks(
                evaluate=evaluate,
                rates=task.rates,
                checkpoint_meta=task.checkpoint_meta,
                tokenizer_files=task.tokenizer_files,
                first_step=first_step,
                input_hint=task.input_hint,
            ),
        )
        if not loop.eval_metrics and loop.stopped_by is None and task.evaluate_if_nothing_trained:
            loop.eval_metrics = evaluate(loop.state, loop.step)
    finally:
        task.close()
        log.close()
    if loop.stopped_by is not None:
        where.say(step_loop.stopped_line(loop, checkpointer))
    return RunResult(loop.state, loop.eval_metrics, loop.step, start_step, loop.stopped_by)
