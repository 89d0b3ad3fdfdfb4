"""Where training metrics go: a console line, `metrics.jsonl` in the workdir, and TensorBoard event files.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step (train and eval), so runs can be
compared and plotted without TensorBoard.

On a gs:// workdir the files are written in this host's cache (`storage.cache_path`) and uploaded after
every write (object storage cannot append) by a background thread, so a slow or unreachable store never
holds up a training step; `close` uploads the final state. A resumed job first takes the bucket's
`metrics.jsonl` back.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from typing import Any

from absl import logging

from bert_jax import storage


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"


class MetricsLog:
    """Writes metrics for process 0; a no-op elsewhere."""

    def __init__(self, workdir: str, is_main: bool = True, tensorboard: bool = True):
        self.is_main = is_main
        self._jsonl = None
        self._tensorboard = None
        self._remote: str | None = None
        self._upload_failed = False
        if not is_main:
            return
        local = workdir
        if storage.is_remote(workdir):
            self._remote, local = workdir, storage.cache_path(workdir)
            self._take_remote_jsonl(local)
        self._local = local
        if self._remote is not None:
            self._pending = threading.Event()
            self._stopping = False
            self._uploader = threading.Thread(target=self._upload_when_asked, daemon=True, name="metrics-upload")
            self._uploader.start()
        os.makedirs(local, exist_ok=True)
        self._jsonl = open(os.path.join(local, JSONL), "a", encoding="utf-8")
        if tensorboard:
            import tensorflow as tf  # tf.summary writes the event files TensorBoard reads

            self._tf = tf
            self._tensorboard = tf.summary.create_file_writer(os.path.join(local, TENSORBOARD))

    def _take_remote_jsonl(self, local: str) -> None:
        """Starts from the bucket's metrics.jsonl (the record of the run), not from an older local copy."""
        remote, cached = storage.join(self._remote or "", JSONL), os.path.join(local, JSONL)
        if storage.exists(remote):
            storage.local_copy(remote)
        elif os.path.exists(cached):
            os.remove(cached)

    def _upload_when_asked(self) -> None:
        while not self._stopping:
            self._pending.wait()
            self._pending.clear()
            if not self._stopping:
                self._upload()

    def _upload(self) -> None:
        """Copies the files to the bucket. A failed upload does not stop training (the checkpoints decide
        whether the job can go on): it is reported once, the files stay in the host cache, and the next write
        uploads them again."""
        if self._remote is None:
            return
        try:
            storage.upload_file(os.path.join(self._local, JSONL), storage.join(self._remote, JSONL))
            if os.path.isdir(os.path.join(self._local, TENSORBOARD)):
                storage.upload_tree(os.path.join(self._local, TENSORBOARD), storage.join(self._remote, TENSORBOARD))
        except Exception as e:
            if not self._upload_failed:
                print(
                    f"WARNING: could not upload the metrics to {self._remote} ({type(e).__name__}: {str(e)[:200]}); "
                    f"they are kept in {self._local} and uploaded again after the next write.",
                    flush=True,
                )
            self._upload_failed = True
        else:
            self._upload_failed = False

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
        """One record: `{"step": step, prefix + name: value, ...}` to metrics.jsonl and TensorBoard."""
        if not self.is_main:
            return
        record = {"step": int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            with self._tensorboard.as_default():
                for name, value in record.items():
                    if name != "step":
                        self._tf.summary.scalar(name, value, step=int(step))
            self._tensorboard.flush()
        if self._remote is not None:
            self._pending.set()  # the uploader thread takes it from here

    def console(self, step: int, total_steps: int, metrics: Mapping[str, float], eta_seconds: float) -> None:
        if not self.is_main:
            return
        parts = [f"step {step}/{total_steps}"]
        for key, fmt in (
            ("loss", "loss {:.4f}"),
            ("mlm_accuracy", "mlm_acc {:.4f}"),
            ("nsp_accuracy", "nsp_acc {:.4f}"),
            ("accuracy", "acc {:.4f}"),
            ("learning_rate", "lr {:.2e}"),
            ("tokens_per_sec", "{:,.0f} tok/s"),
            ("examples_per_sec", "{:,.1f} ex/s"),
            ("mfu", "MFU {:.1%}"),
            ("input_wait", "input wait {:.0%}"),
        ):
            if key in metrics:
                parts.append(fmt.format(metrics[key]))
        parts.append(f"ETA {_format_duration(eta_seconds)}")
        line = " | ".join(parts)
        logging.info(line)
        print(line, flush=True)

    def close(self) -> None:
        """Closes the files; on a gs:// workdir waits for the uploader, then uploads the final state."""
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self.is_main and self._remote is not None:
            self._stopping = True
            self._pending.set()
            self._uploader.join()
            self._upload()
