"""Packed rows: a document's MLM logits in a row packed with other documents equal its logits alone in a padded
row (issue 39's isolation test), for both model families and every attention kernel this CPU runs (XLA, and
Pallas's splash kernel in its interpreter). A deliberately leaking mask (the packed row without its document ids:
attention across documents, as RoBERTa's FULL-SENTENCES) fails the same comparison."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bert_jax.models.bert import BertForPreTraining
from bert_jax.models.configs import BertConfig
from bert_jax.models.modernbert import ModernBertForMaskedLM
from bert_jax.models.modernbert_config import ModernBertConfig
from tests.hf_reference import max_relative_error

LENGTH = 40
DOCUMENTS = (11, 9, 5)  # three documents and 15 padding positions in the packed row


def _models(kernel: str):
    bert = BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=40,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attention_kernel=kernel,
    )
    modern = ModernBertConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=3,
        num_attention_heads=2,
        local_attention=6,  # the local layers' window is shorter than the documents: both masks at work
        global_attn_every_n_layers=2,
        max_position_embeddings=64,
        pad_token_id=0,
        attention_kernel=kernel,
    )
    return {"bert": BertForPreTraining(bert), "modernbert": ModernBertForMaskedLM(modern)}


def _params(model: nn.Module) -> dict:
    """Random params with every leaf moved off its initial value (norm scales not 1, biases not 0)."""
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def _rows():
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 97, size=n) for n in DOCUMENTS]
    packed = np.zeros((1, LENGTH), np.int32)
    document_ids = np.zeros((1, LENGTH), np.int32)
    positions = np.zeros((1, LENGTH), np.int32)
    start = 0
    for k, tokens in enumerate(documents, start=1):
        packed[0, start : start + len(tokens)] = tokens
        document_ids[0, start : start + len(tokens)] = k
        positions[0, start : start + len(tokens)] = np.arange(len(tokens))
        start += len(tokens)
    return documents, packed, document_ids, positions


def _logits(model, params, ids, mask, positions, document_ids=None):
    out = model.apply(
        {"params": params},
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.zeros_like(jnp.asarray(ids)),
        None,
        position_ids=jnp.asarray(positions),
        document_ids=None if document_ids is None else jnp.asarray(document_ids),
    )
    return np.asarray(out.mlm_logits)


@pytest.mark.parametrize("kernel", ["xla", pytest.param("splash_interpret", marks=pytest.mark.slow)])
@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_a_packed_document_sees_only_itself(family, kernel):
    model = _models(kernel)[family]
    params = _params(model)
    documents, packed, document_ids, positions = _rows()
    mask = (document_ids > 0).astype(np.int32)
    isolated = _logits(model, params, packed, mask, positions, document_ids)
    leaking = _logits(model, params, packed, mask, positions)  # attention across the documents
    start = 0
    for tokens in documents:
        alone = np.zeros((1, LENGTH), np.int32)
        alone[0, : len(tokens)] = tokens
        alone_mask = (np.arange(LENGTH) < len(tokens)).astype(np.int32)[None]
        expected = _logits(model, params, alone, alone_mask, np.arange(LENGTH)[None])[0, : len(tokens)]
        got = isolated[0, start : start + len(tokens)]
        assert max_relative_error(got, expected) < 1e-5
        assert max_relative_error(leaking[0, start : start + len(tokens)], expected) > 1e-3
        start += len(tokens)
