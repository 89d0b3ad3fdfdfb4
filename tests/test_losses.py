"""Pretraining losses against transformers' BertForPreTraining loss and hand-computed values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models.bert import BertForPreTraining
from bert_jax.models.configs import BertConfig
from bert_jax.models.convert import from_hf
from bert_jax.training.losses import (
    masked_lm_terms,
    next_sentence_terms,
    pretraining_loss,
    pretraining_terms,
    summarize,
)
from tests.hf_reference import random_batch, save_random_hf_model

torch = pytest.importorskip("torch")


def test_loss_equals_transformers_pretraining_loss(tmp_path):
    """HF's loss: CE over positions with a label (others -100) + NSP CE; ours gathers those positions."""
    config = BertConfig(
        vocab_size=500,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
    )
    reference = save_random_hf_model(config, tmp_path, seed=2)
    _, params = from_hf(tmp_path)
    ids, mask, types, positions = random_batch(config, batch=4, length=32, num_predictions=6, seed=3)
    rng = np.random.default_rng(4)
    targets = rng.integers(0, config.vocab_size, size=positions.shape)
    weights = np.ones(positions.shape, np.float32)
    weights[1, 4:] = 0.0  # two padding predictions in row 1
    nsp_labels = np.array([0, 1, 1, 0])
    labels = np.full(ids.shape, -100)
    for row in range(4):
        for p, t, w in zip(positions[row], targets[row], weights[row], strict=True):
            if w:
                labels[row, p] = t
    with torch.no_grad():
        want = reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            labels=torch.tensor(labels),
            next_sentence_label=torch.tensor(nsp_labels),
        ).loss.item()
    mlm, nsp = BertForPreTraining(config).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), jnp.asarray(positions)
    )
    batch = {
        "masked_lm_ids": jnp.asarray(targets),
        "masked_lm_weights": jnp.asarray(weights),
        "next_sentence_labels": jnp.asarray(nsp_labels),
    }
    loss, metrics = pretraining_loss(mlm, nsp, batch)
    assert abs(float(loss) - want) < 1e-4 * max(1.0, abs(want))
    assert float(metrics["loss"]) == pytest.approx(float(metrics["mlm_loss"] + metrics["nsp_loss"]))


def test_hand_computed_terms():
    # Two predictions over a 3-word vocab, the second one padding; logits chosen so log-softmax is simple.
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    terms = masked_lm_terms(logits, jnp.array([[1, 2]]), jnp.array([[1.0, 0.0]]))
    assert float(terms["mlm_loss_sum"]) == pytest.approx(-np.log(0.2), rel=1e-6)
    assert float(terms["mlm_correct_sum"]) == 0.0 and float(terms["mlm_count"]) == 1.0
    nsp = next_sentence_terms(jnp.log(jnp.array([[0.9, 0.1], [0.25, 0.75]])), jnp.array([0, 0]))
    assert float(nsp["nsp_loss_sum"]) == pytest.approx(-np.log(0.9) - np.log(0.25), rel=1e-6)
    means = summarize({**terms, **nsp})
    assert float(means["nsp_accuracy"]) == 0.5 and float(means["mlm_accuracy"]) == 0.0
    assert float(means["loss"]) == pytest.approx(-np.log(0.2) + (-np.log(0.9) - np.log(0.25)) / 2, rel=1e-6)


def test_the_nsp_weight_scales_only_the_nsp_term_of_the_objective():
    # The same hand-computed terms as above: MLM -log 0.2, NSP mean (-log 0.9 - log 0.25) / 2.
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    terms = masked_lm_terms(logits, jnp.array([[1, 2]]), jnp.array([[1.0, 0.0]]))
    terms |= next_sentence_terms(jnp.log(jnp.array([[0.9, 0.1], [0.25, 0.75]])), jnp.array([0, 0]))
    mlm, nsp = -np.log(0.2), (-np.log(0.9) - np.log(0.25)) / 2
    for weight in (0.0, 0.5, 1.0):
        means = summarize(terms, nsp_loss_weight=weight)
        assert float(means["loss"]) == pytest.approx(mlm + weight * nsp, rel=1e-6)
        assert float(means["nsp_loss"]) == pytest.approx(nsp, rel=1e-6)  # still reported at weight 0


def test_accuracy_at_mask_counts_only_the_masked_inputs():
    # Three predictions: the first two hid their word behind [MASK] (id 4), the third kept it; the model gets
    # the first and the third right. Mixed accuracy 2/3, at [MASK] 1/2; padding examples drop out.
    logits = jnp.log(jnp.array([[[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], [[0.9, 0.05, 0.05]] * 3]))
    batch = {
        "input_ids": jnp.array([[0, 4, 2, 4], [4, 4, 4, 4]]),
        "masked_lm_positions": jnp.array([[1, 3, 2], [0, 1, 2]]),
        "masked_lm_ids": jnp.array([[1, 2, 2], [0, 0, 0]]),
        "masked_lm_weights": jnp.ones((2, 3)),
        "next_sentence_labels": jnp.array([0, 1]),
        "example_weights": jnp.array([1.0, 0.0]),
    }
    nsp = jnp.zeros((2, 2))
    means = summarize(pretraining_terms(logits, nsp, batch, mask_id=4))
    assert float(means["mlm_accuracy"]) == pytest.approx(2 / 3)
    assert float(means["mlm_accuracy_at_mask"]) == pytest.approx(1 / 2)
    assert "mlm_accuracy_at_mask" not in summarize(pretraining_terms(logits, nsp, batch))


def test_example_weights_drop_padding_examples():
    logits = jnp.zeros((2, 1, 5))
    batch = {
        "masked_lm_ids": jnp.array([[1], [2]]),
        "masked_lm_weights": jnp.ones((2, 1)),
        "next_sentence_labels": jnp.array([0, 1]),
        "example_weights": jnp.array([1.0, 0.0]),
    }
    terms = pretraining_terms(logits, jnp.array([[2.0, 0.0], [0.0, 2.0]]), batch)
    assert float(terms["mlm_count"]) == 1.0 and float(terms["nsp_count"]) == 1.0
    assert float(terms["nsp_correct_sum"]) == 1.0
