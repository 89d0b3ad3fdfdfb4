"""`finetune_and_evaluate(config, workdir)`: fine-tune an encoder on a task, evaluate it, save predictions.

The encoder is BERT or the modern family (`model.family`, `finetune.heads` has both families' task models). The
weights come from `init_from` (a pretraining workdir or checkpoint of ours, an export, a Hugging Face BERT or
ModernBERT directory; the task head is new) or, without it, from a fresh initialization of `model.size`. The
same machinery as pretraining: the job's plan (`finetune_plan`: mesh, shardings, optimizer, the jitted step
with the task's loss and donated state) and the one training loop of both jobs (`step_loop`: orbax
checkpoints every `checkpoint_every_steps` with automatic resume, SIGTERM stops with a checkpoint, metrics to
the console, `metrics.jsonl` and TensorBoard). The training order is a permutation of the examples per (seed, epoch), so
a step number alone says which rows it trains on, and a resumed run is the uninterrupted one.

At every `eval_every_steps` and at the end the eval split is scored with the task's official metrics;
the final scores go to `eval_results.json` and one prediction per eval example to
`predictions_<split>.jsonl` in the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from bert_jax import sharding, storage
from bert_jax.compile import fit
from bert_jax.data.pipeline import epoch_permutation
from bert_jax.errors import ConfigError
from bert_jax.finetune.tasks import TaskSplit
from bert_jax.jobs import config as job_config
from bert_jax.jobs import runner
from bert_jax.jobs.config import FinetuneConfig
from bert_jax.jobs.finetune_plan import (
    FinetunePlan,
    check_data_dir,
    check_seq_length,
    make_finetune_plan,
    model_and_tokenizer,
    steps_per_epoch,
    task_of,
)
from bert_jax.models import families
from bert_jax.training import step_loop, train, warm_start


@dataclasses.dataclass
class FinetuneResult:
    eval_metrics: dict[str, float]
    step: int
    stopped_by: str | None = None


@functools.lru_cache(maxsize=2)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return epoch_permutation(num_examples, seed=seed, epoch=epoch)


def _rows(step: int, per_epoch: int, num_examples: int, global_batch: int, seed: int) -> np.ndarray:
    """The example indices of the global batch of `step` (a pure function of the step: exact resumption);
    the epoch's permutation is computed once per epoch, not per step."""
    epoch, index = divmod(step, per_epoch)
    order = _epoch_order(num_examples, seed, epoch)
    return order[index * global_batch : (index + 1) * global_batch]


def _local(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """This process's share of the global batch `rows`."""
    count, index = jax.process_count(), jax.process_index()
    share = len(rows) // count
    mine = rows[index * share : (index + 1) * share]
    return {k: v[mine] for k, v in arrays.items()}


def _eval_batches(split: TaskSplit, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Every row of `split` in order, the last batch padded (example_weights 0 on padding rows)."""
    n = len(split)
    for start in range(0, n, global_batch):
        rows = np.arange(start, min(start + global_batch, n))
        weights = np.ones(global_batch, np.float32)
        if len(rows) < global_batch:
            weights[len(rows) :] = 0.0
            rows = np.concatenate([rows, np.zeros(global_batch - len(rows), rows.dtype)])
        batch = {k: v[rows] for k, v in split.arrays.items()}
        batch["example_weights"] = weights
        yield _local(batch, np.arange(global_batch))


def finetune_and_evaluate(job: FinetuneConfig, workdir: str) -> FinetuneResult:
    """Runs the fine-tuning job, resuming from the workdir's latest checkpoint when there is one.

    `job`: the parsed config (`job_config.parse(config_dict, expect="finetune")`: the command line does that).
    """
    check_data_dir(job, task_of(job))  # the recipes leave data_dir to the user
    storage.check_paths({"data_dir": job.data_dir})
    if not storage.isdir(job.data_dir):  # before the workdir is made
        raise ConfigError(f"data_dir={job.data_dir} is not a directory; point it at the task's data.")
    paths = {"vocab_file": job.vocab_file, "tokenizer_file": job.tokenizer_file, "data_dir": job.data_dir}
    with runner.job_workdir(job, workdir, paths) as where:
        return _finetune_and_evaluate(job, where)


def _finetune_and_evaluate(config: FinetuneConfig, where: runner.Workdir) -> FinetuneResult:
    task = task_of(config)
    model_config, tokenizer, source, tokenizer_files = model_and_tokenizer(config)
    check_seq_length(config, model_config)  # before the data is tokenized
    if config.model.other_family:
        unused = ", ".join(f"model.{name}={value}" for name, value in config.model.other_family)
        where.say(f"Not used by model.family={config.model.family!r} (another family's settings): {unused}")
    data_dir = storage.local_input(config.data_dir)  # a gs:// task directory: this host's verified copy
    train_split = task.load(data_dir, task.train_split, tokenizer, config.max_seq_length)
    eval_split = task.load(data_dir, config.eval_split or task.eval_split, tokenizer, config.max_seq_length)
    total_steps, per_epoch = steps_per_epoch(config, len(train_split))

    def plan_for(config: FinetuneConfig, devices: Sequence[Any]) -> FinetunePlan:
        return make_finetune_plan(config, task, model_config, total_steps, devices)

    # On accelerators the steps compile now, to check they fit the devices' memory (`fit`, as pretraining).
    fitted = fit.fit_job(config, plan_for, say=where.say, job=plan_for(config, jax.devices()))
    config, job = fitted.config, fitted.job
    model_config, mesh, shardings = job.model_config, job.mesh, job.shardings
    records: list[dict[str, Any]] = []

    def fresh_state(state: train.TrainState) -> train.TrainState:
        if source is None:
            return state
        start = warm_start.merge(source, model_config, state.params)
        where.say(f"Initialized the encoder from {start.source}; new: {', '.join(start.kept_fresh)}")
        return state.replace(params=sharding.place_host_tree(start.params, shardings.params))

    def evaluate(state: train.TrainState, step: int) -> dict[str, float]:
        chunks = []
        for local in _eval_batches(eval_split, config.global_batch_size):
            inputs = {k: local[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            global_inputs = sharding.global_batch_from_process_local(inputs, mesh)
            chunks.append(np.asarray(fitted.eval_step(state.params, global_inputs)))
        outputs = np.concatenate(chunks, axis=0)[: len(eval_split)]
        results, records[:] = task.evaluate(outputs, eval_split)
        where.say(f"eval at step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    def loop_batches(start_step: int) -> Iterator[step_loop.LoopBatch]:
        # The rows of a step are a pure function of it: nothing about the input goes into a checkpoint.
        for step in range(start_step, total_steps):
            rows = _rows(step, per_epoch, len(train_split), config.global_batch_size, config.seed)
            yield step_loop.LoopBatch(sharding.global_batch_from_process_local(_local(train_split.arrays, rows), mesh))

    where.say(
        f"Task {task.name}: {len(train_split)} training rows, {len(eval_split)} eval rows; {total_steps} steps "
        f"of {config.global_batch_size} ({per_epoch} per epoch); mesh {dict(mesh.shape)}"
    )
    run_task = runner.Task(
        total_steps=total_steps,
        batches=loop_batches,
        evaluate=evaluate,
        rates=lambda seconds, steps, tokens: {"examples_per_sec": steps * config.global_batch_size / seconds},
        checkpoint_meta={
            "job_config": job_config.record(config),
            "model_config": families.config_to_dict(model_config),
            "task": task.name,
            "labels": getattr(task, "labels", None),
            "max_seq_length": config.max_seq_length,
            "lowercase": config.lowercase,
        },
        tokenizer_files=tokenizer_files,
        fresh_state=fresh_state,
        evaluate_if_nothing_trained=True,
    )
    with runner.open_checkpointer(config, where.path) as checkpointer:
        result = runner.train_job(config, where, job, fitted.train_step, checkpointer, run_task)
    if result.stopped_by is not None:
        return FinetuneResult(result.eval_metrics, result.step, result.stopped_by)
    if where.is_main:
        split_name = config.eval_split or task.eval_split
        summary = {"task": task.name, "split": split_name, "step": result.step, **result.eval_metrics}
        storage.write_text(storage.join(where.path, "eval_results.json"), json.dumps(summary, indent=2))
        with storage.open_file(storage.join(where.path, f"predictions_{split_name}.jsonl"), "wb") as f:
            for record in records:
                f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        print(f"Wrote {where.path}/eval_results.json: {json.dumps(result.eval_metrics)}", flush=True)
    return FinetuneResult(result.eval_metrics, result.step)
