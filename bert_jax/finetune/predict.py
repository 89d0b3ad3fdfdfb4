"""Predictions on new text from a fine-tuned workdir: classification labels, NER entities, SQuAD answers.

`Predictor.from_workdir(workdir)` reads the latest (or a given) checkpoint of a `bert-jax-finetune` run:
its task, labels, model config, sequence length and vocabulary are all in the checkpoint, so nothing else
is needed. `predict(lines)` labels a list of input lines in fixed-size batches through one jitted forward
pass (the last batch is padded, so it compiles once) and returns one JSON-able record per line:

  GLUE       "text" or "text_a<TAB>text_b"       -> {"label", "probabilities"} (or {"score"} for STS-B)
  conll_ner  a sentence (words split on spaces)   -> {"words", "tags", "entities": [{"type", "text", ...}]}
  squad      {"question": ..., "context": ...} as JSON, or "question<TAB>context" -> {"answer", "nbest"}
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bert_jax import tokenizers
from bert_jax.finetune import conll_data, glue_data, metrics, squad_data
from bert_jax.finetune.tasks import ConllNer, GlueClassification, Squad, SquadOptions, Task, TaskSplit, make_task
from bert_jax.models.bert import init_params
from bert_jax.models.configs import BertConfig
from bert_jax.training import checkpoint


class PredictError(ValueError):
    """An input or workdir the predictor cannot use; the message names the fix."""


@dataclasses.dataclass
class Predictor:
    task: Task
    config: BertConfig
    params: Any
    tokenizer: tokenizers.Tokenizer
    max_seq_length: int
    step: int
    batch_size: int = 32

    @classmethod
    def from_workdir(cls, workdir: str, step: int | None = None, batch_size: int = 32) -> Predictor:
        directory = checkpoint.checkpoint_dir(workdir)
        ckpt = checkpoint.Checkpointer(directory, save_every_steps=1, async_save=False, remove_unfinished=False)
        try:
            steps = ckpt.steps()
            if not steps:
                raise PredictError(f"{workdir} has no checkpoint; run bert-jax-finetune with this --workdir first.")
            step = steps[-1] if step is None else step
            if step not in steps:
                raise PredictError(f"There is no checkpoint of step {step} in {directory}; available: {steps}.")
            meta = ckpt.read_meta(step)
            if "task" not in meta:
                raise PredictError(f"{workdir} is not a fine-tuning run (no task in its checkpoint).")
            squad = meta["job_config"].get("squad")
            task = make_task(meta["task"], SquadOptions(**squad) if squad else None)
            config = checkpoint.model_config_from_meta(meta)
            model = task.model(config)
            shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
            params = ckpt.restore_params(step, checkpoint.abstract_like(shapes, checkpoint.host_shardings(shapes)))
            payload = ckpt.read_tokenizer(step)
        finally:
            ckpt.close()
        scratch = tempfile.mkdtemp(prefix="bert_jax_vocab_")
        tokenizer = checkpoint.load_payload_tokenizer(payload, scratch, bool(meta.get("lowercase", True)))
        return cls(task, config, params, tokenizer, int(meta["max_seq_length"]), step, batch_size)

    def __post_init__(self) -> None:
        model = self.task.model(self.config)
        self._forward = jax.jit(lambda params, ids, mask, types: model.apply({"params": params}, ids, mask, types))

    def _outputs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        n = len(arrays["input_ids"])
        chunks = []
        for start in range(0, n, self.batch_size):
            rows = np.arange(start, start + self.batch_size) % max(n, 1)  # the last batch padded by repetition
            ids, mask, types = (arrays[k][rows] for k in ("input_ids", "attention_mask", "token_type_ids"))
            chunks.append(np.asarray(self._forward(self.params, ids, mask, types)))
        return np.concatenate(chunks)[:n]

    def predict(self, lines: Sequence[str]) -> list[dict[str, Any]]:
        """One record per input line (see the module docstring for the formats)."""
        lines = [line.rstrip("\n") for line in lines]
        if not lines:
            return []
        if isinstance(self.task, GlueClassification):
            return self._classify(lines)
        if isinstance(self.task, ConllNer):
            return self._tag(lines)
        if isinstance(self.task, Squad):
            return self._answer(lines)
        raise PredictError(f"Task {self.task.name} has no predictor.")

    def _classify(self, lines: list[str]) -> list[dict[str, Any]]:
        examples = []
        for i, line in enumerate(lines):
            a, _, b = line.partition("\t")
            examples.append(glue_data.Example(f"input-{i}", a, b or None, None))
        features = glue_data.glue_features(examples, self.tokenizer, self.max_seq_length, self.task.glue)
        _, records = self.task.evaluate(self._outputs(features), TaskSplit(features, examples))
        return [
            {"text": line, **{k: v for k, v in r.items() if k != "guid"}}
            for line, r in zip(lines, records, strict=True)
        ]

    def _tag(self, lines: list[str]) -> list[dict[str, Any]]:
        sentences = [conll_data.NerSentence(tuple(line.split())) for line in lines]
        features = conll_data.ner_features(sentences, self.tokenizer, self.max_seq_length, self.task.labels)
        outputs = self._outputs(features.as_model_inputs())
        tags = conll_data.tags_from_token_predictions(outputs.argmax(-1), features, self.task.labels)
        return [
            {
                "words": list(s.words),
                "tags": t,
                "entities": [
                    {"type": kind, "text": " ".join(s.words[start:end]), "start": start, "end": end}
                    for kind, start, end in metrics.get_entities(t)
                ],
            }
            for s, t in zip(sentences, tags, strict=True)
        ]

    def _answer(self, lines: list[str]) -> list[dict[str, Any]]:
        examples = []
        for i, line in enumerate(lines):
            if line.lstrip().startswith("{"):
                try:
                    item = json.loads(line)
                    question, context = item["question"], item["context"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PredictError(f'line {i + 1}: expected {{"question": ..., "context": ...}}.') from None
            else:
                question, sep, context = line.partition("\t")
                if not sep:
                    raise PredictError(f"line {i + 1}: expected question<TAB>context or a JSON object.")
            examples.append(squad_data.SquadExample(f"q{i}", question, context, (), False, "", 0, None))
        o = self.task.options
        features = squad_data.squad_features(
            examples, self.tokenizer, self.max_seq_length, o.doc_stride, o.max_query_length
        )
        outputs = self._outputs(features.as_model_inputs(with_targets=False))
        decoded = squad_data.postprocess_predictions(
            examples, features, outputs[..., 0], outputs[..., 1], o.n_best_size, o.max_answer_length
        )
        return [
            {
                "question": e.question,
                "answer": decoded.predictions[e.qas_id],
                "nbest": [
                    {"text": c["text"], "probability": round(float(c["probability"]), 6)}
                    for c in decoded.nbest[e.qas_id][:5]
                ],
            }
            for e in examples
        ]
