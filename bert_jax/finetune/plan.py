"""The fine-tuning job plan: config + task + encoder config -> everything the job compiles, checked first.

    job = make_finetune_plan(config, task, model_config, total_steps)
    state, metrics = job.train_step(state, batch); outputs = job.predict_step(state.params, inputs)

The counterpart of `bert_jax.training.plan` for `bert-jax-finetune`: the mesh (checked against the devices and the
batch), the model config with its vocabulary padded to the vocab shards, the task's model, the optimizer and
its schedule over `total_steps` (warmup `warmup_fraction` of them, the details from `recipes`), the state shardings, and the jitted train
step (the task's loss, donated state) and prediction step. Nothing is traced here.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax import sharding, tokenizers
from bert_jax.finetune import recipes
from bert_jax.finetune.tasks import ConllNer, GlueClassification, Squad, SquadOptions, Task, make_task
from bert_jax.models import attention, configs, flops
from bert_jax.training import checkpoint, optim, train, warm_start

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class FinetuneConfigError(ValueError):
    """A fine-tuning configuration that cannot run; raised before anything compiles."""


def task_from_config(config: ml_collections.ConfigDict) -> Task:
    squad = SquadOptions(**config.squad.to_dict()) if config.get("squad") else None
    return make_task(config.task, squad)


def model_and_tokenizer(
    config: ml_collections.ConfigDict,
) -> tuple[configs.BertConfig, tokenizers.Tokenizer, warm_start.Source | None, dict[str, str]]:
    """The encoder config, the tokenizer, the warm-start source (if any) and the tokenizer files to save."""
    source = warm_start.read_source(config.init_from) if config.init_from else None
    payload = checkpoint.tokenizer_payload(config.vocab_file) if config.vocab_file else {}
    if not payload and source is not None:
        payload = source.tokenizer_files
    if "vocab.txt" not in payload:
        raise FinetuneConfigError(
            "No vocabulary: set --config.vocab_file (the source "
            f"{config.init_from or '(none)'} has no vocab.txt beside its weights)."
        )
    scratch = tempfile.mkdtemp(prefix="bert_jax_vocab_")
    vocab = checkpoint.write_tokenizer_files(payload, scratch)["vocab_file"]
    tokenizer = tokenizers.load_tokenizer(vocab, None, config.lowercase)
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "size" and v is not None}
    if source is not None:
        model_config = source.config.replace(**overrides)
    else:
        model_config = configs.named_config(config.model.size, vocab_size=tokenizer.vocab_size, **overrides)
    if model_config.vocab_size != tokenizer.vocab_size:
        raise FinetuneConfigError(
            f"The vocabulary has {tokenizer.vocab_size} entries but the model {model_config.vocab_size}; use the "
            "vocab.txt that belongs to init_from."
        )
    return model_config, tokenizer, source, payload


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


def check_data_dir(config: ml_collections.ConfigDict, task: Task) -> None:
    """`data_dir` is set: the recipes leave it empty, for the user's copy of the task's data (checked first)."""
    if config.get("data_dir"):
        return
    if isinstance(task, GlueClassification):
        glue, split = task.glue, config.get("eval_split") or task.eval_split
        files = f"{glue.directory}/{glue.splits['train']} and {glue.directory}/{glue.splits.get(split, split)}"
        where = f"the GLUE root, holding {files}"
    elif isinstance(task, Squad):
        names = [task.options.train_file, task.options.dev_file]
        where = f"the folder with SQuAD's {' and '.join(n for n in names if n)}"
    elif isinstance(task, ConllNer):
        where = "the folder with CoNLL-2003's train.txt, valid.txt and test.txt"
    else:
        where = f"the folder with {task.name}'s data"
    raise FinetuneConfigError(f"data_dir is not set: pass --config.data_dir=DIR, {where}.")


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

    @property
    def eval_step(self) -> Callable[..., Any]:
        """The program the eval split runs: the prediction step."""
        return self.predict_step

    @property
    def global_batch_size(self) -> int:
        return int(self.config.global_batch_size)

    @property
    def seq_length(self) -> int:
        return int(self.config.max_seq_length)

    def flops_per_sequence(self) -> float:
        """Model FLOPs of one training sequence: the encoder's (a task head's are negligible)."""
        return flops.training_flops_per_sequence(self.model_config, self.seq_length, 0)

    def abstract_state(self) -> train.TrainState:
        """The train state as `ShapeDtypeStruct`s carrying their shardings (no memory is allocated)."""
        return train.abstract_train_state(self.model, self.optimizer, self.shardings, self.config.seed)

    def abstract_batch(self, *, with_targets: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
        """A global batch as the job places it (rows over data x fsdp): the inputs, and the task's targets."""
        where = sharding.batch_sharding(self.mesh)
        rows, seq = self.global_batch_size, self.seq_length
        spec: dict[str, tuple[tuple[int, ...], Any]] = {name: ((seq,), np.int32) for name in INPUT_KEYS}
        if with_targets:
            spec |= self.task.target_spec(seq)
        return {k: jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=where) for k, (shape, dtype) in spec.items()}

    def abstract_train_args(self) -> tuple[train.TrainState, dict[str, jax.ShapeDtypeStruct]]:
        return self.abstract_state(), self.abstract_batch()

    def abstract_eval_args(self) -> tuple[Any, dict[str, jax.ShapeDtypeStruct]]:
        """The arguments of `predict_step` (the eval split runs in batches of global_batch_size)."""
        return self.abstract_state().params, self.abstract_batch(with_targets=False)


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
    attention.check_devices(model_config.attention_kernel, devices)
    settings = recipes.optimizer_config(config, total_steps)
    mesh = sharding.make_mesh(mesh_config, devices)
    model = task.model(model_config, recipes.resolve(config.get("optimizer")).head_init)
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
        sharding.traced_in_mesh(
            lambda params, batch: model.apply(
                {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
            ),
            mesh,
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


def compile_plan(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> FinetunePlan:
    """The plan for an ahead-of-time compile (`bert-jax-compile`), without the task's data.

    The program's shapes do not depend on the training split's size, which only sets the schedule's length:
    `num_train_steps`, or a placeholder of 1,000 steps when the config counts epochs.
    """
    model_config = model_and_tokenizer(config)[0]
    return make_finetune_plan(config, task_from_config(config), model_config, config.num_train_steps or 1000, devices)
