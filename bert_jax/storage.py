"""One path layer for local disks and object storage (`gs://`): what the jobs read, write, cache and publish.

Served: local (or mounted) paths and `gs://BUCKET/...`. Every remote operation goes through one client, gcsfs
(fsspec), in tests and in production alike: orbax's own paths (`etils.epath`) are kept off TensorFlow's
`tf.io.gfile` by `EPATH_USE_TF=false` (the `bert-jax-*` commands set it; `check_served` asks a program
that calls the jobs itself to set it before a remote path is used), and tensorstore, which writes the
checkpoints' arrays, honours the same endpoint settings. A URL with any other scheme is refused by
`check_served` before anything starts.

Object storage has no appendable files and no directory renames, so the jobs use it in three ways:
  * natively where the library speaks it: orbax checkpoints (each step published by a `commit_success.txt`
    written last) and JAX's compilation cache;
  * inputs that a library must open as local files (array_record corpus shards, SentencePiece models,
    safetensors) are copied into a per-host cache (`local_copy`, `local_tree`), verified by size and MD5
    against the object's metadata, and reused while they match;
  * outputs are written to a local staging directory and uploaded (`upload_tree`), with the file that marks
    a directory complete (`dataset_info.json`, `config.json`, `step.txt`) uploaded last, so a reader never
    mistakes a half upload for a whole one. One object appears atomically when its upload ends.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

SERVED_SCHEMES = ("gs",)
CACHE_ENV = "BERT_JAX_CACHE_DIR"  # where remote inputs are cached on this host (default ~/.cache/bert_jax)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 16 << 20


class UnsupportedPathError(ValueError):
    """A path whose URL scheme bert_jax does not serve (anything but a local path or gs://)."""


class StorageError(RuntimeError):
    """Object storage could not be read or written; the message names the path and what to check."""


def url_scheme(path: str | os.PathLike[str] | None) -> str | None:
    """'gs' for 'gs://bucket/x'; None for a local path (or None / empty)."""
    match = _URL.match(os.fspath(path or ""))
    return match.group(1) if match else None


def is_remote(path: str | os.PathLike[str] | None) -> bool:
    return url_scheme(path) is not None


def check_served(paths: Mapping[str, str | None]) -> None:
    """Raises `UnsupportedPathError` for the first of `paths` (setting -> value, comma lists allowed) that
    has a scheme this layer cannot serve, before any work starts."""
    for name, value in paths.items():
        for part in str(value or "").split(","):
            scheme = url_scheme(part.strip())
            if scheme is None:
                continue
            if scheme not in SERVED_SCHEMES:
                raise UnsupportedPathError(
                    f"{name}={part.strip()}: {scheme}:// is not served; use a local path or gs://BUCKET/... "
                    "(or mount the storage and give its mount point)."
                )
            if os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0"):
                raise UnsupportedPathError(
                    f"{name}={part.strip()}: set EPATH_USE_TF=false in the environment before Python starts (the "
                    "bert-jax-* commands do), so that orbax's checkpoints use gcsfs like every other gs:// access "
                    "instead of TensorFlow's client."
                )


REACH_TIMEOUT_SECONDS = 30.0


def check_paths(paths: Mapping[str, str | None]) -> None:
    """What a job or tool runs first on its user-given paths: `check_served`, then `check_reachable`."""
    check_served(paths)
    check_reachable(paths.values())


def check_reachable(paths: Iterable[str | None], timeout: float = REACH_TIMEOUT_SECONDS) -> None:
    """Asks the store once for each bucket among `paths` (remote ones only) and raises a `StorageError` within
    `timeout` seconds when it cannot answer or the bucket does not exist: before a job starts, rather than
    minutes of the clients' silent retries later. A bucket whose metadata this account may not read passes."""
    import logging
    import threading

    buckets = sorted(
        {_bucket(part.strip()) for p in paths for part in str(p or "").split(",") if is_remote(part.strip())}
    )
    for bucket in buckets:
        outcome: list[BaseException | None] = []
        # A daemon thread: a store that does not answer must not keep the process from exiting.
        probe = threading.Thread(target=_probe, args=(bucket, outcome), daemon=True, name="bert-jax-storage-probe")
        probe.start()
        probe.join(timeout)
        error = outcome[0] if outcome else TimeoutError()
        if error is None or isinstance(error, PermissionError) or getattr(error, "code", None) == 403:
            continue  # reachable (objects may be usable without bucket-metadata access)
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)  # the job ends here: not pages of client retries
        if isinstance(error, FileNotFoundError):
            raise StorageError(f"{bucket} does not exist; create the bucket or fix the path.")
        reason = (
            f"did not answer within {timeout:.0f} s"
            if isinstance(error, TimeoutError)
            else (f"cannot be reached ({type(error).__name__}: {str(error)[:200]})")
        )
        raise StorageError(
            f"{bucket} {reason}. Check the network and credentials (or STORAGE_EMULATOR_HOST for an emulator); "
            "nothing was started or written."
        )


def _probe(bucket: str, outcome: list[BaseException | None]) -> None:
    try:
        _fs(bucket).info(bucket)
        outcome.append(None)
    except BaseException as e:  # handed to the waiting thread
        outcome.append(e)


def _bucket(path: str) -> str:
    scheme = url_scheme(path)
    return f"{scheme}://{path[len(scheme or '') + 3 :].split('/', 1)[0]}"


# ------------------------------------------------------------------------------------------------------
# Paths


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """`os.path.join` for local paths; '/'-joined for URLs (never a local directory named 'gs:')."""
    base = os.fspath(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def absolute(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(os.path.expanduser(path))


@functools.cache
def _filesystem(scheme: str) -> Any:
    """The process's gcsfs instance: the arguments are etils.epath's, so that fsspec hands orbax and this
    module the same instance, whose listing cache they then share (and `invalidate_cache` refreshes both)."""
    import fsspec

    return fsspec.filesystem(scheme, finalize_on_close=True)


def _fs(path: str) -> Any:
    scheme = url_scheme(path)
    if scheme not in SERVED_SCHEMES:
        raise UnsupportedPathError(f"{path}: only local paths and gs:// are served.")
    return _filesystem(scheme)


def exists(path: str | os.PathLike[str]) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.exists(path)
    fs = _fs(path)
    fs.invalidate_cache(path)  # another host may have written it since this process last looked
    return bool(fs.exists(path))


def isdir(path: str | os.PathLike[str]) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isdir(path)
    fs = _fs(path)
    fs.invalidate_cache(path)
    return bool(fs.isdir(path))


def isfile(path: str | os.PathLike[str]) -> bool:
    path = os.fspath(path)
    return _fs(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """The names directly under `path` (empty when it does not exist)."""
    path = os.fspath(path)
    if not is_remote(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs = _fs(path)
    if not fs.isdir(path):
        return []
    fs.invalidate_cache(path)
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob (remote ones as gs:// URLs)."""
    if not is_remote(pattern):
        import glob as glob_lib

        return sorted(glob_lib.glob(os.path.expanduser(pattern)))
    scheme = url_scheme(pattern)
    return sorted(f"{scheme}://{match}" for match in _fs(pattern).glob(pattern))


def size_and_mtime(path: str) -> tuple[int, int]:
    """The size in bytes and the modification time (whole seconds) of a file."""
    if not is_remote(path):
        stat = os.stat(path)
        return stat.st_size, int(stat.st_mtime)
    info = _fs(path).info(path)
    updated = info.get("updated") or info.get("mtime") or ""
    return int(info["size"]), _seconds(updated)


def _seconds(timestamp: Any) -> int:
    import datetime

    if isinstance(timestamp, datetime.datetime):
        return int(timestamp.timestamp())
    if isinstance(timestamp, str) and timestamp:
        return int(datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())
    return 0


def open_file(path: str | os.PathLike[str], mode: str = "rb") -> IO[Any]:
    """A file object for reading or writing, local or remote (streamed in chunks, never held whole)."""
    path = os.fspath(path)
    if not is_remote(path):
        return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8")
    return _fs(path).open(path, mode, block_size=_CHUNK)


def read_text(path: str | os.PathLike[str]) -> str:
    with open_file(path, "rb") as f:
        return f.read().decode("utf-8")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes a whole small file (on gs:// one object, visible only once complete)."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open_file(path, "wb") as f:
        f.write(text.encode("utf-8"))


def makedirs(path: str | os.PathLike[str]) -> None:
    """Creates a local directory; a no-op on object storage, where prefixes exist once they hold a file."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def rmtree(path: str | os.PathLike[str]) -> None:
    path = os.fspath(path)
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs = _fs(path)
    if fs.exists(path) or fs.isdir(path):
        fs.rm(path, recursive=True)
        fs.invalidate_cache()


def move_tree(source: str, target: str) -> None:
    """Renames a directory (locally atomic; on object storage a copy of every object, then a delete)."""
    if not is_remote(source):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        os.rename(source, target)
        return
    fs = _fs(source)
    fs.copy(source.rstrip("/") + "/", target.rstrip("/") + "/", recursive=True)
    fs.rm(source, recursive=True)
    fs.invalidate_cache()


# ------------------------------------------------------------------------------------------------------
# The host cache of remote inputs


def cache_root() -> str:
    """This host's cache of remote inputs: `$BERT_JAX_CACHE_DIR`, else `~/.cache/bert_jax`."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/bert_jax"))


def cache_path(path: str) -> str:
    """Where this host keeps its copy of a remote path: `<cache_root>/<scheme>/<bucket>/<object path>`."""
    scheme = url_scheme(path)
    assert scheme is not None, path
    return os.path.join(cache_root(), scheme, path[len(scheme) + 3 :].strip("/"))


def _remote_md5(info: Mapping[str, Any]) -> str | None:
    value = info.get("md5Hash")
    return base64.b64decode(value).hex() if value else None


def _local_md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(local: str, info: Mapping[str, Any]) -> bool:
    """The local file has the object's size and (when the store reports one) its MD5."""
    if not os.path.isfile(local) or os.path.getsize(local) != int(info["size"]):
        return False
    md5 = _remote_md5(info)
    return md5 is None or _local_md5(local) == md5


def _download(remote: str, info: Mapping[str, Any], local: str) -> None:
    """Copies one object to `local` through a temporary file, verified, then renamed into place."""
    os.makedirs(os.path.dirname(local), exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=os.path.dirname(local), prefix=".partial-")
    os.close(handle)
    try:
        _fs(remote).get_file(remote, partial)
        if not _matches(partial, info):
            raise StorageError(f"{remote}: the downloaded copy does not match the object's size/MD5; retry.")
        os.replace(partial, local)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def local_copy(path: str) -> str:
    """A local file with `path`'s content: `path` itself when local, else this host's verified cached copy."""
    if not is_remote(path):
        return path
    fs = _fs(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist.") from None
    local = cache_path(path)
    if not _matches(local, info):
        _download(path, info, local)
    return local


def local_tree(path: str) -> str:
    """A local directory with the files under `path`: itself when local, else this host's verified cache
    (files that already match are kept; others are downloaded)."""
    if not is_remote(path):
        return path
    fs = _fs(path)
    fs.invalidate_cache(path)
    listing = fs.find(path, detail=True)
    if not listing:
        raise FileNotFoundError(f"{path} does not exist or is empty.")
    root = cache_path(path)
    prefix = path[len(url_scheme(path) or "") + 3 :].strip("/") + "/"
    for name, info in sorted(listing.items()):
        relative = name[len(prefix) :] if name.startswith(prefix) else name.rsplit("/", 1)[-1]
        local = os.path.join(root, relative)
        if not _matches(local, info):
            _download(f"{url_scheme(path)}://{name}", info, local)
    return root


def upload_tree(
    local_dir: str,
    remote_dir: str,
    *,
    last: Iterable[str] = (),
    progress: Callable[[str, int], None] | None = None,
) -> int:
    """Uploads every file under `local_dir` to `remote_dir`; files named in `last` (base names) go last.

    Objects that already match (size and MD5) are skipped. `progress(relative_path, bytes)` is called after
    each upload. Returns the bytes uploaded.
    """
    fs = _fs(remote_dir)
    last = set(last)
    files = []
    for root, _, names in os.walk(local_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), local_dir))
    files.sort(key=lambda rel: (os.path.basename(rel) in last, rel))
    existing = {}
    if fs.isdir(remote_dir):
        fs.invalidate_cache(remote_dir)
        existing = fs.find(remote_dir, detail=True)
    prefix = remote_dir[len(url_scheme(remote_dir) or "") + 3 :].strip("/")
    uploaded = 0
    for relative in files:
        local = os.path.join(local_dir, relative)
        key = f"{prefix}/{relative.replace(os.sep, '/')}"
        info = existing.get(key)
        if info is not None and _matches(local, info):
            continue
        fs.put_file(local, f"{url_scheme(remote_dir)}://{key}")
        uploaded += os.path.getsize(local)
        if progress is not None:
            progress(relative, os.path.getsize(local))
    fs.invalidate_cache(remote_dir)
    return uploaded


def upload_file(local: str, remote: str) -> None:
    """Uploads one file (one object, visible only once complete)."""
    _fs(remote).put_file(local, remote)


def publish_tree(staging_dir: str, target_dir: str, *, last: Iterable[str] = (), replace: bool = False) -> None:
    """Moves a finished local `staging_dir` to `target_dir` (local: a rename; remote: an upload with the files in
    `last` uploaded last, then the staging copy removed). With `replace`, an existing `target_dir` is moved
    aside first and deleted only once the new one is complete."""
    aside = None
    if replace and listdir(target_dir):
        aside = f"{absolute(target_dir)}.replaced-{os.getpid()}"
        move_tree(target_dir, aside)
    if not is_remote(target_dir):
        os.makedirs(os.path.dirname(os.path.abspath(target_dir)), exist_ok=True)
        os.rename(staging_dir, target_dir)
    else:
        upload_tree(staging_dir, target_dir, last=last)
        shutil.rmtree(staging_dir, ignore_errors=True)
    if aside is not None:
        rmtree(aside)


def local_input(path: str) -> str:
    """A local path with `path`'s content, for readers that need one: `path` itself when local, else this
    host's verified copy of the remote file or directory."""
    if not is_remote(path):
        return path
    return local_tree(path) if isdir(path) else local_copy(path)


@contextlib.contextmanager
def local_output(path: str, *, last: Iterable[str] = (), replace: bool = False) -> Iterator[str]:
    """Yields where to write `path` (a file or a directory) locally; a remote `path` is uploaded when the block
    ends without an error (a directory with the files in `last` uploaded last). Local paths pass through."""
    if not is_remote(path):
        yield path
        return
    staging = staging_dir_for(path)
    local = os.path.join(staging, "out")
    try:
        yield local
        if os.path.isdir(local):
            publish_tree(local, path, last=last, replace=replace)
        elif os.path.exists(local):
            upload_file(local, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def staging_dir_for(target: str) -> str:
    """A fresh local directory in which to assemble what will be published at `target`: beside it when
    local (so the publishing rename stays on one disk), in this host's cache when remote."""
    if is_remote(target):
        parent = os.path.dirname(cache_path(target))
    else:
        parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target.rstrip('/'))}.staging-")
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; renamed into place, it is the output itself
    return staging


def _umask() -> int:
    """The process umask, read without changing it (`os.umask` sets it, racing other threads' file creation)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
