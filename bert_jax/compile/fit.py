"""Does the job fit its devices? Checked by compiling its steps before the corpus is built and the first step runs.

    fitted = fit_job(job, make_plan, say=print)   # the job's devices, its `fit` and `fit_memory_gb` settings
    state, metrics = fitted.train_step(state, batch)

On accelerators the job has to compile its train and eval steps anyway; compiling them ahead of time, with
abstract arguments, gives XLA's memory analysis of both before anything is allocated. The total per device
(the same figure `bert-jax-compile` reports for a TPU slice) is compared with the device's memory limit (the
allocator's `bytes_limit`, or `fit_memory_gb` when set), and a job that would run out of memory minutes later
stops at once, with the table and the cheapest changes that fit (`aot.suggest_fits`). `fit="auto"` runs the
first fitting change instead (`aot.best_fit`: the candidates are tried cheapest in compute first), and says so.

Settings (top level of a job config; parsed and checked in `bert_jax.jobs.config`):
  fit            "check" (default): stop when the job does not fit; "auto": run the best change that fits;
                 "off": no ahead-of-time compile, the steps compile on their first call.
  fit_memory_gb  0 = the device's own limit. Set it to check against a smaller budget, or on a host whose
                 devices report no limit (CPUs: there the check runs only when this is set).
  fit_max_compiles  at most this many changes are compiled when the job does not fit (default 6).

The compiled executables are the ones the step loop calls, so the check costs no second compile. Every
process compiles the same programs for the same global devices and so takes the same decision; their
memory limits are the smallest of their own devices'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax

from bert_jax.compile import aot
from bert_jax.errors import ConfigError
from bert_jax.training.plan import JobSettings, Plan, PlanFactory


class FitSettings(JobSettings, Protocol):
    """The settings of a job config that the fit check reads."""

    fit: str  # "check", "auto" or "off"
    fit_memory_gb: float  # 0 = the devices' own limit
    fit_max_compiles: int


class DoesNotFitError(ConfigError):
    """The job's program needs more memory per device than there is; the message has the table and the fixes."""


@dataclasses.dataclass
class FittedJob:
    """The plan the job runs (after any `fit="auto"` change) and the steps to call."""

    config: Any  # the typed job config the plan was built from (after any fit="auto" change)
    job: Plan
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    report: aot.CompileReport | None = None  # None: not checked (fit="off", or no memory limit known)
    change: aot.Change | None = None  # what fit="auto" changed


def device_memory_limit(devices: Sequence[Any]) -> int | None:
    """The smallest memory limit among this process's devices, as their allocator reports it (None on CPUs)."""
    limits = []
    for device in devices:
        if device.process_index != jax.process_index():
            continue
        try:
            stats = device.memory_stats()
        except Exception:  # backends without memory statistics
            stats = None
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def memory_budget(config: FitSettings, devices: Sequence[Any]) -> int | None:
    """Bytes per device the job's programs may use: `fit_memory_gb` if set, else the devices' own limit."""
    gigabytes = float(config.fit_memory_gb)
    if gigabytes > 0:
        return int(gigabytes * aot.GB)
    return device_memory_limit(devices)


def _from_compiled(compiled: aot.CompiledJob, change: aot.Change | None = None) -> FittedJob:
    assert compiled.train_step is not None and compiled.eval_step is not None
    return FittedJob(compiled.config, compiled.job, compiled.train_step, compiled.eval_step, compiled.report, change)


def fit_line(report: aot.CompileReport) -> str:
    """One line for the job's console after a check that passed."""
    return (
        f"Fits: {aot.format_bytes(report.peak_bytes)} of {aot.format_bytes(report.hbm_bytes)} per device "
        f"(train and eval steps compiled in {report.compile_seconds:.1f} s)"
    )


def fit_job(
    config: FitSettings,
    make_plan: PlanFactory,
    devices: Sequence[Any] | None = None,
    *,
    say: Callable[[str], None] | None = None,
    job: Plan | None = None,
) -> FittedJob:
    """The job's plan and steps, checked to fit `devices` (default: all of the job's) when a limit is known.

    `make_plan(config, devices)` builds the plan of a job config; `job`: the plan if the caller has it already
    (used as is when nothing is checked).

    Raises `DoesNotFitError` (a `ConfigError`) when the program does not fit and `fit` is "check", or when it
    is "auto" and none of the changes tried fits; config mistakes raise as `make_plan` does.
    """
    say = say or (lambda _: None)
    mode = config.fit
    devices = list(jax.devices() if devices is None else devices)
    budget = memory_budget(config, devices) if mode != "off" else None
    if budget is None:
        job = job if job is not None else make_plan(config, devices)
        return FittedJob(config, job, job.train_step, job.eval_step)
    target = aot.device_target(devices, budget, num_slices=config.mesh.dcn_data)
    say(f"Compiling the train and eval steps to check they fit in {aot.format_bytes(budget)} per device ...")
    compiled = aot.compile_job(config, target, make_plan)
    report = compiled.report
    if report.fits:
        say(fit_line(report))
        return _from_compiled(compiled)
    say(
        f"Does not fit: {aot.format_bytes(report.peak_bytes)} per device, {aot.format_bytes(report.usable_bytes)} "
        f"usable; compiling up to {config.fit_max_compiles} cheaper variants ..."
    )
    suggestions = aot.suggest_fits(
        compiled.config,
        target,
        make_plan,
        report,
        current=compiled.job,
        max_compiles=config.fit_max_compiles,
        want=1 if mode == "auto" else 3,
        progress=lambda line: say(f"  {line}"),
    )
    best = aot.best_fit(suggestions)
    if mode == "auto" and best is not None and best.compiled is not None:
        chosen = best.compiled.report
        say(
            f"fit=auto: running with {best.change.flags}: {aot.format_bytes(chosen.peak_bytes)} of "
            f"{aot.format_bytes(chosen.hbm_bytes)} per device"
        )
        return _from_compiled(best.compiled, best.change)
    lines = [
        "The job does not fit its devices' memory:",
        aot.format_report(report),
        "Changes tried:",
        aot.format_suggestions(suggestions) or "  (none could be tried)",
    ]
    if best is not None:
        lines.append(f"Run with {best.change.flags}, or with --config.fit=auto to let the job pick it.")
    else:
        more = ", or more num_microbatches" if compiled.job.splits_batch else ""
        lines.append(
            "None of the changes tried fits: use more devices (mesh.fsdp shards the state), a smaller "
            f"global_batch_size or max_seq_length{more}."
        )
    raise DoesNotFitError("\n".join(lines))
