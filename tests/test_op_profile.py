"""op_profile: trace events joined with the optimized HLO's op names; bert-jax-benchmark --profile_dir end to end."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from bert_jax.harness import op_profile
from tests.conftest import REPO_ROOT

HLO = """\
HloModule jit_train_step, entry_computation_layout={...}

%fused_computation.1 (param_0: f32[4,8]) -> f32[4,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  ROOT %add.9 = f32[4,8]{1,0} add(%param_0, %param_0), metadata={op_name="jit(train_step)/inner/add"}
}

ENTRY %main.1 (p0: f32[4,8]) -> f32[4,8] {
  %fusion.1 = f32[4,8]{1,0} fusion(%p0), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train_step)/jvp(BertForPreTraining)/bert/encoder/layer_0/intermediate/dense/dot_general" stack_frame_id=3}
  %fusion.2 = f32[4,8]{1,0} fusion(%p0), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train_step)/jvp(BertForPreTraining)/bert/encoder/layer_1/intermediate/dense/dot_general" stack_frame_id=4}
  ROOT %dot.3 = f32[4,8]{1,0} dot(%fusion.1, %fusion.2), lhs_contracting_dims={1}, rhs_contracting_dims={1}, metadata={op_name="jit(train_step)/transpose(jvp(BertForPreTraining))/cls/predictions/dot_general"}
}
"""


def _event(name: str, dur_us: float, ph: str = "X") -> dict:
    return {"ph": ph, "name": name, "dur": dur_us, "pid": 1, "tid": 2, "ts": 0}


def test_op_names_are_normalized_per_layer_and_without_the_jit_prefix():
    names = op_profile.instruction_op_names(HLO)
    assert names["fusion.1"] == "jvp(BertForPreTraining)/bert/encoder/layer_N/intermediate/dense/dot_general"
    assert names["fusion.2"] == names["fusion.1"]
    assert names["dot.3"] == "transpose(jvp(BertForPreTraining))/cls/predictions/dot_general"
    assert names["add.9"] == "inner/add"


def test_events_summed_per_op_and_step():
    events = [
        _event("fusion.1", 3000),
        _event("fusion.2", 1000),
        _event("dot.3", 500),
        _event("fusion.1", 3000),
        _event("fusion.2", 1000),
        _event("dot.3", 700),
        _event("ThunkExecutor::Execute", 99999),  # not an instruction: ignored
        _event("fusion.1", 12345, ph="B"),  # not a complete event: ignored
    ]
    rows = op_profile.op_times(events, op_profile.instruction_op_names(HLO), steps=2)
    assert [row.op for row in rows] == [
        "jvp(BertForPreTraining)/bert/encoder/layer_N/intermediate/dense/dot_general",
        "transpose(jvp(BertForPreTraining))/cls/predictions/dot_general",
    ]
    dense, head = rows
    assert dense.ms_per_step == pytest.approx((3000 + 1000 + 3000 + 1000) / 1e3 / 2)
    assert dense.calls_per_step == 2 and dense.instructions == 2
    assert head.ms_per_step == pytest.approx(0.6)
    assert head.calls_per_step == 1 and head.instructions == 1
    with pytest.raises(ValueError, match="steps"):
        op_profile.op_times(events, {}, steps=0)


def test_summarize_reads_the_newest_trace_and_shares_add_up(tmp_path):
    old = tmp_path / "plugins" / "profile" / "2026_01_01_00_00_00"
    new = tmp_path / "plugins" / "profile" / "2026_01_01_00_00_09"
    for folder, dur in ((old, 1.0), (new, 2000.0)):
        folder.mkdir(parents=True)
        with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
            json.dump({"traceEvents": [_event("fusion.1", dur), _event("dot.3", dur / 2)]}, f)
    os.utime(old / "perfetto_trace.json.gz", (1, 1))
    summary = op_profile.summarize(str(tmp_path), HLO, steps=1)
    assert summary["trace_file"].startswith(str(new))
    assert summary["traced_ms_per_step"] == pytest.approx(3.0)
    assert [op["share"] for op in summary["ops"]] == pytest.approx([2 / 3, 1 / 3])
    text = op_profile.format_op_table(summary)
    assert "2.0" in text and "intermediate/dense/dot_general" in text


def test_missing_trace_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No perfetto trace under"):
        op_profile.summarize(str(tmp_path), HLO, steps=1)


def test_enable_cpu_op_tracing_appends_the_flag_once():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    op_profile.enable_cpu_op_tracing(env)
    op_profile.enable_cpu_op_tracing(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_cpu_enable_xprof_traceme=true"
    empty: dict[str, str] = {}
    op_profile.enable_cpu_op_tracing(empty)
    assert empty["XLA_FLAGS"] == "--xla_cpu_enable_xprof_traceme=true"


def test_benchmark_cli_profiles_the_timed_steps_per_model_op(tmp_path):
    # bert_tiny has 2 layers: the forward feed-forward expansion runs once per layer per step.
    command = [
        sys.executable,
        "-m",
        "bert_jax_tools.benchmark",
        f"--config={REPO_ROOT / 'experiments' / 'bert_tiny.py'}",
        "--config.global_batch_size=4",
        "--config.data.max_seq_length=32",
        "--config.data.max_predictions_per_seq=5",
        "--steps=2",
        "--warmup=1",
        "--peak_flops=1e10",
        f"--profile_dir={tmp_path}",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert op_profile.CPU_TRACEME_FLAG in line["xla_flags"]
    profile = line["op_profile"]
    assert profile["steps"] == 2 and profile["trace_file"].startswith(str(tmp_path))
    ops = {row["op"]: row for row in profile["ops"]}
    assert 0 < profile["traced_ms_per_step"]
    forward_ffn = ops["jvp(BertForPreTraining)/bert/encoder/layer_N/intermediate/dense/dot_general"]
    assert forward_ffn["calls_per_step"] == 2 and forward_ffn["instructions"] == 2
    assert any(op.startswith("transpose(jvp(BertForPreTraining))") for op in ops), "no backward op traced"
    assert "per-op time from" in result.stdout
