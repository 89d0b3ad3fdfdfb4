"""Quiet native logs: what the jobs set before TensorFlow's C++ runtime loads (it prints at load time).

TensorFlow is here only for TensorFlow Datasets' file formats, yet loading it prints "WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR", an INFO line that oneDNN custom
operations are on, and one about CPU instructions the binary was not built for: nothing a user of this
package can act on, between the job's own lines. `TF_CPP_MIN_LOG_LEVEL=1` hides TensorFlow's INFO lines
(its warnings and errors still print); `TF_ENABLE_ONEDNN_OPTS=0` turns off oneDNN in TensorFlow's own math
kernels, which no code here runs (the message is printed at load time, before the log level is read).
Only defaults: a value the user set is kept. Entry points call this; library code never changes the
environment of a program that imports it.

libtpu (the `tpu` and `test` extras; bert-jax-compile needs it) makes JAX start its TPU backend on any host,
and on a host without TPUs that prints libtpu's complaints about TPU_ACCELERATOR_TYPE and worker host names,
then falls back to the CPU. Where libtpu is installed but the host has no TPU device files and no GPU plugin
is installed either, `JAX_PLATFORMS=cpu` is set, which is where JAX would have ended anyway.

`EPATH_USE_TF=false` keeps orbax's paths (`etils.epath`) on gcsfs, the one object-storage client of
`bert_jax.storage`, instead of TensorFlow's `tf.io.gfile`, which epath would pick because TensorFlow is
installed (for TFDS) and which cannot be pointed at another endpoint (an emulator, a private one).
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import MutableMapping

NATIVE_LOG_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}
CLIENT_DEFAULTS = {"EPATH_USE_TF": "false"}


# TPU VMs expose their chips as /dev/accel* (v2-v5e) or through VFIO (/dev/vfio/*: v5p, v6e).
TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cpu_only_host_with_libtpu(device_globs: tuple[str, ...] = TPU_DEVICE_GLOBS) -> bool:
    """libtpu is installed, but this host has no TPU device files and no GPU plugin is installed."""
    if not _installed("libtpu"):
        return False
    if any(glob.glob(pattern) for pattern in device_globs):
        return False
    return not any(_installed(plugin) for plugin in GPU_PLUGINS)


def quiet_native_logs(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets the defaults above where the variable is not set yet; call before TensorFlow or JAX start."""
    for name, value in {**NATIVE_LOG_DEFAULTS, **CLIENT_DEFAULTS}.items():
        environ.setdefault(name, value)
    if "JAX_PLATFORMS" not in environ and cpu_only_host_with_libtpu():
        environ["JAX_PLATFORMS"] = "cpu"
