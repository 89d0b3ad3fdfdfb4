"""`train_and_evaluate(config, workdir)`: the pretraining job, from text files to exported weights.

Steps: resolve the corpus (build it into `workdir/corpus` from `data.train_files` unless `data.corpus_dir`
names a built one), the tokenizer's vocabulary size, the mesh and everything that must fit together (all
checked before anything compiles); restore the sharded train state from the workdir's latest checkpoint
(onto the current mesh), or create it (warm-started from `init_from` when set); then loop: this
process's batch -> global array (two batches in flight to the devices) -> jitted step. The host reads
metrics back only at log and eval steps and copies the state off the devices at checkpoint steps, so
steps otherwise queue up on the devices (on accelerators a transfer guard turns any other
device-to-host transfer in the loop into an error). SIGTERM / Ctrl-C / a preemption notice stop the
loop after the current step with a checkpoint. At the end the weights are exported (a Hugging Face
directory and our own) from the final state.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from bert_jax import sharding, storage
from bert_jax.compile import fit
from bert_jax.data import batch_workers, corpus, documents, pipeline
from bert_jax.data.device_prefetch import prefetch_to_mesh
from bert_jax.errors import ConfigError
from bert_jax.jobs import config as job_config
from bert_jax.jobs import pretrain_plan, runner
from bert_jax.jobs.config import PretrainConfig, PretrainData
from bert_jax.models import convert, families, flops, structured_init
from bert_jax.training import checkpoint, collapse, step_loop, train, warm_start
from bert_jax.training.losses import summarize

__all__ = ["JobResult", "corpus_options", "prepare_corpus", "train_and_evaluate"]


def corpus_options(data: PretrainData) -> corpus.CorpusOptions:
    if not data.train_files:
        raise ConfigError(
            "data.train_files is empty: set --config.data.train_files to a glob or comma list of text files (or "
            "JSON Lines, Parquet files, save_to_disk folders), "
            "or --config.data.corpus_dir to a corpus built with bert-jax-build-corpus."
        )
    return corpus.CorpusOptions(
        input_files=tuple(documents.expand_input_files(data.train_files)),
        vocab_file=data.vocab_file or None,
        spm_model=data.spm_model or None,
        tokenizer_file=data.tokenizer_file or None,
        lowercase=data.lowercase,
        text_field=data.text_field,
        max_seq_length=data.max_seq_length,
        short_seq_prob=data.short_seq_prob,
        dupe_factor=data.dupe_factor,
        eval_fraction=data.eval_fraction,
        seed=data.corpus_seed,
    )


def prepare_corpus(job: PretrainConfig, workdir: str) -> str:
    """The built corpus as a local directory: `data.corpus_dir`, or built (by process 0) into `workdir/corpus`.

    On object storage (a gs:// workdir or corpus_dir) every process reads a verified copy in its host cache.
    """
    if job.data.corpus_dir:
        try:
            return corpus.local_dataset_dir(job.data.corpus_dir)
        except documents.CorpusError as e:
            raise ConfigError(f"data.corpus_dir: {e} Or drop data.corpus_dir to build from data.train_files.") from None
    options = corpus_options(job.data)
    corpus_root = storage.join(workdir, "corpus")
    if jax.process_index() == 0:
        # The input's worker processes build the corpus too (none on a small host: the demo builds in-process).
        workers = batch_workers.resolve_num_workers(job.data.num_workers)
        result = corpus.build_corpus(
            options, corpus_root, num_shards=job.data.num_shards, show_progress=True, num_workers=workers
        )
        print(result.summary(), flush=True)
        built = result.dataset_dir
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("corpus built")
    if jax.process_index() != 0:
        return corpus.local_dataset_dir(storage.join(corpus_root, corpus.dataset_subdir(options)))
    return storage.cache_path(built) if storage.is_remote(built) else built


@dataclasses.dataclass
class JobResult:
    """How the job ended: the last eval metrics, the last step trained, and whether a signal stopped it."""

    eval_metrics: dict[str, float]
    step: int
    stopped_by: str | None = None  # "SIGTERM", "SIGINT" or "preemption notice" when stopped early


def _check_resume_shapes(checkpointer: checkpoint.Checkpointer, model_config: families.ModelConfig) -> int | None:
    """The latest checkpoint's step, after checking its model shape (before the corpus build and compiles)."""
    step = checkpointer.latest_step()
    if step is None:
        return None
    try:
        saved = checkpoint.model_config_from_meta(checkpointer.read_meta(step))
    except Exception:  # unreadable: `restore` sets it aside and falls back, with a warning
        return step
    differences = checkpoint.shape_differences(saved, model_config)
    if differences:
        raise ConfigError(
            f"The workdir's latest checkpoint (step {step}) has another model shape than this config "
            f"({'; '.join(differences)}). Resume with the config it was written with, or use a new --workdir "
            "(with --config.init_from pointing at the old one to start from its weights)."
        )
    return step


def _host_params(params: Any) -> Any:
    """The full params on the host of every process (gathered across processes when sharded over them)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


EXPORT_COMPLETE_LAST = (convert.HF_CONFIG, convert.NATIVE_CONFIG, "step.txt")


def _export(export_dir: str, model_config: families.ModelConfig, params: Any, data: PretrainData, step: int) -> None:
    """Writes `export/hf` (and for BERT `export/bert_jax`); an export of an earlier step is renamed aside, not lost.

    The export is assembled in a local staging directory and published whole (a rename; on object storage an
    upload whose config files and `step.txt` come last, so `from_pretrained` never loads a half export).
    """
    if storage.exists(export_dir):
        aside = f"{export_dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        storage.move_tree(export_dir, aside)
        print(f"Moved the previous export to {aside}", flush=True)
    vocab = storage.local_copy(data.vocab_file) if data.vocab_file else None
    tokenizer_json = storage.local_copy(data.tokenizer_file) if data.tokenizer_file else None
    staging = storage.staging_dir_for(export_dir)
    model_family = families.family_of(model_config)
    model_config, params = convert.unpad_vocab(model_config, params)
    model_family.to_hf(
        model_config,
        params,
        os.path.join(staging, "hf"),
        vocab_file=vocab,
        do_lower_case=data.lowercase,
        tokenizer_file=tokenizer_json,
    )
    if model_family.name == families.DEFAULT_FAMILY:  # our own format is BERT's; the modern family's is the HF one
        convert.to_native(model_config, params, os.path.join(staging, "bert_jax"), vocab, tokenizer_file=tokenizer_json)
    with open(os.path.join(staging, "step.txt"), "w", encoding="utf-8") as f:
        f.write(f"{step}\n")
    storage.publish_tree(staging, export_dir, last=EXPORT_COMPLETE_LAST)
    hf_dir, native_dir = storage.join(export_dir, "hf"), storage.join(export_dir, "bert_jax")
    native = f" and {native_dir} (bert_jax)" if model_family.name == families.DEFAULT_FAMILY else ""
    print(f"Exported the weights of step {step} to {hf_dir} (Hugging Face){native}", flush=True)


def train_and_evaluate(job: PretrainConfig, workdir: str) -> JobResult:
    """Runs the pretraining job, resuming from the workdir's latest checkpoint when there is one.

    `job`: the parsed config (`job_config.parse(config_dict, expect="pretrain")`: the command line does that).
    """
    paths = {
        "data.train_files": job.data.train_files,
        "data.corpus_dir": job.data.corpus_dir,
        "data.vocab_file": job.data.vocab_file,
        "data.spm_model": job.data.spm_model,
        "data.tokenizer_file": job.data.tokenizer_file,
    }
    with runner.job_workdir(job, workdir, paths) as where:
        return _train_and_evaluate(job, where)


def _training_tokens(corpus_dir: str, max_tokens: int, rows_per_read: int = 1024) -> Iterator[tuple[Any, Any]]:
    """(flat tokens, lengths) of the training split's first instances, up to about `max_tokens` tokens."""
    source = corpus.open_corpus(corpus_dir, "train")
    seen = 0
    for start in range(0, len(source), rows_per_read):
        columns = source.read_columns(range(start, min(start + rows_per_read, len(source))))
        yield columns["tokens"], columns["lengths"]
        seen += len(columns["tokens"])
        if seen >= max_tokens:
            return


def _structured_start(
    state: train.TrainState,
    job: pretrain_plan.PretrainPlan,
    corpus_dir: str,
    seed: int,
    shardings: train.TrainState,
    is_main: bool,
) -> train.TrainState:
    """`state` with the params `job.initialization` sets (computed on process 0, the same on every process)."""
    started = time.perf_counter()
    init = job.initialization
    special_ids = corpus.corpus_metadata(corpus_dir)["special_ids"].values()
    leaves = structured_init.structured_leaves(
        job.model_config, init, seed, lambda: _training_tokens(corpus_dir, init.max_corpus_tokens), special_ids
    )
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        leaves = multihost_utils.broadcast_one_to_all(leaves)
    params = jax.tree_util.tree_map(lambda leaf: leaf, state.params)  # new containers, the same arrays
    for path, value in leaves.items():
        target = params
        for name in path[:-1]:
            target = target[name]
        where = shardings.params
        for name in path:
            where = where[name]
        target[path[-1]] = sharding.place_host_tree(np.asarray(value), where)
    if is_main:
        print(
            f"Initialized attention {init.attention}, word embeddings {init.word_embeddings} "
            f"(config.initialization) in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return state.replace(params=params)


def _train_and_evaluate(config: PretrainConfig, where: runner.Workdir) -> JobResult:
    is_main = where.is_main
    export_dir = storage.join(where.path, "export")
    # Everything that can be checked is checked before the corpus is built and anything compiles.
    checked = pretrain_plan.make_plan(config)
    if not config.data.corpus_dir:
        corpus_options(config.data)  # the input files exist and are readable, before anything else starts
    # On accelerators the steps compile now, ahead of the corpus build, to check they fit (`fit`).
    fitted = fit.fit_job(config, pretrain_plan.make_plan, say=where.say, job=checked)
    config, job = fitted.config, fitted.job
    model_config, mesh, data = job.model_config, job.mesh, config.data
    with runner.open_checkpointer(config, where.path) as checkpointer:
        resume_step = _check_resume_shapes(checkpointer, model_config)
        if resume_step is None and config.init_from and not storage.exists(config.init_from):
            raise ConfigError(f"init_from={config.init_from} does not exist; give a workdir, export or HF directory.")
        corpus_dir = prepare_corpus(config, where.path)
        if int(corpus.corpus_metadata(corpus_dir)["vocab_size"]) != model_config.vocab_size:
            raise ConfigError(
                f"The corpus {corpus_dir} was built with another vocabulary than the config's tokenizer "
                "(data.vocab_file / data.spm_model / data.tokenizer_file)."
            )
        masking = corpus.masking_config_from_corpus(
            corpus_dir, data.max_predictions_per_seq, masked_lm_prob=data.masked_lm_prob, whole_word=data.whole_word
        )
        shardings = job.shardings
        topology = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        num_workers = batch_workers.resolve_num_workers(data.num_workers)
        batches = pipeline.PretrainingBatches(
            corpus.open_corpus(corpus_dir, "train"),
            pipeline.PipelineConfig(
                global_batch_size=config.global_batch_size,
                max_seq_length=data.max_seq_length,
                seed=config.seed,
                num_workers=num_workers,
            ),
            masking,
            **topology,
        )

        def fresh_state(state: train.TrainState) -> train.TrainState:
            if not job.initialization.is_default:
                state = _structured_start(state, job, corpus_dir, config.seed, shardings, is_main)
            if config.init_from:
                start = warm_start.load(config.init_from, model_config, state.params)
                state = state.replace(params=sharding.place_host_tree(start.params, shardings.params))
                where.say(f"Initialized the params from {start.source} (optimizer fresh, step 0)")
                if start.kept_fresh:
                    where.say(f"  not in the source, freshly initialized: {', '.join(start.kept_fresh)}")
            return state

        flops_per_sequence = job.flops_per_sequence()
        peak = [config.peak_flops_per_device]  # 0: measured once the state is ready (`ready`)

        def ready() -> None:
            peak[0] = peak[0] or flops.measure_matmul_peak(model_config.dtype)
            count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(job.abstract_state().params))
            where.say(
                f"Model {config.model.size}: {count:,} parameters; mesh {dict(mesh.shape)}; global batch "
                f"{config.global_batch_size}; corpus {corpus_dir}; peak {peak[0] / 1e9:.1f} GFLOP/s per device"
            )

        def evaluate(state: train.TrainState, step: int) -> dict[str, float]:
            eval_source = corpus.open_corpus(corpus_dir, "validation")
            totals: dict[str, Any] | None = None
            eval_batches = pipeline.padded_eval_batches(
                eval_source,
                masking,
                global_batch_size=job.eval_batch_size,
                max_seq_length=data.max_seq_length,
                seed=config.seed,
                **topology,
            )
            for i, local in enumerate(eval_batches):
                if config.eval_batches and i >= config.eval_batches * config.num_microbatches:
                    break
                sums = fitted.eval_step(state.params, sharding.global_batch_from_process_local(local, mesh))
                totals = sums if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, sums)
            assert totals is not None
            results = {k: float(v) for k, v in jax.device_get(summarize(totals, job.nsp_loss_weight)).items()}
            at_mask = results.get("mlm_accuracy_at_mask")
            where.say(
                f"eval at step {step}: loss {results['loss']:.4f} | mlm_acc {results['mlm_accuracy']:.4f}"
                + ("" if at_mask is None else f" (at [MASK] {at_mask:.4f})")
                + ("" if "nsp_accuracy" not in results else f" | nsp_acc {results['nsp_accuracy']:.4f}")
            )
            warning = collapse.collapse_warning(results, step)
            if warning:
                where.say(warning)
            return results

        def rates(seconds: float, steps: int, tokens: int) -> dict[str, float]:
            sequences_per_sec = steps * config.global_batch_size / seconds
            return {
                "tokens_per_sec": tokens / seconds,
                "mfu": sequences_per_sec * flops_per_sequence / (peak[0] * len(jax.devices())),
            }

        def loop_batches(start_step: int) -> Iterator[step_loop.LoopBatch]:
            for batch in prefetch_to_mesh(batches, mesh, depth=2, source_state=batches.state):
                yield step_loop.LoopBatch(
                    batch.arrays,
                    tokens=batch.local_tokens * topology["process_count"],
                    checkpoint_meta={"data_state": batch.source_state},
                )

        task = runner.Task(
            total_steps=config.num_train_steps,
            batches=loop_batches,
            evaluate=evaluate,
            rates=rates,
            checkpoint_meta={
                "job_config": job_config.record(config),
                "model_config": families.config_to_dict(model_config),
                "seed": config.seed,
                "process_count": jax.process_count(),
            },
            tokenizer_files=checkpoint.tokenizer_payload(
                data.vocab_file or None, data.spm_model or None, data.tokenizer_file or None
            ),
            fresh_state=fresh_state,
            restored=lambda meta: batches.restore(meta["data_state"]),
            ready=ready,
            input_hint=(
                f"{batch_workers.describe(num_workers)}: raise data.num_workers (bert-jax-benchmark-data "
                "--num_workers=N measures the rate on this host)"
            ),
            close=batches.close,
        )
        result = runner.train_job(config, where, job, fitted.train_step, checkpointer, task)
        if result.stopped_by is not None:
            return JobResult(result.eval_metrics, result.step, result.stopped_by)
        if result.start_step >= config.num_train_steps:
            where.say(
                f"Nothing to train: the latest checkpoint is step {result.start_step} of {config.num_train_steps}."
            )
        if config.export:
            params = _host_params(result.state.params)
            if is_main and not _export_is_current(export_dir, result.step):
                _export(export_dir, model_config, params, data, result.step)
        return JobResult(result.eval_metrics, result.step)


def _export_is_current(export_dir: str, step: int) -> bool:
    try:
        return int(storage.read_text(storage.join(export_dir, "step.txt")).strip()) == step
    except (OSError, ValueError):
        return False
