"""The plan interface: what a job compiles and runs, as the fit check, the compile tool and the runner see it.

A plan is built from a typed job config (`bert_jax.jobs.config`) for a list of devices, checked before
anything is traced: the model config (its vocabulary padded to the mesh's vocab shards), the mesh, the
optimizer and its schedule, the state's shardings, and the jitted train and eval steps with their shardings
and donation. `bert_jax.jobs.pretrain_plan` and `bert_jax.jobs.finetune_plan` implement it; `bert-jax-pretrain`,
`bert-jax-finetune`, `bert-jax-benchmark` and `bert-jax-compile` all run what a plan says, so what is
benchmarked or compiled ahead of time for a TPU is exactly what the job runs.

The compile tool and the fit check change a job by name (`--config.model.remat_policy=full`, ...), so they
take the job's config (anything with `replace_at`) and a `PlanFactory` that builds its plan on given devices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from bert_jax.sharding import MeshConfig, ModelShape
from bert_jax.training import train

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


class ModelSettings(Protocol):
    """The compute options of a model config that a compile report shows."""

    remat_policy: str
    dtype: str
    attention_kernel: str


class Plan(Protocol):
    """What one job compiles and runs on its devices."""

    model_config: Any  # a model family's config: `ModelShape` fields and `ModelSettings`
    mesh_config: MeshConfig  # resolved: no -1 left
    mesh: Mesh
    optimizer: optax.GradientTransformation
    shardings: train.TrainState  # NamedShardings of every state leaf
    train_step: Callable[..., Any]  # jitted: (state, batch) -> (state, metrics); the state donated
    eval_step: Callable[..., Any]  # jitted: (params, batch) -> the eval's sums or outputs

    @property
    def global_batch_size(self) -> int: ...

    @property
    def num_microbatches(self) -> int:
        """Sequential slices of a train batch (1: the batch runs whole)."""
        ...

    @property
    def splits_batch(self) -> bool:
        """Whether the train step can run its batch in microbatches (a change the fit check may suggest)."""
        ...

    @property
    def seq_length(self) -> int: ...

    def flops_per_sequence(self) -> float:
        """Model FLOPs of one training sequence (the MFU numerator)."""
        ...

    def abstract_state(self) -> train.TrainState:
        """The train state as `ShapeDtypeStruct`s carrying their shardings (no memory is allocated)."""
        ...

    def abstract_train_args(self) -> tuple[train.TrainState, dict[str, jax.ShapeDtypeStruct]]:
        """The arguments of `train_step`, abstract: `plan.train_step.lower(*plan.abstract_train_args())`."""
        ...

    def abstract_eval_args(self) -> tuple[Any, dict[str, jax.ShapeDtypeStruct]]:
        """The arguments of `eval_step`, abstract."""
        ...


class JobSettings(Protocol):
    """A typed job config, as the fit check and the compile tool change it: by setting names."""

    @property
    def mesh(self) -> MeshConfig: ...

    def replace_at(self, overrides: Mapping[str, Any]) -> JobSettings:
        """The config with settings replaced by dotted name, checked again."""
        ...


# (job config, devices) -> its checked plan on those devices.
PlanFactory = Callable[[Any, Sequence[Any]], Plan]

__all__ = ["BATCH_DTYPES", "JobSettings", "ModelSettings", "ModelShape", "Plan", "PlanFactory"]
