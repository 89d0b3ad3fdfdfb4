"""Splash attention: Pallas's TPU flash-attention kernel for the encoder, with BERT's padding mask.

`model.attention_kernel` picks how self-attention runs:
- "xla" (default): `jax.nn.dot_product_attention` (or the explicit softmax when attention dropout is on); XLA
  materializes the [B, heads, T, T] scores and probabilities, which the backward pass keeps.
- "splash": `splash_attention_kernel` (jax.experimental.pallas.ops.tpu), a blocked online-softmax kernel that
  never holds a [T, T] block beyond 128 x 128 per head: on a TPU it removes the quadratic activations (the
  largest term of BERT's memory at seq 512). It has no dropout on the probabilities, so it needs
  `attention_probs_dropout_prob=0` (MaxText and most current encoders train without it).
- "splash_interpret": the same kernel run by Pallas's interpreter, on any backend: slow, for checking the
  kernel against "xla" on a machine without a TPU (the tests do).

Padding: BERT's mask is a key-padding mask. It becomes segment ids (real tokens 0, padding 1), so a real query
sees exactly the real keys, as in "xla"; a padding query sees the padding keys (its output is never used, and
no gradient reaches it). Sequences are padded up to a multiple of 128, the kernel's block, the same way.

Under a mesh (the jobs trace their steps inside `jax.sharding.use_abstract_mesh`), the kernel runs per device
through `shard_map`: batch over the "batch" rule's axes, heads over the "heads" rule's axis, as the activations
are laid out already; a custom kernel cannot be split by XLA's partitioner itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec

from bert_jax import sharding
from bert_jax.models.configs import ConfigError

SPLASH_KERNELS = ("splash", "splash_interpret")  # of configs.ATTENTION_KERNELS
BLOCK = 128  # the kernel's block along the sequence (queries and keys)


def check_devices(kernel: str, devices: Sequence[Any]) -> None:
    """Raises `ConfigError` naming the fix when `kernel` cannot run on `devices` (before anything compiles)."""
    platforms = sorted({device.platform for device in devices})
    if kernel == "splash" and platforms != ["tpu"]:
        raise ConfigError(
            f"model.attention_kernel='splash' is a TPU kernel and this job's devices are {', '.join(platforms)}: "
            "use model.attention_kernel='xla' here (or 'splash_interpret' to check the kernel, slowly)."
        )


def _single_device_splash(query: jax.Array, key: jax.Array, value: jax.Array, keep: jax.Array, interpret: bool):
    """The kernel on local arrays: [b, T, h, d] query/key/value, [b, T] bool keep; T a multiple of `BLOCK`."""
    # imported here, not at the top: only splash runs need Pallas's TPU modules, and every job imports the model
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    _, length, heads, head_dim = query.shape
    mask = masks.MultiHeadMask(tuple(masks.FullMask((length, length)) for _ in range(heads)))
    kernel = kernels.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    segments = jnp.where(keep, 0, 1).astype(jnp.int32)
    scale = jnp.asarray(1.0 / np.sqrt(head_dim), query.dtype)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query * scale, key, value))  # the kernel's [heads, T, d] layout
    out = jax.vmap(kernel)(q, k, v, kernels.SegmentIds(q=segments, kv=segments))
    return jnp.swapaxes(out, 1, 2)


def splash_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, keep: jax.Array, *, interpret: bool = False, rules: Any = None
) -> jax.Array:
    """Attention of [B, T, heads, head_dim] query/key/value over the keys where `keep` ([B, T] bool) is True.

    Equals `jax.nn.dot_product_attention(query, key, value, mask=keep[:, None, None, :])` at every real query.
    """
    length = query.shape[1]
    padded = -(-length // BLOCK) * BLOCK
    if padded != length:
        widths = ((0, 0), (0, padded - length), (0, 0), (0, 0))
        query, key, value = (jnp.pad(x, widths) for x in (query, key, value))
        keep = jnp.pad(keep, ((0, 0), (0, padded - length)))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        out = _single_device_splash(query, key, value, keep, interpret)
    else:
        rules = sharding.LOGICAL_AXIS_RULES if rules is None else rules
        spec = nn.logical_to_mesh_axes(("batch", None, "heads", None), rules)
        rows = PartitionSpec(spec[0], None)
        out = jax.shard_map(
            lambda q, k, v, m: _single_device_splash(q, k, v, m, interpret),
            mesh=mesh,
            in_specs=(spec, spec, spec, rows),
            out_specs=spec,
            check_vma=False,  # a Pallas call's outputs carry no varying-axes annotation
        )(query, key, value, keep)
    return out[:, :length]
