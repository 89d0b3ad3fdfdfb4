"""The Flax BERT against the reference (transformers' PyTorch BertForPreTraining) and published facts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models.bert import BertForPreTraining, BertModel, init_params
from bert_jax.models.configs import BertConfig, named_config
from bert_jax.models.convert import from_hf
from tests.hf_reference import max_relative_error, random_batch, save_random_hf_model, torch_pretraining_logits

pytest.importorskip("torch")


def _jit_apply(module):
    """module.apply, jitted: op-by-op dispatch of an unjitted apply is what makes CPU tests slow."""
    return jax.jit(module.apply, static_argnames=("deterministic",))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize(
    "size, pretraining, model",
    # Published counts (DESIGN.md; transformers' BertForPreTraining / BertModel with pooler, tied decoder).
    [("base", 110_106_428, 109_482_240), ("large", 336_226_108, 335_141_888)],
)
def test_parameter_counts_match_published(size, pretraining, model):
    config = named_config(size)
    shapes = jax.eval_shape(lambda: init_params(BertForPreTraining(config), jax.random.key(0)))
    assert _count(shapes) == pretraining
    assert _count(shapes["bert"]) == model
    bert_only = jax.eval_shape(lambda: init_params(BertModel(config), jax.random.key(0)))
    assert _count(bert_only) == model


PARITY_CONFIGS = {
    # Unusual sizes: odd head dim, vocab not a multiple of anything, three token types, short positions.
    "odd": BertConfig(
        vocab_size=997,
        hidden_size=60,
        num_hidden_layers=3,
        num_attention_heads=5,
        intermediate_size=77,
        max_position_embeddings=40,
        type_vocab_size=3,
    ),
    "tanh_gelu": BertConfig(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu_new",
        max_position_embeddings=64,
    ),
    "mini": named_config("mini", vocab_size=2000, max_position_embeddings=128),
}


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_pretraining_logits_match_transformers(name, tmp_path):
    config = PARITY_CONFIGS[name]
    reference = save_random_hf_model(config, tmp_path, seed=1)
    loaded_config, params = from_hf(tmp_path)
    assert loaded_config == config
    length = min(32, config.max_position_embeddings)
    ids, mask, types, positions = random_batch(config, batch=4, length=length, num_predictions=5, seed=2)
    want_mlm, want_nsp = torch_pretraining_logits(reference, ids, mask, types, positions)
    mlm, nsp = _jit_apply(BertForPreTraining(config))(
        {"params": params},
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.asarray(types),
        jnp.asarray(positions),
        deterministic=True,
    )
    assert mlm.shape == (4, 5, config.vocab_size) and nsp.shape == (4, 2)
    assert max_relative_error(mlm, want_mlm) < 1e-4
    assert max_relative_error(nsp, want_nsp) < 1e-4
    # Without positions the head runs everywhere; the gathered rows are the same numbers.
    full, _ = _jit_apply(BertForPreTraining(config))(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), deterministic=True
    )
    np.testing.assert_allclose(np.take_along_axis(np.asarray(full), positions[..., None], 1), mlm, atol=1e-5)


def test_padded_vocabulary_matches_transformers_and_exports_unpadded(tmp_path):
    """vocab 997 padded to 1024 rows: real-id logits equal the reference, padding ids get no probability,
    and the export holds exactly 997 rows again (transformers loads it)."""
    from bert_jax.models.convert import pad_vocab, to_hf

    config = PARITY_CONFIGS["odd"]
    reference = save_random_hf_model(config, tmp_path / "src", seed=5)
    _, params = from_hf(tmp_path / "src")
    padded_config, padded_params = pad_vocab(config, params, 128)
    assert padded_config.padded_vocab_size == 1024 and padded_config.vocab_size == 997
    assert padded_params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape == (1024, 60)
    assert padded_params["cls"]["predictions"]["bias"].shape == (1024,)
    ids, mask, types, positions = random_batch(config, batch=3, length=24, num_predictions=4, seed=6)
    want_mlm, want_nsp = torch_pretraining_logits(reference, ids, mask, types, positions)
    mlm, nsp = _jit_apply(BertForPreTraining(padded_config))(
        {"params": padded_params}, *(jnp.asarray(a) for a in (ids, mask, types, positions))
    )
    assert mlm.shape == (3, 4, 1024)
    assert max_relative_error(mlm[..., :997], want_mlm) < 1e-4 and max_relative_error(nsp, want_nsp) < 1e-4
    probs = jax.nn.softmax(mlm, axis=-1)
    assert float(jnp.max(probs[..., 997:])) == 0.0
    to_hf(padded_config, padded_params, tmp_path / "export")
    import transformers

    loaded = transformers.BertForPreTraining.from_pretrained(tmp_path / "export")
    assert loaded.config.vocab_size == 997 and "vocab_pad_multiple" not in loaded.config.to_dict()
    got_mlm, _ = torch_pretraining_logits(loaded.eval(), ids, mask, types, positions)
    np.testing.assert_array_equal(got_mlm, want_mlm)


def test_remat_policies_do_not_change_the_loss_or_the_gradients():
    config = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    ids, mask, types, positions = (jnp.asarray(a) for a in random_batch(config, 2, 16, 3, seed=7))
    params = init_params(BertForPreTraining(config), jax.random.key(0))

    def loss_and_grad(model_config):
        def loss(p):
            mlm, nsp = BertForPreTraining(model_config).apply(
                {"params": p}, ids, mask, types, positions, deterministic=False, rngs={"dropout": jax.random.key(1)}
            )
            return jnp.mean(jax.nn.logsumexp(mlm, -1)) + jnp.mean(nsp**2)

        return jax.jit(jax.value_and_grad(loss))(params)

    plain_loss, plain_grad = loss_and_grad(config)
    for policy in ("full", "dots", "dots_no_batch"):
        remat_config = config.replace(remat_policy=policy)
        remat_loss, remat_grad = loss_and_grad(remat_config)
        # Recomputation replays the same dropout masks: equal up to float reassociation.
        assert float(remat_loss) == pytest.approx(float(plain_loss), rel=1e-6), policy
        for a, b in zip(jax.tree.leaves(plain_grad), jax.tree.leaves(remat_grad), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=policy)
        # The policy really is in the traced program (a checkpoint/remat primitive appears).
        jaxpr = str(
            jax.make_jaxpr(
                lambda p, c=remat_config: (
                    BertForPreTraining(c).apply({"params": p}, ids, deterministic=True).mlm_logits.sum()
                )
            )(params)
        )
        assert "checkpoint" in jaxpr or "remat" in jaxpr, policy


def test_padding_does_not_change_real_tokens(tmp_path):
    config = PARITY_CONFIGS["mini"]
    save_random_hf_model(config, tmp_path)
    _, params = from_hf(tmp_path)
    ids, _mask, _types, _ = random_batch(config, batch=1, length=20, num_predictions=1)
    apply = _jit_apply(BertModel(config))
    short = apply({"params": params["bert"]}, jnp.asarray(ids[:, :12]), jnp.ones((1, 12), jnp.int32))
    padded_ids = np.concatenate([ids[:, :12], np.zeros((1, 8), ids.dtype)], axis=1)
    padded_mask = np.concatenate([np.ones((1, 12)), np.zeros((1, 8))], axis=1).astype(np.int32)
    padded = apply({"params": params["bert"]}, jnp.asarray(padded_ids), jnp.asarray(padded_mask))
    np.testing.assert_allclose(padded.sequence_output[:, :12], short.sequence_output, atol=1e-5)
    np.testing.assert_allclose(padded.pooled_output, short.pooled_output, atol=1e-5)


def test_bfloat16_compute_is_close_to_float32(tmp_path):
    config = PARITY_CONFIGS["mini"]
    save_random_hf_model(config, tmp_path)
    _, params = from_hf(tmp_path)
    ids, mask, types, positions = random_batch(config, batch=4, length=64, num_predictions=10)
    args = [jnp.asarray(a) for a in (ids, mask, types, positions)]
    mlm32, nsp32 = _jit_apply(BertForPreTraining(config))({"params": params}, *args)
    mlm16, nsp16 = _jit_apply(BertForPreTraining(config.replace(dtype="bfloat16")))({"params": params}, *args)
    assert mlm16.dtype == jnp.float32  # logits are returned in float32 for the loss
    # bf16 has an 8-bit mantissa (relative step 2^-8 = 0.4%); through 4 layers the measured error is
    # about 1-2% of the logit scale. The tolerance is 4% of scale; argmax agrees almost everywhere.
    assert max_relative_error(mlm16, mlm32) < 0.04
    assert max_relative_error(nsp16, nsp32) < 0.04
    agree = np.mean(np.argmax(mlm16, -1) == np.argmax(mlm32, -1))
    assert agree > 0.9


def test_dropout_obeys_deterministic():
    config = named_config("tiny", vocab_size=300, max_position_embeddings=32)
    model = BertModel(config)
    params = init_params(model, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 16), 1, 300)
    apply = _jit_apply(model)
    det = apply({"params": params}, ids, deterministic=True).sequence_output
    det2 = apply({"params": params}, ids, deterministic=True).sequence_output
    np.testing.assert_array_equal(det, det2)
    a = apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(5)})
    b = apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(5)})
    c = apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(6)})
    np.testing.assert_array_equal(a.sequence_output, b.sequence_output)
    assert not np.allclose(a.sequence_output, det, atol=1e-3)
    assert not np.allclose(a.sequence_output, c.sequence_output, atol=1e-3)


def test_explicit_attention_path_equals_fused_path():
    # Training with attention dropout takes the explicit einsum/softmax path; with a vanishing rate it must
    # compute what the fused jax.nn.dot_product_attention computes at inference (padding included).
    base = named_config("tiny", vocab_size=300, max_position_embeddings=32, hidden_dropout_prob=0.0)
    params = init_params(BertModel(base), jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 16), 1, 300)
    mask = jnp.asarray(np.arange(16)[None, :] < np.array([[16], [9], [4]]), jnp.int32)
    fused = _jit_apply(BertModel(base.replace(attention_probs_dropout_prob=0.0)))({"params": params}, ids, mask)
    explicit = _jit_apply(BertModel(base.replace(attention_probs_dropout_prob=1e-9)))(
        {"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(2)}
    )
    valid = np.asarray(mask, bool)[..., None]
    np.testing.assert_allclose(
        np.where(valid, explicit.sequence_output, 0), np.where(valid, fused.sequence_output, 0), atol=1e-5
    )


def test_init_statistics_follow_the_original():
    # truncated normal with std 0.02 (cut at 2 std, as TF's truncated_normal_initializer), zero biases,
    # LayerNorm (1, 0).
    config = named_config("mini")
    params = init_params(BertForPreTraining(config), jax.random.key(0))
    words = np.asarray(params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    assert np.abs(words).max() <= 2 * 0.02 + 1e-7
    assert 0.016 < words.std() < 0.019  # std of N(0, 0.02) truncated at +-2 sigma is 0.02 * 0.88
    layer = params["bert"]["encoder"]["layer_0"]
    assert np.all(np.asarray(layer["attention"]["self"]["query"]["bias"]) == 0)
    assert np.all(np.asarray(layer["output"]["LayerNorm"]["scale"]) == 1)
    assert np.all(np.asarray(params["cls"]["predictions"]["bias"]) == 0)


def test_every_parameter_has_logical_axis_names():
    import flax.linen as nn

    config = named_config("tiny", vocab_size=300)
    boxed = jax.eval_shape(lambda: BertForPreTraining(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))[
        "params"
    ]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape)
    specs = nn.get_partition_spec(boxed)
    assert specs["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"] == jax.sharding.PartitionSpec(
        "embed", "heads", "kv"
    )
    assert specs["bert"]["embeddings"]["word_embeddings"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")


def test_too_long_input_is_a_clear_error():
    config = named_config("tiny", vocab_size=300, max_position_embeddings=16)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=16"):
        init_params(BertModel(config), jax.random.key(0), seq_length=17)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("bfloat16", 2e-2)])
def test_the_attention_softmax_keeps_only_its_output_and_has_the_usual_gradient(dtype, tolerance):
    """softmax_keeping_output's forward and gradient against jax.nn.softmax's in float32 (masked entries too):
    exact in float32; in bfloat16 within the rounding of the bfloat16 probabilities it keeps."""
    from bert_jax.models.bert import softmax_keeping_output

    scores = jax.random.normal(jax.random.key(0), (2, 3, 5, 7), jnp.float32) * 3
    scores = scores.at[..., -2:].set(jnp.finfo(jnp.float32).min)  # padded keys
    cotangent = jax.random.normal(jax.random.key(1), scores.shape, jnp.float32)

    def ours(x):
        return jnp.sum(softmax_keeping_output(x, jnp.dtype(dtype)).astype(jnp.float32) * cotangent)

    def reference(x):
        return jnp.sum(jax.nn.softmax(x, axis=-1) * cotangent)

    np.testing.assert_allclose(
        softmax_keeping_output(scores, jnp.dtype(dtype)).astype(jnp.float32),
        jax.nn.softmax(scores, axis=-1),
        atol=tolerance,
    )
    grad, expected = jax.grad(ours)(scores), jax.grad(reference)(scores)
    np.testing.assert_allclose(grad, expected, atol=tolerance * float(jnp.abs(expected).max()))
    assert float(jnp.abs(grad[..., -2:]).max()) == 0.0  # nothing flows to padded keys
    # The backward pass keeps the probabilities in `dtype`, not float32 (jax.nn.softmax keeps float32).
    residuals = jax.vjp(lambda x: softmax_keeping_output(x, jnp.dtype(dtype)), scores)[1]
    kept = [leaf for leaf in jax.tree_util.tree_leaves(residuals) if getattr(leaf, "shape", ()) == scores.shape]
    assert kept and all(leaf.dtype == jnp.dtype(dtype) for leaf in kept)


@pytest.mark.parametrize(
    "dtype, attention_dropout, keeps_low_precision_softmax",
    [("bfloat16", 0.0, True), ("bfloat16", 0.1, True), ("float32", 0.1, False), ("float32", 0.0, False)],
)
def test_low_precision_training_attention_uses_the_softmax_that_keeps_only_its_output(
    dtype, attention_dropout, keeps_low_precision_softmax
):
    """bfloat16 training takes `softmax_keeping_output` with attention dropout and without it: the fused
    jax.nn.dot_product_attention would keep a float32 copy of the [B, heads, T, T] probabilities for the backward
    pass (bert-jax-compile, BERT-base 16 x 512 per v5p chip: 6.48 GB of temporaries instead of 4.68). float32 keeps
    jax.nn.softmax (its output is then the float32 probabilities themselves)."""
    from bert_jax.models.bert import BertSelfAttention

    config = BertConfig(
        hidden_size=64, num_attention_heads=4, dtype=dtype, attention_probs_dropout_prob=attention_dropout
    )
    module = BertSelfAttention(config)
    x = jnp.ones((2, 16, 64), jnp.dtype(dtype))
    mask = jnp.ones((2, 1, 1, 16), bool)
    params = module.init(jax.random.key(0), x, mask, deterministic=True)

    def loss(x):
        out = module.apply(params, x, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
        return jnp.sum(out.astype(jnp.float32))

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(x))
    assert ("custom_vjp_call" in jaxpr) == keeps_low_precision_softmax
