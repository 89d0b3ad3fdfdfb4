"""The MFU numerator against DESIGN.md's reference figure and a hand count."""

from __future__ import annotations

import pytest

from bert_jax.models.configs import named_config
from bert_jax.models.flops import measure_matmul_peak, training_flops_per_sequence


def test_bert_base_seq128_is_about_7e10_flops_per_sequence():
    # DESIGN.md: "Base at S=128: about 7.0e10 FLOPs per sequence" (20 masked predictions).
    assert training_flops_per_sequence(named_config("base"), 128, 20) == pytest.approx(7.0e10, rel=0.01)


def test_hand_count_for_a_small_config():
    config = named_config("tiny", vocab_size=1000)  # L=2, H=128, I=512
    seq, preds = 16, 3
    encoder = 2 * (4 * 128 * 128 + 2 * 128 * 512)  # 393,216 matmul weights
    per_token = 6 * encoder + 12 * 2 * seq * 128
    head = 6 * (128 * 128 + 128 * 1000)
    assert training_flops_per_sequence(config, seq, preds) == seq * per_token + preds * head


def test_measured_peak_is_plausible():
    peak = measure_matmul_peak(size=256, repeats=3)
    assert 1e8 < peak < 1e15
