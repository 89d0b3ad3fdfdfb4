"""The demo recipe learns on other seeds, and the job says so when a run collapses (slow: CI's second stage).

CI's first stage runs the README's demo as is (seed 0) and checks its final accuracy. One seed on one machine
proves little: the float bits differ between CPUs, and the previous recipe (peak rate 2e-3) learned on some
seeds and collapsed to answering the most frequent word on others. Here the same recipe runs on two more
seeds, cut to its first `STEPS` updates (the same updates, bit for bit: `optimizer.total_steps` keeps the
recipe's schedule; the collapse, when it comes, comes in the first 100 updates), and each must end clear of the
unigram plateau, with no collapse warning. A run forced to collapse (a learning
rate 100 times the recipe's) must print the warning.
"""

from __future__ import annotations

import json
import runpy
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tests.pretrain_cli import pretrain_command

pytestmark = pytest.mark.slow

SEEDS = (2, 3)
STEPS = 500
# Held-out accuracy at [MASK] after STEPS updates. Answering the most frequent word scores 0.07 there. Measured
# 2026-12-07: this recipe's seeds 2 and 3 0.168 and 0.168; the previous recipe (peak rate 2e-3) 0.0695 on seed 2
# (collapsed: this test failed on it) and 0.145 on seed 3 (docs/demo.md).
MIN_ACCURACY_AT_MASK = 0.10
COLLAPSE_STEPS = 150  # a learning rate 100 times the recipe's wrecks it within its warmup
WARNING = "WARNING: the masked LM looks collapsed"
RECIPE_STEPS = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]().num_train_steps


def _run(workdir, steps: int, *overrides: str) -> tuple[str, list[dict]]:
    command = pretrain_command(
        str(workdir),
        f"--config.num_train_steps={steps}",
        f"--config.optimizer.total_steps={RECIPE_STEPS}",
        f"--config.eval_every_steps={steps}",
        f"--config.checkpoint_every_steps={steps}",
        "--config.export=false",
        *overrides,
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return result.stdout, [r for r in records if "eval_mlm_accuracy_at_mask" in r]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_demo_recipe_learns_on_another_seed(tmp_path, seed):
    stdout, evals = _run(tmp_path, STEPS, f"--config.seed={seed}")
    final = evals[-1]
    print(f"seed {seed}, step {final['step']}: held-out accuracy at [MASK] {final['eval_mlm_accuracy_at_mask']:.4f}")
    assert final["step"] == STEPS
    assert WARNING not in stdout, stdout[-2000:]
    assert final["eval_mlm_accuracy_at_mask"] >= MIN_ACCURACY_AT_MASK, (seed, final)
    assert final["eval_mlm_top_prediction_share_at_mask"] < 0.5, (seed, final)


def test_a_collapsed_run_prints_the_warning(tmp_path):
    stdout, evals = _run(tmp_path, COLLAPSE_STEPS, "--config.optimizer.learning_rate=1e-1")
    warnings = [line for line in stdout.splitlines() if line.startswith(WARNING)]
    assert warnings == [warnings[0]] and f"at step {COLLAPSE_STEPS}:" in warnings[0], stdout[-2000:]
    assert "optimizer.learning_rate" in warnings[0] and "optimizer.warmup_steps" in warnings[0]
    assert evals[-1]["eval_mlm_accuracy_at_mask"] <= evals[-1]["eval_mlm_majority_accuracy_at_mask"] + 0.005
