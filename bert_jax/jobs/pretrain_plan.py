"""The pretraining job's plan: a `PretrainConfig` -> everything the job compiles, checked before anything compiles.

    plan = make_plan(job)                       # this host's devices (the job, the benchmark)
    plan = make_plan(job, devices=topology)     # a TPU slice's devices on a CPU host (bert-jax-compile)
    compiled = plan.train_step.lower(*plan.abstract_train_args()).compile()

It implements `bert_jax.training.plan.Plan`: the model config (vocabulary padded to the vocab shards of the
mesh), mesh, state shardings, optimizer and schedule, microbatches, the vocab-parallel MLM loss where the mesh
splits the vocabulary, and the jitted train and eval steps with their shardings and donation. The checks that
need the devices or the vocabulary (mesh against the device count and the batch, the model against the
vocabulary, the attention kernel against the platform) run in `make_plan` before anything is traced; they
raise `ConfigError`s whose message names the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from bert_jax import sharding, tokenizers
from bert_jax.data import corpus
from bert_jax.errors import ConfigError
from bert_jax.jobs.config import PretrainConfig
from bert_jax.models import attention, families, flops, structured_init
from bert_jax.training import optim, train
from bert_jax.training.plan import BATCH_DTYPES


def vocabulary(job: PretrainConfig) -> tuple[int, dict[str, int]]:
    """(vocabulary size, special token ids) of the job: from the tokenizer files, or from a prebuilt corpus's
    metadata when the config names only the corpus."""
    data = job.data
    if data.corpus_dir and not (data.vocab_file or data.spm_model or data.tokenizer_file):
        found = corpus.find_dataset_dirs(data.corpus_dir)
        if len(found) == 1:
            metadata = corpus.corpus_metadata(found[0])
            return int(metadata["vocab_size"]), {k: int(v) for k, v in metadata["special_ids"].items()}
    tokenizer = tokenizers.load_tokenizer(
        data.vocab_file or None, data.spm_model or None, data.lowercase, tokenizer_file=data.tokenizer_file or None
    )
    return tokenizer.vocab_size, dict(tokenizer.special_ids)


def model_config(
    job: PretrainConfig, vocab_size: int, special_ids: Mapping[str, int] | None = None
) -> families.ModelConfig:
    """The named model size with the config's overrides, the vocabulary's size and (for the families that record
    them, ModernBERT's pad/cls/sep ids) its special tokens' ids."""
    given = job.model.fields.get("vocab_size", vocab_size)
    if given != vocab_size:
        raise ConfigError(
            f"model.vocab_size={given} does not match the vocabulary ({vocab_size} entries); "
            "drop model.vocab_size (it is taken from the vocab) or use the matching vocab file."
        )
    model_family = families.family(job.model.family)
    return job.model.model_config(vocab_size=vocab_size, **families.tokenizer_fields(model_family, special_ids or {}))


@dataclasses.dataclass(frozen=True)
class PretrainPlan:
    """What the pretraining job compiles and runs, built by `make_plan`."""

    config: PretrainConfig
    model_config: families.ModelConfig  # vocabulary padding already a multiple of the mesh's vocab shards
    mesh_config: sharding.MeshConfig  # resolved: no -1 left
    optimizer_config: optim.OptimizerConfig
    initialization: structured_init.InitializationConfig  # BERT's own by default (`config.initialization`)
    nsp_loss_weight: float  # the NSP loss's weight in the objective (`config.nsp_loss_weight`; 1 = BERT's)
    mesh: Mesh
    model: nn.Module  # the family's pretraining model (`families.Family.pretraining_model`)
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: train.TrainState  # NamedShardings of every state leaf
    train_step: Callable  # jitted: (state, batch) -> (state, metrics); the state donated
    eval_step: Callable  # jitted: (params, batch) -> metric sums

    @property
    def seq_length(self) -> int:
        return self.config.data.max_seq_length

    @property
    def max_predictions(self) -> int:
        return self.config.data.max_predictions_per_seq

    @property
    def global_batch_size(self) -> int:
        return self.config.global_batch_size

    @property
    def num_microbatches(self) -> int:
        return self.config.num_microbatches

    @property
    def splits_batch(self) -> bool:
        return True

    @property
    def eval_batch_size(self) -> int:
        """Sequences per eval step: one microbatch, so evaluating never needs more memory than a train step's
        forward pass (`eval_batches` counts train-sized batches: the job runs `num_microbatches` times as many)."""
        return self.global_batch_size // self.num_microbatches

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


def make_plan(job: PretrainConfig, devices: Sequence[Any] | None = None) -> PretrainPlan:
    """The checked plan of `job` on `devices` (default: every device of this job).

    Raises `ConfigError` (a `ValueError`) for a job that cannot run there. Nothing is traced or compiled here;
    the steps compile on their first call (or `lower().compile()`).
    """
    devices = list(jax.devices() if devices is None else devices)
    size, special_ids = vocabulary(job)
    model = model_config(job, size, special_ids)
    mesh_config = job.mesh
    # The vocabulary rows always split evenly over the mesh: pad to a multiple of the vocab shards too.
    vocab_shards = sharding.vocab_shards(mesh_config, len(devices))
    model = model.replace(vocab_pad_multiple=math.lcm(model.vocab_pad_multiple, vocab_shards))
    sharding.validate_parallelism(model, mesh_config, job.global_batch_size, len(devices))
    attention.check_devices(model.attention_kernel, devices)
    if job.model.family == families.DEFAULT_FAMILY:
        job.initialization.check_model(model, job.data.max_seq_length)
    if job.data.max_seq_length > model.max_position_embeddings:
        raise ConfigError(
            f"data.max_seq_length={job.data.max_seq_length} exceeds model.max_position_embeddings="
            f"{model.max_position_embeddings}; shorten the sequences or raise model.max_position_embeddings."
        )
    mesh = sharding.make_mesh(mesh_config, devices)
    module = families.family(job.model.family).pretraining_model(model)
    optimizer = optim.make_optimizer(job.optimizer)
    schedule = optim.learning_rate_schedule(job.optimizer)
    shardings = train.state_shardings(module, optimizer, mesh)
    step = train.make_train_step(
        module,
        optimizer,
        schedule,
        dropout_seed=job.seed + 1,
        num_microbatches=job.num_microbatches,
        mesh=mesh,
        nsp_loss_weight=job.nsp_loss_weight,
    )
    return PretrainPlan(
        config=job,
        model_config=model,
        mesh_config=mesh_config.resolve(len(devices)),
        optimizer_config=job.optimizer,
        initialization=job.initialization,
        nsp_loss_weight=job.nsp_loss_weight,
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
