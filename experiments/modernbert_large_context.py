"""modernbert_large_context: ModernBERT-large's recipe, phase 2 of 3: context extension to 8,192 tokens.

bert-jax-pretrain --config=experiments/modernbert_large_context.py --workdir=/shared/runs/mb_large_context \
    --config.data.train_files='/shared/text/*.txt' --config.init_from=/shared/runs/mb_large

ModernBERT-base's context phase (modernbert_base_context.py: 8,192 tokens, 2,458 predictions, global RoPE theta
160,000 and 10,000 on the local layers, constant rate without warmup, its sources, choices and differences from
the reference) with large's model and numbers.

Sources. [Y] is AnswerDotAI/ModernBERT's `yamls/modernbert/modernbert-large-context-extension.yaml` (commit
00220af, 2025-02-06); [P] is Warner et al. 2024 (arXiv 2412.13663), section 2.2.
- Model: size "large" (28 x 1,024, MLP 2,624, 16 heads) [Y], rotary_emb_base 160000.0 and
  local_attn_rotary_emb_base 10000.0 [Y].
- Learning rate 5e-5, constant (constant_with_warmup, t_warmup 0tok) [Y, P: large's rate after its restart];
  weight decay 1e-6 ("after the pretraining LR reduction") [Y].
- 616 sequences of 8,192 per step (global_train_batch_size 616) [Y]: 5,046,272 tokens, as phase 1's 4,928 x
  1,024; 250B tokens (max_duration 250_000_000_000tok) [Y] / 5,046,272 = 49,541.5 -> 49,542 steps.
- Eval and checkpoints every 4,000 steps [Y]; 3 global batches per eval.
- `num_microbatches` for a v5p-8 (4 chips): 616 in 77 microbatches of 8, 2 sequences of 8,192 per chip at a time
  (616 = 4 x 154 allows 1, 2, 7, 11 ... per chip; the reference: 7 per GPU on 8 GPUs): 29.64 GB per chip of 95 GB
  (docs/tpu.md); `--config.fit=auto` picks a count that fits elsewhere.
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))

GLOBAL_BATCH = 616
SEQ_LENGTH = 8192
TOKENS = 250_000_000_000


def _sibling(filename: str) -> dict:
    """The globals of another file in experiments/, run by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))


def get_config() -> ml_collections.ConfigDict:
    config = _sibling("modernbert_base_context.py")["get_config"]()
    config.num_train_steps = _sibling("modernbert_base.py")["steps"](TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 49,542
    config.global_batch_size = GLOBAL_BATCH
    config.num_microbatches = 77  # 8 sequences per microbatch: 2 per chip on a v5p-8
    config.model.size = "large"
    config.optimizer.learning_rate = 5e-5
    config.optimizer.end_learning_rate = 5e-5  # constant
    config.optimizer.weight_decay = 1e-6
    return config
