"""The job config, typed: an `experiments/*.py` ConfigDict parsed once into frozen dataclasses.

    job = parse(config)                      # PretrainConfig or FinetuneConfig, as `config.job` says
    job = parse(config, expect="pretrain")   # what `bert-jax-pretrain` accepts (a config without `job` is one)
    smaller = job.replace_at({"model.remat_policy": "full", "num_microbatches": 4})

The ConfigDict stays the user's surface (`--config.x.y=...` overrides keep their names: every field here
has the name of its ConfigDict key, sections nest as they do there). Every default and every check of a
setting lives here and runs at parse time, before anything is read, built or compiled; a bad value ends in
one `ConfigError` line that names the setting and the fix. Past `parse`, nothing reads the ConfigDict: the
plans, the runner, the fit check and the compile tool take these dataclasses (and their sections the
modules that own them: `sharding.MeshConfig`, `optim.OptimizerConfig`, `structured_init.InitializationConfig`,
`tasks.SquadOptions`, `recipes.Recipe`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import ml_collections

from bert_jax.data import batch_workers
from bert_jax.errors import ConfigError
from bert_jax.finetune import recipes
from bert_jax.finetune.tasks import TASK_NAMES, SquadOptions
from bert_jax.models import families, structured_init
from bert_jax.sharding import MeshConfig
from bert_jax.training import optim

JobKind = Literal["pretrain", "finetune"]
JOB_KINDS = ("pretrain", "finetune")
FIT_MODES = ("check", "auto", "off")
DEFAULT_MAX_COMPILES = 6  # changes the fit check compiles at most when a program does not fit


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """`config.model`: a model family ("bert" by default, or "modernbert"), a named size of it, and the family's
    config fields set over it (`BertConfig`'s or `ModernBertConfig`'s).

    A fine-tuning recipe serves both families (`--config.model.family=modernbert` on experiments/glue_sst2.py), so
    its model section may also set another family's fields (the recipes set BERT's dropout): those are kept
    apart in `other_family`, unused, and the job names them when it starts. A field of no family is an error.
    """

    size: str
    overrides: tuple[tuple[str, Any], ...] = ()  # (field, value) pairs, sorted: hashable and picklable
    family: str = families.DEFAULT_FAMILY
    other_family: tuple[tuple[str, Any], ...] = ()  # fine-tuning: other families' fields, unused

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.overrides)

    def model_config(self, **fixed: Any) -> families.ModelConfig:
        """The named size with the overrides, and `fixed` (e.g. the vocabulary's size) over both."""
        return families.family(self.family).named_config(self.size, **{**self.fields, **fixed})

    def to_dict(self) -> dict[str, Any]:
        head = (
            {"size": self.size}
            if self.family == families.DEFAULT_FAMILY
            else {"family": self.family, "size": self.size}
        )
        return {**head, **self.fields, **dict(self.other_family)}


@dataclasses.dataclass(frozen=True)
class PretrainData:
    """`config.data` of a pretraining job: the text (or a built corpus), the tokenizer, the masking."""

    # A glob or comma list of text files, JSON Lines (*.jsonl, .gz, .zst), Parquet files, save_to_disk folders; or:
    train_files: str = ""
    corpus_dir: str = ""  # a corpus built with bert-jax-build-corpus (then train_files may be empty)
    text_field: str = "text"  # JSON Lines, Parquet and save_to_disk inputs: the field / column holding the text
    # The tokenizer: exactly one of these (none with corpus_dir: the corpus's vocabulary size and special ids).
    vocab_file: str = ""  # a WordPiece vocab.txt
    spm_model: str = ""  # a SentencePiece .model
    tokenizer_file: str = ""  # a Hugging Face tokenizer.json (e.g. ModernBERT's byte-level BPE)
    lowercase: bool = True  # WordPiece only: a SentencePiece model and a tokenizer.json normalize themselves
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    whole_word: bool = True
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    eval_fraction: float = 0.03
    corpus_seed: int = 12345
    num_shards: int = 4
    # Worker processes making the batches (and building the corpus): -1 = one per 4 host cores (none below 8
    # cores), 0 = a thread of the job, N = N processes. The batches are the same for any number.
    num_workers: int = -1


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """The settings both jobs share: seed, batch, loop intervals, checkpoints, warm start, cache, fit check."""

    seed: int = 0
    global_batch_size: int = 32
    num_microbatches: int = 1
    log_every_steps: int = 100
    eval_every_steps: int = 1000
    checkpoint_every_steps: int = 1000
    max_checkpoints_to_keep: int = 3
    # A save not published within this many seconds (a store that stopped answering) stops the job.
    checkpoint_timeout_seconds: float = 600
    # warm start: a workdir/checkpoint of ours, an export, or a Hugging Face BERT or ModernBERT directory
    init_from: str = ""
    compilation_cache_dir: str = ""  # "" = <workdir>/jax_cache, "off", or a directory
    fit: str = "check"  # "check": stop a job that does not fit; "auto": run the best change that fits; "off"
    fit_memory_gb: float = 0.0  # 0 = the device's own limit (CPUs report none: the check runs only if set)
    fit_max_compiles: int = DEFAULT_MAX_COMPILES
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig(CommonSettings):
    """A pretraining job (`bert-jax-pretrain`): masked LM (+ NSP) on a corpus built from text files."""

    job: Literal["pretrain"] = "pretrain"
    num_train_steps: int
    eval_batches: int = 0  # 0 = the whole validation split
    peak_flops_per_device: float = 0.0  # 0 = measure a matmul at start-up (the MFU denominator)
    export: bool = True
    nsp_loss_weight: float = 1.0  # the NSP loss's weight (1 = BERT's objective, 0 = the masked LM alone)
    model: ModelSettings
    data: PretrainData
    initialization: structured_init.InitializationConfig = dataclasses.field(
        default_factory=structured_init.InitializationConfig
    )
    optimizer: optim.OptimizerConfig  # total_steps resolved: `optimizer.total_steps` or num_train_steps
    optimizer_total_steps: int = 0  # as the config gave it (0 = num_train_steps), for `to_dict`
    source: str = "{}"  # the ConfigDict as given, JSON: what the checkpoints record as the job's config

    def replace_at(self, overrides: Mapping[str, Any]) -> PretrainConfig:
        return _replace_at(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig(CommonSettings):
    """A fine-tuning job (`bert-jax-finetune`): a task's head on a pretrained encoder."""

    job: Literal["finetune"] = "finetune"
    task: str
    data_dir: str = ""  # required by the job (not by the compile tool): the task's data: GLUE's root (<data_dir>/SST-2/train.tsv, ...), SQuAD's or CoNLL's folder
    eval_split: str = ""  # "" = the task's dev split
    vocab_file: str = ""  # a WordPiece vocab.txt; "" (and no tokenizer_file) = the tokenizer saved with init_from
    tokenizer_file: str = ""  # a Hugging Face tokenizer.json instead (at most one of the two)
    lowercase: bool = True  # WordPiece only
    max_seq_length: int = 128
    num_train_steps: int = 0  # 0 = num_epochs over the training split
    num_epochs: float = 3.0
    learning_rate: float = 2e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    recipe: recipes.Recipe = dataclasses.field(default_factory=lambda: recipes.RECIPES[recipes.DEFAULT_RECIPE])
    recipe_name: str = recipes.DEFAULT_RECIPE
    recipe_overrides: tuple[tuple[str, Any], ...] = ()  # the optimizer section's settings over the recipe's
    model: ModelSettings = dataclasses.field(default_factory=lambda: ModelSettings("base"))
    squad: SquadOptions | None = None
    source: str = "{}"

    def replace_at(self, overrides: Mapping[str, Any]) -> FinetuneConfig:
        return _replace_at(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def optimizer_config(self, total_steps: int) -> optim.OptimizerConfig:
        """AdamW over `total_steps` at the config's peak rate and weight decay, with its recipe's details."""
        return recipes.optimizer_config(
            self.recipe,
            learning_rate=self.learning_rate,
            warmup_fraction=self.warmup_fraction,
            weight_decay=self.weight_decay,
            total_steps=total_steps,
        )


JobConfig = PretrainConfig | FinetuneConfig


# ----------------------------------------------------------------------------------------------------------------
# Parsing


def _plain(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in config.items()}


def _section(values: dict[str, Any], name: str) -> dict[str, Any]:
    section = values.pop(name, None)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config.{name} must be a section (a ConfigDict), not {section!r}.")
    return dict(section)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_known(values: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown setting {where}{unknown[0]}"
            + (f" (and {', '.join(where + u for u in unknown[1:])})" if unknown[1:] else "")
            + f"; the {where.rstrip('.') or 'top level'} takes: {', '.join(sorted(known))}."
        )


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """`cls(**values)` with a one-line error for a missing required setting."""
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"The config has no {where}{missing[0]}: add it (experiments/ has a complete config of each job)."
        )
    return cls(**values)


def _model_settings(section: dict[str, Any], *, other_families: bool = False) -> ModelSettings:
    """The model section; `other_families`: other families' fields are set apart (a fine-tuning recipe's)."""
    model_family = families.family(section.pop("family", None) or families.DEFAULT_FAMILY)
    size = section.pop("size", None)
    if size is None:
        raise ConfigError("The config has no model.size: set one of " + ", ".join(model_family.sizes) + ".")
    own = _fields(model_family.config_class)
    apart: dict[str, Any] = {}
    if other_families:
        theirs = set().union(*(_fields(f.config_class) for f in families.FAMILIES.values())) - own
        apart = {name: section.pop(name) for name in sorted(set(section) & theirs)}
    _check_known(section, own, "model.")
    overrides = tuple(sorted((k, v) for k, v in section.items() if v is not None))
    other_family = tuple((k, v) for k, v in apart.items() if v is not None)
    settings = ModelSettings(str(size), overrides, model_family.name, other_family)
    settings.model_config()  # the size exists and every value is valid (the family's config checks them)
    return settings


def _mesh(section: dict[str, Any]) -> MeshConfig:
    _check_known(section, _fields(MeshConfig), "mesh.")
    return MeshConfig(**section)


def _common_checks(job: CommonSettings) -> None:
    if min(job.log_every_steps, job.eval_every_steps, job.checkpoint_every_steps) < 1:
        raise ConfigError("log_every_steps, eval_every_steps and checkpoint_every_steps must be >= 1.")
    if job.max_checkpoints_to_keep < 1:
        raise ConfigError(f"max_checkpoints_to_keep must be >= 1, got {job.max_checkpoints_to_keep}.")
    if job.global_batch_size < 1:
        raise ConfigError(f"global_batch_size must be >= 1, got {job.global_batch_size}.")
    if job.num_microbatches < 1 or job.global_batch_size % job.num_microbatches:
        raise ConfigError(
            f"global_batch_size={job.global_batch_size} is not divisible by num_microbatches={job.num_microbatches}."
        )
    if job.fit not in FIT_MODES:
        raise ConfigError(f"fit={job.fit!r} is unknown; use one of {', '.join(FIT_MODES)}.")
    if job.fit_memory_gb < 0 or job.fit_max_compiles < 0:
        raise ConfigError("fit_memory_gb and fit_max_compiles must be >= 0.")
    if job.checkpoint_timeout_seconds <= 0:
        raise ConfigError(f"checkpoint_timeout_seconds must be > 0, got {job.checkpoint_timeout_seconds}.")


TOKENIZER_SETTINGS = ("vocab_file", "spm_model", "tokenizer_file")


def tokenizer_settings(section: PretrainData | FinetuneConfig, names: tuple[str, ...], where: str) -> list[str]:
    """The tokenizer files `section` sets (non-empty) among `names`; a `ConfigError` when it sets more than one."""
    given = [name for name in names if getattr(section, name)]
    if len(given) > 1:
        both = "both" if len(given) == 2 else "all"
        clear = " ".join(f"--config.{where}{name}=''" for name in given[:-1])
        raise ConfigError(
            f"{' and '.join(where + name for name in given)} are {both} set, but a job takes exactly one tokenizer: "
            f"keep one, e.g. {clear} to use {where}{given[-1]}."
        )
    return given


def _parse_pretrain(values: dict[str, Any], source: str) -> PretrainConfig:
    model = _model_settings(_section(values, "model"))
    data_section = _section(values, "data")
    _check_known(data_section, _fields(PretrainData), "data.")
    data = PretrainData(**data_section)
    if not tokenizer_settings(data, TOKENIZER_SETTINGS, "data.") and not data.corpus_dir:
        raise ConfigError(
            "No tokenizer: set data.vocab_file (a WordPiece vocab.txt), data.spm_model (a SentencePiece .model) or "
            "data.tokenizer_file (a Hugging Face tokenizer.json), or data.corpus_dir to a corpus built with one."
        )
    if not isinstance(data.text_field, str) or not data.text_field:
        raise ConfigError(
            f"data.text_field={data.text_field!r}: name the field (JSON Lines) or column (Parquet, save_to_disk) that "
            "holds the text; the default is 'text'."
        )
    try:
        batch_workers.resolve_num_workers(data.num_workers)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    init_section = _section(values, "initialization")
    initialization = structured_init.initialization_config(init_section)
    optimizer_section = _section(values, "optimizer")
    mesh = _mesh(_section(values, "mesh"))
    _check_known(values, _fields(PretrainConfig) - {"optimizer_total_steps", "source"}, "")
    num_train_steps = values.get("num_train_steps")
    if num_train_steps is None:
        raise ConfigError("The config has no num_train_steps: add it (experiments/ has a complete config of each job).")
    if num_train_steps < 1:
        raise ConfigError(f"num_train_steps must be >= 1, got {num_train_steps}.")
    _check_known(optimizer_section, _fields(optim.OptimizerConfig), "optimizer.")
    total_steps = int(optimizer_section.pop("total_steps", 0) or 0)
    optimizer = optim.OptimizerConfig(total_steps=total_steps or int(num_train_steps), **optimizer_section)
    job = _build(
        PretrainConfig,
        {
            **values,
            "model": model,
            "data": data,
            "initialization": initialization,
            "optimizer": optimizer,
            "optimizer_total_steps": total_steps,
            "mesh": mesh,
            "source": source,
        },
        "",
    )
    _common_checks(job)
    if not 0.0 <= job.nsp_loss_weight <= 100.0:
        raise ConfigError(
            f"nsp_loss_weight must be in [0, 100], got {job.nsp_loss_weight}: 1 is BERT's objective (MLM + NSP), "
            "0 trains the masked LM alone."
        )
    model_family = families.family(model.family)
    if not model_family.has_next_sentence_head and job.nsp_loss_weight != 0:
        raise ConfigError(
            f"model.family={model.family!r} has no next-sentence head (it is trained by the masked LM alone): "
            "set nsp_loss_weight=0."
        )
    if model.family != families.DEFAULT_FAMILY and not initialization.is_default:
        raise ConfigError(
            f"config.initialization is BERT's structured start; model.family={model.family!r} starts from its own "
            "initialization: remove the initialization section."
        )
    if model.family == families.DEFAULT_FAMILY:
        initialization.check_model(model.model_config(), data.max_seq_length)
    return job


def _parse_finetune(values: dict[str, Any], source: str) -> FinetuneConfig:
    model = _model_settings(_section(values, "model"), other_families=True)
    mesh = _mesh(_section(values, "mesh"))
    block = _section(values, "optimizer")
    recipe_name = block.pop("recipe", recipes.DEFAULT_RECIPE)
    recipe_overrides = {k: v for k, v in block.items() if v is not None}
    recipe = recipes.resolve(recipe_name, block)
    squad_section = values.pop("squad", None)
    squad = None
    if squad_section:
        squad_section = dict(squad_section)
        _check_known(squad_section, _fields(SquadOptions), "squad.")
        squad = SquadOptions(**squad_section)
    _check_known(values, _fields(FinetuneConfig) - {"recipe", "recipe_name", "recipe_overrides", "source"}, "")
    task = values.get("task")
    if task not in TASK_NAMES:
        raise ConfigError(f"task={task!r} is unknown; use one of {', '.join(TASK_NAMES)}.")
    job = _build(
        FinetuneConfig,
        {
            **values,
            "model": model,
            "mesh": mesh,
            "recipe": recipe,
            "recipe_name": recipe_name,
            "recipe_overrides": tuple(sorted(recipe_overrides.items())),
            "squad": squad,
            "source": source,
        },
        "",
    )
    _common_checks(job)
    tokenizer_settings(job, ("vocab_file", "tokenizer_file"), "")
    if job.num_train_steps < 0 or job.num_epochs < 0 or not (job.num_train_steps or job.num_epochs):
        raise ConfigError("Set num_train_steps or num_epochs to a positive value.")
    if not 0.0 <= job.warmup_fraction <= 1.0:
        raise ConfigError(f"warmup_fraction must be in [0, 1], got {job.warmup_fraction}.")
    job.optimizer_config(total_steps=1)  # the optimizer's own checks
    return job


def parse(config: ml_collections.ConfigDict | Mapping[str, Any], expect: JobKind | None = None) -> JobConfig:
    """The typed job config of `config`. `config.job` says which job it is ("pretrain" or "finetune"); a config
    without it is the `expect`ed job. Raises `ConfigError` (one line, naming the setting and the fix)."""
    values = _plain(config)
    try:
        source = (
            config.to_json_best_effort(sort_keys=True)
            if isinstance(config, ml_collections.ConfigDict)
            else json.dumps(values, sort_keys=True, default=str)
        )
    except (TypeError, ValueError):
        source = json.dumps(values, sort_keys=True, default=str)
    kind = values.get("job") or expect
    if kind is None:
        raise ConfigError("The config does not say which job it is: set config.job = 'pretrain' or 'finetune'.")
    if kind not in JOB_KINDS:
        raise ConfigError(f"job={kind!r} is unknown; use 'pretrain' or 'finetune'.")
    if expect is not None and kind != expect:
        tool = {"pretrain": "bert-jax-pretrain", "finetune": "bert-jax-finetune"}[kind]
        raise ConfigError(f"This is a {kind} config (job={kind!r}); run it with {tool}.")
    values["job"] = kind
    return _parse_pretrain(values, source) if kind == "pretrain" else _parse_finetune(values, source)


# ----------------------------------------------------------------------------------------------------------------
# Back to plain values: overrides re-parsed, so every check runs again


def _to_dict(job: JobConfig) -> dict[str, Any]:
    """The job as the nested dict of ConfigDict keys it was parsed from (resolved defaults included)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(job):
        value = getattr(job, field.name)
        if field.name in ("source", "optimizer_total_steps", "recipe", "recipe_name", "recipe_overrides"):
            continue
        if isinstance(value, ModelSettings):
            out[field.name] = value.to_dict()
        elif isinstance(value, optim.OptimizerConfig):
            section = dataclasses.asdict(value)
            section["total_steps"] = getattr(job, "optimizer_total_steps", 0)
            out[field.name] = section
        elif dataclasses.is_dataclass(value):
            out[field.name] = dataclasses.asdict(value)
        else:
            out[field.name] = value
    if isinstance(job, FinetuneConfig):
        out["optimizer"] = {"recipe": job.recipe_name, **dict(job.recipe_overrides)}
        if job.squad is None:
            out.pop("squad")
    return out


def _replace_at(job: JobConfig, overrides: Mapping[str, Any]) -> Any:
    """`job` with settings replaced by dotted name (as the command line's `--config.a.b=v`), checked again."""
    values = _to_dict(job)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        target = values
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = value
    replaced = parse(values, expect=job.job)
    return dataclasses.replace(replaced, source=job.source)


def record(job: JobConfig) -> dict[str, Any]:
    """The config as the user gave it, for checkpoints and exports (`job_config` in their metadata)."""
    return json.loads(job.source)


def optimizer_block() -> ml_collections.ConfigDict:
    """The `optimizer` section of the fine-tuning configs: the default recipe, every override unset (None)."""
    block = ml_collections.ConfigDict()
    block.recipe = recipes.DEFAULT_RECIPE
    block.bias_correction = ml_collections.config_dict.placeholder(bool)
    block.decay_from_warmup_end = ml_collections.config_dict.placeholder(bool)
    for name in ("eps", "b1", "b2"):
        block[name] = ml_collections.config_dict.placeholder(float)
    return block


def steps_per_epoch(job: FinetuneConfig, num_examples: int) -> tuple[int, int]:
    """(total train steps, steps per epoch) of a fine-tuning job over a training split of `num_examples` rows."""
    per_epoch = num_examples // job.global_batch_size
    if per_epoch < 1:
        raise ConfigError(
            f"The training split has {num_examples} examples, fewer than global_batch_size={job.global_batch_size}."
        )
    total = job.num_train_steps or math.ceil(job.num_epochs * per_epoch)
    if total < 1:
        raise ConfigError("Set num_train_steps or num_epochs to a positive value.")
    return total, per_epoch
