"""Weights out of a training checkpoint: a Hugging Face directory or our own params-only layout.

`export_checkpoint(workdir, output_dir)` reads the params of one checkpoint (the latest by default) onto
this host, strips the vocabulary padding and writes
  * "hf": config.json, model.safetensors, vocab.txt (or the run's tokenizer.json), tokenizer_config.json,
    special_tokens_map.json; transformers' `BertForPreTraining` and `BertModel` load it;
  * "bert_jax": bert_config.json + params.safetensors (+ vocab.txt, spm.model or tokenizer.json), what our
    fine-tuning loads.
The vocabulary comes from the checkpoint itself (saved with it), so the export does not depend on files
that may have moved since training. Output directories are written beside the target and moved into
place when complete; an existing non-empty one is replaced only with `overwrite=True`. The workdir and the
output may be on gs://: the checkpoint is read there by orbax, and a remote output is assembled locally and
uploaded with its config file last (`storage.publish_tree`), the replaced one set aside until then.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax

from bert_jax import storage
from bert_jax.models import convert, families
from bert_jax.models.bert import init_params
from bert_jax.training import checkpoint

FORMATS = ("hf", "bert_jax")


def _resolve(workdir_or_checkpoints: str) -> str:
    """The checkpoints directory of a workdir (or the directory itself when it already is one)."""
    candidate = checkpoint.checkpoint_dir(workdir_or_checkpoints)
    if storage.isdir(candidate):
        return candidate
    if any(e.isdigit() for e in storage.listdir(workdir_or_checkpoints)):
        return workdir_or_checkpoints
    raise checkpoint.CheckpointError(
        f"No checkpoints found in {workdir_or_checkpoints} (expected {candidate}); pass the --workdir of a "
        "pretraining run that saved at least one checkpoint."
    )


def export_checkpoint(
    workdir: str, output_dir: str, *, step: int | None = None, fmt: str = "hf", overwrite: bool = False
) -> int:
    """Exports the checkpoint of `step` (default: the latest complete one); returns the step exported."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if storage.listdir(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new --output_dir or pass --overwrite.")
    # Read-only: a run that is still training there may be writing a checkpoint right now.
    ckpt = checkpoint.Checkpointer(_resolve(workdir), save_every_steps=1, async_save=False, remove_unfinished=False)
    try:
        steps = ckpt.steps()
        if not steps:
            raise checkpoint.CheckpointError(f"{ckpt.directory} holds no complete checkpoint to export.")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise checkpoint.CheckpointError(
                f"There is no checkpoint of step {step} in {ckpt.directory}; available: {steps}."
            )
        meta = ckpt.read_meta(step)
        # exports run anywhere: XLA's attention, whatever kernel the training run used (bert_jax/models/attention.py)
        config = checkpoint.model_config_from_meta(meta).replace(attention_kernel="xla")
        model_family = families.family_of(config)
        shapes = jax.eval_shape(lambda: init_params(model_family.pretraining_model(config), jax.random.key(0)))
        restored = ckpt.restore_params(step, checkpoint.abstract_like(shapes, checkpoint.host_shardings(shapes)))
        params = jax.device_get(restored)
        tokenizer = ckpt.read_tokenizer(step)
    finally:
        ckpt.close()
    lowercase = bool(meta.get("job_config", {}).get("data", {}).get("lowercase", True))
    remote = storage.is_remote(output_dir)
    target = os.path.join(storage.staging_dir_for(output_dir), "out") if remote else output_dir
    with tempfile.TemporaryDirectory() as scratch:
        files = checkpoint.write_tokenizer_files(tokenizer, scratch)
        vocab, tokenizer_json = files.get("vocab_file"), files.get("tokenizer_file")
        if fmt == "hf":
            config, params = convert.unpad_vocab(config, params)
            model_family.to_hf(
                config,
                params,
                target,
                vocab_file=vocab,
                do_lower_case=lowercase,
                overwrite=overwrite,
                tokenizer_file=tokenizer_json,
            )
        elif model_family.name != families.DEFAULT_FAMILY:
            raise checkpoint.CheckpointError(
                f"The {model_family.name} family exports to Hugging Face's format only: use the hf format."
            )
        else:
            convert.to_native(config, params, target, vocab, overwrite=overwrite, tokenizer_file=tokenizer_json)
            if "spm_model" in files:
                shutil.copyfile(files["spm_model"], os.path.join(target, "spm.model"))
    if remote:
        storage.publish_tree(target, output_dir, last=(convert.HF_CONFIG, convert.NATIVE_CONFIG), replace=overwrite)
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)
    return step
