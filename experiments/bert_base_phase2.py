"""bert_base_phase2: BERT-base, the original recipe, phase 2: the last 100,000 steps at seq 512.

bert-jax-pretrain --config=experiments/bert_base_phase2.py --workdir=/shared/runs/base_p2 \
    --config.data.train_files='/shared/text/*.txt' --config.init_from=/shared/runs/base_p1

Phase 1 (bert_base_phase1) with seq 512 and 80 predictions per sequence (0.15 * 512, google-research/bert's README),
the same 256 sequences per step (Devlin et al. 2019, Appendix A.2) and the rest of the optimizer unchanged.

Warm start: this phase starts from phase 1's weights: `--config.init_from=<phase-1 workdir>` takes the
parameters of its latest checkpoint (weights only, a fresh optimizer, step 0, as the original's
`init_checkpoint`). Without it the run starts from a fresh initialization, which is only useful as a smoke
test of seq-512 training.

Learning rate, a choice: the paper runs ONE schedule over all 1M steps (warmup 10,000, then linear decay
from 1e-4 to 0), so phase 2 continues it rather than restarting: 1e-5 at its first step (the value phase 1
ends at) decaying linearly to 0 over its 100,000 steps, no new warmup. That is exactly
1e-4 * (1 - (900,000 + step) / 1,000,000). (Re-warming to 1e-4 over 10,000 steps instead, as running the
original script again does (its global step restarts at 0 from an `init_checkpoint`), is
`--config.optimizer.learning_rate=1e-4 --config.optimizer.warmup_steps=10000`.)
Even if the warm start restores weights only (as the original's `init_checkpoint` did, leaving Adam's
moments fresh), no warmup is needed at this rate: without bias correction m / sqrt(v) is at most 6.6 (at the
12th update, for a gradient of constant sign), so no weight moves by more than 6.6e-5 per step (plus the
tiny weight-decay term), less than phase 1's peak rate of 1e-4.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling_config(filename: str) -> ml_collections.ConfigDict:
    """`get_config()` of another file in experiments/, loaded by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))["get_config"]()


def get_config() -> ml_collections.ConfigDict:
    config = _sibling_config("bert_base_phase1.py")
    config.num_train_steps = 100_000
    config.eval_every_steps = 5_000

    config.data.max_seq_length = 512
    config.data.max_predictions_per_seq = 80

    config.optimizer.learning_rate = 1e-5  # phase 1's schedule at step 900,000
    config.optimizer.warmup_steps = 0
    config.optimizer.end_learning_rate = 0.0
    return config
