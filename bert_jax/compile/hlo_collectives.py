"""The collectives of a compiled XLA program, read from its HLO text: kind, count and bytes per execution.

`jax.stages.Compiled.as_text()` is the optimized, SPMD-partitioned HLO of one device. Its collectives are
instructions named all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute, either
synchronous or as an async pair (`-start` ... `-done`). An instruction inside a while loop's body runs once per
iteration: where XLA knows the trip count (`known_trip_count` in the loop's backend config, as for the
microbatch `lax.scan`) it is multiplied in; a loop of unknown trip count counts once and is flagged.
Bytes are those of the collective's result on this device (for async pairs, the `-done` result).
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_ITEMSIZE = {
    "pred": 1,
    "s4": 1,
    "u4": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_ITEMSIZE, key=len, reverse=True)) + r")\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z][a-z\-]*)\(")
_WHILE_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (`f32[8,128]{1,0}`, or a tuple of them)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _ITEMSIZE[dtype]
    return total


@dataclasses.dataclass
class Collective:
    kind: str
    count: int = 0  # executions per program run (loop trip counts multiplied in)
    bytes: int = 0  # result bytes on one device, summed over those executions
    in_unknown_loop: bool = False


def _computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in hlo.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match and "=" not in line.split("{")[0].split("(")[0]:
                current = blocks.setdefault(match.group(1), [])
            continue
        if line.strip() == "}":
            current = None
        else:
            current.append(line)
    return blocks


def _multipliers(blocks: dict[str, list[str]]) -> tuple[dict[str, int], set[str]]:
    """How many times each computation runs per program run, through while loops; loops of unknown count."""
    loops: dict[str, list[tuple[str, int | None]]] = {}  # parent -> (body, trip count)
    for name, lines in blocks.items():
        for line in lines:
            instruction = _INSTRUCTION.match(line)
            if instruction and instruction.group(2) == "while":
                body = _WHILE_BODY.search(line)
                trips = _TRIP_COUNT.search(line)
                if body:
                    loops.setdefault(name, []).append((body.group(1), int(trips.group(1)) if trips else None))
    multiplier = {name: 1 for name in blocks}
    unknown: set[str] = set()

    def visit(parent: str, depth: int = 0) -> None:
        if depth > 64:
            return
        for body, trips in loops.get(parent, []):
            if body not in multiplier:
                continue
            multiplier[body] = multiplier[parent] * (trips or 1)
            if trips is None or parent in unknown:
                unknown.add(body)
            visit(body, depth + 1)

    bodies = {body for entries in loops.values() for body, _ in entries}
    for root in [name for name in blocks if name not in bodies]:
        visit(root)
    return multiplier, unknown


def collectives(hlo: str) -> list[Collective]:
    """The program's collectives by kind (only the kinds it has), in `KINDS` order."""
    blocks = _computations(hlo)
    multiplier, unknown = _multipliers(blocks)
    found = {kind: Collective(kind) for kind in KINDS}
    for name, lines in blocks.items():
        times = multiplier.get(name, 1)
        for line in lines:
            instruction = _INSTRUCTION.match(line)
            if not instruction:
                continue
            shape, op = instruction.groups()
            kind = op.removesuffix("-start").removesuffix("-done")
            if kind not in found:
                continue
            entry = found[kind]
            if not op.endswith("-done"):
                entry.count += times
            if not op.endswith("-start"):  # sync ops and -done carry the result shape
                entry.bytes += shape_bytes(shape) * times
            entry.in_unknown_loop |= name in unknown
    return [c for c in found.values() if c.count]


_HOST_TRANSFER = re.compile(r"=\s.*?\b(?:send|recv)\(.*\bis_host_transfer=true")
_CALLBACK_CALL = re.compile(r'custom_call_target="[^"]*callback[^"]*"')


def host_transfers(hlo: str) -> int:
    """Instructions that stop the device for the host: host callbacks (`jax.debug.callback`, `pure_callback`,
    `io_callback`), which a TPU program runs as `send`/`recv` with `is_host_transfer=true` and a CPU or GPU
    program as a callback custom-call. A train step should have none."""
    return sum(1 for line in hlo.splitlines() if _HOST_TRANSFER.search(line) or _CALLBACK_CALL.search(line))
