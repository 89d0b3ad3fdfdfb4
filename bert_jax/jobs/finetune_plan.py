"""The fine-tuning job plan: config + task + encoder config -> everything the job compiles, checked first.

    job = make_finetune_plan(config, task, model_config, total_steps)
    state, metrics = job.train_step(state, batch); outputs = job.predict_step(state.params, inputs)

The fine-tuning implementation of `bert_jax.training.plan.Plan` (as `pretrain_plan` is pretraining's): the mesh (checked against the devices and the
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
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax import sharding, tokenizers
from bert_jax.errors import ConfigError
from bert_jax.finetune.tasks import ConllNer, GlueClassification, Squad, Task, make_task
from bert_jax.jobs.config import FinetuneConfig, steps_per_epoch
from bert_jax.models import attention, families, flops
from bert_jax.training import checkpoint, optim, train, warm_start

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def task_of(job: FinetuneConfig) -> Task:
    return make_task(job.task, job.squad)


def model_and_tokenizer(
    job: FinetuneConfig,
) -> tuple[families.ModelConfig, tokenizers.Tokenizer, warm_start.Source | None, dict[str, str]]:
    """The encoder config, the tokenizer, the warm-start source (if any) and the tokenizer files to save.

    With `init_from` the source decides the model (its config with the job's `model.*` fields over it) and must
    be of the job's `model.family`; without it, `model.size` of that family, with the vocabulary's size (and, for
    the modern family, its special tokens' ids). The tokenizer is the config's `vocab_file` or `tokenizer_file`
    (at most one: the config's parse checks), else the one saved with `init_from` (its vocab.txt, else its
    tokenizer.json)."""
    source = warm_start.read_source(job.init_from) if job.init_from else None
    if source is not None:
        warm_start.check_family(source, job.model.family)  # before its config takes the job's fields
    payload = checkpoint.tokenizer_payload(vocab_file=job.vocab_file or None, tokenizer_file=job.tokenizer_file or None)
    if not payload and source is not None:
        payload = source.tokenizer_files
    if checkpoint.payload_tokenizer_kind(payload) is None:
        raise ConfigError(
            "No tokenizer: set --config.vocab_file (a WordPiece vocab.txt) or --config.tokenizer_file (a Hugging Face "
            f"tokenizer.json); the source {job.init_from or '(none)'} has neither beside its weights."
        )
    tokenizer = checkpoint.load_payload_tokenizer(payload, tempfile.mkdtemp(prefix="bert_jax_vocab_"), job.lowercase)
    if source is not None:
        model_config = source.config.replace(**job.model.fields)
    else:
        special = families.tokenizer_fields(families.family(job.model.family), tokenizer.special_ids)
        model_config = job.model.model_config(vocab_size=tokenizer.vocab_size, **special)
    if model_config.vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"The vocabulary has {tokenizer.vocab_size} entries but the model {model_config.vocab_size}; use the "
            "vocab.txt or tokenizer.json that belongs to init_from."
        )
    return model_config, tokenizer, source, payload


def check_seq_length(job: FinetuneConfig, model_config: families.ModelConfig) -> None:
    """The sequences fit the model's position embeddings (checked before any data is tokenized)."""
    if job.max_seq_length > model_config.max_position_embeddings:
        raise ConfigError(
            f"max_seq_length={job.max_seq_length} exceeds the model's max_position_embeddings="
            f"{model_config.max_position_embeddings}."
        )


def check_data_dir(job: FinetuneConfig, task: Task) -> None:
    """`data_dir` is set: the recipes leave it empty, for the user's copy of the task's data (checked first).

    Not a parse-time check: the compile tool compiles a fine-tuning config without its data."""
    if job.data_dir:
        return
    if isinstance(task, GlueClassification):
        glue, split = task.glue, job.eval_split or task.eval_split
        files = f"{glue.directory}/{glue.splits['train']} and {glue.directory}/{glue.splits.get(split, split)}"
        where = f"the GLUE root, holding {files}"
    elif isinstance(task, Squad):
        names = [task.options.train_file, task.options.dev_file]
        where = f"the folder with SQuAD's {' and '.join(n for n in names if n)}"
    elif isinstance(task, ConllNer):
        where = "the folder with CoNLL-2003's train.txt, valid.txt and test.txt"
    else:
        where = f"the folder with {task.name}'s data"
    raise ConfigError(f"data_dir is not set: pass --config.data_dir=DIR, {where}.")


@dataclasses.dataclass
class FinetunePlan:
    """What the fine-tuning job compiles and runs (see the module docstring)."""

    config: FinetuneConfig
    task: Task
    model_config: families.ModelConfig
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
        return self.config.global_batch_size

    @property
    def num_microbatches(self) -> int:
        return 1

    @property
    def splits_batch(self) -> bool:
        """The fine-tuning step runs its batch whole: the fit check's changes are remat and FSDP only."""
        return False

    @property
    def seq_length(self) -> int:
        return self.config.max_seq_length

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
    job: FinetuneConfig,
    task: Task,
    model_config: families.ModelConfig,
    total_steps: int,
    devices: Sequence[Any] | None = None,
) -> FinetunePlan:
    """The checked plan on `devices` (default: every device of the job); raises `ValueError`s that name the fix."""
    devices = list(jax.devices() if devices is None else devices)
    if job.num_microbatches != 1:
        raise ConfigError("num_microbatches must be 1 for fine-tuning (its step runs the batch whole).")
    mesh_config = job.mesh
    vocab_shards = sharding.vocab_shards(mesh_config, len(devices))
    model_config = model_config.replace(vocab_pad_multiple=math.lcm(model_config.vocab_pad_multiple, vocab_shards))
    sharding.validate_parallelism(model_config, mesh_config, job.global_batch_size, len(devices))
    check_seq_length(job, model_config)
    attention.check_devices(model_config.attention_kernel, devices)
    settings = job.optimizer_config(total_steps)
    mesh = sharding.make_mesh(mesh_config, devices)
    model = task.model(model_config, job.recipe.head_init)
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
        train.make_step(loss_fn, optimizer, schedule, dropout_seed=job.seed + 1), shardings, mesh
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
        config=job,
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


def compile_plan(job: FinetuneConfig, devices: Sequence[Any]) -> FinetunePlan:
    """The plan for an ahead-of-time compile (`bert-jax-compile`), without the task's data.

    The program's shapes do not depend on the training split's size, which only sets the schedule's length:
    `num_train_steps`, or a placeholder of 1,000 steps when the config counts epochs.
    """
    model_config = model_and_tokenizer(job)[0]
    return make_finetune_plan(job, task_of(job), model_config, job.num_train_steps or 1000, devices)


__all__ = [
    "FinetunePlan",
    "check_data_dir",
    "check_seq_length",
    "compile_plan",
    "make_finetune_plan",
    "model_and_tokenizer",
    "steps_per_epoch",
    "task_of",
]
