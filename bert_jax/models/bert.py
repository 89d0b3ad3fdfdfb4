"""BERT in Flax linen: embeddings, post-LN encoder, pooler and the pretraining heads.

Module and parameter names mirror the Hugging Face BERT layout (`bert/embeddings/word_embeddings`,
`bert/encoder/layer_N/attention/self/query`, `cls/predictions/transform/dense`, ...), so conversion to
and from other layouts is a table (see `convert.py`). Two deliberate differences in shape, not in
meaning: attention projections are stored per head (query/key/value kernels `[hidden, heads, head_dim]`,
the attention output kernel `[heads, head_dim, hidden]`) so that heads can be sharded over a mesh axis,
and every parameter carries logical axis names ("vocab", "embed", "heads", "kv", "mlp", ...) that
`sharding.py` maps to mesh axes.

Numerics follow transformers' PyTorch `BertForPreTraining`, the reference: exact erf GELU for
`hidden_act="gelu"`, the tanh approximation for "gelu_new" (the original TF code), LayerNorm with the
configured epsilon (1e-12), masked attention scores set to the dtype's minimum before the softmax.
Parameters are float32; activations and matmuls run in `config.dtype`.

The MLM head runs only on the gathered `masked_lm_positions` ([B, P]) when they are given, as the
original does: at sequence length 128 with 20 predictions this skips most of the vocabulary projection.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bert_jax import sharding
from bert_jax.models import attention, remat
from bert_jax.models.configs import BertConfig
from bert_jax.models.dropout import Dropout

Array = jax.Array

# The logical layout of the hidden states between blocks: rows over the batch axes, the hidden dimension whole
# (`sharding.constrain_activation`; why in `bert_jax/sharding.py`, "Activations").
HIDDEN_AXES = ("batch", "length", "activation_embed")


def _erf_gelu(x: Array) -> Array:
    """Exact GELU as transformers' PyTorch writes it, x/2 * (1 + erf(x/sqrt(2))).

    `jax.nn.gelu(approximate=False)` computes the same function through erfc, which XLA:CPU evaluates ~20%
    slower. The two agree to 1e-6 absolute in float32 (measured on x ~ N(0, 3^2)); for very negative x, where the
    result tends to 0, this form has the lower relative precision, exactly as PyTorch's.
    """
    return 0.5 * x * (1.0 + lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function transformers' `ACT2FN[name]` is (for the names both model families accept)."""
    if name == "gelu":
        return _erf_gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    if name == "silu":
        return jax.nn.silu
    raise ValueError(f"Unsupported hidden_act {name!r}.")


def _kernel_init(config: BertConfig, names: tuple[str | None, ...]) -> Callable[..., Any]:
    """Truncated normal with std `initializer_range`, as the original `create_initializer`."""
    return nn.with_logical_partitioning(nn.initializers.truncated_normal(config.initializer_range), names)


def _zeros(names: tuple[str | None, ...]) -> Callable[..., Any]:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple[str | None, ...]) -> Callable[..., Any]:
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _layer_norm(config: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        scale_init=_ones(("norm",)),
        bias_init=_zeros(("norm",)),
        name=name,
    )


def flat_dot_general(
    lhs: Array,
    rhs: Array,
    dimension_numbers: lax.DotDimensionNumbers,
    precision: lax.PrecisionLike = None,
    preferred_element_type: Any = None,
) -> Array:
    """`lax.dot_general` for a dense layer, computed as one 2D matmul [tokens, in] @ [in, out].

    The attention projections keep their per-head kernels ([hidden, heads, head_dim] and [heads, head_dim,
    hidden]) for sharding and conversion; contracting them as 3D tensors made XLA:CPU copy the kernels and the
    activations into transposed layouts for the backward pass (measured: the attention block's forward +
    backward 10% slower). Reshaping to 2D is free in row-major layout and leaves the math unchanged. Any
    contraction that is not "trailing input axes with leading kernel axes, no batch axes" goes to
    `lax.dot_general` as is.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    num = len(lhs_contract)
    trailing = tuple(range(lhs.ndim - num, lhs.ndim))
    leading = tuple(range(num))
    if lhs_batch or rhs_batch or tuple(lhs_contract) != trailing or tuple(rhs_contract) != leading:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type)
    contracted = math.prod(lhs.shape[lhs.ndim - num :])
    out = jnp.matmul(
        lhs.reshape(-1, contracted),
        rhs.reshape(contracted, -1),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return out.reshape(lhs.shape[: lhs.ndim - num] + rhs.shape[num:])


KERNEL_INITS = ("truncated_normal", "normal")


def dense_layer(
    config: BertConfig,
    features: int | tuple[int, ...],
    names: tuple[str | None, ...],
    name: str,
    axis: int | tuple[int, ...] = -1,
    *,
    kernel_init: str = "truncated_normal",
) -> nn.DenseGeneral:
    """A dense layer as every BERT layer has: float32 params, `config.dtype` compute, zero bias, sharded by `names`.

    `kernel_init`: "truncated_normal" (the original's `create_initializer`, std `initializer_range`, cut at 2 std)
    or "normal" (Hugging Face's `_init_weights`: a plain normal with the same std), for the new head of a fine-tuning
    recipe that follows transformers.
    """
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"kernel_init={kernel_init!r} is unknown; use one of {', '.join(KERNEL_INITS)}.")
    num_out = 1 if isinstance(features, int) else len(features)
    if kernel_init == "normal":
        init = nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)
    else:
        init = _kernel_init(config, names)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        kernel_init=init,
        bias_init=_zeros(names[-num_out:]),
        dot_general=flat_dot_general,
        name=name,
    )


@flax.struct.dataclass
class BertOutput:
    """`BertModel`'s outputs; unpacks as `(sequence_output, pooled_output)`."""

    sequence_output: Array  # [B, T, H]
    pooled_output: Array  # [B, H]

    def __iter__(self) -> Iterator[Array]:
        return iter((self.sequence_output, self.pooled_output))


@flax.struct.dataclass
class PreTrainingOutput:
    """`BertForPreTraining`'s outputs; unpacks as `(mlm_logits, nsp_logits)` (float32)."""

    mlm_logits: Array  # [B, P, V], or [B, T, V] when no positions were given
    nsp_logits: Array  # [B, 2]

    def __iter__(self) -> Iterator[Array]:
        return iter((self.mlm_logits, self.nsp_logits))


class BertEmbeddings(nn.Module):
    """Word + position + token type embeddings, then LayerNorm and dropout."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, position_ids: Array, deterministic: bool) -> Array:
        config = self.config
        init = _kernel_init

        def embed(num: int, names: tuple[str | None, ...], name: str) -> nn.Embed:
            return nn.Embed(
                num,
                config.hidden_size,
                dtype=config.dtype,
                param_dtype=jnp.float32,
                embedding_init=init(config, names),
                name=name,
            )

        words = embed(config.padded_vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
        positions = embed(config.max_position_embeddings, (None, "embed"), "position_embeddings")(position_ids)
        types = embed(config.type_vocab_size, (None, "embed"), "token_type_embeddings")(token_type_ids)
        x = _layer_norm(config)(words + positions + types)
        x = Dropout(config.hidden_dropout_prob)(x, deterministic=deterministic)
        return sharding.constrain_activation(x, HIDDEN_AXES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax_keeping_output(scores: Array, dtype: jnp.dtype) -> Array:
    """Softmax over the last axis computed in float32, returned in `dtype`; the backward pass keeps only that.

    `jax.nn.softmax(scores_f32).astype(bf16)` keeps its float32 output for the backward pass: in bfloat16
    training a [B, heads, T, T] float32 array per layer (2.4 GB per chip for BERT-base at 16 x 512), twice the
    probabilities' own bytes. Here the gradient `p * (g - sum(g * p))` is computed in float32 from the `dtype`
    probabilities (as the fused softmax kernels of mixed-precision BERT training do); in float32 it is
    exactly the usual gradient.
    """
    return jax.nn.softmax(scores, axis=-1).astype(dtype)


def _softmax_forward(scores: Array, dtype: jnp.dtype) -> tuple[Array, Array]:
    probs = softmax_keeping_output(scores, dtype)
    return probs, probs


def _softmax_backward(dtype: jnp.dtype, probs: Array, grad: Array) -> tuple[Array]:
    p, g = probs.astype(jnp.float32), grad.astype(jnp.float32)
    return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax_keeping_output.defvjp(_softmax_forward, _softmax_backward)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over the padding mask; returns [B, T, heads, head_dim]."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool, document_ids: Array | None = None) -> Array:
        config = self.config
        heads, head_dim = config.num_attention_heads, config.head_dim
        names = ("embed", "heads", "kv")
        query = dense_layer(config, (heads, head_dim), names, "query")(x)
        key = dense_layer(config, (heads, head_dim), names, "key")(x)
        value = dense_layer(config, (heads, head_dim), names, "value")(x)
        rate = config.attention_probs_dropout_prob
        if config.attention_kernel in attention.SPLASH_KERNELS:  # the config guarantees rate == 0
            keep = mask[:, 0, 0, :]  # the key-padding mask, [B, T] (unused with document ids)
            interpret = config.attention_kernel == "splash_interpret"
            return attention.splash_attention(query, key, value, keep, interpret=interpret, document_ids=document_ids)
        if config.attention_kernel == "cudnn":  # the config guarantees rate == 0 and a bfloat16 / float16 dtype
            return attention.cudnn_attention(query, key, value, mask[:, 0, 0, :], document_ids=document_ids)
        low_precision = jnp.dtype(config.dtype) != jnp.float32
        if deterministic or (rate == 0.0 and not low_precision):
            # One fused op (XLA's): no [B, heads, T, T] probabilities kept in float32 for a dropout.
            return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="xla")
        # The explicit form: for dropout on the attention probabilities (as the original), and in bfloat16 /
        # float16 training for `softmax_keeping_output`: jax.nn.dot_product_attention's softmax keeps its float32
        # output for the backward pass (BERT-base, 16 x 512 per chip: 1.8 GB more temporaries, bert-jax-compile).
        scores = jnp.einsum("bqnd,bknd->bnqk", query, key) / jnp.sqrt(jnp.asarray(head_dim, query.dtype))
        scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        if jnp.dtype(config.dtype) == jnp.float32:
            probs = jax.nn.softmax(scores, axis=-1)  # its own gradient keeps float32, which is the dtype here
        else:
            probs = softmax_keeping_output(scores, jnp.dtype(config.dtype))
        if rate > 0.0:
            probs = Dropout(rate)(probs, deterministic=False)
        return jnp.einsum("bnqk,bknd->bqnd", probs, value)


class BertSelfOutput(nn.Module):
    """Projects the heads back to the hidden size; dropout, residual, LayerNorm."""

    config: BertConfig

    @nn.compact
    def __call__(self, context: Array, residual: Array, deterministic: bool) -> Array:
        config = self.config
        x = dense_layer(config, config.hidden_size, ("heads", "kv", "embed"), "dense", axis=(-2, -1))(context)
        x = Dropout(config.hidden_dropout_prob)(x, deterministic=deterministic)
        return _layer_norm(config)(x + residual)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool, document_ids: Array | None = None) -> Array:
        context = BertSelfAttention(self.config, name="self")(x, mask, deterministic, document_ids)
        return BertSelfOutput(self.config, name="output")(context, x, deterministic)


class BertIntermediate(nn.Module):
    """The feed-forward expansion: dense to `intermediate_size`, then the activation."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        config = self.config
        x = dense_layer(config, config.intermediate_size, ("embed", "mlp"), "dense")(x)
        return activation(config.hidden_act)(x)


class BertOutputBlock(nn.Module):
    """The feed-forward contraction back to the hidden size; dropout, residual, LayerNorm."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
        config = self.config
        x = dense_layer(config, config.hidden_size, ("mlp", "embed"), "dense")(x)
        x = Dropout(config.hidden_dropout_prob)(x, deterministic=deterministic)
        return _layer_norm(config)(x + residual)


class BertLayer(nn.Module):
    """One post-LN transformer layer: attention, then the feed-forward block."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool, document_ids: Array | None = None) -> Array:
        attended = BertAttention(self.config, name="attention")(x, mask, deterministic, document_ids)
        attended = sharding.constrain_activation(attended, HIDDEN_AXES)
        expanded = BertIntermediate(self.config, name="intermediate")(attended)
        out = BertOutputBlock(self.config, name="output")(expanded, attended, deterministic)
        return sharding.constrain_activation(out, HIDDEN_AXES)


class BertEncoder(nn.Module):
    """`num_hidden_layers` layers named `layer_0` .. `layer_{L-1}` (the Hugging Face names)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool, document_ids: Array | None = None) -> Array:
        layer = remat.remat_layer(BertLayer, self.config.remat_policy, static_argnums=(3,))
        for i in range(self.config.num_hidden_layers):
            x = layer(self.config, name=f"layer_{i}")(x, mask, deterministic, document_ids)
        return x


class BertPooler(nn.Module):
    """Dense + tanh on the first ([CLS]) token."""

    config: BertConfig

    @nn.compact
    def __call__(self, sequence_output: Array) -> Array:
        config = self.config
        first = sequence_output[:, 0]
        return jnp.tanh(dense_layer(config, config.hidden_size, ("embed", "embed_out"), "dense")(first))


class BertModel(nn.Module):
    """The BERT encoder with its pooler: `(sequence_output [B, T, H], pooled_output [B, H])`.

    `attention_mask` is 1 for real tokens and 0 for padding ([B, T]); `token_type_ids` default to 0 and
    `position_ids` to 0..T-1. Packed rows (several documents per row) give `document_ids` ([B, T]: 0 on padding,
    k on the k-th document; `attention.document_mask`): a token then attends only within its document, and the
    caller's `position_ids` restart at each document. Dropout is active only when `deterministic=False` (needs a
    "dropout" rng).
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        document_ids: Array | None = None,
    ) -> BertOutput:
        config = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}.")
        length = input_ids.shape[1]
        if length > config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {length} exceeds max_position_embeddings={config.max_position_embeddings}."
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length), input_ids.shape)
        x = BertEmbeddings(config, name="embeddings")(input_ids, token_type_ids, position_ids, deterministic)
        if document_ids is None:
            mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1(heads), 1(queries), T(keys)]
        else:
            mask = attention.document_mask(document_ids)  # [B, 1, T(queries), T(keys)]
        x = BertEncoder(config, name="encoder")(x, mask, deterministic, document_ids)
        pooled = BertPooler(config, name="pooler")(x)
        return BertOutput(sequence_output=x, pooled_output=pooled)


def gather_positions(sequence: Array, positions: Array) -> Array:
    """Rows of `sequence` [B, T, H] at `positions` [B, P] -> [B, P, H]."""
    return jnp.take_along_axis(sequence, positions[..., None].astype(jnp.int32), axis=1)


class BertPredictionTransform(nn.Module):
    """The MLM head's dense + activation + LayerNorm before the (tied) vocabulary projection."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        config = self.config
        x = dense_layer(config, config.hidden_size, ("embed", "embed_out"), "dense")(x)
        x = activation(config.hidden_act)(x)
        return _layer_norm(config)(x)


class BertLMPredictionHead(nn.Module):
    """MLM logits: transform, then the decoder tied to the word embeddings plus an output bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: Array) -> Array:
        config = self.config
        transformed = BertPredictionTransform(config, name="transform")(hidden)
        # Pinned: the decoder's gradient into it was the one XLA miscompiled (sharding.py, "Activations").
        transformed = sharding.constrain_activation(transformed, HIDDEN_AXES)
        bias = self.param("bias", _zeros(("vocab",)), (config.padded_vocab_size,), jnp.float32)
        logits = jnp.einsum("...h,vh->...v", transformed, word_embeddings.astype(config.dtype))
        logits = logits.astype(jnp.float32) + bias
        if config.padded_vocab_size != config.vocab_size:
            # Padding ids are not tokens: no probability mass, no gradient into their rows.
            is_token = jnp.arange(config.padded_vocab_size) < config.vocab_size
            logits = jnp.where(is_token, logits, jnp.finfo(jnp.float32).min)
        return logits


class BertPreTrainingHeads(nn.Module):
    """`predictions` (MLM) and `seq_relationship` (NSP), the original's `cls/...` scope."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, pooled: Array, word_embeddings: Array) -> PreTrainingOutput:
        config = self.config
        mlm_logits = BertLMPredictionHead(config, name="predictions")(hidden, word_embeddings)
        nsp_logits = dense_layer(config, 2, ("embed", None), "seq_relationship")(pooled)
        return PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits.astype(jnp.float32))


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence heads: `(mlm_logits, nsp_logits)`.

    With `masked_lm_positions` [B, P] the MLM logits are computed only there ([B, P, V]); without them,
    at every position ([B, T, V]). NSP label 1 means "B is a random segment" (the original's convention).
    """

    config: BertConfig

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
        bert = BertModel(self.config, name="bert")
        sequence_output, pooled = bert(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic, document_ids
        )
        if masked_lm_positions is not None:
            sequence_output = gather_positions(sequence_output, masked_lm_positions)
            sequence_output = sharding.constrain_activation(sequence_output, HIDDEN_AXES)
        word_embeddings = bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        word_embeddings = nn.meta.unbox(word_embeddings)
        return BertPreTrainingHeads(self.config, name="cls")(sequence_output, pooled, word_embeddings)


def init_params(model: nn.Module, rng: Array, batch_size: int = 1, seq_length: int = 8) -> Any:
    """Initializes `model`'s params (float32, logical-axis boxes removed) from `rng`."""
    ids = jnp.zeros((batch_size, seq_length), jnp.int32)

    @jax.jit
    def init(rng: Array) -> Any:
        return nn.meta.unbox(model.init(rng, ids, deterministic=True)["params"])

    return init(rng)
