"""Task heads on `BertModel`, named as Hugging Face's (`bert`, `classifier`, `qa_outputs`).

- `BertForSequenceClassification`: dropout + dense on the pooled [CLS] output -> [B, num_labels]
  (num_labels = 1 is regression, STS-B).
- `BertForTokenClassification`: dropout + dense on every token -> [B, T, num_labels] (NER).
- `BertForQuestionAnswering`: dense to 2 on every token -> start and end logits [B, T] each (SQuAD); padding
  positions get the float32 minimum so no span can start or end there.

All take `(input_ids, attention_mask, token_type_ids, deterministic)` like `BertModel`, keep float32
outputs, and initialize the new dense layer as the original (truncated normal, std initializer_range) or, with
`head_init="normal"`, as transformers does (a plain normal, same std; the `transformers` fine-tuning recipe).
The `bert` subtree is exactly `BertModel`'s params, so any pretrained encoder drops in.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.models.bert import BertModel, dense_layer
from bert_jax.models.configs import BertConfig
from bert_jax.models.dropout import Dropout

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
        if attention_mask is not None:
            logits = jnp.where(attention_mask[..., None].astype(bool), logits, jnp.finfo(jnp.float32).min)
        return logits  # [B, T, 2]: start, end
