"""bert-jax-benchmark and bert_jax.harness.benchmark: the job's train step timed; the JSON line; clear errors before compiling.

A tiny model at seq 32 keeps every compile to seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from bert_jax import tokenizers
from bert_jax.data import masking
from bert_jax.harness import benchmark
from bert_jax.jobs import config as job_config
from bert_jax.models import configs, flops
from bert_jax.models.bert import BertForPreTraining, init_params
from bert_jax.training import train
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "experiments" / "bert_tiny.py"
VOCAB = REPO_ROOT / "bert_jax" / "assets" / "vocab.txt"
BATCH, SEQ, PREDICTIONS = 4, 32, 5
SMALL = (
    f"--config.global_batch_size={BATCH}",
    f"--config.data.max_seq_length={SEQ}",
    f"--config.data.max_predictions_per_seq={PREDICTIONS}",
)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# What the JSON line promises (the brief of the tool and what the peer benchmark reports).
KEYS = (
    "config",
    "model_size",
    "num_params",
    "dtype",
    "global_batch_size",
    "seq_length",
    "max_predictions_per_seq",
    "mesh",
    "num_devices",
    "platform",
    "device_kind",
    "compile_s",
    "step_ms_median",
    "step_ms_min",
    "step_ms_max",
    "step_ms_all",
    "sequences_per_sec",
    "tokens_per_sec",
    "nonpad_tokens_per_step",
    "flops_per_sequence",
    "model_tflops_per_sec",
    "peak_flops_per_device",
    "peak_source",
    "mfu",
    "peak_rss_mb",
    "device_memory_peak_mb",
    "device_memory_limit_mb",
    "foreign_cpu_share",
    "peak_foreign_cpu_share",
    "versions",
)


def _tiny_config(**data: object) -> ml_collections.ConfigDict:
    config = runpy.run_path(str(TINY))["get_config"]()
    config.global_batch_size = BATCH
    config.data.max_seq_length = SEQ
    config.data.max_predictions_per_seq = PREDICTIONS
    config.data.update(data)
    return config


def _benchmark_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.benchmark", f"--config={TINY}", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env or ENV,
        timeout=600,
    )


def test_cli_prints_a_table_and_a_consistent_json_line():
    result = _benchmark_cli(*SMALL, "--warmup=2", "--steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert "MFU" in result.stdout and "tokens/s" in result.stdout  # the table, before the JSON line
    assert set(KEYS) <= set(report), set(KEYS) - set(report)
    assert (report["config"], report["model_size"], report["dtype"]) == ("bert_tiny", "tiny", "float32")
    assert (report["global_batch_size"], report["seq_length"], report["max_predictions_per_seq"]) == (BATCH, SEQ, 5)
    assert report["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and report["num_devices"] == 1
    assert report["versions"]["jax"] == jax.__version__
    for key in ("num_params", "compile_s", "step_ms_min", "sequences_per_sec", "tokens_per_sec", "mfu", "peak_rss_mb"):
        assert report[key] > 0, key
    assert len(report["step_ms_all"]) == 3 and len(report["warmup_ms"]) == 2
    assert report["step_ms_min"] <= report["step_ms_median"] <= report["step_ms_max"]
    # Throughput is the global batch over the median step; synthetic batches are full length (no padding).
    assert report["sequences_per_sec"] == pytest.approx(BATCH / (report["step_ms_median"] / 1e3), rel=1e-12)
    assert report["nonpad_tokens_per_step"] == BATCH * SEQ
    assert report["tokens_per_sec"] == pytest.approx(report["sequences_per_sec"] * SEQ, rel=1e-12)
    # FLOPs are the job's formula for the job's model config; MFU is against the measured peak of the one device.
    config = _tiny_config()
    model_overrides = {k: v for k, v in config.model.to_dict().items() if k != "size"}
    vocab_size = tokenizers.load_tokenizer(VOCAB).vocab_size
    model_config = configs.named_config(config.model.size, vocab_size=vocab_size, **model_overrides)
    assert report["flops_per_sequence"] == flops.training_flops_per_sequence(model_config, SEQ, PREDICTIONS)
    shapes = jax.eval_shape(lambda rng: init_params(BertForPreTraining(model_config), rng), jax.random.key(0))
    assert report["num_params"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert report["model_tflops_per_sec"] == pytest.approx(
        report["sequences_per_sec"] * report["flops_per_sequence"] / 1e12, rel=1e-12
    )
    assert report["peak_source"] == "measured" and report["peak_flops_per_device"] > 1e9
    assert report["mfu"] == pytest.approx(report["model_tflops_per_sec"] * 1e12 / report["peak_flops_per_device"])
    if report["platform"] == "cpu":
        assert report["device_memory_peak_mb"] is None and report["device_memory_limit_mb"] is None
    assert np.isfinite(report["loss_first"]) and np.isfinite(report["loss_last"])


def test_pipeline_input_times_real_batches(tmp_path):
    # The bundled corpus, built at seq 32 into tmp_path/corpus as the job would into its workdir.
    options = benchmark.BenchmarkOptions(
        steps=3, warmup=2, input="pipeline", peak_flops=2e11, corpus_workdir=str(tmp_path), config_name="tiny"
    )
    report = benchmark.run_benchmark(job_config.parse(_tiny_config(), expect="pretrain"), options)
    assert (tmp_path / "corpus").is_dir() and report["corpus_s"] > 0
    assert report["input"] == "pipeline" and report["input_ms_median"] is not None
    assert report["input_ms_median"] < report["step_ms_median"]  # the input wait is part of the step time
    assert 0 < report["nonpad_tokens_per_step"] <= BATCH * SEQ
    step_s = report["step_ms_median"] / 1e3
    assert report["tokens_per_sec"] == pytest.approx(report["nonpad_tokens_per_step"] / step_s, rel=1e-12)
    assert report["peak_source"] == "flag" and report["peak_flops_per_device"] == 2e11
    assert report["mfu"] == pytest.approx(report["model_tflops_per_sec"] * 1e12 / 2e11)
    assert report["masked_per_seq"] is None


def test_synthetic_batch_is_a_full_length_masked_sentence_pair():
    tokenizer = tokenizers.load_tokenizer(VOCAB)
    special = dict(tokenizer.special_ids)
    config = masking.MaskingConfig(
        vocab_size=tokenizer.vocab_size,
        mask_id=special["[MASK]"],
        special_ids=(special["[PAD]"], special["[CLS]"], special["[SEP]"]),
        max_predictions=20,
    )
    batch = benchmark.synthetic_batch(16, 128, config, special, seed=3)
    assert sorted(batch) == sorted(train.BATCH_KEYS)
    shapes = {k: (v.shape, v.dtype.name) for k, v in batch.items()}
    assert shapes == {
        "input_ids": ((16, 128), "int32"),
        "attention_mask": ((16, 128), "int32"),
        "token_type_ids": ((16, 128), "int32"),
        "masked_lm_positions": ((16, 20), "int32"),
        "masked_lm_ids": ((16, 20), "int32"),
        "masked_lm_weights": ((16, 20), "float32"),
        "next_sentence_labels": ((16,), "int32"),
    }
    ids, cls, sep = batch["input_ids"], special["[CLS]"], special["[SEP]"]
    assert (ids[:, 0] == cls).all() and (ids[:, -1] == sep).all() and (batch["attention_mask"] == 1).all()
    assert ((ids == sep).sum(axis=1) == 2).all() and ((ids == special["[PAD]"]).sum() == 0)
    middle = np.argmax(ids[:, 1:-1] == sep, axis=1) + 1
    assert ((32 <= middle) & (middle < 96)).all()
    expected_types = (np.arange(128)[None, :] > middle[:, None]).astype(np.int32)
    np.testing.assert_array_equal(batch["token_type_ids"], expected_types)
    # 15% of 128 tokens is 19 predictions (under the cap of 20), at distinct non-special positions.
    assert (batch["masked_lm_weights"].sum(axis=1) == 19).all()
    positions = batch["masked_lm_positions"][:, :19]
    assert (np.diff(positions, axis=1) > 0).all() and (positions > 0).all() and (positions < 127).all()
    assert not (positions == middle[:, None]).any()
    assert not np.isin(batch["masked_lm_ids"][:, :19], list(special.values())).any()
    assert set(np.unique(batch["next_sentence_labels"])) == {0, 1}
    again = benchmark.synthetic_batch(16, 128, config, special, seed=3)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)


@pytest.mark.parametrize(
    "change, options, error",
    [
        ({"num_microbatches": 3}, {}, "global_batch_size=4 is not divisible by num_microbatches=3"),
        ({"mesh.data": 2}, {}, "does not match the 1 device"),
        ({"model.size": "huge"}, {}, "Unknown model size 'huge'"),
        ({"optimizer.name": "sgd"}, {}, "sgd"),
        ({}, {"steps": 0}, "steps must be a positive integer"),
        ({}, {"input": "disk"}, "input must be one of synthetic, pipeline"),
        ({}, {"peak_flops": 0.0}, "peak_flops must be a positive"),
    ],
)
def test_bad_settings_fail_before_anything_compiles(monkeypatch, change, options, error):
    def compiled(*args, **kwargs):
        raise AssertionError("got as far as building the train state or the step")

    monkeypatch.setattr(train, "create_train_state", compiled)
    monkeypatch.setattr(train, "jit_train_step", compiled)
    config = _tiny_config()
    for path, value in change.items():
        *parents, name = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    with pytest.raises(ValueError, match=error):
        benchmark.run_benchmark(job_config.parse(config, expect="pretrain"), benchmark.BenchmarkOptions(**options))


def test_cli_batch_not_divisible_by_the_mesh_is_one_line_before_compiling():
    two_devices = {**ENV, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = _benchmark_cli("--config.global_batch_size=3", env=two_devices)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    # The library's message: a heading line, then one line per problem.
    message = result.stderr[result.stderr.index("bert-jax-benchmark: error:") :].splitlines()
    assert message[0] == "bert-jax-benchmark: error: Parallelism settings do not fit:", message
    assert message[1].startswith("  - global batch size 3 is not divisible by the 2 batch shards (mesh data=2")
    assert "Creating the train state" not in result.stderr and "Compiling" not in result.stderr
