"""The largest batch per chip a job's program fits in, found with a handful of compiles.

    result = find_largest_batch(config, aot.slice_target(tpu_topology.parse_topology("v5p-8")))
    print(format_result(result))

"Per chip" means the rows of one step (one microbatch when the config has several) that each batch shard
holds: the config's global batch divided by its microbatch count and by the shards its rows are split over
(data x fsdp x dcn_data). Everything else in the config stays as it is: model, remat, dtype, mesh, microbatch
count; only `global_batch_size` changes, to `rows x shards x num_microbatches`.

A chip's memory grows with the rows it holds (activations, their gradients and the batch itself; the state is
fixed), almost linearly but bending upwards. The search compiles the config's own size, then where memory in
proportion to the rows would reach the chip's usable memory, then where a line, and from three compiles on a
parabola, through the compiles nearest the limit reaches it. Every answer is a compile, not a model: it stops when
the largest fitting size and the next size up (one `granularity` more) have both been compiled, one fitting
and one not, or when `max_compiles` is spent, which the result then says (`exact` False, with the bracket).
libtpu's own out-of-memory refusal counts as a compile: its message gives the temporaries it needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import ml_collections

from bert_jax import aot, sharding

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
    exact: bool  # `rows + granularity` was compiled too and does not fit (or `rows` is the smallest grid size)
    too_large: int | None  # the smallest size compiled that does not fit (None: every size tried fits)
    granularity: int
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
            "granularity": self.granularity,
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


def num_microbatches(config: ml_collections.ConfigDict) -> int:
    """The config's microbatch count (fine-tuning configs run their batch whole: 1)."""
    return 1 if aot.is_finetune_config(config) else int(config.get("num_microbatches", 1))


def batch_shards(job: Any) -> int:
    """How many ways a plan's batch rows are split (data x fsdp x dcn_data of its mesh)."""
    rows = job.global_batch_size
    return rows // sharding.batch_sharding(job.mesh).shard_shape((rows,))[0]


def with_rows_per_chip(config: ml_collections.ConfigDict, rows: int, shards: int) -> ml_collections.ConfigDict:
    """`config` with the global batch that gives each batch shard `rows` rows per step."""
    changed = config.copy_and_resolve_references()
    with changed.unlocked():
        changed.global_batch_size = rows * shards * num_microbatches(config)
    return changed


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


def _next_size(probes: list[Probe], usable: int, grid: int) -> int | None:
    """The next size to compile, or None when the boundary is found on the grid."""
    fit = max((p.rows for p in probes if p.fits), default=None)
    fail = min((p.rows for p in probes if not p.fits), default=None)
    if fit is not None and fail is not None and fail - fit <= grid:
        return None  # found (or the sizes are not monotone: a larger size fits where a smaller did not; stop)
    if fail is not None and fail <= grid and fit is None:
        return None  # not even the smallest grid size fits (the caller then searches below it row by row)
    low = fit + grid if fit is not None else grid
    if len(probes) == 1:
        estimate = _proportional_guess(probes[0], usable)
    else:
        estimate = _quadratic_root(probes, usable)
        if estimate is None:
            line = _line(probes)
            estimate = (usable - line[1]) / line[0] if line and line[0] > 0 else None
    if estimate is None:  # memory did not rise with the rows: double up from a fit, halve down from a miss
        guess = 2 * fit if fail is None else max(grid, (fail // 2) // grid * grid)
    elif fail is None and estimate < fit:
        guess = 2 * fit  # every size so far fits, yet the curve says the limit is below them: go up anyway
    elif fit is None and estimate >= fail:
        guess = max(grid, (fail // 2) // grid * grid)  # no size fits, yet the curve says the limit is above them
    else:
        guess = int(estimate) // grid * grid
    high = fail - grid if fail is not None else max(guess, low)
    guess = min(max(guess, low), high)
    if any(p.rows == guess for p in probes):
        # the estimate points at a size already compiled: step next to it, towards the unknown side
        guess = guess + grid if any(p.rows == guess and p.fits for p in probes) else guess - grid
    return guess


def find_largest_batch(
    config: ml_collections.ConfigDict,
    target: aot.Target,
    *,
    granularity: int = DEFAULT_GRANULARITY,
    max_compiles: int = DEFAULT_MAX_COMPILES,
    progress: Callable[[str], None] | None = None,
    make_job: aot.JobFactory | None = None,
) -> LargestBatch:
    """Compiles the job at a few batch sizes and returns the largest rows per chip that fits `target`.

    Sizes are multiples of `granularity`; when not even `granularity` rows fit, sizes below it row by row. The
    first size compiled is the config's own rows per chip (rounded to the grid). Config mistakes raise as
    `aot.compile_job` does, before any compile.
    """
    if granularity < 1 or max_compiles < 2:
        raise ValueError(f"granularity must be >= 1 and max_compiles >= 2, got {granularity} and {max_compiles}.")
    say = progress or (lambda _: None)
    micro = num_microbatches(config)
    job = (make_job or aot.job_plan)(aot.check_slices(config, target.num_slices), list(target.devices))
    shards = batch_shards(job)
    own_rows = config.global_batch_size // (shards * micro)
    usable = int(target.memory_bytes * (1 - aot.HBM_RESERVE_FRACTION))
    probes: list[Probe] = []
    grid = granularity
    rows: int | None = max(grid, round(own_rows / grid) * grid)
    while rows is not None and len(probes) < max_compiles:
        report = aot.compile_job(with_rows_per_chip(config, rows, shards), target, make_job).report
        probes.append(Probe(rows, report))
        say(
            f"{rows} rows per chip (global batch {rows * shards * micro}): {aot.format_bytes(report.peak_bytes)}"
            f" per chip, {'fits' if report.fits else 'does not fit'} ({report.compile_seconds:.0f} s)"
        )
        rows = _next_size(probes, usable, grid)
        if rows is None and grid > 1 and not any(p.fits for p in probes):
            grid = 1  # not even `granularity` rows fit: look below it, one row at a time
            rows = _next_size(probes, usable, grid)
    fit = max((p.rows for p in probes if p.fits), default=None)
    fail = min((p.rows for p in probes if not p.fits), default=None)
    exact = (fit is not None and fail is not None and 0 < fail - fit <= grid) or (fit is None and fail == 1)
    return LargestBatch(
        rows=fit,
        exact=exact,
        too_large=fail,
        granularity=grid,
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
        lines.append(f"Largest batch per chip: none fits (not even {result.too_large} row(s) per chip {per_step}).")
    else:
        global_batch = result.global_batch_size(result.rows)
        verdict = (
            f"{result.rows + result.granularity} does not fit"
            if result.exact and result.too_large
            else f"not confirmed: {result.too_large or 'no larger size'} was the smallest miss compiled"
        )
        lines.append(
            f"Largest batch per chip {per_step}(multiples of {result.granularity}): {result.rows} rows "
            f"({verdict}); global batch {global_batch} on {result.batch_shards} batch shard(s)"
            + (f" x {result.num_microbatches} microbatches" if result.num_microbatches > 1 else "")
        )
    if result.bytes_per_row is not None:
        lines.append(
            f"Memory per chip: {aot.format_bytes(result.fixed_bytes or 0)} + {aot.format_bytes(result.bytes_per_row)}"
            f" per row (the line through the compiles nearest the limit; {aot.format_bytes(result.usable_bytes)} usable)"
        )
    return "\n".join(lines)
