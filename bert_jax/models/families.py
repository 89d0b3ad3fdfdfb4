"""The model families: what a job needs of each (config class, named sizes, pretraining model, conversions).

A job's `config.model.family` picks one ("bert", the default, or "modernbert"); everything family-specific that
the jobs, checkpoints and exports use is reached through `family(name)` or `family_of(config)`, so the plans,
the runner, the fit check and the compile tool are written once for both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from bert_jax.errors import ConfigError
from bert_jax.models import configs, convert, modernbert_config, modernbert_convert
from bert_jax.models.bert import BertForPreTraining
from bert_jax.models.modernbert import ModernBertForMaskedLM

ModelConfig = configs.BertConfig | modernbert_config.ModernBertConfig
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family as the jobs see it."""

    name: str
    config_class: type
    named_config: Callable[..., Any]  # (size, **overrides) -> config
    sizes: tuple[str, ...]
    pretraining_model: Callable[[Any], nn.Module]  # config -> the module the pretraining step trains
    has_next_sentence_head: bool
    model_type: str  # transformers' `model_type`
    to_hf: Callable[..., None]  # (config, params, out_dir, vocab_file=, do_lower_case=, overwrite=)
    from_hf: Callable[[str], tuple[Any, Params]]
    # The config fields a tokenizer decides (besides vocab_size): special token ids, by our token names.
    special_id_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "bert": Family(
        name="bert",
        config_class=configs.BertConfig,
        named_config=configs.named_config,
        sizes=configs.model_sizes(),
        pretraining_model=BertForPreTraining,
        has_next_sentence_head=True,
        model_type="bert",
        to_hf=convert.to_hf,
        from_hf=convert.from_hf,
    ),
    "modernbert": Family(
        name="modernbert",
        config_class=modernbert_config.ModernBertConfig,
        named_config=modernbert_config.named_config,
        sizes=modernbert_config.model_sizes(),
        pretraining_model=ModernBertForMaskedLM,
        has_next_sentence_head=False,
        model_type=modernbert_config.MODEL_TYPE,
        to_hf=modernbert_convert.to_hf,
        from_hf=modernbert_convert.from_hf,
        special_id_fields={
            "[PAD]": "pad_token_id",
            "[CLS]": "cls_token_id",
            "[SEP]": "sep_token_id",
        },
    ),
}
DEFAULT_FAMILY = "bert"


def family(name: str) -> Family:
    """The family named `name`; a one-line error naming the choices otherwise."""
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r} is unknown; use one of {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def family_of(config: ModelConfig) -> Family:
    """The family of a model config."""
    for candidate in FAMILIES.values():
        if isinstance(config, candidate.config_class):
            return candidate
    raise TypeError(f"{type(config).__name__} is not a model family's config.")


def tokenizer_fields(config_family: Family, special_ids: Mapping[str, int]) -> dict[str, int]:
    """The config fields the vocabulary decides: its special tokens' ids (ModernBERT's pad/cls/sep/bos/eos)."""
    fields = {
        field: special_ids[token] for token, field in config_family.special_id_fields.items() if token in special_ids
    }
    if "cls_token_id" in fields:
        fields["bos_token_id"] = fields["cls_token_id"]
    if "sep_token_id" in fields:
        fields["eos_token_id"] = fields["sep_token_id"]
    return fields


def config_from_dict(fields: Mapping[str, Any]) -> ModelConfig:
    """A model config from our JSON (`"family"` names it; none is BERT) or a transformers `config.json`
    (`model_type`)."""
    fields = dict(fields)
    name = fields.get("family")
    if name is None:
        model_type = fields.get("model_type", "bert")
        name = next((f.name for f in FAMILIES.values() if f.model_type == model_type), None)
        if name is None:
            raise ConfigError(
                f"model_type={model_type!r} is not a family this code base trains ({', '.join(FAMILIES)})."
            )
    fields.pop("family", None)
    return family(name).config_class.from_dict(fields)


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """The config as our JSON: its fields, and `"family"` for every family but BERT (whose JSON stays as it was)."""
    fields = config.to_dict()
    name = family_of(config).name
    return fields if name == DEFAULT_FAMILY else {"family": name, **fields}


def hf_model_type(model_dir: str | os.PathLike[str]) -> str:
    """The `model_type` of a Hugging Face directory's `config.json` ("bert" when it names none)."""
    path = os.path.join(os.fspath(model_dir), convert.HF_CONFIG)
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("model_type", "bert")


def load_pretrained(path: str | os.PathLike[str]) -> tuple[ModelConfig, Params]:
    """Weights in any supported format of any family: a ModernBERT Hugging Face directory, or what
    `convert.load_pretrained` reads (BERT: ours, Hugging Face, original TF)."""
    if convert.detect_format(path) == "hf" and hf_model_type(path) == modernbert_config.MODEL_TYPE:
        return modernbert_convert.from_hf(path)
    return convert.load_pretrained(path)
