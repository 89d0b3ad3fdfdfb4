"""Console-script targets of the three long-running jobs: restart with huge-page malloc, watch the peers of a
multi-process run (`peer_watch`), then run the job.

`bert_jax.launcher.host_memory.restart_with_hugepage_malloc` has to run before the job's own imports (jax, flax,
orbax, TensorFlow Datasets take seconds) or they would be paid twice; this module imports nothing heavy, so
the restart costs only the interpreter's start. The `python -m` mains of the same jobs call it too (after
their imports).
"""

from __future__ import annotations

import importlib

from bert_jax.launcher import host_memory, peer_watch, quiet

_PROGRAMS = {"pretrain": "bert-jax-pretrain", "finetune": "bert-jax-finetune", "benchmark": "bert-jax-benchmark"}
_JOBS = {
    "pretrain": "bert_jax_tools.pretrain",
    "finetune": "bert_jax_tools.finetune",
    "benchmark": "bert_jax_tools.benchmark",
}


def _launch(job: str) -> None:
    quiet.quiet_native_logs()
    host_memory.restart_with_hugepage_malloc()
    peer_watch.supervise_if_multi_process(_PROGRAMS[job])
    importlib.import_module(_JOBS[job]).run()


def pretrain() -> None:
    """bert-jax-pretrain."""
    _launch("pretrain")


def finetune() -> None:
    """bert-jax-finetune."""
    _launch("finetune")


def benchmark() -> None:
    """bert-jax-benchmark."""
    _launch("benchmark")
