"""The largest batch per chip a job's program fits in, found with a handful of compiles.

    result = find_largest_batch(job, aot.slice_target(tpu_topology.parse_topology("v5p-8")), make_plan)
    print(format_result(result))

"Per chip" means the rows of one step (one microbatch when the config has several) that each batch shard
holds: the config's global batch divided by its microbatch count and by the shards its rows are split over
(data x fsdp x dcn_data). Everything else in the config stays as it is: model, remat, dtype, mesh, microbatch
count; only `global_batch_size` changes, to `rows x shards x num_microbatches`. The sizes considered are a
ladder: multiples of a granularity (8 by default; any number below it), or powers of two (fewer compiles).

A chip's memory grows with the rows it holds (activations, their gradients, the batch; the state is fixed),
nearly linearly at first. Near the limit it does not: libtpu rematerializes and reschedules to make a program
fit (measured: BERT-base at seq 128 on a 16 GiB v5e chip needs 15.81 GB at 400 rows and 15.78 GB at 512), so no
curve through the compiles predicts where it stops fitting. The search therefore compiles the config's own
size, then where memory in proportion to the rows would reach the chip's usable memory, then (until a size
does not fit) at least 25% more each time, guided by a line or parabola through the compiles; once a fitting
and a failing size bracket the limit, it bisects the ladder between them. Every answer is a compile: the search
ends when the answer fits and the next size on the ladder does not, both compiled, or reports the bracket when
`max_compiles` is spent. libtpu's own out-of-memory refusal counts as a compile (and is quick): its message
gives the temporaries it needed.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from bert_jax import sharding
from bert_jax.compile import aot
from bert_jax.training.plan import JobSettings, PlanFactory

DEFAULT_GRANULARITY = 8  # rows: batch sizes a TPU tiles without padding (its sublanes are 8 rows)
DEFAULT_MAX_COMPILES = 6


@dataclasses.dataclass
class Probe:
    """One compile of the program at `rows` per chip."""

    rows: int
    report: aot.CompileReport

    @property
    def fits(self) -> bool:
        return self.report.fits

    @property
    def total_bytes(self) -> int:
        return self.report.peak_bytes


@dataclasses.dataclass
class LargestBatch:
    """What the search found. `rows` is the largest size compiled that fits (None: none of those tried fits)."""

    rows: int | None
    exact: bool  # the next allowed size above `rows` was compiled too and does not fit (or none fits at all)
    too_large: int | None  # the smallest size compiled that does not fit (None: every size tried fits)
    next_size: int | None  # the allowed size after `rows` (the smallest one when nothing fits)
    sizes: str  # which sizes were allowed: "multiples of 8", "powers of two"
    batch_shards: int
    num_microbatches: int
    usable_bytes: int
    probes: list[Probe]

    @property
    def bytes_per_row(self) -> float | None:
        """The line's slope through the two compiles nearest the limit (None with fewer than two sizes)."""
        line = _line(self.probes)
        return line[0] if line else None

    @property
    def fixed_bytes(self) -> float | None:
        """The line's value at 0 rows: what the state, code and fixed buffers take."""
        line = _line(self.probes)
        return line[1] if line else None

    @property
    def best(self) -> Probe | None:
        return next((p for p in self.probes if p.rows == self.rows), None)

    def global_batch_size(self, rows: int) -> int:
        return rows * self.batch_shards * self.num_microbatches

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_per_chip": self.rows,
            "exact": self.exact,
            "smallest_not_fitting": self.too_large,
            "sizes": self.sizes,
            "global_batch_size": self.global_batch_size(self.rows) if self.rows else None,
            "batch_shards": self.batch_shards,
            "num_microbatches": self.num_microbatches,
            "usable_bytes": self.usable_bytes,
            "bytes_per_row": self.bytes_per_row,
            "fixed_bytes": self.fixed_bytes,
            "compiles": [
                {
                    "rows_per_chip": p.rows,
                    "fits": p.fits,
                    "total_bytes": p.total_bytes,
                    "compile_seconds": round(p.report.compile_seconds, 2),
                }
                for p in self.probes
            ],
        }


def batch_shards(job: Any) -> int:
    """How many ways a plan's batch rows are split (data x fsdp x dcn_data of its mesh)."""
    rows = job.global_batch_size
    return rows // sharding.batch_sharding(job.mesh).shard_shape((rows,))[0]


def with_rows_per_chip(config: JobSettings, rows: int, shards: int, micro: int) -> Any:
    """`config` with the global batch that gives each batch shard `rows` rows per step (of `micro` microbatches)."""
    return config.replace_at({"global_batch_size": rows * shards * micro})


def _line(probes: list[Probe]) -> tuple[float, float] | None:
    """(bytes per row, bytes at 0 rows) through the two compiled sizes nearest the memory limit.

    Nearest: the largest size that fits and the smallest that does not when both exist (the line is then an
    interpolation), else the two largest sizes (fitting) or the two smallest (not fitting).
    """
    sizes = sorted({p.rows: p for p in probes}.values(), key=lambda p: p.rows)
    if len(sizes) < 2:
        return None
    fitting = [p for p in sizes if p.fits]
    failing = [p for p in sizes if not p.fits]
    if fitting and failing and fitting[-1].rows < failing[0].rows:
        a, b = fitting[-1], failing[0]
    elif not failing:
        a, b = sizes[-2], sizes[-1]
    else:
        a, b = sizes[0], sizes[1]
    slope = (b.total_bytes - a.total_bytes) / (b.rows - a.rows)
    return slope, a.total_bytes - slope * a.rows


def _proportional_guess(probe: Probe, usable: int) -> float:
    """Rows at the limit if everything but the state, code and fixed outputs grew in proportion to the rows.

    A first guess from one compile; memory per row grows with the rows (more of each buffer is live at
    once), so it tends to land above the limit, which brackets the answer.
    """
    memory = probe.report.train
    fixed = memory.arguments - probe.report.batch_bytes + memory.code + memory.outputs - memory.aliased
    per_row = max(probe.total_bytes - fixed, 1) / probe.rows
    return (usable - fixed) / per_row


def _quadratic_root(probes: list[Probe], usable: int) -> float | None:
    """Where the parabola through the three sizes nearest the limit reaches `usable` (None: no such point).

    Memory per chip is close to linear in the rows but bends upwards; through three compiles around the limit
    a parabola lands within a grid step where a line needs several more compiles.
    """
    sizes = sorted({p.rows: p for p in probes}.values(), key=lambda p: abs(p.total_bytes - usable))[:3]
    if len(sizes) < 3:
        return None
    (x0, y0), (x1, y1), (x2, y2) = ((p.rows, float(p.total_bytes)) for p in sizes)
    # Newton's divided differences: y = y0 + d1 (x - x0) + d2 (x - x0)(x - x1)
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    d2 = (d12 - d01) / (x2 - x0)
    a, b, c = d2, d01 - d2 * (x0 + x1), y0 - d01 * x0 + d2 * x0 * x1 - usable
    if abs(a) < 1e-12 * max(abs(b), 1.0):
        return -c / b if b > 0 else None
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    roots = [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1, -1)]
    rising = [r for r in roots if r > 0 and 2 * a * r + b > 0]  # memory grows with the rows there
    return min(rising) if rising else None


MAX_ROWS = 2**20  # no chip holds a million sequences: the sizes considered end here


def ladder(granularity: int, powers_of_two: bool = False) -> list[int]:
    """The sizes the search may compile, ascending: powers of two, or 1 .. granularity-1 then multiples of it."""
    if powers_of_two:
        return [2**k for k in range(MAX_ROWS.bit_length())]
    return list(range(1, granularity)) + list(range(granularity, MAX_ROWS + 1, granularity))


def _at_or_below(sizes: list[int], rows: float) -> int:
    """Index of the largest size <= rows (0 when rows is below them all)."""
    return max(0, bisect.bisect_right(sizes, rows) - 1)


# Before a size that does not fit has been compiled, grow at least this much per compile (and from a miss,
# shrink at least this much): near the limit libtpu rematerializes to make programs fit, so memory per chip
# flattens there and a curve through the compiles points only a little past the last fitting one.
MIN_STEP = 1.25


def _next_size(probes: list[Probe], usable: int, sizes: list[int]) -> int | None:
    """The next size to compile, or None when the largest size that fits is found on the ladder `sizes`."""
    fit = max((p.rows for p in probes if p.fits), default=None)
    fail = min((p.rows for p in probes if not p.fits), default=None)
    lo = sizes.index(fit) if fit is not None else -1
    hi = sizes.index(fail) if fail is not None else len(sizes)
    if hi - lo <= 1:
        return None  # found, or nothing on the ladder fits (or the sizes are not monotone: stop)
    if fit is not None and fail is not None:
        return sizes[(lo + hi) // 2]  # bracketed: bisect (the compiler's own fitting makes curves unreliable here)
    if len(probes) == 1:
        estimate = _proportional_guess(probes[0], usable)
    else:
        estimate = _quadratic_root(probes, usable)
        if estimate is None:
            line = _line(probes)
            estimate = (usable - line[1]) / line[0] if line and line[0] > 0 else None
    if fail is None:  # everything so far fits: up, by at least MIN_STEP
        target = max(estimate or 0.0, fit * MIN_STEP)
        return sizes[min(max(_at_or_below(sizes, target), lo + 1), hi - 1)]
    target = min(estimate if estimate is not None else fail, fail / MIN_STEP)  # nothing fits yet: down
    return sizes[max(min(_at_or_below(sizes, target), hi - 1), 0)]


def find_largest_batch(
    config: JobSettings,
    target: aot.Target,
    make_plan: PlanFactory,
    *,
    granularity: int = DEFAULT_GRANULARITY,
    powers_of_two: bool = False,
    max_compiles: int = DEFAULT_MAX_COMPILES,
    progress: Callable[[str], None] | None = None,
) -> LargestBatch:
    """Compiles the job at a few batch sizes and returns the largest rows per chip that fits `target`.

    Sizes are multiples of `granularity` (below it, any number of rows), or powers of two. The first size
    compiled is the config's own rows per chip (the nearest allowed size at or below it). Config mistakes raise
    as `aot.compile_job` does, before any compile.
    """
    if granularity < 1 or max_compiles < 2:
        raise ValueError(f"granularity must be >= 1 and max_compiles >= 2, got {granularity} and {max_compiles}.")
    say = progress or (lambda _: None)
    config = aot.check_slices(config, target.num_slices)
    job = make_plan(config, list(target.devices))
    micro = job.num_microbatches
    shards = batch_shards(job)
    usable = aot.usable_bytes(target.memory_bytes)
    sizes = ladder(granularity, powers_of_two)
    probes: list[Probe] = []
    rows: int | None = sizes[_at_or_below(sizes, job.global_batch_size // (shards * micro))]
    while rows is not None and len(probes) < max_compiles:
        report = aot.compile_job(with_rows_per_chip(config, rows, shards, micro), target, make_plan).report
        probes.append(Probe(rows, report))
        say(
            f"{rows} rows per chip (global batch {rows * shards * micro}): {aot.format_bytes(report.peak_bytes)}"
            f" per chip, {'fits' if report.fits else 'does not fit'} ({report.compile_seconds:.0f} s)"
        )
        rows = _next_size(probes, usable, sizes)
    fit = max((p.rows for p in probes if p.fits), default=None)
    fail = min((p.rows for p in probes if not p.fits), default=None)
    lo = sizes.index(fit) if fit is not None else -1
    hi = sizes.index(fail) if fail is not None else len(sizes)
    return LargestBatch(
        rows=fit,
        exact=hi - lo == 1,
        too_large=fail,
        next_size=sizes[lo + 1] if lo + 1 < len(sizes) else None,
        sizes="powers of two" if powers_of_two else f"multiples of {granularity}",
        batch_shards=shards,
        num_microbatches=micro,
        usable_bytes=usable,
        probes=probes,
    )


def format_result(result: LargestBatch) -> str:
    """The lines `bert-jax-compile --largest_batch` prints."""
    lines = []
    for p in sorted(result.probes, key=lambda p: p.rows):
        lines.append(
            f"  {p.rows:>6} rows per chip: {aot.format_bytes(p.total_bytes)} per chip, "
            f"{'fits' if p.fits else 'does not fit'}"
        )
    per_step = "per microbatch " if result.num_microbatches > 1 else ""
    if result.rows is None:
        lines.append(
            f"Largest batch per chip {per_step}({result.sizes}): none fits (not even {result.too_large} row(s)"
            + ("" if result.exact else "; smaller sizes not compiled")
            + ")."
        )
    else:
        global_batch = result.global_batch_size(result.rows)
        verdict = (
            f"{result.next_size} does not fit"
            if result.exact
            else f"not confirmed: {result.too_large or 'no larger size'} was the smallest miss compiled"
        )
        lines.append(
            f"Largest batch per chip {per_step}({result.sizes}): {result.rows} rows ({verdict}); global batch "
            f"{global_batch} on {result.batch_shards} batch shard(s)"
            + (f" x {result.num_microbatches} microbatches" if result.num_microbatches > 1 else "")
        )
    if result.bytes_per_row is not None:
        lines.append(
            f"Memory per chip: {aot.format_bytes(result.fixed_bytes or 0)} + {aot.format_bytes(result.bytes_per_row)}"
            f" per row (the line through the compiles nearest the limit; {aot.format_bytes(result.usable_bytes)} usable)"
        )
    return "\n".join(lines)
