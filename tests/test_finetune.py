"""Fine-tuning: the task heads against transformers, the job end to end from its CLI, resume, and predict.

- Heads: all-MiniLM-L6-v2's encoder with a classifier / token classifier / QA head, the same head weights in
  transformers' BertForSequenceClassification / BertForTokenClassification / BertForQuestionAnswering: the
  logits agree (the reference is PyTorch).
- The job: MiniLM (a Hugging Face directory as init_from) fine-tuned 60 steps on SST-2 evaluates with GLUE
  accuracy on the dev set, writes eval_results.json and one prediction per dev sentence (whose accuracy
  against the dev labels is the reported one); bert-jax-predict labels new text.
- The recipes leave `data_dir` to the user: without it the job stops first, in one line naming the setting.
- Slow: NER and SQuAD end to end on their real files; SIGTERM mid-run, restart, and the results equal an
  uninterrupted run.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.finetune.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from bert_jax.jobs import config as job_config
from bert_jax.models import convert
from tests.conftest import REPO_ROOT, shared_path

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
VOCAB = REPO_ROOT / "bert_jax" / "assets" / "vocab.txt"


@pytest.mark.parametrize("kind", ["sequence", "token", "qa"])
def test_heads_match_transformers(kind, minilm_dir):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf_class, ours_class, head_name, labels = {
        "sequence": (transformers.BertForSequenceClassification, BertForSequenceClassification, "classifier", 3),
        "token": (transformers.BertForTokenClassification, BertForTokenClassification, "classifier", 9),
        "qa": (transformers.BertForQuestionAnswering, BertForQuestionAnswering, "qa_outputs", 2),
    }[kind]
    torch.manual_seed(0)
    reference = hf_class.from_pretrained(minilm_dir, num_labels=labels).eval()
    config, params = convert.from_hf(minilm_dir)
    encoder = params["bert"] if "bert" in params else params
    head = getattr(reference, head_name)
    torch.nn.init.normal_(head.bias, std=0.5)  # away from zero, so a dropped bias fails the test
    ours = {
        "bert": encoder,
        head_name: {"kernel": head.weight.detach().numpy().T, "bias": head.bias.detach().numpy()},
    }
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 30000, (3, 20))
    mask = np.ones_like(ids)
    mask[2, 14:] = 0
    types = np.zeros_like(ids)
    types[:, 10:] = 1
    model = ours_class(config, labels) if kind != "qa" else ours_class(config)
    got = np.asarray(model.apply({"params": ours}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    with torch.no_grad():
        out = reference(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)
        )
    if kind == "qa":
        want = np.stack([out.start_logits.numpy(), out.end_logits.numpy()], axis=-1)
        real = mask == 1
        np.testing.assert_allclose(got[real], want[real], atol=2e-4)
        assert (got[~real] < -1e30).all()  # padding can never be a span boundary
    elif kind == "token":
        real = mask == 1
        np.testing.assert_allclose(got[real], out.logits.numpy()[real], atol=2e-4)
    else:
        np.testing.assert_allclose(got, out.logits.numpy(), atol=2e-4)


def _finetune(workdir, config: str, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax_tools.finetune",
            f"--config={REPO_ROOT / 'experiments' / config}",
            f"--workdir={workdir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=ENV,
        timeout=timeout,
    )


SMALL = [
    "--config.model.size=tiny",
    f"--config.vocab_file={VOCAB}",
    "--config.global_batch_size=16",
    "--config.learning_rate=1e-3",
    "--config.log_every_steps=10",
]


def test_sst2_from_minilm_trains_evaluates_and_predicts(tmp_path, minilm_dir):
    glue = shared_path("glue")
    result = _finetune(
        tmp_path,
        "glue_sst2.py",
        f"--config.init_from={minilm_dir}",
        f"--config.data_dir={glue}",
        "--config.global_batch_size=16",
        "--config.learning_rate=1e-4",
        "--config.max_seq_length=32",
        "--config.num_train_steps=60",
        "--config.eval_every_steps=60",
        "--config.log_every_steps=10",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new: classifier/bias, classifier/kernel" in result.stdout  # the encoder came from MiniLM
    # The compiled train step went to the default compilation cache in the workdir (for a restart to load).
    assert f"compilation cache {tmp_path / 'jax_cache'}: 0 of " in result.stdout
    assert any(name.startswith("jit_train_step") for name in os.listdir(tmp_path / "jax_cache"))
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["task"] == "glue_sst2" and results["split"] == "dev" and results["step"] == 60
    # Far better than the majority class (dev: 444 positive of 872 = 50.9%) after 60 steps from MiniLM
    # (measured 0.775).
    assert 0.7 < results["accuracy"] <= 1.0
    predictions = [json.loads(line) for line in (tmp_path / "predictions_dev.jsonl").read_text().splitlines()]
    assert len(predictions) == 872
    assert all(p["label"] in ("0", "1") and abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
    # The accuracy in eval_results.json is the accuracy of the written predictions against the dev labels.
    from bert_jax.finetune import glue_data

    gold = [e.label for e in glue_data.read_glue_split(glue, "sst2", "dev")]
    assert np.mean([p["label"] == g for p, g in zip(predictions, gold, strict=True)]) == pytest.approx(
        results["accuracy"]
    )
    predicted = subprocess.run(
        [sys.executable, "-m", "tools.predict", f"--workdir={tmp_path}"],
        input="a gripping, beautifully acted film\nthe dullest two hours of my life\n",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=ENV,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    records = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [r["text"] for r in records] == ["a gripping, beautifully acted film", "the dullest two hours of my life"]
    assert all(set(r["probabilities"]) == {"0", "1"} for r in records)


def test_user_errors_end_in_one_line(tmp_path):
    result = _finetune(tmp_path, "glue_sst2.py", *SMALL, "--config.data_dir=/nonexistent", timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "data_dir=/nonexistent is not a directory" in result.stderr.strip().splitlines()[-1]
    result = _finetune(tmp_path, "glue_sst2.py", "--config.task=glue_nope", timeout=300)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert-jax-finetune: error: task='glue_nope' is unknown; use one of glue_cola"), last


# Each fine-tuning recipe and what its missing-data_dir error says the folder holds.
RECIPE_DATA = {
    "glue_cola.py": "the GLUE root, holding CoLA/train.tsv and CoLA/dev.tsv",
    "glue_mnli.py": "the GLUE root, holding MNLI/train.tsv and MNLI/dev_matched.tsv",
    "glue_mrpc.py": "the GLUE root, holding MRPC/train.tsv and MRPC/dev.tsv",
    "glue_qnli.py": "the GLUE root, holding QNLI/train.tsv and QNLI/dev.tsv",
    "glue_qqp.py": "the GLUE root, holding QQP/train.tsv and QQP/dev.tsv",
    "glue_rte.py": "the GLUE root, holding RTE/train.tsv and RTE/dev.tsv",
    "glue_sst2.py": "the GLUE root, holding SST-2/train.tsv and SST-2/dev.tsv",
    "glue_stsb.py": "the GLUE root, holding STS-B/train.tsv and STS-B/dev.tsv",
    "conll_ner.py": "the folder with CoNLL-2003's train.txt, valid.txt and test.txt",
    "squad.py": "the folder with SQuAD's dev-v1.1.json",
}


def test_recipe_data_lists_every_fine_tuning_recipe():
    experiments = REPO_ROOT / "experiments"
    finetuning = {p.name for p in experiments.glob("*.py") if runpy.run_path(str(p))["get_config"]().job == "finetune"}
    assert finetuning == set(RECIPE_DATA)


@pytest.mark.parametrize("recipe", sorted(RECIPE_DATA))
def test_a_recipe_without_data_dir_stops_before_anything_loads(recipe, tmp_path, monkeypatch):
    """No default data folder: the job names the setting and what the folder holds before it reads a model,
    compiles or creates the workdir."""
    from bert_jax.compile import fit
    from bert_jax.errors import ConfigError
    from bert_jax.jobs import finetuning

    def too_far(*args, **kwargs):
        raise AssertionError("the job went past its data_dir check")

    for module, name in ((finetuning, "model_and_tokenizer"), (finetuning, "make_finetune_plan"), (fit, "fit_job")):
        monkeypatch.setattr(module, name, too_far)
    config = runpy.run_path(str(REPO_ROOT / "experiments" / recipe))["get_config"]()
    assert config.data_dir == ""
    with pytest.raises(ConfigError) as raised:
        finetuning.finetune_and_evaluate(job_config.parse(config, expect="finetune"), str(tmp_path / "run"))
    assert str(raised.value) == f"data_dir is not set: pass --config.data_dir=DIR, {RECIPE_DATA[recipe]}."
    assert not (tmp_path / "run").exists()


def test_a_recipe_without_data_dir_ends_in_one_line_naming_it(tmp_path):
    result = _finetune(tmp_path / "sst2", "glue_sst2.py", timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"bert-jax-finetune: error: data_dir is not set: pass --config.data_dir=DIR, {RECIPE_DATA['glue_sst2.py']}."
    )
    assert not (tmp_path / "sst2").exists()


@pytest.mark.slow
def test_ner_and_squad_end_to_end(tmp_path):
    ner = _finetune(
        tmp_path / "ner",
        "conll_ner.py",
        *SMALL,
        f"--config.data_dir={shared_path('conll2003')}",
        "--config.max_seq_length=48",
        "--config.num_train_steps=60",
        "--config.eval_every_steps=60",
    )
    assert ner.returncode == 0, ner.stderr[-3000:]
    results = json.loads((tmp_path / "ner" / "eval_results.json").read_text())
    assert set(results) >= {"precision", "recall", "f1", "accuracy"} and 0.0 <= results["f1"] <= 1.0
    assert results["accuracy"] > 0.8  # "O" alone is 83% of the validation tokens
    squad = _finetune(
        tmp_path / "squad",
        "squad.py",
        *SMALL,
        f"--config.data_dir={shared_path('squad')}",
        "--config.max_seq_length=128",
        "--config.squad.doc_stride=64",
        "--config.num_train_steps=20",
        "--config.eval_every_steps=1000",
    )
    assert squad.returncode == 0, squad.stderr[-3000:]
    results = json.loads((tmp_path / "squad" / "eval_results.json").read_text())
    assert 0.0 <= results["exact_match"] <= results["f1"] <= 100.0
    predictions = (tmp_path / "squad" / "predictions_dev.jsonl").read_text().splitlines()
    assert len(predictions) > 1000  # the held-out articles (about a fifth of 10,570 questions)


@pytest.mark.slow
def test_sigterm_then_restart_equals_an_uninterrupted_run(tmp_path):
    glue = shared_path("glue")
    common = [*SMALL, f"--config.data_dir={glue}", "--config.task=glue_rte", "--config.max_seq_length=64"]
    common += ["--config.num_train_steps=40", "--config.eval_every_steps=40", "--config.log_every_steps=1"]
    reference = _finetune(tmp_path / "reference", "glue_sst2.py", *common)
    assert reference.returncode == 0, reference.stderr[-3000:]
    command = [
        sys.executable,
        "-m",
        "bert_jax_tools.finetune",
        f"--config={REPO_ROOT / 'experiments' / 'glue_sst2.py'}",
        f"--workdir={tmp_path / 'stopped'}",
        *common,
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in process.stdout:
        if line.startswith("step 15/40"):
            process.send_signal(signal.SIGTERM)
            break
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0 and "Stopped by SIGTERM after step" in out
    resumed = _finetune(tmp_path / "stopped", "glue_sst2.py", *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from the checkpoint of step" in resumed.stdout
    ours = json.loads((tmp_path / "stopped" / "eval_results.json").read_text())
    theirs = json.loads((tmp_path / "reference" / "eval_results.json").read_text())
    assert ours == theirs
    assert (tmp_path / "stopped" / "predictions_dev.jsonl").read_text() == (
        tmp_path / "reference" / "predictions_dev.jsonl"
    ).read_text()
