"""One process of the multi-host test (`tests/test_multihost.py`): trains a few steps on each given mesh, prints JSON.

    python -m tests.multihost_worker --corpus=DIR --num_processes=2 --process_id=0 --local_devices=4 --port=PORT
    python -m tests.multihost_worker --corpus=DIR --num_processes=1 --local_devices=8      # the reference

With `--num_processes > 1` the process joins a `jax.distributed` job on 127.0.0.1:PORT (CPU collectives over
gloo), so every mesh spans the devices of all processes. Each process feeds only its own rows of every global
batch (`PretrainingBatches(process_index=..., process_count=...)` -> `global_batch_from_process_local`), exactly
as the pretraining job does, and prints one JSON line with, per mesh: the losses and gradient norms of every step,
a sha256 of every global batch (gathered to the host), and sums of squares of the initial and final params
(jitted reductions over the sharded params, replicated). `--layout` meshes are only built and described (device
ids and processes), `--feed` meshes only get a small batch from `global_batch_from_process_local` (its gathered
rows, or the error). Every process prints the same values; the test compares them with the one-process run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

MODEL = dict(
    hidden_size=64,
    num_hidden_layers=1,  # depth does not change what is checked; one layer shortens the (slow) compiles
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    hidden_dropout_prob=0.1,  # dropout on: its masks must not depend on how the devices are split
    attention_probs_dropout_prob=0.1,
)
MAX_SEQ_LENGTH = 64
MAX_PREDICTIONS = 10
GLOBAL_BATCH = 16
SEED = 0


def parse_mesh(text: str) -> dict[str, int]:
    """Parses "data=4,fsdp=2" into {"data": 4, "fsdp": 2}."""
    return {name: int(value) for name, value in (part.split("=") for part in text.split(","))}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a built corpus (bert_jax.data.corpus.build_corpus)")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--local_devices", type=int, required=True, help="simulated CPU devices in this process")
    parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (multi-process only)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mesh", action="append", required=True, help='e.g. "data=-1" or "data=4,fsdp=2"; repeat')
    parser.add_argument("--layout", action="append", default=[], help="a mesh to build and describe, not train on")
    parser.add_argument("--feed", action="append", default=[], help="a mesh to only feed a small batch to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    # The device count is read when the CPU backend starts: set it before jax is imported.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={args.local_devices}"])
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=600,
        )
    try:
        report = _train_on_meshes(args)
    finally:
        if args.num_processes > 1:
            jax.distributed.shutdown()
    print(json.dumps(report), flush=True)


def _train_on_meshes(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from bert_jax.data.corpus import corpus_metadata, masking_config_from_corpus, open_corpus
    from bert_jax.sharding import MeshConfig, make_mesh

    devices = jax.devices()
    report: dict[str, Any] = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "device_processes": [d.process_index for d in devices],
        "meshes": {},
    }
    vocab_size = int(corpus_metadata(args.corpus)["vocab_size"])
    masking = masking_config_from_corpus(args.corpus, MAX_PREDICTIONS)
    source = open_corpus(args.corpus, "train")
    report["train_instances"] = len(source)
    report["layouts"] = {text: _layout(make_mesh(MeshConfig(**parse_mesh(text)))) for text in args.layout}
    report["feeds"] = {text: _feed(make_mesh(MeshConfig(**parse_mesh(text)))) for text in args.feed}
    for text in args.mesh:
        start = time.perf_counter()
        report["meshes"][text] = _train(parse_mesh(text), vocab_size, masking, source, args.steps)
        report["meshes"][text]["seconds"] = round(time.perf_counter() - start, 1)
    return report


def _layout(mesh: Any) -> dict[str, Any]:
    """The mesh's shape, and its device ids and their processes laid out as in the mesh."""
    import numpy as np

    return {
        "mesh_shape": dict(mesh.shape),
        "mesh_device_ids": np.vectorize(lambda d: d.id)(mesh.devices).tolist(),
        "mesh_processes": np.vectorize(lambda d: d.process_index)(mesh.devices).tolist(),
    }


def _feed(mesh: Any) -> dict[str, Any]:
    """`global_batch_from_process_local` of 8 rows per process, [100 * p, 100 * p + 8): the gathered global rows,
    or the error."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from bert_jax.sharding import global_batch_from_process_local

    local = {"input_ids": np.arange(8, dtype=np.int32) + 100 * jax.process_index()}
    try:
        global_batch = global_batch_from_process_local(local, mesh)
    except ValueError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {"rows": multihost_utils.process_allgather(global_batch["input_ids"], tiled=True).tolist()}


def _train(mesh_sizes: dict[str, int], vocab_size: int, masking: Any, source: Any, steps: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    from bert_jax.data.pipeline import PipelineConfig, PretrainingBatches
    from bert_jax.models.bert import BertForPreTraining
    from bert_jax.models.configs import BertConfig
    from bert_jax.sharding import MeshConfig, global_batch_from_process_local, make_mesh, validate_parallelism
    from bert_jax.training import train
    from bert_jax.training.optim import OptimizerConfig, learning_rate_schedule, make_optimizer

    setup_start = time.perf_counter()
    config = BertConfig(vocab_size=vocab_size, **MODEL)
    mesh_config = MeshConfig(**mesh_sizes)
    validate_parallelism(config, mesh_config, GLOBAL_BATCH, jax.device_count())
    mesh = make_mesh(mesh_config)
    model = BertForPreTraining(config)
    # A high learning rate without warmup, so that the 4 updates move the params (and the losses) visibly.
    opt_config = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, total_steps=100)
    optimizer, schedule = make_optimizer(opt_config), learning_rate_schedule(opt_config)
    shardings = train.state_shardings(model, optimizer, mesh)
    state = train.create_train_state(model, optimizer, jax.random.key(SEED), shardings)
    step_fn = train.jit_train_step(
        train.make_train_step(model, optimizer, schedule, dropout_seed=SEED + 1), shardings, mesh
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    sum_of_squares = jax.jit(
        lambda params: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params)), out_shardings=replicated
    )

    result: dict[str, Any] = {
        **_layout(mesh),
        "init_sum_of_squares": float(sum_of_squares(state.params)),
        "losses": [],
        "mlm_losses": [],
        "grad_norms": [],
        "batch_sha256": [],
        "local_rows": None,
        "step_seconds": [],
        "setup_seconds": round(time.perf_counter() - setup_start, 1),
    }
    pipeline_config = PipelineConfig(global_batch_size=GLOBAL_BATCH, max_seq_length=MAX_SEQ_LENGTH, seed=SEED)
    topology = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    with PretrainingBatches(source, pipeline_config, masking, **topology) as batches:
        for _ in range(steps):
            local = next(batches)
            result["local_rows"] = int(local["input_ids"].shape[0])
            global_batch = global_batch_from_process_local(local, mesh)
            digest = hashlib.sha256()
            for key in sorted(global_batch):
                # Every process gathers the whole global batch; the same bytes as the one-process run's batch
                # mean the processes' rows were put together in the right order.
                digest.update(
                    np.ascontiguousarray(multihost_utils.process_allgather(global_batch[key], tiled=True)).tobytes()
                )
            result["batch_sha256"].append(digest.hexdigest())
            start = time.perf_counter()
            state, metrics = step_fn(state, global_batch)
            metrics = jax.device_get(metrics)
            result["step_seconds"].append(round(time.perf_counter() - start, 2))
            result["losses"].append(float(metrics["loss"]))
            result["mlm_losses"].append(float(metrics["mlm_loss"]))
            result["grad_norms"].append(float(metrics["grad_norm"]))
    result["step"] = int(state.step)
    result["final_sum_of_squares"] = float(sum_of_squares(state.params))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
