"""Console-script targets of the three long-running jobs: restart with huge-page malloc, watch the peers of a
multi-process run (`peer_watch`), then run the job.

`bert_jax.launcher.host_memory.restart_with_hugepage_malloc` has to run before the job's own imports (jax, flax,
orbax, TensorFlow Datasets take seconds) or they would be paid twice; this module imports nothing heavy, so
the restart costs only the interpreter's start. The `python -m` mains of the same jobs call it too (after
their imports).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bert_jax.launcher import host_memory, peer_watch, process_exit, quiet

_PROGRAMS = {"pretrain": "bert-jax-pretrain", "finetune": "bert-jax-finetune", "benchmark": "bert-jax-benchmark"}
_JOBS = {
    "pretrain": "bert_jax_tools.pretrain",
    "finetune": "bert_jax_tools.finetune",
    "benchmark": "bert_jax_tools.benchmark",
}


def launch(job: str, run: Callable[[], None] | None = None) -> None:
    """Quiet native logs, restart with huge-page malloc, watch a multi-process run's peers, then run the job.

    `run`: the job module's own `run` (its `python -m` main passes it: importing the module a second time would
    define its flags twice); by default the console script's module is imported and run.
    """
    quiet.quiet_native_logs()
    host_memory.restart_with_hugepage_malloc()
    peer_watch.supervise_if_multi_process(_PROGRAMS[job])
    (run or importlib.import_module(_JOBS[job]).run)()


def run_job_main(program: str, main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)`, where a user's mistake (a config, data, path, checkpoint or conversion error) ends in
    one line naming it (`process_exit.exit_with_error`), not a traceback. The same for every job's entry point."""
    from absl import app

    from bert_jax import storage, tokenizers
    from bert_jax.data import documents
    from bert_jax.models import convert
    from bert_jax.training import checkpoint

    try:
        app.run(main)
    except (
        ValueError,
        FileNotFoundError,
        documents.CorpusError,
        tokenizers.TokenizerError,
        checkpoint.CheckpointError,
        convert.ConversionError,
        storage.StorageError,
    ) as e:
        process_exit.exit_with_error(program, e)


def start_main(argv: list[str]) -> None:
    """What every job's absl main does first: no stray arguments, and library INFO logs (orbax logs every save in
    detail) off unless --verbosity asks for them, so the job's own progress lines are what the console shows."""
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def run_job(kind: str, config: object, workdir: str) -> None:
    """Parses `config` (the --config ConfigDict) as a `kind` job, runs it in `workdir`; a clean stop (SIGTERM,
    Ctrl-C, a preemption notice: the checkpoint is complete) exits 0."""
    from bert_jax.jobs import config as job_config

    job = job_config.parse(config, expect=kind)
    if kind == "pretrain":
        from bert_jax.jobs import pretraining

        result = pretraining.train_and_evaluate(job, workdir)
    else:
        from bert_jax.jobs import finetuning

        result = finetuning.finetune_and_evaluate(job, workdir)
    if result.stopped_by is not None:
        raise SystemExit(0)


def _launch(job: str) -> None:
    launch(job)


def pretrain() -> None:
    """bert-jax-pretrain."""
    _launch("pretrain")


def finetune() -> None:
    """bert-jax-finetune."""
    _launch("finetune")


def benchmark() -> None:
    """bert-jax-benchmark."""
    _launch("benchmark")
