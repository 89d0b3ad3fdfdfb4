"""Pretraining losses and metrics: masked-LM cross-entropy on the gathered positions, plus NSP.

The masked-LM loss is the original's: the cross-entropy at `masked_lm_positions`, weighted by
`masked_lm_weights` (0 for the padding predictions) and divided by the sum of the weights. The NSP loss is
the mean cross-entropy of the two-way classifier (label 1 = "B is random"). Everything is float32.

Metrics come as sums and counts (`*_sum`, `*_count`), so that evaluation over many batches, or over
processes, adds them up exactly before dividing; `summarize` turns them into the reported means.

`vocab_parallel_masked_lm_terms` computes the same MLM sums with `shard_map` when the logits are split
over the vocabulary (the "tensor" mesh axis): every device reduces its own slice of the vocabulary and
only [B, P]-sized partial results cross devices (a max, a sum of exponentials, the target logit, the
best index), never the [B, P, V] logits themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

Array = jax.Array
MaskedLmTerms = Callable[..., dict[str, Array]]  # (logits, ids, weights[, mask_weights]) -> sums


def masked_lm_terms(
    mlm_logits: Array, masked_lm_ids: Array, masked_lm_weights: Array, mask_weights: Array | None = None
) -> dict[str, Array]:
    """Sums for the MLM loss and accuracy: [B, P, V] logits, [B, P] target ids and weights.

    `mask_weights` ([B, P], optional) marks the predictions whose input was [MASK]: their accuracy is counted
    apart as well (`mask_prediction_terms`).
    """
    logits = mlm_logits.astype(jnp.float32)
    weights = masked_lm_weights.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, masked_lm_ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    predicted = jnp.argmax(logits, axis=-1)
    correct = (predicted == masked_lm_ids).astype(jnp.float32)
    sums = {
        "mlm_loss_sum": -jnp.sum(target_log_probs * weights),
        "mlm_correct_sum": jnp.sum(correct * weights),
        "mlm_count": jnp.sum(weights),
    }
    if mask_weights is None:
        return sums
    return {**sums, **mask_prediction_terms(predicted, masked_lm_ids, mask_weights, logits.shape[-1])}


def mask_prediction_terms(
    predicted: Array, target_ids: Array, mask_weights: Array, vocab_size: int
) -> dict[str, Array]:
    """Sums over the predictions whose input was [MASK] alone ([B, P] predicted ids, targets and weights).

    The other 20% (the word kept, or a random one) can be answered by copying the input, which a model learns
    long before it uses the context, so the mixed accuracy overstates what it predicts from context (the demo:
    0.15 mixed, 0.08 at [MASK]). Besides the accuracy, how often each id was predicted and was the answer
    (`[vocab_size]` counts): what tells a collapsed model (one answer everywhere, or no better than always
    answering the most frequent word) from a learning one, without another pass over the data.
    """
    mask_weights = mask_weights.astype(jnp.float32)
    correct = (predicted == target_ids).astype(jnp.float32)

    def counts(ids: Array) -> Array:
        return jnp.zeros((vocab_size,), jnp.float32).at[ids.reshape(-1).astype(jnp.int32)].add(mask_weights.reshape(-1))

    return {
        "mlm_mask_correct_sum": jnp.sum(correct * mask_weights),
        "mlm_mask_count": jnp.sum(mask_weights),
        "mlm_mask_predicted_counts": counts(predicted),
        "mlm_mask_target_counts": counts(target_ids),
    }


def vocab_parallel_masked_lm_terms(
    mesh: Mesh, batch_axes: str | tuple[str, ...] | None, vocab_axis: str = "tensor"
) -> MaskedLmTerms:
    """`masked_lm_terms` for logits sharded `[batch over batch_axes, P, vocab over vocab_axis]`, via `shard_map`.

    Equal to `masked_lm_terms` (up to float rounding in the sum of exponentials), including the accuracy's
    tie-breaking: the predicted id is the smallest id among the maxima, as `jnp.argmax` picks. The softmax
    shift (the global max) is a constant for differentiation, which is exact because log-softmax does not
    depend on it.
    """
    reduce_axes = tuple(a for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes or ()))

    def per_device(logits: Array, ids: Array, weights: Array, mask_weights: Array | None) -> dict[str, Array]:
        logits = logits.astype(jnp.float32)
        weights = weights.astype(jnp.float32)
        ids = ids.astype(jnp.int32)
        local_vocab = logits.shape[-1]
        first_id = jax.lax.axis_index(vocab_axis) * local_vocab
        local_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
        global_max = jax.lax.pmax(local_max, vocab_axis)
        sum_exp = jax.lax.psum(jnp.sum(jnp.exp(logits - global_max[..., None]), axis=-1), vocab_axis)
        local_ids = ids - first_id
        here = (local_ids >= 0) & (local_ids < local_vocab)
        picked = jnp.take_along_axis(logits, jnp.clip(local_ids, 0, local_vocab - 1)[..., None], axis=-1)[..., 0]
        target_logit = jax.lax.psum(jnp.where(here, picked, 0.0), vocab_axis)
        target_log_probs = target_logit - global_max - jnp.log(sum_exp)
        candidate = jnp.where(local_max == global_max, jnp.argmax(logits, axis=-1) + first_id, jnp.iinfo(jnp.int32).max)
        predicted = jax.lax.pmin(candidate, vocab_axis)
        correct = (predicted == ids).astype(jnp.float32)
        sums = {
            "mlm_loss_sum": -jnp.sum(target_log_probs * weights),
            "mlm_correct_sum": jnp.sum(correct * weights),
            "mlm_count": jnp.sum(weights),
        }
        if mask_weights is not None:
            vocab_size = local_vocab * jax.lax.axis_size(vocab_axis)
            sums = {**sums, **mask_prediction_terms(predicted, ids, mask_weights, vocab_size)}
        return jax.lax.psum(sums, reduce_axes) if reduce_axes else sums

    rows = PartitionSpec(batch_axes)
    logits_spec = PartitionSpec(batch_axes, None, vocab_axis)

    def terms(logits: Array, ids: Array, weights: Array, mask_weights: Array | None = None) -> dict[str, Array]:
        if mask_weights is None:
            return jax.shard_map(
                lambda lg, i, w: per_device(lg, i, w, None),
                mesh=mesh,
                in_specs=(logits_spec, rows, rows),
                out_specs=PartitionSpec(),
            )(logits, ids, weights)
        return jax.shard_map(
            per_device, mesh=mesh, in_specs=(logits_spec, rows, rows, rows), out_specs=PartitionSpec()
        )(logits, ids, weights, mask_weights)

    return terms


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


def pretraining_terms(
    mlm_logits: Array,
    nsp_logits: Array | None,
    batch: Mapping[str, Array],
    mlm_terms: MaskedLmTerms = masked_lm_terms,
    mask_id: int | None = None,
) -> dict[str, Array]:
    """All sums for one batch (eval batches may carry `example_weights` marking padding examples).

    `mlm_terms` computes the MLM sums: `masked_lm_terms`, or `vocab_parallel_masked_lm_terms(...)`. With
    `mask_id`, the predictions whose input token is `mask_id` are also counted apart (`mlm_mask_*`).
    """
    example_weights = batch.get("example_weights")
    mlm_weights = batch["masked_lm_weights"]
    if example_weights is not None:
        mlm_weights = mlm_weights * example_weights[:, None]
    mlm_args = [mlm_logits, batch["masked_lm_ids"], mlm_weights]
    if mask_id is not None:
        inputs = jnp.take_along_axis(batch["input_ids"], batch["masked_lm_positions"].astype(jnp.int32), axis=1)
        mlm_args.append(mlm_weights * (inputs == mask_id))
    terms = mlm_terms(*mlm_args)
    if nsp_logits is None:  # a model family without a next-sentence head
        return terms
    return {**terms, **next_sentence_terms(nsp_logits, batch["next_sentence_labels"], example_weights)}


def summarize(terms: Mapping[str, Array], nsp_loss_weight: float = 1.0) -> dict[str, Array]:
    """Means from sums: loss (MLM + `nsp_loss_weight` x NSP: the objective), mlm_loss, mlm_accuracy, nsp_loss,
    nsp_accuracy; where the [MASK] predictions were counted apart also mlm_accuracy_at_mask, the share of them
    that got the most frequent answer (mlm_top_prediction_share_at_mask) and the accuracy that always answering
    the most frequent target would have had (mlm_majority_accuracy_at_mask): see `bert_jax.training.collapse`."""
    mlm_count = jnp.maximum(terms["mlm_count"], 1e-5)  # the original's denominator guard
    mlm_loss = terms["mlm_loss_sum"] / mlm_count
    means = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_accuracy": terms["mlm_correct_sum"] / mlm_count}
    if "nsp_count" in terms:  # absent for a model without a next-sentence head
        nsp_count = jnp.maximum(terms["nsp_count"], 1e-5)
        nsp_loss = terms["nsp_loss_sum"] / nsp_count
        means["loss"] = mlm_loss + nsp_loss_weight * nsp_loss
        means["nsp_loss"] = nsp_loss
        means["nsp_accuracy"] = terms["nsp_correct_sum"] / nsp_count
    if "mlm_mask_count" in terms:
        mask_count = jnp.maximum(terms["mlm_mask_count"], 1e-5)
        means["mlm_accuracy_at_mask"] = terms["mlm_mask_correct_sum"] / mask_count
        if "mlm_mask_predicted_counts" in terms:
            means["mlm_top_prediction_share_at_mask"] = jnp.max(terms["mlm_mask_predicted_counts"]) / mask_count
            means["mlm_majority_accuracy_at_mask"] = jnp.max(terms["mlm_mask_target_counts"]) / mask_count
    return means


def pretraining_loss(
    mlm_logits: Array,
    nsp_logits: Array | None,
    batch: Mapping[str, Array],
    mlm_terms: MaskedLmTerms = masked_lm_terms,
    nsp_loss_weight: float = 1.0,
) -> tuple[Array, dict]:
    """The training objective (MLM + `nsp_loss_weight` x NSP mean losses) and its metrics for one batch.

    Weight 0 trains the masked LM alone (RoBERTa's finding: NSP is not needed); the NSP metrics are still reported.
    """
    metrics = summarize(pretraining_terms(mlm_logits, nsp_logits, batch, mlm_terms), nsp_loss_weight)
    return metrics["loss"], metrics
