"""modernbert_tiny: the modern encoder family (ModernBERT / Ettin's architecture) at CPU size, on the demo's data.

bert-jax-pretrain --config=experiments/modernbert_tiny.py --workdir=/tmp/modernbert_tiny

Everything not set here is bert_tiny's (the bundled corpus and vocab, 64-token sequences, 1,450 x 16 updates):
the model is `model.family = "modernbert"` at size "tiny" (4 layers of width 128, GeGLU MLP of 192, 2 heads;
RoPE; pre-norm; a local window of 32 tokens on layers 1, 2 and a global layer 0 and 3), trained by the masked LM
alone with the family's own initialization (transformers' `_init_weights`, no structured start) and no dropout,
as ModernBERT. The export in <workdir>/export/hf loads with `transformers.AutoModelForMaskedLM`.
Loaded by path from bert_tiny.py (experiments/ is no package; see bert_mini.py).
"""

from __future__ import annotations

import os
import runpy

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling_config(filename: str) -> ml_collections.ConfigDict:
    """`get_config()` of another file in experiments/, loaded by path."""
    return runpy.run_path(os.path.join(_HERE, filename))["get_config"]()


def get_config() -> ml_collections.ConfigDict:
    config = _sibling_config("bert_tiny.py")
    model = ml_collections.ConfigDict()
    model.family = "modernbert"
    model.size = "tiny"
    model.dtype = "float32"
    model.local_attention = 32  # half of the 64-token sequences: layers 1 and 2 see 16 tokens each way
    model.global_rope_theta = 10000.0  # ModernBERT's 1,024-token phase; 160,000 is for the 8,192-token phase
    model.local_rope_theta = 10000.0
    model.max_position_embeddings = 512
    model.embedding_dropout = 0.0
    model.attention_dropout = 0.0
    model.mlp_dropout = 0.0
    model.vocab_pad_multiple = 128
    model.remat_policy = "none"
    model.attention_kernel = "xla"
    config.model = model
    config.nsp_loss_weight = 0.0  # the family has no next-sentence head
    del config["initialization"]  # the family's own initialization (BERT's structured start does not apply)
    return config
