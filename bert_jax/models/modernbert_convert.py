"""The modern family's parameters <-> transformers' `ModernBertForMaskedLM` (or task model) state dict.

One table (`param_table`) lists every parameter with its Flax path, its transformers name and how the array
changes between the two layouts (PyTorch's `Linear` stores [out, in]; our kernels are [in, out] with the heads
or GeGLU halves as axes). Loading checks every shape and names the parameter, both shapes and the fix.
The decoder is tied to the token embeddings: a state dict may hold `decoder.weight` (it must then equal the
embeddings) or leave it out, as transformers' safetensors files do. The task models
(`bert_jax.finetune.heads`) have the same encoder and `head` and a `classifier` in place of the decoder's bias:
`param_table(config, num_labels)`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from bert_jax.models import convert
from bert_jax.models.modernbert_config import ModernBertConfig

logger = logging.getLogger(__name__)

Params = dict[str, Any]


ConversionError = convert.ConversionError  # one error type for every family's conversions


@dataclasses.dataclass(frozen=True)
class ParamEntry:
    """One parameter: our Flax path, transformers' name, our shape and the two conversions."""

    path: tuple[str, ...]
    hf: str
    shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _linear(path: tuple[str, ...], hf: str, shape: tuple[int, ...], use_bias: bool) -> list[ParamEntry]:
    """A PyTorch `Linear` ([out, in] weight) as a kernel of `shape` (inputs first, then outputs)."""
    in_size = int(np.prod([d for d in shape[: _input_axes(path)]]))

    def to_ours(weight: np.ndarray) -> np.ndarray:
        return weight.T.reshape(shape)

    def to_hf(kernel: np.ndarray) -> np.ndarray:
        return kernel.reshape(in_size, -1).T

    entries = [ParamEntry((*path, "kernel"), f"{hf}.weight", shape, to_ours, to_hf)]
    if use_bias:
        bias_shape = shape[_input_axes(path) :]
        entries.append(
            ParamEntry(
                (*path, "bias"),
                f"{hf}.bias",
                bias_shape,
                lambda b, s=bias_shape: b.reshape(s),
                lambda b: b.reshape(-1),
            )
        )
    return entries


def _input_axes(path: tuple[str, ...]) -> int:
    """How many leading kernel axes are inputs: 2 for the attention output ([heads, head_dim, hidden])."""
    return 2 if path[-2:] == ("attn", "Wo") else 1


def _norm(path: tuple[str, ...], hf: str, size: int, use_bias: bool) -> list[ParamEntry]:
    entries = [ParamEntry((*path, "scale"), f"{hf}.weight", (size,), _same, _same)]
    if use_bias:
        entries.append(ParamEntry((*path, "bias"), f"{hf}.bias", (size,), _same, _same))
    return entries


def param_table(config: ModernBertConfig, num_labels: int | None = None) -> list[ParamEntry]:
    """Every parameter of `ModernBertForMaskedLM(config)` (vocabulary rows at `config.vocab_size`), or with
    `num_labels` of a task model (`ModernBertFor{Sequence,Token}Classification`, `...ForQuestionAnswering` with 2):
    the same encoder and `head`, then `classifier` (a `Linear` with a bias) instead of the decoder's bias."""
    hidden, heads, head_dim = config.hidden_size, config.num_attention_heads, config.head_dim
    inter, vocab = config.intermediate_size, config.vocab_size
    table = [
        ParamEntry(
            ("model", "embeddings", "tok_embeddings", "embedding"),
            "model.embeddings.tok_embeddings.weight",
            (vocab, hidden),
            _same,
            _same,
        ),
        *_norm(("model", "embeddings", "norm"), "model.embeddings.norm", hidden, config.norm_bias),
    ]
    for i in range(config.num_hidden_layers):
        ours, hf = ("model", f"layers_{i}"), f"model.layers.{i}"
        if i > 0:
            table += _norm((*ours, "attn_norm"), f"{hf}.attn_norm", hidden, config.norm_bias)
        table += _linear(
            (*ours, "attn", "Wqkv"), f"{hf}.attn.Wqkv", (hidden, 3, heads, head_dim), config.attention_bias
        )
        table += _linear((*ours, "attn", "Wo"), f"{hf}.attn.Wo", (heads, head_dim, hidden), config.attention_bias)
        table += _norm((*ours, "mlp_norm"), f"{hf}.mlp_norm", hidden, config.norm_bias)
        table += _linear((*ours, "mlp", "Wi"), f"{hf}.mlp.Wi", (hidden, 2, inter), config.mlp_bias)
        table += _linear((*ours, "mlp", "Wo"), f"{hf}.mlp.Wo", (inter, hidden), config.mlp_bias)
    table += _norm(("model", "final_norm"), "model.final_norm", hidden, config.norm_bias)
    table += _linear(("head", "dense"), "head.dense", (hidden, hidden), config.classifier_bias)
    table += _norm(("head", "norm"), "head.norm", hidden, config.norm_bias)
    if num_labels is not None:
        table += _linear(("classifier",), "classifier", (hidden, num_labels), use_bias=True)
    elif config.decoder_bias:
        table.append(ParamEntry(("decoder_bias",), "decoder.bias", (vocab,), _same, _same))
    return table


def _strip_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names as `ModernBertForMaskedLM` has them; a bare `ModernBertModel` state gets the `model.` prefix."""
    if any(name.startswith("model.") for name in state):
        return dict(state)
    return {f"model.{name}": value for name, value in state.items()}


def from_hf_state(
    state: Mapping[str, np.ndarray],
    config: ModernBertConfig,
    *,
    encoder_only: bool = False,
    num_labels: int | None = None,
) -> Params:
    """Our params (float32 numpy, vocabulary unpadded) from a transformers ModernBERT state dict.

    `encoder_only`: the state holds only the encoder (`ModernBertModel`, or a task model whose head is not the
    MLM head): the result has only the `model` subtree. `num_labels`: the state is a task model's with a classifier
    of that many outputs (see `param_table`).
    """
    state = _strip_prefix(state)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for entry in param_table(config, num_labels):
        if encoder_only and entry.path[0] != "model":
            continue
        if entry.hf not in state:
            raise ConversionError(
                f"The ModernBERT state has no {entry.hf}: it does not match the config "
                f"({config.num_hidden_layers} layers, norm_bias={config.norm_bias}, attention_bias={config.attention_bias},"
                f" mlp_bias={config.mlp_bias}); use the config.json that came with the weights."
            )
        value = entry.to_ours(np.asarray(state[entry.hf], dtype=np.float32))
        if value.shape != entry.shape:
            raise ConversionError(
                f"{entry.hf} has shape {np.shape(state[entry.hf])}, the config needs {entry.shape} in our layout; "
                "use the config.json that came with the weights."
            )
        flat[entry.path] = value
    tied = state.get("decoder.weight")
    if tied is not None and not np.array_equal(np.asarray(tied, np.float32), flat[entry_path_embeddings()]):
        raise ConversionError(
            "decoder.weight differs from model.embeddings.tok_embeddings.weight: the decoder is not tied to the "
            "embeddings, which this model family requires (tie_word_embeddings=True)."
        )
    return traverse_util.unflatten_dict(flat)


def entry_path_embeddings() -> tuple[str, ...]:
    """The Flax path of the token embeddings (also the tied decoder's weight)."""
    return ("model", "embeddings", "tok_embeddings", "embedding")


def to_hf_state(params: Params, config: ModernBertConfig, num_labels: int | None = None) -> dict[str, np.ndarray]:
    """transformers' state dict (float32, contiguous) of our params; vocabulary rows cut to `config.vocab_size`.

    The tied `decoder.weight` is left out, as transformers writes its safetensors files. `num_labels`: the params
    are a task model's (see `param_table`).
    """
    flat = traverse_util.flatten_dict(params)
    state = {}
    for entry in param_table(config, num_labels):
        if entry.path not in flat:
            raise ConversionError(f"The params have no {'/'.join(entry.path)}; they are not this config's model.")
        value = np.asarray(flat[entry.path], dtype=np.float32)
        if entry.path in (entry_path_embeddings(), ("decoder_bias",)):
            value = value[: config.vocab_size]
        state[entry.hf] = np.ascontiguousarray(entry.to_hf(value))
    return state


def to_hf(
    config: ModernBertConfig,
    params: Params,
    out_dir: str | os.PathLike[str],
    vocab_file: str | os.PathLike[str] | None = None,
    do_lower_case: bool = True,
    overwrite: bool = False,
    tokenizer_file: str | os.PathLike[str] | None = None,
) -> None:
    """Writes a directory that `transformers.AutoModelForMaskedLM.from_pretrained` loads as ModernBERT.

    `config.json` (model_type "modernbert", the special token ids the config holds), `model.safetensors` (the
    tied decoder left out, as transformers writes it) and the tokenizer: `vocab_file` as BertTokenizer files, or
    `tokenizer_file` (a Hugging Face tokenizer.json, ModernBERT's own kind) for `PreTrainedTokenizerFast`.
    Written beside the target and moved into place when complete, so an existing export is never left
    half-overwritten.
    """
    from safetensors.numpy import save_file

    out_dir = os.fspath(out_dir)
    hf_config = config.replace(vocab_pad_multiple=1).to_hf_dict()
    tensors = to_hf_state(params, config)
    staging = convert.atomic_output_dir(out_dir, overwrite)
    try:
        save_file(tensors, os.path.join(staging, convert.HF_SAFETENSORS), metadata={"format": "pt"})
        with open(os.path.join(staging, convert.HF_CONFIG), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
        if vocab_file is not None:
            convert.write_tokenizer_files(staging, os.fspath(vocab_file), do_lower_case, config.max_position_embeddings)
        if tokenizer_file is not None:
            convert.write_tokenizer_json_files(staging, os.fspath(tokenizer_file), config.max_position_embeddings)
        convert.publish_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def from_hf(model_dir: str | os.PathLike[str]) -> tuple[ModernBertConfig, Params]:
    """Loads a transformers ModernBERT directory (answerdotai/ModernBERT-base's layout): `(config, params)`.

    A masked-LM checkpoint gives the whole model; an encoder-only or task-model checkpoint gives `{"model": ...}`
    (its own head, if any, is reported and skipped).
    """
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, convert.HF_CONFIG)
    if not os.path.isdir(model_dir) or not os.path.exists(config_path):
        raise ConversionError(f"{model_dir} has no {convert.HF_CONFIG}; it is not a Hugging Face model directory.")
    config = ModernBertConfig.from_json(config_path)
    state = _strip_prefix(convert.read_hf_state(model_dir))
    # A task model (sequence classification, ...) has a `head` too, but never the MLM decoder's bias.
    with_head = "head.dense.weight" in state and ("decoder.bias" in state or not config.decoder_bias)
    params = from_hf_state(state, config, encoder_only=not with_head)
    used = {entry.hf for entry in param_table(config)} | {"decoder.weight"}
    unused = sorted(name for name in state if name not in used)
    if unused:
        logger.warning("%s: ignoring %d tensor(s) of another head: %s", model_dir, len(unused), ", ".join(unused[:10]))
    return config, params
