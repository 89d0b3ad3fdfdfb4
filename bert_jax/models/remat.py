"""Rematerialization of encoder layers, shared by the model families.

Rematerialization trades compute for memory: the backward pass recomputes what the policy did not save.
`nn.remat` keeps the module's scope, so parameter names (and with them checkpoints and conversions) do not
depend on the policy.
"""

from __future__ import annotations

import flax.linen as nn
import jax

# `configs.REMAT_POLICIES` -> the checkpoint policy ("none" is no remat at all).
_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # nothing kept: the layer is recomputed
    "dots": jax.checkpoint_policies.checkpoint_dots,  # matmul outputs kept
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight-gradient inputs kept
}


def remat_layer(layer: type[nn.Module], policy: str, static_argnums: tuple[int, ...]) -> type[nn.Module]:
    """`layer` wrapped in `nn.remat` with the policy named `policy` (unchanged for "none").

    `static_argnums` are the positions of `__call__`'s Python arguments (`self` is 0), e.g. `deterministic`.
    """
    if policy == "none":
        return layer
    if policy not in _POLICIES:
        raise ValueError(f"Unknown remat policy {policy!r}; use none or one of {', '.join(_POLICIES)}.")
    return nn.remat(layer, policy=_POLICIES[policy], static_argnums=static_argnums)
