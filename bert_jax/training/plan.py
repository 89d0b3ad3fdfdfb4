"""The pretraining job plan: a config -> everything the job compiles, checked before anything compiles.

    plan = make_plan(config)                       # this host's devices (the job, the benchmark)
    plan = make_plan(config, devices=topology)     # a TPU slice's devices on a CPU host (bert-jax-compile)
    compiled = plan.train_step.lower(*plan.abstract_train_args()).compile()

`bert-jax-pretrain` (`pretrain_loop`), `bert-jax-benchmark` (`benchmark`) and `bert-jax-compile` (`aot`) all
build their program here, so what is benchmarked or compiled ahead of time for a TPU is exactly what the job
runs: the same model config (vocabulary padded to the vocab shards of the mesh), mesh, state shardings,
optimizer and schedule, microbatches, the vocab-parallel MLM loss where the mesh splits the vocabulary, and
the jitted train and eval steps with their shardings and donation. Every check a user's config can fail
(job settings, vocabulary, model fields, optimizer fields, mesh against the device count and the batch)
runs in `make_plan` before anything is traced; they raise `JobConfigError` or `sharding.ConfigError`, both
`ValueError`s whose message names the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from bert_jax import sharding, tokenizers
from bert_jax.data import batch_workers, corpus
from bert_jax.models import attention, configs, flops, structured_init
from bert_jax.models.bert import BertForPreTraining
from bert_jax.training import optim, train


class JobConfigError(ValueError):
    """A job configuration that cannot run; raised before anything compiles."""


# Host dtypes of a pretraining batch (`pipeline.PretrainingBatches`), for abstract batches.
BATCH_DTYPES = {
    "input_ids": np.int32,
    "attention_mask": np.int32,
    "token_type_ids": np.int32,
    "masked_lm_positions": np.int32,
    "masked_lm_ids": np.int32,
    "masked_lm_weights": np.float32,
    "next_sentence_labels": np.int32,
    "example_weights": np.float32,  # eval batches only: 0 marks the rows that pad the split's last batch
}


def check_job(config: ml_collections.ConfigDict) -> None:
    """The job-level settings (steps, intervals, checkpoints, microbatches) make sense together."""
    if config.num_train_steps < 1:
        raise JobConfigError(f"num_train_steps must be >= 1, got {config.num_train_steps}.")
    if min(config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps) < 1:
        raise JobConfigError("log_every_steps, eval_every_steps and checkpoint_every_steps must be >= 1.")
    if config.max_checkpoints_to_keep < 1:
        raise JobConfigError(f"max_checkpoints_to_keep must be >= 1, got {config.max_checkpoints_to_keep}.")
    if config.num_microbatches < 1 or config.global_batch_size % config.num_microbatches:
        raise JobConfigError(
            f"global_batch_size={config.global_batch_size} is not divisible by num_microbatches="
            f"{config.num_microbatches}."
        )
    if not 0.0 <= config.get("nsp_loss_weight", 1.0) <= 100.0:
        raise JobConfigError(
            f"nsp_loss_weight must be in [0, 100], got {config.nsp_loss_weight}: 1 is BERT's objective (MLM + NSP), "
            "0 trains the masked LM alone."
        )
    data = config.get("data")
    if data is not None and "num_workers" in data:
        try:
            batch_workers.resolve_num_workers(data.num_workers)
        except ValueError as error:
            raise JobConfigError(str(error)) from None


def vocabulary(config: ml_collections.ConfigDict) -> tuple[int, dict[str, int]]:
    """(vocabulary size, special token ids) of the job: from the tokenizer files, or from a prebuilt corpus's
    metadata when the config names only the corpus."""
    data = config.data
    if data.get("corpus_dir") and not (data.vocab_file or data.get("spm_model")):
        found = corpus.find_dataset_dirs(data.corpus_dir)
        if len(found) == 1:
            metadata = corpus.corpus_metadata(found[0])
            return int(metadata["vocab_size"]), {k: int(v) for k, v in metadata["special_ids"].items()}
    tokenizer = tokenizers.load_tokenizer(data.vocab_file or None, data.get("spm_model") or None, data.lowercase)
    return tokenizer.vocab_size, dict(tokenizer.special_ids)


def vocab_size(config: ml_collections.ConfigDict) -> int:
    """The vocabulary size: from the tokenizer files, or from a prebuilt corpus's metadata."""
    return vocabulary(config)[0]


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> configs.BertConfig:
    """The named model size with the config's overrides and the vocabulary's size."""
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "size" and v is not None}
    if overrides.get("vocab_size", vocab_size) != vocab_size:
        raise JobConfigError(
            f"model.vocab_size={overrides['vocab_size']} does not match the vocabulary ({vocab_size} entries); "
            "drop model.vocab_size (it is taken from the vocab) or use the matching vocab file."
        )
    overrides["vocab_size"] = vocab_size
    return configs.named_config(config.model.size, **overrides)


def optimizer_config(config: ml_collections.ConfigDict) -> optim.OptimizerConfig:
    """`config.optimizer` as an `OptimizerConfig`; unknown fields are an error.

    The schedule runs over `optimizer.total_steps` when that is set (> 0), else over `num_train_steps`. Set apart,
    a job trains the first `num_train_steps` updates of a longer schedule, bit for bit (as MaxText's
    `learning_rate_schedule_steps`): a short look at a long recipe's start, or a run cut into rented windows.
    """
    fields = {f.name for f in dataclasses.fields(optim.OptimizerConfig)}
    values = {k: v for k, v in config.optimizer.to_dict().items() if k in fields}
    unknown = sorted(set(config.optimizer.to_dict()) - fields)
    if unknown:
        raise JobConfigError(f"Unknown optimizer setting(s): {', '.join(unknown)}.")
    schedule_steps = values.pop("total_steps", 0) or config.num_train_steps  # 0 (or unset): num_train_steps
    return optim.OptimizerConfig(total_steps=schedule_steps, **values)


@dataclasses.dataclass(frozen=True)
class PretrainPlan:
    """What the pretraining job compiles and runs, built by `make_plan`."""

    config: ml_collections.ConfigDict
    model_config: configs.BertConfig  # vocabulary padding already a multiple of the mesh's vocab shards
    mesh_config: sharding.MeshConfig  # resolved: no -1 left
    optimizer_config: optim.OptimizerConfig
    initialization: structured_init.InitializationConfig  # BERT's own by default (`config.initialization`)
    nsp_loss_weight: float  # the NSP loss's weight in the objective (`config.nsp_loss_weight`; 1 = BERT's)
    mesh: Mesh
    model: BertForPreTraining
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: train.TrainState  # NamedShardings of every state leaf
    train_step: Callable  # jitted: (state, batch) -> (state, metrics); the state donated
    eval_step: Callable  # jitted: (params, batch) -> metric sums

    @property
    def seq_length(self) -> int:
        return int(self.config.data.max_seq_length)

    @property
    def max_predictions(self) -> int:
        return int(self.config.data.max_predictions_per_seq)

    @property
    def global_batch_size(self) -> int:
        return int(self.config.global_batch_size)

    @property
    def eval_batch_size(self) -> int:
        """Sequences per eval step: one microbatch, so evaluating never needs more memory than a train step's
        forward pass (`eval_batches` counts train-sized batches: the job runs `num_microbatches` times as many)."""
        return self.global_batch_size // int(self.config.num_microbatches)

    def flops_per_sequence(self) -> float:
        """Model FLOPs of one training sequence (the MFU numerator; `flops.training_flops_per_sequence`)."""
        return flops.training_flops_per_sequence(self.model_config, self.seq_length, self.max_predictions)

    def abstract_state(self) -> train.TrainState:
        """The train state as `ShapeDtypeStruct`s carrying their shardings (no memory is allocated)."""
        return train.abstract_train_state(self.model, self.optimizer, self.shardings, self.config.seed)

    def abstract_batch(self, rows: int | None = None, *, eval_batch: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
        """A global batch (`rows` sequences, default a train batch) as `ShapeDtypeStruct`s sharded as the job
        places it (rows over data x fsdp); an eval batch (`pipeline.padded_eval_batches`) has `example_weights`."""
        where = sharding.batch_sharding(self.mesh)
        rows = self.global_batch_size if rows is None else rows
        seq, predictions = self.seq_length, self.max_predictions
        shapes = {
            "input_ids": (rows, seq),
            "attention_mask": (rows, seq),
            "token_type_ids": (rows, seq),
            "masked_lm_positions": (rows, predictions),
            "masked_lm_ids": (rows, predictions),
            "masked_lm_weights": (rows, predictions),
            "next_sentence_labels": (rows,),
            "example_weights": (rows,),
        }
        keys = (*train.BATCH_KEYS, "example_weights") if eval_batch else train.BATCH_KEYS
        return {k: jax.ShapeDtypeStruct(shapes[k], BATCH_DTYPES[k], sharding=where) for k in keys}

    def abstract_train_args(self) -> tuple[train.TrainState, dict[str, jax.ShapeDtypeStruct]]:
        """The arguments of `train_step`, abstract: `plan.train_step.lower(*plan.abstract_train_args())`."""
        return self.abstract_state(), self.abstract_batch()

    def abstract_eval_args(self) -> tuple[Any, dict[str, jax.ShapeDtypeStruct]]:
        """The arguments of `eval_step`, abstract (an eval batch is one microbatch of a train batch)."""
        return self.abstract_state().params, self.abstract_batch(self.eval_batch_size, eval_batch=True)


def make_plan(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> PretrainPlan:
    """The checked job plan for `config` on `devices` (default: every device of this job).

    Raises `JobConfigError` / `sharding.ConfigError` (`ValueError`s) for a config that cannot run there.
    Nothing is traced or compiled here; the steps compile on their first call (or `lower().compile()`).
    """
    check_job(config)
    devices = list(jax.devices() if devices is None else devices)
    size, special_ids = vocabulary(config)
    model = model_config(config, size)
    mesh_config = sharding.MeshConfig(**config.mesh.to_dict())
    # The vocabulary rows always split evenly over the mesh: pad to a multiple of the vocab shards too.
    vocab_shards = sharding.vocab_shards(mesh_config, len(devices))
    model = model.replace(vocab_pad_multiple=math.lcm(model.vocab_pad_multiple, vocab_shards))
    sharding.validate_parallelism(model, mesh_config, config.global_batch_size, len(devices))
    attention.check_devices(model.attention_kernel, devices)
    optimizer_settings = optimizer_config(config)
    section = config.get("initialization")
    initialization = structured_init.initialization_config(section.to_dict() if section is not None else None)
    initialization.check_model(model, config.data.max_seq_length)
    mesh = sharding.make_mesh(mesh_config, devices)
    module = BertForPreTraining(model)
    optimizer = optim.make_optimizer(optimizer_settings)
    schedule = optim.learning_rate_schedule(optimizer_settings)
    shardings = train.state_shardings(module, optimizer, mesh)
    nsp_loss_weight = float(config.get("nsp_loss_weight", 1.0))
    step = train.make_train_step(
        module,
        optimizer,
        schedule,
        dropout_seed=config.seed + 1,
        num_microbatches=config.num_microbatches,
        mesh=mesh,
        nsp_loss_weight=nsp_loss_weight,
    )
    return PretrainPlan(
        config=config,
        model_config=model,
        mesh_config=mesh_config.resolve(len(devices)),
        optimizer_config=optimizer_settings,
        initialization=initialization,
        nsp_loss_weight=nsp_loss_weight,
        mesh=mesh,
        model=module,
        optimizer=optimizer,
        schedule=schedule,
        shardings=shardings,
        train_step=train.jit_train_step(step, shardings, mesh),
        eval_step=train.jit_eval_step(
            train.make_eval_step(module, mesh, mask_id=special_ids.get(tokenizers.MASK)), shardings.params, mesh
        ),
    )
