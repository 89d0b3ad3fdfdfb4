"""`ModernBertConfig`: the hyperparameters of the modern encoder family and its named sizes.

The family is ModernBERT's architecture (Warner et al. 2024, "Smarter, Better, Faster, Longer"), which Ettin
(Weller et al. 2025) reuses at six sizes: token embeddings and a LayerNorm (no position embeddings), pre-norm
layers with rotary position embeddings, a GeGLU MLP, no biases, local (sliding-window) attention on every layer
but each `global_attn_every_n_layers`-th, a final norm and a masked-LM head tied to the embeddings.

Field names and meanings are transformers' `ModernBertConfig`'s, so its `config.json` loads unchanged and ours
is readable by it; the checks run at construction so that a bad config fails with one clear message before
anything compiles. Four compute options follow BERT's (`configs.BertConfig`) and are never written to a
Hugging Face `config.json`: `dtype`, `vocab_pad_multiple`, `remat_policy`, `attention_kernel`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from bert_jax.errors import ConfigError
from bert_jax.models import configs

FAMILY = "modernbert"
MODEL_TYPE = "modernbert"  # transformers' model_type
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "relu")
POOLINGS = ("cls", "mean")

# Keys a transformers `config.json` carries that change nothing here (or hold the only value we support).
_IGNORED_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "deterministic_flash_attn",
        "sparse_prediction",
        "sparse_pred_ignore_index",
        "reference_compile",
        "repad_logits_with_grad",
        "_name_or_path",
        "id2label",
        "label2id",
        "problem_type",
        "num_labels",
        "output_attentions",
        "output_hidden_states",
        "use_cache",
        "position_embedding_type",
        "head_dim",
        "attn_implementation",
        "_attn_implementation_autoset",
        "is_decoder",
        "add_cross_attention",
        "chunk_size_feed_forward",
    }
)


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """Hyperparameters of a ModernBERT-class encoder (transformers' field names) plus the compute options.

    Local layers attend to keys with |i - j| <= `local_attention` // 2 and rotate by `local_rope_theta`;
    layer i is global when i % `global_attn_every_n_layers` == 0 (layer 0 always is) and rotates by
    `global_rope_theta`. The first layer has no attention norm (the embeddings' norm precedes it).
    `max_position_embeddings` bounds the sequence length a job may use (RoPE itself has no table).
    """

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int = 50283
    eos_token_id: int = 50282
    bos_token_id: int = 50281
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    global_rope_theta: float = 160000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    local_rope_theta: float = 10000.0
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    tie_word_embeddings: bool = True
    dtype: str = "float32"
    vocab_pad_multiple: int = 1
    remat_policy: str = "none"
    attention_kernel: str = "xla"

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "global_attn_every_n_layers",
            "local_attention",
            "vocab_pad_multiple",
        )
        configs.check_positive_integers(self, positive)
        configs.check_heads_divide(self)
        if self.head_dim % 2:
            raise ConfigError(
                f"The head size hidden_size / num_attention_heads = {self.head_dim} must be even for rotary "
                "position embeddings; choose another head count."
            )
        configs.check_choice(self, "hidden_activation", SUPPORTED_ACTIVATIONS)
        configs.check_choice(self, "classifier_activation", SUPPORTED_ACTIVATIONS)
        if self.classifier_pooling not in POOLINGS:
            raise ConfigError(
                f"ModernBertConfig.classifier_pooling={self.classifier_pooling!r} is not supported; use 'cls' or 'mean'."
            )
        if not self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings=False is not supported: the MLM decoder is tied to the embeddings.")
        for name in ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"ModernBertConfig.{name} must be in [0, 1), got {value!r}.")
        for name in (
            "initializer_range",
            "initializer_cutoff_factor",
            "norm_eps",
            "global_rope_theta",
            "local_rope_theta",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ModernBertConfig.{name} must be > 0, got {getattr(self, name)!r}.")
        configs.check_compute_options(self, "attention_dropout")

    # The names the rest of the code base shares between families (`sharding.ModelShape`, the fit check, ...).
    @property
    def family(self) -> str:
        return FAMILY

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding table: `vocab_size` rounded up to `vocab_pad_multiple`."""
        return -(-self.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple

    def is_global_layer(self, index: int) -> bool:
        """Whether layer `index` attends globally (transformers: `layer_id % global_attn_every_n_layers == 0`)."""
        return index % self.global_attn_every_n_layers == 0

    def replace(self, **changes: Any) -> ModernBertConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """The fields of a transformers `config.json` for `ModernBertForMaskedLM`."""
        fields = self.to_dict()
        for compute_option in ("dtype", "vocab_pad_multiple", "remat_policy", "attention_kernel"):
            fields.pop(compute_option)
        fields.update(architectures=["ModernBertForMaskedLM"], model_type=MODEL_TYPE, torch_dtype="float32")
        return fields

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Serializes to JSON (with `"family"`); writes it to `path` too when given."""
        text = json.dumps({"family": FAMILY, **self.to_dict()}, indent=2, sort_keys=True) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ModernBertConfig:
        """Builds a config from our JSON or a transformers ModernBERT `config.json`."""
        fields = {k: v for k, v in fields.items() if k != "family"}
        model_type = fields.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"model_type={model_type!r} is not a ModernBERT config (expected {MODEL_TYPE!r}).")
        rope_scaling = fields.pop("rope_scaling", None)
        if rope_scaling:
            raise ConfigError(f"rope_scaling={rope_scaling!r} is not supported: only plain RoPE (ModernBERT's) is.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in fields if k not in known and k not in _IGNORED_KEYS)
        if unknown:
            raise ConfigError(
                f"Unknown ModernBERT config field(s): {', '.join(unknown)}. Known fields: {', '.join(sorted(known))}."
            )
        values = {k: v for k, v in fields.items() if k in known}
        if values.get("local_rope_theta") is None:  # transformers: None means "as the global layers"
            values["local_rope_theta"] = values.get("global_rope_theta", cls.global_rope_theta)
        return cls(**values)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike[str]) -> ModernBertConfig:
        """Reads a config from a JSON file path (or a JSON string)."""
        return cls.from_dict(configs.read_json_fields(path_or_text, "ModernBERT"))


# (layers, hidden, intermediate, heads): ModernBERT's two published shapes and Ettin's smaller encoders (their
# released config.json files); "tiny" is a CPU-sized shape of the same family for tests and the CPU demo.
_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (4, 128, 192, 2),
    "ettin_17m": (7, 256, 384, 4),
    "ettin_32m": (10, 384, 576, 6),
    "ettin_68m": (19, 512, 768, 8),
    "base": (22, 768, 1152, 12),
    "large": (28, 1024, 2624, 16),
}


def model_sizes() -> tuple[str, ...]:
    return tuple(_SIZES)


def named_config(name: str, **overrides: Any) -> ModernBertConfig:
    """The config of a named size (tiny, ettin_17m, ettin_32m, ettin_68m, base, large) with optional overrides."""
    if name not in _SIZES:
        raise ConfigError(f"Unknown modernbert model size {name!r}; choose one of {', '.join(_SIZES)}.")
    layers, hidden, intermediate, heads = _SIZES[name]
    config = ModernBertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_attention_heads=heads,
    )
    return config.replace(**overrides) if overrides else config
