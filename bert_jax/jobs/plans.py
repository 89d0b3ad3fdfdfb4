"""The plan of any job config: `make_plan(job, devices)`, by the kind the config declares (`config.job`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bert_jax.jobs import finetune_plan, pretrain_plan
from bert_jax.jobs.config import FinetuneConfig, JobConfig
from bert_jax.training.plan import Plan


def make_plan(job: JobConfig, devices: Sequence[Any] | None = None) -> Plan:
    """The checked plan of `job` on `devices` (default: this process's job devices). A fine-tuning plan built
    here has no data behind it (`finetune_plan.compile_plan`): what the compile tool and the benchmark need."""
    import jax

    devices = list(jax.devices() if devices is None else devices)
    if isinstance(job, FinetuneConfig):
        return finetune_plan.compile_plan(job, devices)
    return pretrain_plan.make_plan(job, devices)
