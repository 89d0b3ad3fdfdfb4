"""Optimizers, schedule, decay mask and gradient accumulation against independent references.

References: hand-computed schedule values and parameter counts, torch.optim.AdamW, and NumPy transcriptions of
the original BERT `AdamWeightDecayOptimizer` update and of the LAMB paper's algorithm (You et al. 2019).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bert_jax.models.bert import BertForPreTraining, init_params
from bert_jax.models.configs import ConfigError, named_config
from bert_jax.training.optim import (
    OptimizerConfig,
    accumulate_gradients,
    learning_rate_schedule,
    make_optimizer,
    scale_by_adam,
    weight_decay_mask,
)

# ---------------------------------------------------------------------------------------------------------------
# Helpers: a small named parameter set with hand-labelled decay, flattening, references.

# path -> (shape, decayed?). Labels are written by hand (the original excludes LayerNorm and bias parameters).
PARAM_SPECS = {
    "bert/embeddings/word_embeddings/embedding": ((7, 4), True),
    "bert/embeddings/LayerNorm/scale": ((4,), False),
    "bert/embeddings/LayerNorm/bias": ((4,), False),
    "bert/encoder/layer_0/attention/self/query/kernel": ((4, 2, 2), True),
    "bert/encoder/layer_0/attention/self/query/bias": ((2, 2), False),
    "cls/seq_relationship/kernel": ((4, 2), True),
    "cls/predictions/bias": ((7,), False),
    "zero_init/kernel": ((3, 3), True),  # ||w|| = 0: LAMB's trust ratio must fall back to 1
}
DECAYED = {path for path, (_, decayed) in PARAM_SPECS.items() if decayed}

PEAK_LR = 0.1
WARMUP, TOTAL = 2, 8


def original_lr(step: int) -> float:
    """The original BERT schedule for PEAK_LR, WARMUP, TOTAL, written out: warmup, else decay over [0, TOTAL]."""
    if step < WARMUP:
        return PEAK_LR * step / WARMUP
    return PEAK_LR * (1.0 - min(step, TOTAL) / TOTAL)


def comparison_config(**overrides) -> OptimizerConfig:
    fields = dict(learning_rate=PEAK_LR, warmup_steps=WARMUP, total_steps=TOTAL)
    return OptimizerConfig(**{**fields, **overrides})


def nest(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b": x} -> {"a": {"b": jnp.asarray(x, float32)}}."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = jnp.asarray(value, jnp.float32)
    return tree


def flatten(tree) -> dict[str, np.ndarray]:
    """The inverse of `nest` (values as float64 NumPy arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(key.key) for key in path): np.asarray(leaf, np.float64) for path, leaf in leaves}


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {}
    for path, (shape, _) in PARAM_SPECS.items():
        if path.startswith("zero_init"):
            params[path] = np.zeros(shape)
        elif path.endswith("scale"):
            params[path] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            params[path] = 0.5 * rng.standard_normal(shape)
    return {path: value.astype(np.float32).astype(np.float64) for path, value in params.items()}


def gradient_sequence(steps: int = 6) -> list[dict[str, np.ndarray]]:
    """Gradients whose global norms alternate far above and below the clip norm 1.0."""
    rng = np.random.default_rng(1)
    sequence = []
    for step in range(steps):
        scale = 2.0 if step % 2 == 0 else 0.02
        grads = {path: scale * rng.standard_normal(shape) for path, (shape, _) in PARAM_SPECS.items()}
        sequence.append({path: g.astype(np.float32).astype(np.float64) for path, g in grads.items()})
    return sequence


def clip_numpy(grads: dict[str, np.ndarray], clip_norm: float) -> dict[str, np.ndarray]:
    """tf.clip_by_global_norm: t * clip_norm / max(global_norm, clip_norm)."""
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
    return {path: g * clip_norm / max(norm, clip_norm) for path, g in grads.items()}


@functools.cache
def run_optax(config: OptimizerConfig) -> dict[str, np.ndarray]:
    """`make_optimizer(config, params)` (mask derived from the params) over `gradient_sequence()` from
    `initial_params()`; cached per config, since compiling is most of a test's time."""
    tree = nest(initial_params())
    optimizer = make_optimizer(config, tree)

    @jax.jit
    def run(tree, grads_seq):
        def step(carry, grads):
            tree, state = carry
            updates, state = optimizer.update(grads, state, tree)
            return (optax.apply_updates(tree, updates), state), None

        (tree, _), _ = jax.lax.scan(step, (tree, optimizer.init(tree)), grads_seq)
        return tree

    sequence = gradient_sequence()
    stacked = nest({path: np.stack([grads[path] for grads in sequence]) for path in PARAM_SPECS})
    return flatten(run(tree, stacked))


def max_relative_error(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """Largest over tensors of max|actual - expected| / max|expected|."""
    assert actual.keys() == expected.keys()
    return max(float(np.max(np.abs(actual[k] - expected[k])) / np.max(np.abs(expected[k]))) for k in expected)


# ---------------------------------------------------------------------------------------------------------------
# Schedule.


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # Original: warmup to 1e-4 over 100 steps; linear decay over [0, 1000] after it.
        (
            {},
            {0: 0.0, 50: 5e-5, 99: 9.9e-5, 100: 9e-5, 550: 4.5e-5, 999: 1e-7, 1000: 0.0, 1500: 0.0},
        ),
        # Hugging Face style: the decay starts from the peak at the end of warmup.
        (
            {"decay_from_warmup_end": True},
            {0: 0.0, 50: 5e-5, 100: 1e-4, 550: 5e-5, 1000: 0.0, 1500: 0.0},
        ),
        # Polynomial (power 2) down to an end value: (1e-4 - 1e-5) * (1 - 550/1000)^2 + 1e-5 = 2.8225e-5.
        (
            {"schedule": "polynomial", "power": 2.0, "end_learning_rate": 1e-5},
            {0: 0.0, 50: 5e-5, 100: 8.29e-5, 550: 2.8225e-5, 1000: 1e-5, 1500: 1e-5},
        ),
        # No warmup: the decay starts at the peak at step 0.
        ({"warmup_steps": 0}, {0: 1e-4, 250: 7.5e-5, 1000: 0.0, 2000: 0.0}),
    ],
)
def test_schedule_values(overrides, expected):
    config = OptimizerConfig(**{"learning_rate": 1e-4, "warmup_steps": 100, "total_steps": 1000, **overrides})
    schedule = jax.jit(learning_rate_schedule(config))
    for step, value in expected.items():
        np.testing.assert_allclose(float(schedule(jnp.int32(step))), value, rtol=1e-5, atol=1e-12, err_msg=f"{step=}")


def test_schedule_when_warmup_fills_all_steps():
    config = OptimizerConfig(learning_rate=1.0, warmup_steps=4, total_steps=4, decay_from_warmup_end=True)
    schedule = learning_rate_schedule(config)
    assert [float(schedule(s)) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# Decay mask.


def test_decay_mask_on_tiny_bert():
    config = named_config("tiny")  # L=2, H=128, I=512, V=30522, P=512, 2 token types
    params = jax.eval_shape(lambda: init_params(BertForPreTraining(config), jax.random.key(0)))
    mask = weight_decay_mask(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    decayed_count, layer_norm_leaves = 0, 0
    for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
        names = [key.key for key in path]
        if "LayerNorm" in names:
            layer_norm_leaves += 1
            assert names[-1] in ("scale", "bias") and decayed is False, names
        elif names[-1] == "bias":
            assert decayed is False, names
        else:
            assert names[-1] in ("kernel", "embedding") and decayed is True, names
            decayed_count += math.prod(_shape_at(params, names))
    # LayerNorms: embeddings, 2 per layer, the MLM transform -> 6 modules, scale and bias each.
    assert layer_norm_leaves == 12
    h, i, v, p, layers = 128, 512, 30522, 512, 2
    embeddings = v * h + p * h + 2 * h
    per_layer = 3 * h * h + h * h + h * i + i * h  # q, k, v, attention output, intermediate, output kernels
    heads = h * h + h * h + h * 2  # pooler, MLM transform, NSP kernels (the decoder is tied to the embeddings)
    assert decayed_count == embeddings + layers * per_layer + heads == 4_398_848


def _shape_at(tree, names):
    for name in names:
        tree = tree[name]
    return tree.shape


def test_decay_mask_matches_path_components_of_any_tree():
    params = {
        "LayerNorm_0": {"scale": 1.0, "bias": 2.0},  # Flax's automatic module name
        "final_layer_norm": {"weight": 1.0},  # other spellings of LayerNorm, any leaf name under it
        "layers": [{"kernel": 1.0, "bias": 0.0}],  # sequences too
        "biased_dense": {"kernel": 1.0},  # "bias" must be a whole component, not a substring
        "embedding": 1.0,
    }
    assert weight_decay_mask(params) == {
        "LayerNorm_0": {"scale": False, "bias": False},
        "final_layer_norm": {"weight": False},
        "layers": [{"kernel": True, "bias": False}],
        "biased_dense": {"kernel": True},
        "embedding": True,
    }


# ---------------------------------------------------------------------------------------------------------------
# AdamW against torch, the original optimizer and LAMB against NumPy.


def torch_adamw(params, grads_seq):
    """torch.optim.AdamW (float64) with a no-decay group for biases/LayerNorm and the original schedule."""
    torch = pytest.importorskip("torch")
    tensors = {path: torch.tensor(value, requires_grad=True) for path, value in params.items()}
    groups = [
        {"params": [t for p, t in tensors.items() if p in DECAYED], "weight_decay": 0.01},
        {"params": [t for p, t in tensors.items() if p not in DECAYED], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=PEAK_LR, betas=(0.9, 0.999), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: original_lr(step) / PEAK_LR)
    for grads in grads_seq:
        for path, g in clip_numpy(grads, 1.0).items():
            tensors[path].grad = torch.tensor(g)
        optimizer.step()
        scheduler.step()
    return {path: t.detach().numpy() for path, t in tensors.items()}


def test_adamw_matches_torch():
    params, grads_seq = initial_params(), gradient_sequence()
    expected = torch_adamw(params, grads_seq)
    actual = run_optax(comparison_config())
    assert max_relative_error(actual, expected) < 1e-6
    # The comparison can fail: the decay and the schedule visibly move the parameters.
    assert max_relative_error(params, expected) > 1e-2


def numpy_original_bert_adam(params, grads_seq, wd=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """google-research/bert `AdamWeightDecayOptimizer.apply_gradients` after `tf.clip_by_global_norm(grads, 1.0)`."""
    params = dict(params)
    m = {path: np.zeros_like(p) for path, p in params.items()}
    v = {path: np.zeros_like(p) for path, p in params.items()}
    for step, grads in enumerate(grads_seq):
        for path, g in clip_numpy(grads, 1.0).items():
            m[path] = b1 * m[path] + (1.0 - b1) * g
            v[path] = b2 * v[path] + (1.0 - b2) * g**2
            update = m[path] / (np.sqrt(v[path]) + eps)
            if path in DECAYED:
                update = update + wd * params[path]
            params[path] = params[path] - original_lr(step) * update
    return params


def test_no_bias_correction_matches_original_bert_optimizer():
    params, grads_seq = initial_params(), gradient_sequence()
    expected = numpy_original_bert_adam(params, grads_seq)
    actual = run_optax(comparison_config(bias_correction=False))
    assert max_relative_error(actual, expected) < 1e-6
    corrected = run_optax(comparison_config(bias_correction=True))
    assert max_relative_error(corrected, expected) > 1e-3  # bias correction changes the result


def numpy_lamb(params, grads_seq, bias_correction, wd=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """LAMB (You et al. 2019, Algorithm 2, phi = identity) per tensor; no decay nor trust ratio off DECAYED."""
    params = dict(params)
    m = {path: np.zeros_like(p) for path, p in params.items()}
    v = {path: np.zeros_like(p) for path, p in params.items()}
    for step, grads in enumerate(grads_seq):
        t = step + 1
        for path, g in clip_numpy(grads, 1.0).items():
            m[path] = b1 * m[path] + (1.0 - b1) * g
            v[path] = b2 * v[path] + (1.0 - b2) * g**2
            m_hat, v_hat = (m[path] / (1 - b1**t), v[path] / (1 - b2**t)) if bias_correction else (m[path], v[path])
            update = m_hat / (np.sqrt(v_hat) + eps)
            ratio = 1.0
            if path in DECAYED:
                update = update + wd * params[path]
                w_norm, u_norm = np.linalg.norm(params[path]), np.linalg.norm(update)
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            params[path] = params[path] - original_lr(step) * ratio * update
    return params


@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_matches_paper_algorithm(bias_correction):
    params, grads_seq = initial_params(), gradient_sequence()
    expected = numpy_lamb(params, grads_seq, bias_correction)
    actual = run_optax(comparison_config(name="lamb", bias_correction=bias_correction))
    assert max_relative_error(actual, expected) < 1e-6
    adamw = run_optax(comparison_config(bias_correction=bias_correction))
    assert max_relative_error(adamw, expected) > 1e-2  # the trust ratio matters


@pytest.mark.parametrize("name, mask_form", [("adamw", "params"), ("adamw", "bools"), ("lamb", "none")])
def test_zero_gradient_step_only_decays_masked_params(name, mask_form):
    """With zero gradients the Adam direction is 0, so one step shows the decay (and LAMB's trust ratio) alone."""
    params = nest(initial_params())
    config = OptimizerConfig(name=name, learning_rate=0.1, warmup_steps=0, total_steps=10, weight_decay=0.01)
    mask_arg = {"params": params, "bools": weight_decay_mask(params), "none": None}[mask_form]
    optimizer = make_optimizer(config, mask_arg)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
    new = flatten(optax.apply_updates(params, updates))
    # AdamW: w - lr * wd * w. LAMB: the update wd * w has trust ratio ||w|| / ||wd * w|| = 1 / wd, so w - lr * w.
    factor = 1.0 - 0.1 * 0.01 if name == "adamw" else 1.0 - 0.1
    for path, before in flatten(params).items():
        expected = factor * before if path in DECAYED else before
        np.testing.assert_allclose(new[path], expected, rtol=1e-6, atol=0, err_msg=path)


# ---------------------------------------------------------------------------------------------------------------
# Clipping.


@pytest.mark.parametrize(
    "name, bias_correction, clip, factor",
    [
        ("adamw", True, 1.0, 0.1),  # norm 10 -> norm 1
        ("lamb", False, 1.0, 0.1),
        ("adamw", True, 20.0, 1.0),  # norms below the limit are left alone
        ("adamw", True, None, 1.0),  # no clipping
    ],
)
def test_gradients_are_clipped_to_global_norm_before_adam(name, bias_correction, clip, factor):
    """After one step the first moment is (1 - b1) * g_clipped: a norm-10 gradient arrives with norm 1."""
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    grads = {"dense": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full(2, 4.0)}}  # norm sqrt(4*9 + 2*16)
    grads = jax.tree.map(lambda g: g * 10.0 / math.sqrt(68.0), grads)  # global norm exactly 10
    config = OptimizerConfig(
        name=name, bias_correction=bias_correction, clip_global_norm=clip, warmup_steps=0, total_steps=10
    )
    optimizer = make_optimizer(config, params)
    _, state = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")
    for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mu), strict=True):
        np.testing.assert_allclose(m, 0.1 * factor * np.asarray(g), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Gradient accumulation.


class TinyTagger(nn.Module):
    """A small real Flax model with BERT's ingredients: an embedding lookup, a dense layer, LayerNorm, a head."""

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        x = nn.Embed(50, 16)(ids)
        x = nn.LayerNorm()(jax.nn.gelu(nn.Dense(32)(x)))
        return nn.Dense(50)(x)


def tagging_batch(size: int = 8, length: int = 6) -> dict[str, jax.Array]:
    rng = np.random.default_rng(2)
    return {
        "ids": jnp.asarray(rng.integers(0, 50, (size, length)), jnp.int32),
        "labels": jnp.asarray(rng.integers(0, 50, (size, length)), jnp.int32),
    }


def tagging_loss_and_grad(params, batch, rng):
    """((mean cross-entropy, accuracy), grads): a per-token mean loss, all microbatches the same size."""

    def loss_fn(params):
        logits = TinyTagger().apply({"params": params}, batch["ids"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return jnp.mean(losses), jnp.mean(jnp.argmax(logits, -1) == batch["labels"])

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def grad_relative_error(actual, expected) -> float:
    """Largest over leaves of ||actual - expected|| / ||expected||."""
    errors = jax.tree.map(lambda a, e: np.linalg.norm(np.subtract(a, e)) / np.linalg.norm(e), actual, expected)
    return max(jax.tree.leaves(errors))


@pytest.fixture(scope="module")
def tagger_full_batch():
    """The tagger's params and its loss, accuracy and gradient on the whole batch (the reference)."""
    shapes = jax.eval_shape(TinyTagger().init, jax.random.key(0), tagging_batch()["ids"])["params"]
    rng = np.random.default_rng(4)  # random values of the right shapes, without compiling the init
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
    return params, jax.jit(tagging_loss_and_grad)(params, tagging_batch(), None)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_accumulation_equals_full_batch_gradient(tagger_full_batch, k):
    params, ((full_loss, full_accuracy), full_grads) = tagger_full_batch
    step = jax.jit(lambda p, b, r: accumulate_gradients(tagging_loss_and_grad, p, b, k, r))
    (loss, accuracy), grads = step(params, tagging_batch(), jax.random.key(0))
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    np.testing.assert_allclose(accuracy, full_accuracy, rtol=1e-6)
    assert grad_relative_error(grads, full_grads) < 1e-6


def test_token_weighted_accumulation_with_sum_reduction():
    """Uneven token weights: sum the summed losses and weights, then divide; the naive mean of means is wrong."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((8, 5, 4)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((8, 5, 3)), jnp.float32)
    batch = {"x": x, "y": y, "w": jnp.asarray(_uneven_weights(), jnp.float32)}
    params = {"kernel": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}

    def summed(params, batch):
        """(sum over tokens of weight * squared error, sum of weights)."""
        error = jnp.sum((batch["x"] @ params["kernel"] - batch["y"]) ** 2, -1)
        return jnp.sum(error * batch["w"]), jnp.sum(batch["w"])

    def sum_fn(params, batch, rng):
        return jax.value_and_grad(summed, has_aux=True)(params, batch)

    def mean_fn(params, batch, rng):
        return jax.value_and_grad(lambda p: summed(p, batch)[0] / summed(p, batch)[1])(params)

    @jax.jit
    def run(params, batch):
        (loss_sum, weight), grad_sum = accumulate_gradients(sum_fn, params, batch, 4, None, reduction="sum")
        weighted = (loss_sum / weight, jax.tree.map(lambda g: g / weight, grad_sum))
        return weighted, accumulate_gradients(mean_fn, params, batch, 4, None), mean_fn(params, batch, None)

    (loss, grads), (_, naive), (expected_loss, expected) = run(params, batch)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    assert grad_relative_error(grads, expected) < 1e-6
    assert grad_relative_error(naive, expected) > 1e-2  # equal-weight averaging of microbatch means is biased here


def _uneven_weights() -> np.ndarray:
    """Token weights whose per-microbatch totals differ: 10, 2, 2, 2 (microbatch j holds rows j and j + 4)."""
    weights = np.zeros((8, 5))
    for row, count in enumerate([5, 1, 1, 1, 5, 1, 1, 1]):
        weights[row, :count] = 1.0
    return weights


def test_accumulation_rejects_bad_batches():
    fn = lambda params, batch, rng: (jnp.sum(batch["x"]), params)  # noqa: E731
    with pytest.raises(ValueError, match="Batch size 6 is not divisible by num_microbatches=4"):
        accumulate_gradients(fn, {}, {"x": jnp.zeros((6, 2))}, 4, None)
    with pytest.raises(ValueError, match="same leading"):
        accumulate_gradients(fn, {}, {"x": jnp.zeros((4, 2)), "y": jnp.zeros((8,))}, 2, None)
    with pytest.raises(ValueError, match="num_microbatches must be a positive"):
        accumulate_gradients(fn, {}, {"x": jnp.zeros((4, 2))}, 0, None)
    with pytest.raises(ValueError, match="reduction"):
        accumulate_gradients(fn, {}, {"x": jnp.zeros((4, 2))}, 2, None, reduction="max")


def test_accumulation_gives_each_microbatch_its_own_rng():
    def fn(params, batch, rng):
        return jax.random.uniform(rng, ()), params

    draws = jax.jit(lambda r: accumulate_gradients(fn, {}, jnp.zeros(4), 4, r, reduction="sum")[0])(jax.random.key(0))
    expected = sum(float(jax.random.uniform(key, ())) for key in jax.random.split(jax.random.key(0), 4))
    np.testing.assert_allclose(draws, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Config validation.


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "sgd"}, "name='sgd' is unknown"),
        ({"learning_rate": -1e-4}, "learning_rate must be > 0"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
        ({"warmup_steps": 200, "total_steps": 100}, r"warmup_steps \(200\) exceeds total_steps \(100\)"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"warmup_steps": 1.5}, "warmup_steps must be an integer"),
        ({"total_steps": 0, "warmup_steps": 0}, "total_steps must be an integer >= 1"),
        ({"schedule": "cosine"}, "schedule='cosine' is unknown"),
        ({"power": 2.0}, "only applies to schedule='polynomial'"),
        ({"schedule": "polynomial", "power": 0.0}, "power must be > 0"),
        ({"end_learning_rate": 1.0}, "end_learning_rate must be in"),
        ({"b1": 1.0}, r"b1 must be in \[0, 1\)"),
        ({"b2": -0.1}, r"b2 must be in \[0, 1\)"),
        ({"eps": -1.0}, "eps must be >= 0"),
        ({"weight_decay": -0.01}, "weight_decay must be >= 0"),
        ({"clip_global_norm": 0.0}, "clip_global_norm must be None"),
        ({"bias_correction": "yes"}, "bias_correction must be True or False"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        OptimizerConfig(**overrides)


def test_default_config_is_the_original_recipe():
    config = OptimizerConfig()
    assert (config.name, config.b1, config.b2, config.eps) == ("adamw", 0.9, 0.999, 1e-6)
    assert (config.weight_decay, config.clip_global_norm, config.schedule) == (0.01, 1.0, "linear")
    assert isinstance(ConfigError("x"), ValueError)


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("clip", [None, 1.0, 1e3])  # no clipping; clipping every step; a norm never reached
def test_fused_adamw_equals_the_optax_chain_and_keeps_its_state(bias_correction, clip):
    """make_optimizer's AdamW (one pass per leaf) against the same recipe written as the optax chain."""
    config = OptimizerConfig(
        learning_rate=1e-2, warmup_steps=3, total_steps=50, bias_correction=bias_correction, clip_global_norm=clip
    )
    reference = optax.chain(
        *([optax.clip_by_global_norm(clip)] if clip is not None else []),
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
        if bias_correction
        else scale_by_adam(config.b1, config.b2, config.eps, bias_correction=False),
        optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate_schedule(config)),
    )
    fused = make_optimizer(config)
    params = {
        "dense": {"kernel": jax.random.normal(jax.random.key(0), (48, 32)), "bias": jnp.full((32,), 0.5)},
        "LayerNorm": {"scale": jnp.ones((32,))},
    }
    fused_params, reference_params = params, params
    fused_state, reference_state = fused.init(params), reference.init(params)
    assert jax.tree.structure(fused_state) == jax.tree.structure(reference_state)
    for step in range(6):
        grads = jax.tree.map(lambda p, s=step: 3.0 * jax.random.normal(jax.random.key(s), p.shape), params)
        fused_updates, fused_state = jax.jit(fused.update)(grads, fused_state, fused_params)
        reference_updates, reference_state = jax.jit(reference.update)(grads, reference_state, reference_params)
        fused_params = optax.apply_updates(fused_params, fused_updates)
        reference_params = optax.apply_updates(reference_params, reference_updates)
    assert jax.tree.structure(fused_state) == jax.tree.structure(reference_state)
    # optax's bias correction `1 - b^t` loses float32 digits (1.3e-5 relative at step 1) that ours keeps.
    for ours, theirs in zip(
        jax.tree.leaves((fused_params, fused_state)), jax.tree.leaves((reference_params, reference_state)), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="needs params"):
        fused.update(grads, fused_state)
