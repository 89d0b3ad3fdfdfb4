"""Parameters <-> other BERT layouts: Hugging Face directories, original Google TF checkpoints, our own.

One table (`param_table`) lists every parameter of `BertForPreTraining` with its Hugging Face name and its
original TensorFlow name; each format is a walk over that table. Shapes are checked on every load, with
messages that name the parameter, both shapes and the fix (a vocabulary that does not match the
checkpoint is the classic source of silent NaNs in the original code).

Formats:
  * Hugging Face: `config.json` + `model.safetensors` (or `pytorch_model.bin`), BertModel or
    BertForPreTraining checkpoints, old `gamma`/`beta` LayerNorm names accepted.
  * Original TF: `bert_model.ckpt.*` + `bert_config.json` (`bert/encoder/layer_N/...`, `cls/...`),
    optimizer slots ignored. Needs TensorFlow (imported only for this).
  * Native (ours): `bert_config.json` + `params.safetensors` keyed by the Flax path ("bert/embeddings/...").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from bert_jax.models import torch_pickle
from bert_jax.models.configs import BertConfig

logger = logging.getLogger(__name__)

Params = dict[str, Any]

NATIVE_CONFIG = "bert_config.json"
NATIVE_PARAMS = "params.safetensors"
HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_TORCH_BIN = "pytorch_model.bin"
TF_CHECKPOINT = "bert_model.ckpt"


class ConversionError(ValueError):
    """A checkpoint that does not fit the config or the expected layout; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class ParamEntry:
    """One parameter: its Flax path and shape, its names elsewhere and how it is laid out there.

    `flat_shape` is the 2-D `[in, out]` (or 1-D) form that TF uses for kernels; Hugging Face (PyTorch)
    stores linear weights transposed (`[out, in]`), flagged by `hf_transposed`. The original TF code
    stores the NSP weights transposed too (`[2, hidden]`), flagged by `tf_transposed`.
    """

    path: tuple[str, ...]
    shape: tuple[int, ...]
    flat_shape: tuple[int, ...]
    hf_name: str
    tf_name: str
    hf_transposed: bool = False
    tf_transposed: bool = False

    def from_flat(self, array: np.ndarray, transposed: bool) -> np.ndarray:
        """The Flax-shaped parameter from its flat form (the caller has checked the flat shape)."""
        array = np.asarray(array)
        return np.ascontiguousarray((array.T if transposed else array).reshape(self.shape))

    def to_flat(self, array: np.ndarray, transposed: bool) -> np.ndarray:
        array = np.asarray(array).reshape(self.flat_shape)
        return np.ascontiguousarray(array.T if transposed else array)


def _dense_entries(
    path: tuple[str, ...],
    hf: str,
    tf: str,
    shape_in: tuple[int, ...],
    shape_out: tuple[int, ...],
    flat: tuple[int, int],
) -> list[ParamEntry]:
    kernel_shape = shape_in + shape_out
    return [
        ParamEntry((*path, "kernel"), kernel_shape, flat, f"{hf}.weight", f"{tf}/kernel", hf_transposed=True),
        ParamEntry((*path, "bias"), shape_out, (flat[1],), f"{hf}.bias", f"{tf}/bias"),
    ]


def _norm_entries(path: tuple[str, ...], hf: str, tf: str, size: int) -> list[ParamEntry]:
    return [
        ParamEntry((*path, "scale"), (size,), (size,), f"{hf}.weight", f"{tf}/gamma"),
        ParamEntry((*path, "bias"), (size,), (size,), f"{hf}.bias", f"{tf}/beta"),
    ]


def param_table(config: BertConfig, with_heads: bool = True) -> list[ParamEntry]:
    """Every parameter of `BertForPreTraining` (or of `BertModel` when `with_heads=False`).

    Paths start with "bert" / "cls"; Hugging Face names are those of `BertForPreTraining`'s state dict.
    """
    h, n, d = config.hidden_size, config.num_attention_heads, config.head_dim
    inter = config.intermediate_size
    entries: list[ParamEntry] = []
    for name in ("word", "position", "token_type"):
        rows = {"word": config.vocab_size, "position": config.max_position_embeddings}.get(name, config.type_vocab_size)
        entries.append(
            ParamEntry(
                ("bert", "embeddings", f"{name}_embeddings", "embedding"),
                (rows, h),
                (rows, h),
                f"bert.embeddings.{name}_embeddings.weight",
                f"bert/embeddings/{name}_embeddings",
            )
        )
    entries += _norm_entries(
        ("bert", "embeddings", "LayerNorm"), "bert.embeddings.LayerNorm", "bert/embeddings/LayerNorm", h
    )
    for i in range(config.num_hidden_layers):
        path = ("bert", "encoder", f"layer_{i}")
        hf, tf = f"bert.encoder.layer.{i}", f"bert/encoder/layer_{i}"
        for proj in ("query", "key", "value"):
            entries += _dense_entries(
                (*path, "attention", "self", proj),
                f"{hf}.attention.self.{proj}",
                f"{tf}/attention/self/{proj}",
                (h,),
                (n, d),
                (h, h),
            )
        entries += _dense_entries(
            (*path, "attention", "output", "dense"),
            f"{hf}.attention.output.dense",
            f"{tf}/attention/output/dense",
            (n, d),
            (h,),
            (h, h),
        )
        entries += _norm_entries(
            (*path, "attention", "output", "LayerNorm"),
            f"{hf}.attention.output.LayerNorm",
            f"{tf}/attention/output/LayerNorm",
            h,
        )
        entries += _dense_entries(
            (*path, "intermediate", "dense"),
            f"{hf}.intermediate.dense",
            f"{tf}/intermediate/dense",
            (h,),
            (inter,),
            (h, inter),
        )
        entries += _dense_entries(
            (*path, "output", "dense"), f"{hf}.output.dense", f"{tf}/output/dense", (inter,), (h,), (inter, h)
        )
        entries += _norm_entries((*path, "output", "LayerNorm"), f"{hf}.output.LayerNorm", f"{tf}/output/LayerNorm", h)
    entries += _dense_entries(("bert", "pooler", "dense"), "bert.pooler.dense", "bert/pooler/dense", (h,), (h,), (h, h))
    if not with_heads:
        return entries
    head = ("cls", "predictions")
    entries += _dense_entries(
        (*head, "transform", "dense"),
        "cls.predictions.transform.dense",
        "cls/predictions/transform/dense",
        (h,),
        (h,),
        (h, h),
    )
    entries += _norm_entries(
        (*head, "transform", "LayerNorm"),
        "cls.predictions.transform.LayerNorm",
        "cls/predictions/transform/LayerNorm",
        h,
    )
    entries.append(
        ParamEntry(
            (*head, "bias"),
            (config.vocab_size,),
            (config.vocab_size,),
            "cls.predictions.bias",
            "cls/predictions/output_bias",
        )
    )
    entries.append(
        ParamEntry(
            ("cls", "seq_relationship", "kernel"),
            (h, 2),
            (h, 2),
            "cls.seq_relationship.weight",
            "cls/seq_relationship/output_weights",
            hf_transposed=True,
            tf_transposed=True,
        )
    )
    entries.append(
        ParamEntry(
            ("cls", "seq_relationship", "bias"),
            (2,),
            (2,),
            "cls.seq_relationship.bias",
            "cls/seq_relationship/output_bias",
        )
    )
    return entries


def _check_vocab(config: BertConfig, word_embeddings_shape: tuple[int, ...], source: str) -> None:
    if word_embeddings_shape and word_embeddings_shape[0] != config.vocab_size:
        raise ConversionError(
            f"{source}: the checkpoint's word embeddings have {word_embeddings_shape[0]} rows but the config says "
            f"vocab_size={config.vocab_size}. Use the config that belongs to this checkpoint, or a vocab file with "
            f"exactly {word_embeddings_shape[0]} entries."
        )


def _build_params(
    config: BertConfig,
    lookup: Mapping[str, Any],
    name_of: Any,
    transposed_of: Any,
    source: str,
    with_heads: bool,
) -> Params:
    """Fills the param tree from `lookup[name_of(entry)]`, checking names and shapes."""
    flat: dict[tuple[str, ...], np.ndarray] = {}
    missing = []
    for entry in param_table(config, with_heads=with_heads):
        name = name_of(entry)
        if name not in lookup:
            missing.append(name)
            continue
        raw = np.asarray(lookup[name])
        if entry.path[-2:] == ("word_embeddings", "embedding"):
            _check_vocab(config, raw.shape, source)
        transposed = transposed_of(entry)
        expected = tuple(reversed(entry.flat_shape)) if transposed else entry.flat_shape
        if raw.shape != expected:
            raise ConversionError(
                f"{source}: parameter {name} has shape {raw.shape}, expected {expected} for this config "
                f"(hidden_size={config.hidden_size}, intermediate_size={config.intermediate_size}). "
                "The config does not belong to this checkpoint."
            )
        flat[entry.path] = entry.from_flat(raw.astype(np.float32), transposed)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ConversionError(f"{source}: missing parameter(s) {shown}. Is this a BERT checkpoint of this config?")
    return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------------------------------
# Hugging Face


def read_hf_state(model_dir: str) -> dict[str, np.ndarray]:
    """The tensors of a Hugging Face directory (`model.safetensors`, else `pytorch_model.bin`, read without torch)."""
    safetensors_path = os.path.join(model_dir, HF_SAFETENSORS)
    bin_path = os.path.join(model_dir, HF_TORCH_BIN)
    if os.path.exists(safetensors_path):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(safetensors_path))
        except Exception as e:
            raise ConversionError(
                f"{safetensors_path} could not be read ({e}); the file is damaged or not safetensors."
            ) from None
    if os.path.exists(bin_path):
        try:
            return torch_pickle.load_state_dict(bin_path)
        except (torch_pickle.TorchPickleError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise ConversionError(str(e)) from None
    raise ConversionError(
        f"{model_dir} has neither {HF_SAFETENSORS} nor {HF_TORCH_BIN}; it is not a Hugging Face model directory."
    )


def _normalize_hf_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps any BERT checkpoint's names onto `BertForPreTraining`'s ("bert." prefix, weight/bias)."""
    has_prefix = any(k.startswith("bert.") for k in state)
    out = {}
    for key, value in state.items():
        name = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        if not has_prefix and not name.startswith("cls."):
            name = "bert." + name
        out[name] = value
    return out


def from_hf(model_dir: str | os.PathLike[str]) -> tuple[BertConfig, Params]:
    """Loads a Hugging Face BERT directory. Returns `(config, params)`; `params["bert"]` is BertModel's.

    `params["cls"]` (the pretraining heads) is present only when the checkpoint has them (a
    `BertForPreTraining` checkpoint); a `BertModel` checkpoint gives `{"bert": ...}` alone. Tensors the
    model does not use (e.g. a fine-tuned classifier, `position_ids` buffers) are reported and skipped.
    """
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, HF_CONFIG)
    if not os.path.isdir(model_dir):
        raise ConversionError(f"Hugging Face model directory not found: {model_dir}")
    if not os.path.exists(config_path):
        raise ConversionError(f"{model_dir} has no {HF_CONFIG}; it is not a Hugging Face model directory.")
    with open(config_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type", "bert")
    if model_type != "bert":
        raise ConversionError(
            f"{model_dir} holds a {model_type!r} model, not BERT; load it with the config's model family "
            "(model.family) or `bert_jax.models.families.load_pretrained`."
        )
    config = BertConfig.from_json(config_path)
    state = _normalize_hf_names(read_hf_state(model_dir))
    with_heads = "cls.predictions.transform.dense.weight" in state
    table = param_table(config, with_heads=with_heads)
    params = _build_params(config, state, lambda e: e.hf_name, lambda e: e.hf_transposed, model_dir, with_heads)
    used = {e.hf_name for e in table} | {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    unused = sorted(k for k in state if k not in used and not k.endswith("position_ids"))
    if unused:
        logger.warning(
            "%s: ignoring %d tensor(s) BERT does not use: %s", model_dir, len(unused), ", ".join(unused[:10])
        )
    decoder = state.get("cls.predictions.decoder.weight")
    if decoder is not None and not np.array_equal(decoder, state["bert.embeddings.word_embeddings.weight"]):
        logger.warning(
            "%s: the MLM decoder is not tied to the word embeddings; this model ties them, so the decoder weights "
            "are dropped and the word embeddings are used.",
            model_dir,
        )
    return config, params


def atomic_output_dir(out_dir: str, overwrite: bool) -> str:
    """Checks `out_dir` can be written without destroying anything; returns a fresh staging directory."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a directory; choose another output path.")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(
            f"{out_dir} already exists and is not empty; choose a new output directory or pass overwrite=True "
            "(--overwrite) to replace it."
        )
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".bert_jax_export_", dir=parent)


def publish_dir(staging: str, out_dir: str) -> None:
    """Moves a completely written staging directory into place (the old one is removed only then)."""
    if os.path.isdir(out_dir):
        backup = staging + ".old"
        os.rename(out_dir, backup)
        os.rename(staging, out_dir)
        shutil.rmtree(backup)
    else:
        os.rename(staging, out_dir)


def write_tokenizer_files(directory: str, vocab_file: str, do_lower_case: bool, max_length: int) -> None:
    """A WordPiece vocabulary as transformers' `BertTokenizer` files (`AutoTokenizer` loads them)."""
    shutil.copyfile(vocab_file, os.path.join(directory, "vocab.txt"))
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": do_lower_case,
        "model_max_length": max_length,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2)
    special = {k: v for k, v in tokenizer_config.items() if k.endswith("_token")}
    with open(os.path.join(directory, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)


# The params with one row per vocabulary id, in both model families: the (word / token) embedding table that the
# MLM decoder shares, and the decoder's bias (BERT's `cls/predictions/bias`, the modern family's `decoder_bias`).
_VOCAB_ROW_SUFFIXES = (
    ("embeddings", "word_embeddings", "embedding"),
    ("predictions", "bias"),
    ("embeddings", "tok_embeddings", "embedding"),
    ("decoder_bias",),
)


def write_tokenizer_json_files(directory: str, tokenizer_file: str, max_length: int) -> int:
    """An HF directory's tokenizer from a tokenizer.json: the file, and a tokenizer_config.json naming its special
    tokens for transformers' `PreTrainedTokenizerFast` (what `AutoTokenizer` loads). Returns the [PAD] id."""
    from bert_jax.tokenizers import HuggingFaceTokenizer

    tokenizer = HuggingFaceTokenizer(tokenizer_file)
    shutil.copyfile(tokenizer_file, os.path.join(directory, "tokenizer.json"))
    names = tokenizer.special_tokens
    special = {
        "unk_token": names["[UNK]"],
        "sep_token": names["[SEP]"],
        "pad_token": names["[PAD]"],
        "cls_token": names["[CLS]"],
        "mask_token": names["[MASK]"],
    }
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length, **special}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    return tokenizer.pad_id


def _is_vocab_row_param(path: tuple[str, ...]) -> bool:
    return any(path[-len(suffix) :] == suffix for suffix in _VOCAB_ROW_SUFFIXES)


def unpad_vocab(config: Any, params: Params) -> tuple[Any, Params]:
    """`(config, params)` without the vocabulary padding rows (`vocab_pad_multiple` back to 1).

    Exports go through this, so a Hugging Face directory always has exactly `vocab_size` rows. Any model family's
    config (anything with `vocab_size`, `padded_vocab_size` and `replace`) and params.
    """
    if config.padded_vocab_size == config.vocab_size:
        return config.replace(vocab_pad_multiple=1), params
    flat = traverse_util.flatten_dict(params)
    flat = {k: (v[: config.vocab_size] if _is_vocab_row_param(k) else v) for k, v in flat.items()}
    return config.replace(vocab_pad_multiple=1), traverse_util.unflatten_dict(flat)


def pad_vocab(config: Any, params: Params, multiple: int) -> tuple[Any, Params]:
    """`(config, params)` with the vocabulary rows padded (with zeros) to a multiple of `multiple`.

    The inverse of `unpad_vocab`, for loading exported or Hugging Face weights into a model that shards
    its vocabulary; padding rows are masked out of the MLM softmax, so their values do not matter.
    """
    config, params = unpad_vocab(config, params)
    padded = config.replace(vocab_pad_multiple=multiple)
    extra = padded.padded_vocab_size - config.vocab_size
    if extra == 0:
        return padded, params
    flat = traverse_util.flatten_dict(params)
    for key, value in flat.items():
        if _is_vocab_row_param(key):
            widths = [(0, extra)] + [(0, 0)] * (np.ndim(value) - 1)
            flat[key] = np.pad(np.asarray(value), widths)
    return padded, traverse_util.unflatten_dict(flat)


def to_hf(
    config: BertConfig,
    params: Params,
    out_dir: str | os.PathLike[str],
    vocab_file: str | os.PathLike[str] | None = None,
    do_lower_case: bool = True,
    overwrite: bool = False,
    tokenizer_file: str | os.PathLike[str] | None = None,
) -> None:
    """Writes a Hugging Face directory that `transformers.BertForPreTraining.from_pretrained` loads.

    With `params["cls"]` the checkpoint is a `BertForPreTraining` one (loadable by `BertModel` too, which
    drops the heads); without it, a `BertModel` one. The directory is written beside the target and moved
    into place when complete, so an existing export is never left half-overwritten.

    The tokenizer (at most one): `vocab_file`, written as vocab.txt with a `BertTokenizer` tokenizer_config.json
    (`do_lower_case`); or `tokenizer_file`, a Hugging Face tokenizer.json, copied with a `PreTrainedTokenizerFast`
    tokenizer_config.json naming its special tokens, and config.json's `pad_token_id` set to its [PAD] id.
    """
    from safetensors.numpy import save_file

    if vocab_file is not None and tokenizer_file is not None:
        raise ValueError("pass at most one of vocab_file and tokenizer_file.")
    out_dir = os.fspath(out_dir)
    config, params = unpad_vocab(config, params)
    with_heads = "cls" in params
    flat = traverse_util.flatten_dict(params)
    tensors: dict[str, np.ndarray] = {}
    for entry in param_table(config, with_heads=with_heads):
        if entry.path not in flat:
            raise ConversionError(f"params lack {'/'.join(entry.path)}; they do not belong to this config.")
        value = np.asarray(flat[entry.path], dtype=np.float32)
        if value.shape != entry.shape:
            raise ConversionError(f"params {'/'.join(entry.path)} has shape {value.shape}, expected {entry.shape}.")
        name = entry.hf_name if with_heads else entry.hf_name.removeprefix("bert.")
        tensors[name] = entry.to_flat(value, entry.hf_transposed)
    hf_config = config.to_hf_dict()
    if not with_heads:
        hf_config["architectures"] = ["BertModel"]
    staging = atomic_output_dir(out_dir, overwrite)
    try:
        save_file(tensors, os.path.join(staging, HF_SAFETENSORS), metadata={"format": "pt"})
        if vocab_file is not None:
            write_tokenizer_files(staging, os.fspath(vocab_file), do_lower_case, config.max_position_embeddings)
        if tokenizer_file is not None:
            max_length = config.max_position_embeddings
            hf_config["pad_token_id"] = write_tokenizer_json_files(staging, os.fspath(tokenizer_file), max_length)
        with open(os.path.join(staging, HF_CONFIG), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
        publish_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------
# Original Google TF checkpoints


def _resolve_tf_checkpoint(path: str, config_file: str | None) -> tuple[str, str]:
    if os.path.isdir(path):
        prefix = os.path.join(path, TF_CHECKPOINT)
        config_file = config_file or os.path.join(path, NATIVE_CONFIG)
    else:
        prefix = path.removesuffix(".index")
        config_file = config_file or os.path.join(os.path.dirname(prefix), NATIVE_CONFIG)
    if not os.path.exists(prefix + ".index"):
        raise ConversionError(f"No TF checkpoint at {prefix} (looked for {prefix}.index).")
    if not os.path.exists(config_file):
        raise ConversionError(f"No bert_config.json for the TF checkpoint {prefix}; pass its path (--config_file).")
    return prefix, config_file


def from_tf_checkpoint(
    path: str | os.PathLike[str], config_file: str | os.PathLike[str] | None = None
) -> tuple[BertConfig, Params]:
    """Imports an original google-research/bert checkpoint (`bert_model.ckpt` + `bert_config.json`).

    `path` is the checkpoint prefix or its directory. The pretraining heads are imported when present;
    Adam slots and `global_step` are ignored. Requires TensorFlow.
    """
    prefix, config_path = _resolve_tf_checkpoint(
        os.fspath(path), None if config_file is None else os.fspath(config_file)
    )
    try:
        import tensorflow as tf
    except ImportError:
        raise ConversionError(
            "Reading an original TF checkpoint needs TensorFlow: pip install tensorflow-cpu"
        ) from None
    config = BertConfig.from_json(config_path)
    reader = tf.train.load_checkpoint(prefix)
    names = set(reader.get_variable_to_shape_map())

    class _Lazy(Mapping[str, np.ndarray]):
        def __getitem__(self, key: str) -> np.ndarray:
            return reader.get_tensor(key)

        def __contains__(self, key: object) -> bool:
            return key in names

        def __iter__(self) -> Any:
            return iter(names)

        def __len__(self) -> int:
            return len(names)

    with_heads = "cls/predictions/transform/dense/kernel" in names
    params = _build_params(config, _Lazy(), lambda e: e.tf_name, lambda e: e.tf_transposed, prefix, with_heads)
    return config, params


# ----------------------------------------------------------------------------------------------------
# Native


def to_native(
    config: BertConfig,
    params: Params,
    out_dir: str | os.PathLike[str],
    vocab_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    tokenizer_file: str | os.PathLike[str] | None = None,
) -> None:
    """Writes params + config in this package's own layout (what fine-tuning loads fastest), with the tokenizer's
    vocab.txt (`vocab_file`) or tokenizer.json (`tokenizer_file`) when given."""
    from safetensors.numpy import save_file

    out_dir = os.fspath(out_dir)
    config, params = unpad_vocab(config, params)
    tensors = {"/".join(k): np.asarray(v, dtype=np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    staging = atomic_output_dir(out_dir, overwrite)
    try:
        save_file(tensors, os.path.join(staging, NATIVE_PARAMS), metadata={"format": "bert_jax"})
        config.to_json(os.path.join(staging, NATIVE_CONFIG))
        if vocab_file is not None:
            shutil.copyfile(os.fspath(vocab_file), os.path.join(staging, "vocab.txt"))
        if tokenizer_file is not None:
            shutil.copyfile(os.fspath(tokenizer_file), os.path.join(staging, "tokenizer.json"))
        publish_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def from_native(model_dir: str | os.PathLike[str]) -> tuple[BertConfig, Params]:
    """Reads a directory written by `to_native`, checking it against its config."""
    from safetensors.numpy import load_file

    model_dir = os.fspath(model_dir)
    config = BertConfig.from_json(os.path.join(model_dir, NATIVE_CONFIG))
    tensors = load_file(os.path.join(model_dir, NATIVE_PARAMS))
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in tensors.items()})
    with_heads = "cls" in params
    flat = traverse_util.flatten_dict(params)
    for entry in param_table(config, with_heads=with_heads):
        if entry.path not in flat:
            raise ConversionError(f"{model_dir}: missing parameter {'/'.join(entry.path)}.")
        if flat[entry.path].shape != entry.shape:
            if entry.path[-2:] == ("word_embeddings", "embedding"):
                _check_vocab(config, flat[entry.path].shape, model_dir)
            raise ConversionError(
                f"{model_dir}: parameter {'/'.join(entry.path)} has shape {flat[entry.path].shape}, expected {entry.shape}."
            )
    return config, params


def detect_format(path: str | os.PathLike[str]) -> str:
    """'native', 'hf' or 'tf' for a model path; a clear error when it is none of them."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = set(os.listdir(path))
        if {NATIVE_CONFIG, NATIVE_PARAMS} <= files:
            return "native"
        if HF_CONFIG in files and (HF_SAFETENSORS in files or HF_TORCH_BIN in files):
            return "hf"
        if TF_CHECKPOINT + ".index" in files:
            return "tf"
    elif os.path.exists(path + ".index") or path.endswith(".index"):
        return "tf"
    raise ConversionError(
        f"{path} is not a BERT model: expected a directory with {NATIVE_CONFIG} + {NATIVE_PARAMS} (bert_jax), "
        f"{HF_CONFIG} + {HF_SAFETENSORS} or {HF_TORCH_BIN} (Hugging Face), or a TF checkpoint "
        f"({TF_CHECKPOINT}.index + {NATIVE_CONFIG})."
    )


def load_pretrained(path: str | os.PathLike[str]) -> tuple[BertConfig, Params]:
    """Loads weights in any supported format (see `detect_format`)."""
    kind = detect_format(path)
    loader = {"native": from_native, "hf": from_hf, "tf": from_tf_checkpoint}[kind]
    return loader(path)


def tree_names(params: Params) -> Iterable[str]:
    """The '/'-joined paths of a param tree (for messages and tests)."""
    return ("/".join(k) for k in traverse_util.flatten_dict(params))
