"""The fine-tuning tasks: what each one reads, which head it trains, its loss and its official metrics.

A `Task` turns a data directory into fixed-shape NumPy arrays (`TaskSplit.arrays`: model inputs and
targets, one row per example or window) plus what its metrics need (`TaskSplit.context`), defines the
jittable loss on the head's outputs, and scores host-side outputs of the eval split:

  glue_<name>  sequence classification (regression for STS-B) on the pooled output (BERT's pooler; the modern
               family's `classifier_pooling`); GLUE TSV directories;
               accuracy / F1 / Matthews / Pearson-Spearman as GLUE reports them.
  conll_ner    token classification, labels on each word's first piece; CoNLL-2003 column files;
               entity-level precision / recall / F1 (conlleval).
  squad        span start/end on every token; SQuAD v1.1/v2.0 JSON, long contexts in doc-stride windows;
               exact match / F1 with the official normalization, n-best decoding back to the text.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.finetune import conll_data, glue_data, heads, metrics, squad_data
from bert_jax.finetune.heads import EncoderConfig
from bert_jax.tokenizers import Tokenizer

Array = jax.Array


@dataclasses.dataclass
class TaskSplit:
    """One split: `arrays` (name -> [N, ...] NumPy, model inputs and targets) and the metric `context`."""

    arrays: dict[str, np.ndarray]
    context: Any

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])


class Task(abc.ABC):
    """A fine-tuning task (see the module docstring)."""

    name: str
    primary_metric: str

    @abc.abstractmethod
    def model(self, config: EncoderConfig, head_init: str = "truncated_normal") -> nn.Module:
        """The task's model: the encoder of `config`'s family under a new head (BERT's initialized by `head_init`;
        see `heads`)."""

    @abc.abstractmethod
    def load(self, data_dir: str, split: str, tokenizer: Tokenizer, max_seq_length: int) -> TaskSplit: ...

    @abc.abstractmethod
    def target_spec(self, max_seq_length: int) -> dict[str, tuple[tuple[int, ...], type]]:
        """The training targets `load` adds to the inputs: name -> (shape of one row, dtype).

        With the inputs (`input_ids`, `attention_mask`, `token_type_ids`: int32 [max_seq_length]) this is a
        batch's layout, so the job can be compiled ahead of time without its data (`bert-jax-compile`).
        """

    @abc.abstractmethod
    def loss(self, outputs: Array, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        """The mean training loss over the batch's labelled items and its metrics (jittable)."""

    @abc.abstractmethod
    def evaluate(self, outputs: np.ndarray, split: TaskSplit) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(metrics, one JSON-able prediction per example) from the model outputs of every row of `split`."""

    @property
    def train_split(self) -> str:
        return "train"

    @property
    def eval_split(self) -> str:
        return "dev"


def _masked_cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
    """(loss sum, correct sum, count) of softmax cross-entropy where labels >= 0."""
    weights = (labels >= 0).astype(jnp.float32)
    safe = jnp.maximum(labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return -jnp.sum(picked * weights), jnp.sum(correct * weights), jnp.sum(weights)


# ------------------------------------------------------------------------------------------------------------
# GLUE


class GlueClassification(Task):
    def __init__(self, glue_task: str) -> None:
        self.glue = glue_data.get_task(glue_task)
        self.name = f"glue_{self.glue.name}"
        self.regression = self.glue.is_regression
        self.primary_metric = {"cola": "matthews_corrcoef", "stsb": "pearson", "mrpc": "f1", "qqp": "f1"}.get(
            self.glue.name, "accuracy"
        )

    @property
    def labels(self) -> list[str] | None:
        return None if self.regression else list(self.glue.labels)

    def model(self, config: EncoderConfig, head_init: str = "truncated_normal") -> nn.Module:
        return heads.sequence_classifier(config, 1 if self.regression else self.glue.num_labels, head_init)

    def load(self, data_dir: str, split: str, tokenizer: Tokenizer, max_seq_length: int) -> TaskSplit:
        examples = glue_data.read_glue_split(data_dir, self.glue, split)
        if not examples:
            raise ValueError(f"GLUE {self.glue.name} {split} in {data_dir} has no examples.")
        return TaskSplit(glue_data.glue_features(examples, tokenizer, max_seq_length, self.glue), examples)

    def target_spec(self, max_seq_length: int) -> dict[str, tuple[tuple[int, ...], type]]:
        return {"labels": ((), np.float32 if self.regression else np.int32)}  # a score, or a class id

    def loss(self, outputs: Array, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        labels = batch["labels"]
        weights = batch.get("example_weights")
        if self.regression:
            valid = (~jnp.isnan(labels)).astype(jnp.float32)
            valid = valid if weights is None else valid * weights
            errors = (outputs[:, 0] - jnp.nan_to_num(labels)) ** 2
            count = jnp.maximum(jnp.sum(valid), 1.0)
            loss = jnp.sum(errors * valid) / count
            return loss, {"loss": loss}
        if weights is not None:
            labels = jnp.where(weights > 0, labels, -1)
        loss_sum, correct, count = _masked_cross_entropy(outputs, labels)
        count = jnp.maximum(count, 1.0)
        return loss_sum / count, {"loss": loss_sum / count, "accuracy": correct / count}

    def evaluate(self, outputs: np.ndarray, split: TaskSplit) -> tuple[dict[str, float], list[dict[str, Any]]]:
        examples: list[glue_data.Example] = split.context
        labels = split.arrays["labels"]
        if self.regression:
            predicted = outputs[:, 0]
            records = [{"guid": e.guid, "score": float(p)} for e, p in zip(examples, predicted, strict=True)]
            scored = ~np.isnan(labels)
        else:
            shifted = outputs - outputs.max(axis=-1, keepdims=True)
            probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
            predicted = outputs.argmax(axis=-1)
            records = [
                {
                    "guid": e.guid,
                    "label": self.glue.labels[p],
                    "probabilities": {
                        name: round(float(q), 6) for name, q in zip(self.glue.labels, probs, strict=True)
                    },
                }
                for e, p, probs in zip(examples, predicted, probabilities, strict=True)
            ]
            scored = labels >= 0
        results = metrics.glue_metrics(self.glue.name, predicted[scored], labels[scored]) if scored.any() else {}
        return {k: float(v) for k, v in results.items()}, records


# ------------------------------------------------------------------------------------------------------------
# CoNLL-2003 NER


class ConllNer(Task):
    name = "conll_ner"
    primary_metric = "f1"
    labels: ClassVar[tuple[str, ...]] = tuple(conll_data.CONLL2003_LABELS)
    _files: ClassVar[Mapping[str, str]] = {
        "train": "train.txt",
        "dev": "valid.txt",
        "valid": "valid.txt",
        "test": "test.txt",
    }

    def model(self, config: EncoderConfig, head_init: str = "truncated_normal") -> nn.Module:
        return heads.token_classifier(config, len(self.labels), head_init)

    def load(self, data_dir: str, split: str, tokenizer: Tokenizer, max_seq_length: int) -> TaskSplit:
        if split not in self._files:
            raise ValueError(f"CoNLL-2003 has no split {split!r}; use one of {', '.join(self._files)}.")
        sentences = conll_data.read_conll(os.path.join(data_dir, self._files[split]))
        if not sentences:
            raise ValueError(f"{os.path.join(data_dir, self._files[split])} has no sentences.")
        features = conll_data.ner_features(sentences, tokenizer, max_seq_length, self.labels)
        return TaskSplit(features.as_model_inputs(), (sentences, features))

    def target_spec(self, max_seq_length: int) -> dict[str, tuple[tuple[int, ...], type]]:
        return {"labels": ((max_seq_length,), np.int32)}  # a tag id per token (-1: not a word's first piece)

    def loss(self, outputs: Array, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        labels = batch["labels"]
        weights = batch.get("example_weights")
        if weights is not None:
            labels = jnp.where(weights[:, None] > 0, labels, -1)
        loss_sum, correct, count = _masked_cross_entropy(outputs, labels)
        count = jnp.maximum(count, 1.0)
        return loss_sum / count, {"loss": loss_sum / count, "accuracy": correct / count}

    def evaluate(self, outputs: np.ndarray, split: TaskSplit) -> tuple[dict[str, float], list[dict[str, Any]]]:
        sentences, features = split.context
        predicted = conll_data.tags_from_token_predictions(outputs.argmax(axis=-1), features, self.labels)
        gold = [list(s.tags) for s in sentences]
        scores = metrics.ner_metrics(gold, predicted, scheme="IOB2")
        results = {k: float(scores[k]) for k in ("precision", "recall", "f1", "accuracy")}
        records = [
            {
                "words": list(s.words),
                "tags": tags,
                "entities": [
                    {"type": kind, "text": " ".join(s.words[start:end]), "start": start, "end": end}
                    for kind, start, end in metrics.get_entities(tags)
                ],
            }
            for s, tags in zip(sentences, predicted, strict=True)
        ]
        return results, records


# ------------------------------------------------------------------------------------------------------------
# SQuAD


@dataclasses.dataclass
class SquadOptions:
    doc_stride: int = 128
    max_query_length: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool = False
    eval_fraction: float = 0.2  # only dev-v1.1 here: split by article into train and eval parts
    split_seed: int = 0
    train_file: str = ""  # e.g. train-v1.1.json; empty: the article split of dev_file
    dev_file: str = "dev-v1.1.json"


class Squad(Task):
    name = "squad"
    primary_metric = "f1"

    def __init__(self, options: SquadOptions | None = None) -> None:
        self.options = options or SquadOptions()

    def model(self, config: EncoderConfig, head_init: str = "truncated_normal") -> nn.Module:
        return heads.question_answering(config, head_init)

    def _examples(self, data_dir: str, split: str) -> list[squad_data.SquadExample]:
        o = self.options
        if o.train_file:
            path = os.path.join(data_dir, o.train_file if split == "train" else o.dev_file)
            return squad_data.read_squad(path, drop_unlocatable=split == "train")
        examples = squad_data.read_squad(os.path.join(data_dir, o.dev_file))
        train, held_out = squad_data.split_by_article(examples, o.eval_fraction, o.split_seed)
        if split == "train":  # as the original trains: only questions whose answer is found at its offset
            return [e for e in train if e.target is not None]
        return held_out

    def load(self, data_dir: str, split: str, tokenizer: Tokenizer, max_seq_length: int) -> TaskSplit:
        examples = self._examples(data_dir, split)
        o = self.options
        features = squad_data.squad_features(examples, tokenizer, max_seq_length, o.doc_stride, o.max_query_length)
        return TaskSplit(features.as_model_inputs(with_targets=True), (examples, features))

    def target_spec(self, max_seq_length: int) -> dict[str, tuple[tuple[int, ...], type]]:
        return {"start_positions": ((), np.int32), "end_positions": ((), np.int32)}

    def loss(self, outputs: Array, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        weights = batch.get("example_weights")
        starts, ends = batch["start_positions"], batch["end_positions"]
        if weights is not None:
            starts = jnp.where(weights > 0, starts, -1)
            ends = jnp.where(weights > 0, ends, -1)
        start_sum, start_correct, count = _masked_cross_entropy(outputs[..., 0], starts)
        end_sum, end_correct, _ = _masked_cross_entropy(outputs[..., 1], ends)
        count = jnp.maximum(count, 1.0)
        loss = (start_sum + end_sum) / (2 * count)
        return loss, {"loss": loss, "start_accuracy": start_correct / count, "end_accuracy": end_correct / count}

    def evaluate(self, outputs: np.ndarray, split: TaskSplit) -> tuple[dict[str, float], list[dict[str, Any]]]:
        examples, features = split.context
        o = self.options
        decoded = squad_data.postprocess_predictions(
            examples,
            features,
            outputs[..., 0],
            outputs[..., 1],
            n_best_size=o.n_best_size,
            max_answer_length=o.max_answer_length,
            version_2_with_negative=o.version_2_with_negative,
        )
        scores = metrics.squad_evaluate(examples, decoded.predictions)
        records = [
            {"id": e.qas_id, "question": e.question, "answer": decoded.predictions.get(e.qas_id, "")} for e in examples
        ]
        return {k: float(v) for k, v in scores.items()}, records


TASK_NAMES = (
    *(f"glue_{t}" for t in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")),
    "conll_ner",
    "squad",
)


def make_task(name: str, squad: SquadOptions | None = None) -> Task:
    """The task called `name` (see `TASK_NAMES`)."""
    if name.startswith("glue_"):
        return GlueClassification(name.removeprefix("glue_"))
    if name == "conll_ner":
        return ConllNer()
    if name == "squad":
        return Squad(squad)
    raise ValueError(f"Unknown fine-tuning task {name!r}; use one of {', '.join(TASK_NAMES)}.")


def stack_outputs(chunks: Sequence[np.ndarray], count: int) -> np.ndarray:
    """Concatenates per-batch outputs and drops the eval padding rows past `count`."""
    return np.concatenate(chunks, axis=0)[:count]
