"""Model configuration: `BertConfig` and the named model sizes.

Field names follow the original `bert_config.json` and Hugging Face's `BertConfig`, so a config file
from either loads unchanged and ours is readable by both. Validation happens here, at construction,
so that a bad config fails with one clear message before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from bert_jax.errors import ConfigError

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_KERNELS = ("xla", "splash", "splash_interpret", "cudnn")  # see attention.py

# Keys that Hugging Face / the original code write into a config but which carry no information
# for this model (or only the value we already assume). Anything else unknown is an error.
_IGNORED_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "pad_token_id",
        "gradient_checkpointing",
        "use_cache",
        "classifier_dropout",
        "directionality",
        "pooler_fc_size",
        "pooler_num_attention_heads",
        "pooler_num_fc_layers",
        "pooler_size_per_head",
        "pooler_type",
        "output_past",
        "_name_or_path",
        "is_decoder",
        "add_cross_attention",
        "chunk_size_feed_forward",
        "tie_word_embeddings",
        "id2label",
        "label2id",
        "problem_type",
        "bos_token_id",
        "eos_token_id",
    }
)


def check_positive_integers(config: Any, names: tuple[str, ...]) -> None:
    """Every field in `names` is an int > 0 (not a bool): else one `ConfigError` naming it."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}.")


def check_heads_divide(config: Any) -> None:
    """The hidden size splits evenly into the heads."""
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"{type(config).__name__}.hidden_size ({config.hidden_size}) must be divisible by "
            f"num_attention_heads ({config.num_attention_heads}); choose a head count that divides it."
        )


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Field `name` is one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(
            f"{type(config).__name__}.{name}={value!r} is not supported; use one of {', '.join(choices)}."
        )


def check_compute_options(config: Any, attention_dropout: str) -> None:
    """The compute options every model family shares (`dtype`, `remat_policy`, `attention_kernel`) and the
    kernels' own needs: no attention dropout (the family's field `attention_dropout`) off XLA, no float32 cuDNN."""
    check_choice(config, "dtype", SUPPORTED_DTYPES)
    check_choice(config, "remat_policy", REMAT_POLICIES)
    check_choice(config, "attention_kernel", ATTENTION_KERNELS)
    rate = getattr(config, attention_dropout)
    if config.attention_kernel != "xla" and rate != 0.0:
        raise ConfigError(
            f"attention_kernel={config.attention_kernel!r} has no dropout on the attention probabilities: set "
            f"{attention_dropout}=0.0 (it is {rate}), or use attention_kernel='xla'."
        )
    if config.attention_kernel == "cudnn" and config.dtype == "float32":
        raise ConfigError(
            "attention_kernel='cudnn' has no float32 kernel: set dtype='bfloat16' (or 'float16'), or use "
            "attention_kernel='xla'."
        )


def read_json_fields(path_or_text: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The JSON object of a config file (a path) or a JSON string; one `ConfigError` for a missing file, invalid
    JSON or anything but an object. `what` names the config in the messages ("BERT", "ModernBERT")."""
    text = str(path_or_text)
    if not text.lstrip().startswith("{"):
        try:
            with open(path_or_text, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{what} config file not found: {path_or_text}") from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} config {path_or_text} is not valid JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{what} config {path_or_text} must be a JSON object.")
    return fields


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT encoder (the `bert_config.json` fields) plus three compute options.

    The compute options do not change what the model computes, only how, and are not written to a
    Hugging Face `config.json`:
    - `dtype`: the dtype of activations and matmuls; parameters are always stored in float32.
    - `vocab_pad_multiple`: the word embedding table and the MLM output bias get
      `padded_vocab_size` rows (vocab_size rounded up to this multiple) so that the vocabulary splits
      evenly over a tensor-parallel mesh axis and matmuls get hardware-friendly shapes (128 on TPU).
      The padding rows are never looked up, their logits are masked out of the softmax, and exports
      strip them (`convert.unpad_vocab`).
    - `remat_policy`: what each encoder layer keeps for the backward pass ("none": everything, no
      recomputation; "full": nothing, the layer is recomputed; "dots": matmul outputs;
      "dots_no_batch": matmul outputs without batch dimensions, i.e. weight-gradient inputs).
    - `attention_kernel`: "xla" (every platform), "splash" (Pallas's flash-attention kernel, TPU only, no
      attention dropout), "splash_interpret" (that kernel interpreted, any platform, slow) or "cudnn"
      (cuDNN's flash attention, NVIDIA GPUs only, no attention dropout, dtype bfloat16 or float16):
      `attention.py`.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    dtype: str = "float32"
    vocab_pad_multiple: int = 1
    remat_policy: str = "none"
    attention_kernel: str = "xla"

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "vocab_pad_multiple",
        )
        check_positive_integers(self, positive)
        check_heads_divide(self)
        check_choice(self, "hidden_act", SUPPORTED_ACTIVATIONS)
        check_compute_options(self, "attention_probs_dropout_prob")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"BertConfig.{name} must be in [0, 1), got {value!r}.")
        if self.initializer_range <= 0:
            raise ConfigError(f"BertConfig.initializer_range must be > 0, got {self.initializer_range!r}.")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the word embedding table: `vocab_size` rounded up to `vocab_pad_multiple`."""
        return -(-self.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple

    def replace(self, **changes: Any) -> BertConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """The fields a Hugging Face `config.json` for `BertForPreTraining` needs."""
        fields = self.to_dict()
        for compute_option in ("dtype", "vocab_pad_multiple", "remat_policy", "attention_kernel"):
            fields.pop(compute_option)
        fields.update(
            architectures=["BertForPreTraining"],
            model_type="bert",
            pad_token_id=0,
            position_embedding_type="absolute",
            torch_dtype="float32",
        )
        return fields

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Serializes to JSON; writes it to `path` too when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> BertConfig:
        """Builds a config from our JSON, an original `bert_config.json` or a Hugging Face `config.json`."""
        fields = dict(fields)
        position_type = fields.pop("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ConfigError(
                f"position_embedding_type={position_type!r} is not supported; only 'absolute' (BERT's) is."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in fields if k not in known and k not in _IGNORED_KEYS)
        if unknown:
            raise ConfigError(
                f"Unknown BERT config field(s): {', '.join(unknown)}. Known fields: {', '.join(sorted(known))}."
            )
        return cls(**{k: v for k, v in fields.items() if k in known})

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike[str]) -> BertConfig:
        """Reads a config from a JSON file path (or a JSON string)."""
        return cls.from_dict(read_json_fields(path_or_text, "BERT"))


# The BERT sizes of Turc et al. 2019 ("Well-Read Students Learn Better", the official miniatures)
# and the two original sizes. Heads are hidden/64; intermediate is 4 * hidden.
_SIZES: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


def model_sizes() -> tuple[str, ...]:
    return tuple(_SIZES)


def named_config(name: str, **overrides: Any) -> BertConfig:
    """The config of a named size (tiny, mini, small, medium, base, large), with optional overrides."""
    if name not in _SIZES:
        raise ConfigError(f"Unknown model size {name!r}; choose one of {', '.join(_SIZES)}.")
    layers, hidden = _SIZES[name]
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
    )
    return config.replace(**overrides) if overrides else config
