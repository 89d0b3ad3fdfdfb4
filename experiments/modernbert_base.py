"""modernbert_base: ModernBERT-base's pretraining recipe (Warner et al. 2024), phase 1 of 3: 1,024-token sequences.

bert-jax-pretrain --config=experiments/modernbert_base.py --workdir=/shared/runs/mb_base \
    --config.data.train_files='/shared/text/*.txt'

then modernbert_base_context.py (8,192 tokens, global RoPE theta 160,000) with
`--config.init_from=/shared/runs/mb_base`, then modernbert_base_decay.py (the 1-sqrt decay) with
`--config.init_from=<the context run's workdir>`. On a TPU slice it runs as it is; elsewhere set
`--config.model.attention_kernel=xla` (or `cudnn` on a GPU). docs/tpu.md has this recipe's fit on v5p-8,
v5litepod-16 and v4-8 (`bert-jax-compile --config=experiments/modernbert_base.py --topology=v5p-8`).

Sources. [Y] is AnswerDotAI/ModernBERT's `yamls/modernbert/modernbert-base-pretrain.yaml` (commit 00220af,
"Update & add ModernBERT training configs", 2025-02-06); [P] is the paper, Warner et al. 2024, "Smarter,
Better, Faster, Longer: A Modern Bidirectional Encoder ..." (arXiv 2412.13663), section 2.2 (training).
- Model: `model.family = "modernbert"` at size "base": 22 layers, width 768, GeGLU MLP of 1,152, 12 heads of 64
  [Y model_config]; local attention over a 128-token window (|i - j| <= 64) on every layer but each third, which
  attends globally (sliding_window 128, global_attn_every_n_layers 3) [Y]; RoPE with theta 10,000 on every layer
  in this phase (rotary_emb_base 10000.0) [Y] (the context phase raises the global layers' to 160,000 [P]);
  LayerNorm eps 1e-5 without bias, no biases but the decoder's [Y]: the family's defaults.
  `max_position_embeddings` 8,192 (the released ModernBERT-base config.json): a bound, not a table (RoPE), and
  one of the fields a warm start checks, so all three phases keep it.
- Objective: the masked LM alone, no next-sentence prediction (`nsp_loss_weight = 0`, the family has no NSP
  head) [Y: a masked-LM model and loss only, P]; 30% of the tokens masked (mlm_probability 0.3) [Y, P], token by
  token (`whole_word = False`: the reference's collator masks tokens); `max_predictions_per_seq` 308 =
  ceil(0.3 x 1,024): the masking draws round(0.3 x length) per sequence, at most 307 here, so the cap never
  cuts a draw.
- Optimizer: StableAdamW with fully decoupled weight decay (decoupled_stableadamw): learning rate 8e-4, betas
  (0.9, 0.98), eps 1e-6, weight decay 1e-5 scaled by lr(step) / peak, none on norms and biases
  (filter_bias_norm_wd) [Y]. No gradient clipping: [Y] sets no clipping algorithm; optimi's StableAdamW page
  (the library of [P]'s first author) says its update clipping "outperforms gradient clipping on downstream
  tasks" and "removes the need for gradient clipping". `clip_global_norm` is declared
  `placeholder(float)`: None (off) by default, and `--config.optimizer.clip_global_norm=1.0` turns it on.
- Schedule: linear warmup over 3B tokens, then constant at the peak to the end of the phase (warmup_stable_decay
  with t_warmup 3_000_000_000tok and t_decay 0tok [Y]; "a constant LR of 8e-4 for 1.7 trillion tokens following
  a 3 billion token warmup" [P]). The decay is phase 3's. Here: schedule "linear" from the peak to
  `end_learning_rate` = the peak, i.e. constant after warmup; 3e9 / (4,608 x 1,024) = 635.8 -> 636 warmup steps.
- Batch and length: 4,608 sequences of 1,024 tokens per step (global_train_batch_size 4608, max_seq_len 1024)
  [Y]: 4,718,592 tokens per step; 1,719B tokens (max_duration 1_719_000_000_000tok) [Y] / 4,718,592 =
  364,303.6 -> 364,304 steps.
- Eval and checkpoints every 4,000 steps (eval_interval, save_interval 4000ba) [Y].

What differs from the reference:
- No sequence packing yet: the reference unpads and packs documents into full 1,024-token sequences; here
  each sequence is one of create_pretraining_data's two-segment instances (the NSP pairs, label unused) padded
  to 1,024, so a step holds fewer real tokens than 4,718,592 wherever documents run short, and the step counts
  above (the reference's tokens in full sequences) train on fewer tokens than it. `short_seq_prob = 0`: the
  reference makes no deliberately short sequences.
- Tokenizer and data: this repo's format (text files or a corpus built by bert-jax-build-corpus) with its
  WordPiece or SentencePiece vocabulary; by default BERT's uncased vocabulary (30,522 ids, 30,592 rows padded
  to a multiple of 128), where ModernBERT has a cased BPE vocabulary of 50,368 ids (OLMo's, modified) and its
  own 1.7T-token mixture with code. The embedding is smaller by that difference: 134,447,488 parameters here,
  about 149M in ModernBERT-base.
- No batch-size warmup: the reference ramps the batch from 768 sequences (its 96 per GPU on 8 GPUs) to 4,608
  over the first 50B tokens (batch_size_warmup_tokens) [Y, P]; here 4,608 from the first step.
- No dropout: the reference drops 10% of the attention output (attn_out_dropout_prob 0.1, 0 elsewhere) [Y];
  the family's `attention_dropout` is transformers' (probabilities and output together) and splash has no
  dropout on the probabilities, so all dropout is 0 (as the released config.json's attention_dropout 0.0).
- Eval masks 30% as training does (the reference evaluates at 15%); 3 global batches (13,824 sequences,
  14.2M tokens) per eval.
- Initialization: the family's own (transformers' `_init_weights`), not compared with [Y]'s full_megatron.
- Compute: bfloat16 with float32 parameters and optimizer state (the reference's amp_bf16 keeps float32
  master weights too); attention_kernel "splash" (Pallas flash attention with its sliding-window mask for the
  local layers) on TPU. The reference accumulates 6 microbatches of 96 per GPU on 8 GPUs; here
  `num_microbatches` is sized for a v5p-8 (4 chips): 18 microbatches of 256, 64 sequences per chip at a time,
  the largest power of two that fits its 95 GB chips without remat (48.61 GB per chip; 128 need 93.68 GB). The
  same 18 fit a v5litepod-16 (16 per chip, 13.82 GB of 16 GiB); a v4-8 takes `--config.num_microbatches=36`
  (32 per chip). docs/tpu.md has the largest per-chip batches per slice, with and without remat; on other
  slices: 4,608 / (chips x rows per chip) microbatches (`--config.fit=auto` picks a count that fits).
"""

from __future__ import annotations

import os
import runpy

import ml_collections
from ml_collections import config_dict

_HERE = os.path.dirname(os.path.abspath(__file__))

MASKED_LM_PROB = 0.3
SEQ_LENGTH = 1024
GLOBAL_BATCH = 4608  # sequences per step
TOKENS = 1_719_000_000_000  # the phase's tokens
WARMUP_TOKENS = 3_000_000_000


def _sibling_config(filename: str) -> ml_collections.ConfigDict:
    """`get_config()` of another file in experiments/, loaded by path (see bert_mini.py for why)."""
    return runpy.run_path(os.path.join(_HERE, filename))["get_config"]()


def steps(tokens: int, sequences: int, length: int) -> int:
    """Steps of `sequences` x `length` tokens that hold `tokens` (rounded to the nearest step)."""
    return round(tokens / (sequences * length))


def get_config() -> ml_collections.ConfigDict:
    # The job's plumbing (checkpoint timeout, compilation cache, fit check, data worker settings, corpus split) is
    # bert_base_phase1's; everything of the recipe is set below.
    config = _sibling_config("bert_base_phase1.py")
    config.num_train_steps = steps(TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 364,304
    config.global_batch_size = GLOBAL_BATCH
    config.num_microbatches = 18  # 256 sequences per microbatch: 64 per chip on a v5p-8 (see the docstring)
    config.log_every_steps = 100
    config.eval_every_steps = 4_000
    config.eval_batches = 3
    config.checkpoint_every_steps = 4_000

    model = ml_collections.ConfigDict()
    model.family = "modernbert"
    model.size = "base"
    model.dtype = "bfloat16"
    model.global_rope_theta = 10_000.0  # 160,000 from the context phase on
    model.local_rope_theta = 10_000.0
    model.local_attention = 128
    model.global_attn_every_n_layers = 3
    model.max_position_embeddings = 8192
    model.embedding_dropout = 0.0
    model.attention_dropout = 0.0  # the reference's 0.1 on the attention output: see the docstring
    model.mlp_dropout = 0.0
    model.vocab_pad_multiple = 128
    model.remat_policy = "none"  # or "full", "dots", "dots_no_batch": trade compute for memory
    model.attention_kernel = "splash"  # TPU; "xla" anywhere, "cudnn" on GPUs
    config.model = model
    config.nsp_loss_weight = 0.0  # the family has no next-sentence head
    del config["initialization"]  # the family's own initialization (BERT's structured start does not apply)

    config.data.max_seq_length = SEQ_LENGTH
    config.data.masked_lm_prob = MASKED_LM_PROB
    config.data.max_predictions_per_seq = 308  # ceil(0.3 x 1,024)
    config.data.whole_word = False
    config.data.short_seq_prob = 0.0

    opt = config.optimizer
    opt.name = "stable_adamw"
    opt.learning_rate = 8e-4
    opt.warmup_steps = steps(WARMUP_TOKENS, GLOBAL_BATCH, SEQ_LENGTH)  # 636
    opt.total_steps = 0  # = num_train_steps
    opt.schedule = "linear"  # from the peak to end_learning_rate = the peak: constant after warmup
    opt.power = 1.0
    opt.end_learning_rate = 8e-4  # set it with learning_rate (e.g. large's restart at 5e-5)
    opt.decay_from_warmup_end = False
    opt.decay_steps = 0
    opt.decay_shape = "linear"
    opt.b1 = 0.9
    opt.b2 = 0.98
    opt.eps = 1e-6
    opt.weight_decay = 1e-5
    opt.fully_decoupled_weight_decay = True
    opt.bias_correction = True  # StableAdamW's moments are always bias-corrected
    opt.clip_global_norm = config_dict.placeholder(float)  # None: no clipping; a float by flag turns it on

    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.dcn_data = 1
    return config
