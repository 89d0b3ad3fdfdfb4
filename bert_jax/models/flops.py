"""Model FLOPs for MFU, and the machine's measured matmul peak (the MFU denominator).

Training FLOPs per sequence (forward + backward = 3 x forward, 2 FLOPs per multiply-add):
  S * (6 * N_matmul + 12 * L * S * H)  +  P * 6 * (H^2 + H * V)
where N_matmul = L * (4 H^2 + 2 H I) are the encoder's matmul weights (query, key, value, output and the
two feed-forward matrices), 12 L S H is the attention score and context work (bidirectional, no causal
halving), and the MLM head (transform dense + tied decoder) runs on the P masked positions only.
Embedding lookups, LayerNorms, the pooler and NSP head are left out, as is usual. BERT-base at S=128,
P=20: 6.99e10 FLOPs per sequence. The modern family (`_modern_training_flops`): 4 H^2 + 3 H I matmul weights per
layer (the GeGLU input projection is two matrices), attention over the local window on its local layers.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from bert_jax.models.configs import BertConfig
from bert_jax.models.modernbert_config import ModernBertConfig


def training_flops_per_sequence(config: BertConfig | ModernBertConfig, seq_length: int, num_predictions: int) -> float:
    """Model FLOPs of one training step per sequence (see the module docstring)."""
    if isinstance(config, ModernBertConfig):
        return _modern_training_flops(config, seq_length, num_predictions)
    layers, hidden, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    matmul_params = layers * (4 * hidden * hidden + 2 * hidden * inter)
    per_token = 6 * matmul_params + 12 * layers * seq_length * hidden
    head = 6 * (hidden * hidden + hidden * config.vocab_size)
    return float(seq_length * per_token + num_predictions * head)


def _modern_training_flops(config: ModernBertConfig, seq_length: int, num_predictions: int) -> float:
    """The modern family: fused QKV + output (4 H^2) and the GeGLU MLP (3 H I) per layer; each query's attention
    spans the whole sequence on global layers and at most `local_attention` + 1 keys on local ones."""
    hidden, inter = config.hidden_size, config.intermediate_size
    matmul_params = config.num_hidden_layers * (4 * hidden * hidden + 3 * hidden * inter)
    local_span = min(seq_length, config.local_attention + 1)
    spans = sum(seq_length if config.is_global_layer(i) else local_span for i in range(config.num_hidden_layers))
    per_token = 6 * matmul_params + 12 * spans * hidden
    head = 6 * (hidden * hidden + hidden * config.vocab_size)
    return float(seq_length * per_token + num_predictions * head)


def measure_matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted [size x size] @ [size x size] matmul on the default device (median of `repeats`)."""
    a = jnp.ones((size, size), dtype)
    b = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    times.sort()
    return 2.0 * size**3 / times[len(times) // 2]
