"""The train state and the jitted pretraining train/eval steps, sharded over a device mesh (this is pjit).

`TrainState` holds the step, the float32 params and the optimizer state. `create_train_state` initializes
them directly in their final sharding (a jitted init with `out_shardings`, so no device ever holds the
full model unless the mesh says so). `make_train_step` returns one function that runs the forward and
backward pass (over `num_microbatches` microbatches with `lax.scan` when accumulating), the optimizer
update and the metrics; `jit_train_step` compiles it with explicit in/out shardings and the state
donated. Dropout keys are `fold_in(key(seed), step)`: a pure function of (seed, step), so a resumed run
draws exactly the dropout masks the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.training import losses, optim

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

BATCH_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


# The optional keys of a packed batch: [B, T] document ids (0 on padding) and positions restarting per document.
PACKED_KEYS = ("document_ids", "position_ids")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _forward(model: nn.Module, params: Any, batch: Batch, deterministic: bool, rng: jax.Array | None):
    rngs = None if deterministic else {"dropout": rng}
    # Packed batches (several documents per row) carry each token's document and its position in it.
    packed = {key: batch[key] for key in PACKED_KEYS if key in batch}
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        batch["masked_lm_positions"],
        deterministic=deterministic,
        rngs=rngs,
        **packed,
    )


def init_fn(model: nn.Module, optimizer: optax.GradientTransformation, seq_length: int = 8) -> Callable:
    """`rng -> TrainState` (params from the model's initializers, fresh optimizer state)."""

    def init(rng: jax.Array) -> TrainState:
        ids = jnp.zeros((1, seq_length), jnp.int32)
        params = nn.meta.unbox(model.init(rng, ids, deterministic=True)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    return init


def state_shardings(
    model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh, rules: Any = None
) -> TrainState:
    """NamedShardings for every leaf of the train state.

    Params follow their logical axes; an optimizer-state leaf whose dict-key path and shape are those of a
    param (Adam's mu and nu, LAMB's slots: optax states mirror the param tree) is sharded like that param;
    everything else (step, counts) is replicated.
    """
    rules = sharding.LOGICAL_AXIS_RULES if rules is None else rules
    params_sharding = sharding.param_shardings(model, mesh, rules)
    abstract = jax.eval_shape(init_fn(model, optimizer), jax.random.key(0))
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {
        _dict_keys(path): (leaf_sharding, shape.shape)
        for (path, leaf_sharding), shape in zip(
            jax.tree_util.tree_flatten_with_path(params_sharding)[0],
            jax.tree_util.tree_leaves(abstract.params),
            strict=True,
        )
    }

    def choose(path: Any, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        match = by_path.get(_dict_keys(path))
        return match[0] if match is not None and match[1] == leaf.shape else replicated

    opt = jax.tree_util.tree_map_with_path(choose, abstract.opt_state)
    return TrainState(step=replicated, params=params_sharding, opt_state=opt)


def _dict_keys(path: Any) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def abstract_train_state(
    model: nn.Module, optimizer: optax.GradientTransformation, shardings: TrainState, seed: int
) -> TrainState:
    """The train state as `ShapeDtypeStruct`s carrying `shardings` (nothing allocated): for lowering steps."""
    shapes = jax.eval_shape(init_fn(model, optimizer), jax.random.key(seed))
    return jax.tree_util.tree_map(
        lambda shape, where: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=where), shapes, shardings
    )


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    shardings: TrainState | None = None,
) -> TrainState:
    """A new train state, created by a jitted init directly in `shardings` (when given)."""
    init = init_fn(model, optimizer)
    jitted = jax.jit(init) if shardings is None else jax.jit(init, out_shardings=shardings)
    lowered = jitted.lower(rng)
    devices = jax.tree_util.tree_leaves(shardings)[0].device_set if shardings is not None else jax.devices()
    if all(device.platform == "cpu" for device in devices):
        return _compile_for_one_run(lowered)(rng)
    return lowered.compile()(rng)


# XLA:CPU's compile-time preset. The init program runs once and is mostly random draws, each of which XLA splits
# into ~13 loop fusions to compile (1,024 fusions for BERT-base): its compile time is what a user waits for, and
# the preset halves it (11.8 -> 6.6 s for BERT-base) with the same values (tests/test_train.py).
_CPU_FAST_COMPILE = {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_COMPILE"}


def _compile_for_one_run(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """`lowered` compiled for a single run on CPU: with the fast-compile preset where this XLA knows it."""
    try:
        return lowered.compile(compiler_options=_CPU_FAST_COMPILE)
    except Exception:  # an XLA without the option: compile as usual (a real error comes back from that)
        return lowered.compile()


def mlm_terms_for(mesh: Mesh | None, rules: Any = None) -> losses.MaskedLmTerms:
    """The MLM loss sums to use on `mesh`: vocab-parallel (`shard_map`) when the vocabulary is split.

    With the vocabulary over a mesh axis of size > 1 the logits stay split and each device reduces its
    slice; otherwise (one device, or no vocab split) the plain `masked_lm_terms`.
    """
    if mesh is None:
        return losses.masked_lm_terms
    rules = sharding.LOGICAL_AXIS_RULES if rules is None else rules
    vocab_axes = [axis for name, axis in rules if name == "vocab" and axis]
    if len(vocab_axes) != 1 or not isinstance(vocab_axes[0], str) or mesh.shape[vocab_axes[0]] == 1:
        return losses.masked_lm_terms
    batch_axes = sharding.batch_sharding(mesh, rules).spec[0]
    return losses.vocab_parallel_masked_lm_terms(mesh, batch_axes, vocab_axes[0])


LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, Metrics]]


def make_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    dropout_seed: int,
    num_microbatches: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`(state, batch) -> (state, metrics)` for any objective: the step both jobs (pretraining, fine-tuning) use.

    `loss_fn(params, batch, dropout_rng) -> (loss, metrics)` is differentiated over `num_microbatches` slices
    of the batch (`lax.scan`), then the optimizer updates the params. Adds grad_norm (before clipping) and
    learning_rate (the one this step used) to the metrics. The dropout key is `fold_in(key(seed), step)`.
    """

    def loss_and_grad(params: Any, batch: Batch, rng: jax.Array) -> tuple[Metrics, Any]:
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        return metrics, grads

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
        metrics, grads = optim.accumulate_gradients(loss_and_grad, state.params, dict(batch), num_microbatches, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    dropout_seed: int,
    num_microbatches: int = 1,
    mesh: Mesh | None = None,
    nsp_loss_weight: float = 1.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pretraining step: `make_step` with the MLM + `nsp_loss_weight` x NSP objective.

    Metrics: loss, mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy (means over the batch), grad_norm (before
    clipping) and learning_rate (the one this step used). With `mesh`, the MLM loss is vocab-parallel
    when the mesh splits the vocabulary (`mlm_terms_for`).
    """
    mlm_terms = mlm_terms_for(mesh)

    def loss_fn(params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        mlm_logits, nsp_logits = _forward(model, params, batch, deterministic=False, rng=rng)
        return losses.pretraining_loss(mlm_logits, nsp_logits, batch, mlm_terms, nsp_loss_weight)

    return make_step(loss_fn, optimizer, schedule, dropout_seed=dropout_seed, num_microbatches=num_microbatches)


def make_eval_step(
    model: nn.Module, mesh: Mesh | None = None, mask_id: int | None = None
) -> Callable[[Any, Batch], Metrics]:
    """`(params, batch) -> sums` (see `losses.pretraining_terms`); add them over batches, then `summarize`.

    With `mask_id`, the accuracy at the predictions whose input was [MASK] is summed apart as well.
    """
    mlm_terms = mlm_terms_for(mesh)

    def eval_step(params: Any, batch: Batch) -> Metrics:
        mlm_logits, nsp_logits = _forward(model, params, batch, deterministic=True, rng=None)
        return losses.pretraining_terms(mlm_logits, nsp_logits, batch, mlm_terms, mask_id=mask_id)

    return eval_step


def jit_train_step(
    train_step: Callable, shardings: TrainState, mesh: Mesh
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The train step compiled with explicit shardings (state in/out as given, batch over data+fsdp,
    metrics replicated) and the input state donated, so params and optimizer state are updated in place."""
    batch = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        sharding.traced_in_mesh(train_step, mesh),
        in_shardings=(shardings, batch),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )


def jit_eval_step(eval_step: Callable, params_sharding: Any, mesh: Mesh) -> Callable[[Any, Batch], Metrics]:
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        sharding.traced_in_mesh(eval_step, mesh),
        in_shardings=(params_sharding, sharding.batch_sharding(mesh)),
        out_shardings=replicated,
    )
