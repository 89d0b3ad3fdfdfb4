"""modernbert_base_decay: ModernBERT-base's recipe, phase 3 of 3: the learning rate's 1-sqrt decay at 8,192 tokens.

bert-jax-pretrain --config=experiments/modernbert_base_decay.py --workdir=/shared/runs/mb_base_decay \
    --config.data.train_files='/shared/text/*.txt' --config.init_from=/shared/runs/mb_base_context

The context phase (modernbert_base_context.py: 8,192 tokens, global RoPE theta 160,000, 576 sequences per
step, 30% masking, StableAdamW at 3e-4 with weight decay 1e-5, no clipping, bf16, splash) with the schedule
and length of the reference's decay phase.

Sources. [Y] is AnswerDotAI/ModernBERT's `yamls/modernbert/modernbert-base-learning-rate-decay.yaml` (commit
00220af, 2025-02-06); [P] is Warner et al. 2024 (arXiv 2412.13663), section 2.2: after the 250B tokens at
constant 3e-4, a decay phase over 50B tokens with a 1-sqrt schedule, on a mixture that upsamples the
higher-quality sources (in our words).
- Schedule: the whole phase is the decay, from 3e-4 down to 3e-7 (one_minus_sqrt, lr 3e-4, alpha_f 0.001,
  t_decay = t_max = max_duration) [Y]: `schedule="wsd"` with no warmup, `decay_steps = num_train_steps` and
  `decay_shape="one_minus_sqrt"`: lr(step) = 3e-7 + (3e-4 - 3e-7) x (1 - sqrt(step / steps)), Hägele et al.
  2024's (1-sqrt) cooldown (bert_jax/training/optim.py). Weight decay 1e-5, fully decoupled, so it decays with
  the rate (1e-5 x lr(step) / 3e-4) [Y].
- 576 sequences of 8,192 per step (global_train_batch_size 576) [Y]; 50B tokens (max_duration
  50_000_000_000tok) [Y, P] / 4,718,592 = 10,596.4 -> 10,596 steps.
- Eval and checkpoints every 1,000 steps (eval_interval, save_interval 1000ba) [Y].
- Warm start: `--config.init_from=<the context phase's workdir>` (its weights; a new optimizer state, step 0, as
  the reference's load_path, reset_time, restart_override) [Y].

What differs from the reference: phase 1's and the context phase's differences (no packing, the vocabulary,
no dropout, eval at 30% masking), and the data: the reference upsamples its higher-quality sources for this phase
[P]; here the corpus the user gives. If `num_train_steps` is changed, change `optimizer.decay_steps` with it
(the decay must fit in the run: a config error otherwise).
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))

GLOBAL_BATCH = 576
SEQ_LENGTH = 8192
TOKENS = 50_000_000_000
ALPHA_F = 0.001  # the final learning rate as a fraction of the peak


def _sibling(filename: str) -> dict:
    """The globals of another file in experiments/, run by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))


def get_config() -> ml_collections.ConfigDict:
    config = _sibling("modernbert_base_context.py")["get_config"]()
    config.num_train_steps = _sibling("modernbert_base.py")["steps"](TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 10,596
    config.eval_every_steps = 1_000
    config.checkpoint_every_steps = 1_000

    opt = config.optimizer
    opt.learning_rate = 3e-4
    opt.warmup_steps = 0
    opt.schedule = "wsd"
    opt.decay_steps = config.num_train_steps  # the whole phase decays
    opt.decay_shape = "one_minus_sqrt"
    opt.end_learning_rate = ALPHA_F * opt.learning_rate  # 3e-7
    return config
