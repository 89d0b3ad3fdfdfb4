"""The fine-tuning job plan: config + task + encoder config -> everything the job compiles, checked first.

    job = make_finetune_plan(config, task, model_config, total_steps)
    state, metrics = job.train_step(state, batch); outputs = job.predict_step(state.params, inputs)

The counterpart of `bert_jax.plan` for `bert-jax-finetune`: the mesh (checked against the devices and the
batch), the model config with its vocabulary padded to the vocab shards, the task's model, the optimizer and
its schedule over `total_steps` (warmup `warmup_fraction` of them), the state shardings, and the jitted train
step (the task's loss, donated state) and prediction step. Nothing is traced here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax import configs, optim, sharding, train
from bert_jax.finetune.tasks import Task


class FinetuneConfigError(ValueError):
    """A fine-tuning configuration that cannot run; raised before anything compiles."""


def train_steps(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int]:
    """(total train steps, steps per epoch) for a training split of `num_examples` rows."""
    per_epoch = num_examples // config.global_batch_size
    if per_epoch < 1:
        raise FinetuneConfigError(
            f"The training split has {num_examples} examples, fewer than global_batch_size={config.global_batch_size}."
        )
    total = config.num_train_steps or math.ceil(config.num_epochs * per_epoch)
    if total < 1:
        raise FinetuneConfigError("Set num_train_steps or num_epochs to a positive value.")
    return total, per_epoch


def check_seq_length(config: ml_collections.ConfigDict, model_config: configs.BertConfig) -> None:
    """The sequences fit the model's position embeddings (checked before any data is tokenized)."""
    if config.max_seq_length > model_config.max_position_embeddings:
        raise FinetuneConfigError(
            f"max_seq_length={config.max_seq_length} exceeds the model's max_position_embeddings="
            f"{model_config.max_position_embeddings}."
        )


def optimizer_config(config: ml_collections.ConfigDict, total_steps: int) -> optim.OptimizerConfig:
    """AdamW at the config's rate, warmup `warmup_fraction` of the steps, linear decay, clip 1.0."""
    return optim.OptimizerConfig(
        name="adamw",
        learning_rate=config.learning_rate,
        warmup_steps=int(config.warmup_fraction * total_steps),
        total_steps=total_steps,
        weight_decay=config.weight_decay,
        clip_global_norm=1.0,
    )


@dataclasses.dataclass
class FinetunePlan:
    """What the fine-tuning job compiles and runs (see the module docstring)."""

    config: ml_collections.ConfigDict
    task: Task
    model_config: configs.BertConfig
    optimizer_config: optim.OptimizerConfig
    mesh: Mesh
    model: nn.Module
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: train.TrainState
    train_step: Callable[..., Any]
    predict_step: Callable[..., Any]


def make_finetune_plan(
    config: ml_collections.ConfigDict,
    task: Task,
    model_config: configs.BertConfig,
    total_steps: int,
    devices: Sequence[Any] | None = None,
) -> FinetunePlan:
    """The checked plan on `devices` (default: every device of the job); raises `ValueError`s that name the fix."""
    devices = list(jax.devices() if devices is None else devices)
    mesh_config = sharding.MeshConfig(**config.mesh.to_dict())
    vocab_shards = sharding.vocab_shards(mesh_config, len(devices))
    model_config = model_config.replace(vocab_pad_multiple=math.lcm(model_config.vocab_pad_multiple, vocab_shards))
    sharding.validate_parallelism(model_config, mesh_config, config.global_batch_size, len(devices))
    check_seq_length(config, model_config)
    settings = optimizer_config(config, total_steps)
    mesh = sharding.make_mesh(mesh_config, devices)
    model = task.model(model_config)
    optimizer = optim.make_optimizer(settings)
    schedule = optim.learning_rate_schedule(settings)
    shardings = train.state_shardings(model, optimizer, mesh)

    def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        outputs = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return task.loss(outputs, batch)

    train_step = train.jit_train_step(
        train.make_step(loss_fn, optimizer, schedule, dropout_seed=config.seed + 1), shardings, mesh
    )
    predict_step = jax.jit(
        lambda params, batch: model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        ),
        in_shardings=(shardings.params, sharding.batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )
    return FinetunePlan(
        config=config,
        task=task,
        model_config=model_config,
        optimizer_config=settings,
        mesh=mesh,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        shardings=shardings,
        train_step=train_step,
        predict_step=predict_step,
    )
