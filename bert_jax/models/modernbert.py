"""The modern encoder family (ModernBERT, Ettin) in Flax linen: RoPE, GeGLU, pre-norm, local/global attention.

Module and parameter names mirror transformers' `ModernBertForMaskedLM` (`model/embeddings/tok_embeddings`,
`model/layers_N/attn/Wqkv`, `model/layers_N/mlp/Wi`, `model/final_norm`, `head/dense`, ...), so conversion to
and from a Hugging Face directory is a table (`modernbert_convert.py`). As in BERT (`bert.py`), the attention
kernels keep their heads as an axis (Wqkv `[hidden, 3, heads, head_dim]`, Wo `[heads, head_dim, hidden]`) and
the GeGLU input kernel its two halves (Wi `[hidden, 2, intermediate]`: transformers' `chunk(2)` order), so that
heads and the MLP width split over a tensor-parallel mesh axis; every parameter carries BERT's logical axis
names, so data/FSDP/tensor parallelism, remat, bf16, vocabulary padding and the vocab-parallel loss work
unchanged.

Numerics follow transformers (the reference, `attn_implementation="eager"` or "sdpa"): rotary embeddings in
float32 with the non-interleaved (`rotate_half`) layout, `global_rope_theta` on global layers and
`local_rope_theta` on local ones; local layers see keys with |i - j| <= local_attention // 2; padding keys are
never seen; LayerNorms without bias (`norm_bias=False`) with `norm_eps`; exact erf GELU. Initialization is
transformers' `_init_weights`: truncated normals cut at `initializer_cutoff_factor` std, std
`initializer_range` for the embeddings and input projections and `initializer_range / sqrt(2 * layers)` for
the output projections and the head's dense layer, `hidden_size ** -0.5` for a task model's classifier
(`classifier_layer`; the task models are in `bert_jax.finetune.heads`).

The model takes BERT's batch (`token_type_ids` is accepted and unused: the family has no segment embeddings)
and has no next-sentence head: its `PreTrainingOutput.nsp_logits` is None, and the pretraining loss is the
masked LM alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import sharding
from bert_jax.models import attention, remat
from bert_jax.models.bert import (
    HIDDEN_AXES,
    PreTrainingOutput,
    activation,
    flat_dot_general,
    gather_positions,
    softmax_keeping_output,
)
from bert_jax.models.dropout import Dropout
from bert_jax.models.modernbert_config import ModernBertConfig

Array = jax.Array


def _truncated_normal(config: ModernBertConfig, std: float, names: tuple[str | None, ...]) -> Callable[..., Any]:
    cutoff = config.initializer_cutoff_factor
    init = jax.nn.initializers.truncated_normal(std, lower=-cutoff, upper=cutoff)
    return nn.with_logical_partitioning(init, names)


def input_std(config: ModernBertConfig) -> float:
    """The std of the embeddings, Wqkv and Wi (transformers' "in" and "embedding")."""
    return config.initializer_range


def output_std(config: ModernBertConfig) -> float:
    """The std of every output projection and the head's dense layer (transformers' "out")."""
    return config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)


def classifier_std(config: ModernBertConfig) -> float:
    """The std of a task model's classifier (transformers' "final_out"): hidden_size ** -0.5."""
    return config.hidden_size**-0.5


def _dense(
    config: ModernBertConfig,
    features: int | tuple[int, ...],
    names: tuple[str | None, ...],
    name: str,
    *,
    std: float,
    use_bias: bool,
    axis: int | tuple[int, ...] = -1,
) -> nn.DenseGeneral:
    num_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        kernel_init=_truncated_normal(config, std, names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[-num_out:]),
        dot_general=flat_dot_general,
        name=name,
    )


def _norm(config: ModernBertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.norm_eps,
        use_bias=config.norm_bias,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def rotary_inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """theta^(-2i/d) for i < d/2, in float32 as transformers computes them."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def rotary_cos_sin(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos and sin of the rotation angles, [B, T, head_dim] float32 (each frequency twice: the halves' layout)."""
    angles = positions.astype(jnp.float32)[..., None] * rotary_inverse_frequencies(head_dim, theta)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates [B, T, heads, head_dim] `x` by the angles (`cos`/`sin` [B, T, head_dim]) in the halves layout."""
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class ModernBertEmbeddings(nn.Module):
    """Token embeddings, then a LayerNorm and dropout (no position or segment embeddings)."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids: Array, deterministic: bool) -> Array:
        config = self.config
        embed = nn.Embed(
            config.padded_vocab_size,
            config.hidden_size,
            dtype=config.dtype,
            param_dtype=jnp.float32,
            embedding_init=_truncated_normal(config, input_std(config), ("vocab", "embed")),
            name="tok_embeddings",
        )
        x = _norm(config, "norm")(embed(input_ids))
        x = Dropout(config.embedding_dropout)(x, deterministic=deterministic)
        return sharding.constrain_activation(x, HIDDEN_AXES)


def _attend(
    config: ModernBertConfig,
    query: Array,
    key: Array,
    value: Array,
    keep: Array,
    window: int | None,
    deterministic: bool,
    dropout: Callable[[Array], Array],
    document_ids: Array | None,
) -> Array:
    """Attention of [B, T, heads, head_dim] query/key/value over the real keys (`keep` [B, T]) in the window;
    with `document_ids` (packed rows) over the keys of the query's own document only."""
    if config.attention_kernel in attention.SPLASH_KERNELS:  # the config guarantees no attention dropout
        interpret = config.attention_kernel == "splash_interpret"
        return attention.splash_attention(
            query, key, value, keep, window=window, interpret=interpret, document_ids=document_ids
        )
    if config.attention_kernel == "cudnn":  # the config guarantees no attention dropout and a 16-bit dtype
        return attention.cudnn_attention(query, key, value, keep, window=window, document_ids=document_ids)
    if document_ids is None:
        mask = attention.attention_mask(keep, window)
    else:
        mask = attention.document_mask(document_ids, window)
    rate = config.attention_dropout
    low_precision = jnp.dtype(config.dtype) != jnp.float32
    if deterministic or (rate == 0.0 and not low_precision):
        return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="xla")
    # Explicit, for dropout on the probabilities and for `softmax_keeping_output` in low precision (bert.py).
    scale = jnp.asarray(1.0 / np.sqrt(config.head_dim), query.dtype)
    scores = jnp.einsum("bqnd,bknd->bnqk", query * scale, key).astype(jnp.float32)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    if low_precision:
        probs = softmax_keeping_output(scores, jnp.dtype(config.dtype))
    else:
        probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bnqk,bknd->bqnd", dropout(probs), value)


class ModernBertAttention(nn.Module):
    """Fused QKV projection, RoPE, local or global attention, the output projection and its dropout."""

    config: ModernBertConfig
    layer_index: int

    @nn.compact
    def __call__(
        self, x: Array, keep: Array, positions: Array, deterministic: bool, document_ids: Array | None = None
    ) -> Array:
        config = self.config
        heads, head_dim = config.num_attention_heads, config.head_dim
        qkv = _dense(
            config,
            (3, heads, head_dim),
            ("embed", None, "heads", "kv"),
            "Wqkv",
            std=input_std(config),
            use_bias=config.attention_bias,
        )(x)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        is_global = config.is_global_layer(self.layer_index)
        theta = config.global_rope_theta if is_global else config.local_rope_theta
        cos, sin = rotary_cos_sin(positions, head_dim, theta)
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        drop = Dropout(config.attention_dropout)
        context = _attend(
            config,
            query,
            key,
            value,
            keep,
            None if is_global else config.local_attention,
            deterministic,
            lambda probs: drop(probs, deterministic=False),
            document_ids,
        )
        out = _dense(
            config,
            config.hidden_size,
            ("heads", "kv", "embed"),
            "Wo",
            std=output_std(config),
            use_bias=config.attention_bias,
            axis=(-2, -1),
        )(context)
        return Dropout(config.attention_dropout, name="out_drop")(out, deterministic=deterministic)


class ModernBertMLP(nn.Module):
    """GeGLU: Wi to two halves (input, gate), activation(input) * gate, dropout, Wo."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        config = self.config
        both = _dense(
            config,
            (2, config.intermediate_size),
            ("embed", None, "mlp"),
            "Wi",
            std=input_std(config),
            use_bias=config.mlp_bias,
        )(x)
        hidden = activation(config.hidden_activation)(both[..., 0, :]) * both[..., 1, :]
        hidden = Dropout(config.mlp_dropout)(hidden, deterministic=deterministic)
        return _dense(
            config, config.hidden_size, ("mlp", "embed"), "Wo", std=output_std(config), use_bias=config.mlp_bias
        )(hidden)


class ModernBertLayer(nn.Module):
    """One pre-norm layer: x + attention(norm(x)), then x + mlp(norm(x)); layer 0 has no attention norm."""

    config: ModernBertConfig
    layer_index: int

    @nn.compact
    def __call__(
        self, x: Array, keep: Array, positions: Array, deterministic: bool, document_ids: Array | None = None
    ) -> Array:
        config = self.config
        normed = x if self.layer_index == 0 else _norm(config, "attn_norm")(x)
        attend = ModernBertAttention(config, self.layer_index, name="attn")
        x = x + attend(normed, keep, positions, deterministic, document_ids)
        x = sharding.constrain_activation(x, HIDDEN_AXES)
        x = x + ModernBertMLP(config, name="mlp")(_norm(config, "mlp_norm")(x), deterministic)
        return sharding.constrain_activation(x, HIDDEN_AXES)


class ModernBertModel(nn.Module):
    """The encoder: embeddings, `num_hidden_layers` layers named `layers_0` .., the final norm -> [B, T, H].

    `attention_mask` is 1 for real tokens and 0 for padding ([B, T]); `position_ids` default to 0..T-1. Packed
    rows give `document_ids` ([B, T]: 0 on padding, k on the k-th document; `attention.document_mask`): a token
    attends only within its document, and the caller's `position_ids` restart at each document.
    Dropout is active only when `deterministic=False` (needs a "dropout" rng).
    """

    config: ModernBertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        document_ids: Array | None = None,
    ) -> Array:
        config = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}.")
        length = input_ids.shape[1]
        if length > config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {length} exceeds max_position_embeddings={config.max_position_embeddings}."
            )
        keep = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length), input_ids.shape)
        x = ModernBertEmbeddings(config, name="embeddings")(input_ids, deterministic)
        layer = remat.remat_layer(ModernBertLayer, config.remat_policy, static_argnums=(4,))
        for i in range(config.num_hidden_layers):
            x = layer(config, i, name=f"layers_{i}")(x, keep, position_ids, deterministic, document_ids)
        return _norm(config, "final_norm")(x)


class ModernBertPredictionHead(nn.Module):
    """Dense, activation, norm: before the MLM decoder and before the classifiers of the task models."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        config = self.config
        x = _dense(
            config,
            config.hidden_size,
            ("embed", "embed_out"),
            "dense",
            std=output_std(config),
            use_bias=config.classifier_bias,
        )(x)
        return _norm(config, "norm")(activation(config.classifier_activation)(x))


def classifier_layer(config: ModernBertConfig, num_labels: int, name: str = "classifier") -> nn.DenseGeneral:
    """A task model's classifier, transformers' `nn.Linear(hidden_size, num_labels)`: always with a bias (zero at
    the start), its kernel a normal of std `classifier_std` truncated at `initializer_cutoff_factor` std."""
    return _dense(config, num_labels, ("embed", None), name, std=classifier_std(config), use_bias=True)


class ModernBertForMaskedLM(nn.Module):
    """The encoder with the masked-LM head (decoder tied to the token embeddings, with a bias).

    With `masked_lm_positions` [B, P] the logits are computed only there ([B, P, V]); without them at every
    position ([B, T, V]). Takes the pretraining batch's arguments in `BertForPreTraining`'s order so that both
    families run in the same train step; `token_type_ids` is unused and `nsp_logits` is None.
    """

    config: ModernBertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        masked_lm_positions: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        document_ids: Array | None = None,
    ) -> PreTrainingOutput:
        del token_type_ids  # no segment embeddings in this family
        config = self.config
        encoder = ModernBertModel(config, name="model")
        hidden = encoder(input_ids, attention_mask, position_ids, deterministic, document_ids)
        if masked_lm_positions is not None:
            hidden = sharding.constrain_activation(gather_positions(hidden, masked_lm_positions), HIDDEN_AXES)
        hidden = ModernBertPredictionHead(config, name="head")(hidden)
        hidden = sharding.constrain_activation(hidden, HIDDEN_AXES)
        embeddings = nn.meta.unbox(encoder.variables["params"]["embeddings"]["tok_embeddings"]["embedding"])
        logits = jnp.einsum("...h,vh->...v", hidden, embeddings.astype(config.dtype)).astype(jnp.float32)
        if config.decoder_bias:
            init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",))
            logits = logits + self.param("decoder_bias", init, (config.padded_vocab_size,), jnp.float32)
        if config.padded_vocab_size != config.vocab_size:
            # Padding ids are not tokens: no probability mass, no gradient into their rows.
            is_token = jnp.arange(config.padded_vocab_size) < config.vocab_size
            logits = jnp.where(is_token, logits, jnp.finfo(jnp.float32).min)
        return PreTrainingOutput(mlm_logits=logits, nsp_logits=None)
