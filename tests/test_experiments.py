"""The experiments/ configs: each loads as bert-jax-pretrain loads it and fits the job, model, optimizer and mesh.

Every check runs before anything compiles (parameter counts use jax.eval_shape), so this file is fast.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from bert_jax import sharding, tokenizers
from bert_jax.data import documents
from bert_jax.jobs import config as job_config
from bert_jax.models import configs
from bert_jax.models.bert import BertForPreTraining, init_params
from bert_jax.models.configs import ConfigError
from bert_jax.training import optim
from tests.conftest import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"
NAMES = ("bert_tiny", "bert_mini", "bert_base_phase1", "bert_base_phase2", "bert_large_lamb")
RECIPES = ("bert_base_phase1", "bert_base_phase2", "bert_large_lamb")
# Device counts each config is documented for (the large one's docstring lists its microbatch table).
DEVICE_COUNTS = {
    "bert_tiny": (1, 8),
    "bert_mini": (1, 8),
    "bert_base_phase1": (8, 256),
    "bert_base_phase2": (8, 256),
    "bert_large_lamb": (8, 64, 256, 2048),
}
# What the job reads (pretraining.train_and_evaluate and its helpers), beyond the optimizer fields.
JOB_KEYS = (
    "seed",
    "num_train_steps",
    "global_batch_size",
    "num_microbatches",
    "log_every_steps",
    "eval_every_steps",
    "eval_batches",
    "peak_flops_per_device",
    "export",
    "model.size",
    "model.dtype",
    "data.train_files",
    "data.vocab_file",
    "data.spm_model",
    "data.tokenizer_file",
    "data.corpus_dir",
    "data.text_field",
    "data.lowercase",
    "data.max_seq_length",
    "data.max_predictions_per_seq",
    "data.masked_lm_prob",
    "data.whole_word",
    "data.short_seq_prob",
    "data.dupe_factor",
    "data.eval_fraction",
    "data.corpus_seed",
    "data.num_shards",
    "optimizer.name",
    "optimizer.learning_rate",
    "optimizer.warmup_steps",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
)
OPTIMIZER_FIELDS = {f.name for f in dataclasses.fields(optim.OptimizerConfig)}  # total_steps: 0 = num_train_steps


def load(name: str, *overrides: str, path: str | None = None) -> ml_collections.ConfigDict:
    """The config as bert-jax-pretrain gets it: config_flags.DEFINE_config_file, locked, with flag overrides."""
    argv = ["bert-jax-pretrain", f"--config={path or EXPERIMENTS / f'{name}.py'}", *overrides]
    values = flags.FlagValues()
    # The override flags (--config.x=...) are registered from the command line the definition sees.
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys |= flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@functools.cache
def vocab_size(vocab_file: str, lowercase: bool) -> int:
    return tokenizers.load_tokenizer(vocab_file, None, lowercase).vocab_size


def model_config(config: ml_collections.ConfigDict) -> configs.BertConfig:
    """As the job builds it: the named size, the config's model overrides, the vocabulary's size."""
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "size"}
    return configs.named_config(
        config.model.size, vocab_size=vocab_size(config.data.vocab_file, config.data.lowercase), **overrides
    )


def optimizer_config(config: ml_collections.ConfigDict) -> optim.OptimizerConfig:
    return job_config.parse(config).optimizer


def mesh_config(config: ml_collections.ConfigDict) -> sharding.MeshConfig:
    return sharding.MeshConfig(**config.mesh.to_dict())


@pytest.fixture(scope="module")
def loaded() -> dict[str, ml_collections.ConfigDict]:
    return {name: load(name) for name in NAMES}


# ---------------------------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("name", NAMES)
def test_loads_from_any_directory_with_overrides(name, loaded, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    relative = load(name, "--config.seed=7", "--config.optimizer.learning_rate=0.5", path=f"experiments/{name}.py")
    assert relative.seed == 7 and relative.optimizer.learning_rate == 0.5
    monkeypatch.chdir(tmp_path)  # the configs built on a sibling file find it by their own path, not the cwd
    assert load(name).to_dict() == loaded[name].to_dict()


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.py")), ids=lambda p: p.stem)
def test_no_recipe_defaults_to_a_folder_beside_the_checkout(path):
    """Every experiments/ file, fine-tuning ones included: no default names ../shared (the tests' data, present
    only in the development setup) or any folder up from the config; a user's data is a setting they pass."""
    config = load(path.stem, path=str(path))

    def strings(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, str]:
        found = {}
        for key, value in config.items():
            if isinstance(value, ml_collections.ConfigDict):
                found |= strings(value, f"{prefix}{key}.")
            elif isinstance(value, str):
                found[f"{prefix}{key}"] = value
        return found

    outside = {
        key: value
        for key, value in strings(config).items()
        for part in value.replace("\\", "/").split("/")
        if part in ("shared", "..")
    }
    assert not outside, f"{path.name}: defaults outside the package: {outside}"


@pytest.mark.parametrize("name", NAMES)
def test_importlib_gives_the_same_config(name, loaded):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().to_dict() == loaded[name].to_dict()


# ---------------------------------------------------------------------------------------------------------------
# What the job builds from them


@pytest.mark.parametrize("name", NAMES)
def test_has_every_key_the_job_reads(name, loaded):
    config = loaded[name]
    keys = flat_keys(config)
    assert set(JOB_KEYS) <= keys, sorted(set(JOB_KEYS) - keys)
    assert flat_keys(loaded["bert_tiny"]) <= keys  # the demo's layout, which the end-to-end test runs
    unknown = set(config.optimizer.keys()) - OPTIMIZER_FIELDS
    assert not unknown, f"the job rejects unknown optimizer settings: {sorted(unknown)}"
    if name in RECIPES:  # the recipes spell out every optimizer field, so each can be overridden by flag
        assert set(config.optimizer.keys()) == OPTIMIZER_FIELDS


@pytest.mark.parametrize("name", NAMES)
def test_builds_a_valid_model_and_optimizer(name, loaded):
    config = loaded[name]
    model = model_config(config)
    optimizer = optimizer_config(config)
    assert optimizer.total_steps == config.num_train_steps
    assert model.vocab_size == 30522
    assert config.data.max_seq_length <= model.max_position_embeddings
    assert 0 < config.data.max_predictions_per_seq <= config.data.max_seq_length
    assert config.global_batch_size % config.num_microbatches == 0
    assert config.log_every_steps >= 1 and config.eval_every_steps >= 1


@pytest.mark.parametrize("name, devices", [(n, d) for n in NAMES for d in DEVICE_COUNTS[n]])
def test_parallelism_fits(name, devices, loaded):
    config = loaded[name]
    mesh = mesh_config(config)
    sharding.validate_parallelism(model_config(config), mesh, config.global_batch_size, devices)
    # Each microbatch must split evenly over the batch shards too (optim.split_microbatches keeps every
    # device busy on every microbatch only then).
    data, fsdp, _ = mesh.resolve(devices).mesh_shape
    assert (config.global_batch_size // config.num_microbatches) % (data * fsdp) == 0


def test_demo_configs_read_the_bundled_files(loaded):
    for name in ("bert_tiny", "bert_mini"):
        assert len(documents.expand_input_files(loaded[name].data.train_files)) == 3


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_need_the_users_corpus(name, loaded):
    config = loaded[name]
    assert config.data.train_files == "" and config.data.corpus_dir == ""
    with pytest.raises(documents.CorpusError, match="No input files given"):
        documents.expand_input_files(config.data.train_files)


# ---------------------------------------------------------------------------------------------------------------
# Published facts


def test_base_parameter_count_is_the_published_one(loaded):
    # BertForPreTraining, tied decoder (DESIGN.md). Large's 336,226,108 is checked on named_config("large") in
    # test_model.py; test_large_lamb_is_the_64k_phase_1 checks that this config is that model.
    config = model_config(loaded["bert_base_phase1"])

    def count(model_config) -> int:
        shapes = jax.eval_shape(lambda: init_params(BertForPreTraining(model_config), jax.random.key(0)))
        return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))

    assert count(config.replace(vocab_pad_multiple=1)) == 110_106_428
    # The recipe pads the 30,522 vocabulary rows to 30,592 (a multiple of 128): 70 more embedding rows and
    # output biases, which exports strip.
    assert config.padded_vocab_size == 30_592
    assert count(config) == 110_106_428 + 70 * (768 + 1)


def test_mini_is_l4_h256(loaded):
    model = model_config(loaded["bert_mini"])
    assert (model.num_hidden_layers, model.hidden_size, model.num_attention_heads) == (4, 256, 4)
    mini, tiny = loaded["bert_mini"], loaded["bert_tiny"]

    def tokens(config):
        return config.num_train_steps * config.global_batch_size * config.data.max_seq_length

    assert tokens(mini) > tokens(tiny)  # the bigger model also trains on more text


def test_base_phases_are_the_original_recipe(loaded):
    phase1, phase2 = loaded["bert_base_phase1"], loaded["bert_base_phase2"]
    # Devlin et al. 2019, A.2: 1M steps of 256 sequences, 90% at seq 128 and 10% at 512.
    assert phase1.num_train_steps + phase2.num_train_steps == 1_000_000
    assert phase1.num_train_steps == 900_000
    assert phase1.global_batch_size == phase2.global_batch_size == 256
    assert (phase1.data.max_seq_length, phase1.data.max_predictions_per_seq) == (128, 20)
    assert (phase2.data.max_seq_length, phase2.data.max_predictions_per_seq) == (512, 80)
    for config in (phase1, phase2):
        assert model_config(config) == configs.named_config("base", dtype=config.model.dtype, vocab_pad_multiple=128)
        assert config.data.masked_lm_prob == 0.15 and config.data.short_seq_prob == 0.1
        opt = optimizer_config(config)
        # google-research/bert optimization.py: AdamWeightDecayOptimizer (no bias correction), clip 1.0.
        assert (opt.name, opt.b1, opt.b2, opt.eps, opt.weight_decay) == ("adamw", 0.9, 0.999, 1e-6, 0.01)
        assert (opt.bias_correction, opt.clip_global_norm, opt.schedule) == (False, 1.0, "linear")
    assert optimizer_config(phase1).warmup_steps == 10_000


def test_base_phases_run_one_schedule_over_1m_steps(loaded):
    """Phase 1 then phase 2 follow the paper's single schedule: warmup 10k to 1e-4, linear decay to 0 at 1M."""
    phase1 = optim.learning_rate_schedule(optimizer_config(loaded["bert_base_phase1"]))
    phase2 = optim.learning_rate_schedule(optimizer_config(loaded["bert_base_phase2"]))

    def original(step: int) -> float:
        return 1e-4 * step / 10_000 if step < 10_000 else 1e-4 * (1 - step / 1_000_000)

    steps1 = [0, 5_000, 9_999, 10_000, 123_456, 450_000, 899_999, 900_000]
    steps2 = [0, 1, 50_000, 99_999, 100_000]
    got = np.concatenate([phase1(np.array(steps1)), phase2(np.array(steps2))])
    want = [original(s) for s in steps1] + [original(900_000 + s) for s in steps2]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_a_job_can_train_the_first_steps_of_a_longer_schedule(loaded):
    """optimizer.total_steps set apart from num_train_steps: the demo's first 500 updates at its 1,450-step rates."""
    config = loaded["bert_tiny"].copy_and_resolve_references()
    full = optim.learning_rate_schedule(optimizer_config(config))
    steps = np.array([0, 50, 100, 101, 300, 499])
    config.num_train_steps = 500
    shortened = optim.learning_rate_schedule(optimizer_config(config))
    assert float(shortened(300)) == pytest.approx(1e-3 * (1 - 300 / 500))  # 0: the schedule of num_train_steps
    config.optimizer.total_steps = 1450
    np.testing.assert_array_equal(optim.learning_rate_schedule(optimizer_config(config))(steps), full(steps))
    assert float(full(300)) == pytest.approx(1e-3 * (1 - 300 / 1450))
    config.optimizer.total_steps = 50  # shorter than the warmup
    with pytest.raises(ConfigError, match=r"warmup_steps \(100\) exceeds total_steps \(50\)"):
        optimizer_config(config)


def test_large_lamb_is_the_64k_phase_1(loaded):
    config = loaded["bert_large_lamb"]
    # 24 x 1024, 16 heads, bf16, vocabulary rows padded to a multiple of 128
    assert model_config(config) == configs.named_config("large", dtype="bfloat16", vocab_pad_multiple=128)
    assert config.global_batch_size == 65_536 and config.num_train_steps == 7_038
    assert (config.data.max_seq_length, config.data.max_predictions_per_seq) == (128, 20)
    opt = optimizer_config(config)
    assert (opt.name, opt.learning_rate, opt.warmup_steps) == ("lamb", 6e-3, 2_000)
    assert abs(0.2843 * 7_038 - opt.warmup_steps) < 1  # NVIDIA's warmup proportion, 2,000 steps in their TF script
    assert (opt.schedule, opt.power, opt.decay_from_warmup_end) == ("polynomial", 0.5, False)
    assert (opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.bias_correction) == (0.9, 0.999, 1e-6, 0.01, True)
    schedule = optim.learning_rate_schedule(opt)
    np.testing.assert_allclose(float(schedule(5_000)), 6e-3 * (1 - 5_000 / 7_038) ** 0.5, rtol=1e-5)
    # FSDP shards params and LAMB state; 32 sequences per device per microbatch on 256 devices.
    mesh = mesh_config(config)
    assert mesh.fsdp > 1 and mesh.tensor == 1
    assert config.global_batch_size // (256 * config.num_microbatches) == 32


# ---------------------------------------------------------------------------------------------------------------
# The modern family's recipes: ModernBERT's three phases (AnswerDotAI/ModernBERT's yamls/modernbert/*.yaml)

MODERN_PHASES = {  # model -> its phases, each warm-started from the one before
    "base": ("modernbert_base", "modernbert_base_context", "modernbert_base_decay"),
    "large": ("modernbert_large", "modernbert_large_context", "modernbert_large_decay"),
}
MODERN = tuple(name for phases in MODERN_PHASES.values() for name in phases)
# (sequences per step, tokens per sequence, the phase's tokens) of the reference's yamls (global_train_batch_size,
# max_seq_len, max_duration)
MODERN_TOKENS = {
    "modernbert_base": (4608, 1024, 1_719_000_000_000),
    "modernbert_base_context": (576, 8192, 250_000_000_000),
    "modernbert_base_decay": (576, 8192, 50_000_000_000),
    "modernbert_large": (4928, 1024, 1_719_000_000_000),
    "modernbert_large_context": (616, 8192, 250_000_000_000),
    "modernbert_large_decay": (624, 8192, 50_000_000_000),
}
# (lr, weight decay) of each phase (lr, weight_decay of the yamls' decoupled_stableadamw)
MODERN_RATES = {
    "modernbert_base": (8e-4, 1e-5),
    "modernbert_base_context": (3e-4, 1e-5),
    "modernbert_base_decay": (3e-4, 1e-5),
    "modernbert_large": (5e-4, 1e-5),
    "modernbert_large_context": (5e-5, 1e-6),
    "modernbert_large_decay": (5e-5, 1e-6),
}


@pytest.fixture(scope="module")
def modern() -> dict[str, job_config.PretrainConfig]:
    return {name: job_config.parse(load(name)) for name in MODERN}


def modern_model(job: job_config.PretrainConfig):
    return job.model.model_config(vocab_size=vocab_size(job.data.vocab_file, job.data.lowercase))


@pytest.mark.parametrize("name", MODERN)
def test_modern_recipes_load_parse_and_spell_out_every_setting(name, tmp_path, monkeypatch):
    config = load(name)
    keys = flat_keys(config)
    assert set(JOB_KEYS) <= keys, sorted(set(JOB_KEYS) - keys)
    assert set(config.optimizer.keys()) == OPTIMIZER_FIELDS  # each can be overridden by flag
    monkeypatch.chdir(tmp_path)  # siblings found by the file's own path
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().to_dict() == config.to_dict()
    job = job_config.parse(config)
    assert job.model.family == "modernbert" and job.nsp_loss_weight == 0.0
    assert job.data.train_files == "" and job.data.corpus_dir == ""  # the user's corpus
    again = job_config.parse(job.to_dict())  # round-trips (the placeholder's None included)
    assert dataclasses.replace(again, source=job.source) == job


@pytest.mark.parametrize("name", MODERN)
def test_modern_recipes_mask_30_percent_and_never_cap_the_draw(name, modern):
    data = modern[name].data
    assert (data.masked_lm_prob, data.whole_word) == (0.3, False)
    # masking.py draws round(0.3 x length) predictions per sequence (length with [CLS] and [SEP]): at most this
    # for a full sequence; the recipe's cap is the count rounded up: 308 of 1,024, 2,458 of 8,192.
    most = round(data.max_seq_length * data.masked_lm_prob)
    assert data.max_predictions_per_seq == math.ceil(data.max_seq_length * data.masked_lm_prob) >= most
    assert data.max_predictions_per_seq == {1024: 308, 8192: 2458}[data.max_seq_length]
    assert data.max_seq_length <= modern_model(modern[name]).max_position_embeddings


@pytest.mark.parametrize("name", MODERN)
def test_modern_recipes_are_the_references_numbers(name, modern):
    job = modern[name]
    model, opt = modern_model(job), job.optimizer
    size = "large" if "large" in name else "base"
    shape = {"base": (22, 768, 1152, 12), "large": (28, 1024, 2624, 16)}[size]
    assert (model.num_hidden_layers, model.hidden_size, model.intermediate_size, model.num_attention_heads) == shape
    assert (model.local_attention, model.global_attn_every_n_layers, model.norm_eps, model.norm_bias) == (
        128,
        3,
        1e-5,
        False,
    )
    long = job.data.max_seq_length == 8192
    assert (model.global_rope_theta, model.local_rope_theta) == ((160_000.0 if long else 10_000.0), 10_000.0)
    assert (model.dtype, model.attention_kernel) == ("bfloat16", "splash")
    assert (model.embedding_dropout, model.attention_dropout, model.mlp_dropout) == (0.0, 0.0, 0.0)
    # decoupled_stableadamw: betas (0.9, 0.98), eps 1e-6, weight decay scaled by the schedule, no clipping
    assert (opt.name, opt.b1, opt.b2, opt.eps) == ("stable_adamw", 0.9, 0.98, 1e-6)
    assert opt.fully_decoupled_weight_decay
    assert opt.clip_global_norm is None
    assert (opt.learning_rate, opt.weight_decay) == MODERN_RATES[name]
    sequences, length, tokens = MODERN_TOKENS[name]
    assert (job.global_batch_size, job.data.max_seq_length) == (sequences, length)
    assert abs(job.num_train_steps * sequences * length - tokens) <= sequences * length / 2  # the nearest step
    assert opt.total_steps == job.num_train_steps


def test_modern_schedules_are_the_references_three_phases(modern):
    """Phase 1: warmup over 3B (large: 2B) tokens, then constant; context: constant, no warmup; decay: 1-sqrt from
    the context's rate to 0.001 of it over the whole phase."""

    def rates(name, steps):
        return optim.learning_rate_schedule(modern[name].optimizer)(np.array(steps))

    for size, warmup_tokens in (("base", 3e9), ("large", 2e9)):
        first, middle, last = MODERN_PHASES[size]
        phase1, context, decay = modern[first], modern[middle], modern[last]
        peak, warmup, end = phase1.optimizer.learning_rate, phase1.optimizer.warmup_steps, phase1.num_train_steps
        step_tokens = phase1.global_batch_size * phase1.data.max_seq_length
        assert abs(warmup * step_tokens - warmup_tokens) <= step_tokens / 2
        want = [0.0, peak * (warmup // 2) / warmup, peak, peak, peak]
        np.testing.assert_allclose(rates(first, [0, warmup // 2, warmup, end - 1, end]), want, rtol=1e-6)
        low = context.optimizer.learning_rate
        assert context.optimizer.warmup_steps == 0
        np.testing.assert_allclose(rates(middle, [0, context.num_train_steps - 1]), [low, low], rtol=1e-6)
        assert decay.optimizer.learning_rate == low and decay.optimizer.warmup_steps == 0
        n = decay.num_train_steps
        assert (decay.optimizer.schedule, decay.optimizer.decay_shape, decay.optimizer.decay_steps) == (
            "wsd",
            "one_minus_sqrt",
            n,  # the whole phase decays
        )
        final = 0.001 * low  # alpha_f
        middle_rate = final + (low - final) * (1 - math.sqrt((n // 2) / n))  # 1-sqrt of the decay's fraction done
        np.testing.assert_allclose(rates(last, [0, n // 2, n]), [low, middle_rate, final], rtol=1e-5)
        if size == "base":  # base keeps 4,718,592 tokens per step through its three phases
            assert {job.global_batch_size * job.data.max_seq_length for job in (phase1, context, decay)} == {4_718_592}


@pytest.mark.parametrize("size", MODERN_PHASES)
def test_each_modern_phase_warm_starts_from_the_one_before(size, modern):
    """The init_from chain: a phase's weights initialize the next one whole (the same shape fields, the thetas being
    no parameters); shown at size tiny with the phases' other model settings, a real merge of the weights."""
    from bert_jax.models import convert, families
    from bert_jax.models.bert import init_params
    from bert_jax.training import checkpoint, warm_start

    for before, after in zip(MODERN_PHASES[size], MODERN_PHASES[size][1:], strict=False):
        source, target = modern_model(modern[before]), modern_model(modern[after])
        assert all(getattr(source, f) == getattr(target, f) for f in checkpoint.SHAPE_FIELDS if hasattr(source, f))
        assert modern[after].init_from == ""  # the user names the previous run's workdir
        small_source, small_target = source.replace(**TINY_SHAPE), target.replace(**TINY_SHAPE)
        model = families.family_of(small_source).pretraining_model
        params = init_params(model(small_source), jax.random.key(0))
        unpadded_config, unpadded = convert.unpad_vocab(small_source, jax.device_get(params))
        fresh = init_params(model(small_target), jax.random.key(1))
        merged = warm_start.merge(warm_start.Source("phase", unpadded_config, unpadded, {}), small_target, fresh)
        assert merged.kept_fresh == [] and merged.ignored == []
        _, merged_unpadded = convert.unpad_vocab(small_target, merged.params)  # padding rows: zeros, not the source's
        jax.tree.map(np.testing.assert_array_equal, merged_unpadded, unpadded)


TINY_SHAPE = {"num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 2}


def test_modern_recipes_turn_gradient_clipping_on_by_flag():
    """clip_global_norm is declared placeholder(float): None (no clipping, ModernBERT's) unless a flag sets it."""
    assert job_config.parse(load("modernbert_base")).optimizer.clip_global_norm is None
    clipped = job_config.parse(load("modernbert_base", "--config.optimizer.clip_global_norm=1.0"))
    assert clipped.optimizer.clip_global_norm == 1.0
    clipped = job_config.parse(load("modernbert_large_decay", "--config.optimizer.clip_global_norm=0.5"))
    assert clipped.optimizer.clip_global_norm == 0.5


@pytest.mark.parametrize("name", MODERN)
def test_modern_recipes_split_over_the_v5p_8_they_are_sized_for(name, modern):
    """Each microbatch splits over the 4 chips of a v5p-8 (and 8): the docstrings' rows per chip."""
    job = modern[name]
    rows_per_chip = {
        "modernbert_base": 64,
        "modernbert_base_context": 8,
        "modernbert_base_decay": 8,
        "modernbert_large": 28,
        "modernbert_large_context": 2,
        "modernbert_large_decay": 4,
    }[name]
    for devices in (4, 8):
        sharding.validate_parallelism(modern_model(job), job.mesh, job.global_batch_size, devices)
        data, fsdp, _ = job.mesh.resolve(devices).mesh_shape
        assert (job.global_batch_size // job.num_microbatches) % (data * fsdp) == 0
    assert job.global_batch_size // (4 * job.num_microbatches) == rows_per_chip
