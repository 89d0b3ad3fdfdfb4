"""Optimizers for BERT pretraining: AdamW, LAMB and StableAdamW, the learning-rate schedules, decay masks, accumulation.

Everything is configured by one frozen `OptimizerConfig` (validated at construction) and built from optax
primitives, so the result is a plain `optax.GradientTransformation`:

    clip by global norm -> Adam direction -> + weight_decay * param (masked) -> [LAMB: trust ratio (masked)]
    -> * -learning_rate(step)

For AdamW, `update` computes that chain as one elementwise pass per parameter (same state tree, same math to
float32 rounding; see `_fused_adamw_update`): the update is memory-bound and the chain's intermediate trees
nearly doubled its time.

The original BERT recipe (google-research/bert `optimization.py`) is Adam with b1 0.9, b2 0.999, eps 1e-6,
decoupled weight decay 0.01 that skips LayerNorm and bias parameters, gradients clipped to global norm 1.0,
and a linear warmup over a linear decay. Its `AdamWeightDecayOptimizer` has NO bias correction;
`bias_correction=False` reproduces its update exactly:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  update = m / (sqrt(v) + eps) + wd * param (masked)
    param -= lr * update

With `bias_correction=True` (the default) `m` and `v` are divided by `1 - b^t` first, as `torch.optim.AdamW`
and `optax.adamw` do (the correction is computed without float32 cancellation, see `scale_by_adam`).

LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning") takes the same Adam direction (with bias
correction as the paper, unless `bias_correction=False`) plus decoupled weight decay and scales each parameter tensor's update by the trust ratio
`||param|| / ||update||` (1 where either norm is 0). Choice: the trust ratio is masked exactly like the weight
decay, so biases and LayerNorm parameters take a plain Adam step. This is what the LAMB recipes used for BERT
do: the MLPerf/TF-Addons LAMB (`exclude_from_layer_adaptation` defaults to the weight-decay exclusions) and
NVIDIA's apex FusedLAMB (no trust ratio for parameter groups without weight decay, its bias/LayerNorm group).

StableAdamW (Wortsman et al. 2023, "Stable and low-precision training for large-scale vision-language models";
`optimi.StableAdamW`; the optimizer of ModernBERT's recipe) is AdamW whose learning rate is clipped per
parameter tensor when the gradient outgrows its second-moment estimate (a loss spike):

    m_hat, v_hat = bias-corrected moments (as AdamW);  RMS = sqrt(mean over the tensor of g^2 / max(v_hat, eps^2))
    eta = lr(step) / max(1, RMS);  param -= eta * (m_hat / (sqrt(v_hat) + eps) + wd * param (masked))

Exact choices, all as the paper and optimi: the moments are always bias-corrected (the paper's debiased betas
give the same m_hat and v_hat; `bias_correction=False` is rejected), eps enters twice (squared as the floor of
v_hat inside the RMS, and added to sqrt(v_hat) as in Adam), `g` is the gradient this step uses (after the global-norm
clipping when that is configured: ModernBERT sets none, `clip_global_norm=None`), and the clipped `eta` scales the
weight decay too. The state is AdamW's (the same tree: count, raw first and second moments shaped like the params,
the schedule's count), so it shards, checkpoints and restores exactly as AdamW's.

Weight decay scale. By default (`fully_decoupled_weight_decay=False`) every optimizer decays by `lr(step) * wd`
per update (AdamW's decoupled weight decay, optimi's `decouple_lr=False`), so `weight_decay` means the same whatever
`name` says. `fully_decoupled_weight_decay=True` (adamw and stable_adamw) decays by `lr(step) / learning_rate * wd`
instead: the rate follows the schedule's shape but not the peak learning rate (AdamW as Loshchilov & Hutter wrote
it, the decay scaled by the schedule multiplier alone; optimi's `decouple_lr=True` with `max_lr` the peak;
Composer's DecoupledAdamW). ModernBERT's recipe is that variant (its `decoupled_stableadamw`: lr 8e-4, betas
(0.9, 0.98), eps 1e-6, weight_decay 1e-5, no decay on biases and norms). It is not the default because it changes
what `weight_decay` means: the original's 0.01 would then shrink the decayed weights by 1% every update.

Schedules. "linear" and "polynomial" are the original's warmup + decay (below). "wsd" is warmup-stable-decay
(Zhai et al. 2022; Hu et al. 2024; Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations"): linear warmup to the peak, constant, then a decay over the last `decay_steps` updates to
`end_learning_rate`, either linear (`decay_shape="linear"`, the default, as ModernBERT's `warmup_stable_decay`) or
`end + (peak - end) * (1 - sqrt((step - decay_start) / decay_steps))` (`"one_minus_sqrt"`: Hägele et al.'s
(1-sqrt) cooldown, which they found better than linear, and ModernBERT's `one_minus_sqrt` decay). The rate before
the decay does not depend on the run's length (Hägele et al.'s point: one run at the peak serves several lengths).

The learning rate at update `step` (0 for the first update, as the original's `global_step`) is
`learning_rate_schedule(config)(step)`; `accumulate_gradients` averages gradients over microbatches inside one
jitted step with `jax.lax.scan`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax.models.configs import ConfigError

PyTree = Any
Batch = Any
# (params, microbatch, rng) -> (aux, grads): `aux` is the loss or any pytree of metrics, e.g. the output of
# `jax.value_and_grad(loss_fn, has_aux=True)` wrapped to take the rng as its third argument.
LossAndGradFn = Callable[[PyTree, Batch, jax.Array | None], tuple[PyTree, PyTree]]

OPTIMIZERS = ("adamw", "lamb", "stable_adamw")
SCHEDULES = ("linear", "polynomial", "wsd")
DECAY_SHAPES = ("linear", "one_minus_sqrt")  # the "wsd" schedule's decay
REDUCTIONS = ("mean", "sum")

# The original's exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"], as regular expressions that
# must match one whole path component (case-insensitive): a parameter named "bias", or anything under a module
# whose name contains "LayerNorm" / "layer_norm" (Flax's LayerNorm params are `scale` and `bias`).
# The modern family's names follow the same rule: its norms are modules named `norm`, `attn_norm`, `mlp_norm`,
# `final_norm` (hence `.*norm`) and its MLM decoder's bias is `decoder_bias` (hence `.*_bias`); ModernBERT's recipe
# likewise decays neither norms nor biases. No BERT parameter's path changes class by these two.
DEFAULT_DECAY_EXCLUDE = (r"bias", r".*layer_?norm.*", r".*norm", r".*_bias")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule hyperparameters (defaults: the original BERT recipe, AdamW).

    Attributes:
      name: "adamw", "lamb" or "stable_adamw" (AdamW with per-tensor update clipping, ModernBERT's optimizer).
      learning_rate: the peak learning rate, reached at the end of warmup.
      warmup_steps: updates of linear warmup from 0 to the peak (0: no warmup).
      total_steps: the update at which the decay reaches `end_learning_rate` (it stays there afterwards).
      schedule: "linear" or "polynomial" decay (`power` is used by "polynomial" only), or "wsd": warmup, the peak
        held, then the decay over the last `decay_steps` updates.
      power: exponent of the polynomial decay.
      end_learning_rate: the learning rate at and after `total_steps`.
      decay_from_warmup_end: False (the original): the decay runs over steps [0, total_steps] and warmup replaces
        its first `warmup_steps` values, so the rate right after warmup is `peak * (1 - warmup/total)`. True: the
        decay starts from the peak at the end of warmup (Hugging Face's `get_linear_schedule_with_warmup`).
        Only for "linear" and "polynomial".
      decay_steps: "wsd" only (required there, >= 1): the decay's length, the last updates before `total_steps`.
      decay_shape: "wsd" only: "linear" (default) or "one_minus_sqrt" (Hägele et al. 2024's cooldown).
      b1, b2, eps: Adam's moment decay rates and the epsilon added to `sqrt(v)` (StableAdamW also floors `v` at
        `eps^2` in its clipping ratio, so it needs eps > 0).
      weight_decay: decoupled weight decay rate (not applied to biases and LayerNorm parameters).
      fully_decoupled_weight_decay: False (default): decay by `lr(step) * weight_decay` per update. True (adamw,
        stable_adamw): by `lr(step) / learning_rate * weight_decay`, ModernBERT's recipe (see the module docstring).
      bias_correction: divide the Adam moments by `1 - b^t`. False reproduces the original BERT optimizer.
      clip_global_norm: clip the gradients to this global norm before the update (None: no clipping).
    """

    name: str = "adamw"
    learning_rate: float = 1e-4
    warmup_steps: int = 10_000
    total_steps: int = 1_000_000
    schedule: str = "linear"
    power: float = 1.0
    end_learning_rate: float = 0.0
    decay_from_warmup_end: bool = False
    decay_steps: int = 0
    decay_shape: str = "linear"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    fully_decoupled_weight_decay: bool = False
    bias_correction: bool = True
    clip_global_norm: float | None = 1.0

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_steps()
        self._check_rates()
        self._check_combinations()

    def _check_choices(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"OptimizerConfig.name={self.name!r} is unknown; use one of {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"OptimizerConfig.schedule={self.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}."
            )
        if self.decay_shape not in DECAY_SHAPES:
            raise ConfigError(
                f"OptimizerConfig.decay_shape={self.decay_shape!r} is unknown; use one of {', '.join(DECAY_SHAPES)}."
            )
        for name in ("bias_correction", "decay_from_warmup_end", "fully_decoupled_weight_decay"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"OptimizerConfig.{name} must be True or False, got {getattr(self, name)!r}.")

    def _check_steps(self) -> None:
        for name, minimum in (("warmup_steps", 0), ("total_steps", 1), ("decay_steps", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ConfigError(f"OptimizerConfig.{name} must be an integer >= {minimum}, got {value!r}.")
        if self.warmup_steps > self.total_steps:
            raise ConfigError(
                f"OptimizerConfig.warmup_steps ({self.warmup_steps}) exceeds total_steps ({self.total_steps}); "
                "warmup must end at or before the last step."
            )
        if self.schedule == "wsd" and self.decay_steps < 1:
            raise ConfigError(
                "OptimizerConfig.schedule='wsd' needs decay_steps >= 1 (the final decay's length, e.g. 10% of "
                f"total_steps), got {self.decay_steps}."
            )
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ConfigError(
                f"OptimizerConfig.warmup_steps ({self.warmup_steps}) + decay_steps ({self.decay_steps}) exceed "
                f"total_steps ({self.total_steps}); shorten the warmup or the decay, or raise total_steps."
            )

    def _check_rates(self) -> None:
        for name in ("learning_rate", "power", "end_learning_rate", "b1", "b2", "eps", "weight_decay"):
            if not _is_real(getattr(self, name)):
                raise ConfigError(f"OptimizerConfig.{name} must be a finite number, got {getattr(self, name)!r}.")
        _require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate!r}.")
        _require(
            0 <= self.end_learning_rate <= self.learning_rate,
            f"end_learning_rate must be in [0, learning_rate={self.learning_rate!r}], got {self.end_learning_rate!r}.",
        )
        _require(self.power > 0, f"power must be > 0, got {self.power!r}.")
        _require(
            self.schedule == "polynomial" or self.power == 1.0,
            f"power={self.power!r} only applies to schedule='polynomial' (the 'linear' decay has power 1).",
        )
        _require(0 <= self.b1 < 1, f"b1 must be in [0, 1), got {self.b1!r}.")
        _require(0 <= self.b2 < 1, f"b2 must be in [0, 1), got {self.b2!r}.")
        _require(self.eps >= 0, f"eps must be >= 0, got {self.eps!r}.")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        clip = self.clip_global_norm
        _require(
            clip is None or (_is_real(clip) and clip > 0),
            f"clip_global_norm must be None (no clipping) or a number > 0, got {clip!r}.",
        )

    def _check_combinations(self) -> None:
        """Settings that only mean something for some optimizers or schedules: an unused one is an error."""
        wsd = self.schedule == "wsd"
        _require(wsd or self.decay_steps == 0, "decay_steps only applies to schedule='wsd'; leave it 0.")
        _require(wsd or self.decay_shape == "linear", "decay_shape only applies to schedule='wsd'; leave it 'linear'.")
        _require(
            not (wsd and self.decay_from_warmup_end),
            "decay_from_warmup_end does not apply to schedule='wsd' (it decays over its last decay_steps); set False.",
        )
        _require(
            self.name != "lamb" or not self.fully_decoupled_weight_decay,
            "fully_decoupled_weight_decay is for adamw and stable_adamw (LAMB's trust ratio rescales the decay); "
            "set False.",
        )
        if self.name == "stable_adamw":
            _require(
                self.bias_correction,
                "bias_correction=False is not StableAdamW (its clipping compares g^2 to the bias-corrected v); "
                "set True.",
            )
            _require(self.eps > 0, f"eps must be > 0 for stable_adamw (v is floored at eps^2), got {self.eps!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"OptimizerConfig.{message}")


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """The learning rate at each update step: linear warmup from 0, then linear or polynomial decay (or "wsd").

    During warmup (`step < warmup_steps`) the rate is `peak * step / warmup_steps`. Otherwise it is the
    original's `polynomial_decay`: `(peak - end) * (1 - t)^power + end` with `t` the fraction of the decay span
    done, clipped to [0, 1] so that the rate stays at `end_learning_rate` past `total_steps`. The decay span is
    [0, total_steps] (the original) or [warmup_steps, total_steps] with `decay_from_warmup_end`.
    `schedule="wsd"` is `wsd_schedule`. The returned function is traceable (works on a step array inside jit).
    """
    if config.schedule == "wsd":
        return wsd_schedule(config)
    peak, end, power = config.learning_rate, config.end_learning_rate, config.power
    warmup, total = float(config.warmup_steps), float(config.total_steps)
    decay_span = total - (warmup if config.decay_from_warmup_end else 0.0)

    def schedule(step: optax.ScalarOrSchedule) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        # The fraction of the decay still to go, as (total - step) / span: exact for integer steps, where
        # 1 - step / span would lose digits near the end in float32.
        if decay_span > 0:
            remaining = jnp.clip((total - step) / decay_span, 0.0, 1.0)
        else:  # warmup ends at total_steps: nothing left to decay
            remaining = jnp.zeros_like(step)
        decayed = (peak - end) * remaining**power + end
        if warmup == 0:
            return decayed
        return jnp.where(step < warmup, peak * step / warmup, decayed)

    return schedule


def wsd_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Warmup-stable-decay: `peak * step / warmup_steps` during warmup, then `peak` until the decay starts at
    `total_steps - decay_steps`, then `end + (peak - end) * r` down to `end_learning_rate` at `total_steps` (and after).

    `r` is the fraction of the decay left, `(total_steps - step) / decay_steps` clipped to [0, 1], for the "linear"
    shape; for "one_minus_sqrt" it is `1 - sqrt(1 - that fraction)` (Hägele et al. 2024), computed as
    `left / (1 + sqrt(1 - left))` so that float32 keeps its digits near the end, where both terms are close to 1.
    """
    peak, end = config.learning_rate, config.end_learning_rate
    warmup, total, decay = float(config.warmup_steps), float(config.total_steps), float(config.decay_steps)
    one_minus_sqrt = config.decay_shape == "one_minus_sqrt"

    def schedule(step: optax.ScalarOrSchedule) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        left = jnp.clip((total - step) / decay, 0.0, 1.0)  # 1 up to the decay's start, 0 from total_steps on
        remaining = left / (1.0 + jnp.sqrt(1.0 - left)) if one_minus_sqrt else left
        decayed = (peak - end) * remaining + end
        if warmup == 0:
            return decayed
        return jnp.where(step < warmup, peak * step / warmup, decayed)

    return schedule


def _key_name(key: Any) -> str:
    """One path component (DictKey, GetAttrKey, SequenceKey, FlattenedIndexKey) as a string."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def weight_decay_mask(params: PyTree, exclude: Sequence[str] = DEFAULT_DECAY_EXCLUDE) -> PyTree:
    """A tree of Python bools shaped like `params`: True where weight decay (and LAMB's trust ratio) applies.

    A parameter is excluded (False) when any component of its path fully matches one of the `exclude` regular
    expressions, case-insensitively. With the default, that is every `bias` and everything under a LayerNorm
    module (its `scale` and `bias`); kernels, embeddings and any other weight are decayed (True). Only the path
    is read, so `params` may hold arrays, `jax.ShapeDtypeStruct`s or anything else.
    """
    patterns = [re.compile(pattern, re.IGNORECASE) for pattern in exclude]

    def decayed(path: tuple[Any, ...], _: Any) -> bool:
        names = [_key_name(key) for key in path]
        return not any(pattern.fullmatch(name) for pattern in patterns for name in names)

    return jax.tree_util.tree_map_with_path(decayed, params)


def _is_mask(tree: PyTree) -> bool:
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(isinstance(leaf, bool | np.bool_) for leaf in leaves)


def _resolve_mask(params_or_mask: PyTree | None) -> PyTree | Callable[[PyTree], PyTree]:
    """A bool tree is used as given; a parameter tree gives its `weight_decay_mask`; None, the mask function."""
    if params_or_mask is None:
        return weight_decay_mask
    if _is_mask(params_or_mask):
        return params_or_mask
    return weight_decay_mask(params_or_mask)


def _one_minus_power(decay: float, count: jax.Array) -> jax.Array:
    """`1 - decay**count` in float32, accurately: as `-expm1(count * log(decay))`.

    The direct form loses digits to cancellation (at count 1, `1 - 0.999` carries a 1.3e-5 relative error in
    float32, which optax's bias correction passes on to the update); this one is good to a few ulps.
    """
    if decay == 0:
        return jnp.ones([], jnp.float32)
    return -jnp.expm1(count.astype(jnp.float32) * math.log(decay))


def scale_by_adam(b1: float, b2: float, eps: float, bias_correction: bool = True) -> optax.GradientTransformation:
    """The Adam direction `m_hat / (sqrt(v_hat) + eps)`, with or without bias correction.

    `bias_correction=True` is Adam / `torch.optim.AdamW` (`m_hat = m / (1 - b1^t)`, `v_hat = v / (1 - b2^t)`,
    computed accurately in float32); False uses the raw moments, as the original BERT `AdamWeightDecayOptimizer`.
    The state is optax's `ScaleByAdamState`, so checkpoints and state inspection look the same either way.
    """

    def init(params: PyTree) -> optax.ScaleByAdamState:
        mu, nu = optax.tree.zeros_like(params), optax.tree.zeros_like(params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update(
        updates: PyTree, state: optax.ScaleByAdamState, params: PyTree | None = None
    ) -> tuple[PyTree, optax.ScaleByAdamState]:
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        if bias_correction:
            c1, c2 = _one_minus_power(b1, count), _one_minus_power(b2, count)
        else:
            c1 = c2 = jnp.ones([], jnp.float32)

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            return ((m / c1) / (jnp.sqrt(v / c2) + eps)).astype(g.dtype)

        return jax.tree.map(direction, updates, mu, nu), optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(config: OptimizerConfig, params_or_mask: PyTree | None = None) -> optax.GradientTransformation:
    """The optimizer `config` describes, as one optax transformation (see the module docstring for the chain).

    Args:
      config: the optimizer and schedule hyperparameters.
      params_or_mask: which parameters get weight decay (and, for LAMB, the trust ratio): a tree of bools, or a
        parameter tree (its `weight_decay_mask` is used), or None to compute `weight_decay_mask` from the tree
        passed to `init` / `update`.

    Returns:
      A `GradientTransformation`; its `update` needs `params` (weight decay and the trust ratio read them).
      AdamW and StableAdamW share one state layout (the AdamW chain's), so either restores the other's checkpoint.
    """
    mask = _resolve_mask(params_or_mask)
    parts = []
    if config.clip_global_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_global_norm))
    parts.append(scale_by_adam(config.b1, config.b2, config.eps, config.bias_correction))
    parts.append(optax.add_decayed_weights(_decay_rate(config), mask=mask))
    if config.name == "lamb":
        parts.append(optax.masked(optax.scale_by_trust_ratio(), mask))
    parts.append(optax.scale_by_learning_rate(learning_rate_schedule(config)))
    chain = optax.chain(*parts)
    if config.name in ("adamw", "stable_adamw"):
        return optax.GradientTransformation(chain.init, _fused_adamw_update(config, mask))
    return chain


def _decay_rate(config: OptimizerConfig) -> float:
    """The weight decay rate that multiplies `lr(step)`: `weight_decay`, or `weight_decay / learning_rate` when
    fully decoupled (so that the decay per update is `weight_decay * lr(step) / peak`)."""
    if config.fully_decoupled_weight_decay:
        return config.weight_decay / config.learning_rate
    return config.weight_decay


def update_clipping_divisor(g: jax.Array, v_hat: jax.Array, eps: float) -> jax.Array:
    """StableAdamW's divisor of one tensor's learning rate: `max(1, sqrt(mean(g^2 / max(v_hat, eps^2))))`.

    `v_hat` is the bias-corrected second moment including this step's `g`. The ratio is 1 for a gradient as
    large as its running RMS; a spike far above it (the moment has not caught up) gives a divisor > 1 that brings
    the tensor's step back towards the size a steady gradient would take. Computed in float32.
    """
    g = g.astype(jnp.float32)
    ratio = (g * g) / jnp.maximum(v_hat.astype(jnp.float32), jnp.float32(eps**2))
    return jnp.maximum(1.0, jnp.sqrt(jnp.mean(ratio)))


def _fused_adamw_update(config: OptimizerConfig, mask: PyTree | Callable[[PyTree], PyTree]) -> optax.TransformUpdateFn:
    """The AdamW chain's `update` (clip -> Adam -> masked decay -> -lr), as one elementwise pass per parameter.

    Why: the optimizer is memory-bound (it reads gradient, both moments and the parameter of all 110M BERT-base
    weights and writes three of them back). Run as the chain of optax transformations, XLA:CPU reads and writes
    the intermediate update trees between the steps: 430 ms per BERT-base step on a 2-core CPU, against 250 ms
    for the same math written as one function of (gradient, mu, nu, param) per leaf, with the clipping as one
    scalar factor. The result is the chain's to float32 rounding (the clipped gradient is `g * (max / norm)`
    instead of `(g / norm) * max`), and the state is the chain's own (built by its `init`, only the two step counts and the
    moments change), so checkpoints are the same either way.

    `stable_adamw` is the same pass with the step of each tensor divided by `update_clipping_divisor` (a
    reduction over that tensor, so one more read of its gradient and second moment); the decay term is divided too.
    """
    schedule = learning_rate_schedule(config)
    b1, b2, eps, max_norm = config.b1, config.b2, config.eps, config.clip_global_norm
    decay, stable = _decay_rate(config), config.name == "stable_adamw"
    display_name = "StableAdamW" if stable else "AdamW"

    def update(updates: PyTree, state: Any, params: PyTree | None = None) -> tuple[PyTree, Any]:
        if params is None:
            raise ValueError(f"{display_name}'s update needs params (the weight decay reads them).")
        adam_index = next(i for i, part in enumerate(state) if isinstance(part, optax.ScaleByAdamState))
        schedule_index = next(i for i, part in enumerate(state) if isinstance(part, optax.ScaleByScheduleState))
        adam, schedule_state = state[adam_index], state[schedule_index]
        if max_norm is not None:
            grad_norm = optax.tree.norm(updates)
            # One scalar factor (as optax: unchanged below max_norm, else scaled to it). Multiplying by it instead
            # of optax's `select(trigger, g, g / norm * max_norm)` keeps the whole update one fusion per leaf.
            clip_factor = jnp.where(grad_norm < max_norm, 1.0, max_norm / grad_norm)
        count = optax.safe_increment(adam.count)
        if config.bias_correction:
            c1, c2 = _one_minus_power(b1, count), _one_minus_power(b2, count)
        else:
            c1 = c2 = jnp.ones([], jnp.float32)
        step_size = -schedule(schedule_state.count)
        decayed = mask(params) if callable(mask) else mask

        def leaf(g: jax.Array, m: jax.Array, v: jax.Array, p: jax.Array, is_decayed: bool) -> tuple[jax.Array, ...]:
            if max_norm is not None:
                g = g * clip_factor.astype(g.dtype)
            m = (1 - b1) * g + b1 * m
            v = (1 - b2) * (g**2) + b2 * v
            u = ((m / c1) / (jnp.sqrt(v / c2) + eps)).astype(g.dtype)
            if is_decayed and decay:
                u = u + decay * p
            leaf_step = step_size / update_clipping_divisor(g, v / c2, eps) if stable else step_size
            return jnp.asarray(leaf_step, u.dtype) * u, m, v

        treedef = jax.tree.structure(updates)
        results = treedef.flatten_up_to(jax.tree.map(leaf, updates, adam.mu, adam.nu, params, decayed))
        new_updates, mu, nu = (treedef.unflatten([result[i] for result in results]) for i in range(3))
        new_state = list(state)
        new_state[adam_index] = optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
        new_state[schedule_index] = optax.ScaleByScheduleState(count=optax.safe_increment(schedule_state.count))
        return new_updates, type(state)(new_state)

    return update


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """Reshapes every leaf `[B, ...]` of `batch` to `[num_microbatches, B // num_microbatches, ...]`.

    Microbatch `j` holds rows `j, j + k, j + 2k, ...` (strided, not contiguous): when the batch is sharded over
    devices along its first axis (and `B // k` is a multiple of the device count), every microbatch keeps an
    equal share of rows on every device, so the split moves no data and every device works on every microbatch.
    For a mean over examples the partition does not change the result.
    """
    rows = _batch_size(batch, num_microbatches) // num_microbatches

    def split(x: jax.Array) -> jax.Array:
        return jnp.swapaxes(jnp.reshape(x, (rows, num_microbatches, *x.shape[1:])), 0, 1)

    return jax.tree.map(split, batch)


def _batch_size(batch: Batch, num_microbatches: int) -> int:
    """The common leading dimension of `batch`'s arrays; errors unless `num_microbatches` divides it."""
    if not _is_int(num_microbatches) or num_microbatches < 1:
        raise ValueError(f"num_microbatches must be a positive Python int, got {num_microbatches!r}.")
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("The batch has no arrays to split into microbatches.")
    sizes = {leaf.shape[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"Every batch array needs the same leading (batch) dimension; got sizes {sorted(map(str, sizes))}."
        )
    (size,) = sizes
    if size % num_microbatches:
        raise ValueError(
            f"Batch size {size} is not divisible by num_microbatches={num_microbatches}; "
            "choose a batch size that is a multiple of the number of microbatches."
        )
    return size


def _accumulator(shape: jax.ShapeDtypeStruct) -> jax.Array:
    """A zero sum for one output leaf; floating sums are kept in at least float32."""
    dtype = shape.dtype
    if jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.promote_types(dtype, jnp.float32)
    return jnp.zeros(shape.shape, dtype)


def accumulate_gradients(
    loss_and_grad_fn: LossAndGradFn,
    params: PyTree,
    batch: Batch,
    num_microbatches: int,
    rng: jax.Array | None,
    *,
    reduction: str = "mean",
) -> tuple[PyTree, PyTree]:
    """Runs `loss_and_grad_fn` over `num_microbatches` slices of `batch` with `jax.lax.scan`; combines the results.

    Meant to be called inside a jitted train step (`num_microbatches` must be static): one compiled loop, not a
    Python loop of dispatches, and only one microbatch's activations live at a time.

    Args:
      loss_and_grad_fn: `(params, microbatch, rng) -> (aux, grads)`; `aux` is the loss or a pytree of metrics.
      params: the parameters, the same for every microbatch.
      batch: a pytree of arrays with a common leading batch dimension divisible by `num_microbatches`
        (split as in `split_microbatches`).
      num_microbatches: k >= 1. With k = 1 the function is called once on the whole batch with `rng` unchanged.
      rng: a PRNG key; microbatch j gets `jax.random.split(rng, k)[j]`. None is passed through as None.
      reduction: "mean" returns the average over microbatches of `aux` and `grads` (each microbatch weighs the
        same; for a per-example mean loss over equal-size microbatches that is exactly the full-batch mean).
        "sum" returns their sums: for a loss weighted by token counts that differ between microbatches, let
        `loss_and_grad_fn` return the gradient of the SUMMED loss with `aux = (loss_sum, weight_sum)`, then
        divide the summed gradient and loss by the summed weight; that is the exact full-batch weighted mean.

    Returns:
      `(aux, grads)` combined by `reduction`; floating results keep the dtype `loss_and_grad_fn` returns
      (the sums are accumulated in at least float32).
    """
    _batch_size(batch, num_microbatches)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is unknown; use one of {', '.join(REDUCTIONS)}.")
    if num_microbatches == 1:
        return loss_and_grad_fn(params, batch, rng)
    microbatches = split_microbatches(batch, num_microbatches)
    keys = None if rng is None else jax.random.split(rng, num_microbatches)

    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), (microbatches, keys))
    shapes = jax.eval_shape(loss_and_grad_fn, params, *one)

    def step(total: PyTree, inputs: tuple[Batch, jax.Array | None]) -> tuple[PyTree, None]:
        outputs = loss_and_grad_fn(params, *inputs)
        return jax.tree.map(lambda t, x: t + x.astype(t.dtype), total, outputs), None

    total, _ = jax.lax.scan(step, jax.tree.map(_accumulator, shapes), (microbatches, keys))
    return jax.tree.map(lambda t, shape: _finish(t, shape, num_microbatches, reduction), total, shapes)


def _finish(total: jax.Array, shape: jax.ShapeDtypeStruct, count: int, reduction: str) -> jax.Array:
    """The sum or the mean of one accumulated leaf, cast back to the dtype the function returned when floating."""
    if reduction == "mean":
        total = total / count
    if jnp.issubdtype(shape.dtype, jnp.floating):
        return total.astype(shape.dtype)
    return total
