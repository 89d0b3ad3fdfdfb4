"""modernbert_base_context: ModernBERT-base's recipe, phase 2 of 3: context extension to 8,192 tokens.

bert-jax-pretrain --config=experiments/modernbert_base_context.py --workdir=/shared/runs/mb_base_context \
    --config.data.train_files='/shared/text/*.txt' --config.init_from=/shared/runs/mb_base

Phase 1 (modernbert_base.py) with what the reference changes; everything else (model, masking rate, StableAdamW
and its betas, eps, decoupled weight decay, no clipping, bf16, splash) is phase 1's.

Sources. [Y] is AnswerDotAI/ModernBERT's `yamls/modernbert/modernbert-base-context-extension.yaml` (commit
00220af, 2025-02-06); [P] is Warner et al. 2024 (arXiv 2412.13663), section 2.2, which (in our words) extends the
native context to 8,192 tokens by raising the global attention layers' RoPE theta to 160,000, trains 250B tokens
at a constant, lower 3e-4, then decays the rate (modernbert_base_decay.py).
- Sequences of 8,192 tokens (max_seq_len 8192) [Y, P]; `max_predictions_per_seq` 2,458 = ceil(0.3 x 8,192)
  (round(0.3 x length) per sequence, at most 2,458: the cap never cuts a draw); masking still 30% [Y].
- RoPE theta 160,000 on the global layers, 10,000 on the local ones (rotary_emb_base 160000.0,
  local_attn_rotary_emb_base 10000.0) [Y, P].
- Learning rate 3e-4, constant, no warmup (constant_with_warmup, t_warmup 0tok) [Y, P]: schedule "linear" from
  3e-4 to 3e-4. Weight decay 1e-5 (fully decoupled: the decay per step is 1e-5 x lr(step) / 3e-4) [Y].
- 576 sequences of 8,192 per step (global_train_batch_size 576) [Y]: 4,718,592 tokens, as phase 1's 4,608 x
  1,024; 250B tokens (max_duration 250_000_000_000tok) [Y, P] / 4,718,592 = 52,981.9 -> 52,982 steps.
- Eval and checkpoints every 4,000 steps (eval_interval, save_interval 4000ba) [Y]; 3 global batches per eval
  (1,728 sequences, 14.2M tokens, as phase 1's).
- Warm start: `--config.init_from=<phase 1's workdir>` takes the weights of its latest checkpoint, with a new
  optimizer state and the step back at 0, as the reference (load_path of the pretraining run, reset_time,
  restart_override: optimizer hyperparameters and the scheduler from this config) [Y]. The model's shape is
  phase 1's (max_position_embeddings 8,192 in both), which the warm start checks. Without it the run starts from
  a fresh initialization: only a smoke test of 8,192-token training.

What differs from the reference, besides phase 1's differences (no packing, so each sequence is one padded
two-segment instance: few documents fill 8,192 tokens, and the padding grows with the length; the vocabulary;
no dropout; eval at 30% masking):
- Data mixture: the reference trains this phase on "an 8,192 token mixture of the original pretraining
  dataset" sampled for long documents [P]; here the corpus the user gives (`data.train_files`), built again at
  8,192 tokens.
- `num_microbatches` for a v5p-8 (4 chips): 576 in 18 microbatches of 32, 8 sequences of 8,192 per chip at a
  time, the largest power of two that fits its 95 GB chips without remat (48.65 GB per chip; 16 need 93.92 GB);
  the reference accumulates 12 per GPU on 8 GPUs. The same 18 fit a v5litepod-16 (2 per chip, 13.83 GB of 16
  GiB); a v4-8 takes `--config.num_microbatches=36` (4 per chip). docs/tpu.md has the largest per-chip batches
  per slice, with and without remat; on other slices: 576 / (chips x rows per chip) microbatches
  (`--config.fit=auto` picks a count that fits).
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))

SEQ_LENGTH = 8192
GLOBAL_BATCH = 576
TOKENS = 250_000_000_000


def _sibling(filename: str) -> dict:
    """The globals of another file in experiments/, run by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))


def get_config() -> ml_collections.ConfigDict:
    phase1 = _sibling("modernbert_base.py")
    config = phase1["get_config"]()
    config.num_train_steps = phase1["steps"](TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 52,982
    config.global_batch_size = GLOBAL_BATCH
    config.num_microbatches = 18  # 32 sequences per microbatch: 8 per chip on a v5p-8 (see the docstring)
    config.eval_every_steps = 4_000
    config.checkpoint_every_steps = 4_000

    config.model.global_rope_theta = 160_000.0
    config.model.local_rope_theta = 10_000.0

    config.data.max_seq_length = SEQ_LENGTH
    config.data.max_predictions_per_seq = 2458  # ceil(0.3 x 8,192)

    config.optimizer.learning_rate = 3e-4
    config.optimizer.end_learning_rate = 3e-4  # constant
    config.optimizer.warmup_steps = 0
    return config
