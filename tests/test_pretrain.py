"""The pretraining job end to end from its CLI: logs, metrics, TensorBoard, export; user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_path

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _pretrain(workdir, *overrides, timeout=900):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax_tools.pretrain",
            f"--config={REPO_ROOT / 'experiments' / 'bert_tiny.py'}",
            f"--workdir={workdir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=ENV,
        timeout=timeout,
    )


def test_tiny_job_trains_logs_evaluates_and_exports(tmp_path):
    sample = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    result = _pretrain(
        tmp_path,
        f"--config.data.train_files={sample}",
        "--config.num_train_steps=12",
        "--config.global_batch_size=8",
        "--config.log_every_steps=4",
        "--config.eval_every_steps=6",
        "--config.eval_batches=1",
        "--config.data.eval_fraction=0.02",
        "--config.peak_flops_per_device=1e11",
        "--config.optimizer.warmup_steps=2",
        "--config.nsp_loss_weight=0.5",  # neither the demo's 0 nor the default 1: the job must carry the value
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 12/12" in result.stdout and "eval at step 12" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    # The objective the train step optimized and the eval reported is MLM + 0.5 x NSP.
    for r in train_records:
        assert r["loss"] == pytest.approx(r["mlm_loss"] + 0.5 * r["nsp_loss"], rel=1e-5), r
    for r in (r for r in records if "eval_loss" in r):
        assert r["eval_loss"] == pytest.approx(r["eval_mlm_loss"] + 0.5 * r["eval_nsp_loss"], rel=1e-5), r
    assert [r["step"] for r in train_records] == [4, 8, 12]
    for key in ("loss", "mlm_accuracy", "nsp_accuracy", "learning_rate", "tokens_per_sec", "mfu", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in train_records), key
    assert [r["step"] for r in records if "eval_loss" in r] == [6, 12]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    transformers = pytest.importorskip("transformers")
    model, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "export" / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 128
    assert (tmp_path / "export" / "hf" / "vocab.txt").exists()
    assert (tmp_path / "export" / "step.txt").read_text().strip() == "12"
    assert "12" in os.listdir(tmp_path / "checkpoints")  # the last step is always checkpointed


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.mesh.data=3", "does not match the 1 device"),
        ("--config.global_batch_size=30", "not divisible by num_microbatches"),
        ("--config.data.train_files=/nonexistent/*.txt", "matches no file"),
        ("--config.model.size=huge", "Unknown model size"),
        ("--config.nsp_loss_weight=-1", "nsp_loss_weight must be in [0, 100]"),
    ],
)
def test_user_errors_end_in_one_line(tmp_path, override, message):
    extra = ["--config.num_microbatches=4"] if "global_batch_size" in override else []
    result = _pretrain(tmp_path, override, *extra, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-jax-pretrain: error:") and message in last, last


def test_the_step_loop_reads_devices_only_at_log_and_eval_steps(tmp_path, monkeypatch):
    """Every device-to-host read of an array's value (`ArrayImpl._value`: float(), np.asarray, device_get)
    is recorded with the number of train steps dispatched so far: reads happen only before the first step,
    at log steps and at eval steps, so between them the steps queue up on the devices without waiting."""
    import runpy

    import jax
    import jax._src.array as jax_array

    from bert_jax.jobs import config as job_config
    from bert_jax.jobs import pretraining

    sample = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "bert_tiny.py"))["get_config"]()
    config.data.train_files = str(sample)
    config.num_train_steps, config.global_batch_size = 13, 8
    config.log_every_steps, config.eval_every_steps, config.eval_batches = 5, 10, 1
    config.peak_flops_per_device, config.export = 1e11, False
    config.optimizer.warmup_steps = 2
    config.data.eval_fraction = 0.02

    dispatched = [0]
    reads_at: list[int] = []
    original_value = jax_array.ArrayImpl._value

    def recording_value(self):
        reads_at.append(dispatched[0])
        return original_value.fget(self)

    original_jit = pretraining.train.jit_train_step

    def counting_jit(*args, **kwargs):
        step = original_jit(*args, **kwargs)

        def counted(*a, **k):
            dispatched[0] += 1
            return step(*a, **k)

        return counted

    monkeypatch.setattr(pretraining.train, "jit_train_step", counting_jit)
    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(recording_value))
    # The instrument works: a float() of an array is recorded.
    float(jax.numpy.ones(()))
    assert reads_at == [0]
    pretraining.train_and_evaluate(job_config.parse(config, expect="pretrain"), str(tmp_path))
    assert dispatched[0] == 13
    assert {5, 10, 13} <= set(reads_at)  # log steps 5, 10, the last step 13; eval at 10 and 13
    assert set(reads_at) <= {0, 5, 10, 13}, sorted(set(reads_at))


# What third-party libraries print that means nothing to a user of the job (TFDS's dataset-download banner and
# bookkeeping warnings, tqdm's cursor-up escapes, TensorFlow's C++ start-up lines).
CHATTER = (
    "Downloading and preparing",
    "Using custom data configuration",
    "Variant folder",
    "\x1b[A",
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations",
    "cpu_feature_guard",
    "Generating splits",
    "Shuffling ",
)


def test_the_demo_console_shows_the_jobs_lines_in_order_and_no_library_chatter(tmp_path):
    # The console script a user runs, in the environment a user has (no log-level variables of ours).
    script = os.path.join(os.path.dirname(sys.executable), "bert-jax-pretrain")
    if not os.path.exists(script):
        pytest.skip("the bert-jax-pretrain console script is not installed next to this Python (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    command = [
        script,
        f"--config={REPO_ROOT / 'experiments' / 'bert_tiny.py'}",
        f"--workdir={tmp_path}",
        "--config.num_train_steps=4",
        "--config.log_every_steps=2",
        "--config.eval_every_steps=4",
        "--config.eval_batches=1",
        "--config.peak_flops_per_device=1e11",
        "--config.optimizer.warmup_steps=1",
    ]
    runs = [subprocess.run(command, capture_output=True, text=True, env=env, timeout=900) for _ in range(2)]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
        for chatter in CHATTER:
            assert chatter not in output, (chatter, output[-3000:])
    lines = runs[0].stdout.splitlines()

    def first(prefix: str) -> int:
        found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert found, (prefix, lines)
        return found[0]

    order = [first(p) for p in ("Corpus built in", "Model tiny:", "Train step ready", "step 2/4", "step 4/4")]
    order += [first("eval at step 4"), first("Exported the weights of step 4")]
    assert order == sorted(order), lines
    corpus_line = lines[order[0]]
    # three books, one document each; token and instance counts are printed with thousands separators
    assert "3 documents" in corpus_line and " tokens" in corpus_line and "train + " in corpus_line, corpus_line
    # The second run reuses the corpus (and trains nothing: the job is finished).
    assert any(line.startswith("Corpus reused") for line in runs[1].stdout.splitlines()), runs[1].stdout
    assert "Nothing to train" in runs[1].stdout
    # stderr holds at most our own lines: the restart line (huge-page malloc) and, on a host slow enough that the
    # corpus build outlasts the progress bar's 2 s delay (a loaded CI machine), the bar's own lines; no library's
    ours = ("[bert_jax]", "Tokenizing the corpus:", "Writing the instances:")
    stray = [line for line in runs[0].stderr.splitlines() if line.strip() and not line.startswith(ours)]
    assert not stray, stray
