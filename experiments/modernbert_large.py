"""modernbert_large: ModernBERT-large's pretraining recipe (Warner et al. 2024), phase 1 of 3: 1,024-token sequences.

bert-jax-pretrain --config=experiments/modernbert_large.py --workdir=/shared/runs/mb_large \
    --config.data.train_files='/shared/text/*.txt'

then modernbert_large_context.py and modernbert_large_decay.py, each with `--config.init_from=<the previous
phase's workdir>`. ModernBERT-base's phase 1 (modernbert_base.py: its sources, its choices and what differs
from the reference, all of which hold here) with large's numbers.

Sources. [Y] is AnswerDotAI/ModernBERT's `yamls/modernbert/modernbert-large-pretrain.yaml` (commit 00220af,
2025-02-06); [P] is Warner et al. 2024 (arXiv 2412.13663), section 2.2.
- Model: size "large": 28 layers, width 1,024, GeGLU MLP of 2,624, 16 heads of 64 (num_hidden_layers 28,
  hidden_size 1024, intermediate_size 2624, num_attention_heads 16) [Y]; the rest as base (window 128, a global
  layer every 3, RoPE theta 10,000 in this phase, LayerNorm eps 1e-5 without bias) [Y].
- Learning rate 5e-4 (lr 5e-4, constant after warmup) [Y, P], weight decay 1e-5 [Y]; betas (0.9, 0.98), eps
  1e-6, StableAdamW with fully decoupled decay, no clipping, as base [Y].
- Warmup over 2B tokens (t_warmup 2_000_000_000tok) [Y, P]: 2e9 / (4,928 x 1,024) = 396.3 -> 396 steps.
- 4,928 sequences of 1,024 per step (global_train_batch_size 4928) [Y]: 5,046,272 tokens; 1,719B tokens
  (max_duration 1_719_000_000_000tok) [Y] / 5,046,272 = 340,647.5 -> 340,648 steps.
- Eval and checkpoints every 4,000 steps (eval_interval, save_interval 4000ba) [Y]; 3 global batches per eval.

What differs from the reference, besides base's differences (no packing, the vocabulary, no batch-size warmup
(the reference ramps from 448 sequences to 4,928 over 10B tokens [Y, P]), no dropout, eval at 30% masking):
- The restart. [Y]'s comment on lr 5e-4: "This learning rate was too high and required a restart. You'll want
  to reduce it."; [P]: large trained at 5e-4 for 900B tokens, then "rolled back and restarted training at 5e-5
  for the remaining 800 billion tokens" after its loss plateaued. This config is the reference's 5e-4; the
  restart is `--config.optimizer.learning_rate=5e-5 --config.optimizer.end_learning_rate=5e-5
  --config.optimizer.warmup_steps=0 --config.init_from=<the 5e-4 run>` (the context and decay phases' weight
  decay, 1e-6, is "after the pretraining LR reduction" [Y]).
- Initialization: the reference initializes large from ModernBERT-base's pretrained weights, tiled from the
  middle (init_from_checkpoint, mode tile_weights_from_middle) [Y]; here the family's own random initialization
  (a warm start takes weights of the same shape only).
- `num_microbatches` for a v5p-8 (4 chips): 4,928 in 44 microbatches of 112, 28 sequences per chip at a time (the
  reference: 56 per GPU, device_train_microbatch_size 56 [Y]): 48.01 GB per chip of 95 GB (docs/tpu.md);
  `--config.fit=auto` picks a count that fits elsewhere.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))

GLOBAL_BATCH = 4928
SEQ_LENGTH = 1024
TOKENS = 1_719_000_000_000
WARMUP_TOKENS = 2_000_000_000


def _sibling(filename: str) -> dict:
    """The globals of another file in experiments/, run by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))


def get_config() -> ml_collections.ConfigDict:
    base = _sibling("modernbert_base.py")
    steps = base["steps"]
    config = base["get_config"]()
    config.num_train_steps = steps(TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 340,648
    config.global_batch_size = GLOBAL_BATCH
    config.num_microbatches = 44  # 112 sequences per microbatch: 28 per chip on a v5p-8
    config.model.size = "large"
    config.optimizer.learning_rate = 5e-4
    config.optimizer.end_learning_rate = 5e-4  # constant after warmup
    config.optimizer.warmup_steps = steps(WARMUP_TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 396
    config.optimizer.weight_decay = 1e-5
    return config
