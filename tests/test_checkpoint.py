"""Checkpoints (`bert_jax.training.checkpoint`): exact resumption, integrity, topology changes, exports, warm starts.

- The `Checkpointer` alone: a round trip is exact; a truncated latest checkpoint is set aside (not deleted) with
  a warning and the previous one restores; a model-shape change names the fields; a full disk (reported by the
  free-space check or by the write itself) is one clear error and leaves the earlier checkpoints readable.
- The pretraining CLI (subprocesses): a run killed with SIGKILL at a random moment and restarted ends with
  params bitwise equal to an uninterrupted run's and logs the same losses; SIGTERM saves the current step,
  exits 0, and the restart continues exactly; running a finished job again trains nothing and leaves its export.
- A checkpoint written on 8 simulated devices as (2, 2, 2) restores on 1 device and on (1, 1, 4), and the next
  step there equals the next step of the uninterrupted 8-device run (a subprocess with 8 CPU devices).
- `bert-jax-export` writes a Hugging Face directory that transformers' BertForPreTraining and BertModel load with
  our model's outputs, and the params-only form; warm starts take params from a checkpoint or a HF directory.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bert_jax.models.configs import BertConfig
from bert_jax.training import checkpoint
from tests.conftest import REPO_ROOT, shared_path

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


# ---------------------------------------------------------------------------------------------------------------
# 1. The Checkpointer on small trees


def _tree(seed: float) -> dict[str, Any]:
    return {"a": jnp.full((4, 3), seed, jnp.float32), "b": {"c": jnp.arange(5, dtype=jnp.float32) + seed}}


def _abstract(tree: Any) -> Any:
    return checkpoint.abstract_like(tree, checkpoint.host_shardings(tree))


CONFIG = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def _save(ckpt: checkpoint.Checkpointer, step: int, config: BertConfig = CONFIG) -> None:
    meta = {"model_config": config.to_dict(), "data_state": {"epoch": 0, "batch_in_epoch": step}}
    assert ckpt.save(step, _tree(step), _tree(-step), meta, {"vocab.txt": "[PAD]\n"}, force=True)
    ckpt.wait_until_finished()


def test_round_trip_is_exact_and_keeps_the_newest(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every_steps=2, max_to_keep=2)
    assert ckpt.restore(_abstract(_tree(0)), _abstract(_tree(0))) is None
    for step in (2, 4, 6):
        _save(ckpt, step)
    assert ckpt.steps() == [4, 6]  # max_to_keep, oldest removed only after newer ones exist
    restored = ckpt.restore(_abstract(_tree(0)), _abstract(_tree(0)), CONFIG)
    assert restored.step == 6 and restored.meta["data_state"]["batch_in_epoch"] == 6
    np.testing.assert_array_equal(restored.params["a"], np.full((4, 3), 6.0))
    np.testing.assert_array_equal(restored.opt_state["b"]["c"], np.arange(5) - 6.0)
    assert ckpt.read_tokenizer(6) == {"vocab.txt": "[PAD]\n"}
    assert ckpt.should_save(8) and not ckpt.should_save(7)
    ckpt.close()


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1, max_to_keep=3)
    _save(ckpt, 1)
    _save(ckpt, 2)
    # Truncate every array file of step 2 (a disk error, a copy cut short).
    truncated = 0
    for root, _, files in os.walk(tmp_path / "2" / "params"):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 3)
            truncated += 1
    assert truncated
    restored = ckpt.restore(_abstract(_tree(0)), _abstract(_tree(0)), CONFIG)
    assert restored is not None and restored.step == 1
    np.testing.assert_array_equal(restored.params["a"], np.full((4, 3), 1.0))
    out = capsys.readouterr().out
    assert "WARNING: the checkpoint of step 2 cannot be read" in out and "falling back" in out
    # Nothing was deleted: the damaged checkpoint sits in corrupt/, and step 2 can be written again.
    aside = os.listdir(tmp_path / "corrupt")
    assert len(aside) == 1 and aside[0].startswith("2-") and os.listdir(tmp_path / "corrupt" / aside[0])
    assert ckpt.steps() == [1]
    _save(ckpt, 2)
    assert ckpt.restore(_abstract(_tree(0)), _abstract(_tree(0)), CONFIG).step == 2
    ckpt.close()


def test_model_shape_change_names_the_fields(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    _save(ckpt, 1)
    wider = CONFIG.replace(hidden_size=32, intermediate_size=64)
    with pytest.raises(checkpoint.CheckpointError) as error:
        ckpt.restore(_abstract(_tree(0)), _abstract(_tree(0)), wider)
    message = str(error.value)
    assert "hidden_size: checkpoint 16 vs config 32" in message
    assert "intermediate_size: checkpoint 32 vs config 64" in message
    assert "num_hidden_layers" not in message
    # Compute options (dtype, remat) are not shape: they may change between runs.
    assert ckpt.restore(_abstract(_tree(0)), None, CONFIG.replace(dtype="bfloat16", remat_policy="full")).step == 1
    ckpt.close()


def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every_steps=1)
    _save(ckpt, 1)
    usage = checkpoint.shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    with pytest.raises(checkpoint.CheckpointError, match=r"Not enough disk space .* MB free.*\[1\]\) are intact"):
        ckpt.save(2, _tree(2), _tree(-2), {"model_config": CONFIG.to_dict()}, {}, force=True)
    monkeypatch.undo()

    # The disk filling up during the write itself (ENOSPC from the writer).
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", no_space)
    with pytest.raises(checkpoint.CheckpointError, match="The disk filled up while writing the checkpoint of step 2"):
        ckpt.save(2, _tree(2), _tree(-2), {"model_config": CONFIG.to_dict()}, {}, force=True)
    monkeypatch.undo()
    assert ckpt.steps() == [1]
    assert ckpt.restore(_abstract(_tree(0)), _abstract(_tree(0)), CONFIG).step == 1
    ckpt.close()


# ---------------------------------------------------------------------------------------------------------------
# 2. The pretraining job: kill -9, SIGTERM, finished jobs (subprocesses)

STEPS = 16


def _command(workdir, corpus_dir: str | None = None) -> list[str]:
    sample = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    data = [f"--config.data.corpus_dir={corpus_dir}"] if corpus_dir else [f"--config.data.train_files={sample}"]
    return [
        sys.executable,
        "-m",
        "bert_jax_tools.pretrain",
        f"--config={REPO_ROOT / 'experiments' / 'bert_tiny.py'}",
        f"--workdir={workdir}",
        *data,
        f"--config.num_train_steps={STEPS}",
        "--config.global_batch_size=8",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=8",
        "--config.eval_batches=1",
        "--config.checkpoint_every_steps=3",
        "--config.data.eval_fraction=0.02",
        "--config.peak_flops_per_device=1e11",
        "--config.optimizer.warmup_steps=2",
    ]


def _run(workdir, corpus_dir=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _command(workdir, corpus_dir), capture_output=True, text=True, cwd=REPO_ROOT, env=ENV, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _start(workdir, corpus_dir) -> subprocess.Popen:
    return subprocess.Popen(
        _command(workdir, corpus_dir),
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _wait_for_line(process: subprocess.Popen, prefix: str, timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    process.kill()
    raise AssertionError(f"never saw {prefix!r}; output: {''.join(lines)[-2000:]}")


def _final_params(workdir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "export", "bert_jax", "params.safetensors"))


def _logged(workdir) -> dict[int, dict[str, float]]:
    """The latest record of every logged train step (a resumed run logs the replayed steps again)."""
    records: dict[int, dict[str, float]] = {}
    for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8"):
        record = json.loads(line)
        if "loss" in record:
            records[record["step"]] = record
    return records


def _assert_same_run(workdir, reference) -> None:
    ours, theirs = _final_params(workdir), _final_params(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)  # bitwise
    logged, expected = _logged(workdir), _logged(reference)
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step in logged:
        for key in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "grad_norm", "learning_rate"):
            assert logged[step][key] == expected[step][key], (step, key)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[str, str]:
    """An uninterrupted run (its workdir) and its corpus, reused by the other runs."""
    workdir = tmp_path_factory.mktemp("reference")
    _run(workdir)
    corpus_dir = None
    for root, _dirs, files in os.walk(workdir / "corpus"):
        if "dataset_info.json" in files:
            corpus_dir = root
    assert corpus_dir is not None
    return str(workdir), corpus_dir


def test_kill_9_at_a_random_moment_then_resume_is_bitwise_exact(reference_run, tmp_path):
    reference, corpus_dir = reference_run
    process = _start(tmp_path, corpus_dir)
    kill_after = random.Random(time.time_ns()).randint(5, 12)
    _wait_for_line(process, f"step {kill_after}/{STEPS}")
    time.sleep(random.random() * 0.2)  # anywhere inside the next step(s), possibly mid-save
    process.kill()
    process.wait()
    # Complete checkpoints only (a save cut short is a temporary directory, ignored); usually step 3 or later.
    steps = sorted(int(e) for e in os.listdir(tmp_path / "checkpoints") if e.isdigit())
    assert not steps or steps[-1] < STEPS
    resumed = _run(tmp_path, corpus_dir)
    if steps:
        assert f"Resumed from the checkpoint of step {steps[-1]}" in resumed.stdout
    _assert_same_run(tmp_path, reference)


def test_sigterm_saves_the_current_step_and_the_restart_continues_exactly(reference_run, tmp_path):
    reference, corpus_dir = reference_run
    process = _start(tmp_path, corpus_dir)
    _wait_for_line(process, f"step 7/{STEPS}")
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    stopped = [line for line in out.splitlines() if line.startswith("Stopped by SIGTERM after step")]
    assert len(stopped) == 1, out[-2000:]
    step = int(stopped[0].split("after step ")[1].split(";")[0])
    assert (7 <= step < STEPS and step % 3 != 0) or step >= 7  # usually not a periodic checkpoint step
    assert str(step) in os.listdir(tmp_path / "checkpoints")
    assert not (tmp_path / "export").exists()
    resumed = _run(tmp_path, corpus_dir)
    assert f"Resumed from the checkpoint of step {step}" in resumed.stdout
    # The restart loads its train step from the workdir's compilation cache instead of compiling it again.
    ready = [line for line in resumed.stdout.splitlines() if line.startswith("Train step ready in")]
    assert len(ready) == 1 and f"compilation cache {tmp_path / 'jax_cache'}: " in ready[0], resumed.stdout[-2000:]
    loaded = re.search(r": (\d+) of (\d+) programs loaded from it", ready[0])
    assert loaded is not None and int(loaded.group(1)) >= 1, ready[0]
    _assert_same_run(tmp_path, reference)


def test_a_finished_job_trains_nothing_and_keeps_its_export(reference_run):
    reference, corpus_dir = reference_run
    export = os.path.join(reference, "export", "hf", "model.safetensors")
    before = os.stat(export).st_mtime_ns
    again = _run(reference, corpus_dir)
    assert f"Nothing to train: the latest checkpoint is step {STEPS}" in again.stdout
    assert os.stat(export).st_mtime_ns == before


def test_changed_model_shape_stops_before_training(reference_run):
    reference, corpus_dir = reference_run
    result = subprocess.run(
        [*_command(reference, corpus_dir), "--config.model.size=mini"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=ENV,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "has another model shape than this config" in last
    assert "hidden_size: checkpoint 128 vs config 256" in last and "num_hidden_layers: checkpoint 2 vs config 4" in last


# ---------------------------------------------------------------------------------------------------------------
# 3. Export and warm start


def _export_tool(workdir: str, output_dir, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.export", f"--workdir={workdir}", f"--output_dir={output_dir}", *flags],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=ENV,
        timeout=300,
    )


def test_export_tool_writes_what_transformers_loads_with_our_outputs(reference_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from bert_jax.models import convert
    from bert_jax.models.bert import BertForPreTraining

    reference, _ = reference_run
    result = _export_tool(reference, tmp_path / "hf", "--step=12")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Exported step 12" in result.stdout
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(
        os.listdir(tmp_path / "hf")
    )
    native = _export_tool(reference, tmp_path / "ours", "--format=bert_jax", "--step=12")
    assert native.returncode == 0, native.stderr[-2000:]
    config, params = convert.from_native(tmp_path / "ours")
    assert config.vocab_size == 30522 and params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape[0] == 30522

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (2, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 18:] = 0
    types = np.zeros_like(ids)
    types[:, 12:] = 1
    ours_mlm, ours_nsp = BertForPreTraining(config).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)
    )
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    np.testing.assert_allclose(out.prediction_logits.numpy()[mask == 1], np.asarray(ours_mlm)[mask == 1], atol=2e-4)
    np.testing.assert_allclose(out.seq_relationship_logits.numpy(), np.asarray(ours_nsp), atol=2e-4)
    encoder = transformers.BertModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        hidden = encoder(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)
        )
    from bert_jax.models.bert import BertModel

    ours = BertModel(config).apply({"params": params["bert"]}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    np.testing.assert_allclose(
        hidden.last_hidden_state.numpy()[mask == 1], np.asarray(ours.sequence_output)[mask == 1], atol=1e-4
    )
    # The export is step 12's weights, not the final ones.
    final = _final_params(reference)
    assert not np.array_equal(
        final["bert/encoder/layer_0/output/dense/kernel"],
        params["bert"]["encoder"]["layer_0"]["output"]["dense"]["kernel"],
    )
    # A missing step and an occupied output directory are clear errors.
    missing = _export_tool(reference, tmp_path / "x", "--step=7")
    assert missing.returncode != 0 and "There is no checkpoint of step 7" in missing.stderr.strip().splitlines()[-1]


def test_warm_start_from_a_checkpoint_and_from_a_hugging_face_model(reference_run, minilm_dir):
    from bert_jax.models import convert
    from bert_jax.models.bert import BertForPreTraining, init_params
    from bert_jax.training import warm_start

    reference, _ = reference_run
    tiny = BertConfig(
        vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512
    ).replace(vocab_pad_multiple=8)
    fresh = init_params(BertForPreTraining(tiny), jax.random.key(5))
    start = warm_start.load(reference, tiny, fresh)
    final = _final_params(reference)  # the latest checkpoint is the final step: the export's weights
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(start.params).items()}
    word = flat["bert/embeddings/word_embeddings/embedding"]
    assert word.shape == (30528, 128)  # padded to this job's multiple of 8
    np.testing.assert_array_equal(word[:30522], final["bert/embeddings/word_embeddings/embedding"])
    np.testing.assert_array_equal(flat["cls/predictions/bias"][:30522], final["cls/predictions/bias"])
    assert start.kept_fresh == []

    # all-MiniLM-L6-v2 is a BertModel checkpoint: the encoder comes from it, the pretraining heads stay fresh.
    minilm_config, minilm = convert.from_hf(minilm_dir)
    config = minilm_config.replace(vocab_pad_multiple=128)
    fresh = init_params(BertForPreTraining(config), jax.random.key(0))
    start = warm_start.load(str(minilm_dir), config, fresh)
    np.testing.assert_array_equal(
        start.params["bert"]["encoder"]["layer_5"]["output"]["dense"]["kernel"],
        minilm["encoder"]["layer_5"]["output"]["dense"]["kernel"]
        if "encoder" in minilm
        else minilm["bert"]["encoder"]["layer_5"]["output"]["dense"]["kernel"],
    )
    assert start.kept_fresh and all(name.startswith("cls/") for name in start.kept_fresh)
    with pytest.raises(warm_start.WarmStartError, match="hidden_size: source 384 vs config 128"):
        warm_start.load(str(minilm_dir), tiny, init_params(BertForPreTraining(tiny), jax.random.key(0)))


# ---------------------------------------------------------------------------------------------------------------
# 4. Another topology: saved on (2, 2, 2) of 8 devices, restored on 1 device and on (1, 1, 4) (a subprocess)


def _topology_report(directory: str) -> dict[str, Any]:
    from bert_jax.models.bert import BertForPreTraining
    from bert_jax.sharding import MeshConfig, global_batch_from_process_local, make_mesh
    from bert_jax.training import train
    from bert_jax.training.optim import learning_rate_schedule, make_optimizer
    from tests.test_train import adamw_config, flat, mesh_test_config, numpy_batch

    config = mesh_test_config()  # 8 heads, vocab 997 padded to 1000: every mesh here can split it
    model = BertForPreTraining(config)
    optimizer, schedule = make_optimizer(adamw_config()), learning_rate_schedule(adamw_config())
    batches = [numpy_batch(config, seed=seed) for seed in (1, 2, 3)]

    def compiled(mesh):
        shardings = train.state_shardings(model, optimizer, mesh)
        step = train.make_train_step(model, optimizer, schedule, dropout_seed=0, mesh=mesh)
        return shardings, train.jit_train_step(step, shardings, mesh)

    mesh8 = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    shardings8, step8 = compiled(mesh8)
    state = train.create_train_state(model, optimizer, jax.random.key(0), shardings8)
    for batch in batches[:2]:
        state, _ = step8(state, global_batch_from_process_local(batch, mesh8))
    ckpt = checkpoint.Checkpointer(directory, save_every_steps=1)
    ckpt.save(2, state.params, state.opt_state, {"model_config": config.to_dict()}, {}, force=True)
    ckpt.wait_until_finished()
    saved = jax.tree.map(lambda x: np.array(x, copy=True), state.params)
    state, metrics = step8(state, global_batch_from_process_local(batches[2], mesh8))
    expected_params, expected_loss = jax.device_get(state.params), float(metrics["loss"])

    report: dict[str, Any] = {"expected_loss": expected_loss}
    for name, mesh in {
        "1": make_mesh(MeshConfig(data=1), jax.devices()[:1]),
        "1x1x4": make_mesh(MeshConfig(data=1, fsdp=1, tensor=4), jax.devices()[:4]),
    }.items():
        shardings, step = compiled(mesh)
        abstract = jax.eval_shape(train.init_fn(model, optimizer), jax.random.key(0))
        restored = ckpt.restore(
            checkpoint.abstract_like(abstract.params, shardings.params),
            checkpoint.abstract_like(abstract.opt_state, shardings.opt_state),
            config,
        )
        word = restored.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
        placement = {
            "devices": len(word.sharding.device_set),
            "word_shard": sorted({tuple(s.data.shape) for s in word.addressable_shards}),
        }
        state = train.TrainState(
            step=jax.device_put(np.int32(restored.step), shardings.step),
            params=restored.params,
            opt_state=restored.opt_state,
        )
        restored_params = jax.device_get(restored.params)
        exact = all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored_params), jax.tree.leaves(saved), strict=True)
        )
        state, metrics = step(state, global_batch_from_process_local(batches[2], mesh))
        params = flat(jax.device_get(state.params))
        reference = flat(expected_params)
        report[name] = {
            **placement,
            "restored_exactly": exact,
            "step": int(state.step),
            "loss": float(metrics["loss"]),
            "params_max_abs_diff": max(float(np.abs(params[k] - reference[k]).max()) for k in params),
        }
    ckpt.close()
    return report


def test_a_2x2x2_checkpoint_restores_on_1_device_and_on_1x1x4(tmp_path):
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_checkpoint", str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**ENV, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, devices, shard in (("1", 1, [1000, 64]), ("1x1x4", 4, [250, 64])):
        info = report[name]
        assert info["devices"] == devices and info["word_shard"] == [shard]  # really placed on the new mesh
        assert info["restored_exactly"]
        assert info["step"] == 3
        assert info["loss"] == pytest.approx(report["expected_loss"], rel=1e-5)
        assert info["params_max_abs_diff"] <= 1e-5


if __name__ == "__main__":
    print(json.dumps(_topology_report(sys.argv[1])))
