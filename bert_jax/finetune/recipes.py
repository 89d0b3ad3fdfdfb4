"""Fine-tuning recipes: the optimizer details around the gradients, named, so two codebases can be compared.

Two fine-tunings with equal gradients still diverge when the recipe around them differs. Each difference that
moves a trajectory is a named setting here, and `optimizer.recipe` picks a consistent set of them:

| setting                  | "bert" (google-research/bert)          | "transformers" (`transformers.Trainer`)        |
|--------------------------|----------------------------------------|------------------------------------------------|
| Adam bias correction     | no (`AdamWeightDecayOptimizer`)        | yes (`torch.optim.AdamW`)                      |
| eps                      | 1e-6                                   | 1e-8                                           |
| linear decay runs over   | the whole run (warmup replaces its     | the steps after warmup, from the peak          |
|                          | first values)                          | (`get_linear_schedule_with_warmup`)            |
| warmup steps             | floor(warmup_fraction * steps)         | ceil(warmup_ratio * steps)                     |
| new head's kernel        | truncated normal, std 0.02             | normal, std 0.02 (`_init_weights`)             |

Common to both: b1 0.9, b2 0.999, decoupled weight decay that skips biases and LayerNorm parameters (Trainer's
`get_decay_parameter_names`, the original's `exclude_from_weight_decay`), gradients clipped to global norm 1.0,
warmup from 0. The new head's kernel row is BERT's: the modern family's classifier always starts as transformers'
`_init_weights` (truncated normal, std hidden_size ** -0.5; google-research/bert never had that family). The config's `optimizer` block names the recipe and may override any of `bias_correction`, `eps`,
`b1`, `b2`, `decay_from_warmup_end` (None keeps the recipe's value).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from bert_jax.errors import ConfigError
from bert_jax.training import optim

DEFAULT_RECIPE = "transformers"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One consistent set of the optimizer details a fine-tuning recipe fixes (see the module docstring)."""

    bias_correction: bool
    eps: float
    decay_from_warmup_end: bool
    warmup_rounding: str  # "floor" or "ceil" of warmup_fraction * total steps
    head_init: str  # the new head's kernel: "truncated_normal" or "normal" (`model.dense_layer`)
    b1: float = 0.9
    b2: float = 0.999

    def warmup_steps(self, warmup_fraction: float, total_steps: int) -> int:
        steps = warmup_fraction * total_steps
        return min(total_steps, math.ceil(steps) if self.warmup_rounding == "ceil" else int(steps))


RECIPES = {
    "bert": Recipe(
        bias_correction=False,
        eps=1e-6,
        decay_from_warmup_end=False,
        warmup_rounding="floor",
        head_init="truncated_normal",
    ),
    "transformers": Recipe(
        bias_correction=True, eps=1e-8, decay_from_warmup_end=True, warmup_rounding="ceil", head_init="normal"
    ),
}
OVERRIDABLE = ("bias_correction", "eps", "b1", "b2", "decay_from_warmup_end")


class RecipeError(ConfigError):
    """An `optimizer` block naming an unknown recipe or setting."""


def resolve(name: str = DEFAULT_RECIPE, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe called `name` with `overrides` (the config's `optimizer` section; None values: the recipe's)."""
    if name not in RECIPES:
        raise RecipeError(f"optimizer.recipe={name!r} is unknown; use one of {', '.join(RECIPES)}.")
    settings = dict(overrides or {})
    unknown = sorted(set(settings) - set(OVERRIDABLE))
    if unknown:
        raise RecipeError(
            f"optimizer.{unknown[0]} is not a fine-tuning optimizer setting; the section takes recipe and "
            f"{', '.join(OVERRIDABLE)}."
        )
    return dataclasses.replace(RECIPES[name], **{k: v for k, v in settings.items() if v is not None})


def optimizer_config(
    recipe: Recipe, *, learning_rate: float, warmup_fraction: float, weight_decay: float, total_steps: int
) -> optim.OptimizerConfig:
    """AdamW for `total_steps` at the peak rate and weight decay given, with the recipe's details, clip 1.0."""
    return optim.OptimizerConfig(
        name="adamw",
        learning_rate=learning_rate,
        warmup_steps=recipe.warmup_steps(warmup_fraction, total_steps),
        total_steps=total_steps,
        decay_from_warmup_end=recipe.decay_from_warmup_end,
        b1=recipe.b1,
        b2=recipe.b2,
        eps=recipe.eps,
        weight_decay=weight_decay,
        bias_correction=recipe.bias_correction,
        clip_global_norm=1.0,
    )
