"""The entry points' environment defaults: TensorFlow's start-up lines off, JAX kept off a TPU that is not there."""

from __future__ import annotations

import os
import subprocess
import sys

from bert_jax.launcher import quiet


def test_defaults_are_set_only_where_the_user_set_nothing(monkeypatch):
    monkeypatch.setattr(quiet, "cpu_only_host_with_libtpu", lambda: False)
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    quiet.quiet_native_logs(environ)
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0", "EPATH_USE_TF": "false"}
    environ = {"EPATH_USE_TF": "true"}  # a user who wants TensorFlow's client for gs:// keeps it
    quiet.quiet_native_logs(environ)
    assert environ["EPATH_USE_TF"] == "true"


def test_jax_stays_on_the_cpu_only_without_tpu_devices_and_gpu_plugins(monkeypatch, tmp_path):
    monkeypatch.setattr(quiet, "_installed", lambda module: module == "libtpu")
    assert quiet.cpu_only_host_with_libtpu(device_globs=(str(tmp_path / "accel*"),))
    (tmp_path / "accel0").write_text("")
    assert not quiet.cpu_only_host_with_libtpu(device_globs=(str(tmp_path / "accel*"),))  # a TPU VM
    monkeypatch.setattr(quiet, "_installed", lambda module: module in ("libtpu", "jax_cuda12_plugin"))
    assert not quiet.cpu_only_host_with_libtpu(device_globs=(str(tmp_path / "none*"),))  # a GPU host
    monkeypatch.setattr(quiet, "_installed", lambda module: False)
    assert not quiet.cpu_only_host_with_libtpu(device_globs=(str(tmp_path / "none*"),))  # no libtpu at all
    monkeypatch.setattr(quiet, "cpu_only_host_with_libtpu", lambda: True)
    environ: dict[str, str] = {}
    quiet.quiet_native_logs(environ)
    assert environ["JAX_PLATFORMS"] == "cpu"
    environ = {"JAX_PLATFORMS": "tpu"}
    quiet.quiet_native_logs(environ)
    assert environ["JAX_PLATFORMS"] == "tpu"  # the user's choice stands


def test_tensorflow_starts_without_its_info_lines_under_the_defaults():
    code = (
        "from bert_jax.launcher import quiet; quiet.quiet_native_logs(); "
        "import tensorflow as tf; tf.constant(1) + 1; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    for line in ("All log messages before absl::InitializeLog()", "oneDNN custom operations", "cpu_feature_guard"):
        assert line not in result.stderr, result.stderr
