"""The largest-batch search: against memory curves whose answer is known by hand, and against libtpu's compiles."""

from __future__ import annotations

import json
import types

import jax
import pytest

from bert_jax.compile import aot, largest_batch
from tests.test_aot import compile_cli, tiny_config

GIB = 2**30


class FakeCompiles:
    """Stands in for `aot.compile_job`: the per-chip total is `memory(rows per chip)`; counts the compiles."""

    def __init__(self, memory, shards: int = 4, state_bytes: int = 10**9):
        self.memory = memory
        self.shards = shards
        self.state_bytes = state_bytes  # the part of the total that is the donated state (arguments = outputs)
        self.sizes: list[int] = []

    def job(self, config, devices):
        # its shards: `batch_shards` below
        return types.SimpleNamespace(
            global_batch_size=config.global_batch_size, num_microbatches=config.num_microbatches
        )

    def compile_job(self, config, target, make_plan):
        rows = config.global_batch_size // (self.shards * config.num_microbatches)
        self.sizes.append(rows)
        total = self.memory(rows)
        usable = target.memory_bytes * (1 - aot.HBM_RESERVE_FRACTION)
        state = self.state_bytes
        train = aot.ProgramMemory(arguments=state, outputs=state, aliased=state, temporaries=int(total) - state, code=0)
        report = types.SimpleNamespace(
            peak_bytes=int(total), fits=total <= usable, compile_seconds=1.0, train=train, batch_bytes=0
        )
        return types.SimpleNamespace(report=report)


@pytest.fixture
def fake(monkeypatch):
    def make(memory, **kwargs):
        compiles = FakeCompiles(memory, **kwargs)
        monkeypatch.setattr(aot, "compile_job", compiles.compile_job)
        monkeypatch.setattr(largest_batch, "batch_shards", lambda job: compiles.shards)
        return compiles

    return make


def _target(memory_bytes: int) -> aot.Target:
    return aot.Target("test", "", 1, 4, 1, memory_bytes, tuple(jax.devices()[:1]))


def _brute_force(memory, usable: float, grid: int) -> int | None:
    best = None
    for rows in range(grid, 100_000, grid):
        if memory(rows) <= usable:
            best = rows
        else:
            return best
    raise AssertionError("no limit below 100,000 rows")


def _search(fake_compiles, memory_bytes=16 * GIB, **kwargs):
    config = tiny_config(global_batch_size=128)  # over 4 shards: the search starts at 32 rows per chip
    return largest_batch.find_largest_batch(config, _target(memory_bytes), fake_compiles.job, **kwargs)


def test_a_linear_memory_curve_is_found_exactly(fake):
    memory = lambda rows: 1.3e9 + 47.3e6 * rows  # noqa: E731  (BERT-base at seq 128, roughly)
    compiles = fake(memory)
    result = _search(compiles)
    usable = 16 * GIB * (1 - aot.HBM_RESERVE_FRACTION)
    assert result.rows == _brute_force(memory, usable, 8) == 320  # by hand: (16.67e9 - 1.3e9) / 47.3e6 = 324.9
    assert result.exact and result.too_large == 328
    assert compiles.sizes[0] == 32  # the config's own 128 / 4 rows
    assert len(compiles.sizes) <= 6 and compiles.sizes[-2:] == [320, 328]  # ends with the answer and the next size
    assert result.bytes_per_row == pytest.approx(47.3e6, rel=1e-6)
    assert result.global_batch_size(result.rows) == 320 * 4


def test_a_curve_that_bends_near_the_limit_is_still_found_exactly(fake):
    # the compiler spills or rematerializes more as memory fills: superlinear growth the line underestimates
    memory = lambda rows: 2e9 + 20e6 * rows + 30e3 * rows**2  # noqa: E731
    compiles = fake(memory)
    result = _search(compiles, max_compiles=10)
    usable = 16 * GIB * (1 - aot.HBM_RESERVE_FRACTION)
    assert result.rows == _brute_force(memory, usable, 8)
    assert result.exact
    assert memory(result.rows) <= usable < memory(result.rows + 8)


def test_a_small_model_whose_fixed_buffers_dominate_small_batches(fake):
    # BERT-tiny's shape (libtpu, v5e): 71 MB at 8 rows, 75 MB at 16, then rows dominate and bend upwards
    memory = lambda rows: 63e6 + max(8e6, 1.2e6 * rows + 3.3e3 * rows**2)  # noqa: E731
    compiles = fake(memory, state_bytes=53 * 10**6)
    result = _search(compiles, memory_bytes=int(0.5 * GIB), max_compiles=10)
    usable = 0.5 * GIB * (1 - aot.HBM_RESERVE_FRACTION)
    assert result.exact and result.rows == _brute_force(memory, usable, 8)
    assert len(compiles.sizes) <= 8, compiles.sizes


def test_below_the_granularity_it_searches_row_by_row(fake):
    memory = lambda rows: 10e9 + 1.2e9 * rows  # noqa: E731  5 rows: 16.0e9 of 16.66e9 usable; 6: 17.2e9
    compiles = fake(memory)
    result = _search(compiles, max_compiles=8)
    assert (result.rows, result.next_size, result.exact) == (5, 6, True)
    assert "Largest batch per chip (multiples of 8): 5 rows (6 does not fit)" in largest_batch.format_result(result)


def test_when_nothing_fits_it_says_so(fake):
    compiles = fake(lambda rows: 20 * GIB + rows)
    result = _search(compiles, max_compiles=8)
    assert result.rows is None and result.exact and result.too_large == 1
    assert "none fits" in largest_batch.format_result(result)


def test_out_of_compiles_the_answer_is_marked_unconfirmed(fake):
    compiles = fake(lambda rows: 1e9 + 47e6 * rows)
    result = _search(compiles, max_compiles=2)
    assert len(compiles.sizes) == 2 and not result.exact and result.rows == 328  # the limit, not yet confirmed
    assert "not confirmed" in largest_batch.format_result(result)


def test_powers_of_two_take_two_compiles_when_the_first_guess_is_right(fake):
    memory = lambda rows: 1.3e9 + 47.3e6 * rows  # noqa: E731  324 rows fit: 256 is the power of two
    compiles = fake(memory, state_bytes=int(1.3e9))  # the state is the whole fixed part: the guess is exact
    result = _search(compiles, powers_of_two=True)
    assert (result.rows, result.next_size, result.exact) == (256, 512, True)
    assert compiles.sizes == [32, 256, 512]
    assert "Largest batch per chip (powers of two): 256 rows (512 does not fit)" in largest_batch.format_result(result)


def test_the_ladders():
    assert largest_batch.ladder(8)[:10] == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24]
    assert largest_batch.ladder(1, powers_of_two=True)[:5] == [1, 2, 4, 8, 16]


def test_microbatches_are_kept_and_counted_in_the_global_batch(fake):
    compiles = fake(lambda rows: 1.3e9 + 47.3e6 * rows)
    config = tiny_config(global_batch_size=512, num_microbatches=4)  # over 4 shards: 32 rows per chip per step
    result = largest_batch.find_largest_batch(config, _target(16 * GIB), compiles.job, max_compiles=8)
    assert compiles.sizes[0] == 32 and result.rows == 320
    assert result.global_batch_size(320) == 320 * 4 * 4


@pytest.mark.slow
def test_the_cli_finds_the_largest_batch_of_tiny_under_a_small_budget():
    """BERT-tiny on 4 v5e chips, checked against 0.2 GB per chip (`fit_memory_gb`, as the job takes it): the
    largest power of two compiled that fits and the next one, compiled too, that does not (48 rows fit, 56 do
    not, found with multiples of 8 on this libtpu: 32 and 64 here)."""
    pytest.importorskip("libtpu", reason="libtpu is in the test extra (pip install -e '.[test]')")
    result = compile_cli(
        "--topology=v5litepod-4", "--config.fit_memory_gb=0.2", "--largest_batch", "--powers_of_two", "--max_compiles=5"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])["largest_batch"]
    usable = 0.2e9 * (1 - aot.HBM_RESERVE_FRACTION)
    rows = line["rows_per_chip"]
    assert line["exact"] and line["topology"] == "v5litepod-4" and line["batch_shards"] == 4
    assert line["smallest_not_fitting"] == rows * 2 and line["global_batch_size"] == rows * 4
    sizes = {c["rows_per_chip"]: c for c in line["compiles"]}
    assert sizes[rows]["fits"] and sizes[rows]["total_bytes"] <= usable
    assert not sizes[rows * 2]["fits"] and sizes[rows * 2]["total_bytes"] > usable
    ordered = [sizes[r]["total_bytes"] for r in sorted(sizes)]
    assert ordered == sorted(ordered)  # more rows, more memory
    assert f"Largest batch per chip (powers of two): {rows} rows ({rows * 2} does not fit)" in result.stdout
    assert "total per chip" in result.stdout  # the table of the answer's compile
