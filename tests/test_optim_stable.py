"""StableAdamW and the warmup-stable-decay schedule (ModernBERT's recipe) against independent references.

References: torch-optimi's `optimi.StableAdamW` (the implementation ModernBERT trains with, run in float32 as a
training run would), a NumPy float64 transcription of Wortsman et al. 2023's update whose switches remove one choice
at a time (to show that the comparison sees each one), and schedule values computed by hand.

Tolerance of the optimi comparison (rtol 1e-5, atol 1e-7, per element): both sides run in float32 and differ only
in rounding (optimi keeps debiased moments and applies the decay as a separate product; we keep raw moments and
divide by `1 - b^t`, and reduce the RMS in another order). Each update rounds a parameter once (2^-24 relative), so
14 updates should stay a few ulps apart: measured, 4e-7 of each tensor's largest value at most (9.5e-7 absolute, 4
ulps of a weight near 2). The effects under test are far larger: leaving the weight decay unclipped moves the result
by 3e-4 to 6e-4 of a tensor's scale, dropping the update clipping by 6e-2 to 8e-2. atol covers elements near 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pickle
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
from ml_collections import config_flags

from bert_jax.errors import ConfigError
from bert_jax.jobs import config as job_config
from bert_jax.training import checkpoint, train
from bert_jax.training.optim import (
    OptimizerConfig,
    learning_rate_schedule,
    make_optimizer,
    update_clipping_divisor,
    weight_decay_mask,
)
from tests.conftest import REPO_ROOT

# ---------------------------------------------------------------------------------------------------------------
# A parameter set of several shapes and scales, the decay labelled by hand (no decay on biases and LayerNorms).

# path -> (shape, parameter scale, gradient scale, decayed?)
PARAM_SPECS = {
    "embeddings/word_embeddings/embedding": ((12, 8), 1.0, 0.05, True),  # rows 6.. never get a gradient
    "embeddings/LayerNorm/scale": ((8,), 1.0, 0.01, False),
    "encoder/layer_0/attention/qkv/kernel": ((8, 3, 4), 0.05, 0.2, True),
    "encoder/layer_0/attention/qkv/bias": ((3, 4), 0.01, 1.0, False),
    "encoder/layer_0/mlp/wi/kernel": ((8, 16), 0.5, 0.002, True),
    "head/kernel": ((16, 3), 2.0, 3.0, True),
    "head/bias": ((3,), 0.1, 0.5, False),  # no gradient for the first 3 steps: v_hat starts from 0 there
}
DECAYED = {path for path, spec in PARAM_SPECS.items() if spec[3]}
# (step, path, factor): loss spikes, a gradient far above its running RMS, on decayed and undecayed tensors.
SPIKES = ((5, "encoder/layer_0/attention/qkv/kernel", 200.0), (6, "head/bias", 50.0), (9, "head/kernel", 30.0))
NUM_STEPS = 14

PEAK, END = 1e-2, 1e-3
WARMUP, TOTAL, DECAY = 3, 12, 4  # steps 12 and 13 run past the end of the schedule, at END
BETAS, EPS = (0.9, 0.98), 1e-6  # ModernBERT's


def wsd_one_minus_sqrt_lr(step: int) -> float:
    """WARMUP / TOTAL / DECAY above, 1-sqrt decay, written out: warmup, the peak, then the decay."""
    if step < WARMUP:
        return PEAK * step / WARMUP
    if step < TOTAL - DECAY:
        return PEAK
    done = min(1.0, (step - (TOTAL - DECAY)) / DECAY)
    return END + (PEAK - END) * (1.0 - math.sqrt(done))


def stable_config(**overrides) -> OptimizerConfig:
    fields = dict(
        name="stable_adamw",
        learning_rate=PEAK,
        end_learning_rate=END,
        warmup_steps=WARMUP,
        total_steps=TOTAL,
        schedule="wsd",
        decay_steps=DECAY,
        decay_shape="one_minus_sqrt",
        b1=BETAS[0],
        b2=BETAS[1],
        eps=EPS,
        clip_global_norm=None,
    )
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


def as_float32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64)


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {}
    for path, (shape, scale, _, _) in PARAM_SPECS.items():
        offset = 1.0 if path.endswith("scale") else 0.0
        params[path] = as_float32(offset + scale * rng.standard_normal(shape))
    return params


def gradient_sequence() -> list[dict[str, np.ndarray]]:
    """Gradients of each tensor's own scale, the SPIKES on top; float32 values."""
    rng = np.random.default_rng(1)
    sequence = []
    for step in range(NUM_STEPS):
        grads = {path: scale * rng.standard_normal(shape) for path, (shape, _, scale, _) in PARAM_SPECS.items()}
        grads["embeddings/word_embeddings/embedding"][6:] = 0.0
        if step < 3:
            grads["head/bias"][:] = 0.0
        for spike_step, path, factor in SPIKES:
            if step == spike_step:
                grads[path] = grads[path] * factor
        sequence.append({path: as_float32(g) for path, g in grads.items()})
    return sequence


def clip_numpy(grads: dict[str, np.ndarray], clip_norm: float | None) -> dict[str, np.ndarray]:
    """tf.clip_by_global_norm (optax's clip_by_global_norm): t * clip_norm / max(global_norm, clip_norm)."""
    if clip_norm is None:
        return grads
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
    return {path: g * clip_norm / max(norm, clip_norm) for path, g in grads.items()}


def relative_error(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """Largest over tensors of max|actual - expected| / max|expected|."""
    assert actual.keys() == expected.keys()
    return max(float(np.max(np.abs(actual[k] - expected[k])) / np.max(np.abs(expected[k]))) for k in expected)


def assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for path in expected:
        np.testing.assert_allclose(actual[path], expected[path], rtol=1e-5, atol=1e-7, err_msg=path)


# ---------------------------------------------------------------------------------------------------------------
# The three implementations.


@functools.cache
def run_ours(config: OptimizerConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`make_optimizer(config, params)` over `gradient_sequence()` from `initial_params()`, in one jitted scan.
    Returns the final params and the bias-corrected moments (mu / (1 - b1^t), nu / (1 - b2^t))."""
    tree = nest(initial_params())
    optimizer = make_optimizer(config, tree)

    @jax.jit
    def run(tree, grads_seq):
        def step(carry, grads):
            tree, state = carry
            updates, state = optimizer.update(grads, state, tree)
            return (optax.apply_updates(tree, updates), state), None

        (tree, state), _ = jax.lax.scan(step, (tree, optimizer.init(tree)), grads_seq)
        return tree, optax.tree_utils.tree_get(state, "mu"), optax.tree_utils.tree_get(state, "nu")

    sequence = gradient_sequence()
    stacked = nest({path: np.stack([grads[path] for grads in sequence]) for path in PARAM_SPECS})
    params, mu, nu = (flatten(tree) for tree in run(tree, stacked))
    c1, c2 = 1 - config.b1**NUM_STEPS, 1 - config.b2**NUM_STEPS
    return params, {k: m / c1 for k, m in mu.items()}, {k: v / c2 for k, v in nu.items()}


def run_optimi(
    weight_decay: float, decouple_lr: bool, clip_norm: float | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """optimi.StableAdamW (float32, for-loop kernel, no Kahan summation) set up as ModernBERT's `build_optimizer`
    does (a decayed and an undecayed group, `lr` the peak; Composer's scheduler then sets each group's `lr` before
    each step). Returns the final params and optimi's moments (it keeps them debiased)."""
    optimi = pytest.importorskip("optimi", reason="torch-optimi is the StableAdamW reference: pip install torch-optimi")
    torch = pytest.importorskip("torch")
    tensors = {
        path: torch.tensor(value, dtype=torch.float32, requires_grad=True) for path, value in initial_params().items()
    }
    groups = [
        {"params": [t for p, t in tensors.items() if p in DECAYED], "weight_decay": weight_decay},
        {"params": [t for p, t in tensors.items() if p not in DECAYED], "weight_decay": 0.0},
    ]
    optimizer = optimi.StableAdamW(
        groups,
        lr=PEAK,
        betas=BETAS,
        eps=EPS,
        weight_decay=weight_decay,
        decouple_lr=decouple_lr,
        kahan_sum=False,
        foreach=False,
        triton=False,
    )
    for step, grads in enumerate(gradient_sequence()):
        for group in optimizer.param_groups:
            group["lr"] = wsd_one_minus_sqrt_lr(step)
        for path, g in clip_numpy(grads, clip_norm).items():
            tensors[path].grad = torch.tensor(g, dtype=torch.float32)
        optimizer.step()
    state = {path: optimizer.state[t] for path, t in tensors.items()}
    params = {path: t.detach().double().numpy() for path, t in tensors.items()}
    m_hat = {path: s["exp_avg"].double().numpy() for path, s in state.items()}
    v_hat = {path: s["exp_avg_sq"].double().numpy() for path, s in state.items()}
    return params, m_hat, v_hat


def numpy_stable_adamw(
    weight_decay: float,
    decouple_lr: bool,
    clip_norm: float | None = None,
    *,
    clip_updates: bool = True,
    clip_decay: bool = True,
) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    """StableAdamW (Wortsman et al. 2023) in float64, per tensor; `clip_updates=False` is plain AdamW and
    `clip_decay=False` leaves the weight decay unclipped. Returns the final params and each step's divisors."""
    params = dict(initial_params())
    b1, b2 = BETAS
    m = {path: np.zeros_like(p) for path, p in params.items()}
    v = {path: np.zeros_like(p) for path, p in params.items()}
    divisors = []
    for step, grads in enumerate(gradient_sequence()):
        t, lr = step + 1, wsd_one_minus_sqrt_lr(step)
        divisors.append({})
        for path, g in clip_numpy(grads, clip_norm).items():
            m[path] = b1 * m[path] + (1 - b1) * g
            v[path] = b2 * v[path] + (1 - b2) * g**2
            m_hat, v_hat = m[path] / (1 - b1**t), v[path] / (1 - b2**t)
            divisor = max(1.0, math.sqrt(np.mean(g**2 / np.maximum(v_hat, EPS**2))))
            divisors[-1][path] = divisor
            eta = lr / divisor if clip_updates else lr
            if path in DECAYED:
                decay_lr = eta if clip_decay else lr
                rate = decay_lr / PEAK if decouple_lr else decay_lr
                params[path] = params[path] * (1 - rate * weight_decay)
            params[path] = params[path] - eta * m_hat / (np.sqrt(v_hat) + EPS)
    return params, divisors


# ---------------------------------------------------------------------------------------------------------------
# StableAdamW against optimi.

CASES = {
    # ModernBERT's: decoupled_stableadamw (decay by wd * lr / peak), no gradient clipping.
    "modernbert": dict(weight_decay=5e-4, decouple_lr=True, clip_norm=None),
    # optimi's default: decay by wd * lr (AdamW's), no gradient clipping.
    "lr_scaled_decay": dict(weight_decay=0.1, decouple_lr=False, clip_norm=None),
    # With global-norm clipping before the update (the spikes exceed the norm 1, other steps stay under it).
    "global_norm_clipped": dict(weight_decay=5e-4, decouple_lr=True, clip_norm=1.0),
}


def ours_for(case: dict, **overrides) -> OptimizerConfig:
    return stable_config(
        weight_decay=case["weight_decay"],
        fully_decoupled_weight_decay=case["decouple_lr"],
        clip_global_norm=case["clip_norm"],
        **overrides,
    )


@pytest.mark.parametrize("case", CASES)
def test_stable_adamw_matches_optimi(case):
    settings = CASES[case]
    expected, expected_m, expected_v = run_optimi(**settings)
    actual, actual_m, actual_v = run_ours(ours_for(settings))
    assert_close(actual, expected)
    assert_close(actual_m, expected_m)  # the state means the same: the bias-corrected moments are optimi's
    assert_close(actual_v, expected_v)
    # Both agree with the paper's update written out in float64.
    reference, divisors = numpy_stable_adamw(**settings)
    assert_close(reference, expected)
    # The update clipping engaged: every spike divided its tensor's step (by up to sqrt((1 - b2^t) / (1 - b2)),
    # the most a gradient can exceed a second moment that includes it; less where the global norm clipped it).
    at_spikes = [divisors[spike_step][path] for spike_step, path, _ in SPIKES]
    assert min(at_spikes) > 1.1 and max(at_spikes) > 2.0, at_spikes
    clipped = sum(d > 1.0 + 1e-6 for step in divisors for d in step.values())
    assert clipped >= len(SPIKES), clipped
    # The comparison can fail: without the update clipping (AdamW, ours and the float64 transcription), or
    # with it but the weight decay left unclipped, the parameters leave the tolerance by orders of magnitude.
    adamw, _, _ = run_ours(ours_for(settings, name="adamw"))
    unclipped, _ = numpy_stable_adamw(**settings, clip_updates=False)
    assert relative_error(adamw, expected) > 1e-3
    assert relative_error(unclipped, expected) > 1e-3
    assert_close(adamw, unclipped)  # AdamW is StableAdamW without the clipping
    decay_unclipped, _ = numpy_stable_adamw(**settings, clip_decay=False)
    assert relative_error(decay_unclipped, expected) > 1e-4


def test_divisor_is_1_for_a_steady_gradient_and_floors_v_at_eps_squared():
    """The labels above are the default decay mask's; at step 1 v_hat = g^2, so every divisor is exactly 1."""
    assert {path for path, decayed in flatten(weight_decay_mask(nest(initial_params()))).items() if decayed} == DECAYED
    _, divisors = numpy_stable_adamw(weight_decay=0.0, decouple_lr=False)
    assert all(d == pytest.approx(1.0, abs=1e-9) for d in divisors[0].values())
    g = jnp.asarray(gradient_sequence()[0]["head/kernel"])
    assert float(update_clipping_divisor(g, g * g, EPS)) == pytest.approx(1.0, abs=1e-6)
    assert float(update_clipping_divisor(10 * g, g * g, EPS)) == pytest.approx(10.0, rel=1e-6)
    assert float(update_clipping_divisor(g, jnp.zeros_like(g), EPS)) == pytest.approx(
        math.sqrt(float(jnp.mean(g * g))) / EPS, rel=1e-5
    )  # v_hat of 0 (a parameter that never had a gradient) is floored at eps^2


def test_zero_gradient_step_only_decays_masked_params():
    """Zero gradients: no Adam direction and no clipping (divisor 1), so one step at the peak shows the decay alone."""
    params = nest(initial_params())
    zeros = jax.tree.map(jnp.zeros_like, params)
    for decoupled, factor in ((False, 1 - 0.5 * 0.1), (True, 1 - 0.1)):
        config = OptimizerConfig(
            name="stable_adamw",
            learning_rate=0.5,
            warmup_steps=0,
            total_steps=10,
            weight_decay=0.1,
            fully_decoupled_weight_decay=decoupled,
        )
        optimizer = make_optimizer(config, params)
        updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
        new = flatten(optax.apply_updates(params, updates))
        for path, before in flatten(params).items():
            expected = factor * before if path in DECAYED else before
            np.testing.assert_allclose(new[path], expected, rtol=1e-6, atol=0, err_msg=path)


def test_fully_decoupled_adamw_decays_by_the_schedule_over_the_peak():
    params = nest(initial_params())
    zeros = jax.tree.map(jnp.zeros_like, params)
    config = OptimizerConfig(learning_rate=0.5, warmup_steps=2, total_steps=10, weight_decay=0.1)
    for decoupled, factor in ((False, 1 - 0.25 * 0.1), (True, 1 - 0.5 * 0.1)):  # step 1: lr 0.25 = peak / 2
        optimizer = make_optimizer(dataclasses.replace(config, fully_decoupled_weight_decay=decoupled), params)
        state = optimizer.init(params)
        update = jax.jit(optimizer.update)
        _, state = update(zeros, state, params)  # step 0: lr 0
        updates, _ = update(zeros, state, params)
        new = flatten(optax.apply_updates(params, updates))
        for path, before in flatten(params).items():
            expected = factor * before if path in DECAYED else before
            np.testing.assert_allclose(new[path], expected, rtol=1e-6, atol=0, err_msg=path)


# ---------------------------------------------------------------------------------------------------------------
# State: AdamW's tree, in the jitted train step, checkpointed and resumed.


def test_state_is_adamws_and_runs_in_the_train_step_and_resumes_from_a_checkpoint(tmp_path):
    params = nest(initial_params())
    config = stable_config(weight_decay=1e-5, fully_decoupled_weight_decay=True)
    optimizer, adamw = make_optimizer(config), make_optimizer(dataclasses.replace(config, name="adamw"))
    state, adamw_state = optimizer.init(params), adamw.init(params)
    # The same tree (so `train.state_shardings` gives the same shardings, and checkpoints are interchangeable).
    assert jax.tree.structure(state) == jax.tree.structure(adamw_state)
    assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, adamw_state)
    for moments in (optax.tree_utils.tree_get(state, "mu"), optax.tree_utils.tree_get(state, "nu")):
        assert jax.tree.structure(moments) == jax.tree.structure(params)

    target = nest({path: np.full(shape, 0.3) for path, (shape, *_) in PARAM_SPECS.items()})

    def loss_fn(params, batch, rng):
        del rng
        loss = sum(
            jnp.mean(batch["weight"]) * jnp.sum((p - t) ** 2)
            for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target), strict=True)
        )
        return loss, {"loss": loss}

    schedule = learning_rate_schedule(config)
    step = jax.jit(train.make_step(loss_fn, optimizer, schedule, dropout_seed=0))
    batch = {"weight": jnp.ones((2,), jnp.float32)}
    train_state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=state)
    for _ in range(4):
        train_state, metrics = step(train_state, batch)
    assert float(metrics["learning_rate"]) == pytest.approx(wsd_one_minus_sqrt_lr(3))

    # Pickled, and through the job's orbax checkpointer: the state comes back exactly and the run goes on the same.
    host = jax.device_get(train_state)
    unpickled = pickle.loads(pickle.dumps(host))
    assert jax.tree.structure(unpickled) == jax.tree.structure(host)
    for a, b in zip(jax.tree.leaves(unpickled), jax.tree.leaves(host), strict=True):
        np.testing.assert_array_equal(a, b)
    saver = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    assert saver.save(4, train_state.params, train_state.opt_state, {}, {"vocab.txt": "[PAD]\n"}, force=True)
    saver.wait_until_finished()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), train_state)
    restored = saver.restore(abstract.params, abstract.opt_state)
    saver.close()
    assert restored.step == 4
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(train_state.opt_state)
    resumed = train.TrainState(step=train_state.step, params=restored.params, opt_state=restored.opt_state)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(train_state), strict=True):
        np.testing.assert_array_equal(a, b)
    after, _ = step(train_state, batch)
    after_resumed, _ = step(resumed, batch)
    for a, b in zip(jax.tree.leaves(after_resumed), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Warmup-stable-decay schedule.


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # Warmup to 1e-3 over 100 steps, the peak until 800, linear decay over [800, 1000] to 1e-4:
        # 1e-4 + 9e-4 * (1000 - step) / 200.
        (
            {},
            {
                0: 0.0,
                50: 5e-4,  # warmup midpoint
                99: 9.9e-4,
                100: 1e-3,  # warmup end
                450: 1e-3,  # the stable middle
                800: 1e-3,  # the decay's start: still the peak
                801: 9.955e-4,  # 1e-4 + 9e-4 * 199/200
                850: 7.75e-4,  # 1e-4 + 9e-4 * 0.75
                900: 5.5e-4,  # the decay's midpoint
                999: 1.045e-4,  # 1e-4 + 9e-4 / 200
                1000: 1e-4,  # the end
                1500: 1e-4,  # after the end
            },
        ),
        # 1-sqrt: 1e-4 + 9e-4 * (1 - sqrt((step - 800) / 200)).
        (
            {"decay_shape": "one_minus_sqrt"},
            {
                0: 0.0,
                50: 5e-4,
                100: 1e-3,
                450: 1e-3,
                800: 1e-3,
                801: 9.36360389e-4,  # 1 - sqrt(0.005) = 0.92928932
                850: 5.5e-4,  # 1 - sqrt(0.25) = 0.5
                900: 3.63603897e-4,  # the midpoint: 1 - sqrt(0.5) = 0.29289322
                999: 1.02252822e-4,  # 1 - sqrt(0.995) = 0.00250313
                1000: 1e-4,
                1500: 1e-4,
            },
        ),
        # No warmup, and a decay right after it to 0: the peak at step 0, 1 - sqrt(step / 1000).
        (
            {"warmup_steps": 0, "decay_steps": 1000, "decay_shape": "one_minus_sqrt", "end_learning_rate": 0.0},
            {0: 1e-3, 10: 9e-4, 250: 5e-4, 1000: 0.0, 1200: 0.0},
        ),
        # Warmup then the decay at once (warmup + decay = total): the peak exactly at the end of warmup.
        ({"decay_steps": 900, "end_learning_rate": 0.0}, {50: 5e-4, 100: 1e-3, 550: 5e-4, 1000: 0.0}),
    ],
)
def test_wsd_schedule_values(overrides, expected):
    config = OptimizerConfig(
        **{
            "learning_rate": 1e-3,
            "end_learning_rate": 1e-4,
            "warmup_steps": 100,
            "total_steps": 1000,
            "schedule": "wsd",
            "decay_steps": 200,
            **overrides,
        }
    )
    schedule = jax.jit(learning_rate_schedule(config))
    for step, value in expected.items():
        np.testing.assert_allclose(float(schedule(jnp.int32(step))), value, rtol=1e-5, atol=1e-12, err_msg=f"{step=}")


def test_wsd_keeps_float32_digits_at_the_end_of_a_long_decay():
    """The last update of a 100k-step decay: 1 - sqrt(0.99999) = 5.0000125e-6, lost to cancellation if computed so."""
    config = OptimizerConfig(
        learning_rate=1.0,
        warmup_steps=0,
        total_steps=1_000_000,
        schedule="wsd",
        decay_steps=100_000,
        decay_shape="one_minus_sqrt",
    )
    last = float(jax.jit(learning_rate_schedule(config))(jnp.int32(999_999)))
    np.testing.assert_allclose(last, 1 - math.sqrt(1 - 1e-5), rtol=1e-5)
    linear = float(learning_rate_schedule(dataclasses.replace(config, decay_shape="linear"))(999_999))
    np.testing.assert_allclose(linear, 1e-5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schedule": "wsd"}, r"schedule='wsd' needs decay_steps >= 1"),
        ({"schedule": "wsd", "decay_steps": -5}, "decay_steps must be an integer >= 0"),
        ({"schedule": "wsd", "decay_steps": 2.5}, "decay_steps must be an integer"),
        (
            {"schedule": "wsd", "warmup_steps": 100, "decay_steps": 950, "total_steps": 1000},
            r"warmup_steps \(100\) \+ decay_steps \(950\) exceed total_steps \(1000\)",
        ),
        ({"schedule": "wsd", "decay_steps": 10, "decay_shape": "cosine"}, "decay_shape='cosine' is unknown"),
        ({"decay_steps": 10}, "decay_steps only applies to schedule='wsd'"),
        ({"decay_shape": "one_minus_sqrt"}, "decay_shape only applies to schedule='wsd'"),
        ({"schedule": "wsd", "decay_steps": 10, "decay_from_warmup_end": True}, "decay_from_warmup_end does not apply"),
        ({"name": "lamb", "fully_decoupled_weight_decay": True}, "fully_decoupled_weight_decay is for adamw"),
        ({"fully_decoupled_weight_decay": 1}, "fully_decoupled_weight_decay must be True or False"),
        ({"name": "stable_adamw", "bias_correction": False}, "bias_correction=False is not StableAdamW"),
        ({"name": "stable_adamw", "eps": 0.0}, "eps must be > 0 for stable_adamw"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        OptimizerConfig(**{"warmup_steps": 10, "total_steps": 1000, **overrides})
    assert "\n" not in str(error.value)


def test_defaults_leave_the_original_recipe_unchanged():
    config = OptimizerConfig()
    assert (config.decay_steps, config.decay_shape, config.fully_decoupled_weight_decay) == (0, "linear", False)


def test_the_pretrain_config_takes_the_recipe_by_name():
    """The optimizer section maps onto OptimizerConfig: in the file, as dotted overrides, and on the command line."""
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    modernbert = {
        "name": "stable_adamw",
        "learning_rate": 8e-4,
        "b1": 0.9,
        "b2": 0.98,
        "eps": 1e-6,
        "weight_decay": 1e-5,
        "fully_decoupled_weight_decay": True,
        "clip_global_norm": None,
        "schedule": "wsd",
        "decay_steps": 145,
        "decay_shape": "one_minus_sqrt",
        "end_learning_rate": 0.0,
    }
    config.optimizer.update(modernbert)
    job = job_config.parse(config)
    assert {name: getattr(job.optimizer, name) for name in modernbert} == modernbert
    assert job.optimizer.total_steps == config.num_train_steps
    again = job_config.parse(job.to_dict())
    assert again.optimizer == job.optimizer
    # The same by dotted name (as --config.optimizer.x=...), checked again.
    replaced = job_config.parse(runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]())
    replaced = replaced.replace_at({f"optimizer.{name}": value for name, value in modernbert.items()})
    assert replaced.optimizer == job.optimizer
    with pytest.raises(ConfigError, match="decay_steps >= 1"):
        replaced.replace_at({"optimizer.decay_steps": 0})

    # Command-line flags on a recipe that spells out every optimizer field.
    path = REPO_ROOT / "experiments" / "bert_base_phase1.py"
    argv = [
        "bert-jax-pretrain",
        f"--config={path}",
        "--config.optimizer.name=stable_adamw",
        "--config.optimizer.schedule=wsd",
        "--config.optimizer.decay_steps=100000",
        "--config.optimizer.decay_shape=one_minus_sqrt",
        "--config.optimizer.fully_decoupled_weight_decay=True",
        "--config.optimizer.weight_decay=1e-5",
        "--config.optimizer.bias_correction=True",
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    optimizer = job_config.parse(values.config).optimizer
    assert (optimizer.name, optimizer.schedule, optimizer.decay_steps, optimizer.decay_shape) == (
        "stable_adamw",
        "wsd",
        100_000,
        "one_minus_sqrt",
    )
    assert optimizer.fully_decoupled_weight_decay and optimizer.weight_decay == 1e-5
