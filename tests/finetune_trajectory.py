"""The same fine-tuning in bert_jax and in a plain PyTorch loop (transformers' model, torch AdamW), step by step.

Both start from the same weights (all-MiniLM-L6-v2's encoder and one regression head, copied from ours into
transformers' `BertForSequenceClassification`), train on the same STS-B batches in the same order with dropout
off, and record the loss of every step and the final parameters. The PyTorch side is what `transformers.Trainer`
does with its defaults, the optimizer made as `bert-jax-glue-table`'s reference makes it
(`torch_reference.trainer_optimizer`: AdamW without weight decay on biases and LayerNorm, linear warmup and
decay), `clip_grad_norm_(1.0)` before every update.
"""

from __future__ import annotations

import dataclasses
import os
import runpy
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from bert_jax import sharding
from bert_jax.harness import torch_reference
from bert_jax.jobs import config as job_config
from bert_jax.jobs.finetune_plan import make_finetune_plan, model_and_tokenizer, task_of
from bert_jax.models import convert
from bert_jax.training import train, warm_start

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


@dataclasses.dataclass
class Trajectory:
    losses: np.ndarray  # [steps]
    params: dict[str, np.ndarray]  # Hugging Face name -> array in its layout (initial or final)


def stsb_config(
    minilm_dir: str, glue_dir: str, steps: int, batch: int, seq: int, **optimizer: Any
) -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(EXPERIMENTS, "glue_stsb.py"))["get_config"]()
    config.init_from = str(minilm_dir)
    config.data_dir = str(glue_dir)
    config.num_train_steps = steps
    config.global_batch_size = batch
    config.max_seq_length = seq
    config.learning_rate = 5e-5
    config.warmup_fraction = 0.1
    config.weight_decay = 0.01
    config.model.hidden_dropout_prob = 0.0
    config.model.attention_probs_dropout_prob = 0.0
    config.mesh.data = 1
    for key, value in optimizer.items():
        config.optimizer[key] = value
    return config


def _hf_names(model_config: Any, params: Any) -> dict[str, np.ndarray]:
    """Our sequence-classification params under transformers' names and layouts (vocabulary unpadded)."""
    model_config, params = convert.unpad_vocab(model_config, jax.device_get(params))
    flat = traverse_util.flatten_dict(params)
    named = {
        entry.hf_name: entry.to_flat(np.asarray(flat[entry.path], np.float32), entry.hf_transposed)
        for entry in convert.param_table(model_config, with_heads=False)
    }
    named["classifier.weight"] = np.asarray(flat[("classifier", "kernel")], np.float32).T
    named["classifier.bias"] = np.asarray(flat[("classifier", "bias")], np.float32)
    return named


def train_ours(config: ml_collections.ConfigDict) -> tuple[Trajectory, Trajectory, dict[str, np.ndarray]]:
    """(start, end, the training arrays): our fine-tuning plan's train step over the first steps * batch rows."""
    job = job_config.parse(config, expect="finetune")
    task = task_of(job)
    model_config, tokenizer, source, _ = model_and_tokenizer(job)
    split = task.load(config.data_dir, "train", tokenizer, config.max_seq_length)
    rows = config.num_train_steps * config.global_batch_size
    arrays = {k: v[:rows] for k, v in split.arrays.items()}
    job = make_finetune_plan(job, task, model_config, config.num_train_steps, jax.devices()[:1])
    state = train.create_train_state(job.model, job.optimizer, jax.random.key(config.seed), job.shardings)
    start = warm_start.merge(source, job.model_config, state.params)
    state = state.replace(params=sharding.place_host_tree(start.params, job.shardings.params))
    initial = Trajectory(np.zeros(0), _hf_names(job.model_config, state.params))
    losses = []
    batch = config.global_batch_size
    for step in range(config.num_train_steps):
        local = {k: v[step * batch : (step + 1) * batch] for k, v in arrays.items()}
        state, metrics = job.train_step(state, sharding.global_batch_from_process_local(local, job.mesh))
        losses.append(float(metrics["loss"]))
    return initial, Trajectory(np.asarray(losses), _hf_names(job.model_config, state.params)), arrays


def train_torch(
    minilm_dir: str, initial: Trajectory, arrays: dict[str, np.ndarray], config: ml_collections.ConfigDict
) -> Trajectory:
    """transformers' `BertForSequenceClassification` from `initial`, trained as `transformers.Trainer` would."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    state = model.state_dict()
    missing = sorted(set(initial.params) - set(state))
    assert not missing, f"names transformers does not have: {missing}"
    with torch.no_grad():
        for name, value in initial.params.items():
            state[name].copy_(torch.from_numpy(value))
    model.train()
    settings = torch_reference.ReferenceSettings(
        steps=config.num_train_steps,
        batch_size=config.global_batch_size,
        max_seq_length=config.max_seq_length,
        learning_rate=config.learning_rate,
        seed=config.seed,
        warmup_fraction=config.warmup_fraction,
        weight_decay=config.weight_decay,
    )
    optimizer, schedule = torch_reference.trainer_optimizer(model, settings)
    steps = config.num_train_steps
    batch, losses = config.global_batch_size, []
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        out = model(
            input_ids=torch.from_numpy(arrays["input_ids"][rows]).long(),
            attention_mask=torch.from_numpy(arrays["attention_mask"][rows]).long(),
            token_type_ids=torch.from_numpy(arrays["token_type_ids"][rows]).long(),
        )
        loss = torch.nn.functional.mse_loss(out.logits[:, 0], torch.from_numpy(arrays["labels"][rows]).float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    final = {name: model.state_dict()[name].detach().numpy().copy() for name in initial.params}
    return Trajectory(np.asarray(losses), final)


def update_error(initial: Trajectory, ours: Trajectory, theirs: Trajectory) -> dict[str, float]:
    """Per parameter: |our update - their update| / |their update| (Frobenius norms of the whole tensor)."""
    errors = {}
    for name, start in initial.params.items():
        theirs_update = theirs.params[name] - start
        scale = np.linalg.norm(theirs_update)
        errors[name] = float(np.linalg.norm(ours.params[name] - theirs.params[name]) / max(scale, 1e-30))
    return errors
