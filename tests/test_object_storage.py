"""Object storage (gs://) against a real GCS emulator on 127.0.0.1 (fake-gcs-server, started by the `gcs` fixture).

- The path layer (`bert_jax.storage`): cached copies are verified against the object (a damaged cache copy is
  downloaded again), uploads put the files that mark a directory complete last and skip what is already there.
- Checkpoints on gs:// (orbax writing through tensorstore and gcsfs): a round trip; a step whose save was cut
  short (no `commit_success.txt`) is ignored and removed at the next start; an unreadable latest checkpoint is
  set aside into `corrupt/` and the previous one restores.
- The corpus on gs://: built into the bucket (dataset_info.json last), reused from it on another host (another
  cache), read by every host from a verified local copy.
- The pretraining job with `--workdir=gs://...` (subprocesses, like a user): it trains, is killed with SIGKILL,
  resumes, and its export is bitwise identical to the same job on a local workdir; no local `gs:` directory.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_path
from tests.pretrain_cli import pretrain_command


@pytest.fixture()
def bucket(gcs, request) -> str:
    """A fresh bucket per test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    return gcs.create_bucket(f"{name}-{time.time_ns() % 10**8}")


def test_a_cached_copy_is_verified_and_replaced_when_it_differs(bucket, tmp_path):
    from bert_jax import storage

    remote = f"{bucket}/inputs/vocab.txt"
    storage.write_text(remote, "[PAD]\n[UNK]\nhello\n")
    local = storage.local_copy(remote)
    assert local.startswith(storage.cache_root()) and open(local).read() == "[PAD]\n[UNK]\nhello\n"
    with open(local, "w") as f:  # same size, other bytes: a damaged cache entry
        f.write("[PAD]\n[UNK]\nhellp\n")
    assert open(storage.local_copy(remote)).read() == "[PAD]\n[UNK]\nhello\n"
    assert storage.glob(f"{bucket}/inputs/*.txt") == [remote]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.local_copy(f"{bucket}/inputs/missing.txt")


def test_uploads_put_the_completion_markers_last_and_skip_what_is_there(bucket, tmp_path):
    from bert_jax import storage

    staging = tmp_path / "export"
    (staging / "hf").mkdir(parents=True)
    for name in ("hf/config.json", "hf/model.safetensors", "hf/vocab.txt", "step.txt"):
        (staging / name).write_text(name)
    order: list[str] = []
    target = f"{bucket}/run/export"
    storage.upload_tree(str(staging), target, last=("config.json", "step.txt"), progress=lambda p, n: order.append(p))
    assert order[-2:] == ["hf/config.json", "step.txt"] and len(order) == 4
    order.clear()
    uploaded = storage.upload_tree(str(staging), target, last=("config.json",), progress=lambda p, n: order.append(p))
    assert uploaded == 0 and order == []  # every object already matches
    assert storage.read_text(f"{target}/hf/model.safetensors") == "hf/model.safetensors"


def _tree(seed: float):
    import jax.numpy as jnp

    return {"w": jnp.full((64, 32), seed, jnp.float32), "b": jnp.arange(32, dtype=jnp.float32) * seed}


def test_checkpoints_on_gs_ignore_unfinished_saves_and_set_corrupt_ones_aside(bucket):
    import fsspec
    import jax

    from bert_jax import storage
    from bert_jax.training import checkpoint

    directory = f"{bucket}/run/checkpoints"
    meta = {"data_state": {"position": 1}}
    saver = checkpoint.Checkpointer(directory, save_every_steps=1, max_to_keep=5)
    for step in (1, 2):
        saver.save(step, _tree(step), {"mu": _tree(-step)}, meta, {"vocab.txt": "x"})
        saver.wait_until_finished()
    saver.close()
    fs = fsspec.filesystem("gs")
    # A save killed before it committed: the step directory exists but has no commit_success.txt.
    storage.write_text(f"{directory}/3/params/manifest.ocdbt", "partial")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _tree(0.0))
    reader = checkpoint.Checkpointer(directory, save_every_steps=1)
    assert reader.steps() == [1, 2] and not fs.exists(f"{directory}/3")  # removed at start, never restored
    restored = reader.restore(abstract, {"mu": abstract})
    assert restored.step == 2 and float(restored.params["w"][0, 0]) == 2.0
    reader.close()
    # Damage every array file of step 2: it is moved into corrupt/, and step 1 restores.
    for name in fs.find(f"{directory}/2/params"):
        if "/d/" in name:
            fs.pipe_file(name, b"garbage")
    reader = checkpoint.Checkpointer(directory, save_every_steps=1)
    restored = reader.restore(abstract, {"mu": abstract})
    assert restored.step == 1 and float(restored.opt_state["mu"]["w"][0, 0]) == -1.0
    (aside,) = fs.ls(f"{directory}/corrupt")
    assert aside.rsplit("/", 1)[-1].startswith("2-") and fs.exists(f"{aside}/params/manifest.ocdbt")
    assert reader.steps() == [1]
    reader.close()


def test_the_corpus_is_built_into_the_bucket_and_reused_from_another_host(bucket, tmp_path, monkeypatch):
    from bert_jax import storage
    from bert_jax.data import corpus

    book = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    remote_book, remote_vocab = f"{bucket}/text/alice.txt", f"{bucket}/vocab/vocab.txt"
    storage.upload_file(str(book), remote_book)
    storage.upload_file(str(shared_path("vocab", "bert-base-uncased-vocab.txt")), remote_vocab)
    options = corpus.CorpusOptions(
        input_files=(remote_book,), vocab_file=remote_vocab, max_seq_length=64, eval_fraction=0.02
    )
    output = f"{bucket}/corpus"
    built = corpus.build_corpus(options, output, num_shards=2)
    assert not built.reused and built.dataset_dir.startswith(output + "/")
    assert storage.exists(f"{built.dataset_dir}/{corpus.DATASET_INFO}")
    # Another host: its own cache, nothing local. It finds the uploaded corpus, reuses it, reads the same data.
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "other-host-cache"))
    again = corpus.build_corpus(options, output, num_shards=2)
    assert again.reused and again.num_examples == built.num_examples
    local = corpus.local_dataset_dir(output)
    assert local.startswith(str(tmp_path / "other-host-cache"))
    source = corpus.open_corpus(local, "train")
    assert len(source) == built.num_examples["train"]
    assert int(source[0]["tokens"][0]) == 101  # [CLS] of the uncased vocabulary (read from the bucket)
    assert open(os.path.join(local, "vocab.txt")).read() == storage.read_text(remote_vocab)


STEPS = 12


def _command(workdir: str, book: str) -> list[str]:
    return pretrain_command(
        workdir,
        f"--config.data.train_files={book}",
        f"--config.num_train_steps={STEPS}",
        "--config.global_batch_size=8",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=6",
        "--config.eval_batches=1",
        "--config.checkpoint_every_steps=3",
        "--config.data.eval_fraction=0.02",
        "--config.peak_flops_per_device=1e11",
        "--config.optimizer.warmup_steps=2",
    )


def _env(emulator, cache: str) -> dict[str, str]:
    return {**os.environ, **emulator.env(), "TF_CPP_MIN_LOG_LEVEL": "3", "BERT_JAX_CACHE_DIR": cache}


def _params(export_dir: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(export_dir, "bert_jax", "params.safetensors"))


@pytest.mark.slow
def test_a_gs_workdir_job_killed_with_sigkill_resumes_to_the_local_jobs_export(gcs, bucket, tmp_path):
    from bert_jax import storage

    book = str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt"))
    local_run = tmp_path / "local-run"
    reference = subprocess.run(
        _command(str(local_run), book),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_env(gcs, str(tmp_path / "c0")),
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    workdir = f"{bucket}/run1"
    env = _env(gcs, str(tmp_path / "cache"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    process = subprocess.Popen(
        _command(workdir, book),
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    kill_after = random.Random(time.time_ns()).randint(4, 10)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(f"step {kill_after}/{STEPS}"):
            break
    time.sleep(random.random() * 0.3)  # anywhere in the next step(s), possibly during a save
    process.kill()
    process.wait()
    assert any(line.startswith(f"step {kill_after}/") for line in seen), "".join(seen)[-2000:]
    committed = [
        int(name)
        for name in storage.listdir(f"{workdir}/checkpoints")
        if name.isdigit() and storage.exists(f"{workdir}/checkpoints/{name}/commit_success.txt")
    ]
    assert not storage.exists(f"{workdir}/export/step.txt")

    resumed = subprocess.run(
        _command(workdir, book),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if committed:
        assert f"Resumed from the checkpoint of step {max(committed)} in {workdir}/checkpoints" in resumed.stdout
    assert "Corpus reused" in resumed.stdout and f"Exported the weights of step {STEPS} to {workdir}/export" in (
        resumed.stdout
    )
    assert os.listdir(cwd) == []  # nothing local: no ./gs:/ directory, no stray files
    # JAX's compilation cache lives in the bucket too: the restart loads its programs from there.
    loaded = re.search(
        rf"compilation cache {re.escape(workdir)}/jax_cache: (\d+) of \d+ programs loaded", resumed.stdout
    )
    assert loaded is not None and int(loaded.group(1)) >= 1, resumed.stdout[-2000:]

    export = storage.local_tree(f"{workdir}/export")
    ours, theirs = _params(export), _params(str(local_run / "export"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)  # bitwise
    assert storage.read_text(f"{workdir}/export/step.txt").strip() == str(STEPS)
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert storage.exists(f"{workdir}/export/hf/{name}")
    logged = {}
    for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines():
        record = json.loads(line)
        if "loss" in record:
            logged[record["step"]] = record["loss"]
    expected = {}
    for line in (local_run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            expected[record["step"]] = record["loss"]
    assert logged == expected
    assert storage.glob(f"{workdir}/tensorboard/events.out.tfevents*")
    # The gs:// workdir is a warm-start source (its latest checkpoint, read by orbax in place), read-only: a
    # save it left unfinished is not removed by a reader.
    from bert_jax.training import warm_start

    storage.write_text(f"{workdir}/checkpoints/99/params/partial", "x")
    started = warm_start.read_source(workdir)
    from flax import traverse_util

    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(started.params).items()}
    assert flat.keys() == theirs.keys()
    for name in flat:  # the latest checkpoint (step 12) holds the exported params
        np.testing.assert_array_equal(flat[name], theirs[name], err_msg=name)
    assert storage.exists(f"{workdir}/checkpoints/99/params/partial")


def test_a_missing_bucket_is_one_clear_error_before_anything_starts(gcs):
    from bert_jax import storage

    with pytest.raises(storage.StorageError, match="gs://no-such-bucket does not exist; create the bucket"):
        storage.check_paths({"workdir": "gs://no-such-bucket/run", "data.vocab_file": "/local/vocab.txt"})


@pytest.mark.slow
def test_an_unreachable_store_ends_the_job_in_one_line_within_60_seconds(gcs, tmp_path):
    from tests.gcs_emulator import client_env, free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, **client_env(dead), "TF_CPP_MIN_LOG_LEVEL": "3", "BERT_JAX_CACHE_DIR": str(tmp_path / "c")}
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax_tools.pretrain",
            f"--config={REPO_ROOT / 'experiments' / 'bert_tiny.py'}",
            "--workdir=gs://some-bucket/run",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 60, (elapsed, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-jax-pretrain: error: gs://some-bucket did not answer within 30 s"), last
    assert os.listdir(tmp_path) == ["c"] or os.listdir(tmp_path) == []  # no ./gs:/..., nothing written


def test_the_storage_benchmark_measures_and_cleans_up(bucket, tmp_path):
    from bert_jax import storage
    from bert_jax.harness import storage_benchmark

    for directory in (str(tmp_path / "scratch"), f"{bucket}/scratch"):
        figures = storage_benchmark.checkpoint_throughput(directory, megabytes=13, repeats=2)
        assert 12 <= figures["state_mb"] <= 14 and figures["save_mb_per_sec"] > 0 and figures["restore_mb_per_sec"] > 0
        assert len(figures["save_seconds"]) == len(figures["restore_seconds"]) == 2
        assert storage.listdir(directory) == []  # the benchmark's checkpoints are removed


@pytest.mark.slow
def test_a_store_lost_mid_run_stops_the_job_naming_the_last_complete_checkpoint(tmp_path):
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator(str(tmp_path / "store")).start()  # its own: this test stops and restarts it
    try:
        bucket = emulator.create_bucket("outage")
        book = str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt"))
        command = [
            *_command(f"{bucket}/run", book),
            "--config.num_train_steps=40",
            "--config.checkpoint_timeout_seconds=45",
        ]
        env = {**_env(emulator, str(tmp_path / "cache")), "PYTHONPATH": str(REPO_ROOT)}
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for line in process.stdout:
            if line.startswith("step 7/"):
                break
        committed = f"{emulator.url}/storage/v1/b/outage/o/run%2Fcheckpoints%2F6%2Fcommit_success.txt"
        # the save of step 6 is published (asynchronously; on a loaded 2-core CI host it once took over 60 s)
        deadline, published = time.monotonic() + 240, False
        while not published and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(committed, timeout=5).read()
                published = True
            except urllib.error.HTTPError:
                time.sleep(0.2)
        assert published, "the checkpoint of step 6 was not published within 240 s"
        emulator.stop()  # the store goes away between the checkpoints of steps 6 and 9
        stopped = time.monotonic()
        _, err = process.communicate(timeout=300)
        waited = time.monotonic() - stopped
        assert process.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("bert-jax-pretrain: error: Writing the checkpoint of step"), last
        assert "The last complete checkpoint is step 6, untouched" in last and "resumes from step 6" in last, last
        # The save's 45 s timeout plus the gcsfs retries of two requests (73 s on an idle 2-core host), then out;
        # never tensorstore's own retries (many tries, backoff up to 32 s each: many minutes). 240 s leaves a
        # loaded CI host room and still fails a job that waits those retries out.
        assert waited < 240, waited
        emulator.start()  # the store is back, with what it held
        resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"Resumed from the checkpoint of step 6 in {bucket}/run/checkpoints" in resumed.stdout
        assert "Exported the weights of step 40" in resumed.stdout
    finally:
        emulator.stop()


def test_init_from_a_hugging_face_directory_on_gs(bucket, minilm_dir):
    from bert_jax import storage
    from bert_jax.training import warm_start

    remote = f"{bucket}/models/minilm"
    storage.upload_tree(str(minilm_dir), remote)
    source = warm_start.read_source(remote)
    local = warm_start.read_source(str(minilm_dir))
    assert source.path == remote and source.config == local.config and source.config.hidden_size == 384
    np.testing.assert_array_equal(
        source.params["bert"]["embeddings"]["word_embeddings"]["embedding"],
        local.params["bert"]["embeddings"]["word_embeddings"]["embedding"],
    )
    assert source.tokenizer_files.get("vocab.txt") == local.tokenizer_files.get("vocab.txt")
    with pytest.raises(warm_start.WarmStartError, match="does not exist"):
        warm_start.read_source(f"{bucket}/models/missing")


def _tool(module: str, *args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert result.returncode == 0, f"{module}: {result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_tools_and_fine_tuning_read_and_write_gs(gcs, bucket, tmp_path):
    from bert_jax import storage

    env = {**_env(gcs, str(tmp_path / "cache")), "PYTHONPATH": str(REPO_ROOT)}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    book = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    storage.upload_file(str(book), f"{bucket}/text/alice.txt")
    run = f"{bucket}/run"
    pretrain = _command(run, f"{bucket}/text/*.txt")
    subprocess.run(pretrain, check=True, capture_output=True, cwd=cwd, env=env, timeout=600)

    _tool("bert_jax_tools.export", f"--workdir={run}", f"--output_dir={bucket}/hf", env=env, cwd=cwd)
    assert storage.read_text(f"{bucket}/hf/config.json") == storage.read_text(f"{run}/export/hf/config.json")
    converted = f"{bucket}/native"
    _tool(
        "bert_jax_tools.convert",
        f"--input={bucket}/hf",
        f"--output_dir={converted}",
        "--output_format=native",
        env=env,
        cwd=cwd,
    )
    native, exported = (
        _params_of(storage.local_tree(converted)),
        _params_of(storage.local_tree(f"{run}/export/bert_jax")),
    )
    for name in exported:
        np.testing.assert_array_equal(native[name], exported[name], err_msg=name)
    embedded = _tool(
        "bert_jax_tools.embed", f"--model={bucket}/hf", "--text=the cat sat", "--text=a dog ran", env=env, cwd=cwd
    )
    assert "cosine similarity:" in embedded.stdout
    _tool("bert_jax_tools.plot_metrics", f"--workdirs={run}", env=env, cwd=cwd)
    assert storage.exists(f"{run}/metrics.png")
    _tool(
        "bert_jax_tools.train_vocab",
        f"--input_files={bucket}/text/*.txt",
        f"--output={bucket}/vocab/v.txt",
        "--vocab_size=400",
        env=env,
        cwd=cwd,
    )
    assert "[MASK]" in storage.read_text(f"{bucket}/vocab/v.txt").split()

    glue = f"{bucket}/glue"  # the task data on gs:// too
    storage.upload_tree(str(shared_path("glue", "SST-2")), f"{glue}/SST-2")
    sst2 = f"{bucket}/sst2"
    finetune = [
        sys.executable,
        "-m",
        "bert_jax_tools.finetune",
        f"--config={REPO_ROOT / 'experiments' / 'glue_sst2.py'}",
        f"--workdir={sst2}",
        f"--config.init_from={run}",
        f"--config.data_dir={glue}",
        "--config.model.size=tiny",
        "--config.global_batch_size=16",
        "--config.max_seq_length=32",
        "--config.num_train_steps=8",
        "--config.eval_every_steps=8",
        "--config.log_every_steps=4",
    ]
    tuned = subprocess.run(finetune, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert json.loads(storage.read_text(f"{sst2}/eval_results.json"))["step"] == 8
    storage.write_text(f"{bucket}/in.txt", "a fine film\na dull film\n")
    _tool(
        "bert_jax_tools.predict",
        f"--workdir={sst2}",
        f"--input={bucket}/in.txt",
        f"--output={bucket}/out.jsonl",
        env=env,
        cwd=cwd,
    )
    assert len(storage.read_text(f"{bucket}/out.jsonl").splitlines()) == 2
    assert os.listdir(cwd) == []  # nothing written locally: no ./gs:/ anywhere


def _params_of(directory: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(directory, "params.safetensors"))


@pytest.mark.slow
def test_sigterm_saves_on_gs_and_the_restart_continues_on_another_mesh(gcs, bucket, tmp_path):
    """SIGTERM saves the current step to the bucket; the restart (8 simulated devices, another mesh) resumes it."""
    from bert_jax import storage

    book = str(shared_path("gutenberg", "pg11-alice-in-wonderland.txt"))
    run = f"{bucket}/run"
    devices = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env = {**_env(gcs, str(tmp_path / "cache")), "PYTHONPATH": str(REPO_ROOT), "XLA_FLAGS": devices}
    first = [*_command(run, book), "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    process = subprocess.Popen(
        first, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in process.stdout:
        if line.startswith(f"step 4/{STEPS}"):
            break
    process.send_signal(__import__("signal").SIGTERM)
    out = process.communicate(timeout=300)[0]
    assert process.returncode == 0
    (stopped,) = [line for line in out.splitlines() if line.startswith("Stopped by SIGTERM after step")]
    step = int(stopped.split("after step ")[1].split(";")[0])
    assert storage.exists(f"{run}/checkpoints/{step}/commit_success.txt")
    second = [*_command(run, book), "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=2"]
    resumed = subprocess.run(second, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from the checkpoint of step {step} in {run}/checkpoints" in resumed.stdout
    assert "'fsdp': 4" in resumed.stdout and f"Exported the weights of step {STEPS}" in resumed.stdout


@pytest.mark.slow
def test_a_beam_built_corpus_on_gs_trains_a_job(gcs, bucket, tmp_path):
    pytest.importorskip("apache_beam")
    from bert_jax import storage
    from bert_jax.data import corpus

    book = shared_path("gutenberg", "pg11-alice-in-wonderland.txt")
    storage.upload_file(str(book), f"{bucket}/text/alice.txt")
    options = corpus.CorpusOptions(
        input_files=(f"{bucket}/text/alice.txt",),
        vocab_file=str(REPO_ROOT / "bert_jax" / "assets" / "vocab.txt"),
        max_seq_length=64,
        eval_fraction=0.02,
        use_beam=True,
        beam_buckets=4,
    )
    built = corpus.build_corpus(options, f"{bucket}/corpus", num_shards=2)
    assert "_beam_" in built.dataset_dir and storage.exists(f"{built.dataset_dir}/{corpus.DATASET_INFO}")
    env = {**_env(gcs, str(tmp_path / "cache")), "PYTHONPATH": str(REPO_ROOT)}
    command = [c for c in _command(f"{bucket}/run", "") if not c.startswith("--config.data.train_files")]
    command += [f"--config.data.corpus_dir={bucket}/corpus", "--config.num_train_steps=4"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 4/4" in result.stdout and str(tmp_path / "cache") in result.stdout  # read from the host cache
