"""Training checkpoints on orbax's `CheckpointManager`: exact resumption on any topology, never losing data.

A checkpoint is one directory per step under `<workdir>/checkpoints/`, written asynchronously (the
devices keep training while files are written) and published by an atomic rename when complete, so a
job killed mid-save leaves only a temporary directory that is ignored. Items:

  params     the float32 parameters (orbax PyTree, sharded: every process writes its own shards)
  opt_state  the optimizer state (same)
  meta       JSON: the step, the input pipeline's position, the job config, the model config (the
             shapes a resume must match), the seed (dropout keys are `fold_in(seed, step)`, so the
             seed and the step are the whole RNG state)
  tokenizer  JSON: the vocab.txt, SentencePiece model or tokenizer.json the run trains with, so an export
             from any checkpoint is self-contained

Restore takes its target shardings from the *current* mesh (abstract arrays with shardings), so a
checkpoint written on 8 devices as (2, 2, 2) restores on 1 device or as (1, 1, 4).

Object storage: a gs:// directory is written by orbax directly (tensorstore for the arrays). There a step is
written in place and published by a `commit_success.txt` written last; a step without it is an unfinished
save, ignored by orbax and removed when the job starts again. The free-space check applies to disks only.

Integrity: a latest checkpoint that cannot be read (truncated, corrupted) is moved aside into
`<checkpoints>/corrupt/` with a warning and the previous one is used. Old checkpoints are deleted by
`max_to_keep` only after a newer one is complete. Before writing, the free disk space is checked
against the checkpoint's size; a full disk ends in a `CheckpointError` naming the sizes, with earlier
checkpoints untouched.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from bert_jax import storage, tokenizers
from bert_jax.models import families

logger = logging.getLogger(__name__)

CHECKPOINTS_SUBDIR = "checkpoints"
CORRUPT_SUBDIR = "corrupt"
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax writes a step into "<step>.orbax-checkpoint-tmp-<n>" first
COMMIT_FILE = "commit_success.txt"  # on object storage orbax writes a step in place and this file last
FORMAT_VERSION = 1
# The model config fields that decide parameter shapes: a resume must match them exactly.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "padded_vocab_size",
)
# Headroom over the raw array bytes (metadata, OCDBT manifests) when checking the free disk space.
_DISK_HEADROOM = 1.05
_DISK_SLACK_BYTES = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message says why and what to do."""


def checkpoint_dir(workdir: str) -> str:
    """Where a job's checkpoints live: `<workdir>/checkpoints`."""
    return storage.join(workdir, CHECKPOINTS_SUBDIR)


# Each kind of tokenizer file (the argument names of `tokenizers.load_tokenizer`): its key in a `tokenizer_payload`
# and the file name it is written under (in checkpoints' scratch copies and in exports).
TOKENIZER_PAYLOAD_KEYS = {"vocab_file": "vocab.txt", "tokenizer_file": "tokenizer.json", "spm_model": "spm.model.b64"}
TOKENIZER_FILE_NAMES = {"vocab_file": "vocab.txt", "tokenizer_file": "tokenizer.json", "spm_model": "spm.model"}


def tokenizer_payload(
    vocab_file: str | None = None, spm_model: str | None = None, tokenizer_file: str | None = None
) -> dict[str, str]:
    """The tokenizer files as JSON-safe text (a SentencePiece model is binary: base64), keyed by
    `TOKENIZER_PAYLOAD_KEYS`: "vocab.txt", "spm.model.b64", "tokenizer.json"."""
    payload: dict[str, str] = {}
    if vocab_file:
        payload["vocab.txt"] = storage.read_text(vocab_file)
    if spm_model:
        with storage.open_file(spm_model, "rb") as f:
            payload["spm.model.b64"] = base64.b64encode(f.read()).decode("ascii")
    if tokenizer_file:
        payload["tokenizer.json"] = storage.read_text(tokenizer_file)
    return payload


def write_tokenizer_files(payload: Mapping[str, str], directory: str) -> dict[str, str]:
    """Writes the files of `tokenizer_payload` into `directory`; returns {"vocab_file" / "spm_model" /
    "tokenizer_file": path} (`tokenizers.load_tokenizer`'s argument names)."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for kind, key in TOKENIZER_PAYLOAD_KEYS.items():
        if key not in payload:
            continue
        paths[kind] = os.path.join(directory, TOKENIZER_FILE_NAMES[kind])
        if kind == "spm_model":
            with open(paths[kind], "wb") as f:
                f.write(base64.b64decode(payload[key]))
        else:
            with open(paths[kind], "w", encoding="utf-8") as f:
                f.write(payload[key])
    return paths


def payload_tokenizer_kind(
    payload: Mapping[str, str], kinds: tuple[str, ...] = ("vocab_file", "tokenizer_file")
) -> str | None:
    """The first of `kinds` (`tokenizers.load_tokenizer`'s argument names) whose file `payload` holds."""
    return next((kind for kind in kinds if TOKENIZER_PAYLOAD_KEYS[kind] in payload), None)


def load_payload_tokenizer(
    payload: Mapping[str, str],
    directory: str,
    lowercase: bool = True,
    kinds: tuple[str, ...] = ("vocab_file", "tokenizer_file"),
) -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` of a `tokenizer_payload`, its files written into `directory`: the first of `kinds`
    it holds (by default a WordPiece vocab.txt, else a tokenizer.json); a `CheckpointError` if it holds none."""
    kind = payload_tokenizer_kind(payload, kinds)
    if kind is None:
        raise CheckpointError(f"No tokenizer among the saved files ({', '.join(sorted(payload)) or 'none'}).")
    path = write_tokenizer_files(payload, directory)[kind]
    return tokenizers.load_tokenizer(**{kind: path}, lowercase=lowercase)


def model_config_from_meta(meta: Mapping[str, Any]) -> families.ModelConfig:
    """The model config a checkpoint was written with (its family named in it; none: BERT)."""
    return families.config_from_dict(meta["model_config"])


def shape_differences(saved: families.ModelConfig, current: families.ModelConfig) -> list[str]:
    """`field: saved -> current` for every shape-deciding field that differs (and the family itself)."""
    saved_family, current_family = families.family_of(saved).name, families.family_of(current).name
    if saved_family != current_family:
        return [f"model.family: checkpoint {saved_family} vs config {current_family}"]
    return [
        f"{name}: checkpoint {getattr(saved, name)} vs config {getattr(current, name)}"
        for name in SHAPE_FIELDS
        if hasattr(saved, name) and getattr(saved, name) != getattr(current, name)
    ]


def abstract_like(tree: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `tree`'s shapes with `shardings`: the restore target on the current mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _nbytes(tree: Any) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore` found: the arrays (placed as asked) and the step's metadata."""

    step: int
    params: Any
    opt_state: Any
    meta: dict[str, Any]


class Checkpointer:
    """Saves and restores a job's train state; see the module docstring for the layout and guarantees.

    Every process of a multi-host job must make the same calls (orbax coordinates them).
    """

    def __init__(
        self,
        directory: str,
        *,
        save_every_steps: int,
        max_to_keep: int = 3,
        async_save: bool = True,
        timeout_seconds: int = 600,
        remove_unfinished: bool = True,
    ) -> None:
        if save_every_steps < 1:
            raise CheckpointError(f"checkpoint_every_steps must be >= 1, got {save_every_steps}.")
        if max_to_keep < 1:
            raise CheckpointError(f"max_checkpoints_to_keep must be >= 1, got {max_to_keep}.")
        if timeout_seconds < 1:
            raise CheckpointError(f"checkpoint_timeout_seconds must be >= 1, got {timeout_seconds}.")
        self.directory = storage.absolute(directory)
        self._options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every_steps,
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            # An asynchronous save that is not committed in time fails (and is reported by the next save or
            # wait) instead of hanging in the storage client's retries.
            async_options=ocp.AsyncOptions(timeout_secs=timeout_seconds),
        )
        if remove_unfinished:  # a job's own directory; readers of another job's checkpoints pass False
            self._remove_unfinished_saves()
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)
        self._complete = self.latest_step()  # the newest step known to be published
        self._writing: int | None = None  # the step whose asynchronous save may still be running
        self._failed: CheckpointError | None = None

    def _remove_unfinished_saves(self) -> None:
        """Deletes the temporary directories of saves that were killed before publishing (never complete
        checkpoints). Done here, synchronously, rather than by orbax in a background thread, which a job
        failing right after start-up could outlive."""
        if jax.process_index() == 0:
            remote = storage.is_remote(self.directory)
            for name in storage.listdir(self.directory):
                path = storage.join(self.directory, name)
                unfinished = TMP_MARKER in name or (
                    remote and name.isdigit() and not storage.exists(storage.join(path, COMMIT_FILE))
                )
                if unfinished:
                    storage.rmtree(path)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("unfinished checkpoints removed")

    # ------------------------------------------------------------------------------------------------
    # Inspection

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """The params of `step` only (no optimizer state), placed as `abstract_params`' shardings say."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )
        return restored.params

    def read_tokenizer(self, step: int) -> dict[str, str]:
        restored = self._manager.restore(step, args=ocp.args.Composite(tokenizer=ocp.args.JsonRestore()))
        return dict(restored.tokenizer)

    # ------------------------------------------------------------------------------------------------
    # Saving

    def should_save(self, step: int) -> bool:
        """A periodic save step: a multiple of `save_every_steps`."""
        return step % self._options.save_interval_steps == 0

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any,
        meta: Mapping[str, Any],
        tokenizer: Mapping[str, str],
        *,
        force: bool = False,
    ) -> bool:
        """Starts writing the checkpoint of `step` (returns once the arrays are copied off the devices).

        Returns False when `step` is not a save step (and not `force`) or is already saved.
        """
        if step in self._manager.all_steps():
            return False
        if not force and not self.should_save(step):
            return False
        self._check_disk_space(params, opt_state)
        full_meta = {**meta, "step": int(step), "format_version": FORMAT_VERSION}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(full_meta),
            tokenizer=ocp.args.JsonSave(dict(tokenizer)),
        )
        if self._failed is not None:
            raise self._failed
        try:
            started = bool(self._manager.save(step, args=args, force=True))  # waits for the previous save first
        except Exception as e:
            if _is_disk_full(e):  # the synchronous part of this save ran out of space
                raise self._disk_full_error(step) from e
            raise self._write_error(e, self._writing if self._writing is not None else step) from e
        if self._writing is not None:
            self._complete = self._writing
        self._writing = step if started else self._writing
        return started

    def wait_until_finished(self) -> None:
        """Blocks until the last asynchronous save is written and published."""
        if self._failed is not None:
            raise self._failed
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            if _is_disk_full(e):
                raise self._disk_full_error(None) from e
            raise self._write_error(e, self._writing) from e
        if self._writing is not None:
            self._complete, self._writing = self._writing, None

    def close(self) -> None:
        """Waits for the last save and stops orbax's threads; a failed save raises once, not again here."""
        try:
            if self._failed is None:
                self.wait_until_finished()
        finally:
            try:
                self._manager.close()
            except Exception as e:  # its threads are stopping after a failed write: already reported
                logger.warning("Closing the checkpoint manager after a failed save: %s", e)

    def _write_error(self, error: BaseException, step: int | None) -> CheckpointError:
        """The one message for a save that could not be written; later saves are refused with it too."""
        which = f" of step {step}" if step is not None else ""
        kept = f"step {self._complete}" if self._complete is not None else "none yet"
        resume = f"it resumes from step {self._complete}" if self._complete is not None else "it starts afresh"
        if jax.process_count() > 1 and isinstance(error, jax.errors.JaxRuntimeError):
            cause = "another process of the job stopped or cannot be reached"  # a collective inside the save failed
            fix = "Check that every process is running (and the storage), then start all of them again"
        else:
            cause = "check the storage: network, credentials, quota"
            fix = "Fix it, then run the same command again"
        self._failed = CheckpointError(
            f"Writing the checkpoint{which} to {self.directory} failed ({type(error).__name__}: "
            f"{str(error)[:200]}; {cause}). The last complete checkpoint is {kept}, untouched. {fix}: {resume}."
        )
        return self._failed

    def _check_disk_space(self, params: Any, opt_state: Any) -> None:
        if storage.is_remote(self.directory):
            return  # buckets have no free-space figure to check against
        needed = _nbytes(params) + _nbytes(opt_state)
        needed = int(needed * _DISK_HEADROOM / max(1, jax.process_count())) + _DISK_SLACK_BYTES
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointError(
                f"Not enough disk space for a checkpoint in {self.directory}: about {needed / 1e6:.0f} MB needed, "
                f"{free / 1e6:.0f} MB free. Free some space or point --workdir at a larger disk, then run the same "
                f"command again; the earlier checkpoints ({self.steps() or 'none'}) are intact."
            )

    def _disk_full_error(self, step: int | None) -> CheckpointError:
        which = f" of step {step}" if step is not None else ""
        return CheckpointError(
            f"The disk filled up while writing the checkpoint{which} in {self.directory}. The incomplete write "
            f"is discarded; the earlier checkpoints ({self.steps() or 'none'}) are intact. Free some space or "
            "point --workdir at a larger disk, then run the same command again."
        )

    # ------------------------------------------------------------------------------------------------
    # Restoring

    def restore(
        self, abstract_params: Any, abstract_opt_state: Any | None, model_config: families.ModelConfig | None = None
    ) -> Restored | None:
        """The newest readable checkpoint, its arrays placed as the abstract targets' shardings say.

        `abstract_opt_state=None` restores the params only. With `model_config`, a checkpoint whose
        parameter shapes differ raises a `CheckpointError` naming the fields (before reading any array).
        An unreadable checkpoint is moved aside with a warning, and the one before it is tried.
        Returns None when there is no checkpoint at all.
        """
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # an unreadable metadata file: a damaged checkpoint
                self._set_aside(step, e)
                continue
            if model_config is not None:
                differences = shape_differences(model_config_from_meta(meta), model_config)
                if differences:
                    raise CheckpointError(
                        f"The checkpoint of step {step} in {self.directory} has another model shape than this "
                        f"config ({'; '.join(differences)}). Resume with the config it was written with, or "
                        "use a new --workdir (and --config.init_from to start from its weights)."
                    )
            items = {"params": ocp.args.StandardRestore(abstract_params)}
            if abstract_opt_state is not None:
                items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
                jax.block_until_ready(jax.tree.leaves((restored.params, restored.get("opt_state"))))
            except Exception as e:  # truncated or corrupted array files
                self._set_aside(step, e)
                continue
            return Restored(step, restored.params, restored.get("opt_state"), meta)
        return None

    def _set_aside(self, step: int, error: BaseException) -> None:
        """Moves an unreadable checkpoint into `corrupt/` (never deletes it), so training can continue."""
        source = storage.join(self.directory, str(step))
        target = storage.join(self.directory, CORRUPT_SUBDIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        message = (
            f"WARNING: the checkpoint of step {step} cannot be read ({type(error).__name__}: {str(error)[:300]}); "
            f"moved it to {target} and falling back to the previous checkpoint."
        )
        logger.warning(message)
        if jax.process_index() == 0:
            print(message, flush=True)
            if storage.exists(source):
                storage.move_tree(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self._manager.reload()


def host_shardings(tree: Any) -> Any:
    """Every leaf on this process's first device: the restore target for exports and warm starts."""
    device = SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda _: device, tree)
