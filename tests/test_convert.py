"""Conversion: real pretrained weights, export round trips, original TF checkpoints, bad input."""

from __future__ import annotations

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models.bert import BertForPreTraining, BertModel
from bert_jax.models.configs import BertConfig
from bert_jax.models.convert import (
    ConversionError,
    detect_format,
    from_hf,
    from_tf_checkpoint,
    load_pretrained,
    to_hf,
    to_native,
)
from tests.conftest import shared_path
from tests.hf_reference import max_relative_error, random_batch, save_random_hf_model, torch_pretraining_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = BertConfig(
    vocab_size=300,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def _jit_apply(module):
    return jax.jit(module.apply, static_argnames=("deterministic",))


def _sst2_sentences(count: int) -> list[str]:
    path = shared_path("glue", "SST-2", "dev.tsv")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[0] for row in rows[1 : count + 1]]


def test_minilm_hidden_states_match_transformers_on_sst2(minilm_dir):
    """Real pretrained weights (all-MiniLM-L6-v2) on real sentences, padded batch: within 1e-4."""
    config, params = from_hf(minilm_dir)
    assert set(params) == {"bert"}  # a BertModel checkpoint: no pretraining heads
    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_dir)
    sentences = _sst2_sentences(48)
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    assert batch["attention_mask"].min() == 0  # the batch really has padding
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        want = reference(**{k: torch.tensor(v) for k, v in batch.items()})
    got = _jit_apply(BertModel(config))(
        {"params": params["bert"]},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(got.sequence_output)[real], want.last_hidden_state.numpy()[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(got.pooled_output), want.pooler_output.numpy(), atol=1e-4)


def test_export_loads_in_transformers_with_identical_logits(tmp_path):
    reference = save_random_hf_model(SMALL, tmp_path / "src", seed=3)
    config, params = from_hf(tmp_path / "src")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(295)]) + "\n")
    to_hf(config, params, tmp_path / "export", vocab_file=vocab)
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(
        os.listdir(tmp_path / "export")
    )
    loaded, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, types, positions = random_batch(SMALL, batch=3, length=24, num_predictions=4, seed=4)
    want_mlm, want_nsp = torch_pretraining_logits(reference, ids, mask, types, positions)
    got_mlm, got_nsp = torch_pretraining_logits(loaded.eval(), ids, mask, types, positions)
    np.testing.assert_array_equal(got_mlm, want_mlm)  # the round trip is lossless
    np.testing.assert_array_equal(got_nsp, want_nsp)
    ours_mlm, ours_nsp = _jit_apply(BertForPreTraining(config))(
        {"params": params}, *(jnp.asarray(a) for a in (ids, mask, types, positions))
    )
    assert max_relative_error(ours_mlm, want_mlm) < 1e-4 and max_relative_error(ours_nsp, want_nsp) < 1e-4
    # The same directory also serves BertModel (heads dropped) and its tokenizer.
    encoder = transformers.BertModel.from_pretrained(tmp_path / "export")
    assert encoder.config.hidden_size == 48
    tokenizer = transformers.BertTokenizer.from_pretrained(tmp_path / "export")
    assert tokenizer.convert_tokens_to_ids(["[MASK]", "w0"]) == [4, 5]


def test_bert_model_only_export_round_trips(minilm_dir, tmp_path):
    config, params = from_hf(minilm_dir)
    to_hf(config, params, tmp_path / "minilm")
    _, info = transformers.BertModel.from_pretrained(tmp_path / "minilm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _, again = from_hf(tmp_path / "minilm")
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_native_round_trip_and_format_detection(tmp_path):
    save_random_hf_model(SMALL, tmp_path / "hf", seed=5)
    config, params = from_hf(tmp_path / "hf")
    to_native(config, params, tmp_path / "native")
    assert detect_format(tmp_path / "native") == "native" and detect_format(tmp_path / "hf") == "hf"
    config2, params2 = load_pretrained(tmp_path / "native")
    assert config2 == config
    flat1, flat2 = jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves_with_path(params2)
    assert [p for p, _ in flat1] == [p for p, _ in flat2]
    for (_, a), (_, b) in zip(flat1, flat2, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConversionError, match="is not a BERT model"):
        detect_format(tmp_path)


def test_export_never_overwrites_silently(tmp_path):
    save_random_hf_model(SMALL, tmp_path / "hf")
    config, params = from_hf(tmp_path / "hf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        to_hf(config, params, out)
    with pytest.raises(FileExistsError, match="not empty"):
        to_native(config, params, out)
    assert (out / "precious.txt").read_text() == "keep me"
    to_hf(config, params, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".bert_jax_export_")]  # no staging left behind


def test_vocab_mismatch_and_wrong_config_are_named(tmp_path):
    save_random_hf_model(SMALL, tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    fields = json.loads(config_path.read_text())
    fields["vocab_size"] = 30522
    config_path.write_text(json.dumps(fields))
    with pytest.raises(ConversionError, match="300 rows but the config says vocab_size=30522"):
        from_hf(tmp_path / "hf")
    fields["vocab_size"], fields["intermediate_size"] = 300, 128
    config_path.write_text(json.dumps(fields))
    with pytest.raises(ConversionError, match=r"intermediate.dense.weight has shape \(96, 48\), expected \(128, 48\)"):
        from_hf(tmp_path / "hf")


def test_missing_and_damaged_files_are_clear_errors(tmp_path):
    with pytest.raises(ConversionError, match="not found"):
        from_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"has no config\.json"):
        from_hf(tmp_path / "empty")
    save_random_hf_model(SMALL, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="damaged"):
        from_hf(tmp_path / "hf")


def test_pytorch_bin_checkpoint_with_old_layernorm_names(tmp_path):
    """Old checkpoints: pytorch_model.bin, LayerNorm gamma/beta, no "bert." prefix (a BertModel)."""
    reference = save_random_hf_model(SMALL, tmp_path / "hf", seed=7)
    state = {
        k.removeprefix("bert.")
        .replace("LayerNorm.weight", "LayerNorm.gamma")
        .replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in reference.state_dict().items()
        if k.startswith("bert.")
    }
    old = tmp_path / "old"
    old.mkdir()
    torch.save(state, old / "pytorch_model.bin")
    (old / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    _config, params = from_hf(old)
    _, params_new = from_hf(tmp_path / "hf")
    for a, b in zip(
        jax.tree_util.tree_leaves(params["bert"]), jax.tree_util.tree_leaves(params_new["bert"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _original_tf_variable_shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
    """Variable names and shapes of google-research/bert's modeling.py + run_pretraining.py (written out by hand)."""
    h, i = c.hidden_size, c.intermediate_size
    shapes = {
        "bert/embeddings/word_embeddings": (c.vocab_size, h),
        "bert/embeddings/token_type_embeddings": (c.type_vocab_size, h),
        "bert/embeddings/position_embeddings": (c.max_position_embeddings, h),
        "bert/embeddings/LayerNorm/gamma": (h,),
        "bert/embeddings/LayerNorm/beta": (h,),
        "bert/pooler/dense/kernel": (h, h),
        "bert/pooler/dense/bias": (h,),
        "cls/predictions/transform/dense/kernel": (h, h),
        "cls/predictions/transform/dense/bias": (h,),
        "cls/predictions/transform/LayerNorm/gamma": (h,),
        "cls/predictions/transform/LayerNorm/beta": (h,),
        "cls/predictions/output_bias": (c.vocab_size,),
        "cls/seq_relationship/output_weights": (2, h),
        "cls/seq_relationship/output_bias": (2,),
    }
    for layer in range(c.num_hidden_layers):
        p = f"bert/encoder/layer_{layer}"
        for proj in ("query", "key", "value"):
            shapes[f"{p}/attention/self/{proj}/kernel"] = (h, h)
            shapes[f"{p}/attention/self/{proj}/bias"] = (h,)
        shapes[f"{p}/attention/output/dense/kernel"] = (h, h)
        shapes[f"{p}/attention/output/dense/bias"] = (h,)
        shapes[f"{p}/attention/output/LayerNorm/gamma"] = (h,)
        shapes[f"{p}/attention/output/LayerNorm/beta"] = (h,)
        shapes[f"{p}/intermediate/dense/kernel"] = (h, i)
        shapes[f"{p}/intermediate/dense/bias"] = (i,)
        shapes[f"{p}/output/dense/kernel"] = (i, h)
        shapes[f"{p}/output/dense/bias"] = (h,)
        shapes[f"{p}/output/LayerNorm/gamma"] = (h,)
        shapes[f"{p}/output/LayerNorm/beta"] = (h,)
    return shapes


def test_original_tf_checkpoint_import_matches_transformers_loader(tmp_path):
    """A checkpoint written with TensorFlow under the original names, with Adam slots and global_step.

    The reference is transformers' own TF-checkpoint loader (`load_tf_weights_in_bert`) into PyTorch.
    """
    tf = pytest.importorskip("tensorflow")
    config = SMALL.replace(hidden_act="gelu_new")
    rng = np.random.default_rng(11)
    tensors = {}
    for name, shape in _original_tf_variable_shapes(config).items():
        value = rng.normal(size=shape).astype(np.float32) * (0.2 if len(shape) > 1 else 0.3)
        if name.endswith("gamma"):
            value += 1.0
        tensors[name] = value
        tensors[name + "/adam_m"] = np.zeros(shape, np.float32)
        tensors[name + "/adam_v"] = np.zeros(shape, np.float32)
    tensors["global_step"] = np.array(1000, np.int64)
    ckpt_dir = tmp_path / "uncased_L-2_H-48_A-4"
    ckpt_dir.mkdir()
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(ckpt_dir / "bert_model.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    original_config = {k: v for k, v in config.to_dict().items() if k not in ("dtype", "layer_norm_eps")}
    (ckpt_dir / "bert_config.json").write_text(json.dumps(original_config))

    loaded_config, params = from_tf_checkpoint(ckpt_dir)
    assert loaded_config == config and detect_format(ckpt_dir) == "tf"

    from transformers.models.bert.modeling_bert import load_tf_weights_in_bert

    reference = transformers.BertForPreTraining(transformers.BertConfig(**config.to_hf_dict()))
    load_tf_weights_in_bert(reference, reference.config, str(ckpt_dir / "bert_model.ckpt"))
    reference.eval()
    ids, mask, types, positions = random_batch(config, batch=3, length=20, num_predictions=3, seed=12)
    want_mlm, want_nsp = torch_pretraining_logits(reference, ids, mask, types, positions)
    got_mlm, got_nsp = _jit_apply(BertForPreTraining(config))(
        {"params": params}, *(jnp.asarray(a) for a in (ids, mask, types, positions))
    )
    assert max_relative_error(got_mlm, want_mlm) < 1e-4
    assert max_relative_error(got_nsp, want_nsp) < 1e-4


def test_tf_checkpoint_without_config_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow")
    (tmp_path / "bert_model.ckpt.index").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"No bert_config\.json"):
        from_tf_checkpoint(tmp_path)


def test_pytorch_checkpoint_read_without_torch_matches_torch(tmp_path):
    """The torch-free reader gives torch's own values: every dtype, views into a shared storage, strides."""
    from bert_jax.models import torch_pickle

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    state = {
        "f32": torch.randn(3, 5),
        "transposed": base.t(),  # strides (1, 6) of a shared storage
        "row_view": base[2],  # a storage offset of 12
        "f16": torch.randn(2, 3).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "f64": torch.randn(4).double(),
        "i64": torch.arange(-3, 3),
        "i32": torch.tensor([[1, -2], [3, 4]], dtype=torch.int32),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    torch.save(state, tmp_path / "pytorch_model.bin")
    read = torch_pickle.load_state_dict(tmp_path / "pytorch_model.bin")
    assert set(read) == set(state)
    for name, tensor in state.items():
        expected = tensor.detach()
        expected = expected.float().numpy() if expected.is_floating_point() else expected.numpy()
        assert read[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(read[name], expected, err_msg=name)


def test_pytorch_checkpoint_with_code_is_refused(tmp_path):
    """A pickle that names any global beyond tensors (here a function) is refused, never called."""
    from bert_jax.models import torch_pickle

    torch.save({"w": torch.ones(2), "hook": print}, tmp_path / "pytorch_model.bin")
    with pytest.raises(torch_pickle.TorchPickleError, match=r"\.print, not only tensors"):
        torch_pickle.load_state_dict(tmp_path / "pytorch_model.bin")
    (tmp_path / "legacy.bin").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(torch_pickle.TorchPickleError, match="not a PyTorch zip checkpoint"):
        torch_pickle.load_state_dict(tmp_path / "legacy.bin")
