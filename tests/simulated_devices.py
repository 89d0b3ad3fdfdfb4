"""A test module's report computed in a subprocess that sees N simulated CPU devices.

`XLA_FLAGS=--xla_force_host_platform_device_count=N` only works before jax is first imported, and the test
process has imported it long before; so the multi-device half of a test runs `python -m tests.<module> ARGS`
with that flag, and the module prints its report as JSON on its last line of output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.conftest import REPO_ROOT


def simulated_devices_env(devices: int, fast_compile: bool = False) -> dict[str, str]:
    """This process's environment with `devices` CPU devices for jax.

    `fast_compile`: LLVM optimization level 0, which halves XLA:CPU's compile time; the SPMD partitioning is
    unchanged, so a comparison of two runs compiled alike still tests what it tests.
    """
    flags = f"--xla_force_host_platform_device_count={devices}"
    if fast_compile:
        flags += " --xla_backend_optimization_level=0"
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


def run_report(module: str, *args: str, devices: int, timeout: float, fast_compile: bool = False) -> dict[str, Any]:
    """`python -m module args` with `devices` simulated devices; the JSON on the last line it prints."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=simulated_devices_env(devices, fast_compile),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
