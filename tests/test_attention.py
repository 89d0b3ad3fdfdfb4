"""The splash attention kernel (Pallas, run by its interpreter here) against XLA's attention, with padding.

The reference is `jax.nn.dot_product_attention` with BERT's key-padding mask (what `attention_kernel="xla"`
runs, itself checked against transformers in test_model.py). Only real query rows are compared: a padding
query's output is never used, and the losses below give it no gradient, as BERT's own losses do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.jobs import config as job_config
from bert_jax.jobs import pretrain_plan
from bert_jax.models import attention
from bert_jax.models.bert import BertForPreTraining, init_params
from bert_jax.models.configs import BertConfig, ConfigError
from tests.conftest import REPO_ROOT


def _qkv_and_keep(batch=3, length=80, heads=2, head_dim=32, lengths=(80, 50, 1), seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)) for _ in range(3))
    keep = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    return q, k, v, keep


def _xla(q, k, v, keep):
    return jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(keep)[:, None, None, :], implementation="xla")


def _real_rows_loss(fn, keep):
    weights = jnp.asarray(keep, jnp.float32)[:, :, None, None]
    return lambda q, k, v: jnp.sum((fn(q, k, v) * weights) ** 2)


def test_splash_equals_xla_attention_under_padding():
    # 80 tokens (padded to the kernel's 128 inside), rows of 80, 50 and 1 real tokens
    q, k, v, keep = _qkv_and_keep()
    splash = jax.jit(lambda q, k, v: attention.splash_attention(q, k, v, jnp.asarray(keep), interpret=True))
    ours, reference = np.asarray(splash(q, k, v)), np.asarray(_xla(q, k, v, keep))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours[keep], reference[keep], atol=2e-6)
    grads = jax.grad(_real_rows_loss(splash, keep), argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(_real_rows_loss(lambda q, k, v: _xla(q, k, v, keep), keep), argnums=(0, 1, 2))(q, k, v)
    for name, ours_grad, reference_grad in zip("qkv", grads, expected, strict=True):
        scale = float(jnp.abs(reference_grad).max())
        assert float(jnp.abs(ours_grad - reference_grad).max()) <= 1e-5 * scale, name
    # padded keys get no gradient, as with XLA's mask
    assert float(jnp.abs(grads[1][~keep]).max()) == 0.0 and float(jnp.abs(grads[2][~keep]).max()) == 0.0


def _tiny(kernel: str) -> BertConfig:
    return BertConfig(
        vocab_size=99,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        attention_probs_dropout_prob=0.0,
        attention_kernel=kernel,
    )


def test_the_model_with_splash_equals_the_model_with_xla():
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(1, 99, (2, 40)), jnp.int32)
    mask = jnp.asarray(np.arange(40)[None] < np.array([[40], [23]]), jnp.int32)
    positions = jnp.asarray([[1, 5, 9], [2, 3, 22]], jnp.int32)
    params = init_params(BertForPreTraining(_tiny("xla")), jax.random.key(0))

    def loss(kernel):
        model = BertForPreTraining(_tiny(kernel))

        def fn(params):
            logits, nsp = model.apply({"params": params}, ids, mask, None, positions, deterministic=True)
            return jnp.sum(jax.nn.log_softmax(logits)[..., 7]) + jnp.sum(nsp)

        return jax.jit(jax.value_and_grad(fn))(params)

    (xla_loss, xla_grads), (splash_loss, splash_grads) = loss("xla"), loss("splash_interpret")
    assert float(splash_loss) == pytest.approx(float(xla_loss), rel=1e-5)
    differences = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), splash_grads, xla_grads)
    largest = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(xla_grads))
    assert max(jax.tree.leaves(differences)) <= 1e-4 * largest


_SHARDED = r"""
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from bert_jax import sharding
from bert_jax.models import attention
rng = np.random.default_rng(0)
q, k, v = (rng.normal(size=(4, 128, 4, 32)).astype(np.float32) for _ in range(3))
keep = np.arange(128)[None] < np.array([128, 100, 64, 1])[:, None]
mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
rows = NamedSharding(mesh, P(("data", "fsdp"), None))
fn = jax.jit(sharding.traced_in_mesh(lambda q, k, v, m: attention.splash_attention(q, k, v, m, interpret=True), mesh))
args = [jax.device_put(x, heads) for x in (q, k, v)] + [jax.device_put(keep, rows)]
lowered = fn.lower(*args).as_text()
sharded = np.asarray(fn(*args))
single = np.asarray(jax.jit(lambda q, k, v, m: attention.splash_attention(q, k, v, m, interpret=True))(q, k, v, keep))
print(json.dumps({"max_diff": float(np.abs(sharded - single)[keep].max()), "manual": "shard_map" in lowered
                  or "sdy.manual_computation" in lowered or "Sharding={manual}" in lowered}))
"""


def test_splash_under_a_mesh_runs_per_device_and_equals_one_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["manual"], "the kernel is not inside a shard_map"
    assert report["max_diff"] < 1e-6


def test_splash_needs_attention_dropout_off():
    with pytest.raises(ConfigError, match=r"attention_probs_dropout_prob=0\.0"):
        BertConfig(attention_kernel="splash")  # BERT's default attention dropout is 0.1
    with pytest.raises(ConfigError, match="use one of xla, splash, splash_interpret"):
        BertConfig(attention_kernel="flash", attention_probs_dropout_prob=0.0)


def test_splash_on_devices_that_are_not_tpus_is_refused_before_compiling():
    import runpy

    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    config.model.attention_kernel = "splash"
    config.model.attention_probs_dropout_prob = 0.0
    with pytest.raises(ValueError, match=r"TPU kernel and this job.s devices are cpu.*attention_kernel=.xla."):
        pretrain_plan.make_plan(job_config.parse(config))


def test_weights_trained_with_splash_load_with_xla_attention_elsewhere(tmp_path):
    """A warm start (fine-tuning, init_from) takes the weights, not the writer's kernel: a TPU kernel that forbids
    attention dropout would otherwise follow them onto a GPU or into a config with dropout."""
    from bert_jax.models import convert
    from bert_jax.training import warm_start

    config = _tiny("splash")
    convert.to_native(config, init_params(BertForPreTraining(config), jax.random.key(0)), tmp_path / "export")
    source = warm_start.read_source(str(tmp_path / "export"))
    assert source.config.attention_kernel == "xla"
    assert source.config.replace(attention_probs_dropout_prob=0.1).attention_probs_dropout_prob == 0.1
