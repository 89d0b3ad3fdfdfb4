"""The modern encoder family against the reference: transformers' PyTorch `ModernBertForMaskedLM`.

Random weights, every parameter moved far from its default (norm scales not 1, biases not 0), odd sizes,
padded rows, sequences longer than the local window, both layer kinds: MLM logits and hidden states within
1e-4 of the logit scale, and the MLM loss's gradient equal for every parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models import modernbert_convert
from bert_jax.models.modernbert import ModernBertForMaskedLM, ModernBertModel, output_std
from bert_jax.models.modernbert_config import ModernBertConfig, named_config
from tests.hf_reference import max_relative_error

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)

CONFIGS = {
    # ModernBERT's choices (no biases) at odd sizes: 5 layers = global, local, local, global, local.
    "modern": dict(
        vocab_size=211,
        hidden_size=60,
        intermediate_size=46,
        num_hidden_layers=5,
        num_attention_heads=5,
        local_attention=10,
        global_attn_every_n_layers=3,
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
        max_position_embeddings=64,
    ),
    # Every optional bias on, a tanh GELU in the head, local layers every other one, mean pooling.
    "biases": dict(
        vocab_size=150,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=4,
        num_attention_heads=2,
        local_attention=6,
        global_attn_every_n_layers=2,
        norm_bias=True,
        attention_bias=True,
        mlp_bias=True,
        classifier_bias=True,
        classifier_activation="gelu_pytorch_tanh",
        max_position_embeddings=64,
        norm_eps=1e-6,
    ),
}


def _hf_model(fields: dict, implementation: str = "eager", seed: int = 0):
    """transformers' model with every parameter moved away from its initial value (norms around 1 +- 0.3)."""
    config = transformers.ModernBertConfig(**fields, **SPECIAL, attn_implementation=implementation)
    torch.manual_seed(seed)
    model = transformers.ModernBertForMaskedLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.3 if "norm" in name else 0.1))
    return model


def _ours(fields: dict, model, **compute) -> tuple[ModernBertConfig, dict]:
    config = ModernBertConfig(**fields, **SPECIAL, **compute)
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    return config, modernbert_convert.from_hf_state(state, config)


def _batch(vocab: int, rows: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ids and a right-padding mask: one full row, one padded past the window, one shorter than the window."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(rows, length))
    lengths = np.linspace(length, 4, rows).astype(int)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_masked_lm_logits_and_hidden_states_equal_transformers(name, implementation):
    fields = CONFIGS[name]
    model = _hf_model(fields, implementation)
    config, params = _ours(fields, model)
    ids, mask = _batch(fields["vocab_size"], 3, 37)  # 37 > every window above: local layers differ from global
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
        hidden = model.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    logits = jax.jit(ModernBertForMaskedLM(config).apply)({"params": params}, ids, mask).mlm_logits
    ours_hidden = jax.jit(ModernBertModel(config).apply)({"params": params["model"]}, ids, mask)
    real = mask.astype(bool)  # padding positions' outputs are not defined by either model
    assert max_relative_error(np.asarray(logits)[real], out.logits.numpy()[real]) < 1e-4
    assert max_relative_error(np.asarray(ours_hidden)[real], hidden.numpy()[real]) < 1e-4


def test_the_local_window_and_rope_matter():
    """A deliberately wrong model (all layers global, or the local layers' theta as the global one) is far off:
    the parity test above can fail."""
    fields = CONFIGS["modern"]
    model = _hf_model(fields)
    ids, mask = _batch(fields["vocab_size"], 2, 37)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    for wrong in ({"global_attn_every_n_layers": 1}, {"local_rope_theta": fields["global_rope_theta"]}):
        config, params = _ours(fields, model)
        logits = ModernBertForMaskedLM(config.replace(**wrong)).apply({"params": params}, ids, mask).mlm_logits
        assert max_relative_error(np.asarray(logits)[real], expected[real]) > 1e-2, wrong


def test_position_ids_and_masked_positions_equal_transformers():
    fields = CONFIGS["modern"]
    model = _hf_model(fields)
    config, params = _ours(fields, model)
    ids, mask = _batch(fields["vocab_size"], 2, 25, seed=1)
    positions = np.broadcast_to(np.arange(25) + 7, ids.shape)  # shifted positions: RoPE sees them
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)
        ).logits.numpy()
    picked = np.array([[0, 3, 24], [1, 2, 3]])
    logits = (
        ModernBertForMaskedLM(config)
        .apply({"params": params}, ids, mask, None, picked, position_ids=positions)
        .mlm_logits
    )
    reference = np.take_along_axis(expected, picked[..., None], axis=1)
    assert max_relative_error(logits, reference) < 1e-4


def _torch_loss(model, ids, mask, positions, labels):
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    picked = torch.gather(logits, 1, torch.tensor(positions)[..., None].expand(-1, -1, logits.shape[-1]))
    return torch.nn.functional.cross_entropy(picked.reshape(-1, logits.shape[-1]), torch.tensor(labels).reshape(-1))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_masked_lm_gradients_equal_transformers_for_every_parameter(name):
    fields = CONFIGS[name]
    model = _hf_model(fields)
    config, params = _ours(fields, model)
    ids, mask = _batch(fields["vocab_size"], 3, 29, seed=2)
    rng = np.random.default_rng(3)
    positions = np.stack([rng.choice(max(int(m.sum()), 4), 4, replace=False) for m in mask])
    labels = rng.integers(0, fields["vocab_size"], positions.shape)
    loss = _torch_loss(model, ids, mask, positions, labels)
    model.zero_grad()
    loss.backward()
    expected = {name: p.grad.numpy() for name, p in model.named_parameters()}

    def our_loss(p):
        logits = ModernBertForMaskedLM(config).apply({"params": p}, ids, mask, None, positions).mlm_logits
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], axis=-1))

    value, grads = jax.jit(jax.value_and_grad(our_loss))(params)
    assert abs(float(value) - loss.item()) < 1e-5 * max(1.0, abs(loss.item()))
    ours = modernbert_convert.to_hf_state(grads, config)
    assert set(ours) == set(expected) - {"decoder.weight"}  # the decoder is the embeddings (tied)
    for key, reference in expected.items():
        if key == "decoder.weight":
            continue
        scale = max(np.abs(reference).max(), 1e-6)
        assert np.abs(ours[key] - reference).max() / scale < 1e-4, key


@pytest.mark.parametrize("size, implementation_name", [("base", "ModernBERT-base"), ("large", "ModernBERT-large")])
def test_parameter_counts_equal_transformers(size, implementation_name):
    config = named_config(size)
    with torch.device("meta"):
        reference = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(**named_fields(config)))
    # transformers counts the tied decoder weight once (it is the embedding table)
    expected = sum(p.numel() for p in reference.parameters())
    shapes = jax.eval_shape(lambda: ModernBertForMaskedLM(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert ours == expected, implementation_name
    # ModernBERT's published sizes: 149M (base) and 395M (large) parameters
    assert round(ours / 1e6) == {"base": 150, "large": 396}[size]


def named_fields(config: ModernBertConfig) -> dict:
    hf = config.to_hf_dict()
    for key in ("architectures", "model_type", "torch_dtype"):
        hf.pop(key)
    return hf


def test_initialization_follows_transformers():
    """The std of each kind of parameter is transformers' `_init_weights`' (a normal truncated at 2 std)."""
    from flax import linen as nn

    config = named_config("ettin_17m", vocab_size=4000)
    variables = ModernBertForMaskedLM(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    params = jax.tree_util.tree_map(np.asarray, nn.meta.unbox(variables["params"]))
    layer = params["model"]["layers_1"]
    assert "attn_norm" not in params["model"]["layers_0"] and "attn_norm" in layer
    # the std of a standard normal cut at +-2: sqrt(1 - 2 * 2 phi(2) / (Phi(2) - Phi(-2)))
    truncated = np.sqrt(1 - 4 * np.exp(-2) / np.sqrt(2 * np.pi) / 0.954500)
    for array, std in (
        (params["model"]["embeddings"]["tok_embeddings"]["embedding"], 0.02),
        (layer["attn"]["Wqkv"]["kernel"], 0.02),
        (layer["mlp"]["Wi"]["kernel"], 0.02),
        (layer["attn"]["Wo"]["kernel"], 0.02 / np.sqrt(2 * 7)),
        (layer["mlp"]["Wo"]["kernel"], 0.02 / np.sqrt(2 * 7)),
        (params["head"]["dense"]["kernel"], 0.02 / np.sqrt(2 * 7)),
    ):
        assert np.abs(array).max() <= 2 * std * (1 + 1e-6)
        assert abs(array.std() / (std * truncated) - 1) < 0.05
    assert output_std(config) == pytest.approx(0.02 / np.sqrt(14))
    assert np.all(params["decoder_bias"] == 0) and np.all(layer["mlp_norm"]["scale"] == 1)


def test_a_transformers_config_json_loads_and_round_trips():
    reference = transformers.ModernBertConfig(**CONFIGS["biases"], **SPECIAL)
    config = ModernBertConfig.from_json(reference.to_json_string())  # what save_pretrained writes
    assert config == ModernBertConfig(**CONFIGS["biases"], **SPECIAL)
    again = transformers.ModernBertConfig(**named_fields(config))
    for key, value in named_fields(config).items():
        assert getattr(again, key) == getattr(reference, key) == value, key
    assert ModernBertConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hidden_size": 60, "num_attention_heads": 7}, "divisible"),
        ({"hidden_size": 60, "num_attention_heads": 4}, "even"),  # head size 15: RoPE needs pairs
        ({"classifier_pooling": "max"}, "'cls' or 'mean'"),
        ({"attention_kernel": "splash", "attention_dropout": 0.1}, "attention_dropout=0.0"),
        ({"tie_word_embeddings": False}, "tied"),
    ],
)
def test_bad_configs_fail_with_the_fix(fields, message):
    from bert_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        ModernBertConfig(**fields)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_changes_nothing_computed(policy):
    fields = CONFIGS["modern"]
    model = _hf_model(fields)
    config, params = _ours(fields, model)
    ids, mask = _batch(fields["vocab_size"], 2, 20)

    def loss(p, c):
        return jnp.sum(ModernBertForMaskedLM(c).apply({"params": p}, ids, mask).mlm_logits[:, :3] ** 2)

    plain = jax.grad(loss)(params, config)
    rematted = jax.grad(loss)(params, config.replace(remat_policy=policy))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(rematted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_splash_local_and_global_layers_equal_xla_in_the_interpreter():
    """The whole model with Pallas's splash kernel (interpreted on this CPU), local layers through its sliding-window
    mask: the same logits and gradients as XLA's attention with explicit masks."""
    fields = CONFIGS["modern"]
    model = _hf_model(fields)
    config, params = _ours(fields, model)
    config = config.replace(max_position_embeddings=256)  # no parameter depends on it
    ids, mask = _batch(fields["vocab_size"], 2, 150)  # over one 128-token block of the kernel; padded rows

    def loss(p, c):
        logits = ModernBertForMaskedLM(c).apply({"params": p}, ids, mask).mlm_logits
        return jnp.sum(jnp.where(mask[..., None] > 0, logits, 0.0)[:, :, :7] ** 2), logits

    (_, expected), grads_xla = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(params, config)
    splash = config.replace(attention_kernel="splash_interpret")
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(params, splash)
    real = mask.astype(bool)
    assert max_relative_error(np.asarray(logits)[real], np.asarray(expected)[real]) < 1e-4
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_xla), strict=True):
        assert max_relative_error(a, b) < 1e-4


def test_weight_decay_skips_the_norms_and_biases_of_the_modern_family():
    """As ModernBERT's recipe: every norm and bias is left out of weight decay, every matrix decayed."""
    from flax import linen as nn

    from bert_jax.training import optim

    config = ModernBertConfig(**CONFIGS["biases"], **SPECIAL)
    params = nn.meta.unbox(ModernBertForMaskedLM(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    mask = jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params["params"]))[0]
    for path, decayed in mask:
        names = [str(getattr(key, "key", key)) for key in path]
        one_dimensional = names[-1] in ("scale", "bias", "decoder_bias")
        assert decayed == (not one_dimensional), "/".join(names)
