"""The collapse check of the pretraining eval: the counts it reads (by hand) and when it speaks."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from bert_jax.training.collapse import collapse_reason, collapse_warning
from bert_jax.training.losses import pretraining_terms, summarize

MASK = 9


def _means(predicted: list[int], targets: list[int], masked: list[bool]) -> dict[str, float]:
    """summarize() of one row whose predictions are `predicted` (argmax of one-hot logits) over a vocab of 10."""
    n = len(predicted)
    logits = jnp.full((1, n, 10), -5.0).at[0, jnp.arange(n), jnp.array(predicted)].set(5.0)
    batch = {
        "input_ids": jnp.array([[MASK if m else 1 for m in masked]]),
        "masked_lm_positions": jnp.arange(n)[None],
        "masked_lm_ids": jnp.array([targets]),
        "masked_lm_weights": jnp.ones((1, n)),
        "next_sentence_labels": jnp.array([0]),
    }
    return {
        k: float(v) for k, v in summarize(pretraining_terms(logits, jnp.zeros((1, 2)), batch, mask_id=MASK)).items()
    }


def test_summarize_counts_the_top_prediction_and_the_majority_answer_at_mask():
    # Five [MASK] predictions (the sixth input kept its word and is not counted): id 3 predicted 3 times of 5,
    # the most frequent answer is id 2 (2 of 5); right at positions 0 and 4: accuracy 2/5.
    means = _means([2, 3, 3, 3, 4, 3], [2, 2, 5, 6, 4, 3], [True, True, True, True, True, False])
    assert means["mlm_top_prediction_share_at_mask"] == pytest.approx(3 / 5)
    assert means["mlm_majority_accuracy_at_mask"] == pytest.approx(2 / 5)
    assert means["mlm_accuracy_at_mask"] == pytest.approx(2 / 5)
    assert means["mlm_accuracy"] == pytest.approx(3 / 6)


def test_one_answer_everywhere_is_a_collapse():
    means = _means([3] * 10, [3, 3, 1, 2, 4, 5, 6, 7, 8, 1], [True] * 10)
    assert means["mlm_top_prediction_share_at_mask"] == 1.0
    assert "100% of the held-out [MASK] predictions are the same token" in collapse_reason(means)
    line = collapse_warning(means, step=400)
    assert line.startswith("WARNING: the masked LM looks collapsed at step 400: ")
    assert "lower optimizer.learning_rate" in line and "longer optimizer.warmup_steps" in line
    assert "\n" not in line


def test_no_better_than_the_most_frequent_word_is_a_collapse():
    # Varied answers (top share 0.3), but right only as often as always answering the majority word (0.3).
    means = {
        "mlm_top_prediction_share_at_mask": 0.3,
        "mlm_accuracy_at_mask": 0.305,
        "mlm_majority_accuracy_at_mask": 0.3,
    }
    assert "no better than always answering the most frequent word (0.3000)" in collapse_reason(means)


def test_a_learning_model_is_not_a_collapse():
    means = _means([2, 3, 4, 5, 6, 3], [2, 3, 4, 5, 1, 1], [True] * 6)  # 4 of 6 right, the majority answer 2 of 6
    assert collapse_reason(means) is None and collapse_warning(means, 1) is None
    # The demo's healthy eval (0.21 at [MASK] against 0.07 for the most frequent word).
    healthy = {
        "mlm_top_prediction_share_at_mask": 0.2,
        "mlm_accuracy_at_mask": 0.21,
        "mlm_majority_accuracy_at_mask": 0.07,
    }
    assert collapse_reason(healthy) is None


def test_evals_without_mask_counts_say_nothing():
    assert collapse_reason({"mlm_accuracy": 0.01, "loss": 9.0}) is None
