"""The typed job config: every experiments/*.py config parses, overrides keep their names, mistakes are one line."""

from __future__ import annotations

import dataclasses
import pickle
import runpy

import pytest

from bert_jax.errors import ConfigError
from bert_jax.jobs import config as job_config
from tests.conftest import REPO_ROOT

EXPERIMENTS = sorted((REPO_ROOT / "experiments").glob("*.py"))


def load(path):
    return runpy.run_path(str(path))["get_config"]()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_recipe_parses_says_its_job_and_round_trips(path):
    config = load(path)
    job = job_config.parse(config)
    assert job.job == config.job
    assert isinstance(job, job_config.PretrainConfig if config.job == "pretrain" else job_config.FinetuneConfig)
    # every key of the ConfigDict is a field of the same name, with the same value
    assert job.seed == config.seed and job.global_batch_size == config.global_batch_size
    assert job.mesh.data == config.mesh.data and job.model.size == config.model.size
    # back to plain values and parsed again: the same job; picklable (a compile runs in a child process)
    assert dataclasses.replace(job_config.parse(job.to_dict()), source=job.source) == job
    assert pickle.loads(pickle.dumps(job)) == job


def test_overrides_by_name_are_checked_again():
    job = job_config.parse(load(REPO_ROOT / "experiments" / "bert_tiny.py"))
    changed = job.replace_at({"model.remat_policy": "full", "num_microbatches": 4, "mesh.fsdp": 2})
    assert changed.model.fields["remat_policy"] == "full" and changed.num_microbatches == 4 and changed.mesh.fsdp == 2
    assert job.model.fields["remat_policy"] == "none"  # frozen: the original is unchanged
    with pytest.raises(ConfigError, match="not divisible by num_microbatches=3"):
        job.replace_at({"num_microbatches": 3})
    with pytest.raises(ConfigError, match="remat_policy"):
        job.replace_at({"model.remat_policy": "sometimes"})


def test_the_schedule_length_defaults_to_the_training_steps():
    config = load(REPO_ROOT / "experiments" / "bert_tiny.py")
    assert job_config.parse(config).optimizer.total_steps == config.num_train_steps == 1450
    config.optimizer.total_steps = 5000
    job = job_config.parse(config)
    assert job.optimizer.total_steps == 5000 and job.to_dict()["optimizer"]["total_steps"] == 5000


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c.update({"num_train_step": 5}),
            r"Unknown setting num_train_step; the top level takes: .*num_train_steps",
        ),
        (
            lambda c: c.data.update({"max_seq_len": 5}),
            r"Unknown setting data\.max_seq_len; the data takes: .*max_seq_length",
        ),
        (lambda c: c.model.update({"hidden": 5}), r"Unknown setting model\.hidden"),
        (lambda c: c.update({"num_train_steps": 0}), "num_train_steps must be >= 1"),
        (lambda c: c.update({"fit": "maybe"}), "fit='maybe' is unknown; use one of check, auto, off"),
        (lambda c: c.update({"nsp_loss_weight": -1.0}), r"nsp_loss_weight must be in \[0, 100\]"),
        (lambda c: c.update({"job": "serve"}), "job='serve' is unknown"),
        (lambda c: c.update({"job": "finetune"}), "This is a finetune config"),
    ],
)
def test_mistakes_are_one_line_naming_the_setting(change, message):
    config = load(REPO_ROOT / "experiments" / "bert_tiny.py")
    with config.unlocked():
        change(config)
    with pytest.raises(ConfigError, match=message) as raised:
        job_config.parse(config, expect="pretrain")
    assert "\n" not in str(raised.value)


def test_a_config_without_job_is_what_the_tool_expects_and_the_compile_tool_asks():
    config = load(REPO_ROOT / "experiments" / "bert_tiny.py")
    del config["job"]
    assert job_config.parse(config, expect="pretrain").job == "pretrain"
    with pytest.raises(ConfigError, match=r"set config\.job = 'pretrain' or 'finetune'"):
        job_config.parse(config)
