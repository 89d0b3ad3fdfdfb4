"""Train-step benchmark: the pretraining job's own jitted step, timed on synthetic or real batches.

    result = run_benchmark(config, BenchmarkOptions(steps=10, warmup=2))   # config: an experiments/*.py config
    print(format_table(result)); print(json.dumps(result))

What is timed is exactly what `pretraining.train_and_evaluate` runs: the same config checks (all before
anything compiles), the model, optimizer and schedule from the config, the train state created in its sharding,
`train.make_train_step` compiled by `train.jit_train_step` (explicit shardings, the state donated), and batches
placed with `sharding.global_batch_from_process_local`. The step is compiled ahead of time (`lower().compile()`)
so that the compile time is measured on its own and a timed step can never recompile (an input that does not
fit the compiled shapes is an error, not a silent recompilation). Then `warmup` untimed steps, then `steps`
timed ones, each ended by `block_until_ready` on the new state and the metrics.

Inputs:
- "synthetic" (default): one full-length batch of the real shapes, made once and kept on the devices, so no
  input work is timed: `[CLS] A [SEP] B [SEP]` with the split point drawn per row, random ids, masked by the
  pipeline's own `masking.mask_batch` (15% of the tokens, capped at `max_predictions_per_seq`; 80/10/10), random
  NSP labels. The same batches as ../shared/bench/peer_step_bench.py, so the numbers compare with its peers'.
- "pipeline": the job's input pipeline (`PretrainingBatches` over the built corpus, prefetching as in the job);
  a timed step then also includes waiting for the next batch and placing it on the devices
  (`input_ms_median` reports that part). With no `data.train_files` or `data.corpus_dir` in the config, the
  bundled corpus (bert_jax/assets/corpus) is used; the corpus is built into a temporary directory unless
  `corpus_workdir` names one to build into (or reuse).

Reported (all per step of `global_batch_size` sequences, from the median step time): sequences and non-pad
tokens per second, model TFLOP/s from `flops.training_flops_per_sequence` (the MFU numerator the job logs) and
MFU against the peak matmul FLOP/s per device in the compute dtype (`peak_flops`, else the config's
`peak_flops_per_device`, else measured with `flops.measure_matmul_peak` right after the timed steps), compile
time, peak host RSS, device memory (where `Device.memory_stats()` exists; None on CPU) and the compiled step's
own memory analysis, plus the configuration and versions. `foreign_cpu_share` and `peak_foreign_cpu_share` say
how much of the CPUs other processes took while the steps were timed and while the peak was measured: on a
shared machine, rerun when either is above 0.05. Nothing here reads absl flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import itertools
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from bert_jax import sharding
from bert_jax.data import corpus, pipeline
from bert_jax.data.masking import MaskingConfig, mask_batch, num_predictions
from bert_jax.errors import ConfigError
from bert_jax.harness import op_profile
from bert_jax.jobs import pretrain_plan, pretraining
from bert_jax.jobs.config import PretrainConfig
from bert_jax.launcher import host_memory
from bert_jax.models import flops
from bert_jax.training import train

INPUTS = ("synthetic", "pipeline")
BUNDLED_CORPUS = os.path.join(os.path.dirname(__file__), "assets", "corpus", "*.txt")
# The matmul size of the peak measurement (`flops.measure_matmul_peak`'s default is the CPU one): on an
# accelerator a 2048^3 matmul takes tens of microseconds, so dispatch would set its time and understate the peak.
PEAK_MATMUL_SIZE_CPU = 2048
PEAK_MATMUL_SIZE_ACCELERATOR = 8192

# Above this share of the CPUs taken by other processes while timing, the numbers are disturbed (the peer
# benchmark's threshold).
FOREIGN_CPU_WARNING = 0.05

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkOptions:
    """How to benchmark (the config says what): step counts, input, the MFU denominator, labels.

    `peak_flops`: FLOP/s per device for MFU; None takes the config's `peak_flops_per_device`, or measures it
    when that is 0. `corpus_workdir`: where `input="pipeline"` builds the corpus (as the job's workdir: into
    `corpus_workdir/corpus`, reused when already built with the same options); None: a temporary directory,
    removed afterwards. `config_name` labels the result (e.g. the config file's name). `profile_dir`: trace the
    timed steps with `jax.profiler` into this directory and add the per-op table (`op_profile.summarize`) to the
    result; the step times then include the tracing overhead. On a CPU, per-op events need
    `op_profile.enable_cpu_op_tracing()` before JAX starts (bert-jax-benchmark --profile_dir does that).
    """

    steps: int = 10
    warmup: int = 2
    input: str = "synthetic"
    peak_flops: float | None = None
    corpus_workdir: str | None = None
    config_name: str = "config"
    seed: int = 0
    profile_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer (timed steps), got {self.steps!r}.")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer (untimed steps), got {self.warmup!r}.")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {', '.join(INPUTS)}, got {self.input!r}.")
        if self.peak_flops is not None and not (math.isfinite(self.peak_flops) and self.peak_flops > 0):
            raise ValueError(f"peak_flops must be a positive FLOP/s per device, got {self.peak_flops!r}.")


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def synthetic_batch(
    global_batch_size: int, seq_length: int, masking: MaskingConfig, special_ids: Mapping[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
    """A full-length pretraining batch of random tokens, in the pipeline's format (`train.BATCH_KEYS`).

    Each row is `[CLS] A [SEP] B [SEP]` with the middle [SEP] drawn in [S/4, 3S/4) (segment ids 0 then 1) and
    ids drawn uniformly from the vocabulary minus the special tokens; the masks come from `mask_batch` (every
    piece a word, so `num_predictions(S)` = min(max_predictions, round(S * masked_lm_prob)) per row); the NSP
    labels are random. `special_ids` maps "[CLS]" and "[SEP]" to their ids. Deterministic in `seed`.
    """
    if seq_length < 5:
        raise ValueError(f"seq_length must be at least 5 for [CLS] A [SEP] B [SEP], got {seq_length}.")
    rng = np.random.default_rng(seed)
    cls_id, sep_id = int(special_ids["[CLS]"]), int(special_ids["[SEP]"])
    excluded = {*masking.replacement_exclusions, *(int(i) for i in special_ids.values())}
    ordinary = np.setdiff1d(np.arange(masking.vocab_size), np.array(sorted(excluded)))
    tokens = rng.choice(ordinary, size=(global_batch_size, seq_length)).astype(np.int32)
    tokens[:, 0] = cls_id
    tokens[:, -1] = sep_id
    middle = rng.integers(max(2, seq_length // 4), max(3, 3 * seq_length // 4), size=global_batch_size)
    rows = np.arange(global_batch_size)
    tokens[rows, middle] = sep_id
    token_type_ids = (np.arange(seq_length)[None, :] > middle[:, None]).astype(np.int32)
    lengths = np.full(global_batch_size, seq_length)
    masked = mask_batch(tokens, np.ones_like(tokens, bool), rows, masking, seed=seed, epoch=0, lengths=lengths)
    return {
        "input_ids": masked["input_ids"],
        "attention_mask": np.ones((global_batch_size, seq_length), np.int32),
        "token_type_ids": token_type_ids,
        "masked_lm_positions": masked["masked_lm_positions"],
        "masked_lm_ids": masked["masked_lm_ids"],
        "masked_lm_weights": masked["masked_lm_weights"],
        "next_sentence_labels": rng.integers(0, 2, size=global_batch_size).astype(np.int32),
    }


def _synthetic_masking(config: PretrainConfig, vocab_size: int, special: Mapping[str, int]) -> MaskingConfig:
    """The masking setup `corpus.masking_config_from_corpus` would give for this vocabulary and config."""
    return MaskingConfig(
        vocab_size=vocab_size,
        mask_id=special["[MASK]"],
        pad_id=special["[PAD]"],
        special_ids=(special["[PAD]"], special["[CLS]"], special["[SEP]"]),
        max_predictions=config.data.max_predictions_per_seq,
        masked_lm_prob=config.data.masked_lm_prob,
        whole_word=config.data.whole_word,
    )


def _process_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's rows of a global batch (process p of P takes the p-th of P equal slices, as the pipeline)."""
    count, index = jax.process_count(), jax.process_index()
    rows = len(next(iter(batch.values()))) // count
    return {k: v[index * rows : (index + 1) * rows] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (`getrusage` maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def device_memory_mb() -> dict[str, float | None]:
    """Peak and limit of device memory in MiB over the local devices, from `Device.memory_stats()`.

    Both None where the platform keeps no statistics (CPU).
    """
    stats = [s for s in (_memory_stats(d) for d in jax.local_devices()) if s]
    peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
    limits = [s["bytes_limit"] for s in stats if "bytes_limit" in s]
    return {
        "device_memory_peak_mb": max(peaks) / 2**20 if peaks else None,
        "device_memory_limit_mb": min(limits) / 2**20 if limits else None,
    }


def _memory_stats(device: Any) -> dict[str, Any] | None:
    try:
        return device.memory_stats()
    except (NotImplementedError, RuntimeError):
        return None


def _compiled_memory_mb(compiled: Any) -> dict[str, float] | None:
    """The compiled step's memory analysis per device in MiB (arguments, outputs, temporaries), or None."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if analysis is None:
        return None
    fields = ("argument", "output", "temp", "alias", "generated_code")
    return {name: getattr(analysis, f"{name}_size_in_bytes") / 2**20 for name in fields}


def _xla_flops(compiled: Any) -> float | None:
    """FLOPs of one step as XLA counts them (every op, elementwise included), or None where not available."""
    try:
        cost = compiled.cost_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    value = cost.get("flops") if isinstance(cost, Mapping) else None
    return float(value) if value is not None and value > 0 else None


class _ForeignCpu:
    """Share of the machine's CPU time that OTHER processes used while the timed steps ran (Linux only).

    Machine-wide busy time from /proc/stat minus this process's own CPU time, over wall time x cores, as
    peer_step_bench.py reports it: above ~0.05 the timings are disturbed and worth rerunning.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter(), self._machine_busy(), self._own_cpu()

    @staticmethod
    def _machine_busy() -> float | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                ticks = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def share(self) -> float | None:
        wall0, busy0, own0 = self.start
        wall, busy = time.perf_counter() - wall0, self._machine_busy()
        if busy0 is None or busy is None or wall <= 0:
            return None
        foreign = (busy - busy0) - (self._own_cpu() - own0)
        return max(0.0, foreign) / (wall * (os.cpu_count() or 1))


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for package in ("jaxlib", "flax", "optax"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def measure_peak_flops(dtype: str) -> float:
    """The matmul peak of the default device in `dtype` (`flops.measure_matmul_peak`, sized per platform)."""
    size = PEAK_MATMUL_SIZE_CPU if jax.default_backend() == "cpu" else PEAK_MATMUL_SIZE_ACCELERATOR
    return flops.measure_matmul_peak(dtype, size=size)


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


def run_benchmark(
    config: PretrainConfig,
    options: BenchmarkOptions | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Builds the job's train step for `config`, times it, and returns the measurements (see the module docstring).

    Every check the job makes (job settings, vocabulary, model and optimizer config, mesh and batch sizes) runs
    first and raises its `ConfigError` (a `ValueError`) before anything is compiled. `progress`
    receives one line per phase (default: none). The result is a JSON-serializable dict: scalars, plus the `mesh`
    axis sizes, `versions`, the per-step lists and `compiled_memory_mb` (None where XLA gives no analysis).
    """
    options = options or BenchmarkOptions()
    say = progress or (lambda _: None)
    # The job's own plan (the same checks, before anything compiles; the same model, mesh and steps).
    job = pretrain_plan.make_plan(config)
    model_config, optimizer_config, mesh = job.model_config, job.optimizer_config, job.mesh
    vocab_size = model_config.vocab_size
    data = config.data
    seq_length, max_predictions = data.max_seq_length, data.max_predictions_per_seq

    with contextlib.ExitStack() as cleanup:
        if options.input == "pipeline":
            inputs, masking, corpus_s = _pipeline_inputs(config, options, vocab_size, cleanup, say)
        else:
            special = pretrain_plan.vocabulary(config)[1]
            masking = _synthetic_masking(config, vocab_size, special)
            batch = synthetic_batch(config.global_batch_size, seq_length, masking, special, options.seed)
            inputs, corpus_s = itertools.repeat(_process_rows(batch)), None
        result = _time_train_step(job, inputs, options, say)

    # Throughput from the median step, as a steady-state rate.
    step_s = result["step_ms_median"] / 1e3
    flops_per_sequence = job.flops_per_sequence()
    sequences_per_sec = config.global_batch_size / step_s
    model_flops_per_sec = sequences_per_sec * flops_per_sequence
    rss = peak_rss_mb()  # before the peak measurement, which is not part of the job
    peak_foreign_cpu_share = None
    if options.peak_flops is not None:
        peak, peak_source = options.peak_flops, "flag"
    elif config.peak_flops_per_device:
        peak, peak_source = float(config.peak_flops_per_device), "config"
    else:
        say(f"Measuring the matmul peak ({model_config.dtype}) on {jax.devices()[0].device_kind}")
        contention = _ForeignCpu()
        peak, peak_source = measure_peak_flops(model_config.dtype), "measured"
        peak_foreign_cpu_share = contention.share()
    num_devices = len(jax.devices())
    synthetic_predictions = int(num_predictions(np.array([seq_length]), masking)[0])
    return {
        "config": options.config_name,
        "model_size": config.model.size,
        "num_params": result.pop("num_params"),
        "num_layers": model_config.num_hidden_layers,
        "hidden_size": model_config.hidden_size,
        "intermediate_size": model_config.intermediate_size,
        "vocab_size": model_config.vocab_size,
        "dtype": model_config.dtype,
        "optimizer": optimizer_config.name,
        "global_batch_size": config.global_batch_size,
        "num_microbatches": config.num_microbatches,
        "seq_length": seq_length,
        "max_predictions_per_seq": max_predictions,
        "masked_per_seq": synthetic_predictions if options.input == "synthetic" else None,
        "input": options.input,
        "mesh": {name: int(size) for name, size in mesh.shape.items()},
        "num_devices": num_devices,
        "process_count": jax.process_count(),
        "platform": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "warmup": options.warmup,
        "steps": options.steps,
        **result,
        "corpus_s": corpus_s,
        "sequences_per_sec": sequences_per_sec,
        "tokens_per_sec": result["nonpad_tokens_per_step"] / step_s,
        "flops_per_sequence": flops_per_sequence,
        "model_tflops_per_sec": model_flops_per_sec / 1e12,
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
        "peak_foreign_cpu_share": peak_foreign_cpu_share,
        "mfu": model_flops_per_sec / (peak * num_devices),
        "peak_rss_mb": rss,
        **device_memory_mb(),
        "host_cpus": os.cpu_count(),
        "versions": _versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_malloc_hugepages": host_memory.hugepage_malloc_active(),
        "transparent_hugepage_mode": host_memory.transparent_hugepage_mode(),
    }


def _pipeline_inputs(
    config: PretrainConfig,
    options: BenchmarkOptions,
    vocab_size: int,
    cleanup: contextlib.ExitStack,
    say: Progress,
) -> tuple[Iterator[dict[str, np.ndarray]], MaskingConfig, float]:
    """The job's batches for this process, its masking setup, and the seconds spent preparing the corpus.

    The corpus is `data.corpus_dir`, or built from `data.train_files` (the bundled corpus when neither is set)
    into `options.corpus_workdir`/corpus or a temporary directory; `cleanup` closes the pipeline and removes the
    temporary directory.
    """
    data = config.data
    if not (data.train_files or data.corpus_dir):
        config = config.replace_at({"data.train_files": BUNDLED_CORPUS})
        data = config.data
        say(f"No data.train_files or data.corpus_dir: using the bundled corpus {BUNDLED_CORPUS}")
    workdir = options.corpus_workdir or cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bert_jax_bench_"))
    say(f"Preparing the corpus in {workdir}")
    start = time.perf_counter()
    corpus_dir = pretraining.prepare_corpus(config, workdir)
    corpus_s = time.perf_counter() - start
    if int(corpus.corpus_metadata(corpus_dir)["vocab_size"]) != vocab_size:
        raise ConfigError(
            f"The corpus {corpus_dir} was built with another vocabulary than the config's tokenizer "
            "(data.vocab_file / data.spm_model / data.tokenizer_file)."
        )
    masking = corpus.masking_config_from_corpus(
        corpus_dir, data.max_predictions_per_seq, masked_lm_prob=data.masked_lm_prob, whole_word=data.whole_word
    )
    batches = pipeline.PretrainingBatches(
        corpus.open_corpus(corpus_dir, "train"),
        pipeline.PipelineConfig(
            global_batch_size=config.global_batch_size, max_seq_length=data.max_seq_length, seed=config.seed
        ),
        masking,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return cleanup.enter_context(batches), masking, corpus_s


def _time_train_step(
    job: pretrain_plan.PretrainPlan,
    inputs: Iterator[dict[str, np.ndarray]],
    options: BenchmarkOptions,
    say: Progress,
) -> dict[str, Any]:
    """Creates the job's state, compiles the job's step, runs the warmup and the timed steps; the timing fields."""
    config, mesh = job.config, job.mesh
    say(f"Creating the train state ({config.model.size}, {job.model_config.dtype}) on mesh {dict(mesh.shape)}")
    start = time.perf_counter()
    state = train.create_train_state(job.model, job.optimizer, jax.random.key(config.seed), job.shardings)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    train_step = job.train_step
    synthetic = options.input == "synthetic"

    def next_batch() -> tuple[dict[str, jax.Array], int]:
        local = next(inputs)
        tokens = int(local["attention_mask"].sum()) * jax.process_count()
        return sharding.global_batch_from_process_local(local, mesh), tokens

    batch, tokens = next_batch()
    say(f"Compiling the train step (global batch {config.global_batch_size} x seq {config.data.max_seq_length})")
    start = time.perf_counter()
    lowered = train_step.lower(state, batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    say(f"Warmup: {options.warmup} step(s)")
    warmup_ms = []
    for _ in range(options.warmup):
        begin = time.perf_counter()
        if not synthetic:
            batch, tokens = next_batch()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        warmup_ms.append((time.perf_counter() - begin) * 1e3)

    say(f"Timing {options.steps} step(s)" + (f", traced into {options.profile_dir}" if options.profile_dir else ""))
    step_ms, input_ms, token_counts, losses = [], [], [], []
    contention = _ForeignCpu()
    with _profiler_trace(options.profile_dir):
        for _ in range(options.steps):
            begin = time.perf_counter()
            if not synthetic:
                batch, tokens = next_batch()
                input_ms.append((time.perf_counter() - begin) * 1e3)
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            step_ms.append((time.perf_counter() - begin) * 1e3)
            token_counts.append(tokens)
            losses.append(float(metrics["loss"]))  # after the clock stopped
    foreign = contention.share()
    say(f"Median step {statistics.median(step_ms):.1f} ms")
    profile = None
    if options.profile_dir:
        profile = op_profile.summarize(options.profile_dir, compiled.as_text(), options.steps)
    return {
        "num_params": num_params,
        "init_s": init_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "warmup_ms": warmup_ms,
        "step_ms_median": statistics.median(step_ms),
        "step_ms_mean": statistics.fmean(step_ms),
        "step_ms_min": min(step_ms),
        "step_ms_max": max(step_ms),
        "step_ms_all": step_ms,
        "input_ms_median": statistics.median(input_ms) if input_ms else None,
        "nonpad_tokens_per_step": statistics.fmean(token_counts),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "xla_flops_per_step": _xla_flops(compiled),
        "compiled_memory_mb": _compiled_memory_mb(compiled),
        "foreign_cpu_share": foreign,
        "op_profile": profile,
    }


def _profiler_trace(profile_dir: str | None) -> contextlib.AbstractContextManager[Any]:
    """`jax.profiler.trace` into `profile_dir` (device and XLA events, no Python call tracing), or nothing."""
    if not profile_dir:
        return contextlib.nullcontext()
    profiler_options = jax.profiler.ProfileOptions()
    profiler_options.python_tracer_level = 0  # Python events would dwarf (and cap) the op events
    return jax.profiler.trace(profile_dir, create_perfetto_trace=True, profiler_options=profiler_options)


# ---------------------------------------------------------------------------------------------------------------
# Display


def format_table(result: Mapping[str, Any]) -> str:
    """A human-readable summary of `run_benchmark`'s result (the JSON line carries everything)."""
    mesh = " x ".join(f"{k}={v}" for k, v in result["mesh"].items())

    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f} MB"

    rows = [
        (
            "config",
            f"{result['config']} ({result['model_size']}, {result['num_params'] / 1e6:.1f}M params, {result['dtype']})",
        ),
        ("batch", f"{result['global_batch_size']} x seq {result['seq_length']} ({result['input']} input)"),
        ("mesh", f"{mesh} on {result['num_devices']} {result['device_kind']} device(s)"),
        ("compile", f"{result['compile_s']:.2f} s (lowering {result['lower_s']:.2f} s)"),
        (
            "step",
            f"{result['step_ms_median']:,.1f} ms median (min {result['step_ms_min']:,.1f}, "
            f"max {result['step_ms_max']:,.1f}; {result['steps']} steps)",
        ),
    ]
    if result["input_ms_median"] is not None:
        rows.append(("input wait", f"{result['input_ms_median']:,.2f} ms median (in the step time)"))
    rows += [
        ("sequences/s", f"{result['sequences_per_sec']:,.2f}"),
        ("tokens/s", f"{result['tokens_per_sec']:,.0f} (non-pad)"),
        ("model TFLOP/s", f"{result['model_tflops_per_sec']:.4g}"),
        (
            "MFU",
            f"{result['mfu']:.1%} (peak {result['peak_flops_per_device'] / 1e9:,.1f} GFLOP/s per device, "
            f"{result['peak_source']})",
        ),
        ("peak RSS", mb(result["peak_rss_mb"])),
        ("host malloc", "huge pages (glibc.malloc.hugetlb=1)" if result["host_malloc_hugepages"] else "4 KiB pages"),
        ("device memory", f"{mb(result['device_memory_peak_mb'])} peak of {mb(result['device_memory_limit_mb'])}"),
    ]
    for key, what in (("foreign_cpu_share", "the timed steps"), ("peak_foreign_cpu_share", "the peak measurement")):
        if (result[key] or 0.0) > FOREIGN_CPU_WARNING:
            rows.append(("WARNING", f"other processes used {result[key]:.0%} of the CPUs during {what}; rerun"))
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
    if result.get("op_profile"):
        table += "\n\n" + op_profile.format_op_table(result["op_profile"])
    return table
