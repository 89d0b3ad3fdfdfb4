"""Pretraining losses and metrics: masked-LM cross-entropy on the gathered positions, plus NSP.

The masked-LM loss is the original's: the cross-entropy at `masked_lm_positions`, weighted by
`masked_lm_weights` (0 for the padding predictions) and divided by the sum of the weights. The NSP loss is
the mean cross-entropy of the two-way classifier (label 1 = "B is random"). Everything is float32.

Metrics come as sums and counts (`*_sum`, `*_count`), so that evaluation over many batches, or over
processes, adds them up exactly before dividing; `summarize` turns them into the reported means.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_lm_terms(mlm_logits: Array, masked_lm_ids: Array, masked_lm_weights: Array) -> dict[str, Array]:
    """Sums for the MLM loss and accuracy: [B, P, V] logits, [B, P] target ids and weights."""
    logits = mlm_logits.astype(jnp.float32)
    weights = masked_lm_weights.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, masked_lm_ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == masked_lm_ids).astype(jnp.float32)
    return {
        "mlm_loss_sum": -jnp.sum(target_log_probs * weights),
        "mlm_correct_sum": jnp.sum(correct * weights),
        "mlm_count": jnp.sum(weights),
    }


def next_sentence_terms(nsp_logits: Array, labels: Array, example_weights: Array | None = None) -> dict[str, Array]:
    """Sums for the NSP loss and accuracy: [B, 2] logits, [B] labels (1 = random next), optional [B] weights."""
    logits = nsp_logits.astype(jnp.float32)
    weights = jnp.ones(labels.shape, jnp.float32) if example_weights is None else example_weights.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {
        "nsp_loss_sum": -jnp.sum(target_log_probs * weights),
        "nsp_correct_sum": jnp.sum(correct * weights),
        "nsp_count": jnp.sum(weights),
    }


def pretraining_terms(mlm_logits: Array, nsp_logits: Array, batch: Mapping[str, Array]) -> dict[str, Array]:
    """All sums for one batch (eval batches may carry `example_weights` marking padding examples)."""
    example_weights = batch.get("example_weights")
    mlm_weights = batch["masked_lm_weights"]
    if example_weights is not None:
        mlm_weights = mlm_weights * example_weights[:, None]
    return {
        **masked_lm_terms(mlm_logits, batch["masked_lm_ids"], mlm_weights),
        **next_sentence_terms(nsp_logits, batch["next_sentence_labels"], example_weights),
    }


def summarize(terms: Mapping[str, Array]) -> dict[str, Array]:
    """Means from sums: loss (MLM + NSP), mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy."""
    mlm_count = jnp.maximum(terms["mlm_count"], 1e-5)  # the original's denominator guard
    nsp_count = jnp.maximum(terms["nsp_count"], 1e-5)
    mlm_loss = terms["mlm_loss_sum"] / mlm_count
    nsp_loss = terms["nsp_loss_sum"] / nsp_count
    return {
        "loss": mlm_loss + nsp_loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": terms["mlm_correct_sum"] / mlm_count,
        "nsp_loss": nsp_loss,
        "nsp_accuracy": terms["nsp_correct_sum"] / nsp_count,
    }


def pretraining_loss(mlm_logits: Array, nsp_logits: Array, batch: Mapping[str, Array]) -> tuple[Array, dict]:
    """The training objective (MLM + NSP mean losses) and its metrics for one batch."""
    metrics = summarize(pretraining_terms(mlm_logits, nsp_logits, batch))
    return metrics["loss"], metrics
