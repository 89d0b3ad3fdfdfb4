"""`finetune_and_evaluate(config, workdir)`: fine-tune a BERT on a task, evaluate it, save predictions.

The weights come from `init_from` (a pretraining workdir or checkpoint of ours, an export, a Hugging Face
BERT directory; the task head is new) or, without it, from a fresh initialization of `model.size`. The
same machinery as pretraining: the job's plan (`finetune.plan`: mesh, shardings, optimizer, the jitted step
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
import ml_collections
import numpy as np

from bert_jax import sharding, storage
from bert_jax.compile import fit
from bert_jax.data.pipeline import epoch_permutation
from bert_jax.finetune import recipes
from bert_jax.finetune.plan import (
    FinetuneConfigError,
    FinetunePlan,
    check_data_dir,
    check_seq_length,
    make_finetune_plan,
    model_and_tokenizer,
    task_from_config,
    train_steps,
)
from bert_jax.finetune.tasks import Task, TaskSplit
from bert_jax.training import checkpoint, compile_cache, step_loop, train, warm_start
from bert_jax.training.metrics_log import MetricsLog


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


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> FinetuneResult:
    """Runs the fine-tuning job, resuming from the workdir's latest checkpoint when there is one.

    Compiled programs go to (and on a restart come from) the persistent compilation cache that the config's
    `compilation_cache_dir` names (`compile_cache`; by default `<workdir>/jax_cache`).
    """
    task = task_from_config(config)
    check_data_dir(config, task)  # the recipes leave data_dir to the user
    fit.fit_mode(config)  # a bad `fit` or `optimizer` setting ends before the data is read
    recipes.optimizer_config(config, total_steps=1)
    storage.check_paths(
        {
            "workdir": workdir,
            "compilation_cache_dir": config.get("compilation_cache_dir"),
            "vocab_file": config.get("vocab_file"),
            "init_from": config.get("init_from"),
            "data_dir": config.data_dir,
        }
    )
    if not storage.isdir(config.data_dir):
        raise FinetuneConfigError(f"data_dir={config.data_dir} is not a directory; point it at the task's data.")
    workdir = storage.absolute(workdir)
    storage.makedirs(workdir)
    with compile_cache.job_cache(config.get("compilation_cache_dir", ""), workdir) as cache_dir:
        return _finetune_and_evaluate(config, workdir, task, cache_dir)


def _finetune_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, task: Task, cache_dir: str | None
) -> FinetuneResult:
    cache_start = compile_cache.counts()
    is_main = jax.process_index() == 0
    model_config, tokenizer, source, tokenizer_files = model_and_tokenizer(config)
    check_seq_length(config, model_config)  # before the data is tokenized
    data_dir = storage.local_input(config.data_dir)  # a gs:// task directory: this host's verified copy
    train_split = task.load(data_dir, task.train_split, tokenizer, config.max_seq_length)
    eval_split = task.load(data_dir, config.eval_split or task.eval_split, tokenizer, config.max_seq_length)
    total_steps, per_epoch = train_steps(config, len(train_split))

    def plan_for(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> FinetunePlan:
        return make_finetune_plan(config, task, model_config, total_steps, devices)

    # On accelerators the steps compile now, to check they fit the devices' memory (`fit`, as pretraining).
    fitted = fit.fit_job(config, say=print if is_main else None, job=plan_for(config, jax.devices()), make_job=plan_for)
    config, job = fitted.config, fitted.job
    train_step, predict_step = fitted.train_step, fitted.eval_step
    model_config, mesh, shardings = job.model_config, job.mesh, job.shardings
    checkpointer = checkpoint.Checkpointer(
        checkpoint.checkpoint_dir(workdir),
        save_every_steps=config.checkpoint_every_steps,
        max_to_keep=config.max_checkpoints_to_keep,
        timeout_seconds=config.get("checkpoint_timeout_seconds", 600),
    )
    try:
        abstract = job.abstract_state()  # the restore target: shapes in the job's shardings
        restored = checkpointer.restore(abstract.params, abstract.opt_state, model_config)
        if restored is not None:
            state = train.TrainState(
                step=jax.device_put(np.int32(restored.step), shardings.step),
                params=restored.params,
                opt_state=restored.opt_state,
            )
            if is_main:
                print(f"Resumed from the checkpoint of step {restored.step} in {checkpointer.directory}", flush=True)
        else:
            state = train.create_train_state(job.model, job.optimizer, jax.random.key(config.seed), shardings)
            if source is not None:
                start = warm_start.merge(source, model_config, state.params)
                state = state.replace(params=sharding.place_host_tree(start.params, shardings.params))
                if is_main:
                    print(
                        f"Initialized the encoder from {start.source}; new: {', '.join(start.kept_fresh)}", flush=True
                    )

        log = MetricsLog(workdir, is_main)
        records: list[dict[str, Any]] = []

        def evaluate(state: train.TrainState, step: int) -> dict[str, float]:
            chunks = []
            for local in _eval_batches(eval_split, config.global_batch_size):
                inputs = {k: local[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
                global_inputs = sharding.global_batch_from_process_local(inputs, mesh)
                chunks.append(np.asarray(predict_step(state.params, global_inputs)))
            outputs = np.concatenate(chunks, axis=0)[: len(eval_split)]
            results, records[:] = task.evaluate(outputs, eval_split)
            log.write(step, results, prefix="eval_")
            if is_main:
                shown = " | ".join(f"{k} {v:.4f}" for k, v in results.items())
                print(f"eval at step {step}: {shown}", flush=True)
            return results

        def rates(seconds: float, steps: int, tokens: int) -> dict[str, float]:
            return {"examples_per_sec": steps * config.global_batch_size / seconds}

        def first_step(seconds: float) -> None:
            if is_main:
                print(compile_cache.first_step_line(seconds, cache_dir, cache_start), flush=True)

        def loop_batches(start_step: int) -> Iterator[step_loop.LoopBatch]:
            # The rows of a step are a pure function of it: nothing about the input goes into a checkpoint.
            for step in range(start_step, total_steps):
                rows = _rows(step, per_epoch, len(train_split), config.global_batch_size, config.seed)
                yield step_loop.LoopBatch(
                    sharding.global_batch_from_process_local(_local(train_split.arrays, rows), mesh)
                )

        start_step = restored.step if restored is not None else 0
        if is_main:
            print(
                f"Task {task.name}: {len(train_split)} training rows, {len(eval_split)} eval rows; {total_steps} steps "
                f"of {config.global_batch_size} ({per_epoch} per epoch); mesh {dict(mesh.shape)}",
                flush=True,
            )
        meta = {
            "job_config": json.loads(config.to_json_best_effort()),
            "model_config": model_config.to_dict(),
            "task": task.name,
            "labels": getattr(task, "labels", None),
            "max_seq_length": config.max_seq_length,
            "lowercase": config.lowercase,
        }
        try:
            loop = step_loop.run(
                state,
                train_step,
                loop_batches(start_step),
                step_loop.LoopSettings.of(config, total_steps),
                start_step=start_step,
                checkpointer=checkpointer,
                log=log,
                hooks=step_loop.LoopHooks(
                    evaluate=evaluate,
                    rates=rates,
                    checkpoint_meta=meta,
                    tokenizer_files=tokenizer_files,
                    first_step=first_step,
                ),
            )
            done, results = loop.step, loop.eval_metrics
            if loop.stopped_by is not None:
                if is_main:
                    print(step_loop.stopped_line(loop, checkpointer), flush=True)
                return FinetuneResult(results, done, loop.stopped_by)
            if not results:  # nothing left to train: score the restored model
                results = evaluate(loop.state, done)
        finally:
            log.close()
    finally:
        checkpointer.close()
    if is_main:
        split_name = config.eval_split or task.eval_split
        summary = {"task": task.name, "split": split_name, "step": done, **results}
        storage.write_text(storage.join(workdir, "eval_results.json"), json.dumps(summary, indent=2))
        with storage.open_file(storage.join(workdir, f"predictions_{split_name}.jsonl"), "wb") as f:
            for record in records:
                f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        print(f"Wrote {workdir}/eval_results.json: {json.dumps(results)}", flush=True)
    return FinetuneResult(results, done)
