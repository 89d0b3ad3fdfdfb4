"""The job's fit check: its steps compiled before the corpus build, their memory against the device's budget.

The budgets are set from XLA's own memory analysis of separately compiled variants of the program (the base job
and the job with two microbatches), so each scenario is known to fall between them: the base does not fit and
two microbatches do. CPUs report no memory limit, so the check runs here only through `fit_memory_gb`, exactly
as it runs on an accelerator with the limit its allocator reports.
"""

from __future__ import annotations

import runpy
import types

import jax
import numpy as np
import pytest

from bert_jax.compile import aot, fit
from bert_jax.errors import ConfigError
from bert_jax.jobs import config as job_config
from bert_jax.jobs import pretrain_plan, pretraining
from tests.conftest import REPO_ROOT, shared_path


def small_config(**overrides):
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    config.data.train_files = str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt"))
    config.data.max_seq_length, config.data.max_predictions_per_seq = 32, 5
    config.data.eval_fraction = 0.02
    config.num_train_steps, config.global_batch_size = 6, 32
    config.log_every_steps, config.eval_every_steps, config.eval_batches = 3, 6, 1
    config.peak_flops_per_device, config.export = 1e11, False
    config.optimizer.warmup_steps = 1
    config.fit_max_compiles = 2
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _peak(config) -> int:
    """XLA's per-device total for `config` on this host's device, with no budget to fit."""
    target = aot.device_target(jax.devices(), 10**15)
    return aot.compile_job(job_config.parse(config), target, pretrain_plan.make_plan).report.peak_bytes


@pytest.fixture(scope="module")
def budget_gb():
    """A budget the base job exceeds and the job with two microbatches meets (3% kept for the runtime)."""
    base, halved = _peak(small_config()), _peak(small_config(num_microbatches=2))
    assert halved < base * 0.9, (base, halved)  # two microbatches halve the activations: a real difference
    usable = (base + halved) / 2
    return usable / (1 - aot.HBM_RESERVE_FRACTION) / aot.GB


def test_modes_and_budgets_are_checked():
    with pytest.raises(ConfigError, match="fit='always' is unknown; use one of check, auto, off"):
        job_config.parse(small_config(fit="always"))
    with pytest.raises(ConfigError, match="fit_memory_gb and fit_max_compiles must be >= 0"):
        job_config.parse(small_config(fit_memory_gb=-1.0))


def test_the_memory_limit_is_the_smallest_of_this_process_devices():
    def device(limit, process_index=0):
        stats = {"bytes_limit": limit, "bytes_in_use": 0} if limit else None
        return types.SimpleNamespace(process_index=process_index, memory_stats=lambda: stats)

    assert fit.device_memory_limit([device(16 * 2**30), device(15 * 2**30), device(1, process_index=7)]) == 15 * 2**30
    assert fit.device_memory_limit([device(None)]) is None
    assert fit.device_memory_limit(jax.devices()) is None  # CPUs report no limit


def test_without_a_known_limit_nothing_compiles_ahead():
    fitted = fit.fit_job(job_config.parse(small_config()), pretrain_plan.make_plan)
    assert fitted.report is None and fitted.train_step is fitted.job.train_step  # jitted, compiles on first call


def test_a_job_that_does_not_fit_stops_before_the_corpus_with_the_table_and_the_fix(tmp_path, budget_gb):
    config = small_config(fit_memory_gb=budget_gb)
    with pytest.raises(fit.DoesNotFitError) as raised:
        pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), str(tmp_path))
    message = str(raised.value)
    assert "does not fit its devices' memory" in message and "total per chip" in message
    assert "fits                        NO" in message
    assert "Run with --config.num_microbatches=2" in message and "--config.fit=auto" in message
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "checkpoints").exists()


def test_fit_auto_runs_the_cheapest_change_that_fits_and_resumes_with_it(tmp_path, budget_gb, capsys):
    config = small_config(fit_memory_gb=budget_gb, fit="auto")
    result = pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), str(tmp_path))
    out = capsys.readouterr().out
    assert result.step == 6
    assert "Does not fit" in out and "fit=auto: running with --config.num_microbatches=2" in out
    # (the two-microbatch program fits by construction of the budget: XLA's own total, compiled separately)
    # Run again with more steps: the same decision, and the job resumes from step 6.
    config = small_config(fit_memory_gb=budget_gb, fit="auto", num_train_steps=9)
    result = pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), str(tmp_path))
    out = capsys.readouterr().out
    assert result.step == 9 and "Resumed from the checkpoint of step 6" in out
    assert "fit=auto: running with --config.num_microbatches=2" in out


def finetune_config(**overrides):
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
    config.data_dir = str(shared_path("glue"))
    config.model.size = "tiny"
    config.vocab_file = str(REPO_ROOT / "bert_jax" / "assets" / "vocab.txt")
    config.max_seq_length, config.global_batch_size = 32, 16
    config.num_train_steps, config.log_every_steps, config.eval_every_steps = 4, 2, 4
    config.eval_split = "dev"
    for key, value in overrides.items():
        config[key] = value
    return config


def test_fine_tuning_takes_a_remat_policy_and_computes_the_same_losses(tmp_path):
    """`model.remat_policy` is a key of the fine-tuning configs (so `--config.model.remat_policy=full` parses, as
    the compile tool suggests it): recomputing the layers changes memory only, not the losses."""
    import json

    from bert_jax.jobs import finetuning

    losses = {}
    for policy in ("none", "full"):
        config = finetune_config(num_train_steps=3, log_every_steps=1)
        assert config.model.remat_policy == "none"  # declared, so absl's --config.model.remat_policy=... parses
        config.model.remat_policy = policy
        finetuning.finetune_and_evaluate(job_config.parse(config, expect="finetune"), str(tmp_path / policy))
        lines = [json.loads(line) for line in (tmp_path / policy / "metrics.jsonl").read_text().splitlines()]
        losses[policy] = [line["loss"] for line in lines if "loss" in line]
    assert len(losses["none"]) == 3
    np.testing.assert_allclose(losses["full"], losses["none"], rtol=1e-5)


def test_the_fine_tuning_job_runs_its_compiled_steps_when_they_fit(tmp_path, capsys):
    from bert_jax.jobs import finetuning

    result = finetuning.finetune_and_evaluate(
        job_config.parse(finetune_config(fit_memory_gb=100.0), expect="finetune"), str(tmp_path)
    )
    out = capsys.readouterr().out
    assert "Fits: " in out and " of 100.00 GB per device" in out
    assert result.step == 4 and 0.0 <= result.eval_metrics["accuracy"] <= 1.0


def test_the_fine_tuning_job_stops_before_training_when_it_does_not_fit(tmp_path):
    from bert_jax.jobs import finetuning

    with pytest.raises(fit.DoesNotFitError) as raised:
        finetuning.finetune_and_evaluate(
            job_config.parse(finetune_config(fit_memory_gb=0.001, fit_max_compiles=1), expect="finetune"), str(tmp_path)
        )
    message = str(raised.value)
    assert "total per chip" in message and "remat" in message and "num_microbatches" not in message
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "task, data",
    [
        ("glue_sst2", "glue"),
        ("glue_stsb", "glue"),
        ("conll_ner", "conll2003"),
        ("squad", "squad"),
    ],
)
def test_each_task_declares_the_batch_layout_its_data_has(task, data):
    """The abstract batch a compile uses (Task.target_spec) has the keys, dtypes and row shapes of the real data."""
    from bert_jax import tokenizers
    from bert_jax.jobs import finetune_plan

    config = finetune_config(task=task, data_dir=str(shared_path(data)))
    if task == "squad":
        config = runpy.run_path(str(REPO_ROOT / "experiments" / "squad.py"))["get_config"]()
        config.data_dir, config.max_seq_length = str(shared_path(data)), 128
    config = job_config.parse(config)
    task_ = finetune_plan.task_of(config)
    tokenizer = tokenizers.load_tokenizer(str(REPO_ROOT / "bert_jax" / "assets" / "vocab.txt"), None, True)
    split = task_.load(config.data_dir, task_.eval_split, tokenizer, config.max_seq_length)
    job = finetune_plan.make_finetune_plan(
        config, task_, pretrain_plan.model_config(job_config.parse(small_config()), 30522), 10
    )
    abstract = job.abstract_batch()
    assert set(abstract) == set(split.arrays)
    for key, array in split.arrays.items():
        assert abstract[key].dtype == array.dtype and abstract[key].shape[1:] == array.shape[1:], key
