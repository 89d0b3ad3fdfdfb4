"""Self-attention kernels for the encoders, with the key-padding mask and an optional local (sliding) window.

`model.attention_kernel` picks how self-attention runs:
- "xla" (default, every platform): `jax.nn.dot_product_attention` (or the explicit softmax when attention dropout
  is on) with the boolean mask of `attention_mask`; XLA materializes the [B, heads, T, T] scores and
  probabilities, which the backward pass keeps.
- "splash" (TPU): `splash_attention_kernel` (jax.experimental.pallas.ops.tpu), a blocked online-softmax kernel
  that never holds a [T, T] block beyond 128 x 128 per head: on a TPU it removes the quadratic activations (the
  largest term of BERT's memory at seq 512). It has no dropout on the probabilities, so it needs
  `attention_probs_dropout_prob=0` (MaxText and most current encoders train without it).
- "splash_interpret": the same kernel run by Pallas's interpreter, on any backend: slow, for checking the
  kernel against "xla" on a machine without a TPU (the tests do).
- "cudnn" (NVIDIA GPUs): `jax.nn.dot_product_attention(..., implementation="cudnn")`, cuDNN's fused flash
  attention: no [B, heads, T, T] activations either, no attention dropout, and inputs in bfloat16 or float16
  only (cuDNN has no float32 kernel). `check_devices` refuses "splash" off a TPU and "cudnn" off a GPU.
  Not yet verified on a GPU: no GPU was lent while it was written, and an earlier trial of cuDNN with key lengths
  for padding on an H200 (docs/performance.md, the performance log) found gradients on right-padded batches that
  differed from XLA's. Until a GPU run of `tests/test_attention_local.py`'s checks says otherwise, "xla" stays the
  default and "cudnn" is an option to try, not a recommendation.

Padding: BERT's mask is a key-padding mask (`keep`, [B, T] bool, True on real tokens). For splash it becomes
segment ids (real tokens 0, padding 1), so a real query sees exactly the real keys, as in "xla"; a padding query
sees the padding keys (its output is never used, and no gradient reaches it). Sequences are padded up to a
multiple of 128, the kernel's block, the same way (segment 1: never visible to a real query). cuDNN takes the
real lengths instead (`query_seq_lengths` / `key_value_seq_lengths`, no [T, T] mask), which assumes right
padding: `keep` is True on a prefix of each row, as every batch of this project is.

Local attention (ModernBERT's local layers; `window` = its `local_attention`, e.g. 128): query i sees key j only
where |i - j| <= window // 2, and only real keys (transformers' `ModernBertModel._update_attention_mask`).
`window=None` is global attention (every real key). Per kernel:
- "xla": `attention_mask(keep, window)`, the dense [B, 1, T, T] band-and-padding mask.
- splash: the kernel is built with `LocalMask(window_size=(window // 2, window // 2), offset=0)`, which it
  evaluates per block: blocks wholly outside the band are skipped (window 128: each block of 128 queries visits
  at most 3 blocks of 128 keys, at any T), and no mask beyond the kernel's own 128 x 128 block is ever built.
  Padding stays in the segment ids.
- cudnn: cuDNN's sliding window is one-sided (`local_window_size` with a right side raises unless causal), so the
  band goes in as a [1, 1, T, T] mask, one for all rows and heads (cuDNN adds it as a bias, and its backward
  writes that bias's unused gradient), with the padding still as sequence lengths.

Under a mesh (the jobs trace their steps inside `jax.sharding.use_abstract_mesh`), the splash kernel runs per
device through `shard_map`: batch over the "batch" rule's axes, heads over the "heads" rule's axis, as the
activations are laid out already; a custom kernel cannot be split by XLA's partitioner itself. (cuDNN's call
carries its own partitioning rule over batch and heads.)
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
_PLATFORMS = {"splash": "tpu", "cudnn": "gpu"}  # the kernels that run on one platform only (`Device.platform`)


def check_devices(kernel: str, devices: Sequence[Any]) -> None:
    """Raises `ConfigError` naming the fix when `kernel` cannot run on `devices` (before anything compiles)."""
    platforms = sorted({device.platform for device in devices})
    needed = _PLATFORMS.get(kernel)
    if needed is not None and platforms != [needed]:
        what = "a TPU kernel" if needed == "tpu" else "cuDNN's kernel, for NVIDIA GPUs"
        also = " (or 'splash_interpret' to check the kernel, slowly)" if kernel == "splash" else ""
        raise ConfigError(
            f"model.attention_kernel={kernel!r} is {what} and this job's devices are {', '.join(platforms)}: "
            f"use model.attention_kernel='xla' here{also}."
        )


def _half_window(window: int) -> int:
    """How far a local layer sees on each side: `window // 2` (ModernBERT's `local_attention // 2`)."""
    if not isinstance(window, int | np.integer) or isinstance(window, bool) or window < 1:
        raise ValueError(f"the local attention window must be a positive integer (or None for global), got {window!r}")
    return int(window) // 2


def local_window_mask(length: int, window: int) -> jax.Array:
    """[length, length] bool, True where |i - j| <= window // 2: the keys query i sees in a local layer."""
    positions = jnp.arange(length)
    return jnp.abs(positions[:, None] - positions[None, :]) <= _half_window(window)


def attention_mask(keep: jax.Array, window: int | None = None) -> jax.Array:
    """The boolean mask of `jax.nn.dot_product_attention` for `keep` ([B, T] bool, True on real tokens).

    Global (`window=None`): [B, 1, 1, T], every real key. Local: [B, 1, T, T], the real keys within
    `window // 2` positions of each query (`local_window_mask`), as transformers' ModernBERT builds it.
    """
    keys = keep.astype(bool)[:, None, None, :]
    if window is None:
        return keys
    return keys & local_window_mask(keep.shape[-1], window)[None, None]


def cudnn_arguments(keep: jax.Array, window: int | None = None) -> dict[str, jax.Array | None]:
    """The mask arguments of `jax.nn.dot_product_attention(..., implementation="cudnn")` for `keep` and `window`.

    The padding as sequence lengths (cuDNN's padding mask type, nothing [T, T]), which needs right padding:
    `keep` True on a prefix of each row. For a local layer, also the band as a [1, 1, T, T] `mask`: cuDNN's own
    sliding window is one-sided (jax raises for a right window without `is_causal`).
    """
    lengths = jnp.sum(keep.astype(jnp.int32), axis=-1, dtype=jnp.int32)
    band = None if window is None else local_window_mask(keep.shape[-1], window)[None, None]
    return {"query_seq_lengths": lengths, "key_value_seq_lengths": lengths, "mask": band}


def cudnn_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    keep: jax.Array,
    *,
    window: int | None = None,
    document_ids: jax.Array | None = None,
) -> jax.Array:
    """cuDNN's flash attention of [B, T, heads, head_dim] query/key/value (bfloat16 or float16) over `keep`.

    Equals `jax.nn.dot_product_attention(query, key, value, mask=attention_mask(keep, window))` at every real
    query, for right-padded rows (see `cudnn_arguments`). NVIDIA GPUs only; cuDNN's own limits apply (head_dim a
    multiple of 8, at most 128 before Hopper, 256 from it; with a window, training needs an even T).
    """
    if document_ids is not None:  # packed rows: the documents' block-diagonal mask (cuDNN adds it as a bias)
        mask = document_mask(document_ids, window)
        return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="cudnn")
    return jax.nn.dot_product_attention(query, key, value, implementation="cudnn", **cudnn_arguments(keep, window))


def document_mask(document_ids: jax.Array, window: int | None = None) -> jax.Array:
    """The boolean mask of packed rows: [B, 1, T, T], query i sees key j when both belong to the same document.

    `document_ids` ([B, T] int): 0 on padding, k >= 1 on the k-th document of the row. Within a document the
    mask is `attention_mask`'s (global, or within `window // 2` positions); nothing crosses a document boundary,
    and padding sees nothing (its outputs are never used).
    """
    ids = document_ids.astype(jnp.int32)
    mask = (ids[:, None, :, None] == ids[:, None, None, :]) & (ids[:, None, None, :] > 0)
    if window is None:
        return mask
    return mask & local_window_mask(document_ids.shape[-1], window)[None, None]


def _kernel_mask(length: int, heads: int, window: int | None):
    """Splash's mask object for `heads` heads over `length` (padded) positions: full, or the local band."""
    # imported here, not at the top: only splash runs need Pallas's TPU modules, and every job imports the model
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    if window is None:
        head = masks.FullMask((length, length))
    else:
        half = _half_window(window)
        # kv in [q - left, q + right] (offset 0: queries and keys share positions): |q - kv| <= window // 2
        head = masks.LocalMask((length, length), window_size=(half, half), offset=0)
    return masks.MultiHeadMask(tuple(head for _ in range(heads)))


def _single_device_splash(
    query: jax.Array, key: jax.Array, value: jax.Array, segments: jax.Array, window: int | None, interpret: bool
):
    """The kernel on local arrays: [b, T, h, d] query/key/value, [b, T] int32 segment ids (a query sees the keys
    of its own segment); T a multiple of `BLOCK`."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels

    _, length, heads, head_dim = query.shape
    mask = _kernel_mask(length, heads, window)
    kernel = kernels.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = jnp.asarray(1.0 / np.sqrt(head_dim), query.dtype)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query * scale, key, value))  # the kernel's [heads, T, d] layout
    out = jax.vmap(kernel)(q, k, v, kernels.SegmentIds(q=segments, kv=segments))
    return jnp.swapaxes(out, 1, 2)


def splash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    keep: jax.Array,
    *,
    window: int | None = None,
    interpret: bool = False,
    rules: Any = None,
    document_ids: jax.Array | None = None,
) -> jax.Array:
    """Attention of [B, T, heads, head_dim] query/key/value over the keys where `keep` ([B, T] bool) is True.

    Equals `jax.nn.dot_product_attention(query, key, value, mask=attention_mask(keep, window))` at every real
    query: global for `window=None`, else within `window // 2` positions. With `document_ids` (packed rows, see
    `document_mask`) each query sees only its own document's keys: the kernel's segment ids are the document ids.
    """
    if window is not None:
        _half_window(window)  # a bad window fails here, with its own message, not inside the kernel's mask
    if document_ids is None:
        segments, padding_segment = jnp.where(keep, 0, 1).astype(jnp.int32), 1  # real tokens 0, padding 1
    else:
        segments, padding_segment = document_ids.astype(jnp.int32), 0
    length = query.shape[1]
    padded = -(-length // BLOCK) * BLOCK
    if padded != length:
        widths = ((0, 0), (0, padded - length), (0, 0), (0, 0))
        query, key, value = (jnp.pad(x, widths) for x in (query, key, value))
        # the padding segment: never visible to a real query
        segments = jnp.pad(segments, ((0, 0), (0, padded - length)), constant_values=padding_segment)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        out = _single_device_splash(query, key, value, segments, window, interpret)
    else:
        rules = sharding.LOGICAL_AXIS_RULES if rules is None else rules
        spec = nn.logical_to_mesh_axes(("batch", None, "heads", None), rules)
        rows = PartitionSpec(spec[0], None)
        out = jax.shard_map(
            lambda q, k, v, m: _single_device_splash(q, k, v, m, window, interpret),
            mesh=mesh,
            in_specs=(spec, spec, spec, rows),
            out_specs=spec,
            check_vma=False,  # a Pallas call's outputs carry no varying-axes annotation
        )(query, key, value, segments)
    return out[:, :length]
