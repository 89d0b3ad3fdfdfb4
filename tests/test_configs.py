"""BertConfig: validation, JSON round trips, Hugging Face / original config files, named sizes."""

from __future__ import annotations

import json

import pytest

from bert_jax.models.configs import BertConfig, ConfigError, named_config


def test_rejects_heads_that_do_not_divide_hidden_size():
    with pytest.raises(ConfigError, match="divisible by num_attention_heads"):
        BertConfig(hidden_size=100, num_attention_heads=3)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("vocab_size", 0, "positive integer"),
        ("num_hidden_layers", -1, "positive integer"),
        ("hidden_act", "swish", "not supported"),
        ("dtype", "int8", "not supported"),
        ("hidden_dropout_prob", 1.0, r"\[0, 1\)"),
        ("layer_norm_eps", 0.0, "> 0"),
    ],
)
def test_rejects_bad_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        BertConfig(**{field: value})


def test_json_round_trip(tmp_path):
    config = BertConfig(vocab_size=123, hidden_size=64, num_attention_heads=4, dtype="bfloat16")
    path = tmp_path / "bert_config.json"
    config.to_json(path)
    assert BertConfig.from_json(path) == config
    assert BertConfig.from_json(config.to_json()) == config


def test_reads_original_bert_config_json(tmp_path):
    # The bert_config.json shipped with the original uncased_L-12_H-768_A-12 release.
    original = {
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "type_vocab_size": 2,
        "vocab_size": 30522,
    }
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(original))
    config = BertConfig.from_json(path)
    assert config == named_config("base")
    assert config.layer_norm_eps == 1e-12


def test_reads_hugging_face_config(minilm_dir):
    config = BertConfig.from_json(minilm_dir / "config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 6, 12)
    assert config.intermediate_size == 1536 and config.vocab_size == 30522


def test_hf_dict_is_accepted_by_transformers():
    transformers = pytest.importorskip("transformers")
    config = named_config("mini", vocab_size=1000)
    hf = transformers.BertConfig(**config.to_hf_dict())
    assert hf.hidden_size == 256 and hf.num_hidden_layers == 4 and hf.num_attention_heads == 4
    assert hf.vocab_size == 1000 and hf.layer_norm_eps == 1e-12 and hf.hidden_act == "gelu"


def test_unknown_fields_and_relative_positions_are_errors():
    with pytest.raises(ConfigError, match="Unknown BERT config field"):
        BertConfig.from_dict({"hidden_size": 768, "num_experts": 8})
    with pytest.raises(ConfigError, match="only 'absolute'"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        BertConfig.from_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BertConfig.from_json(bad)


def test_named_sizes_match_the_published_miniatures():
    # Turc et al. 2019 (google-research/bert README): L/H with H/64 heads and 4H feed-forward.
    expected = {
        "tiny": (2, 128, 2),
        "mini": (4, 256, 4),
        "small": (4, 512, 8),
        "medium": (8, 512, 8),
        "base": (12, 768, 12),
        "large": (24, 1024, 16),
    }
    for name, (layers, hidden, heads) in expected.items():
        c = named_config(name)
        assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (layers, hidden, heads)
        assert c.intermediate_size == 4 * hidden
    with pytest.raises(ConfigError, match="Unknown model size"):
        named_config("huge")
