"""Where a compiled step's time goes, per model op: a profiler trace of the step joined with its optimized HLO.

With `XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true` XLA:CPU records one trace event per executed thunk (a
fusion, a library matmul, a loop); each event is named after the HLO instruction it runs, and that
instruction's metadata `op_name` says which part of the program it comes from, e.g.
`jvp(BertForPreTraining)/bert/encoder/layer_3/intermediate/dense/dot_general` (forward) or
`transpose(jvp(BertForPreTraining))/...` (backward). `summarize` sums the events of a `jax.profiler` trace per
instruction, divides by the number of traced steps and groups by `op_name` with the layer index replaced by
`layer_N`, so a table reads "the feed-forward's backward matmuls: 1.7 s per step over 12 layers".

Read the numbers as a ranking, not as a partition of the step: XLA:CPU runs independent thunks concurrently on
its thread pool and some library matmuls finish asynchronously (their events show only the dispatch), so the
per-op times add up to more or less than the wall-clock step. On GPUs the trace's kernel events carry kernel
names, which match instruction names for most fusions; ops without a matching event are simply absent.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

CPU_TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s.*?op_name="([^"]*)"')
_LAYER_INDEX = re.compile(r"layer_\d+")
_JIT_PREFIX = re.compile(r"^jit\([^)]*\)/")


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One model op (its `op_name`, layers merged): traced time and thunk executions per step."""

    op: str
    ms_per_step: float
    calls_per_step: float
    instructions: int


def enable_cpu_op_tracing(environ: MutableMapping[str, str] | None = None) -> None:
    """Adds `CPU_TRACEME_FLAG` to `XLA_FLAGS` (idempotent).

    XLA reads its flags once, when JAX creates its first backend: call this before the first computation.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if CPU_TRACEME_FLAG.split("=")[0] not in flags:
        environ["XLA_FLAGS"] = f"{flags} {CPU_TRACEME_FLAG}".strip()


def instruction_op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> normalized `op_name` (no `jit(...)/` prefix, `layer_N`) for every instruction with one."""
    names = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            name, _, op_name = match.groups()
            names[name] = _LAYER_INDEX.sub("layer_N", _JIT_PREFIX.sub("", op_name))
    return names


def op_times(events: Iterable[Mapping[str, Any]], op_names: Mapping[str, str], steps: int) -> list[OpTime]:
    """Complete trace events ("ph": "X", "dur" in microseconds) summed per op, per step; slowest first."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}.")
    total_us: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.Counter()
    instructions: dict[str, set[str]] = collections.defaultdict(set)
    for event in events:
        if event.get("ph") != "X":
            continue
        op = op_names.get(event.get("name", ""))
        if op is None:
            continue
        total_us[op] += float(event.get("dur", 0.0))
        calls[op] += 1
        instructions[op].add(event["name"])
    rows = [
        OpTime(
            op=op, ms_per_step=us / 1e3 / steps, calls_per_step=calls[op] / steps, instructions=len(instructions[op])
        )
        for op, us in total_us.items()
    ]
    return sorted(rows, key=lambda row: (-row.ms_per_step, row.op))


def latest_perfetto_trace(profile_dir: str) -> str:
    """The newest `perfetto_trace.json.gz` that `jax.profiler.trace(profile_dir, create_perfetto_trace=True)` wrote."""
    pattern = os.path.join(profile_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")
    candidates = glob.glob(pattern)
    if not candidates:
        raise FileNotFoundError(f"No perfetto trace under {profile_dir} (looked for {pattern}).")
    return max(candidates, key=os.path.getmtime)


def read_trace_events(path: str) -> list[dict[str, Any]]:
    """The `traceEvents` of a (gzipped) Chrome/perfetto JSON trace."""
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def summarize(profile_dir: str, hlo_text: str, steps: int, top: int = 25) -> dict[str, Any]:
    """The op table of the newest trace in `profile_dir` for the module `hlo_text` (`compiled.as_text()`).

    Returns a JSON-serializable dict: `trace_file`, `steps`, `traced_ms_per_step` (all matched ops) and `ops`,
    the `top` slowest as dicts of `OpTime`'s fields plus `share` of `traced_ms_per_step`.
    """
    path = latest_perfetto_trace(profile_dir)
    rows = op_times(read_trace_events(path), instruction_op_names(hlo_text), steps)
    traced = sum(row.ms_per_step for row in rows)
    ops = [{**dataclasses.asdict(row), "share": row.ms_per_step / traced if traced else 0.0} for row in rows[:top]]
    return {"trace_file": path, "steps": steps, "traced_ms_per_step": traced, "ops": ops}


def format_op_table(summary: Mapping[str, Any], width: int = 100) -> str:
    """The summary as text: one line per op, slowest first."""
    lines = [
        f"per-op time from {summary['trace_file']} ({summary['steps']} traced step(s); "
        f"{summary['traced_ms_per_step']:,.1f} ms per step matched to ops; concurrent ops overlap)",
        f"{'ms/step':>9} {'share':>6} {'calls':>6}  op",
    ]
    for row in summary["ops"]:
        op = row["op"] if len(row["op"]) <= width else "..." + row["op"][-(width - 3) :]
        lines.append(f"{row['ms_per_step']:9.1f} {row['share']:6.1%} {row['calls_per_step']:6.0f}  {op}")
    return "\n".join(lines)
