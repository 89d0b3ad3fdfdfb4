"""The fast dropout: threefry's published bits, the requested rate, independent decisions, exact scaling,
flax's behaviour wherever it falls back, and the same mask on a sharded batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models import dropout


def test_uniforms_are_threefry_known_answer_split_in_16_bit_halves():
    # Random123 known-answer test: threefry2x32_20, key (0, 0), counter (0, 0) -> 0x6b200159 0x99ba4efe.
    uniforms = dropout.threefry_uniforms16((jnp.uint32(0), jnp.uint32(0)), (4,))
    assert [int(u) for u in uniforms] == [0x0159, 0x6B20, 0x4EFE, 0x99BA]


def test_quantized_threshold_hand_computed():
    assert dropout.quantized_drop_threshold(0.1) == 6554  # round(6553.6)
    assert dropout.quantized_drop_threshold(0.5) == 32768
    assert dropout.quantized_drop_threshold(0.01) == 655  # 0.0099945: 0.055% off, inside the 0.1% tolerance
    assert dropout.quantized_drop_threshold(0.001) is None  # 66/65536 = 0.001007: 0.7% off -> exact bernoulli
    assert dropout.quantized_drop_threshold(0.0) is None
    assert dropout.quantized_drop_threshold(1.0) is None


def test_mask_rate_lanes_and_independence():
    keep, scale = dropout.keep_mask(jax.random.key(3), (64, 128, 768), 0.1)
    keep = np.asarray(keep)
    assert keep.dtype == np.bool_
    assert scale == pytest.approx(65536 / (65536 - 6554), rel=1e-12)
    dropped = ~keep
    n = dropped.size
    sigma = np.sqrt(0.1 * 0.9 / n)
    assert abs(dropped.mean() - 6554 / 65536) < 5 * sigma
    # Each of the four 16-bit lanes of a block drops at the same rate ...
    lanes = dropped.reshape(-1, 4)
    for lane in range(4):
        assert abs(lanes[:, lane].mean() - 0.1) < 5 * np.sqrt(0.09 / lanes.shape[0])
    # ... and neighbours (inside a block and across blocks) are independent: P(both dropped) = 0.01.
    flat = dropped.reshape(-1)
    for offset in (1, 2, 3, 4, 768):
        both = np.mean(flat[:-offset] & flat[offset:])
        assert abs(both - 0.01) < 5 * np.sqrt(0.01 * 0.99 / flat.size), offset


def test_different_keys_give_different_masks_same_key_same_mask():
    a, _ = dropout.keep_mask(jax.random.key(0), (8, 256), 0.1)
    b, _ = dropout.keep_mask(jax.random.key(0), (8, 256), 0.1)
    c, _ = dropout.keep_mask(jax.random.key(1), (8, 256), 0.1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _apply(module: nn.Module, x: jax.Array, rng: jax.Array, deterministic: bool = False) -> jax.Array:
    return module.apply({}, x, deterministic=deterministic, rngs={"dropout": rng})


def test_module_scales_kept_values_exactly_and_preserves_the_mean():
    x = jax.random.normal(jax.random.key(5), (32, 128, 256), jnp.float32)
    out = np.asarray(_apply(dropout.Dropout(0.1), x, jax.random.key(9)))
    kept = out != 0
    scale = np.float32(65536 / (65536 - 6554))
    np.testing.assert_array_equal(out[kept], np.asarray(x)[kept] * scale)
    ones = np.asarray(_apply(dropout.Dropout(0.1), jnp.ones((64, 128, 768)), jax.random.key(2)))
    assert abs(ones.mean() - 1.0) < 5 * np.sqrt(0.1 * 0.9 / ones.size) * scale


def test_gradient_is_mask_times_scale():
    x = jnp.ones((4, 64), jnp.float32)
    rng = jax.random.key(4)
    grad = jax.grad(lambda v: _apply(dropout.Dropout(0.25), v, rng).sum())(x)
    out = _apply(dropout.Dropout(0.25), x, rng)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(out))  # d(sum)/dx = keep * scale = out / x
    assert set(np.unique(np.asarray(grad)).tolist()) == {0.0, np.float32(65536 / (65536 - 16384))}


def test_identity_when_deterministic_or_rate_zero_and_zeros_at_rate_one():
    x = jax.random.normal(jax.random.key(1), (4, 8))
    np.testing.assert_array_equal(_apply(dropout.Dropout(0.1), x, jax.random.key(0), deterministic=True), x)
    np.testing.assert_array_equal(_apply(dropout.Dropout(0.0), x, jax.random.key(0)), x)
    np.testing.assert_array_equal(_apply(dropout.Dropout(1.0), x, jax.random.key(0)), np.zeros((4, 8)))


@pytest.mark.parametrize(
    ("shape", "rate", "rng"),
    [
        ((8, 30), 0.1, jax.random.key(7)),  # last axis not a multiple of 4
        ((8, 32), 0.001, jax.random.key(7)),  # rate off the 16-bit grid
        ((8, 32), 0.1, jax.random.key(7, impl="rbg")),  # not a threefry key
    ],
)
def test_falls_back_to_flax_dropout_mask(shape, rate, rng):
    x = jnp.ones(shape, jnp.float32)
    ours = np.asarray(_apply(dropout.Dropout(rate), x, rng))
    flax_out = np.asarray(nn.Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": rng}))
    np.testing.assert_array_equal(ours != 0, flax_out != 0)
    np.testing.assert_allclose(ours, flax_out, rtol=1e-6)


def test_raw_uint32_key_uses_the_fast_path_like_the_typed_key():
    raw, _ = dropout.keep_mask(jax.random.PRNGKey(11), (4, 64), 0.1)
    typed, _ = dropout.keep_mask(jax.random.key(11), (4, 64), 0.1)
    np.testing.assert_array_equal(raw, typed)
    uniforms = dropout.threefry_uniforms16(tuple(jax.random.PRNGKey(11)), (4, 64))
    np.testing.assert_array_equal(raw, np.asarray(uniforms) >= 6554)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from bert_jax.models import dropout

    def mask(key):
        return dropout.keep_mask(key, (16, 128, 64), 0.1)[0]

    key = jax.random.key(21)
    single = np.asarray(jax.jit(mask)(key))
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None, "model"))
    compiled = jax.jit(mask, out_shardings=sharding).lower(key).compile()
    sharded = compiled(key)
    assert sharded.sharding == sharding
    assert all(s.data.shape == (4, 128, 32) for s in sharded.addressable_shards)
    hlo = compiled.as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo, "mask generation is not partitioned"
    np.testing.assert_array_equal(np.asarray(sharded), single)
    print("OK")
    """
)


def test_mask_is_identical_and_partitioned_on_a_sharded_batch():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "OK"
