"""Local (sliding-window) attention: the dense masks, splash with a window, and the cuDNN path's arguments.

The reference is `jax.nn.dot_product_attention` (XLA) with a dense boolean mask built here by a plain numpy loop
from the definition (transformers' `ModernBertModel._update_attention_mask`: query i sees key j where
|i - j| <= window // 2 and j is a real token), independent of the code under test. Only real query rows are
compared: a padding query's output is never used, and the losses below give it no gradient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models import attention
from bert_jax.models.configs import BertConfig, ConfigError
from tests.conftest import REPO_ROOT

WINDOW = 128


def _loop_mask(lengths, length, window):
    """[B, 1, T, T] bool by the definition, one entry at a time."""
    mask = np.zeros((len(lengths), 1, length, length), bool)
    for b, real in enumerate(lengths):
        for i in range(length):
            for j in range(length):
                mask[b, 0, i, j] = j < real and (window is None or abs(i - j) <= window // 2)
    return mask


def _inputs(lengths, length, heads=3, head_dim=64, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(len(lengths), length, heads, head_dim)).astype(np.float32)) for _ in "qkv")
    keep = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    return q, k, v, keep


def _xla(mask):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask), implementation="xla")


def _real_rows_loss(fn, keep):
    weights = jnp.asarray(keep, jnp.float32)[:, :, None, None]
    return lambda q, k, v: jnp.sum((fn(q, k, v) * weights) ** 2)


def _grads(fn, keep, q, k, v):
    return jax.jit(jax.grad(_real_rows_loss(fn, keep), argnums=(0, 1, 2)))(q, k, v)


def _relative(ours, reference):
    """The largest difference, over the reference's largest magnitude."""
    return float(np.abs(np.asarray(ours) - np.asarray(reference)).max()) / float(np.abs(np.asarray(reference)).max())


@pytest.mark.parametrize("window", [None, 1, 2, 7, 8, 128])
def test_the_dense_masks_match_a_loop_over_the_definition(window):
    lengths, length = (19, 11, 1, 0), 19
    keep = jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])
    expected = _loop_mask(lengths, length, window)
    got = np.asarray(attention.attention_mask(keep, window))
    if window is None:
        assert got.shape == (4, 1, 1, length)  # the key-padding mask alone, broadcast over queries
        got = np.broadcast_to(got, expected.shape)
    else:
        assert got.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(attention.local_window_mask(length, window)), expected[0, 0])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("window", [0, -4, 3.0, True])
def test_a_window_that_is_not_a_positive_integer_is_refused(window):
    with pytest.raises(ValueError, match="positive integer"):
        attention.local_window_mask(8, window)


# 320 tokens (the kernel pads them to 384: three blocks of 128); rows of 320, 200 (not a block multiple) and 50
# (shorter than the window) real tokens
LENGTHS, LENGTH = (320, 200, 50), 320


@pytest.fixture(scope="module")
def windowed_splash():
    """Splash (interpreted) with window 128, forward and gradients, and the inputs."""
    q, k, v, keep = _inputs(LENGTHS, LENGTH)
    splash = jax.jit(
        lambda q, k, v: attention.splash_attention(q, k, v, jnp.asarray(keep), window=WINDOW, interpret=True)
    )
    return types.SimpleNamespace(
        q=q, k=k, v=v, keep=keep, out=np.asarray(splash(q, k, v)), grads=_grads(splash, keep, q, k, v)
    )


def test_windowed_splash_equals_xla_with_the_local_mask_forward_and_gradients(windowed_splash):
    s = windowed_splash
    mask = _loop_mask(LENGTHS, LENGTH, WINDOW)
    reference = np.asarray(_xla(mask)(s.q, s.k, s.v))
    assert s.out.shape == reference.shape
    assert _relative(s.out[s.keep], reference[s.keep]) <= 1e-5
    expected = _grads(_xla(mask), s.keep, s.q, s.k, s.v)
    for name, ours, reference_grad in zip("qkv", s.grads, expected, strict=True):
        assert _relative(ours, reference_grad) <= 1e-5, name
    # padded keys get no gradient, as with XLA's mask
    assert float(jnp.abs(s.grads[1][~s.keep]).max()) == 0.0 and float(jnp.abs(s.grads[2][~s.keep]).max()) == 0.0


@pytest.mark.parametrize("wrong_window", [WINDOW - 2, WINDOW + 2, None])
def test_the_comparison_fails_against_a_wrong_mask(windowed_splash, wrong_window):
    """The check above can fail: a band one position narrower or wider on each side, or global attention."""
    s = windowed_splash
    wrong = _loop_mask(LENGTHS, LENGTH, wrong_window)
    reference = np.asarray(_xla(wrong)(s.q, s.k, s.v))
    assert _relative(s.out[s.keep], reference[s.keep]) > 1e-2
    expected = _grads(_xla(wrong), s.keep, s.q, s.k, s.v)
    assert max(_relative(ours, e) for ours, e in zip(s.grads, expected, strict=True)) > 1e-2


def test_the_kernel_visits_only_the_blocks_of_the_band():
    """At T=1024 (8 blocks of 128) and window 128, each query block's grid has 3 key blocks, not 8."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels

    kernel = kernels.make_splash_mha(attention._kernel_mask(1024, 2, WINDOW), head_shards=1, q_seq_shards=1)
    blocks = np.asarray(kernel.fwd_mask_info.block_mask)  # [heads (deduplicated), query blocks, visited key blocks]
    assert blocks.shape[1:] == (8, 3)
    full = kernels.make_splash_mha(attention._kernel_mask(1024, 2, None), head_shards=1, q_seq_shards=1)
    assert np.asarray(full.fwd_mask_info.block_mask).shape[1:] == (8, 8)


def test_cudnn_arguments_are_lengths_and_for_local_layers_the_band():
    keep = jnp.asarray(np.arange(10)[None] < np.array([[10], [6], [1]]))
    glob = attention.cudnn_arguments(keep, None)
    assert glob["mask"] is None
    for name in ("query_seq_lengths", "key_value_seq_lengths"):
        assert glob[name].dtype == jnp.int32 and glob[name].tolist() == [10, 6, 1]
    local = attention.cudnn_arguments(keep, 4)
    assert local["mask"].shape == (1, 1, 10, 10)  # one band for every row and head: no [B, ...] mask
    np.testing.assert_array_equal(np.asarray(local["mask"][0, 0]), _loop_mask([10], 10, 4)[0, 0])
    assert local["key_value_seq_lengths"].tolist() == [10, 6, 1]


@pytest.mark.parametrize("window", [None, 8])
def test_cudnn_arguments_mean_the_dense_mask(window):
    """XLA's implementation takes the same arguments (sequence lengths, mask): at real queries they give what the
    dense mask gives, which is what cuDNN is handed."""
    lengths, length = (32, 20, 5), 32
    q, k, v, keep = _inputs(lengths, length, heads=2, head_dim=16)
    arguments = attention.cudnn_arguments(jnp.asarray(keep), window)
    ours = np.asarray(jax.nn.dot_product_attention(q, k, v, implementation="xla", **arguments))
    reference = np.asarray(_xla(_loop_mask(lengths, length, window))(q, k, v))
    assert _relative(ours[keep], reference[keep]) <= 1e-6


def test_cudnn_attention_calls_cudnn_with_those_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *args, **kwargs: calls.append((args, kwargs)))
    q, k, v, keep = _inputs((16, 9), 16, heads=2, head_dim=8)
    attention.cudnn_attention(q, k, v, jnp.asarray(keep), window=4)
    ((args, kwargs),) = calls
    assert args == (q, k, v) and kwargs["implementation"] == "cudnn"
    assert kwargs["key_value_seq_lengths"].tolist() == [16, 9] and kwargs["mask"].shape == (1, 1, 16, 16)


def test_cudnn_needs_attention_dropout_off_and_half_precision():
    with pytest.raises(ConfigError, match=r"attention_kernel='cudnn'.*attention_probs_dropout_prob=0\.0"):
        BertConfig(attention_kernel="cudnn", dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"attention_kernel='cudnn' has no float32 kernel: set dtype='bfloat16'"):
        BertConfig(attention_kernel="cudnn", attention_probs_dropout_prob=0.0)
    assert BertConfig(attention_kernel="cudnn", attention_probs_dropout_prob=0.0, dtype="bfloat16").dtype == "bfloat16"


def test_cudnn_off_a_gpu_is_refused_naming_xla():
    with pytest.raises(ConfigError, match=r"^model\.attention_kernel='cudnn' is cuDNN's.* devices are cpu: .*'xla'"):
        attention.check_devices("cudnn", jax.devices())
    with pytest.raises(ConfigError, match="devices are tpu"):
        attention.check_devices("cudnn", [types.SimpleNamespace(platform="tpu")])
    attention.check_devices("cudnn", [types.SimpleNamespace(platform="gpu")] * 2)
    with pytest.raises(ConfigError, match=r"'splash' is a TPU kernel.*devices are gpu"):
        attention.check_devices("splash", [types.SimpleNamespace(platform="gpu")])
    for kernel in ("xla", "splash_interpret"):
        attention.check_devices(kernel, jax.devices())


_SHARDED = r"""
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from bert_jax import sharding
from bert_jax.models import attention
rng = np.random.default_rng(0)
q, k, v = (rng.normal(size=(4, 256, 4, 32)).astype(np.float32) for _ in range(3))
keep = np.arange(256)[None] < np.array([256, 200, 50, 1])[:, None]
window = 128
mask = np.abs(np.arange(256)[:, None] - np.arange(256)[None]) <= window // 2
mask = keep[:, None, None, :] & mask[None, None]
mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
rows = NamedSharding(mesh, P(("data", "fsdp"), None))
weights = jnp.asarray(keep, jnp.float32)[:, :, None, None]
def loss(fn):
    return lambda q, k, v, m: jnp.sum((fn(q, k, v, m) * weights) ** 2)
splash = lambda q, k, v, m: attention.splash_attention(q, k, v, m, window=window, interpret=True)
fn = jax.jit(sharding.traced_in_mesh(jax.value_and_grad(loss(splash), argnums=(0, 1, 2)), mesh))
args = [jax.device_put(x, heads) for x in (q, k, v)] + [jax.device_put(keep, rows)]
lowered = fn.lower(*args).as_text()
(_, sharded_grads) = fn(*args)
sharded = jax.jit(sharding.traced_in_mesh(splash, mesh))(*args)
xla = lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
reference = np.asarray(xla(q, k, v, keep))
_, reference_grads = jax.value_and_grad(loss(xla), argnums=(0, 1, 2))(q, k, v, keep)
relative = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
print(json.dumps({
    "forward": relative(np.asarray(sharded)[keep], reference[keep]),
    "grads": max(relative(a, b) for a, b in zip(sharded_grads, reference_grads)),
    "manual": "shard_map" in lowered or "sdy.manual_computation" in lowered or "Sharding={manual}" in lowered,
}))
"""


def test_windowed_splash_under_a_mesh_equals_xla():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["manual"], "the kernel is not inside a shard_map"
    assert report["forward"] <= 1e-5 and report["grads"] <= 1e-5, report


def test_windowed_splash_compiles_for_a_tpu_slice():
    """The Mosaic kernel itself (not its interpreter), forward and backward, in a v5e:2x2 program, heads split."""
    pytest.importorskip("libtpu", reason="libtpu is in the test extra (pip install -e '.[test]')")
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from bert_jax import sharding
    from bert_jax.compile import tpu_topology

    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, tensor=2), tpu_topology.parse_topology("v5e:2x2").devices())
    heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    rows = NamedSharding(mesh, P(("data", "fsdp"), None))
    qkv = jax.ShapeDtypeStruct((4, 1024, 4, 64), jnp.bfloat16, sharding=heads)
    keep = jax.ShapeDtypeStruct((4, 1024), jnp.bool_, sharding=rows)

    def loss(q, k, v, keep):
        out = attention.splash_attention(q, k, v, keep, window=WINDOW)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    step = jax.jit(sharding.traced_in_mesh(jax.value_and_grad(loss, argnums=(0, 1, 2)), mesh))
    compiled = step.lower(qkv, qkv, qkv, keep).compile()
    # the forward kernel and the backward's (dq, dkv) kernels
    assert compiled.as_text().count("tpu_custom_call") >= 2


def test_bert_with_cudnn_hands_the_padding_to_cudnn_attention(monkeypatch):
    """The model's "cudnn" branch (cuDNN itself cannot run here): stand in XLA's implementation with the same
    arguments, and the model equals the model with "xla" attention at real tokens."""
    from bert_jax.models.bert import BertModel

    calls = []

    def stand_in(query, key, value, keep, *, window=None, document_ids=None):
        assert document_ids is None  # unpacked rows here
        calls.append(keep)
        arguments = attention.cudnn_arguments(keep, window)
        return jax.nn.dot_product_attention(query, key, value, implementation="xla", **arguments)

    monkeypatch.setattr(attention, "cudnn_attention", stand_in)
    config = BertConfig(
        vocab_size=99,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        attention_probs_dropout_prob=0.0,
        dtype="bfloat16",
    )
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 99, (2, 40)), jnp.int32)
    mask = jnp.asarray(np.arange(40)[None] < np.array([[40], [23]]), jnp.int32)
    params = BertModel(config).init(jax.random.key(0), ids, mask)["params"]
    outputs = {
        kernel: np.asarray(
            BertModel(config.replace(attention_kernel=kernel)).apply({"params": params}, ids, mask).sequence_output,
            np.float32,
        )
        for kernel in ("xla", "cudnn")
    }
    assert len(calls) == 2 and calls[0].shape == (2, 40) and calls[0].dtype == jnp.bool_
    real = np.asarray(mask, bool)
    assert _relative(outputs["cudnn"][real], outputs["xla"][real]) <= 1e-3  # 0.0 measured; 1e-2 if padding is ignored
