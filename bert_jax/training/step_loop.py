"""The one training loop of both jobs: steps, log lines, evals, checkpoints and stop requests.

    result = step_loop.run(state, train_step, batches, LoopSettings(...), checkpointer=..., log=..., hooks=...)

`bert-jax-pretrain` and `bert-jax-finetune` (`bert_jax.jobs`, through `jobs.runner`) each plug their task into it:
the batches (device arrays, with the tokens they hold and the input state a checkpoint must record), the
evaluation, the throughput figures of a log line and the checkpoint metadata. The loop owns what must be the
same in both: the share of time spent waiting for the next batch (`input_wait` in the log line and
`metrics.jsonl`, a warning above 5% on accelerators), between log steps nothing waits for a device (the transfer guard turns a stray device-to-host
read into an error), a log line reads the metrics once, an eval runs at every `eval_every_steps` and at the
last step, a checkpoint is saved at every `checkpoint_every_steps`, at the last step and when a SIGTERM/SIGINT
(or a preemption notice) asks the job to stop, after which it returns with `stopped_by` set.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

from bert_jax.training import checkpoint, train
from bert_jax.training.metrics_log import MetricsLog
from bert_jax.training.preemption import StopRequest


@dataclasses.dataclass
class LoopBatch:
    """One global batch for the train step."""

    arrays: Mapping[str, jax.Array]
    tokens: int = 0  # tokens in the global batch (0: the job reports no token rate)
    checkpoint_meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # e.g. the input's state after it


INPUT_WAIT_WARNING = 0.05
"""Share of a log window's wall time spent waiting for the next batch above which the loop warns."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    total_steps: int
    log_every_steps: int
    eval_every_steps: int

    @classmethod
    def of(cls, config: Any, total_steps: int) -> LoopSettings:
        """From a job config's `log_every_steps` and `eval_every_steps`."""
        return cls(total_steps, config.log_every_steps, config.eval_every_steps)


@dataclasses.dataclass
class LoopHooks:
    """What a job plugs into the loop.

    evaluate(state, step) -> the eval metrics (the job logs and prints them);
    rates(seconds, steps, tokens) -> the throughput values of a log line (tokens/s, MFU, examples/s);
    checkpoint_meta -> the metadata saved with every checkpoint (a batch's own `checkpoint_meta` is added);
    first_step(seconds) -> called once after the first step's dispatch (compiled or loaded by then).
    """

    evaluate: Callable[[train.TrainState, int], dict[str, float]]
    rates: Callable[[float, int, int], dict[str, float]]
    checkpoint_meta: Mapping[str, Any]
    tokenizer_files: Mapping[str, str] | None = None
    first_step: Callable[[float], None] | None = None
    input_hint: str = ""  # appended to the input-wait warning: what the job's user can do about it
    # Warn about input wait only where the steps run on accelerators: on a CPU backend the input and the steps
    # share the same cores, and waiting there says nothing a faster input would fix.
    warn_input_wait: bool = dataclasses.field(default_factory=lambda: jax.default_backend() != "cpu")


@dataclasses.dataclass
class LoopResult:
    state: train.TrainState
    step: int  # the last step trained (the start step when there was nothing to train)
    eval_metrics: dict[str, float]  # of the last eval the loop ran ({} if none)
    stopped_by: str | None = None  # "SIGTERM", "SIGINT" or "preemption notice" when stopped early


def run(
    state: train.TrainState,
    train_step: Callable[[train.TrainState, Mapping[str, jax.Array]], tuple[train.TrainState, Any]],
    batches: Iterator[LoopBatch],
    settings: LoopSettings,
    *,
    start_step: int,
    checkpointer: checkpoint.Checkpointer,
    log: MetricsLog,
    hooks: LoopHooks,
) -> LoopResult:
    """Trains from `start_step` to `settings.total_steps` (or a stop request) and waits for the last save."""
    done = start_step
    final_eval: dict[str, float] = {}
    stopped_by = None
    window_start, window_tokens, window_steps, window_wait = time.perf_counter(), 0, 0, 0.0
    job_start = time.perf_counter()
    stop = StopRequest()
    try:
        for step in range(start_step, settings.total_steps):
            wait_start = time.perf_counter()
            batch = next(batches)
            if step > start_step:
                window_wait += time.perf_counter() - wait_start
            else:  # the first batch waits for the input to start, not for a slow pipeline: not in the window
                window_start = time.perf_counter()
            window_tokens += batch.tokens
            # Between log steps nothing may wait for a device: steps queue up asynchronously. The guard turns
            # any device-to-host transfer here (a stray float(), a print of an array) into an error.
            with jax.transfer_guard_device_to_host("disallow"):
                dispatch_start = time.perf_counter()
                state, metrics = train_step(state, batch.arrays)
            if step == start_step and hooks.first_step is not None:
                hooks.first_step(time.perf_counter() - dispatch_start)
            window_steps += 1
            done = step + 1
            if done % settings.log_every_steps == 0 or done == settings.total_steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}  # the only sync
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                values.update(hooks.rates(elapsed, window_steps, window_tokens))
                values["input_wait"] = window_wait / elapsed
                eta = (time.perf_counter() - job_start) / (done - start_step) * (settings.total_steps - done)
                log.write(done, values)
                log.console(done, settings.total_steps, values, eta)
                if hooks.warn_input_wait and values["input_wait"] > INPUT_WAIT_WARNING and log.is_main:
                    print(input_wait_warning(values["input_wait"], window_steps, hooks.input_hint), flush=True)
                window_start, window_tokens, window_steps, window_wait = time.perf_counter(), 0, 0, 0.0
            if done % settings.eval_every_steps == 0 or done == settings.total_steps:
                final_eval = hooks.evaluate(state, done)
                window_start = time.perf_counter()
            stopping = stop.should_stop(done)
            if stopping or done == settings.total_steps or checkpointer.should_save(done):
                checkpointer.save(
                    done,
                    state.params,
                    state.opt_state,
                    {**hooks.checkpoint_meta, **batch.checkpoint_meta},
                    hooks.tokenizer_files,
                    force=True,
                )
            if stopping:
                stopped_by = stop.signal_name
                break
        checkpointer.wait_until_finished()
    finally:
        stop.close()
    return LoopResult(state, done, final_eval, stopped_by)


def input_wait_warning(share: float, steps: int, hint: str = "") -> str:
    """The warning when the step loop spent more than `INPUT_WAIT_WARNING` of its time waiting for batches."""
    line = (
        f"Warning: the last {steps} steps waited {share:.0%} of their time for the next batch: the input is slower "
        "than the accelerator"
    )
    return f"{line}; {hint}" if hint else f"{line}."


def stopped_line(result: LoopResult, checkpointer: checkpoint.Checkpointer) -> str:
    """What a job prints when a signal stopped it."""
    return (
        f"Stopped by {result.stopped_by} after step {result.step}; the checkpoint of step {result.step} is saved in "
        f"{checkpointer.directory}. Run the same command to continue."
    )
