"""Sentence embeddings from any BERT weights: tokenize, pad, run the encoder, pool.

The "does it work on my text" path: what `bert-jax-embed` runs, and what fine-tuned prediction builds
on. Pooling is "mean" over real tokens (sentence-transformers' recipe, what all-MiniLM-L6-v2 was trained
with) or "cls" (BERT's pooled output).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.models.bert import BertModel
from bert_jax.models.configs import BertConfig


class _Encoder(Protocol):
    cls_id: int
    sep_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


def single_segment_batch(tokenizer: _Encoder, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """`[CLS] text [SEP]` for each text, truncated to `max_length`, right-padded to the longest."""
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3 ([CLS] x [SEP]), got {max_length}.")
    rows = [[tokenizer.cls_id, *tokenizer.encode(t)[: max_length - 2], tokenizer.sep_id] for t in texts]
    length = max(len(r) for r in rows)
    input_ids = np.full((len(rows), length), tokenizer.pad_id, np.int32)
    attention_mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}


def sentence_embeddings(
    config: BertConfig, bert_params: Any, batch: dict[str, np.ndarray], pooling: str = "mean"
) -> np.ndarray:
    """[N, hidden] embeddings of a `single_segment_batch`: masked mean of the last layer, or the pooler."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}.")

    @jax.jit
    def run(params: Any, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        out = BertModel(config).apply({"params": params}, input_ids, attention_mask, token_type_ids)
        if pooling == "cls":
            return out.pooled_output.astype(jnp.float32)
        weights = attention_mask[..., None].astype(jnp.float32)
        summed = jnp.sum(out.sequence_output.astype(jnp.float32) * weights, axis=1)
        return summed / jnp.maximum(weights.sum(axis=1), 1.0)

    return np.asarray(run(bert_params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))


def cosine_similarities(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    return unit @ unit.T
