"""Side-by-side speed: our train step against Hugging Face's Flax and PyTorch BERT, interleaved, one run.

  python -m bert_jax_tools.compare_peers --bench_dir=../shared/bench --peer_python=../peers-venv/bin/python \
      --configs=mini,base --rounds=2 --output_dir=/tmp/peers

The peers are timed by the bench harness's `peer_step_bench.py` (`FlaxBertForPreTraining` and PyTorch
`BertForPreTraining`, AdamW, synthetic full-length batches) in its own pinned environment (`--peer_python`: the
venv that harness's `setup_anchors.sh` makes; Hugging Face Flax needs transformers 4.x). Ours is
`bert-jax-benchmark` on the matching experiments config in float32 with the same shapes, dropout and batch
recipe (`[CLS] A [SEP] B [SEP]`, 15% masked capped at 20). Every round measures the machine's matmul peak once
(the harness's XLA matmul) and gives it to every run of the round as the MFU denominator, then runs each
config's three implementations one after another, in an order that alternates between rounds so that a drift of
the machine's speed favours none. The ratio of a round is ours / the faster peer in that round; the table gives
the median over rounds. Writes `results.jsonl` (every run's JSON line) and `table.md` to --output_dir and
prints the table.

Host memory: `bert-jax-benchmark` restarts itself with glibc's huge-page malloc where the machine allows it
(`bert_jax/launcher/host_memory.py`), as every bert_jax job does; the peers run as their harness starts them.
`--peers_hugepage_malloc` gives the peers the same setting (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), to see
how much of a ratio is that setting. The table's last column says which each run had.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from bert_jax.launcher import host_memory

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("hf_flax", "hf_torch")
OURS = "bert_jax"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One shared configuration: the peer harness's preset and the experiments config + overrides that match it."""

    name: str
    preset: str
    config_file: str
    overrides: tuple[str, ...]
    steps: int
    warmup: int


COMPARISONS = {
    "mini": Comparison(
        name="mini",
        preset="mini",  # L4 H256 A4 I1024, seq 128, batch 16
        config_file="bert_mini.py",
        overrides=("global_batch_size=16", "model.dtype=float32"),
        steps=20,
        warmup=3,
    ),
    "base": Comparison(
        name="base",
        preset="base",  # L12 H768 A12 I3072, seq 128, batch 8
        config_file="bert_base_phase1.py",
        overrides=("global_batch_size=8", "model.dtype=float32"),
        steps=5,
        warmup=3,
    ),
}
# Both sides: seq 128, at most 20 masked positions per sequence, dropout 0.1, float32.
SHARED_OVERRIDES = (
    "data.max_seq_length=128",
    "data.max_predictions_per_seq=20",
    "model.hidden_dropout_prob=0.1",
    "model.attention_probs_dropout_prob=0.1",
    "num_microbatches=1",
)


def our_command(comparison: Comparison, experiments_dir: str, peak_gflops: float, python: str) -> list[str]:
    """The bert-jax-benchmark command line for `comparison` (one device, the round's peak as MFU denominator)."""
    overrides = [*SHARED_OVERRIDES, *comparison.overrides]
    return [
        python,
        "-m",
        "bert_jax_tools.benchmark",
        f"--config={os.path.join(experiments_dir, comparison.config_file)}",
        *(f"--config.{item}" for item in overrides),
        f"--steps={comparison.steps}",
        f"--warmup={comparison.warmup}",
        f"--peak_flops={peak_gflops * 1e9}",
    ]


def peer_command(impl: str, comparison: Comparison, bench_dir: str, peak_gflops: float, python: str) -> list[str]:
    """The harness's command line for one peer on `comparison`'s preset."""
    return [
        python,
        os.path.join(bench_dir, "peer_step_bench.py"),
        f"--impl={impl}",
        f"--preset={comparison.preset}",
        f"--steps={comparison.steps}",
        f"--warmup={comparison.warmup}",
        f"--peak-gflops={peak_gflops}",
    ]


def peak_command(bench_dir: str, python: str) -> list[str]:
    """The harness's float32 XLA matmul (2048^3), the machine's peak for this round."""
    return [python, os.path.join(bench_dir, "peer_step_bench.py"), "--impl=xla_matmul", "--steps=10", "--warmup=2"]


def last_json_line(output: str) -> dict[str, Any]:
    """The last line of `output` that parses as a JSON object (the result line both benchmarks print last)."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON result line in the output")


def normalize(
    impl: str, comparison: str, round_index: int, raw: Mapping[str, Any], peer_hugepages: bool | None = None
) -> dict[str, Any]:
    """One run's figures under common names: tokens/s, step ms, MFU on the FLOPs it executes, peak RSS, and
    whether its host malloc used huge pages (ours reports it; for a peer it is `peer_hugepages`).

    Peers' MFU is the harness's "matmul" mode (every weight matmul at every position, the MLM vocab projection
    included: what they execute); ours is `bert-jax-benchmark`'s (the MLM head only at the masked positions).
    """
    if impl == OURS:
        tokens, mfu = raw["tokens_per_sec"], raw["mfu"]
        hugepages = raw.get("host_malloc_hugepages")
    else:
        tokens, mfu = raw["tokens_per_s"], (raw.get("mfu_by_mode") or {}).get("matmul")
        hugepages = peer_hugepages
    return {
        "impl": impl,
        "comparison": comparison,
        "round": round_index,
        "tokens_per_sec": float(tokens),
        "step_ms_median": float(raw["step_ms_median"]),
        "mfu": None if mfu is None else float(mfu),
        "peak_rss_mb": float(raw["peak_rss_mb"]),
        "foreign_cpu_share": raw.get("foreign_cpu_share"),
        "host_malloc_hugepages": hugepages,
    }


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per comparison and implementation: medians over rounds, and ours / the faster peer per round (median).

    Only rounds in which all three implementations ran give a ratio.
    """
    rows = []
    for comparison in dict.fromkeys(r["comparison"] for r in records):
        runs = [r for r in records if r["comparison"] == comparison]
        by_round: dict[int, dict[str, Mapping[str, Any]]] = {}
        for r in runs:
            by_round.setdefault(r["round"], {})[r["impl"]] = r
        complete = [rd for rd in by_round.values() if all(i in rd for i in (OURS, *PEERS))]
        speed_ratios = [rd[OURS]["tokens_per_sec"] / max(rd[p]["tokens_per_sec"] for p in PEERS) for rd in complete]
        memory_ratios = [rd[OURS]["peak_rss_mb"] / rd["hf_flax"]["peak_rss_mb"] for rd in complete]
        for impl in (OURS, *PEERS):
            mine = [r for r in runs if r["impl"] == impl]
            if not mine:
                continue
            mfus = [r["mfu"] for r in mine if r["mfu"] is not None]
            shares = [r["foreign_cpu_share"] for r in mine if r["foreign_cpu_share"] is not None]
            rows.append(
                {
                    "comparison": comparison,
                    "impl": impl,
                    "rounds": len(mine),
                    "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in mine),
                    "tokens_per_sec_all": [round(r["tokens_per_sec"], 1) for r in mine],
                    "step_ms_median": statistics.median(r["step_ms_median"] for r in mine),
                    "mfu": statistics.median(mfus) if mfus else None,
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
                    "max_foreign_cpu_share": max(shares) if shares else None,
                    "speed_vs_faster_peer": statistics.median(speed_ratios) if impl == OURS and speed_ratios else None,
                    "speed_vs_faster_peer_all": [round(x, 3) for x in speed_ratios] if impl == OURS else None,
                    "rss_vs_hf_flax": statistics.median(memory_ratios) if impl == OURS and memory_ratios else None,
                    "host_malloc": _host_malloc({r.get("host_malloc_hugepages") for r in mine}),
                }
            )
    return rows


def _host_malloc(settings: set[bool | None]) -> str:
    if settings == {True}:
        return "huge pages"
    if settings == {False}:
        return "4 KiB pages"
    return "unknown" if settings == {None} else "mixed"


def format_table(rows: Sequence[Mapping[str, Any]], peaks: Sequence[float]) -> str:
    """A Markdown table of `summarize`'s rows, with the rounds' matmul peaks."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        "| config | implementation | tokens/s (median) | per round | step ms | MFU | peak RSS MB | ours / faster peer"
        " | ours RSS / HF Flax | host malloc |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ratio = row["speed_vs_faster_peer"]
        ratio_text = (
            "-" if ratio is None else f"{ratio:.2f}x ({', '.join(f'{x:.2f}' for x in row['speed_vs_faster_peer_all'])})"
        )
        lines.append(
            f"| {row['comparison']} | {row['impl']} | {row['tokens_per_sec']:,.0f} | "
            f"{', '.join(f'{x:,.0f}' for x in row['tokens_per_sec_all'])} | {row['step_ms_median']:,.0f} | "
            f"{num(row['mfu'], '.1%')} | {row['peak_rss_mb']:,.0f} | "
            f"{ratio_text} | "
            f"{num(row['rss_vs_hf_flax'], '.2f')} | {row['host_malloc']} |"
        )
    lines.append("")
    lines.append(f"Matmul peak (float32 XLA 2048^3) per round: {', '.join(f'{p:.1f}' for p in peaks)} GFLOP/s.")
    return "\n".join(lines)


def peer_environment(hugepage_malloc: bool, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The peers' environment: ours as it is, plus glibc's huge-page malloc tunable when asked for."""
    environ = dict(os.environ if environ is None else environ)
    if hugepage_malloc:
        tunables = environ.get(host_memory.TUNABLES_VARIABLE, "")
        environ[host_memory.TUNABLES_VARIABLE] = host_memory.with_hugepage_tunable(tunables)
    return environ


def _run(command: Sequence[str], log: Any, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=False, env=env)
    log.write(f"$ {' '.join(command)}\n{done.stderr[-4000:]}\n")
    if done.returncode != 0:
        raise RuntimeError(f"{command[2] if len(command) > 2 else command[0]} failed:\n{done.stderr[-2000:]}")
    result = last_json_line(done.stdout)
    print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return result


FLAGS = flags.FLAGS
flags.DEFINE_string("bench_dir", None, "The peer harness directory (holding peer_step_bench.py).", required=True)
flags.DEFINE_string("peer_python", None, "Python of the harness's pinned venv (setup_anchors.sh).", required=True)
flags.DEFINE_list("configs", ["mini", "base"], f"Comparisons to run: {', '.join(COMPARISONS)}.")
flags.DEFINE_integer("rounds", 2, "Interleaved rounds (the order of the implementations alternates).", lower_bound=1)
flags.DEFINE_string("output_dir", None, "Where results.jsonl, table.md and the runs' logs go.", required=True)
flags.DEFINE_string("experiments_dir", os.path.join(REPO_ROOT, "experiments"), "The experiments/ directory.")
flags.DEFINE_bool(
    "peers_hugepage_malloc",
    False,
    "Run the peers with glibc's huge-page malloc too (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), as bert_jax runs.",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    unknown = [c for c in FLAGS.configs if c not in COMPARISONS]
    if unknown:
        raise app.UsageError(f"Unknown config(s) {', '.join(unknown)}; choose from {', '.join(COMPARISONS)}.")
    # The runs start in the repository root: relative paths are taken from where this command was started.
    bench_dir, peer_python = os.path.abspath(FLAGS.bench_dir), os.path.abspath(FLAGS.peer_python)
    harness = os.path.join(bench_dir, "peer_step_bench.py")
    if not os.path.isfile(harness):
        raise app.UsageError(f"{harness} does not exist: pass --bench_dir=<the peer harness directory>.")
    if not os.access(peer_python, os.X_OK):
        raise app.UsageError(f"--peer_python={FLAGS.peer_python} is not executable: run the harness's setup first.")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    records, peaks = [], []
    peers_env = peer_environment(FLAGS.peers_hugepage_malloc)
    with (
        open(os.path.join(FLAGS.output_dir, "results.jsonl"), "w", encoding="utf-8") as results,
        open(os.path.join(FLAGS.output_dir, "runs.log"), "w", encoding="utf-8") as log,
    ):
        for round_index in range(FLAGS.rounds):
            peak = float(_run(peak_command(bench_dir, peer_python), log)["achieved_gflops"])
            peaks.append(peak)
            order = [OURS, *PEERS] if round_index % 2 == 0 else [*reversed(PEERS), OURS]
            for name in FLAGS.configs:
                comparison = COMPARISONS[name]
                for impl in order:
                    if impl == OURS:
                        command = our_command(comparison, os.path.abspath(FLAGS.experiments_dir), peak, sys.executable)
                    else:
                        command = peer_command(impl, comparison, bench_dir, peak, peer_python)
                    raw = _run(command, log, env=None if impl == OURS else peers_env)
                    record = normalize(impl, name, round_index, raw, host_memory.hugepage_malloc_active(peers_env))
                    records.append(record)
                    results.write(json.dumps({**record, "peak_gflops": peak, "raw": raw}) + "\n")
                    results.flush()
                    print(
                        f"  round {round_index} {name} {impl}: {record['tokens_per_sec']:,.1f} tokens/s",
                        file=sys.stderr,
                        flush=True,
                    )
    table = format_table(summarize(records), peaks)
    with open(os.path.join(FLAGS.output_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
