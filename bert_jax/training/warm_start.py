"""Warm starts: a model's parameters from one of our checkpoints, an export, or a Hugging Face directory.

`--config.init_from=PATH` takes the parameters only (a new optimizer state, step 0), as the original
BERT's `init_checkpoint` does. PATH may be:
  * a workdir of ours (its latest checkpoint), its `checkpoints/` directory, or one step directory
    (`checkpoints/1200`);
  * an export of ours (`bert_config.json` + `params.safetensors`), a Hugging Face BERT or ModernBERT directory
    (`config.json` + `model.safetensors` / `pytorch_model.bin`) or an original TF checkpoint.
The source's model shape must equal the job's (the differing fields are named otherwise). Parameters the
source lacks (e.g. the MLM/NSP heads of a `BertModel` checkpoint such as all-MiniLM-L6-v2) keep their
fresh initialization and are listed (a task model's new classifier; the modern family's task models take the
masked-LM checkpoint's `head`, as transformers' do); the vocabulary padding is adapted to the job's. The source's
tokenizer comes along (`Source.tokenizer_files`): a checkpoint's saved files, or the vocab.txt (else
tokenizer.json) beside an export's or HF directory's weights.
PATH may be on gs://: checkpoints are read there by orbax; an export or HF directory is read from a
verified copy in the host cache (`storage.local_tree`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from bert_jax import storage
from bert_jax.models import convert, families
from bert_jax.models.bert import init_params
from bert_jax.models.configs import BertConfig
from bert_jax.training import checkpoint


class WarmStartError(ValueError):
    """A warm-start source that cannot initialize this model; the message names the problem and the fix."""


@dataclasses.dataclass
class WarmStart:
    params: Any  # host arrays, the job's full param tree
    source: str
    kept_fresh: list[str]  # params the source lacks, left at their initialization
    ignored: list[str]  # source params this model has no place for


def _checkpoint_location(path: str) -> tuple[str, int | None] | None:
    """(checkpoints directory, step or None for the latest) when `path` is one of our checkpoints."""
    path = storage.absolute(path)
    candidates = [
        (storage.join(path, checkpoint.CHECKPOINTS_SUBDIR), None),  # a workdir
        (path, None),  # the checkpoints directory itself
    ]
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name.isdigit():
        candidates.append((path.rstrip("/")[: -len(name) - 1], int(name)))  # one step
    for directory, step in candidates:
        if any(e.isdigit() for e in storage.listdir(directory)):
            if step is None or storage.isdir(storage.join(directory, str(step))):
                return directory, step
    return None


def _from_checkpoint(directory: str, step: int | None) -> tuple[families.ModelConfig, Any, dict[str, str]]:
    # Read-only: another job's unfinished saves there are not ours to remove (that job may still be writing).
    ckpt = checkpoint.Checkpointer(directory, save_every_steps=1, async_save=False, remove_unfinished=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise WarmStartError(f"{directory} holds no complete checkpoint to initialize from.")
        config = checkpoint.model_config_from_meta(ckpt.read_meta(step))
        model = families.family_of(config).pretraining_model(config)
        shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
        params = ckpt.restore_params(step, checkpoint.abstract_like(shapes, checkpoint.host_shardings(shapes)))
        return config, jax.device_get(params), ckpt.read_tokenizer(step)
    finally:
        ckpt.close()


@dataclasses.dataclass
class Source:
    """Weights to start from: the source's model config and params (vocabulary unpadded), and its tokenizer."""

    path: str
    config: families.ModelConfig
    params: Any  # host arrays; BERT: {"bert": ..., maybe "cls": ...}; the modern family: {"model": ..., maybe the head}
    tokenizer_files: dict[str, str]  # `checkpoint.tokenizer_payload` form; empty when the source has none


def _tokenizer_beside(directory: str) -> dict[str, str]:
    """The tokenizer file next to an export's or HF directory's weights: its vocab.txt (a BERT directory may hold a
    tokenizer.json too, made from the same vocab.txt; ours is the exact tokenization), else its tokenizer.json."""
    for kind in ("vocab_file", "tokenizer_file"):
        path = os.path.join(directory, checkpoint.TOKENIZER_FILE_NAMES[kind])
        if os.path.exists(path):
            return checkpoint.tokenizer_payload(**{kind: path})
    return {}


def read_source(path: str) -> Source:
    """Reads a warm-start source (see the module docstring) onto the host."""
    if not storage.exists(path):
        raise WarmStartError(f"init_from={path} does not exist; give a workdir, checkpoint, export or HF directory.")
    location = _checkpoint_location(path)
    tokenizer: dict[str, str] = {}
    try:
        if location is not None:
            config, params, tokenizer = _from_checkpoint(*location)
        else:
            local = path
            if storage.is_remote(path):
                local = storage.local_tree(path) if storage.isdir(path) else storage.local_copy(path)
            config, params = families.load_pretrained(local)
            directory = local if os.path.isdir(local) else os.path.dirname(local)
            tokenizer = _tokenizer_beside(directory)
    except (convert.ConversionError, checkpoint.CheckpointError) as e:
        raise WarmStartError(f"init_from={path}: {e}") from None
    config, params = convert.unpad_vocab(config, params)
    # The attention kernel is a choice of the run that wrote the weights (a TPU kernel may not run here, and it
    # forbids attention dropout): the job that loads them decides its own.
    config = config.replace(attention_kernel="xla")
    if isinstance(config, BertConfig) and "bert" not in params:  # a BertModel checkpoint (no heads): the encoder's
        params = {"bert": params}
    return Source(storage.absolute(path), config, params, tokenizer)


def check_family(source: Source, job_family: str) -> None:
    """The source is a model of the family the job trains (`model.family`); a one-line error naming it otherwise."""
    source_family = families.family_of(source.config).name
    if source_family != job_family:
        raise WarmStartError(
            f"init_from={source.path} is a {source_family} model and this job trains model.family={job_family!r}; "
            f"set model.family={source_family!r} (and its size) or start from a {job_family} model."
        )


def merge(source: Source, model_config: families.ModelConfig, fresh_params: Any) -> WarmStart:
    """The job's params with every leaf the source has replaced by the source's value."""
    path = source.path
    check_family(source, families.family_of(model_config).name)
    differences = [
        f"{name}: source {getattr(source.config, name)} vs config {getattr(model_config, name)}"
        for name in checkpoint.SHAPE_FIELDS
        if name != "padded_vocab_size"
        and hasattr(model_config, name)
        and getattr(source.config, name) != getattr(model_config, name)
    ]
    if differences:
        raise WarmStartError(
            f"init_from={path} has another model shape than this job ({'; '.join(differences)}); set the "
            "job's model.* (and vocab) to the source's."
        )
    _, params = convert.pad_vocab(source.config, source.params, model_config.vocab_pad_multiple)
    flat_source = traverse_util.flatten_dict(params)
    target = traverse_util.flatten_dict(jax.device_get(fresh_params))
    merged, kept_fresh = {}, []
    for key, fresh in target.items():
        if key in flat_source:
            value = np.asarray(flat_source[key], dtype=np.float32)
            if value.shape != fresh.shape:
                raise WarmStartError(
                    f"init_from={path}: {'/'.join(key)} has shape {value.shape}, expected {fresh.shape}."
                )
            merged[key] = value
        else:
            merged[key] = fresh
            kept_fresh.append("/".join(key))
    ignored = sorted("/".join(k) for k in flat_source if k not in target)
    return WarmStart(traverse_util.unflatten_dict(merged), path, kept_fresh, ignored)


def load(path: str, model_config: families.ModelConfig, fresh_params: Any) -> WarmStart:
    """`merge(read_source(path), ...)`: the job's params, initialized from `path` wherever it has them."""
    return merge(read_source(path), model_config, fresh_params)
