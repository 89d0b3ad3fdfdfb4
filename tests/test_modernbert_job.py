"""The modern family through the pretraining job: its export is a transformers ModernBERT, a transformers
ModernBERT directory is a starting point (continued pretraining), and a resumed run is the uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import linen as nn

from bert_jax.models.modernbert import ModernBertForMaskedLM
from bert_jax.training import warm_start
from tests.conftest import REPO_ROOT
from tests.hf_reference import max_relative_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SHORT = (
    "--config.optimizer.warmup_steps=2",
    "--config.log_every_steps=10",
    "--config.eval_every_steps=1000",
    "--config.checkpoint_every_steps=10",
)


def _pretrain(workdir, *overrides, timeout=900) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "bert_jax_tools.pretrain",
        f"--config={REPO_ROOT / 'experiments' / 'modernbert_tiny.py'}",
        f"--workdir={workdir}",
        *SHORT,
        *overrides,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=ENV, timeout=timeout)


def test_the_export_is_a_transformers_modernbert_with_our_logits_and_fill_mask_runs(tmp_path):
    run = _pretrain(tmp_path / "run", "--config.num_train_steps=20")
    assert run.returncode == 0, run.stderr[-3000:]
    export = tmp_path / "run" / "export" / "hf"
    assert f"Exported the weights of step 20 to {export} (Hugging Face)" in run.stdout
    hf_config = json.loads((export / "config.json").read_text())
    assert hf_config["model_type"] == "modernbert" and hf_config["local_attention"] == 32
    model = transformers.AutoModelForMaskedLM.from_pretrained(export).eval()
    assert type(model).__name__ == "ModernBertForMaskedLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    # the special ids in config.json are the vocabulary's (BERT's uncased vocab here), not ModernBERT's defaults
    assert (hf_config["pad_token_id"], hf_config["cls_token_id"], hf_config["sep_token_id"]) == (
        tokenizer.pad_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
    )
    fill = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer)
    answers = fill("alice was beginning to get very [MASK] of sitting by her sister on the bank")
    assert len(answers) == 5 and all(a["token_str"] for a in answers)

    # Our model on the checkpoint's params (read from the checkpoint, not from the export) gives transformers'
    # logits on the export: padded rows longer than the local window of 32 included.
    source = warm_start.read_source(str(tmp_path / "run"))
    texts = [
        "alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
        "once or twice she had peeped into the book her sister was reading, but it had no pictures in it",
        "the queen said [MASK]",
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] > 40
    with torch.no_grad():
        expected = model(**batch).logits.numpy()
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    ours = jax.jit(ModernBertForMaskedLM(source.config).apply)({"params": source.params}, ids, mask).mlm_logits
    real = mask.astype(bool)
    assert max_relative_error(np.asarray(ours)[real], expected[real]) < 1e-4


def test_continued_pretraining_from_a_transformers_modernbert_directory(tmp_path):
    """A transformers ModernBERT (random weights, saved as transformers saves it) starts our job: every parameter
    is the source's at step 0, and the job trains on from it."""
    config = transformers.ModernBertConfig(
        vocab_size=30522,  # the bundled uncased vocab the tiny recipe trains on
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=2,
        local_attention=32,
        global_rope_theta=10000.0,
        max_position_embeddings=512,
        pad_token_id=0,
        cls_token_id=101,
        sep_token_id=102,
        bos_token_id=101,
        eos_token_id=102,
    )
    torch.manual_seed(0)
    source_model = transformers.ModernBertForMaskedLM(config)
    source_dir = tmp_path / "modernbert"
    source_model.save_pretrained(source_dir)

    from bert_jax.models.modernbert_config import named_config

    ours = named_config(
        "tiny",
        vocab_size=30522,
        local_attention=32,
        global_rope_theta=10000.0,
        max_position_embeddings=512,
        vocab_pad_multiple=128,
        pad_token_id=0,
        cls_token_id=101,
        sep_token_id=102,
        bos_token_id=101,
        eos_token_id=102,
    )
    fresh = ModernBertForMaskedLM(ours).init(jax.random.key(1), np.zeros((1, 8), np.int32))
    start = warm_start.load(str(source_dir), ours, nn.meta.unbox(fresh["params"]))
    assert start.kept_fresh == [] and start.ignored == []
    expected = {k: v.detach().numpy() for k, v in source_model.state_dict().items()}
    tokens = np.asarray(start.params["model"]["embeddings"]["tok_embeddings"]["embedding"])
    np.testing.assert_array_equal(tokens[:30522], expected["model.embeddings.tok_embeddings.weight"])
    np.testing.assert_array_equal(
        np.asarray(start.params["model"]["layers_2"]["mlp"]["Wi"]["kernel"]).reshape(128, -1).T,
        expected["model.layers.2.mlp.Wi.weight"],
    )

    run = _pretrain(tmp_path / "run", "--config.num_train_steps=10", f"--config.init_from={source_dir}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Initialized the params from {source_dir}" in run.stdout


@pytest.mark.slow
def test_a_resumed_modern_run_is_the_uninterrupted_run(tmp_path):
    common = ("--config.optimizer.total_steps=30", "--config.export=false")
    straight = _pretrain(tmp_path / "straight", "--config.num_train_steps=30", *common)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _pretrain(tmp_path / "resumed", "--config.num_train_steps=20", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _pretrain(tmp_path / "resumed", "--config.num_train_steps=30", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from the checkpoint of step 20" in second.stdout

    def last_loss(workdir):
        lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [line["loss"] for line in lines if line.get("step") == 30 and "loss" in line][-1]

    assert last_loss(tmp_path / "resumed") == last_loss(tmp_path / "straight")
    a = warm_start.read_source(str(tmp_path / "straight")).params
    b = warm_start.read_source(str(tmp_path / "resumed")).params
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
