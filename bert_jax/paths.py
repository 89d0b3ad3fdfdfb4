"""User-given paths: only local (or mounted) paths are served today; a URL is refused before anything starts.

`os.makedirs("gs://bucket/run")` does not fail: it creates a local directory named `gs:`, and a job writing its
checkpoints there on a pod host would lose them with the VM while looking healthy. Until object storage is
served through one path layer (`etils.epath` over gcsfs), every job and tool checks its paths here first and
ends with one line that names the way out: a local path, or the bucket mounted with gcsfuse.
(`compilation_cache_dir` is the exception: JAX's own cache reads and writes gs:// itself.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class UnsupportedPathError(ValueError):
    """A path with a URL scheme (gs://, s3://, ...) where only local paths are served."""


def url_scheme(path: str | None) -> str | None:
    """'gs' for 'gs://bucket/x'; None for a local path (or None / empty)."""
    match = _URL.match(str(path or ""))
    return match.group(1) if match else None


def require_local(paths: Mapping[str, str | None]) -> None:
    """Raises `UnsupportedPathError` for the first of `paths` (setting name -> value) that is a URL."""
    for name, value in paths.items():
        for part in str(value or "").split(","):  # comma-separated lists of files or globs
            scheme = url_scheme(part.strip())
            if scheme is not None:
                raise UnsupportedPathError(
                    f"{name}={part.strip()}: {scheme}:// paths are not supported yet; use a local path, or mount "
                    f"the bucket (gcsfuse, NFS, Filestore) and give its mount point."
                )
