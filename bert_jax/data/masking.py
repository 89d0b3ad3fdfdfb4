"""Dynamic masked-LM masking at batch time: the original BERT rules, vectorized over a batch in numpy.

Rules (google-research/bert `create_masked_lm_predictions`, with its per-piece decision bug fixed):

  * Predictions per sequence: `min(max_predictions, max(1, round(length * masked_lm_prob)))`, where `length`
    counts every real token INCLUDING [CLS] and [SEP], as the original does (`len(tokens)`); rounding is
    half-to-even like Python's `round`.
  * Candidates are words: a word-start piece plus the continuation pieces that follow it (`whole_word=True`), or
    single pieces (`whole_word=False`). Special tokens (`special_ids`: [PAD], [CLS], [SEP]) and positions past
    `lengths` are never candidates. A continuation piece right after a special token (a segment whose front was
    truncated) starts its own word; the original would glue it onto the last word before the [SEP].
  * Candidates are shuffled and taken in that order while the total stays <= the number to predict; a word that
    would exceed it is skipped and later (shorter) ones are still tried, as in the original.
  * Each chosen WORD gets one decision: 80% [MASK], 10% a random token, 10% unchanged; a random replacement
    draws an independent id for each of its pieces. (The original decided per piece, so a word could end up
    half masked, half kept.) Random ids are uniform over the vocabulary minus `random_exclude` (default: the
    special ids and [MASK]); the original drew from the whole vocabulary.
  * Outputs have fixed shapes: `masked_lm_positions` ascending, padded with 0, `masked_lm_ids` the original ids
    (0 padding), `masked_lm_weights` 1.0 for real predictions and 0.0 for padding.

Randomness: example i's mask is a pure function of (seed, epoch, example_ids[i]) and of its own tokens. Each
example gets a numpy Philox stream with key (seed, epoch) and counter (0, example_id, 0, 0) (a counter-based
generator: distinct example ids give non-overlapping streams), from which it reads 3 uniforms per position in
position-major order, so neither the batch it is in, its row, nor the padded width of the batch changes its mask.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_UNIFORMS_PER_POSITION = 3  # word order priority, 80/10/10 decision, random replacement id
_MASK_THRESHOLD = 0.8
_KEEP_THRESHOLD = 0.9


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    """Masking parameters. Ids come from the vocabulary (uncased BERT: [PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103)."""

    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    pad_id: int = 0
    max_predictions: int = 20
    masked_lm_prob: float = 0.15
    whole_word: bool = True
    random_exclude: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_predictions < 1:
            raise ValueError(f"max_predictions must be >= 1, got {self.max_predictions}")
        if not 0.0 <= self.masked_lm_prob <= 1.0:
            raise ValueError(f"masked_lm_prob must be in [0, 1], got {self.masked_lm_prob}")
        if len(self.replacement_exclusions) >= self.vocab_size:
            raise ValueError("random_exclude leaves no token to draw random replacements from")

    @property
    def replacement_exclusions(self) -> tuple[int, ...]:
        """Sorted ids never drawn as random replacements (default: specials and [MASK])."""
        exclude = (*self.special_ids, self.mask_id) if self.random_exclude is None else self.random_exclude
        return tuple(sorted({i for i in exclude if 0 <= i < self.vocab_size}))


def mask_batch(
    tokens: np.ndarray,
    word_starts: np.ndarray,
    example_ids: np.ndarray,
    config: MaskingConfig,
    *,
    seed: int,
    epoch: int,
    lengths: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Masks a batch: `input_ids` [B, T] int32 and `masked_lm_positions` / `_ids` (int32) / `_weights` (float32) [B, P].

    `tokens` [B, T] padded with `config.pad_id` after `lengths` (default: the count of non-pad tokens per row);
    `word_starts` [B, T] bool; `example_ids` [B] the global, epoch-independent index of each example; `P` is
    `config.max_predictions`.
    """
    tokens = np.asarray(tokens, np.int32)
    word_starts = np.asarray(word_starts, bool)
    if tokens.ndim != 2 or word_starts.shape != tokens.shape:
        raise ValueError(f"tokens and word_starts must be [B, T] of one shape, got {tokens.shape}, {word_starts.shape}")
    if lengths is None:
        lengths = np.count_nonzero(tokens != config.pad_id, axis=1)
    lengths = np.asarray(lengths, np.int64)
    uniforms = example_uniforms(np.asarray(example_ids), tokens.shape[1], seed=seed, epoch=epoch)
    maskable = _maskable(tokens, lengths, config.special_ids)
    starts = maskable & (word_starts | ~_shift_right(maskable)) if config.whole_word else maskable
    num_to_predict = num_predictions(lengths, config)
    chosen_starts = _choose_words(starts, maskable, uniforms[..., 0], num_to_predict)
    word_of = _word_start_index(starts)
    masked = maskable & np.take_along_axis(chosen_starts, word_of, axis=1)
    decision = np.take_along_axis(uniforms[..., 1], word_of, axis=1)
    replacements = _replacement_ids(uniforms[..., 2], config)
    input_ids = np.where(masked & (decision < _MASK_THRESHOLD), np.int32(config.mask_id), tokens)
    input_ids = np.where(masked & (decision >= _KEEP_THRESHOLD), replacements, input_ids)
    return {"input_ids": input_ids, **_gather_predictions(masked, tokens, config.max_predictions)}


def num_predictions(lengths: np.ndarray, config: MaskingConfig) -> np.ndarray:
    """The original's count: min(max_predictions, max(1, round(length * masked_lm_prob))), length with specials."""
    rounded = np.rint(np.asarray(lengths, np.float64) * config.masked_lm_prob).astype(np.int64)
    return np.minimum(config.max_predictions, np.maximum(1, rounded))


def example_uniforms(example_ids: np.ndarray, width: int, *, seed: int, epoch: int) -> np.ndarray:
    """[B, width, 3] uniforms in [0, 1): row i is the Philox stream keyed (seed, epoch), counter (0, example_ids[i]).

    Position t reads draws 3t..3t+2 of its row's stream, so a wider batch only appends draws: an example's
    uniforms depend on (seed, epoch, example id) alone, not on its row, its batch-mates or the padded width.
    Resetting one bit generator's state per row is ~5x cheaper than constructing a generator per example.
    """
    if seed < 0 or epoch < 0 or (example_ids < 0).any():
        raise ValueError("seed, epoch and example ids must be non-negative")
    bit_generator = np.random.Philox(key=np.array([seed, epoch], np.uint64))
    generator = np.random.Generator(bit_generator)
    state = bit_generator.state
    counter = np.zeros(4, np.uint64)
    out = np.empty((len(example_ids), width, _UNIFORMS_PER_POSITION))
    for row, example_id in enumerate(example_ids.tolist()):
        counter[1] = example_id
        state["state"]["counter"] = counter
        state["buffer_pos"] = 4  # discard buffered words from the previous example
        state["has_uint32"] = 0
        bit_generator.state = state
        generator.random(out=out[row])
    return out


def _maskable(tokens: np.ndarray, lengths: np.ndarray, special_ids: tuple[int, ...]) -> np.ndarray:
    """Positions that may be predicted: inside the length and not a special token."""
    inside = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return inside & ~np.isin(tokens, np.asarray(special_ids, np.int32))


def _shift_right(values: np.ndarray) -> np.ndarray:
    """values[:, t - 1] at position t (False at t = 0)."""
    shifted = np.zeros_like(values)
    shifted[:, 1:] = values[:, :-1]
    return shifted


def _word_start_index(starts: np.ndarray) -> np.ndarray:
    """For each position, the index of the latest word start at or before it (0 where there is none)."""
    positions = np.arange(starts.shape[1])[None, :]
    return np.maximum.accumulate(np.where(starts, positions, 0), axis=1)


def _word_lengths_at_starts(starts: np.ndarray, maskable: np.ndarray) -> np.ndarray:
    """[B, T]: at each word start, the number of pieces in its word; 0 elsewhere."""
    batch, width = starts.shape
    word_number = np.cumsum(starts, axis=1) - 1 + (np.arange(batch) * width)[:, None]  # unique per (row, word)
    counts = np.bincount(word_number[maskable], minlength=batch * width)
    return np.where(starts, counts[np.maximum(word_number, 0)], 0)


def _choose_words(
    starts: np.ndarray, maskable: np.ndarray, priority: np.ndarray, num_to_predict: np.ndarray
) -> np.ndarray:
    """[B, T] bool at the starts of the chosen words: shuffled words taken greedily while they fit.

    Shuffling = sorting words by an independent uniform priority. The greedy pass (skip a word that does not fit,
    keep trying later ones) is sequential in the word rank but vectorized over the batch; it stops as soon as
    every row is full or out of words.
    """
    batch, width = starts.shape
    order = np.argsort(np.where(starts, priority, np.inf), axis=1)
    word_lengths = np.take_along_axis(_word_lengths_at_starts(starts, maskable), order, axis=1)
    num_words = np.count_nonzero(starts, axis=1)
    taken = np.zeros(batch, np.int64)
    chosen_in_order = np.zeros((batch, width), bool)
    for rank in range(int(num_words.max(initial=0))):
        fits = (rank < num_words) & (taken + word_lengths[:, rank] <= num_to_predict)
        chosen_in_order[:, rank] = fits
        taken += np.where(fits, word_lengths[:, rank], 0)
        if rank % 8 == 7 and ((taken >= num_to_predict) | (rank + 1 >= num_words)).all():
            break
    chosen = np.zeros((batch, width), bool)
    np.put_along_axis(chosen, order, chosen_in_order, axis=1)
    return chosen


def _replacement_ids(uniforms: np.ndarray, config: MaskingConfig) -> np.ndarray:
    """Uniform ids over the vocabulary minus the exclusions: draw among the allowed count, then skip past each
    excluded id (ascending), which maps [0, allowed) one-to-one onto the allowed ids."""
    exclusions = config.replacement_exclusions
    ids = (uniforms * (config.vocab_size - len(exclusions))).astype(np.int32)
    for excluded in exclusions:
        ids += ids >= excluded
    return ids


def _gather_predictions(masked: np.ndarray, tokens: np.ndarray, max_predictions: int) -> dict[str, np.ndarray]:
    """Fixed-shape [B, P] positions (ascending), original ids and weights of the masked positions."""
    batch = masked.shape[0]
    counts = np.count_nonzero(masked, axis=1)
    rows, cols = np.nonzero(masked)  # row-major: columns ascend within a row
    rank = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.zeros((batch, max_predictions), np.int32)
    ids = np.zeros((batch, max_predictions), np.int32)
    weights = np.zeros((batch, max_predictions), np.float32)
    positions[rows, rank] = cols
    ids[rows, rank] = tokens[rows, cols]
    weights[rows, rank] = 1.0
    return {"masked_lm_positions": positions, "masked_lm_ids": ids, "masked_lm_weights": weights}
