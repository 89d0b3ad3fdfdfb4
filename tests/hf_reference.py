"""Builds transformers' PyTorch BERT models with random, non-trivial weights: the numerical reference."""

from __future__ import annotations

import pathlib

import numpy as np

from bert_jax.models.configs import BertConfig


def random_hf_pretraining_model(config: BertConfig, seed: int = 0):
    """A `transformers.BertForPreTraining` whose every weight, LayerNorm scale and bias is random.

    Default init has LayerNorm = (1, 0) and zero biases, which would hide a transposed or dropped
    parameter; here nothing is at its default.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(**config.to_hf_dict())
    model = transformers.BertForPreTraining(hf_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(config.initializer_range * 3 * torch.randn_like(p))
    return model.eval()


def save_random_hf_model(config: BertConfig, directory: pathlib.Path, seed: int = 0):
    model = random_hf_pretraining_model(config, seed)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def random_batch(config: BertConfig, batch: int, length: int, num_predictions: int, seed: int = 0):
    """Token ids with [CLS]/[SEP]-like structure, right padding of varied length, several token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, size=(batch, length), dtype=np.int64)
    lengths = np.linspace(length, max(3, length // 3), batch).astype(int)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    types = rng.integers(0, config.type_vocab_size, size=(batch, length)) * mask
    positions = np.stack([np.sort(rng.choice(n, size=num_predictions, replace=False)) for n in lengths])
    return ids, mask, types, positions


def torch_pretraining_logits(model, ids, mask, types, positions):
    """Reference MLM logits at `positions` and NSP logits, as numpy float32."""
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        )
    mlm = out.prediction_logits.numpy()
    mlm = np.take_along_axis(mlm, positions[..., None], axis=1)
    return mlm, out.seq_relationship_logits.numpy()


def max_relative_error(actual, expected) -> float:
    """max |a - e| / max(1, max |e|): absolute for small values, relative for large logits."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(1.0, np.abs(expected).max()))
