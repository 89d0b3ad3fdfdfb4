"""tools/compare_peers.py: the commands it runs and the ratios it reports (hand-made run results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tools import compare_peers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(
    impl: str, round_index: int, tokens: float, rss: float, comparison: str = "base", hugepages: bool | None = None
) -> dict:
    return {
        "host_malloc_hugepages": (impl == "bert_jax") if hugepages is None else hugepages,
        "impl": impl,
        "comparison": comparison,
        "round": round_index,
        "tokens_per_sec": tokens,
        "step_ms_median": 1024_000 / tokens,
        "mfu": 0.5,
        "peak_rss_mb": rss,
        "foreign_cpu_share": 0.01,
    }


def test_ratio_is_ours_over_the_faster_peer_of_the_same_round_then_the_median():
    records = [
        # round 0: torch is the faster peer (200) -> 300 / 200 = 1.5
        _record("bert_jax", 0, 300.0, 3000.0),
        _record("hf_flax", 0, 150.0, 4000.0),
        _record("hf_torch", 0, 200.0, 3500.0),
        # round 1: the machine is slower; flax is the faster peer (120) -> 150 / 120 = 1.25
        _record("bert_jax", 1, 150.0, 3100.0),
        _record("hf_flax", 1, 120.0, 4100.0),
        _record("hf_torch", 1, 100.0, 3600.0),
        # round 2: ours only (a failed peer run): no ratio from it
        _record("bert_jax", 2, 1000.0, 3000.0),
    ]
    rows = {row["impl"]: row for row in compare_peers.summarize(records)}
    ours = rows["bert_jax"]
    assert ours["speed_vs_faster_peer_all"] == [1.5, 1.25]
    assert ours["speed_vs_faster_peer"] == pytest.approx(1.375)
    assert ours["rss_vs_hf_flax"] == pytest.approx((3000 / 4000 + 3100 / 4100) / 2)
    assert ours["tokens_per_sec"] == 300.0  # median of 300, 150, 1000
    assert rows["hf_flax"]["speed_vs_faster_peer"] is None
    assert rows["hf_torch"]["tokens_per_sec"] == 150.0
    table = compare_peers.format_table(compare_peers.summarize(records), [100.0, 90.5])
    assert "1.38x (1.50, 1.25)" in table
    assert "100.0, 90.5 GFLOP/s" in table
    assert ours["host_malloc"] == "huge pages" and rows["hf_flax"]["host_malloc"] == "4 KiB pages"
    assert table.splitlines()[2].endswith("| huge pages |") and table.splitlines()[3].endswith("| 4 KiB pages |")


def test_host_malloc_column_says_mixed_when_rounds_differ():
    records = [
        _record("bert_jax", 0, 300.0, 3000.0, hugepages=True),
        _record("bert_jax", 1, 290.0, 3000.0, hugepages=False),
    ]
    assert compare_peers.summarize(records)[0]["host_malloc"] == "mixed"


def test_peers_get_the_hugepage_tunable_only_when_asked():
    assert "GLIBC_TUNABLES" not in compare_peers.peer_environment(False, {"PATH": "/bin"})
    assert compare_peers.peer_environment(True, {"PATH": "/bin"})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    kept = compare_peers.peer_environment(True, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_normalize_reads_each_benchmarks_own_field_names():
    ours = compare_peers.normalize(
        "bert_jax", "mini", 0, {"tokens_per_sec": 10.0, "mfu": 0.3, "step_ms_median": 5.0, "peak_rss_mb": 7.0}
    )
    peer = compare_peers.normalize(
        "hf_torch",
        "mini",
        0,
        {"tokens_per_s": 8.0, "mfu_by_mode": {"matmul": 0.6, "total": 0.9}, "step_ms_median": 6.0, "peak_rss_mb": 9.0},
    )
    assert (ours["tokens_per_sec"], ours["mfu"]) == (10.0, 0.3)
    assert (peer["tokens_per_sec"], peer["mfu"]) == (8.0, 0.6)
    assert ours["host_malloc_hugepages"] is None and peer["host_malloc_hugepages"] is None  # not reported
    with_pages = compare_peers.normalize("bert_jax", "mini", 0, {**_record("bert_jax", 0, 1.0, 1.0), "mfu": 0.1})
    assert with_pages["host_malloc_hugepages"] is True


def test_both_sides_run_the_same_shapes():
    """Our command's overrides give the preset's shapes: batch, seq 128, 20 predictions, float32, dropout 0.1."""
    base = compare_peers.COMPARISONS["base"]
    command = compare_peers.our_command(base, "experiments", 100.0, sys.executable)
    for flag in (
        "--config.global_batch_size=8",
        "--config.data.max_seq_length=128",
        "--config.data.max_predictions_per_seq=20",
        "--config.model.dtype=float32",
        "--config.model.hidden_dropout_prob=0.1",
        "--peak_flops=100000000000.0",
    ):
        assert flag in command
    peer = compare_peers.peer_command("hf_flax", base, "bench", 100.0, "python")
    assert "--preset=base" in peer and "--peak-gflops=100.0" in peer


def test_last_json_line_skips_table_text():
    output = "config  x\nstep 5 ms\n" + json.dumps({"a": 1}) + "\n"
    assert compare_peers.last_json_line(output) == {"a": 1}
    with pytest.raises(ValueError, match="no JSON"):
        compare_peers.last_json_line("no result\n")


def test_missing_harness_is_one_clear_error(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.compare_peers",
            f"--bench_dir={tmp_path}",
            f"--peer_python={sys.executable}",
            f"--output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode != 0
    assert "peer_step_bench.py does not exist: pass --bench_dir" in done.stderr
