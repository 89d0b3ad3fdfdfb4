"""Dropout whose keep-mask costs a quarter of the random numbers `jax.random.bernoulli` draws.

Why: at BERT-base size a training step draws ~39M dropout decisions (attention probabilities, the two
residual branches of 12 layers, the embeddings), and XLA recomputes the mask in the backward pass. With
`jax.random.bernoulli` each decision costs one full threefry-2x32 block (64 random bits, of which the
partitionable threefry keeps 32 and then turns them into one float); on a CPU that was ~1 s of a ~7 s step.

Here one threefry-2x32 block gives four decisions: its two 32-bit output words are split into four
16-bit uniforms, and an element is dropped when its uniform is below `round(rate * 65536)`. The
random bits are threefry's own (the same primitive and key as `jax.random`), the counters are built from
broadcasted iotas so that the mask partitions like any elementwise op over a sharded batch, and the kept
values are scaled by the exact inverse of the quantized keep probability, so `E[dropout(x)] == x`.

The drop rate is thereby a multiple of 1/65536 (0.1 becomes 0.1000061). When that differs from the
requested rate by more than 0.1% of it (rates below ~0.015 that do not sit on the grid), or the last
axis is not a multiple of 4, or the key is not a threefry key, the mask comes from
`jax.random.bernoulli` instead, exactly as `flax.linen.Dropout` makes it.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p

Array = jax.Array

UNIFORM_LEVELS = 1 << 16
"""Each decision compares a 16-bit uniform against the quantized drop threshold."""

MAX_RATE_DEVIATION = 1e-3
"""Largest relative difference between the quantized and the requested drop rate the fast path accepts."""

DECISIONS_PER_BLOCK = 4
"""One threefry-2x32 block = two 32-bit words = four 16-bit uniforms."""


def quantized_drop_threshold(rate: float) -> int | None:
    """The 16-bit threshold for `rate`, or None when the grid cannot represent it within the tolerance."""
    threshold = round(rate * UNIFORM_LEVELS)
    if not 0 < threshold < UNIFORM_LEVELS:
        return None
    if abs(threshold / UNIFORM_LEVELS - rate) > MAX_RATE_DEVIATION * rate:
        return None
    return threshold


def _threefry_key_words(key: Array) -> tuple[Array, Array] | None:
    """The two uint32 words of a threefry key (typed or raw), or None for any other PRNG implementation."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.shape != (2,):
            return None
        key = jax.random.wrap_key_data(key)
    if str(jax.random.key_impl(key)) != "threefry2x32" or key.shape != ():
        return None
    words = jax.random.key_data(key)
    return words[0], words[1]


def _block_counters(shape: tuple[int, ...]) -> Array:
    """Row-major flat index of every position of `shape`, as uint32, built from broadcasted iotas."""
    counters = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        counters = counters + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return counters


def threefry_uniforms16(key_words: tuple[Array, Array], shape: tuple[int, ...]) -> Array:
    """16-bit uniforms (uint32 values in [0, 65536)) for `shape`, four per threefry-2x32 block.

    Block `i` (row-major over `shape` with the last axis divided by 4) is threefry-2x32 of the key's two
    words on the counter pair (0, i); its output words w0, w1 give the uniforms of positions 4i..4i+3 as
    w0's low half, w0's high half, w1's low half, w1's high half.
    """
    block_shape = (*shape[:-1], shape[-1] // DECISIONS_PER_BLOCK)
    counters = _block_counters(block_shape)
    word0, word1 = threefry2x32_p.bind(key_words[0], key_words[1], jnp.zeros_like(counters), counters)
    low16 = np.uint32(UNIFORM_LEVELS - 1)
    halves = [word0 & low16, word0 >> 16, word1 & low16, word1 >> 16]
    return jnp.stack(halves, axis=-1).reshape(shape)


def keep_mask(key: Array, shape: tuple[int, ...], rate: float) -> tuple[Array, float]:
    """A boolean keep-mask of `shape` dropping with probability ~`rate`, and the scale for kept values.

    The scale is 1 / P(keep) of the mask actually drawn (the quantized one on the fast path).
    """
    shape = tuple(shape)
    threshold = quantized_drop_threshold(rate)
    words = _threefry_key_words(key)
    fast = (
        threshold is not None
        and words is not None
        and len(shape) > 0
        and shape[-1] % DECISIONS_PER_BLOCK == 0
        and math.prod(shape) // DECISIONS_PER_BLOCK < 2**32
    )
    if not fast:
        keep_prob = 1.0 - rate
        return jax.random.bernoulli(key, p=keep_prob, shape=shape), 1.0 / keep_prob
    keep = threefry_uniforms16(words, shape) >= np.uint32(threshold)
    return keep, UNIFORM_LEVELS / (UNIFORM_LEVELS - threshold)


class Dropout(nn.Module):
    """Drop-in for `flax.linen.Dropout` (same rng collection, same identity when deterministic or rate 0).

    Uses `keep_mask`; see the module docstring for how the mask is drawn.
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep, scale = keep_mask(self.make_rng(self.rng_collection), inputs.shape, self.rate)
        return lax.select(keep, inputs * jnp.asarray(scale, inputs.dtype), jnp.zeros_like(inputs))
