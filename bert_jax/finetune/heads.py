"""Task models: a new head on a pretrained encoder of either family, named as transformers' task models.

BERT (`BertModel` under `bert`, the new layer `classifier` / `qa_outputs`):
- `BertForSequenceClassification`: dropout + dense on the pooled [CLS] output -> [B, num_labels]
  (num_labels = 1 is regression, STS-B).
- `BertForTokenClassification`: dropout + dense on every token -> [B, T, num_labels] (NER).
- `BertForQuestionAnswering`: dense to 2 on every token -> start and end logits [B, T] each (SQuAD).
The new dense layer is initialized as the original (truncated normal, std initializer_range) or, with
`head_init="normal"`, as transformers does (a plain normal, same std; the `transformers` fine-tuning recipe).

The modern family (`ModernBertModel` under `model`, then `head` = `ModernBertPredictionHead`: dense, activation,
norm; `classifier_dropout`; `classifier`, a dense layer with a bias), as transformers' `ModernBertFor*` models:
- `ModernBertForSequenceClassification`: the [CLS] token (`classifier_pooling="cls"`) or the mean over the real
  tokens ("mean") through the head -> [B, num_labels] (num_labels = 1: regression).
- `ModernBertForTokenClassification`: the head on every token -> [B, T, num_labels].
- `ModernBertForQuestionAnswering`: the head on every token, the classifier to 2 -> [B, T, 2].
Their `head` is the masked-LM checkpoint's (`ModernBertForMaskedLM` has the same one, so a warm start loads it,
as transformers' `from_pretrained` does); only `classifier` is new, initialized as transformers' `_init_weights`
(truncated normal, std hidden_size ** -0.5, zero bias) whatever the recipe (`head_init` is BERT's).

All take `(input_ids, attention_mask, token_type_ids, deterministic)` (the modern family has no segments: its
models ignore `token_type_ids`) and return float32. The QA models give padding positions the float32 minimum so
that no span can start or end there. The encoder subtree (`bert` / `model`) is exactly the encoder's params, so
any pretrained encoder drops in. `sequence_classifier`, `token_classifier` and `question_answering` pick the
model of a config's family.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.models.bert import BertModel, dense_layer
from bert_jax.models.configs import BertConfig
from bert_jax.models.dropout import Dropout
from bert_jax.models.modernbert import ModernBertModel, ModernBertPredictionHead, classifier_layer
from bert_jax.models.modernbert_config import ModernBertConfig

Array = jax.Array


class BertForSequenceClassification(nn.Module):
    config: BertConfig
    num_labels: int
    head_init: str = "truncated_normal"

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        _, pooled = BertModel(self.config, name="bert")(input_ids, attention_mask, token_type_ids, None, deterministic)
        pooled = Dropout(self.config.hidden_dropout_prob)(pooled, deterministic=deterministic)
        return dense_layer(self.config, self.num_labels, ("embed", None), "classifier", kernel_init=self.head_init)(
            pooled
        ).astype(jnp.float32)


class BertForTokenClassification(nn.Module):
    config: BertConfig
    num_labels: int
    head_init: str = "truncated_normal"

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        sequence, _ = BertModel(self.config, name="bert")(
            input_ids, attention_mask, token_type_ids, None, deterministic
        )
        sequence = Dropout(self.config.hidden_dropout_prob)(sequence, deterministic=deterministic)
        return dense_layer(self.config, self.num_labels, ("embed", None), "classifier", kernel_init=self.head_init)(
            sequence
        ).astype(jnp.float32)


class BertForQuestionAnswering(nn.Module):
    config: BertConfig
    num_labels: int = 2  # start, end
    head_init: str = "truncated_normal"

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        sequence, _ = BertModel(self.config, name="bert")(
            input_ids, attention_mask, token_type_ids, None, deterministic
        )
        logits = dense_layer(self.config, 2, ("embed", None), "qa_outputs", kernel_init=self.head_init)(
            sequence
        ).astype(jnp.float32)
        return _no_span_in_padding(logits, attention_mask)


def _no_span_in_padding(logits: Array, attention_mask: Array | None) -> Array:
    """[B, T, 2] start and end logits with the float32 minimum at padding positions."""
    if attention_mask is None:
        return logits
    return jnp.where(attention_mask[..., None].astype(bool), logits, jnp.finfo(jnp.float32).min)


# ------------------------------------------------------------------------------------------------------------
# The modern family


def _modern_keep(input_ids: Array, attention_mask: Array | None) -> Array:
    return jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)


def _modern_logits(config: ModernBertConfig, num_labels: int, hidden: Array, deterministic: bool) -> Array:
    """`head` (dense, activation, norm), `classifier_dropout`, `classifier`: float32 logits."""
    hidden = ModernBertPredictionHead(config, name="head")(hidden)
    hidden = Dropout(config.classifier_dropout)(hidden, deterministic=deterministic)
    return classifier_layer(config, num_labels)(hidden).astype(jnp.float32)


class ModernBertForSequenceClassification(nn.Module):
    config: ModernBertConfig
    num_labels: int

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        del token_type_ids  # no segment embeddings in this family
        config = self.config
        keep = _modern_keep(input_ids, attention_mask)
        hidden = ModernBertModel(config, name="model")(input_ids, keep, None, deterministic)
        if config.classifier_pooling == "cls":
            pooled = hidden[:, 0]
        else:  # "mean": over the real tokens (padding positions' outputs are never read, whatever they hold)
            total = jnp.sum(jnp.where(keep[..., None], hidden.astype(jnp.float32), 0.0), axis=1)
            count = jnp.maximum(jnp.sum(keep, axis=1, keepdims=True), 1).astype(jnp.float32)
            pooled = (total / count).astype(hidden.dtype)
        return _modern_logits(config, self.num_labels, pooled, deterministic)


class ModernBertForTokenClassification(nn.Module):
    config: ModernBertConfig
    num_labels: int

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        del token_type_ids
        hidden = ModernBertModel(self.config, name="model")(input_ids, attention_mask, None, deterministic)
        return _modern_logits(self.config, self.num_labels, hidden, deterministic)


class ModernBertForQuestionAnswering(nn.Module):
    config: ModernBertConfig
    num_labels: int = 2  # start, end

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        del token_type_ids
        hidden = ModernBertModel(self.config, name="model")(input_ids, attention_mask, None, deterministic)
        return _no_span_in_padding(_modern_logits(self.config, 2, hidden, deterministic), attention_mask)


# ------------------------------------------------------------------------------------------------------------
# The model of a config's family


EncoderConfig = BertConfig | ModernBertConfig


def sequence_classifier(config: EncoderConfig, num_labels: int, head_init: str = "truncated_normal") -> nn.Module:
    """The sequence classification (or regression, num_labels 1) model of `config`'s family."""
    if isinstance(config, ModernBertConfig):
        return ModernBertForSequenceClassification(config, num_labels)
    return BertForSequenceClassification(config, num_labels, head_init)


def token_classifier(config: EncoderConfig, num_labels: int, head_init: str = "truncated_normal") -> nn.Module:
    """The token classification model of `config`'s family."""
    if isinstance(config, ModernBertConfig):
        return ModernBertForTokenClassification(config, num_labels)
    return BertForTokenClassification(config, num_labels, head_init)


def question_answering(config: EncoderConfig, head_init: str = "truncated_normal") -> nn.Module:
    """The span (start, end) model of `config`'s family."""
    if isinstance(config, ModernBertConfig):
        return ModernBertForQuestionAnswering(config)
    return BertForQuestionAnswering(config, head_init=head_init)
