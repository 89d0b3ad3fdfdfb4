"""Dynamic masked-LM masking: hand-worked cases, determinism, and statistics on real text.

The references are the published rules of google-research/bert's `create_masked_lm_predictions` (restated in
`bert_jax/data/masking.py`), with its per-piece 80/10/10 decision replaced by a per-word one, and a plain-Python
word segmentation written here independently of the vectorized code.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bert_jax.data.instances import pad_instances
from bert_jax.data.masking import MaskingConfig, _replacement_ids, example_uniforms, mask_batch, num_predictions
from tests.test_instances import real_instances

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
VOCAB_SIZE = 30522
SPECIALS = (PAD, CLS, SEP)


def masking_config(**overrides) -> MaskingConfig:
    fields = {"vocab_size": VOCAB_SIZE, "mask_id": MASK, "special_ids": SPECIALS, "max_predictions": 20}
    return MaskingConfig(**(fields | overrides))


def reference_words(tokens: np.ndarray, word_starts: np.ndarray, length: int) -> list[list[int]]:
    """Words as lists of positions: a word-start piece and the continuation pieces after it; specials end a word
    and are never part of one; a continuation right after a special starts a new word."""
    words: list[list[int]] = []
    previous_special = True
    for t, (token, start) in enumerate(zip(tokens[:length].tolist(), word_starts[:length].tolist(), strict=True)):
        if token in SPECIALS:
            previous_special = True
            continue
        if start or previous_special:
            words.append([t])
        else:
            words[-1].append(t)
        previous_special = False
    return words


def original_num_to_predict(length: int, masked_lm_prob: float = 0.15, max_predictions: int = 20) -> int:
    """The original's formula (`int(round(...))` there; `round` already gives an int); len(tokens) counts
    [CLS] and [SEP]."""
    return min(max_predictions, max(1, round(length * masked_lm_prob)))


def mask_rows(rows: list[list[int]], starts: list[list[bool]], *, seed=0, epoch=0, ids=None, width=None, **cfg):
    """Pads hand-written rows to one width and masks them."""
    width = width or max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    word_starts = np.zeros((len(rows), width), bool)
    for i, (row, row_starts) in enumerate(zip(rows, starts, strict=True)):
        tokens[i, : len(row)] = row
        word_starts[i, : len(row)] = row_starts
    ids = np.arange(len(rows)) if ids is None else np.asarray(ids)
    return tokens, mask_batch(tokens, word_starts, ids, masking_config(**cfg), seed=seed, epoch=epoch)


def masked_sets(output: dict[str, np.ndarray]) -> list[frozenset[int]]:
    return [
        frozenset(p[w > 0].tolist())
        for p, w in zip(output["masked_lm_positions"], output["masked_lm_weights"], strict=True)
    ]


# Row: [CLS] a b ##c d [SEP] e ##f [SEP] (length 9, so round(1.35) = 1 prediction).
SMALL = [101, 2000, 2001, 2002, 2003, 102, 2004, 2005, 102]
SMALL_STARTS = [True, True, True, False, True, True, True, False, True]


# --- hand-worked cases -------------------------------------------------------------------------------------------


def test_number_of_predictions_follows_the_original_formula():
    lengths = np.arange(0, 600)
    expected = [original_num_to_predict(int(n)) for n in lengths]
    np.testing.assert_array_equal(num_predictions(lengths, masking_config()), expected)
    # Hand-worked: 9*0.15 = 1.35 -> 1; 10 -> 1.5 -> 2; 50 -> 7.5 -> 8 (half to even); 128 -> 19.2 -> 19; cap 20.
    np.testing.assert_array_equal(
        num_predictions(np.array([3, 9, 10, 50, 128, 134, 512]), masking_config()), [1, 1, 2, 8, 19, 20, 20]
    )


def test_whole_word_mode_skips_words_that_do_not_fit_and_per_token_mode_does_not():
    rows = [SMALL] * 600
    starts = [SMALL_STARTS] * 600
    _, whole = mask_rows(rows, starts)
    _, per_token = mask_rows(rows, starts, whole_word=False)
    whole_sets, token_sets = masked_sets(whole), masked_sets(per_token)
    # One prediction: the two-piece words (b ##c, e ##f) never fit, so only a (1) or d (4) can be chosen.
    assert {len(s) for s in whole_sets} == {1}
    whole_counts = {p: sum(p in s for s in whole_sets) for p in (1, 4)}
    assert sum(whole_counts.values()) == 600 and min(whole_counts.values()) > 240  # ~300 each, sd 12
    # Per piece: any of the six non-special pieces, uniformly (~100 each, sd 9).
    token_counts = {p: sum(p in s for s in token_sets) for p in range(9)}
    assert {p for p, c in token_counts.items() if c} == {1, 2, 3, 4, 6, 7}
    assert min(token_counts[p] for p in (1, 2, 3, 4, 6, 7)) > 60


def test_continuation_piece_after_sep_starts_its_own_word():
    # [CLS] a b c [SEP] ##x ##y d e [SEP]: length 10 -> 2 predictions. Words: a, b, c, (##x ##y), d, e. The
    # original would glue ##x ##y onto c (a 3-piece word that could never fit in 2).
    row = [101, 2000, 2001, 2002, 102, 2003, 2004, 2005, 2006, 102]
    starts = [True, True, True, True, True, False, False, True, True, True]
    _, out = mask_rows([row] * 600, [starts] * 600)
    words = [{1}, {2}, {3}, {5, 6}, {7}, {8}]
    chosen_xy = 0
    for masked in masked_sets(out):
        assert len(masked) == 2
        assert all(w <= masked or not (w & masked) for w in words)  # a word is masked whole or not at all
        chosen_xy += masked == {5, 6}
    assert chosen_xy > 30  # (##x ##y) is chosen whenever it comes first in the shuffle: 1/6 of the time


def test_max_predictions_cap():
    rng = np.random.default_rng(0)
    row = [CLS, *rng.integers(1000, 30000, size=510).tolist(), SEP]
    starts = [True, *(rng.random(510) < 0.8).tolist(), True]
    _, per_token = mask_rows([row] * 50, [starts] * 50, whole_word=False)
    assert (per_token["masked_lm_weights"].sum(axis=1) == 20).all()  # round(512 * 0.15) = 77, capped at 20
    _, whole = mask_rows([row] * 50, [starts] * 50)
    counts = whole["masked_lm_weights"].sum(axis=1)
    assert counts.max() == 20 and counts.min() >= 19  # a 1-piece word always fits when 1 or more is left
    _, small_cap = mask_rows([row] * 50, [starts] * 50, whole_word=False, max_predictions=5)
    assert small_cap["masked_lm_positions"].shape == (50, 5) and (small_cap["masked_lm_weights"].sum(1) == 5).all()


def test_output_layout_and_untouched_positions():
    rng = np.random.default_rng(1)
    rows = [
        [CLS, *rng.integers(1000, 30000, size=n).tolist(), SEP, *rng.integers(1000, 30000, size=5).tolist(), SEP]
        for n in rng.integers(3, 100, size=64)
    ]
    starts = [[True] * len(r) for r in rows]
    tokens, out = mask_rows(rows, starts, width=128)
    positions, ids, weights = out["masked_lm_positions"], out["masked_lm_ids"], out["masked_lm_weights"]
    assert positions.dtype == np.int32 and ids.dtype == np.int32 and weights.dtype == np.float32
    assert out["input_ids"].dtype == np.int32 and out["input_ids"].shape == tokens.shape
    for b, row in enumerate(rows):
        n = int(weights[b].sum())
        assert n == original_num_to_predict(len(row))
        assert (weights[b, :n] == 1).all() and not weights[b, n:].any()
        assert (np.diff(positions[b, :n]) > 0).all() and not positions[b, n:].any() and not ids[b, n:].any()
        np.testing.assert_array_equal(ids[b, :n], tokens[b, positions[b, :n]])
        untouched = np.setdiff1d(np.arange(128), positions[b, :n])
        np.testing.assert_array_equal(out["input_ids"][b, untouched], tokens[b, untouched])


def test_random_replacement_skips_excluded_ids():
    # Vocabulary 0..9 without 0, 3, 4: the 7 allowed ids, in order, for 7 evenly spaced uniforms.
    cfg = MaskingConfig(vocab_size=10, mask_id=4, special_ids=(0, 3))
    uniforms = (np.arange(7) + 0.5) / 7
    np.testing.assert_array_equal(_replacement_ids(uniforms, cfg), [1, 2, 5, 6, 7, 8, 9])
    everything = MaskingConfig(vocab_size=10, mask_id=4, special_ids=(0, 3), random_exclude=())
    np.testing.assert_array_equal(_replacement_ids((np.arange(10) + 0.5) / 10, everything), np.arange(10))


def test_decision_is_per_word_and_random_ids_per_piece():
    # [CLS] w ##o ##r ##d + 6 one-piece words [SEP], masked_lm_prob 0.5: 6 predictions, so the 4-piece word is
    # chosen whenever at most 2 one-piece words precede it in the shuffle (3/7 of the time).
    row = [CLS, 2000, 2001, 2002, 2003, *range(3000, 3006), SEP]
    starts = [True, True, False, False, False] + [True] * 7
    _, out = mask_rows([row] * 4000, [starts] * 4000, masked_lm_prob=0.5)
    kinds = {"mask": 0, "keep": 0, "random": 0}
    distinct_random_pieces = 0
    for b in range(4000):
        masked = set(out["masked_lm_positions"][b][out["masked_lm_weights"][b] > 0].tolist())
        if not masked & {1, 2, 3, 4}:
            continue
        assert {1, 2, 3, 4} <= masked
        pieces = out["input_ids"][b, 1:5]
        if (pieces == MASK).any():
            assert (pieces == MASK).all()
            kinds["mask"] += 1
        elif (pieces == row[1:5]).all():
            kinds["keep"] += 1
        else:
            assert (pieces != row[1:5]).all()
            kinds["random"] += 1
            distinct_random_pieces += len(set(pieces.tolist())) == 4
    total = sum(kinds.values())
    assert total > 1500  # ~1714
    assert abs(kinds["mask"] / total - 0.8) < 0.04 and abs(kinds["keep"] / total - 0.1) < 0.03
    assert distinct_random_pieces == kinds["random"] > 0  # independent random ids per piece


def test_same_example_same_mask_whatever_the_batch():
    rng = np.random.default_rng(3)
    rows = [[CLS, *rng.integers(1000, 30000, size=n).tolist(), SEP] for n in rng.integers(20, 100, size=16)]
    starts = [[True, *(rng.random(len(r) - 2) < 0.7).tolist(), True] for r in rows]
    ids = np.arange(500, 516)
    _, first = mask_rows(rows, starts, seed=7, epoch=2, ids=ids, width=128)
    order = rng.permutation(16)[:10]
    _, shuffled = mask_rows(
        [rows[i] for i in order], [starts[i] for i in order], seed=7, epoch=2, ids=ids[order], width=101
    )
    for key in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
        np.testing.assert_array_equal(shuffled[key], first[key][order])
    for row_in_shuffled, i in enumerate(order):
        np.testing.assert_array_equal(shuffled["input_ids"][row_in_shuffled], first["input_ids"][i, :101])
    _, next_epoch = mask_rows(rows, starts, seed=7, epoch=3, ids=ids, width=128)
    _, other_seed = mask_rows(rows, starts, seed=8, epoch=2, ids=ids, width=128)
    for other in (next_epoch, other_seed):
        differs = (other["masked_lm_positions"] != first["masked_lm_positions"]).any(axis=1)
        assert differs.sum() >= 14  # two random 1-in-C(n, k) coincidences at most


def test_example_stream_is_the_philox_stream_keyed_by_seed_epoch_and_index():
    # Reference: a fresh Philox generator per example, key (seed, epoch), counter (0, example id, 0, 0).
    ids = np.array([0, 5, 2**40, 3])
    uniforms = example_uniforms(ids, 50, seed=11, epoch=4)
    for row, example_id in enumerate(ids.tolist()):
        bit_generator = np.random.Philox(
            key=np.array([11, 4], np.uint64), counter=np.array([0, example_id, 0, 0], np.uint64)
        )
        np.testing.assert_array_equal(uniforms[row], np.random.Generator(bit_generator).random((50, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        example_uniforms(np.array([-1]), 5, seed=0, epoch=0)


def test_masking_throughput_seq128_batch64():
    instances = real_instances()[: 64 * 20]
    batches = [pad_instances(instances[i : i + 64], 128) for i in range(0, len(instances), 64)]
    cfg = masking_config()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for k, batch in enumerate(batches):
            mask_batch(batch["tokens"], batch["word_starts"], np.arange(k * 64, k * 64 + 64), cfg, seed=0, epoch=0)
        best = max(best, len(instances) / (time.perf_counter() - start))
    assert best > 1500, f"{best:.0f} sequences/s"


# --- real text ---------------------------------------------------------------------------------------------------


def test_real_text_masking_statistics():
    instances = real_instances()[:8000]
    batch = pad_instances(instances, 128)
    tokens, word_starts, lengths = batch["tokens"], batch["word_starts"], batch["lengths"]
    cfg = masking_config()
    out = {key: [] for key in ("input_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")}
    for start in range(0, len(instances), 64):
        rows = slice(start, start + 64)
        result = mask_batch(tokens[rows], word_starts[rows], np.arange(len(instances))[rows], cfg, seed=1, epoch=0)
        for key in out:
            out[key].append(result[key])
    out = {key: np.concatenate(value) for key, value in out.items()}
    input_ids, positions, weights = out["input_ids"], out["masked_lm_positions"], out["masked_lm_weights"]
    counts = weights.sum(axis=1).astype(int)
    assert counts.sum() >= 100_000

    # Layout and specials: positions point at real, non-special tokens; nothing else changes.
    real = weights > 0
    np.testing.assert_array_equal(out["masked_lm_ids"][real], tokens[np.nonzero(real)[0], positions[real]])
    assert not np.isin(out["masked_lm_ids"][real], SPECIALS).any()
    masked = np.zeros(tokens.shape, bool)
    masked[np.nonzero(real)[0], positions[real]] = True
    np.testing.assert_array_equal(input_ids[~masked], tokens[~masked])

    # How many: never more than the original's count, and 15% of all tokens (specials included) +- 0.5pt.
    expected = np.array([original_num_to_predict(int(n)) for n in lengths])
    assert (counts <= expected).all() and (counts == expected).mean() > 0.98
    assert abs(counts.sum() / lengths.sum() - 0.15) < 0.005

    # Words: masked whole or not at all, one decision per word, greedy maximality.
    kinds = {"mask": 0, "keep": 0, "random": 0}
    random_pieces_unchanged = 0
    excluded = {*SPECIALS, MASK}
    for b in range(len(instances)):
        row_masked, new_ids, old_ids = masked[b].tolist(), input_ids[b].tolist(), tokens[b].tolist()
        room = expected[b] - counts[b]
        for word in reference_words(tokens[b], word_starts[b], int(lengths[b])):
            flags = [row_masked[t] for t in word]
            if not any(flags):
                assert len(word) > room  # otherwise the greedy pass would have taken it
                continue
            assert all(flags), f"row {b}: word {word} partly masked"
            new, old = [new_ids[t] for t in word], [old_ids[t] for t in word]
            if MASK in new:
                assert new == [MASK] * len(word), f"row {b}: word {word} partly [MASK]"
                kinds["mask"] += 1
            elif new == old:
                kinds["keep"] += 1
            else:
                kinds["random"] += 1
                random_pieces_unchanged += sum(n == o for n, o in zip(new, old, strict=True))
                assert not excluded & set(new)
    total = sum(kinds.values())
    assert abs(kinds["mask"] / total - 0.8) < 0.01
    assert abs(kinds["keep"] / total - 0.1) < 0.01
    assert abs(kinds["random"] / total - 0.1) < 0.01
    assert random_pieces_unchanged <= 3  # a random draw equals the original id with probability 1/30518
