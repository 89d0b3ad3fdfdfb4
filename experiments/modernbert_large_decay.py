"""modernbert_large_decay: ModernBERT-large's recipe, phase 3 of 3: the learning rate's 1-sqrt decay at 8,192 tokens.

bert-jax-pretrain --config=experiments/modernbert_large_decay.py --workdir=/shared/runs/mb_large_decay \
    --config.data.train_files='/shared/text/*.txt' --config.init_from=/shared/runs/mb_large_context

ModernBERT-base's decay phase (modernbert_base_decay.py: the whole phase a 1-sqrt decay to 0.001 x the peak,
8,192 tokens, global RoPE theta 160,000, its sources, choices and differences from the reference) with large's
model and numbers.

Sources. [Y] is AnswerDotAI/ModernBERT's `yamls/modernbert/modernbert-large-learning-rate-decay.yaml` (commit
00220af, 2025-02-06); [P] is Warner et al. 2024 (arXiv 2412.13663), section 2.2.
- Model: size "large" [Y], global RoPE theta 160,000, local 10,000 [Y].
- Schedule: one_minus_sqrt from lr 5e-5 to alpha_f 0.001 x 5e-5 = 5e-8 over the whole phase (t_decay = t_max
  = max_duration) [Y]; weight decay 1e-6, fully decoupled [Y].
- 624 sequences of 8,192 per step (global_train_batch_size 624: the reference's decay phase takes 624 where its
  context phase took 616) [Y]: 5,111,808 tokens; 50B tokens (max_duration 50_000_000_000tok) [Y, P] / 5,111,808 =
  9,781.3 -> 9,781 steps.
- Eval and checkpoints every 1,000 steps (eval_interval, save_interval 1000ba) [Y]; 3 global batches per eval.
- `num_microbatches` for a v5p-8 (4 chips): 624 in 39 microbatches of 16, 4 sequences per chip at a time (the
  reference: 6 per GPU on 8 GPUs): 50.43 GB per chip of 95 GB (docs/tpu.md); `--config.fit=auto` picks a count
  that fits elsewhere.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))

GLOBAL_BATCH = 624
SEQ_LENGTH = 8192
TOKENS = 50_000_000_000
ALPHA_F = 0.001  # the final learning rate as a fraction of the peak


def _sibling(filename: str) -> dict:
    """The globals of another file in experiments/, run by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))


def get_config() -> ml_collections.ConfigDict:
    config = _sibling("modernbert_base_decay.py")["get_config"]()
    config.num_train_steps = _sibling("modernbert_base.py")["steps"](TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 9,781
    config.global_batch_size = GLOBAL_BATCH
    config.num_microbatches = 39  # 16 sequences per microbatch: 4 per chip on a v5p-8
    config.model.size = "large"

    opt = config.optimizer
    opt.learning_rate = 5e-5
    opt.decay_steps = config.num_train_steps  # the whole phase decays
    opt.end_learning_rate = ALPHA_F * opt.learning_rate  # 5e-8
    opt.weight_decay = 1e-6
    return config
