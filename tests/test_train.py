"""The train and eval steps (`bert_jax.training.train`) against independent references.

- Gradient accumulation: `num_microbatches=2` equals one pass over the whole batch (params and metrics).
- The first two updates equal a hand computation: the loss written out here (log-softmax cross-entropy at
  gathered positions from the model's full-sequence logits, plus NSP), `jax.grad` of it, and AdamW with
  clipping, decoupled masked weight decay, bias correction and the linear schedule, written out by hand.
- Dropout keys: the step is bitwise deterministic, its mask is `fold_in(key(seed), step)`, so it changes with
  the step, and a state restored from host copies reproduces the uninterrupted run bitwise.
- Sharded equals unsharded: on 8 simulated CPU devices, two jitted steps on each of the meshes (8,1,1), (2,4,1),
  (2,2,2), (1,1,8) and (1,2,4) match the same steps on one device (the vocabulary padded 997 -> 1000 so that
  it splits 8 ways; the MLM loss vocab-parallel via shard_map wherever the tensor axis is > 1); the
  params and Adam moments really are sharded and the input state is donated. The shard_map loss alone
  equals the plain one, values and gradients, ties included.
  `XLA_FLAGS=--xla_force_host_platform_device_count=8` must be set before jax is imported, so that part runs
  this file as a script in a subprocess (`python -m tests.test_train`), which prints a JSON report.
- Eval sums add up over batches, and `losses.summarize` of them gives the full-batch means.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models.bert import BertForPreTraining, init_params
from bert_jax.models.configs import BertConfig
from bert_jax.sharding import MeshConfig, global_batch_from_process_local, make_mesh, param_shardings
from bert_jax.training import losses, train
from bert_jax.training.optim import OptimizerConfig, learning_rate_schedule, make_optimizer
from tests.simulated_devices import simulated_devices_env

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_SIM_DEVICES = 8
BATCH, LENGTH, PREDICTIONS = 8, 32, 5
SEED = 0

# Adam settings of the hand-computed reference (test 2). Weight decay is large enough that decaying a
# LayerNorm scale (~1) by mistake moves it by lr * wd = 1e-4, far above the tolerance.
LR, TOTAL_STEPS, WEIGHT_DECAY, CLIP, B1, B2, EPS = 1e-3, 100, 0.1, 0.5, 0.9, 0.999, 1e-6


def small_config(dropout: float = 0.0) -> BertConfig:
    return BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=1,  # the step's logic does not depend on depth; one layer halves the compile time
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def numpy_batch(
    config: BertConfig, batch: int = BATCH, length: int = LENGTH, predictions: int = PREDICTIONS, seed: int = 1
) -> dict[str, np.ndarray]:
    """A synthetic pretraining batch: padded sequences, two segments, distinct masked positions, weights 1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, batch)
    lengths[0] = length  # at least one row without padding
    positions_in_row = np.arange(length)[None, :]
    attention_mask = (positions_in_row < lengths[:, None]).astype(np.int32)
    input_ids = rng.integers(5, config.vocab_size, (batch, length)).astype(np.int32) * attention_mask
    token_type_ids = ((positions_in_row >= (lengths // 2)[:, None]) * attention_mask).astype(np.int32)
    positions = np.stack([np.sort(rng.choice(np.arange(1, n), predictions, replace=False)) for n in lengths])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(5, config.vocab_size, (batch, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, batch).astype(np.int32),
    }


def adamw_config(**overrides: Any) -> OptimizerConfig:
    fields = dict(
        learning_rate=LR,
        warmup_steps=0,
        total_steps=TOTAL_STEPS,
        weight_decay=WEIGHT_DECAY,
        clip_global_norm=CLIP,
        b1=B1,
        b2=B2,
        eps=EPS,
    )
    return OptimizerConfig(**{**fields, **overrides})


def flat(tree: Any) -> dict[str, np.ndarray]:
    """`{"bert/embeddings/...": array}` on the host."""
    return {
        "/".join(str(k.key) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def max_abs_diff(a: Any, b: Any) -> float:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    return max(float(np.abs(fa[k] - fb[k]).max()) for k in fa)


def bitwise_equal(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


def host_copy(state: train.TrainState) -> train.TrainState:
    """The state as a checkpoint restore would give it: NumPy copies put back on the device."""
    return jax.tree.map(lambda x: jnp.asarray(np.array(x)), state)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: one model and initial params per dropout setting, one batch.


@pytest.fixture(scope="module")
def model() -> BertForPreTraining:
    return BertForPreTraining(small_config(dropout=0.0))


@pytest.fixture(scope="module")
def dropout_model() -> BertForPreTraining:
    return BertForPreTraining(small_config(dropout=0.1))


@pytest.fixture(scope="module")
def batch(model) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in numpy_batch(model.config).items()}


@pytest.fixture(scope="module")
def adamw_state(model) -> train.TrainState:
    """The initial state, shared (compiling the init costs seconds); dropout does not change the params."""
    return train.create_train_state(model, make_optimizer(adamw_config()), jax.random.key(SEED))


def test_train_state_equals_the_plain_jitted_init_and_uses_the_cpu_fast_compile_preset(model, adamw_state, monkeypatch):
    """On CPU the init program is compiled with XLA's fast-compile preset; the state is bit for bit what a plain
    `jax.jit` of the same init gives (XLA's default optimization), with and without shardings."""
    optimizer = make_optimizer(adamw_config())
    reference = jax.jit(train.init_fn(model, optimizer))(jax.random.key(SEED))
    leaves = jax.tree_util.tree_leaves
    assert all(np.array_equal(a, b) for a, b in zip(leaves(adamw_state), leaves(reference), strict=True))
    used = []
    original = train._compile_for_one_run
    monkeypatch.setattr(train, "_compile_for_one_run", lambda lowered: used.append(1) or original(lowered))
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    sharded = train.create_train_state(
        model, optimizer, jax.random.key(SEED), train.state_shardings(model, optimizer, mesh)
    )
    assert used == [1]
    assert all(np.array_equal(a, b) for a, b in zip(leaves(sharded), leaves(reference), strict=True))
    # This XLA knows the preset (an XLA without it would make `_compile_for_one_run` fall back silently).
    lowered = jax.jit(train.init_fn(model, optimizer)).lower(jax.random.key(SEED))
    with_preset = lowered.compile(compiler_options=train._CPU_FAST_COMPILE)(jax.random.key(SEED))
    assert all(np.array_equal(a, b) for a, b in zip(leaves(with_preset), leaves(reference), strict=True))


@pytest.fixture(scope="module")
def adamw_step(model) -> Any:
    """The jitted train step without dropout and without accumulation, shared by several tests."""
    config = adamw_config()
    return jax.jit(
        train.make_train_step(model, make_optimizer(config), learning_rate_schedule(config), dropout_seed=SEED)
    )


# ---------------------------------------------------------------------------------------------------------------
# 1. Gradient accumulation inside the jitted step


def test_two_microbatches_equal_one_full_batch_step(model, batch, adamw_state, adamw_step):
    """Dropout is 0, so the step is deterministic. The MLM loss is normalized per microbatch by its own
    masked_lm_weights and the microbatch results are averaged; with every weight 1 each microbatch has the same
    total weight (4 rows x 5 predictions), so the mean of the microbatch means IS the full-batch mean and the
    two steps are mathematically equal (with unequal totals they would differ by design).

    AdamW's first update is ~lr * sign(g), which alone would hide a wrong gradient scale; so the Adam moments
    are compared too (mu and nu fix the clipped gradient's direction) and grad_norm (before clipping) fixes
    its scale: together they pin down the accumulated gradient."""
    assert np.all(np.asarray(batch["masked_lm_weights"]) == 1)
    config = adamw_config()
    accumulating = jax.jit(
        train.make_train_step(
            model, make_optimizer(config), learning_rate_schedule(config), dropout_seed=SEED, num_microbatches=2
        )
    )
    full, full_metrics = adamw_step(adamw_state, batch)
    accumulated, accumulated_metrics = accumulating(adamw_state, batch)

    assert int(full.step) == int(accumulated.step) == 1
    assert full_metrics.keys() == accumulated_metrics.keys()
    for name in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "grad_norm", "learning_rate"):
        np.testing.assert_allclose(accumulated_metrics[name], full_metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(full_metrics["grad_norm"]) > 0.1

    old, new_full, new_accumulated = flat(adamw_state.params), flat(full.params), flat(accumulated.params)
    for name in old:
        np.testing.assert_allclose(new_accumulated[name], new_full[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for moment in ("mu", "nu"):
        want = {name: np.asarray(_find(full.opt_state, name, moment)) for name in old}
        got = {name: np.asarray(_find(accumulated.opt_state, name, moment)) for name in old}
        # Relative to the largest moment entry: some gradients are exactly 0 in exact arithmetic (the attention
        # key bias: softmax ignores a shift), so they are pure rounding noise, ~1e-14, in both runs.
        scale = max(float(np.abs(x).max()) for x in want.values())
        assert scale > 0
        for name in old:
            assert np.abs(got[name] - want[name]).max() <= 1e-4 * scale, (moment, name)


# ---------------------------------------------------------------------------------------------------------------
# 2. The first updates equal a hand computation


def hand_loss(model: BertForPreTraining, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """The pretraining loss written out: MLM logits at every position (no gather in the model), picked at the
    masked positions by indexing, log-softmax cross-entropy against one-hot targets weighted and divided by the
    weight sum, plus the mean NSP cross-entropy."""
    all_logits, nsp_logits = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=True,
    )
    rows = jnp.arange(all_logits.shape[0])[:, None]
    logits = all_logits[rows, batch["masked_lm_positions"]]  # [B, P, V]
    targets = jax.nn.one_hot(batch["masked_lm_ids"], logits.shape[-1])
    token_nll = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    weights = batch["masked_lm_weights"]
    mlm = jnp.sum(token_nll * weights) / jnp.sum(weights)
    nsp_targets = jax.nn.one_hot(batch["next_sentence_labels"], 2)
    nsp = jnp.mean(-jnp.sum(nsp_targets * jax.nn.log_softmax(nsp_logits), axis=-1))
    return mlm + nsp


def is_decayed(name: str) -> bool:
    """Hand labels: the original excludes every bias and all LayerNorm parameters from weight decay."""
    parts = name.split("/")
    return parts[-1] != "bias" and "LayerNorm" not in parts


def hand_adamw_steps(model, params, batch, num_steps):
    """AdamW written out in NumPy (float64 moments): clip to global norm CLIP, bias-corrected Adam direction,
    + WEIGHT_DECAY * param for decayed params, times the linear decay LR * (1 - step / TOTAL_STEPS).

    Returns the params after each step, and the loss and gradient norm (before clipping) at each step."""
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: hand_loss(model, p, batch)))
    names = list(flat(params))
    treedef = jax.tree.structure(params)
    p = {k: v.astype(np.float64) for k, v in flat(params).items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    after, step_losses, norms = [], [], []
    for step in range(num_steps):
        loss, grads = loss_and_grad(jax.tree.unflatten(treedef, [jnp.asarray(p[k], jnp.float32) for k in names]))
        step_losses.append(float(loss))
        g = {k: x.astype(np.float64) for k, x in flat(grads).items()}
        norm = float(np.sqrt(sum(np.sum(x**2) for x in g.values())))
        norms.append(norm)
        g = {k: x * min(1.0, CLIP / norm) for k, x in g.items()}
        t = step + 1
        lr = LR * (1.0 - step / TOTAL_STEPS)
        for k in names:
            m[k] = B1 * m[k] + (1 - B1) * g[k]
            v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
            direction = (m[k] / (1 - B1**t)) / (np.sqrt(v[k] / (1 - B2**t)) + EPS)
            if is_decayed(k):
                direction = direction + WEIGHT_DECAY * p[k]
            p[k] = p[k] - lr * direction
        after.append(dict(p))
    return after, step_losses, norms


def test_first_two_updates_equal_hand_adamw(model, batch, adamw_state, adamw_step):
    states, metrics = [adamw_state], []
    for _ in range(2):
        state, m = adamw_step(states[-1], batch)
        states.append(state)
        metrics.append(m)
    expected, expected_losses, expected_norms = hand_adamw_steps(model, adamw_state.params, batch, 2)

    assert [int(s.step) for s in states] == [0, 1, 2]
    for i in range(2):
        np.testing.assert_allclose(metrics[i]["loss"], expected_losses[i], rtol=1e-5)
        np.testing.assert_allclose(metrics[i]["grad_norm"], expected_norms[i], rtol=1e-5)
        np.testing.assert_allclose(metrics[i]["learning_rate"], LR * (1 - i / TOTAL_STEPS), rtol=1e-6)
    assert expected_norms[0] > CLIP  # the clipping is exercised
    assert expected_losses[1] < expected_losses[0]  # the steps descend

    initial = flat(adamw_state.params)
    for i in range(2):
        got = flat(states[i + 1].params)
        assert got.keys() == expected[i].keys()
        for name, want in expected[i].items():
            # Each step moves a parameter by up to ~LR; the change must match the hand change to 1% of that.
            change, want_change = got[name] - initial[name], want - initial[name]
            np.testing.assert_allclose(change, want_change, rtol=0, atol=1e-2 * LR, err_msg=f"step {i}: {name}")
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=f"step {i}: {name}")


# ---------------------------------------------------------------------------------------------------------------
# 3. Determinism and dropout keys


def test_dropout_step_is_deterministic_and_keyed_by_seed_and_step(dropout_model, batch, adamw_state):
    config = adamw_config()
    seed = 7
    step = jax.jit(
        train.make_train_step(dropout_model, make_optimizer(config), learning_rate_schedule(config), dropout_seed=seed)
    )

    @jax.jit
    def loss_with_key(params, step_number):
        """The loss under the documented dropout key, fold_in(key(dropout_seed), step)."""
        mlm_logits, nsp_logits = dropout_model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            batch["masked_lm_positions"],
            deterministic=False,
            rngs={"dropout": jax.random.fold_in(jax.random.key(seed), step_number)},
        )
        return losses.pretraining_loss(mlm_logits, nsp_logits, batch)[0]

    state0 = adamw_state
    # Bitwise determinism: the same state and batch twice.
    state1, metrics0 = step(state0, batch)
    again1, again_metrics0 = step(state0, batch)
    assert bitwise_equal(state1, again1) and bitwise_equal(metrics0, again_metrics0)

    # The mask is the one of fold_in(key(seed), step), and dropout is really on.
    np.testing.assert_allclose(metrics0["loss"], loss_with_key(state0.params, 0), rtol=1e-6)
    assert abs(float(metrics0["loss"]) - float(loss_with_key(state0.params, 1))) > 1e-4

    # Same params and batch at step 1: another mask, so another loss (the lr differs too, but the loss is
    # computed before the update, so only the mask can change it; see the dropout-free control below).
    _, metrics_at_1 = step(state0.replace(step=jnp.ones((), jnp.int32)), batch)
    assert abs(float(metrics_at_1["loss"]) - float(metrics0["loss"])) > 1e-4
    np.testing.assert_allclose(metrics_at_1["loss"], loss_with_key(state0.params, 1), rtol=1e-6)

    # Resume: a state restored from host copies at step 1 reproduces the uninterrupted run's step 2 bitwise.
    state2, metrics1 = step(state1, batch)
    resumed2, resumed_metrics1 = step(host_copy(state1), batch)
    assert bitwise_equal(state2, resumed2) and bitwise_equal(metrics1, resumed_metrics1)
    assert int(state2.step) == 2
    assert not bitwise_equal(state2.params, state1.params)


def test_without_dropout_the_step_number_does_not_change_the_loss(batch, adamw_state, adamw_step):
    """The control for the test above: with dropout 0 the same params give the same loss at any step."""
    _, at_0 = adamw_step(adamw_state, batch)
    _, at_5 = adamw_step(adamw_state.replace(step=jnp.full((), 5, jnp.int32)), batch)
    np.testing.assert_array_equal(at_5["loss"], at_0["loss"])
    assert float(at_5["learning_rate"]) != float(at_0["learning_rate"])


# ---------------------------------------------------------------------------------------------------------------
# 5. Eval sums add up over batches


def test_eval_sums_add_up_and_summarize_to_full_batch_means(model, batch, adamw_state):
    params = adamw_state.params
    # Unequal weights: some predictions are padding, and the halves carry different totals, so averaging the
    # two half-batch means would NOT give the full-batch mean; only adding sums does.
    weights = np.ones((BATCH, PREDICTIONS), np.float32)
    weights[0, 2:] = 0
    weights[1, 1:] = 0
    weights[5, 4:] = 0
    full = {**batch, "masked_lm_weights": jnp.asarray(weights)}
    halves = [{k: v[i * BATCH // 2 : (i + 1) * BATCH // 2] for k, v in full.items()} for i in range(2)]

    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    eval_step = train.jit_eval_step(train.make_eval_step(model), param_shardings(model, mesh), mesh)
    full_sums = eval_step(params, full)
    half_sums = [eval_step(params, half) for half in halves]
    added = {k: half_sums[0][k] + half_sums[1][k] for k in full_sums}
    assert full_sums.keys() == {
        "mlm_loss_sum",
        "mlm_correct_sum",
        "mlm_count",
        "nsp_loss_sum",
        "nsp_correct_sum",
        "nsp_count",
    }
    for name in full_sums:
        np.testing.assert_allclose(added[name], full_sums[name], rtol=1e-5, err_msg=name)
    assert float(full_sums["mlm_count"]) == weights.sum()
    assert float(full_sums["nsp_count"]) == BATCH

    # The full-batch means, computed by hand in NumPy from the model's logits at the masked positions.
    inputs = ("input_ids", "attention_mask", "token_type_ids", "masked_lm_positions")
    logits = jax.jit(lambda p: tuple(model.apply({"params": p}, *(full[k] for k in inputs))))(params)
    mlm_logits, nsp_logits = (np.asarray(x, np.float64) for x in logits)
    ids, labels = np.asarray(full["masked_lm_ids"]), np.asarray(full["next_sentence_labels"])
    log_probs = mlm_logits - np.log(np.exp(mlm_logits).sum(-1, keepdims=True))
    token_nll = -np.take_along_axis(log_probs, ids[..., None], -1)[..., 0]
    mlm_loss = (token_nll * weights).sum() / weights.sum()
    mlm_accuracy = ((mlm_logits.argmax(-1) == ids) * weights).sum() / weights.sum()
    nsp_log_probs = nsp_logits - np.log(np.exp(nsp_logits).sum(-1, keepdims=True))
    nsp_loss = -nsp_log_probs[np.arange(BATCH), labels].mean()
    nsp_accuracy = (nsp_logits.argmax(-1) == labels).mean()
    expected = {
        "loss": mlm_loss + nsp_loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": mlm_accuracy,
        "nsp_loss": nsp_loss,
        "nsp_accuracy": nsp_accuracy,
    }
    summary = losses.summarize(added)
    assert summary.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(summary[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    # The sums matter: the mean of the two half-batch MLM losses is off.
    half_means = [losses.summarize(s)["mlm_loss"] for s in half_sums]
    assert abs(float(np.mean(half_means)) - mlm_loss) > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# 4. Sharded equals unsharded (8 simulated CPU devices, in a subprocess)


def _find(tree: Any, suffix: str, attribute: str | None = None) -> jax.Array:
    """The one leaf whose dict-key path ends with `suffix` (and, for optimizer states, lies under `attribute`)."""
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
        attrs = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]
        if (keys == suffix or keys.endswith("/" + suffix)) and (attribute is None or attribute in attrs):
            found.append(leaf)
    assert len(found) == 1, (suffix, attribute, len(found))
    return found[0]


def _spec(spec: Any) -> list[Any]:
    return [list(a) if isinstance(a, tuple) else a for a in spec]


def _shard_shapes(array: jax.Array) -> list[list[int]]:
    """The distinct shapes of the shards the devices hold."""
    return [list(shape) for shape in sorted({tuple(s.data.shape) for s in array.addressable_shards})]


def _run_steps(model, optimizer, schedule, mesh, batch, num_steps):
    """`jit_train_step` on `mesh` from `create_train_state` (the state created directly in its shardings): the
    initial params (host copies), the final params (host) and a report."""
    shardings = train.state_shardings(model, optimizer, mesh)
    state = train.create_train_state(model, optimizer, jax.random.key(SEED), shardings)
    # Real copies: on CPU, np.asarray / device_get give zero-copy views of the buffers, and a live view makes
    # XLA skip the donation of that buffer (it copies instead).
    initial = jax.tree.map(lambda x: np.array(x, copy=True), state.params)
    train_step = train.make_train_step(model, optimizer, schedule, dropout_seed=SEED, mesh=mesh)
    step = train.jit_train_step(train_step, shardings, mesh)
    global_batch = global_batch_from_process_local(batch, mesh)
    kernel = "bert/encoder/layer_0/attention/self/query/kernel"
    info: dict[str, Any] = {
        "mesh": list(mesh.devices.shape),
        "vocab_parallel_loss": train.mlm_terms_for(mesh) is not losses.masked_lm_terms,
        # The global batch holds exactly the host batch, in order, whatever the mesh.
        "batch_equal": all(np.array_equal(np.asarray(global_batch[k]), batch[k]) for k in batch),
        "param_spec": _spec(_find(state.params, kernel).sharding.spec),
        "mu_spec": _spec(_find(state.opt_state, kernel, "mu").sharding.spec),
        "devices": len(_find(state.params, kernel).sharding.device_set),
        "losses": [],
        "donated": [],
    }
    for _ in range(num_steps):
        old = state
        state, metrics = step(state, global_batch)
        info["losses"].append(float(metrics["loss"]))
        old_leaves = jax.tree.leaves(old.params) + jax.tree.leaves(old.opt_state)
        info["donated"].append(all(leaf.is_deleted() for leaf in old_leaves))
    info["mlm_accuracy"] = float(metrics["mlm_accuracy"])
    info["batch_deleted"] = any(x.is_deleted() for x in global_batch.values())
    info["step"] = int(state.step)
    # The shards each device really holds, after the steps (the step keeps the state's sharding).
    query = _find(state.params, kernel)
    info["final_spec"] = _spec(query.sharding.spec)
    info["param_shard"] = _shard_shapes(query)
    for moment in ("mu", "nu"):
        info[f"{moment}_shard"] = _shard_shapes(_find(state.opt_state, kernel, moment))
    info["word_shard"] = _shard_shapes(_find(state.params, "word_embeddings/embedding"))
    return initial, jax.device_get(state.params), info


# The meshes (data, fsdp, tensor) of the issue, each compared with one device.
MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8), (1, 2, 4))


def mesh_test_config() -> BertConfig:
    """8 heads and a vocabulary of 997 padded to 1000 rows, so that every mesh above can split the model."""
    return small_config(dropout=0.0).replace(vocab_size=997, vocab_pad_multiple=8, num_attention_heads=8)


def _vocab_parallel_report() -> dict[str, Any]:
    """`vocab_parallel_masked_lm_terms` on a (2, 1, 4) mesh against `masked_lm_terms`: values and gradients."""
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(8, 5, 1000)).astype(np.float32) * 3
    logits[0, 0, [10, 700]] = 50.0  # a tie across two vocab shards: argmax picks the smaller id
    logits[1, 1, [260, 261]] = 50.0  # a tie inside one shard
    ids = rng.integers(0, 1000, (8, 5)).astype(np.int32)
    ids[0, 0], ids[1, 1] = 10, 260
    weights = (rng.random((8, 5)) < 0.8).astype(np.float32)
    mask_weights = weights * (rng.random((8, 5)) < 0.8)  # the predictions whose input was [MASK]
    mask_weights[0, 0] = mask_weights[1, 1] = 1.0  # both ties (correct predictions) among them
    parallel = train.mlm_terms_for(mesh)

    def loss(terms_fn, x):
        sums = terms_fn(x, ids, weights, mask_weights)
        return sums["mlm_loss_sum"] / sums["mlm_count"], sums

    x = jax.device_put(
        logits, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor"))
    )
    (_, plain_sums), plain_grad = jax.value_and_grad(lambda x: loss(losses.masked_lm_terms, x), has_aux=True)(logits)
    (_, par_sums), par_grad = jax.jit(jax.value_and_grad(lambda x: loss(parallel, x), has_aux=True))(x)
    return {
        "is_shard_map": parallel is not losses.masked_lm_terms,
        "plain": {k: np.asarray(v).tolist() for k, v in plain_sums.items()},
        "parallel": {k: np.asarray(v).tolist() for k, v in par_sums.items()},
        "grad_max_abs_diff": float(np.abs(np.asarray(plain_grad) - np.asarray(par_grad)).max()),
        "grad_max_abs": float(np.abs(np.asarray(plain_grad)).max()),
    }


def _multidevice_report() -> dict[str, Any]:
    config = mesh_test_config()
    model = BertForPreTraining(config)
    opt_config = adamw_config()
    optimizer, schedule = make_optimizer(opt_config), learning_rate_schedule(opt_config)
    batch = numpy_batch(config)
    single_mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    initial, single, single_info = _run_steps(model, optimizer, schedule, single_mesh, batch, 2)
    report: dict[str, Any] = {
        "device_count": jax.device_count(),
        "single": single_info,
        "params_max_abs": max(float(np.abs(x).max()) for x in flat(single).values()),
        "update_max_abs": max_abs_diff(single, initial),
        "meshes": {},
        "vocab_parallel": _vocab_parallel_report(),
    }
    for shape in MESHES:
        mesh = make_mesh(MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2]))
        mesh_initial, params, info = _run_steps(model, optimizer, schedule, mesh, batch, 2)
        info["initial_max_abs_diff"] = max_abs_diff(mesh_initial, initial)
        info["params_max_abs_diff"] = max_abs_diff(params, single)
        report["meshes"]["x".join(map(str, shape))] = info
    return report


class _Subprocess:
    """`python -m tests.test_train` with 8 simulated devices, started once, early, so that its compiles overlap
    the single-device tests' (XLA compiles mostly on one core)."""

    def __init__(self) -> None:
        # Both runs compared are compiled alike, at LLVM level 0 (`simulated_devices_env`).
        env = simulated_devices_env(NUM_SIM_DEVICES, fast_compile=True)
        self.stdout, self.stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.test_train"], cwd=REPO_ROOT, env=env, stdout=self.stdout, stderr=self.stderr
        )

    def report(self) -> dict[str, Any]:
        returncode = self.process.wait(timeout=300)
        self.stdout.seek(0)
        self.stderr.seek(0)
        assert returncode == 0, self.stderr.read()[-4000:]
        return json.loads(self.stdout.read().strip().splitlines()[-1])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stdout.close()
        self.stderr.close()


@pytest.fixture(scope="module")
def _multidevice_process() -> Any:
    started = _Subprocess()
    yield started
    started.close()


@pytest.fixture(scope="module", autouse=True)
def _start_multidevice_early(request) -> None:
    """Starts the subprocess before the first test of this module when any selected test of it needs it."""
    mine = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    if any("multidevice" in getattr(item, "fixturenames", ()) for item in mine):
        request.getfixturevalue("_multidevice_process")


@pytest.fixture(scope="module")
def multidevice(_multidevice_process) -> dict[str, Any]:
    return _multidevice_process.report()


@pytest.mark.parametrize("shape", ["x".join(map(str, m)) for m in MESHES])
def test_sharded_train_steps_match_a_single_device(multidevice, shape):
    assert multidevice["device_count"] == NUM_SIM_DEVICES
    sharded, single = multidevice["meshes"][shape], multidevice["single"]
    assert sharded["devices"] == NUM_SIM_DEVICES and single["devices"] == 1
    assert sharded["step"] == single["step"] == 2
    # The same data in the same order, the same initial params (created directly in the mesh's shardings).
    assert sharded["batch_equal"] and single["batch_equal"]
    assert sharded["initial_max_abs_diff"] == 0.0
    # The vocab-parallel (shard_map) loss runs exactly where the mesh splits the vocabulary.
    assert sharded["vocab_parallel_loss"] == (sharded["mesh"][2] > 1)
    assert single["vocab_parallel_loss"] is False
    # The same losses and the same params after two AdamW steps (which moved them by ~2 * lr), fp32 1e-5.
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5, atol=0)
    assert sharded["mlm_accuracy"] == pytest.approx(single["mlm_accuracy"], abs=1e-6)
    assert multidevice["update_max_abs"] > LR
    assert sharded["params_max_abs_diff"] <= 1e-5 * max(1.0, multidevice["params_max_abs"])


def test_vocab_parallel_loss_equals_the_plain_loss(multidevice):
    report = multidevice["vocab_parallel"]
    assert report["is_shard_map"]
    for name, value in report["plain"].items():
        assert report["parallel"][name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
    # How often each id was predicted and was the answer at [MASK]: whole counts over the whole (padded) vocabulary.
    for name in ("mlm_mask_predicted_counts", "mlm_mask_target_counts"):
        assert len(report["plain"][name]) == 1000 and sum(report["plain"][name]) == report["plain"]["mlm_mask_count"]
    # The two planted ties are predicted correctly only if the smallest id among the maxima wins.
    assert report["plain"]["mlm_correct_sum"] >= 2
    assert report["plain"]["mlm_mask_correct_sum"] >= 2 and report["parallel"]["mlm_mask_count"] > 0
    assert report["grad_max_abs_diff"] <= 1e-6 * max(1.0, report["grad_max_abs"])


def test_sharded_state_is_really_sharded(multidevice):
    sharded, single = multidevice["meshes"]["2x2x2"], multidevice["single"]
    # query kernel [hidden 64, heads 8, head_dim 8]: hidden over fsdp, heads over tensor; Adam's moments alike,
    # and the step keeps the sharding.
    assert sharded["param_spec"] == sharded["mu_spec"] == sharded["final_spec"] == ["fsdp", "tensor", None]
    assert sharded["param_shard"] == sharded["mu_shard"] == sharded["nu_shard"] == [[32, 4, 8]]
    assert sharded["word_shard"] == [[500, 32]]  # [padded vocab 1000, hidden 64] over (tensor, fsdp)
    assert multidevice["meshes"]["1x1x8"]["word_shard"] == [[125, 64]]
    assert single["param_shard"] == single["mu_shard"] == [[64, 8, 8]]


def test_train_step_donates_the_state(multidevice):
    # The CPU client supports donation: the input state's params and optimizer state are deleted after each
    # call (updated in place); the batch is not donated.
    for info in (*multidevice["meshes"].values(), multidevice["single"]):
        assert info["donated"] == [True, True]
        assert info["batch_deleted"] is False


if __name__ == "__main__":
    print(json.dumps(_multidevice_report()))


# ---------------------------------------------------------------------------------------------------------------
# 7. One compilation for the whole run


def test_nothing_recompiles_after_the_first_step(model, adamw_state):
    """New batches of the same shapes, a growing step counter and the updated state reuse one executable."""
    config = adamw_config()
    step = jax.jit(
        train.make_train_step(model, make_optimizer(config), learning_rate_schedule(config), dropout_seed=SEED)
    )
    state = host_copy(adamw_state)  # a private copy: the shared fixture must stay untouched
    for seed in range(4):
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in numpy_batch(small_config(), seed=seed).items()})
    jax.block_until_ready(metrics)
    assert int(state.step) == 4
    assert step._cache_size() == 1


def test_nsp_weight_zero_trains_the_masked_lm_alone():
    # At weight 0 the objective's gradient reaches neither the NSP classifier nor the pooler (only NSP reads them);
    # at weight 1 it does, and every other gradient is the MLM's plus the NSP's, so at 0 it is the MLM loss's own.
    config = small_config()
    model = BertForPreTraining(config)
    params = init_params(model, jax.random.key(SEED))
    batch = {k: jnp.asarray(v) for k, v in numpy_batch(config).items()}

    def objective(p, weight):
        mlm_logits, nsp_logits = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                                             batch["token_type_ids"], masked_lm_positions=batch["masked_lm_positions"],
                                             deterministic=True)  # fmt: skip
        return losses.pretraining_loss(mlm_logits, nsp_logits, batch, nsp_loss_weight=weight)[0]

    def mlm_only(p):
        mlm_logits, _ = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                    masked_lm_positions=batch["masked_lm_positions"], deterministic=True)  # fmt: skip
        terms = losses.masked_lm_terms(mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
        return terms["mlm_loss_sum"] / terms["mlm_count"]

    without, with_nsp, reference = (flat(jax.grad(f)(params)) for f in (
        lambda p: objective(p, 0.0), lambda p: objective(p, 1.0), mlm_only))  # fmt: skip
    nsp_only = [name for name in without if "seq_relationship" in name or "pooler" in name]
    assert len(nsp_only) == 4  # pooler and classifier, kernel and bias
    for name in nsp_only:
        assert not np.any(without[name]), name
        assert np.abs(with_nsp[name]).max() > 1e-4, name
    for name in without:
        np.testing.assert_allclose(without[name], reference[name], rtol=1e-5, atol=1e-7, err_msg=name)
