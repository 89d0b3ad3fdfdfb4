"""Ahead-of-time compiles of the job's program for a TPU slice, on a host without TPUs: does it fit, and what if not.

    report = compile_for_slice(job, tpu_topology.parse_topology("v5p-8"), make_plan)
    print(format_report(report)); print(json.dumps(report.to_json()))

`job` is a typed job config (`bert_jax.jobs.config`) and `make_plan(job, devices)` its plan (the
`bert_jax.training.plan.Plan` interface); the program is `make_plan(job, <the slice's devices>)`: the train step and the eval step
`bert-jax-pretrain` would run there (same model, optimizer, shardings, microbatches, remat, dtype, batch, mesh
and vocabulary padding), lowered with abstract arguments and compiled by libtpu for the slice's chips. From
the compiled executables: XLA's per-chip memory (arguments, temporaries, outputs and the part of them aliased to
the donated state, generated code), XLA's FLOPs per chip next to `flops.py`'s model count, and the collectives
in the partitioned HLO. `suggest_fits` tries a bounded list of the cheapest changes (remat, microbatches, FSDP)
when the program does not fit and returns the ones that do; for a TPU slice it compiles each in a child process
(`run_contained`), so that a compiler crash in one variant becomes that variant's row instead of the end of the
report.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import multiprocessing
import os
import pickle
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import jax

from bert_jax.compile import hlo_collectives, tpu_topology
from bert_jax.errors import ConfigError
from bert_jax.training.plan import JobSettings, Plan, PlanFactory

GB = 1e9
# What XLA's runtime and the framework keep besides the program's own buffers is not in `memory_analysis()`; a
# program that leaves less than this share of HBM free is reported as not fitting.
HBM_RESERVE_FRACTION = 0.03


def usable_bytes(memory_bytes: int) -> int:
    """What a program may use of a chip's `memory_bytes`: all but the runtime's reserve."""
    return int(memory_bytes * (1 - HBM_RESERVE_FRACTION))


def _shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of `ShapeDtypeStruct`s carrying NamedShardings."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * jax.numpy.dtype(leaf.dtype).itemsize
    return total


@dataclasses.dataclass
class ProgramMemory:
    """XLA's memory analysis of one compiled program, per chip, in bytes."""

    arguments: int
    outputs: int
    aliased: int  # outputs that reuse an argument's buffer (the donated train state)
    temporaries: int
    code: int

    @classmethod
    def of(cls, compiled: Any) -> ProgramMemory:
        analysis = compiled.memory_analysis()
        return cls(
            arguments=int(analysis.argument_size_in_bytes),
            outputs=int(analysis.output_size_in_bytes),
            aliased=int(analysis.alias_size_in_bytes),
            temporaries=int(analysis.temp_size_in_bytes),
            code=int(analysis.generated_code_size_in_bytes),
        )

    @property
    def peak(self) -> int:
        """Live at once while the program runs: its arguments, temporaries, new outputs and code."""
        return self.arguments + self.temporaries + self.outputs - self.aliased + self.code


@dataclasses.dataclass(frozen=True)
class Target:
    """What a program is compiled for: a TPU slice that libtpu describes, or the job's own devices.

    `memory_bytes` is one chip's memory: a TPU generation's HBM for a slice, the allocator's limit (or the
    user's budget, `fit_memory_gb`) for the job's devices.
    """

    name: str
    libtpu_name: str  # libtpu's name of one slice ("v5p:2x2x1"); "" for the job's own devices
    num_slices: int
    chips_per_slice: int
    hosts: int
    memory_bytes: int
    devices: tuple[Any, ...]


def slice_target(where: tpu_topology.TpuSlice, devices: Sequence[Any] | None = None) -> Target:
    """A TPU slice (its devices from libtpu's topology description unless given, to reuse one description)."""
    return Target(
        name=where.name,
        libtpu_name=where.libtpu_name,
        num_slices=where.num_slices,
        chips_per_slice=where.chips_per_slice,
        hosts=where.hosts,
        memory_bytes=where.hbm_bytes_per_chip,
        devices=tuple(where.devices() if devices is None else devices),
    )


def device_target(devices: Sequence[Any], memory_bytes: int, num_slices: int = 1) -> Target:
    """The devices a job runs on, each with `memory_bytes` for programs."""
    devices = tuple(devices)
    return Target(
        name=str(devices[0].device_kind),
        libtpu_name="",
        num_slices=num_slices,
        chips_per_slice=len(devices) // num_slices,
        hosts=len({d.process_index for d in devices}),
        memory_bytes=int(memory_bytes),
        devices=devices,
    )


@dataclasses.dataclass
class CompileReport:
    """Everything `bert-jax-compile` prints: where, what, how much memory, whether it fits, FLOPs, collectives."""

    topology: str
    libtpu_topology: str  # "" when compiled for the job's own devices
    num_slices: int
    chips: int
    hosts: int
    device_kind: str
    mesh: dict[str, int]
    global_batch_size: int
    num_microbatches: int
    seq_length: int
    remat_policy: str
    dtype: str
    attention_kernel: str
    params_bytes: int  # per chip, from the shapes and shardings (not from XLA)
    opt_state_bytes: int
    batch_bytes: int
    train: ProgramMemory
    eval: ProgramMemory
    hbm_bytes: int
    compile_seconds: float
    xla_flops_per_chip: float | None
    model_flops_per_chip: float
    collectives: list[hlo_collectives.Collective]
    host_transfers: int  # host callbacks in the train step (`hlo_collectives.host_transfers`): should be 0
    # libtpu refuses to build a program that cannot fit ("Ran out of memory on HBM ..."): its message, and the
    # HBM it says is available to programs. The memory figures then come from that message.
    compiler_oom: str = ""
    compiler_hbm_bytes: int | None = None

    @property
    def state_bytes(self) -> int:
        return self.params_bytes + self.opt_state_bytes

    @property
    def peak_bytes(self) -> int:
        """The larger of the train step's peak and the eval step's (which runs while the state stays resident)."""
        eval_peak = self.eval.peak + self.opt_state_bytes  # the eval step reads the params; the rest stays
        return max(self.train.peak, eval_peak)

    @property
    def usable_bytes(self) -> int:
        return usable_bytes(self.hbm_bytes)

    @property
    def fits(self) -> bool:
        return not self.compiler_oom and self.peak_bytes <= self.usable_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.usable_bytes - self.peak_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "libtpu_topology": self.libtpu_topology,
            "num_slices": self.num_slices,
            "chips": self.chips,
            "hosts": self.hosts,
            "device_kind": self.device_kind,
            "mesh": self.mesh,
            "global_batch_size": self.global_batch_size,
            "num_microbatches": self.num_microbatches,
            "seq_length": self.seq_length,
            "remat_policy": self.remat_policy,
            "dtype": self.dtype,
            "attention_kernel": self.attention_kernel,
            "per_chip_bytes": {
                "params": self.params_bytes,
                "opt_state": self.opt_state_bytes,
                "batch": self.batch_bytes,
                "arguments": self.train.arguments,
                "temporaries": self.train.temporaries,
                "outputs": self.train.outputs,
                "aliased": self.train.aliased,
                "generated_code": self.train.code,
                "train_peak": self.train.peak,
                "eval_temporaries": self.eval.temporaries,
                "total": self.peak_bytes,
            },
            "hbm_bytes_per_chip": self.hbm_bytes,
            "fits": self.fits,
            "headroom_bytes": self.headroom_bytes,
            "compile_seconds": round(self.compile_seconds, 2),
            "xla_flops_per_chip": self.xla_flops_per_chip,
            "model_flops_per_chip": self.model_flops_per_chip,
            "collectives": [dataclasses.asdict(c) for c in self.collectives],
            "host_transfers": self.host_transfers,
            "compiler_oom": self.compiler_oom,
            "compiler_hbm_bytes": self.compiler_hbm_bytes,
        }


def _xla_flops(compiled: Any) -> float | None:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # not every backend reports costs
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    value = (analysis or {}).get("flops")
    return float(value) if value is not None else None


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_OOM = re.compile(
    r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)\s*exceeds available HBM \(([\d.]+)([KMGT]?)\)", re.I
)


def _compiler_oom(error: Exception) -> tuple[str, int, int] | None:
    """(message, temporaries bytes, available bytes) when `error` is libtpu's out-of-HBM refusal, else None."""
    text = str(error)
    match = _OOM.search(text)
    if "RESOURCE_EXHAUSTED" not in text or not match:
        return None
    required = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    available = int(float(match.group(3)) * _UNITS[match.group(4).upper()])
    line = next((line for line in text.splitlines() if "Ran out of memory" in line), text.splitlines()[0])
    return line.strip(), required, available


def _compile(lowered: Any) -> tuple[Any | None, tuple[str, int, int] | None]:
    """`lowered.compile()`, or (None, the out-of-memory details) when the compiler says it cannot fit."""
    try:
        return lowered.compile(), None
    except Exception as e:
        oom = _compiler_oom(e)
        if oom is None:
            raise
        return None, oom


def check_slices(job: JobSettings, num_slices: int) -> Any:
    """The job with `mesh.dcn_data` matching the slice count (set when left at 1; an error when it differs)."""
    dcn = job.mesh.dcn_data
    if dcn == num_slices:
        return job
    if dcn != 1:
        raise ConfigError(
            f"mesh.dcn_data={dcn} but the target has {num_slices} slice(s); set --num_slices={dcn} or "
            f"--config.mesh.dcn_data={num_slices}."
        )
    return job.replace_at({"mesh.dcn_data": num_slices})


@dataclasses.dataclass
class CompiledJob:
    """A job's plan with its train and eval steps compiled for a target, and what the compile found.

    `train_step` / `eval_step` are the compiled executables (None where the compiler refused, out of memory);
    on the job's own devices they are what the step loop calls, so nothing compiles twice.
    """

    config: Any  # the typed job config compiled (`bert_jax.jobs.config`)
    job: Plan
    report: CompileReport
    train_step: Any | None
    eval_step: Any | None


def compile_job(config: JobSettings, target: Target, make_plan: PlanFactory) -> CompiledJob:
    """Compiles the job's train and eval steps for `target` and reads their memory, FLOPs and collectives.

    `make_plan(config, devices)` builds the plan: `bert_jax.jobs.plans.make_plan`, or a running job's own (the
    fine-tuning job's schedule length comes from its data). Config mistakes raise `ConfigError`s before any
    compile.
    """
    config = check_slices(config, target.num_slices)
    devices = list(target.devices)
    job = make_plan(config, devices)
    state, batch = job.abstract_train_args()
    start = time.perf_counter()
    train_compiled, train_oom = _compile(job.train_step.lower(state, batch))
    eval_compiled, eval_oom = _compile(job.eval_step.lower(*job.abstract_eval_args()))
    seconds = time.perf_counter() - start
    state_bytes = _shard_bytes(state)
    batch_bytes = _shard_bytes(batch)

    def memory(compiled: Any, oom: tuple[str, int, int] | None, arguments: int) -> ProgramMemory:
        if compiled is not None:
            return ProgramMemory.of(compiled)
        assert oom is not None
        return ProgramMemory(arguments=arguments, outputs=0, aliased=0, temporaries=oom[1], code=0)

    oom = train_oom or eval_oom
    model_flops = job.flops_per_sequence() * job.global_batch_size / len(devices)
    report = CompileReport(
        topology=target.name,
        libtpu_topology=target.libtpu_name,
        num_slices=target.num_slices,
        chips=len(devices),
        hosts=target.hosts,
        device_kind=str(devices[0].device_kind),
        mesh={name: int(size) for name, size in job.mesh.shape.items()},
        global_batch_size=job.global_batch_size,
        num_microbatches=job.num_microbatches,
        seq_length=job.seq_length,
        remat_policy=str(job.model_config.remat_policy),
        dtype=str(job.model_config.dtype),
        attention_kernel=str(job.model_config.attention_kernel),
        params_bytes=_shard_bytes(state.params),
        opt_state_bytes=_shard_bytes(state.opt_state) + _shard_bytes(state.step),
        batch_bytes=batch_bytes,
        train=memory(train_compiled, train_oom, state_bytes + batch_bytes),
        eval=memory(eval_compiled, eval_oom, _shard_bytes(job.abstract_eval_args())),
        hbm_bytes=target.memory_bytes,
        compile_seconds=seconds,
        xla_flops_per_chip=_xla_flops(train_compiled) if train_compiled is not None else None,
        model_flops_per_chip=model_flops,
        collectives=hlo_collectives.collectives(train_compiled.as_text()) if train_compiled is not None else [],
        host_transfers=hlo_collectives.host_transfers(train_compiled.as_text()) if train_compiled is not None else 0,
        compiler_oom=oom[0] if oom else "",
        compiler_hbm_bytes=oom[2] if oom else None,
    )
    return CompiledJob(config, job, report, train_compiled, eval_compiled)


def compile_for_slice(
    config: JobSettings, where: tpu_topology.TpuSlice, make_plan: PlanFactory, devices: Sequence[Any] | None = None
) -> CompileReport:
    """`compile_job` for a TPU slice, the report only (`devices`: the slice's, to reuse one description)."""
    return compile_job(config, slice_target(where, devices), make_plan).report


# ---------------------------------------------------------------------------------------------------------------
# When it does not fit


@dataclasses.dataclass(frozen=True)
class Change:
    """One config change to try: a label for the user and the overrides it sets."""

    label: str
    overrides: dict[str, Any]

    def apply(self, config: JobSettings) -> Any:
        return config.replace_at(self.overrides)

    @property
    def flags(self) -> str:
        return " ".join(f"--config.{key}={value}" for key, value in self.overrides.items())


def candidate_changes(
    config: JobSettings, current: Plan, chips_per_slice: int, report: CompileReport | None = None
) -> list[Change]:
    """The changes to try, cheapest in compute first: microbatches, then recomputation, then sharding the state.

    Microbatches cost almost no compute and shrink the activations (the temporaries) in proportion, so with a
    `report` of the failing compile the first candidate is the microbatch count its temporaries call for. Only
    changes that keep the job valid (microbatches that leave whole rows per chip, FSDP within a slice) are listed.
    """
    remat = str(current.model_config.remat_policy)
    micro = current.num_microbatches
    batch = current.global_batch_size
    fsdp, tensor = config.mesh.fsdp, config.mesh.tensor
    chips = chips_per_slice * config.mesh.dcn_data

    def microbatches(factor: int) -> int | None:
        n = micro * factor
        if not current.splits_batch or batch % n or (batch // n) % max(1, chips // tensor):
            return None
        return n

    def more_microbatches(factor: int) -> Change | None:
        n = microbatches(factor)
        return Change(f"{n} microbatches", {"num_microbatches": n}) if n else None

    fsdp_all = chips_per_slice // tensor if fsdp == 1 and chips_per_slice // tensor > 1 else None
    changes: list[Change | None] = []
    if report is not None and report.train.temporaries > 0:
        budget = report.usable_bytes - report.train.arguments - report.train.code
        if budget > 0:
            needed = math.ceil(report.train.temporaries / budget)
            changes.append(more_microbatches(1 << max(1, (needed - 1).bit_length())))
    changes.append(more_microbatches(2))
    if remat == "none":
        changes.append(Change("remat dots", {"model.remat_policy": "dots"}))
    if fsdp_all:
        changes.append(Change(f"fsdp {fsdp_all}", {"mesh.data": -1, "mesh.fsdp": fsdp_all}))
    changes += [more_microbatches(4)]
    if remat in ("none", "dots", "dots_no_batch"):
        changes.append(Change("remat full", {"model.remat_policy": "full"}))
    changes += [more_microbatches(8), more_microbatches(16)]
    if fsdp_all and microbatches(2):
        changes.append(
            Change(
                f"fsdp {fsdp_all} + {microbatches(2)} microbatches",
                {"mesh.data": -1, "mesh.fsdp": fsdp_all, "num_microbatches": microbatches(2)},
            )
        )
    unique: list[Change] = []
    for change in changes:
        if change is not None and all(change.overrides != seen.overrides for seen in unique):
            unique.append(change)
    return unique


# ---------------------------------------------------------------------------------------------------------------
# A compile in a child process: a crash of the compiler ends the child, not the caller

T = TypeVar("T")

# After the child has sent its result, how long it may take to exit before it is killed (the result is kept).
CHILD_EXIT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class ChildDied:
    """A child process that ended without sending a result: killed by `signal`, or exited with `exitcode`."""

    signal: int | None
    exitcode: int | None

    def describe(self, what: str) -> str:
        """A row's words for it, e.g. "the TPU compiler crashed (signal 11, SIGSEGV)" for `what`="the TPU compiler"."""
        if self.signal is None:
            return f"{what} exited with status {self.exitcode} without a result"
        try:
            name = signal.Signals(self.signal).name
        except ValueError:
            name = "unknown signal"
        if self.signal == signal.SIGKILL:  # what the kernel's out-of-memory killer sends
            return f"{what} was killed (signal {self.signal}, {name}: most likely out of host memory)"
        return f"{what} crashed (signal {self.signal}, {name})"


def _die_with_parent() -> None:
    """In the child: the kernel kills it when the parent dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG).

    Else an orphaned compile would go on for minutes with its gigabytes of memory, for a parent that is gone.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl in this C library: the child may outlive a killed parent
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before the prctl
        os._exit(1)


def _child_main(send: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """In the child: `fn(*args)`, and its value or its exception (picklable, with the traceback) to the parent."""
    _die_with_parent()
    try:
        message: tuple[str, Any, str] = ("value", fn(*args), "")
    except BaseException as e:  # every exception goes to the parent, which raises it there
        message = ("error", e, traceback.format_exc())
    try:
        payload = pickle.dumps(message)
        pickle.loads(payload)  # an exception whose class does not unpickle would fail in the parent instead
    except Exception as e:  # replaced by a plain error carrying the same words
        error = message[1] if message[0] == "error" else e
        message = ("error", RuntimeError(f"{type(error).__name__}: {error}"), message[2] or traceback.format_exc())
        payload = pickle.dumps(message)
    send.send_bytes(payload)
    send.close()


def run_contained(fn: Callable[..., T], *args: Any) -> T | ChildDied:
    """`fn(*args)` in a fresh child process ("spawn"): its value, or `ChildDied` when the child ends without one.

    A segmentation fault in native code (libtpu's compiler), or the out-of-memory killer, then ends the child and
    not the caller. An exception `fn` raises is raised here again, with the child's traceback as a note. `fn` and
    `args` must pickle (`fn` a module-level function); the child imports `fn`'s module afresh, so nothing of
    this process's state (a JAX backend, libtpu, devices) is in it: `fn` rebuilds what it needs. One child at a
    time: this waits for it.
    """
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(send, fn, args), daemon=True)
    try:
        child.start()
        send.close()  # the child's copy stays open: EOF here means the child has gone
        try:
            message = pickle.loads(receive.recv_bytes())
        except EOFError:
            message = None
        child.join(None if message is None else CHILD_EXIT_SECONDS)
    finally:
        receive.close()
        if child.is_alive():  # after its result, stuck on its way out; or this process was interrupted
            child.kill()
            child.join()
    if message is None:
        code = child.exitcode
        return ChildDied(signal=-code if code is not None and code < 0 else None, exitcode=code)
    kind, value, child_traceback = message
    if kind == "error":
        value.add_note(f"In the child process:\n{child_traceback}")
        raise value
    return value


def _compile_report_for_slice(config: JobSettings, target: Target, make_plan: PlanFactory) -> CompileReport:
    """In a child process: `compile_job(...).report` for `target`'s TPU slice, its devices described again."""
    # The parent process holds libtpu's lockfile (it described the slice too): this process only compiles.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    where = tpu_topology.parse_topology(target.libtpu_name, target.num_slices)
    target = dataclasses.replace(target, devices=tuple(where.devices()))
    return compile_job(config, target, make_plan).report


def compile_contained(config: JobSettings, target: Target, make_plan: PlanFactory) -> CompileReport | ChildDied:
    """`compile_job(config, target, make_plan).report` in a child process (`run_contained`), for a TPU slice.

    The report only: compiled executables do not cross processes (none is needed for a slice this host cannot
    run). `make_plan` must pickle (a module-level function). Config errors raise `ValueError` as in-process.
    """
    if not target.libtpu_name:  # a caller's mistake, not a config one: not a ValueError (a "not valid" row)
        raise TypeError("compile_contained compiles for a TPU slice; compile the job's own devices in-process.")
    return run_contained(_compile_report_for_slice, config, dataclasses.replace(target, devices=()), make_plan)


def compile_in_process(config: JobSettings, target: Target, make_plan: PlanFactory) -> CompiledJob:
    """`compile_job` itself: the executables kept (the job's own devices, where `fit="auto"` runs them)."""
    return compile_job(config, target, make_plan)


# How `suggest_fits` compiles one variant: a `CompiledJob`, a report alone, or how the compiling process died.
VariantCompiler = Callable[[JobSettings, Target, PlanFactory], CompiledJob | CompileReport | ChildDied]


@dataclasses.dataclass
class Suggestion:
    change: Change
    report: CompileReport | None  # None: the change did not compile (error in `error`, or `crashed`)
    error: str = ""
    compiled: CompiledJob | None = dataclasses.field(default=None, repr=False)
    crashed: str = ""  # how the compile's process died, e.g. "the TPU compiler crashed (signal 11, SIGSEGV)"


def suggest_fits(
    config: JobSettings,
    target: Target,
    make_plan: PlanFactory,
    report: CompileReport | None = None,
    *,
    current: Plan | None = None,
    max_compiles: int = 6,
    want: int = 3,
    progress: Callable[[str], None] | None = None,
    compile_variant: VariantCompiler | None = None,
) -> list[Suggestion]:
    """Compiles up to `max_compiles` candidate changes (cheapest first) and returns every one tried.

    Stops early once `want` of them fit. The caller prints the fitting ones; the others show what was ruled out.
    Only fitting suggestions compiled in this process keep their compiled job (`compiled`), so a caller can run
    the one it picks.

    `compile_variant` compiles one variant. By default a TPU slice's variants compile one at a time in a child
    process each (`compile_contained`): libtpu's compiler has crashed with a segmentation fault on one of
    BERT-large's variants, and a crash then is that variant's row (`Suggestion.crashed`), the other rows kept.
    The job's own devices (`fit.fit_job`) compile in this process (`compile_in_process`): a child could not hold
    the devices, and `fit="auto"` runs the compiled steps. For a slice, the job config and `make_plan` must pickle
    (`bert_jax.jobs.plans.make_plan`, a module-level function, does).
    """
    say = progress or (lambda _: None)
    config = check_slices(config, target.num_slices)
    current = current if current is not None else make_plan(config, list(target.devices))
    if compile_variant is None:
        compile_variant = compile_contained if target.libtpu_name else compile_in_process
    compiler = "the TPU compiler" if target.libtpu_name else "the compiler"
    tried: list[Suggestion] = []
    for change in candidate_changes(config, current, target.chips_per_slice, report)[:max_compiles]:
        say(f"trying {change.label} ({change.flags})")
        try:
            outcome = compile_variant(change.apply(config), target, make_plan)
        except ValueError as e:
            tried.append(Suggestion(change, None, str(e)))
        else:
            if isinstance(outcome, ChildDied):
                tried.append(Suggestion(change, None, crashed=outcome.describe(compiler)))
            elif isinstance(outcome, CompiledJob):
                fits = outcome.report.fits
                tried.append(Suggestion(change, outcome.report, compiled=outcome if fits else None))
            else:
                tried.append(Suggestion(change, outcome))
        if sum(1 for s in tried if s.report is not None and s.report.fits) >= want:
            break
    return tried


def best_fit(suggestions: Iterable[Suggestion]) -> Suggestion | None:
    """The first fitting change in the order tried, which is cheapest in compute first (`candidate_changes`).

    XLA's FLOP counts cannot rank them: more microbatches leave the count unchanged (to within its rounding)
    but run smaller matmuls, and a remat policy's extra forward pass is what the order already puts last.
    """
    return next((s for s in suggestions if s.report is not None and s.report.fits), None)


# ---------------------------------------------------------------------------------------------------------------
# Printing


def format_bytes(n: float) -> str:
    """Bytes for people: GB (1e9) with two decimals, MB below a hundredth of a GB."""
    if abs(n) < 0.01 * GB:
        return f"{n / 1e6:,.2f} MB"
    return f"{n / GB:,.2f} GB"


def format_report(report: CompileReport) -> str:
    """The table `bert-jax-compile` prints."""
    xla_flops = f"{report.xla_flops_per_chip:.3e}" if report.xla_flops_per_chip else "n/a (not compiled)"
    detail = (
        f"{report.libtpu_topology} x {report.num_slices} slice(s)" if report.libtpu_topology else "this job's devices"
    )
    rows = [
        (
            "target",
            f"{report.topology} ({detail}): {report.chips} chip(s) ({report.device_kind}), {report.hosts} host(s)",
        ),
        ("mesh", ", ".join(f"{k}={v}" for k, v in report.mesh.items())),
        (
            "program",
            f"global batch {report.global_batch_size} x seq {report.seq_length}, {report.num_microbatches} "
            f"microbatch(es), remat {report.remat_policy}, {report.dtype}, {report.attention_kernel} attention",
        ),
        (
            "params / opt state / batch",
            f"{format_bytes(report.params_bytes)} / {format_bytes(report.opt_state_bytes)} / {format_bytes(report.batch_bytes)} per chip",
        ),
        ("arguments", format_bytes(report.train.arguments)),
        (
            "temporaries",
            f"{format_bytes(report.train.temporaries)} (eval step {format_bytes(report.eval.temporaries)})",
        ),
        (
            "outputs",
            f"{format_bytes(report.train.outputs)} ({format_bytes(report.train.aliased)} of them in the donated state's buffers)",
        ),
        ("generated code", format_bytes(report.train.code)),
        ("total per chip", f"{format_bytes(report.peak_bytes)} of {format_bytes(report.hbm_bytes)} memory"),
        (
            "fits",
            f"{'yes' if report.fits else 'NO'} (headroom {format_bytes(report.headroom_bytes)}, "
            f"{HBM_RESERVE_FRACTION:.0%} of the memory kept for the runtime)",
        ),
        (
            "FLOPs per chip per step",
            f"XLA {xla_flops}, model {report.model_flops_per_chip:.3e}",
        ),
        ("compile", f"{report.compile_seconds:.1f} s (train + eval step)"),
    ]
    if report.compiler_oom:
        available = format_bytes(report.compiler_hbm_bytes or 0)
        rows.insert(
            -2,
            (
                "compiler",
                f"{report.compiler_oom} (the temporaries above are from this; available to programs: {available})",
            ),
        )
    for c in report.collectives:
        loop = " (in a loop of unknown trip count: counted once)" if c.in_unknown_loop else ""
        rows.append((f"collective {c.kind}", f"{c.count} per step, {format_bytes(c.bytes)} per chip per step{loop}"))
    if not report.collectives:
        rows.append(("collectives", "none"))
    rows.append(
        (
            "host transfers",
            f"{report.host_transfers} (host callbacks stall the step: remove them)"
            if report.host_transfers
            else "none",
        )
    )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def format_suggestions(suggestions: list[Suggestion]) -> str:
    """Lines for the changes tried: those that fit first (with their per-chip bytes), then the rest."""
    lines = []
    for s in sorted(suggestions, key=lambda s: not (s.report is not None and s.report.fits)):
        if s.crashed:
            lines.append(f"  {s.change.label}: {s.crashed}")
        elif s.report is None:
            lines.append(f"  {s.change.label}: not valid here ({s.error})")
        else:
            verdict = "fits" if s.report.fits else "does not fit"
            lines.append(
                f"  {s.change.label}: {verdict}, {format_bytes(s.report.peak_bytes)} per chip "
                f"(headroom {format_bytes(s.report.headroom_bytes)}): {s.change.flags}"
            )
    return "\n".join(lines)
