"""Reads a PyTorch checkpoint (`pytorch_model.bin`) into NumPy arrays without importing torch.

`torch.save` (since PyTorch 1.6) writes a zip archive: `<name>/data.pkl`, a pickle of the state dict whose
tensors refer to raw storages stored beside it as `<name>/data/<key>`. The unpickler here allows only the
few globals a state dict of tensors needs (the tensor rebuild function, the storage types, OrderedDict), so
unlike a plain `pickle.load` it cannot run code from the file, like `torch.load(weights_only=True)`.
Floating-point tensors come back as float32, as the safetensors path gives them.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, ClassVar

import ml_dtypes
import numpy as np

# PyTorch's storage class names (pickled as `torch.<Name>`) and the element type of each.
STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchPickleError(ValueError):
    """The file is not a PyTorch zip checkpoint of plain tensors."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any):
    """A tensor view of its storage (offset and strides in elements), copied out as a contiguous array."""
    if not size:
        return storage[offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _StateDictUnpickler(pickle.Unpickler):
    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise TorchPickleError(
            f"{self.path} holds a {module}.{name}, not only tensors; load it with torch and save the state dict "
            "with safetensors (model.safetensors) instead."
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"{self.path}: unknown storage record {pid!r}.")
        raw = self.archive.read(f"{self.prefix}data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """`{name: array}` of a `torch.save`d state dict; floating-point arrays as float32."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise TorchPickleError(
            f"{path} is not a PyTorch zip checkpoint (PyTorch < 1.6 wrote another format); re-save it with a "
            "recent torch, or as model.safetensors."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise TorchPickleError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}.")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise TorchPickleError(f"{path} was written on a big-endian machine; re-save it as model.safetensors.")
        state = _StateDictUnpickler(archive, prefix, path).load()
    if not isinstance(state, dict):
        raise TorchPickleError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {
        name: value.astype(np.float32)
        if np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16
        else value
        for name, value in state.items()
    }
