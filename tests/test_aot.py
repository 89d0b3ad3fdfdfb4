"""bert-jax-compile: the job's program compiled for TPU slices on this CPU host (libtpu's topology descriptions).

References are independent of the code under test: Cloud TPU's published slice shapes and chip counts, and
per-chip bytes counted from the model's parameter shapes (float32 params + AdamW's two moments, replicated
over a data-parallel mesh) plus the batch rows one chip holds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
import types

import jax
import pytest

from bert_jax.compile import aot, tpu_topology
from bert_jax.jobs import config as job_config
from bert_jax.jobs import pretrain_plan
from bert_jax.jobs.plans import make_plan
from bert_jax.models.bert import BertForPreTraining
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "experiments" / "bert_tiny.py"


def tiny_config(**overrides):
    import runpy

    config = runpy.run_path(str(TINY))["get_config"]()
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return job_config.parse(config)


@pytest.mark.parametrize(
    "name, libtpu, chips, hosts",
    [
        ("v4-8", "v4:2x2x1", 4, 1),  # v4-N counts TensorCores: 2 per chip
        ("v4-128", "v4:4x4x4", 64, 16),
        ("v4-4096", "v4:8x16x16", 2048, 512),
        ("v5p-8", "v5p:2x2x1", 4, 1),
        ("v5p-128", "v5p:4x4x4", 64, 16),
        ("v5litepod-16", "v5e:4x4", 16, 4),
        ("v5litepod-8", "v5e:2x4", 8, 1),
        ("v5e-256", "v5e:16x16", 256, 64),
        ("v6e-1", "v6e:1x1", 1, 1),
        ("v5p:2x2x2", "v5p:2x2x2", 8, 2),
    ],
)
def test_cloud_tpu_names_map_to_the_published_slices(name, libtpu, chips, hosts):
    where = tpu_topology.parse_topology(name)
    assert (where.libtpu_name, where.chips, where.hosts) == (libtpu, chips, hosts)


@pytest.mark.parametrize("name", ["v4-6", "v5litepod-12", "v7x-8", "tpu", "v5e:4x4x4"])
def test_unknown_names_say_which_are_known(name):
    with pytest.raises(tpu_topology.TopologyError, match="known: v4-8"):
        tpu_topology.parse_topology(name)


def tpu_devices(where):
    pytest.importorskip("libtpu", reason="libtpu is in the test extra (pip install -e '.[test]')")
    return where.devices()


def test_tiny_on_v5e_2x2_fits_and_its_argument_bytes_are_the_state_and_the_batch_rows():
    where = tpu_topology.parse_topology("v5e:2x2")
    devices = tpu_devices(where)
    config = tiny_config()
    report = aot.compile_for_slice(config, where, make_plan, devices)
    assert report.chips == 4 and report.device_kind == "TPU v5 lite" and report.mesh["data"] == 4
    assert report.fits and report.peak_bytes < 16 * 2**30
    # Independently: the padded model's parameters, float32, three copies (params, mu, nu), replicated on each
    # chip of a data-only mesh; plus this chip's quarter of the batch (int32 / float32 columns).
    padded = pretrain_plan.model_config(config, 30522).replace(vocab_pad_multiple=128)
    shapes = jax.eval_shape(
        lambda: BertForPreTraining(padded).init(jax.random.key(0), jax.numpy.zeros((1, 8), jax.numpy.int32))
    )
    params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    rows, seq = config.global_batch_size // 4, config.data.max_seq_length
    predictions = config.data.max_predictions_per_seq
    batch = rows * (3 * seq + 3 * predictions + 1) * 4
    assert report.params_bytes == params * 4 and report.batch_bytes == batch
    assert 2 * params * 4 <= report.opt_state_bytes <= 2 * params * 4 + 64  # mu, nu (+ step and count scalars)
    # XLA's own figure for the same buffers: equal up to the TPU's tile padding of small arrays (biases, norms)
    expected = 3 * params * 4 + batch
    assert expected <= report.train.arguments <= expected * 1.001, (report.train.arguments, expected)
    # XLA's FLOPs per chip against ours (flops.py): within 25% for this small model (its head is a bigger share)
    assert report.xla_flops_per_chip and 0.75 < report.xla_flops_per_chip / report.model_flops_per_chip < 1.25
    # a data-parallel step all-reduces the gradients
    assert any(c.kind == "all-reduce" and c.bytes > 0 for c in report.collectives)
    assert report.host_transfers == 0  # no host callbacks in the step


def test_v4_8_compiles_in_megacore_mode_one_device_per_chip():
    where = tpu_topology.parse_topology("v4-8")
    report = aot.compile_for_slice(tiny_config(), where, make_plan, tpu_devices(where))
    assert report.chips == 4 and report.device_kind == "TPU v4" and report.fits


def test_two_slices_compile_with_dcn_data():
    where = tpu_topology.parse_topology("v5e:2x2", num_slices=2)
    report = aot.compile_for_slice(tiny_config(**{"mesh.dcn_data": 2}), where, make_plan, tpu_devices(where))
    assert report.chips == 8 and report.num_slices == 2 and report.mesh["data"] == 8 and report.fits


def compile_cli(*args, timeout=900):
    # this test process may hold libtpu already (the in-process compiles): let the child load it too
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.compile", f"--config={TINY}", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=timeout,
    )


def test_a_config_that_does_not_fit_exits_1_and_names_a_change_that_fits():
    pytest.importorskip("libtpu", reason="libtpu is in the test extra (pip install -e '.[test]')")
    # 8,192 sequences of 512 on four 16 GB chips: the attention probabilities alone need about three times what a
    # chip has; in four microbatches (512 per chip at a time) they fit.
    result = compile_cli(
        "--topology=v5litepod-4",
        "--config.global_batch_size=8192",
        "--config.data.max_seq_length=512",
        "--config.data.max_predictions_per_seq=80",
        "--config.initialization.attention=random",  # the demo's "local" start serves sequences up to 128
        "--max_compiles=2",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "NO (headroom" in result.stdout
    line = json.loads(result.stdout.strip().splitlines()[-1])["compile"]
    assert not line["fits"] and line["per_chip_bytes"]["total"] > 16 * 2**30
    fitting = [s for s in line["suggestions"] if s["fits"]]
    assert fitting, result.stdout
    assert "Best fitting change: --config." in result.stdout


# The CLI with one variant's compile replaced by a child that really segfaults (`ctypes.string_at(0)` reads address
# 0), the others compiled as usual (in their children): argv[1] is the crashing variant's microbatch count.
CRASH_ONE_VARIANT = """
import ctypes, sys
from bert_jax.compile import aot
crashing, sys.argv = int(sys.argv[1]), [sys.argv[0], *sys.argv[2:]]
real = aot.compile_contained
def compile_variant(config, target, make_plan):
    if config.num_microbatches == crashing:
        return aot.run_contained(ctypes.string_at, 0)
    return real(config, target, make_plan)
aot.compile_contained = compile_variant
from bert_jax_tools.compile import run
run()
"""


def test_run_contained_returns_the_value_raises_the_error_and_survives_a_segfault():
    started = time.perf_counter()
    assert aot.run_contained(divmod, 7, 2) == (3, 1)
    one_child = time.perf_counter() - started
    died = aot.run_contained(ctypes.string_at, 0)  # reads address 0: SIGSEGV in the child
    assert died == aot.ChildDied(signal=signal.SIGSEGV, exitcode=-signal.SIGSEGV)
    assert died.describe("the TPU compiler") == "the TPU compiler crashed (signal 11, SIGSEGV)"
    with pytest.raises(ValueError, match="invalid literal") as raised:
        aot.run_contained(int, "x")
    assert "In the child process" in raised.value.__notes__[0]
    print(f"one child: {one_child:.1f} s")


def write_pid_and_sleep(path: str) -> None:
    """A child's work for the test below: says which process it is, then waits to be killed."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def running(pid: int) -> bool:
    """The process exists and is not a zombie (one whose exit its new parent has not collected yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_child_dies_with_its_parent(tmp_path):
    """A parent killed outright (the out-of-memory killer's SIGKILL) takes its compile child with it."""
    pid_file = tmp_path / "child.pid"
    script = (
        "from bert_jax.compile import aot; from tests import test_aot; "
        f"aot.run_contained(test_aot.write_pid_and_sleep, {str(pid_file)!r})"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    deadline = time.monotonic() + 300
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = running(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the child outlived its parent"


def test_suggest_fits_keeps_the_rows_around_a_variant_whose_compile_segfaults():
    """suggest_fits with one variant's compile a real segfault in a child, the others reports of set sizes."""
    target = aot.Target("v5e:2x2", "v5e:2x2", 1, 4, 1, 16 * 10**9, ())
    memory = aot.ProgramMemory(arguments=10**9, outputs=0, aliased=0, temporaries=0, code=0)
    base = aot.CompileReport(
        "v5e:2x2", "v5e:2x2", 1, 4, 1, "TPU v5 lite", {"data": 4}, 16, 1, 64, "none", "float32", "xla",
        10**8, 2 * 10**8, 10**6, memory, memory, 16 * 10**9, 1.0, None, 1.0, [], 0,
    )  # fmt: skip
    crashing = {"model.remat_policy": "dots"}
    compiled = []

    def compile_variant(config, target_, make_plan_):
        assert target_ is target and make_plan_ is make_plan
        if config.model.fields["remat_policy"] == "dots":
            return aot.run_contained(ctypes.string_at, 0)
        compiled.append(int(config.num_microbatches))
        temporaries = (40 if config.num_microbatches == 2 else 4) * 10**9  # 2 microbatches: too big
        return dataclasses.replace(base, train=dataclasses.replace(memory, temporaries=temporaries))

    # the failing compile's plan, as the compile tool passes it (this target has no devices to build one on)
    current = types.SimpleNamespace(
        model_config=types.SimpleNamespace(remat_policy="none"),
        num_microbatches=1,
        global_batch_size=16,
        splits_batch=True,
    )
    rows = aot.suggest_fits(
        tiny_config(), target, make_plan, current=current, max_compiles=3, want=1, compile_variant=compile_variant
    )
    assert [r.change.label for r in rows] == ["2 microbatches", "remat dots", "fsdp 4"]
    assert rows[1].change.overrides == crashing and rows[1].report is None
    assert rows[1].crashed == "the TPU compiler crashed (signal 11, SIGSEGV)"
    assert compiled == [2, 1] and not rows[0].report.fits and rows[2].report.fits  # the rows after the crash
    assert aot.best_fit(rows) is rows[2]
    assert aot.format_suggestions(rows).splitlines()[1:] == [
        "  2 microbatches: does not fit, 41.00 GB per chip (headroom -25.48 GB): --config.num_microbatches=2",
        "  remat dots: the TPU compiler crashed (signal 11, SIGSEGV)",
    ]


def test_a_crashed_variant_is_its_own_row():
    change = aot.Change("remat full", {"model.remat_policy": "full"})
    row = aot.Suggestion(change, None, crashed=aot.ChildDied(11, -11).describe("the TPU compiler"))
    assert aot.format_suggestions([row]) == "  remat full: the TPU compiler crashed (signal 11, SIGSEGV)"
    killed = aot.ChildDied(signal.SIGKILL, -signal.SIGKILL).describe("the TPU compiler")
    assert killed == "the TPU compiler was killed (signal 9, SIGKILL: most likely out of host memory)"
    assert aot.ChildDied(None, 3).describe("the compiler") == "the compiler exited with status 3 without a result"


def test_a_variant_whose_compiler_crashes_leaves_the_other_rows_and_exits_1():
    pytest.importorskip("libtpu", reason="libtpu is in the test extra (pip install -e '.[test]')")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CRASH_ONE_VARIANT, "2", f"--config={TINY}", "--topology=v5litepod-4",
         "--config.global_batch_size=8192", "--config.data.max_seq_length=512",
         "--config.data.max_predictions_per_seq=80", "--config.initialization.attention=random", "--max_compiles=2"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "  2 microbatches: the TPU compiler crashed (signal 11, SIGSEGV)" in result.stdout
    line = json.loads(result.stdout.strip().splitlines()[-1])["compile"]
    crashed = [s for s in line["suggestions"] if s.get("crashed")]
    assert crashed == [
        {"change": {"num_microbatches": 2}, "fits": False, "total_bytes": None,
         "crashed": "the TPU compiler crashed (signal 11, SIGSEGV)"}
    ]  # fmt: skip
    assert [s for s in line["suggestions"] if s["fits"]], result.stdout  # the variant that compiled, and fits
    assert "Best fitting change: --config.num_microbatches=" in result.stdout


def test_an_unknown_topology_exits_2_with_one_line():
    result = compile_cli("--topology=v9-8", timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("bert-jax-compile: error: unknown TPU topology 'v9-8'")
    assert "Traceback" not in result.stderr


def test_configs_errors_end_before_compiling_with_exit_2():
    result = compile_cli("--topology=v5e:2x2", "--config.mesh.tensor=3", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("bert-jax-compile: error:")


def test_a_fine_tuning_config_compiles_its_train_and_predict_steps():
    """bert-jax-finetune's program (SST-2 head on BERT-tiny) for v5e:2x2: params of the classifier model and
    AdamW's two moments replicated on each chip, plus a quarter of the batch (3 int32 inputs + the label)."""
    import runpy

    from bert_jax.finetune.tasks import make_task

    where = tpu_topology.parse_topology("v5e:2x2")
    devices = tpu_devices(where)
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
    config.model.size = "tiny"
    config.vocab_file = str(REPO_ROOT / "bert_jax" / "assets" / "vocab.txt")
    config = job_config.parse(config)
    compiled = aot.compile_job(config, aot.slice_target(where, devices), make_plan)
    report = compiled.report
    assert report.fits and report.mesh["data"] == 4 and report.seq_length == 128
    from bert_jax.models import configs

    # the fine-tuning job keeps the vocabulary unpadded on a mesh that does not split it
    model = make_task("glue_sst2").model(configs.named_config("tiny", vocab_size=30522))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 8), jax.numpy.int32)))
    params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    rows = config.global_batch_size // 4
    assert report.params_bytes == params * 4
    assert report.batch_bytes == rows * (3 * 128 + 1) * 4
    assert 2 * params * 4 <= report.opt_state_bytes <= 2 * params * 4 + 64
    assert any(c.kind == "all-reduce" for c in report.collectives)
    # no microbatch suggestions for a step that runs its batch whole
    assert all("num_microbatches" not in c.overrides for c in aot.candidate_changes(compiled.config, compiled.job, 4))


@pytest.mark.slow
def test_splash_attention_compiles_for_a_slice_with_the_heads_split():
    """The Mosaic kernel itself (not its interpreter) in the TPU program, per device under a tensor-split mesh."""
    where = tpu_topology.parse_topology("v5e:2x2")
    config = tiny_config(
        **{
            "model.attention_kernel": "splash",
            "model.attention_probs_dropout_prob": 0.0,
            "mesh.tensor": 2,
            "data.max_seq_length": 128,
            "data.max_predictions_per_seq": 20,
        }
    )
    compiled = aot.compile_job(config, aot.slice_target(where, tpu_devices(where)), make_plan)
    assert compiled.report.fits and compiled.report.attention_kernel == "splash"
    assert compiled.report.mesh["tensor"] == 2
    text = compiled.train_step.as_text()
    # one kernel call per layer forward, and the backward's (dq, dkv) kernels
    assert text.count("tpu_custom_call") >= 2 * config_layers(config), text.count("tpu_custom_call")


def config_layers(config) -> int:
    return pretrain_plan.model_config(config, 30522).num_hidden_layers


def test_the_modern_family_compiles_with_splash_for_a_slice():
    """modernbert_tiny with splash on v5e:2x2 (heads split over `tensor`): the Mosaic kernel with its sliding-window
    mask on the local layers (window 32 of 128 tokens) and the full mask on the global ones, in the TPU program of
    the family's train step (ModernBERT's recipes, experiments/modernbert_base.py, run splash on TPUs)."""
    import runpy

    where = tpu_topology.parse_topology("v5e:2x2")
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "modernbert_tiny.py"))["get_config"]()
    config.model.attention_kernel = "splash"
    config.model.dtype = "bfloat16"
    config.mesh.tensor = 2
    config.data.max_seq_length = 128
    config.data.max_predictions_per_seq = 20
    job = job_config.parse(config)
    compiled = aot.compile_job(job, aot.slice_target(where, tpu_devices(where)), make_plan)
    report = compiled.report
    assert report.fits and report.attention_kernel == "splash" and report.mesh["tensor"] == 2
    layers = job.model.model_config().num_hidden_layers
    # one kernel call per layer forward, and the backward's (dq, dkv) kernels
    assert compiled.train_step.as_text().count("tpu_custom_call") >= 2 * layers
