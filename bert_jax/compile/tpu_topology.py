"""TPU slice names -> what libtpu needs to describe the slice on a host without TPUs.

Users name slices as Cloud TPU does: `v4-8` ... `v4-4096` and `v5p-8` ... count TensorCores (two per chip;
JAX runs them as one "megacore" device per chip), `v5litepod-1` ... `v5litepod-256` (also `v5e-N`) and
`v6e-1` ... `v6e-256` count chips. libtpu's own form (`v5e:4x4`, `v5p:2x2x2`, `v4:2x2x1`) gives the chip grid
directly. `parse_topology` turns either into a `TpuSlice`; `TpuSlice.devices()` asks libtpu
(`jax.experimental.topologies`, needs the `libtpu` wheel: `pip install -e ".[tpu]"`) for the slice's devices,
one per chip, which `jax.jit(...).lower(...).compile()` then compiles for. Nothing here needs a TPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import MutableMapping
from typing import Any

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: its name in libtpu, how Cloud names count, memory and host layout."""

    libtpu_name: str  # the prefix of libtpu's topology names ("v5e" in "v5e:4x4")
    cloud_names: tuple[str, ...]  # the prefixes users write ("v5litepod", "v5e")
    dims: int  # 3 for the 3D tori (v4, v5p), 2 for v5e / v6e
    cores_per_chip_in_name: int  # v4-8 / v5p-8 count TensorCores: 2 per chip; v5e / v6e count chips
    megacore: bool  # the two TensorCores of a chip run as one JAX device
    hbm_bytes: int  # HBM per chip (published figures: v4 32 GiB, v5p 95 GB, v5e 16 GiB, v6e 32 GiB)
    chips_per_host: int
    device_kind: str  # what `Device.device_kind` says on this generation


GENERATIONS = (
    Generation("v4", ("v4",), 3, 2, True, 32 * GiB, 4, "TPU v4"),
    Generation("v5p", ("v5p",), 3, 2, True, 95 * 10**9, 4, "TPU v5"),  # "95 GB": read as 1e9, the smaller
    Generation("v5e", ("v5litepod", "v5e"), 2, 1, False, 16 * GiB, 4, "TPU v5 lite"),
    Generation("v6e", ("v6e",), 2, 1, False, 32 * GiB, 4, "TPU v6 lite"),
)

# Chip counts Cloud TPU offers on the 2D generations, and their grids.
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


class TopologyError(ValueError):
    """A slice name this tool cannot describe; the message lists the names it knows."""


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A TPU slice (or `num_slices` identical slices joined over the data-center network)."""

    name: str  # as the user wrote it
    generation: Generation
    grid: tuple[int, ...]  # chips along each axis of one slice
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.grid)

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def hosts(self) -> int:
        per_host = min(self.generation.chips_per_host, self.chips_per_slice)
        if self.generation.dims == 2 and self.chips_per_slice == 8:
            per_host = 8  # v5litepod-8 / v6e-8: one host with eight chips
        return max(1, self.chips_per_slice // per_host) * self.num_slices

    @property
    def libtpu_name(self) -> str:
        return f"{self.generation.libtpu_name}:{'x'.join(str(n) for n in self.grid)}"

    @property
    def hbm_bytes_per_chip(self) -> int:
        return self.generation.hbm_bytes

    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """The chip grid of one host, as libtpu takes it."""
        if self.chips_per_slice == 1:
            return (1, 1, 1)
        if self.generation.dims == 2 and self.chips_per_slice == 8:
            return (2, 4, 1)
        return (2, 2, 1)

    def devices(self) -> list[Any]:
        """The slice's JAX devices (one per chip) from libtpu's topology description; needs `libtpu`."""
        try:
            from jax.experimental import topologies
        except ImportError as e:  # pragma: no cover - jax always has it in the supported versions
            raise TopologyError(f"this jax has no jax.experimental.topologies ({e})") from None
        try:
            description = topologies.get_topology_desc(
                topology_name=self.libtpu_name,
                platform="tpu",
                chip_config_name="megacore" if self.generation.megacore else "default",
                chips_per_host_bounds=self.chips_per_host_bounds(),
                num_slices=self.num_slices,
            )
        except Exception as e:
            text = str(e)
            if "libtpu" in text.lower() and "lockfile" in text.lower():
                raise TopologyError(
                    "another process on this host holds libtpu (its lockfile); stop it, or set "
                    "ALLOW_MULTIPLE_LIBTPU_LOAD=1 for this run."
                ) from None
            if isinstance(e, ImportError | ModuleNotFoundError) or ("tpu" in text.lower() and "plugin" in text.lower()):
                raise TopologyError(f'libtpu is needed to describe TPU slices: pip install -e ".[tpu]" ({e})') from None
            raise TopologyError(
                f"libtpu cannot describe {self.libtpu_name} x {self.num_slices} slice(s): {e}"
            ) from None
        devices = list(description.devices)
        if len(devices) != self.chips:
            raise TopologyError(
                f"libtpu described {self.libtpu_name} x {self.num_slices} with {len(devices)} devices, expected "
                f"{self.chips} (one per chip)."
            )
        return devices


# libtpu reads these at start-up to find the TPU it runs on; on a host without one (where slices are only
# described for compiling) it complains about each at length. These values describe no slice: the slice comes
# from the arguments of the topology description. Set only by entry points that compile for slices elsewhere.
AOT_LIBTPU_DEFAULTS = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v5litepod-1",
    "TPU_WORKER_HOSTNAMES": "localhost",
}


def quiet_libtpu_for_aot(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets `AOT_LIBTPU_DEFAULTS` where unset (call before libtpu loads, on a host that only compiles)."""
    for name, value in AOT_LIBTPU_DEFAULTS.items():
        environ.setdefault(name, value)


def _grid_3d(chips: int) -> tuple[int, int, int] | None:
    """Cloud TPU's grid for a power-of-two chip count on a 3D torus: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ..."""
    if chips < 4 or chips & (chips - 1):
        return None
    grid = [2, 2, 1]
    while math.prod(grid) < chips:
        smallest = min(grid)
        last = max(i for i, n in enumerate(grid) if n == smallest)
        grid[last] *= 2
    return (grid[0], grid[1], grid[2])


def known_names() -> str:
    """One line listing the names `parse_topology` accepts."""
    return (
        "v4-8 ... v4-4096 and v5p-8 ... v5p-8192 (TensorCores, a power of two), v5litepod-N / v5e-N and v6e-N with "
        f"N in {', '.join(str(n) for n in _GRIDS_2D)} (chips), or libtpu's form: v4:2x2x1, v5p:2x2x2, v5e:4x4, v6e:2x4"
    )


def parse_topology(name: str, num_slices: int = 1) -> TpuSlice:
    """A `TpuSlice` for a Cloud TPU name (`v5p-8`) or libtpu's form (`v5e:4x4`); `TopologyError` otherwise."""
    if num_slices < 1:
        raise TopologyError(f"num_slices must be >= 1, got {num_slices}.")
    text = name.strip().lower()
    explicit = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)*)", text)
    if explicit:
        generation = next((g for g in GENERATIONS if g.libtpu_name == explicit.group(1)), None)
        grid = tuple(int(n) for n in explicit.group(2).split("x"))
        if generation is not None and len(grid) == generation.dims and min(grid) >= 1:
            return TpuSlice(name, generation, grid, num_slices)
    cloud = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", text)
    if cloud:
        prefix, count = cloud.group(1), int(cloud.group(2))
        generation = next((g for g in GENERATIONS if prefix in g.cloud_names), None)
        if generation is not None and count % generation.cores_per_chip_in_name == 0:
            chips = count // generation.cores_per_chip_in_name
            grid = _grid_3d(chips) if generation.dims == 3 else _GRIDS_2D.get(chips)
            if grid is not None:
                return TpuSlice(name, generation, grid, num_slices)
    raise TopologyError(f"unknown TPU topology {name!r}; known: {known_names()}.")
