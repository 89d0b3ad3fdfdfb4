"""Sentence embeddings (the demo job): our pipeline against transformers + mean pooling, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bert_jax import tokenizers
from bert_jax.models import embed
from bert_jax.models.convert import from_hf
from tests.conftest import REPO_ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]


def test_mean_pooled_embeddings_match_transformers(minilm_dir):
    config, params = from_hf(minilm_dir)
    tokenizer = tokenizers.load_tokenizer(vocab_file=minilm_dir / "vocab.txt")
    batch = embed.single_segment_batch(tokenizer, TEXTS, max_length=128)
    ours = embed.sentence_embeddings(config, params["bert"], batch, "mean")
    reference_tokenizer = transformers.BertTokenizer.from_pretrained(minilm_dir)
    encoded = reference_tokenizer(TEXTS, padding=True, return_tensors="pt")
    np.testing.assert_array_equal(batch["input_ids"], encoded["input_ids"].numpy())
    model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None].float()
    want = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(ours, want, atol=1e-4)
    sims = embed.cosine_similarities(ours)
    assert sims[0, 1] > 0.5 > sims[0, 2]  # a cat and a kitten are closer than a cat and the stock market


def test_truncation_keeps_cls_and_sep():
    class Fake:
        cls_id, sep_id, pad_id = 101, 102, 0

        def encode(self, text: str) -> list[int]:
            return list(range(1000, 1000 + len(text)))

    batch = embed.single_segment_batch(Fake(), ["abcdefgh", "ab"], max_length=6)
    np.testing.assert_array_equal(
        batch["input_ids"], [[101, 1000, 1001, 1002, 1003, 102], [101, 1000, 1001, 102, 0, 0]]
    )
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [6, 4])
    with pytest.raises(ValueError, match="at least 3"):
        embed.single_segment_batch(Fake(), ["x"], max_length=2)


def test_cli_prints_similarities_and_fails_cleanly(minilm_dir, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ok = subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.embed", f"--model={minilm_dir}", *(f"--text={t}" for t in TEXTS[:2])],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "6 layers, hidden 384, 2 texts, mean pooling" in ok.stdout and "cosine similarity:" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bert_jax_tools.embed", f"--model={tmp_path}", "--text=x"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "is not a BERT model" in bad.stderr.strip().splitlines()[-1]
