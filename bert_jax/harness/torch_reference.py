"""The transformers side of a GLUE comparison: a plain PyTorch loop that does what `transformers.Trainer` does.

    python -m bert_jax.harness.torch_reference --task=glue_stsb --model_dir=DIR --data_dir=GLUE --steps=300 \
        --batch_size=16 --max_seq_length=128 --learning_rate=5e-5 --seed=0 --output=result.json

Trainer's defaults, written out (Trainer itself needs `accelerate`, which a bert_jax install does not have):
`transformers.set_seed(seed)` before the model is built (so the new head's init follows the seed), the
directory's family's task model (`BertForSequenceClassification`, or `ModernBertForSequenceClassification` for a
`model_type` "modernbert" directory, which takes no token type ids) with the checkpoint's dropout,
transformers' own fast tokenizer from the model directory, a `RandomSampler`-style reshuffle of the training
rows every epoch from a `torch.Generator` seeded with `seed`, `torch.optim.AdamW` (betas 0.9/0.999, eps 1e-8)
with weight decay on the parameters `Trainer.get_decay_parameter_names` picks (all but biases and norms),
`get_linear_schedule_with_warmup` with ceil(warmup_ratio * steps) warmup steps,
`clip_grad_norm_(1.0)`, MSE for regression and cross-entropy otherwise. The dev split is scored with the same
GLUE metric functions as `bert-jax-finetune` (the metrics are not what is compared). Needs the test extra
(torch, transformers).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bert_jax.finetune import glue_data, metrics


@dataclasses.dataclass(frozen=True)
class ReferenceSettings:
    steps: int
    batch_size: int
    max_seq_length: int
    learning_rate: float
    seed: int
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01


def _encode(
    tokenizer: Any, examples: Sequence[glue_data.Example], max_seq_length: int, uses_segments: bool = True
) -> dict[str, Any]:
    first = [e.text_a for e in examples]
    second = [e.text_b for e in examples] if examples[0].text_b is not None else None
    encoded = tokenizer(
        first, second, truncation=True, max_length=max_seq_length, padding="max_length", return_tensors="pt"
    )
    if not uses_segments:  # ModernBERT: no segment embeddings
        encoded.pop("token_type_ids", None)
    return dict(encoded)


def _labels(task: glue_data.GlueTask, examples: Sequence[glue_data.Example]) -> np.ndarray:
    if task.is_regression:
        return np.asarray([float(e.label) for e in examples], np.float32)
    return np.asarray([task.labels.index(e.label) for e in examples], np.int64)


# The classifier of each family, by the directory's `model_type`.
SEQUENCE_CLASSIFIERS = {"bert": "BertForSequenceClassification", "modernbert": "ModernBertForSequenceClassification"}
# `Trainer.get_decay_parameter_names`' rule (transformers 4.57): no decay inside `nn.LayerNorm` modules or where the
# lower-cased name matches one of these (BERT: its biases and `LayerNorm`s; ModernBERT: also its `norm`,
# `attn_norm`, `mlp_norm`, `final_norm`).
NO_DECAY_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def decay_parameter_names(model: Any) -> set[str]:
    """The parameters `transformers.Trainer` applies weight decay to (`get_decay_parameter_names`, written out:
    Trainer itself needs `accelerate`)."""
    import torch

    patterns = [re.compile(pattern) for pattern in NO_DECAY_NAME_PATTERNS]
    in_norm = {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        for name, _ in module.named_parameters()
    }
    return {
        name
        for name, _ in model.named_parameters()
        if name not in in_norm and not any(p.search(name.lower()) for p in patterns)
    }


def trainer_optimizer(model: Any, settings: ReferenceSettings) -> tuple[Any, Any]:
    """(optimizer, scheduler) as `transformers.Trainer` makes them by default for `settings`.

    `torch.optim.AdamW` (betas 0.9/0.999, eps 1e-8) over two groups: weight decay on every parameter but the
    biases and norms (`decay_parameter_names`); `get_linear_schedule_with_warmup` with
    ceil(warmup_fraction * steps) warmup.
    """
    import torch
    import transformers

    decayed = decay_parameter_names(model)
    no_decay = {n for n, _ in model.named_parameters() if n not in decayed}
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if n not in no_decay],
            "weight_decay": settings.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n in no_decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    warmup = math.ceil(settings.warmup_fraction * settings.steps)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, settings.steps)
    return optimizer, schedule


def train_and_evaluate(task_name: str, model_dir: str, data_dir: str, settings: ReferenceSettings) -> dict[str, Any]:
    """Fine-tunes transformers' model on the task's train split; the dev metrics and the training seconds."""
    import torch
    import transformers

    task = glue_data.get_task(task_name.removeprefix("glue_"))
    train_examples = glue_data.read_glue_split(data_dir, task, "train")
    dev_examples = glue_data.read_glue_split(data_dir, task, "dev")
    transformers.set_seed(settings.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    num_labels = 1 if task.is_regression else len(task.labels)
    model_type = transformers.AutoConfig.from_pretrained(model_dir).model_type
    if model_type not in SEQUENCE_CLASSIFIERS:
        raise ValueError(
            f"{model_dir}: model_type {model_type!r} has no reference here ({', '.join(SEQUENCE_CLASSIFIERS)})."
        )
    model_class = getattr(transformers, SEQUENCE_CLASSIFIERS[model_type])
    model = model_class.from_pretrained(model_dir, num_labels=num_labels)
    uses_segments = "token_type_ids" in inspect.signature(model.forward).parameters
    train_inputs = _encode(tokenizer, train_examples, settings.max_seq_length, uses_segments)
    train_labels = torch.from_numpy(_labels(task, train_examples))
    optimizer, schedule = trainer_optimizer(model, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    per_epoch = len(train_examples) // settings.batch_size
    started = time.perf_counter()
    model.train()
    order = torch.randperm(len(train_examples), generator=generator)
    for step in range(settings.steps):
        index = step % per_epoch
        if step and index == 0:
            order = torch.randperm(len(train_examples), generator=generator)
        rows = order[index * settings.batch_size : (index + 1) * settings.batch_size]
        logits = model(**{k: v[rows] for k, v in train_inputs.items()}).logits
        if task.is_regression:
            loss = torch.nn.functional.mse_loss(logits[:, 0], train_labels[rows])
        else:
            loss = torch.nn.functional.cross_entropy(logits, train_labels[rows])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    train_seconds = time.perf_counter() - started
    model.eval()
    dev_inputs = _encode(tokenizer, dev_examples, settings.max_seq_length, uses_segments)
    outputs = []
    with torch.no_grad():
        for start in range(0, len(dev_examples), 64):
            outputs.append(model(**{k: v[start : start + 64] for k, v in dev_inputs.items()}).logits.numpy())
    logits = np.concatenate(outputs)
    predicted = logits[:, 0] if task.is_regression else logits.argmax(axis=-1)
    scores = metrics.glue_metrics(task.name, predicted, _labels(task, dev_examples))
    return {"metrics": {k: float(v) for k, v in scores.items()}, "train_seconds": train_seconds}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--max_seq_length", type=int, required=True)
    parser.add_argument("--learning_rate", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    settings = ReferenceSettings(args.steps, args.batch_size, args.max_seq_length, args.learning_rate, args.seed)
    result = train_and_evaluate(args.task, args.model_dir, args.data_dir, settings)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
