"""Telling a collapsed masked LM from a learning one, at an eval, from the numbers the eval already has.

A masked LM that training knocked off course (a learning rate too high for its warmup, post-LN BERT's known
instability) often falls to the unigram solution: it answers the same frequent word at every [MASK],
whatever the context, and stays there, its held-out accuracy frozen to the last digit while the job runs on.
From the loss curve alone that looks like slow learning. Two signs tell it apart, both over the held-out
predictions whose input was [MASK] (`losses.summarize` computes them):

- (nearly) all of them are one token: `mlm_top_prediction_share_at_mask` >= `ONE_ANSWER_SHARE`;
- they are right no more often than always answering the held-out split's most frequent word would be:
  `mlm_accuracy_at_mask` <= `mlm_majority_accuracy_at_mask` + `MAJORITY_MARGIN`.
"""

from __future__ import annotations

from collections.abc import Mapping

ONE_ANSWER_SHARE = 0.9
MAJORITY_MARGIN = 0.005  # half a point: the demo at its first eval (step 400) is two points past it

FIXES = (
    "the usual fixes: a lower optimizer.learning_rate or a longer optimizer.warmup_steps (and another "
    "--config.seed tells whether it is this run or the recipe)"
)


def collapse_reason(metrics: Mapping[str, float]) -> str | None:
    """Why the eval `metrics` (`losses.summarize`'s means) look collapsed, or None when they do not.

    None also when the eval did not count the [MASK] predictions apart (no [MASK] id was given).
    """
    share = metrics.get("mlm_top_prediction_share_at_mask")
    accuracy = metrics.get("mlm_accuracy_at_mask")
    majority = metrics.get("mlm_majority_accuracy_at_mask")
    if share is None or accuracy is None or majority is None:
        return None
    if share >= ONE_ANSWER_SHARE:
        return f"{share:.0%} of the held-out [MASK] predictions are the same token"
    if accuracy <= majority + MAJORITY_MARGIN:
        return (
            f"its accuracy at [MASK] ({accuracy:.4f}) is no better than always answering the most frequent "
            f"word ({majority:.4f})"
        )
    return None


def collapse_warning(metrics: Mapping[str, float], step: int) -> str | None:
    """The one warning line the job prints when the eval at `step` looks collapsed, else None."""
    reason = collapse_reason(metrics)
    if reason is None:
        return None
    return f"WARNING: the masked LM looks collapsed at step {step}: {reason}; {FIXES}."
