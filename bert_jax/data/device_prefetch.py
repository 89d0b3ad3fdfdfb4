"""Batches placed on the devices ahead of the step that uses them.

`jax.make_array_from_process_local_data` starts an asynchronous host-to-device copy and returns at once;
keeping `depth` global batches in flight lets the copy of batch k+1 overlap step k, so the devices
never wait for the input. The host-side numbers the loop needs (the non-pad token count, the input
pipeline's position after the batch) travel with each batch, computed from the NumPy arrays, so reading
them never syncs with a device.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from bert_jax import sharding


class DeviceBatch(NamedTuple):
    """One global batch on the devices, with host-side facts about it."""

    arrays: dict[str, jax.Array]
    local_tokens: int  # non-pad tokens in this process's rows
    source_state: Any  # the input pipeline's state after this batch (what a checkpoint at this step saves)


def prefetch_to_mesh(
    batches: Iterator[Mapping[str, np.ndarray]],
    mesh: Mesh,
    depth: int = 2,
    source_state: Callable[[], Any] | None = None,
) -> Iterator[DeviceBatch]:
    """Yields `DeviceBatch`es for the process-local NumPy `batches`, `depth` of them already on their way.

    `source_state` is called right after each batch is drawn (e.g. `PretrainingBatches.state`), so the
    state travels with its batch and is not advanced by the prefetching.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}.")
    queue: collections.deque[DeviceBatch] = collections.deque()

    def enqueue() -> bool:
        try:
            local = next(batches)
        except StopIteration:
            return False
        state = source_state() if source_state is not None else None
        tokens = int(np.asarray(local["attention_mask"]).sum())
        queue.append(DeviceBatch(sharding.global_batch_from_process_local(local, mesh), tokens, state))
        return True

    while True:
        while len(queue) < depth and enqueue():
            pass
        if not queue:
            return
        yield queue.popleft()
