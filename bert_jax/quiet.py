"""Quiet native logs: what the jobs set before TensorFlow's C++ runtime loads (it prints at load time).

TensorFlow is here only for TensorFlow Datasets' file formats, yet loading it prints "WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR", an INFO line that oneDNN custom
operations are on, and one about CPU instructions the binary was not built for: nothing a user of this
package can act on, between the job's own lines. `TF_CPP_MIN_LOG_LEVEL=1` hides TensorFlow's INFO lines
(its warnings and errors still print); `TF_ENABLE_ONEDNN_OPTS=0` turns off oneDNN in TensorFlow's own math
kernels, which no code here runs (the message is printed at load time, before the log level is read).
Only defaults: a value the user set is kept. Entry points call this; library code never changes the
environment of a program that imports it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

NATIVE_LOG_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_native_logs(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets the defaults above where the variable is not set yet; call before TensorFlow is imported."""
    for name, value in NATIVE_LOG_DEFAULTS.items():
        environ.setdefault(name, value)
