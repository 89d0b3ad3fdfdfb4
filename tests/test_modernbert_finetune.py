"""Fine-tuning the modern family: its task models against transformers', the warm start and the job.

- The task models (`finetune.heads.ModernBertFor{SequenceClassification,TokenClassification,QuestionAnswering}`)
  against transformers' on the same weights: random weights with every parameter moved far from its default,
  padded rows, sequences longer than the local window, both poolings, regression: logits within 1e-4 of the
  logit scale (eager attention, the reference). The parameter table converts every task model both ways.
- The new classifier starts as transformers' `_init_weights` (truncated normal, std hidden_size ** -0.5, zero bias).
- A transformers ModernBERT masked-LM directory (`save_pretrained`, random weights) warm-starts the fine-tuning
  job's model: the encoder and the head equal the source's, only the classifier is new; the job runs from it on
  the command line with experiments/glue_sst2.py and `--config.model.family=modernbert`.
- The GLUE table's torch side decays what `transformers.Trainer` decays, and that is our decay mask.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bert_jax.finetune import heads
from bert_jax.finetune.tasks import make_task
from bert_jax.jobs import config as job_config
from bert_jax.jobs import finetune_plan
from bert_jax.models import modernbert_convert
from bert_jax.models.bert import init_params
from bert_jax.models.modernbert import classifier_std, output_std
from bert_jax.models.modernbert_config import ModernBertConfig
from bert_jax.training import optim, warm_start
from tests.conftest import REPO_ROOT
from tests.hf_reference import max_relative_error
from tests.test_modernbert import CONFIGS, SPECIAL

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = REPO_ROOT / "bert_jax" / "assets" / "vocab.txt"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

# kind -> (transformers' class, ours, num_labels)
KINDS = {
    "sequence": ("ModernBertForSequenceClassification", heads.ModernBertForSequenceClassification, 3),
    "regression": ("ModernBertForSequenceClassification", heads.ModernBertForSequenceClassification, 1),
    "token": ("ModernBertForTokenClassification", heads.ModernBertForTokenClassification, 9),
    "qa": ("ModernBertForQuestionAnswering", heads.ModernBertForQuestionAnswering, 2),
}
CASES = [
    ("sequence", "cls"),
    ("sequence", "mean"),
    ("regression", "cls"),
    ("regression", "mean"),
    ("token", "cls"),
    ("qa", "cls"),
]


def _hf_task_model(kind: str, fields: dict, pooling: str, seed: int = 0):
    """transformers' task model (eager attention) with every parameter moved away from its initial value."""
    class_name, _, labels = KINDS[kind]
    config = transformers.ModernBertConfig(
        **fields, **SPECIAL, classifier_pooling=pooling, num_labels=labels, attn_implementation="eager"
    )
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.3 if "norm" in name else 0.1))
    return model


def _batch(vocab: int, rows: int = 3, length: int = 37, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded rows: one full, one padded past the local window, one shorter than the window."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(rows, length))
    lengths = np.linspace(length, 4, rows).astype(int)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def _reference_logits(kind: str, model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if kind == "qa":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], axis=-1)
    return out.logits.numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kind, pooling", CASES)
def test_task_logits_equal_transformers(name, kind, pooling):
    fields = CONFIGS[name]
    reference = _hf_task_model(kind, fields, pooling)
    _, ours_class, labels = KINDS[kind]
    config = ModernBertConfig(**fields, **SPECIAL, classifier_pooling=pooling, classifier_dropout=0.2)
    state = {key: value.detach().numpy() for key, value in reference.state_dict().items()}
    params = modernbert_convert.from_hf_state(state, config, num_labels=labels)
    assert set(params) == {"model", "head", "classifier"}
    ids, mask = _batch(fields["vocab_size"])  # 37 tokens > both configs' local windows (10 and 6)
    model = ours_class(config) if kind == "qa" else ours_class(config, labels)
    got = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))
    want = _reference_logits(kind, reference, ids, mask)
    assert got.shape == want.shape
    if kind in ("token", "qa"):  # padding positions' outputs are not defined by either model
        real = mask.astype(bool)
        if kind == "qa":
            assert (got[~real] < -1e30).all()  # no span starts or ends in padding
        got, want = got[real], want[real]
    error = max_relative_error(got, want)
    print(f"{name} {kind} {pooling}: max |ours - transformers| / logit scale = {error:.2e}")
    assert error < 1e-4
    if kind == "sequence":  # the other pooling is far off: the test can fail
        other = "mean" if pooling == "cls" else "cls"
        wrong = ours_class(config.replace(classifier_pooling=other), labels).apply({"params": params}, ids, mask)
        assert max_relative_error(wrong, want) > 1e-2
    # the conversion table runs both ways
    back = modernbert_convert.to_hf_state(params, config, num_labels=labels)
    assert set(back) == set(state) - {"decoder.weight"}
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_classifier_dropout_is_active_only_in_training():
    fields = CONFIGS["modern"]
    config = ModernBertConfig(**fields, **SPECIAL, classifier_dropout=0.5)
    model = heads.ModernBertForSequenceClassification(config, 3)
    ids, mask = _batch(fields["vocab_size"])
    params = init_params(model, jax.random.key(0))
    evaluated = model.apply({"params": params}, ids, mask)
    again = model.apply({"params": params}, ids, mask, deterministic=True)
    trained = model.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(evaluated, again)
    assert np.abs(np.asarray(trained) - np.asarray(evaluated)).max() > 1e-3


def test_the_new_classifier_starts_as_transformers_init_weights():
    """Kernel: a normal of std hidden_size ** -0.5 cut at initializer_cutoff_factor (2) std; bias zero; the head's
    dense layer as the masked LM's (std initializer_range / sqrt(2 * layers))."""
    config = ModernBertConfig(
        vocab_size=300, hidden_size=256, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **SPECIAL
    )
    model = make_task("conll_ner").model(config)  # 9 labels: 2,304 kernel values
    assert isinstance(model, heads.ModernBertForTokenClassification)
    params = jax.tree_util.tree_map(np.asarray, init_params(model, jax.random.key(0)))
    assert set(params) == {"model", "head", "classifier"}
    truncated = np.sqrt(1 - 4 * np.exp(-2) / np.sqrt(2 * np.pi) / 0.954500)  # std of a normal cut at +-2
    for array, std in (
        (params["classifier"]["kernel"], classifier_std(config)),
        (params["head"]["dense"]["kernel"], output_std(config)),
    ):
        assert np.abs(array).max() <= 2 * std * (1 + 1e-6)
        assert abs(array.std() / (std * truncated) - 1) < 0.05
    assert classifier_std(config) == pytest.approx(1 / 16)
    assert np.all(params["classifier"]["bias"] == 0) and params["classifier"]["bias"].shape == (9,)
    assert np.all(params["head"]["norm"]["scale"] == 1)


def test_tasks_pick_the_model_of_the_family():
    modern = ModernBertConfig(**CONFIGS["modern"], **SPECIAL)
    assert isinstance(make_task("glue_sst2").model(modern), heads.ModernBertForSequenceClassification)
    assert make_task("glue_stsb").model(modern).num_labels == 1
    assert isinstance(make_task("conll_ner").model(modern), heads.ModernBertForTokenClassification)
    assert isinstance(make_task("squad").model(modern), heads.ModernBertForQuestionAnswering)
    from bert_jax.models.configs import named_config

    bert = named_config("tiny", vocab_size=100)
    assert isinstance(make_task("glue_sst2").model(bert, "normal"), heads.BertForSequenceClassification)
    assert make_task("glue_sst2").model(bert, "normal").head_init == "normal"


# ------------------------------------------------------------------------------------------------------------
# The warm start from a transformers masked-LM directory, and the job


def _vocab_size() -> int:
    with open(VOCAB, encoding="utf-8") as f:
        return sum(1 for _ in f)


MLM_FIELDS = dict(
    hidden_size=32,
    intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=2,
    local_attention=8,
    global_attn_every_n_layers=2,
    max_position_embeddings=128,
    pad_token_id=0,
    cls_token_id=101,
    sep_token_id=102,
    bos_token_id=101,
    eos_token_id=102,
)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> str:
    """A transformers `ModernBertForMaskedLM` (random weights, every parameter moved) saved with `save_pretrained`,
    the bundled vocab.txt beside it."""
    directory = tmp_path_factory.mktemp("modernbert_mlm")
    config = transformers.ModernBertConfig(vocab_size=_vocab_size(), **MLM_FIELDS)
    torch.manual_seed(0)
    model = transformers.ModernBertForMaskedLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.3 if "norm" in name else 0.1))
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_bytes(VOCAB.read_bytes())
    return str(directory)


def _sst2_job(**overrides) -> job_config.FinetuneConfig:
    config = runpy.run_path(str(REPO_ROOT / "experiments" / "glue_sst2.py"))["get_config"]()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        section[leaf] = value
    return job_config.parse(config, expect="finetune")


def test_a_transformers_masked_lm_directory_warm_starts_the_task_model(mlm_dir):
    from safetensors.numpy import load_file

    job = _sst2_job(**{"model.family": "modernbert", "init_from": mlm_dir, "max_seq_length": 32})
    model_config, tokenizer, source, files = finetune_plan.model_and_tokenizer(job)
    assert isinstance(model_config, ModernBertConfig) and "vocab.txt" in files
    assert tokenizer.vocab_size == model_config.vocab_size == _vocab_size()
    plan = finetune_plan.make_finetune_plan(job, finetune_plan.task_of(job), model_config, 10, jax.devices()[:1])
    assert isinstance(plan.model, heads.ModernBertForSequenceClassification)
    fresh = init_params(plan.model, jax.random.key(0))
    start = warm_start.merge(source, plan.model_config, fresh)
    assert start.kept_fresh == ["classifier/bias", "classifier/kernel"]
    assert start.ignored == ["decoder_bias"]  # the masked LM's own
    # every encoder and head parameter is the source's, exactly
    state = load_file(os.path.join(mlm_dir, "model.safetensors"))
    expected = modernbert_convert.from_hf_state(state, model_config.replace(vocab_pad_multiple=1))
    flat = traverse_util.flatten_dict(start.params)
    vocab = model_config.vocab_size
    for path, value in traverse_util.flatten_dict(expected).items():
        if path == ("decoder_bias",):
            continue
        ours = np.asarray(flat[path])
        if path == modernbert_convert.entry_path_embeddings():
            assert not ours[vocab:].any()  # the vocabulary padding rows of the job's mesh (if any)
            ours = ours[:vocab]
        np.testing.assert_array_equal(ours, value, err_msg="/".join(path))
    assert set(start.params) == {"model", "head", "classifier"}


def test_the_recipe_serves_both_families():
    """experiments/glue_sst2.py with model.family=modernbert: BERT's dropout settings are set apart (the job names
    them), the modern family's pooling and classifier dropout apply; round-trips like every config."""
    job = _sst2_job(**{"model.family": "modernbert", "model.classifier_pooling": "mean"})
    assert job.model.family == "modernbert"
    assert job.model.fields == {
        "attention_kernel": "xla",
        "classifier_pooling": "mean",
        "dtype": "float32",
        "remat_policy": "none",
    }
    assert dict(job.model.other_family) == {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    assert job_config.parse(job.to_dict(), expect="finetune").model == job.model
    bert = _sst2_job()
    assert bert.model.family == "bert" and bert.model.other_family == ()  # the modern keys are unset (None)
    assert bert.model.fields == {
        "attention_kernel": "xla",
        "attention_probs_dropout_prob": 0.1,
        "dtype": "float32",
        "hidden_dropout_prob": 0.1,
        "remat_policy": "none",
    }
    from bert_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Unknown setting model\.classifier_pooler"):
        _sst2_job(**{"model.family": "modernbert"}).replace_at({"model.classifier_pooler": "mean"})


def test_without_init_from_the_modern_model_takes_the_vocabulary_special_ids():
    job = _sst2_job(**{"model.family": "modernbert", "model.size": "tiny", "vocab_file": str(VOCAB)})
    model_config, tokenizer, source, _ = finetune_plan.model_and_tokenizer(job)
    assert source is None and isinstance(model_config, ModernBertConfig)
    assert model_config.vocab_size == tokenizer.vocab_size == _vocab_size()
    ids = (model_config.pad_token_id, model_config.cls_token_id, model_config.sep_token_id)
    assert ids == (0, 101, 102)  # [PAD], [CLS], [SEP] of the bundled vocabulary
    assert (model_config.bos_token_id, model_config.eos_token_id) == (101, 102)


def test_a_modern_source_for_a_bert_job_is_one_line_naming_the_family(mlm_dir):
    job = _sst2_job(init_from=mlm_dir)
    with pytest.raises(warm_start.WarmStartError, match=r"set model\.family='modernbert'") as raised:
        finetune_plan.model_and_tokenizer(job)
    assert "\n" not in str(raised.value)


def _write_sst2(root) -> str:
    """A small SST-2 folder (GLUE's layout): 48 training and 20 dev sentences."""
    rng = np.random.default_rng(0)
    words = {1: "good great fine lovely moving".split(), 0: "bad dull awful boring flat".split()}
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    for split, count in (("train", 48), ("dev", 20)):
        lines = ["sentence\tlabel"]
        for i in range(count):
            label = i % 2
            # some sentences longer than the local window of 8
            lines.append(" ".join(rng.choice(words[label], size=3 + i % 11)) + f" \t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(root)


def test_the_job_fine_tunes_from_the_masked_lm_directory(tmp_path, mlm_dir):
    data_dir = _write_sst2(tmp_path / "glue")
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax_tools.finetune",
            f"--config={REPO_ROOT / 'experiments' / 'glue_sst2.py'}",
            f"--workdir={workdir}",
            "--config.model.family=modernbert",
            f"--config.init_from={mlm_dir}",
            f"--config.data_dir={data_dir}",
            "--config.max_seq_length=16",
            "--config.global_batch_size=8",
            "--config.num_train_steps=4",
            "--config.eval_every_steps=4",
            "--config.compilation_cache_dir=off",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=ENV,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new: classifier/bias, classifier/kernel" in result.stdout
    assert "Not used by model.family='modernbert' (another family's settings): " in result.stdout
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["step"] == 4 and 0.0 <= results["accuracy"] <= 1.0
    assert len((workdir / "predictions_dev.jsonl").read_text().splitlines()) == 20


# ------------------------------------------------------------------------------------------------------------
# The GLUE table's torch side


def test_the_reference_decays_what_trainer_and_our_mask_decay():
    from bert_jax.harness import torch_reference

    modern = transformers.ModernBertForSequenceClassification(
        transformers.ModernBertConfig(**CONFIGS["biases"], **SPECIAL, num_labels=2)
    )
    decayed = torch_reference.decay_parameter_names(modern)
    config = ModernBertConfig(**CONFIGS["biases"], **SPECIAL)
    params = init_params(heads.ModernBertForSequenceClassification(config, 2), jax.random.key(0))
    mask = jax.tree.map(lambda decay, p: np.full(p.shape, decay), optim.weight_decay_mask(params), params)
    ours = {name for name, value in modernbert_convert.to_hf_state(mask, config, num_labels=2).items() if value.all()}
    assert decayed == ours
    assert "model.embeddings.norm.weight" not in decayed and "head.norm.weight" not in decayed
    assert "classifier.weight" in decayed and "classifier.bias" not in decayed
    # BERT: the same set as the rule the table ran before (biases and LayerNorm weights undecayed)
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    before = {n for n, _ in bert.named_parameters() if not (n.endswith(".bias") or "LayerNorm" in n)}
    assert torch_reference.decay_parameter_names(bert) == before


def test_the_table_runs_our_side_with_the_directory_family(mlm_dir, tmp_path):
    from bert_jax.harness import glue_table

    task = glue_table.TABLE_TASKS["glue_sst2"]
    command = glue_table.ours_command(task, 0, mlm_dir, "/glue", "experiments", str(tmp_path))
    assert "--config.model.family=modernbert" in command
    assert glue_table.model_family(mlm_dir) == "modernbert"


def test_mean_pooling_ignores_whatever_padding_holds():
    fields = CONFIGS["modern"]
    config = ModernBertConfig(**fields, **SPECIAL, classifier_pooling="mean")
    model = heads.ModernBertForSequenceClassification(config, 2)
    params = init_params(model, jax.random.key(0))
    ids, mask = _batch(fields["vocab_size"])
    other = np.where(mask > 0, ids, 7)  # other ids at the padding positions
    np.testing.assert_allclose(
        model.apply({"params": params}, ids, mask), model.apply({"params": params}, other, mask), atol=1e-6
    )
    assert jnp.isfinite(model.apply({"params": params}, ids, np.zeros_like(mask))).all()  # an all-padding row
