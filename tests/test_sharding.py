"""Meshes, logical-axis rules, param/batch shardings and start-up validation (`bert_jax.sharding`).

Single-device checks run in this process. Multi-device behaviour needs 8 simulated CPU devices, and
`XLA_FLAGS=--xla_force_host_platform_device_count=8` only works before jax is first imported, which
other tests here have already done; so `multidevice` runs this file as a script in a subprocess
(`python -m tests.test_sharding`), which prints a JSON report (`_multidevice_report`), once per session.
The numerical check: a jitted forward pass with params and batch sharded over (8,1,1), (2,2,2) and
(1,1,8) meshes gives the single-device logits to 1e-5 in float32.
"""

from __future__ import annotations

import json
import pathlib
import types
from typing import Any

import numpy as np
import pytest

from bert_jax.models.configs import BertConfig, ConfigError, named_config
from bert_jax.sharding import (
    LOGICAL_AXIS_RULES,
    MeshConfig,
    abstract_boxed_params,
    batch_sharding,
    global_batch_from_process_local,
    logical_to_mesh_sharding,
    make_mesh,
    mesh_devices,
    padded_vocab_size,
    param_partition_specs,
    param_shardings,
    validate_parallelism,
)
from tests.simulated_devices import run_report

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_SIM_DEVICES = 8
FORWARD_MESHES = {"data8": (8, 1, 1), "mixed222": (2, 2, 2), "tensor8": (1, 1, 8)}
TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------------
# MeshConfig: validation and -1 resolution (pure arithmetic, no devices)


@pytest.mark.parametrize(
    "kwargs, num_devices, mesh_shape",
    [
        ({}, 8, (8, 1, 1)),
        ({"fsdp": 2}, 8, (4, 2, 1)),
        ({"data": 2, "fsdp": -1}, 8, (2, 4, 1)),
        ({"data": 1, "tensor": -1}, 8, (1, 1, 8)),
        ({"data": 2, "fsdp": 2, "tensor": 2}, 8, (2, 2, 2)),
        ({"dcn_data": 2, "fsdp": 2}, 8, (4, 2, 1)),  # data=-1 -> 2 per slice; the data axis spans both
        ({}, 1, (1, 1, 1)),
    ],
)
def test_resolve_fills_minus_one_with_the_remaining_devices(kwargs, num_devices, mesh_shape):
    resolved = MeshConfig(**kwargs).resolve(num_devices)
    assert resolved.is_resolved
    assert resolved.mesh_shape == mesh_shape
    assert resolved.num_devices == num_devices


def test_resolve_keeps_dcn_data_out_of_the_ici_shape():
    resolved = MeshConfig(dcn_data=2, fsdp=2).resolve(8)
    assert resolved.ici_shape == (2, 2, 1)
    assert resolved.dcn_data == 2


def test_product_mismatch_names_product_device_count_and_fix():
    with pytest.raises(ConfigError) as error:
        MeshConfig(data=3, fsdp=2).resolve(8)
    assert str(error.value) == (
        "mesh data=3 x fsdp=2 x tensor=1 = 6 does not match the 8 devices; "
        "set mesh.data=-1 or sizes whose product is 8."
    )


def test_product_mismatch_mentions_dcn_data_when_set():
    with pytest.raises(ConfigError, match=r"mesh dcn_data=2 x data=2 x fsdp=1 x tensor=1 = 4 does not match the 8"):
        MeshConfig(data=2, dcn_data=2).resolve(8)


def test_minus_one_without_a_whole_value_is_explained():
    with pytest.raises(ConfigError, match=r"8 devices cannot be split into 3 .* data=-1 has no whole value"):
        MeshConfig(fsdp=3).resolve(8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data": -1, "fsdp": -1}, "At most one mesh size may be -1"),
        ({"fsdp": 0}, r"mesh.fsdp must be a positive integer or -1"),
        ({"tensor": -2}, r"mesh.tensor must be a positive integer or -1"),
        ({"tensor": True}, r"mesh.tensor must be a positive integer or -1"),
        ({"data": "2"}, r"mesh.data must be a positive integer or -1 \(the rest\), got '2'"),
        ({"dcn_data": -1}, r"mesh.dcn_data must be a positive integer, got -1"),
    ],
)
def test_mesh_config_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MeshConfig(**kwargs)


def test_unresolved_shape_asks_for_resolve():
    with pytest.raises(ConfigError, match=r"call .resolve\(num_devices\) first"):
        _ = MeshConfig().mesh_shape


# ---------------------------------------------------------------------------------------------------
# Device order, with stand-in devices for multi-slice / multi-process layouts CPU cannot simulate


def _fake_devices(n: int, per_slice: int | None = None, per_process: int | None = None) -> list[types.SimpleNamespace]:
    """Stand-ins that `mesh_utils` treats like CPU devices, in slices (if `per_slice`) and processes."""
    devices = []
    for i in range(n):
        fields = {"id": i, "platform": "cpu", "device_kind": "fake"}
        fields["process_index"] = i // per_process if per_process else 0
        if per_slice:
            fields["slice_index"] = i // per_slice
        devices.append(types.SimpleNamespace(**fields))
    return devices


def test_hybrid_mesh_keeps_each_slice_contiguous_on_the_data_axis():
    devices = _fake_devices(8, per_slice=4)
    grid = mesh_devices(MeshConfig(data=2, fsdp=2, dcn_data=2), devices[::-1])  # order given must not matter
    assert grid.shape == (4, 2, 1)
    slices = np.vectorize(lambda d: d.slice_index)(grid)
    np.testing.assert_array_equal(slices[:2], 0)
    np.testing.assert_array_equal(slices[2:], 1)


def test_hybrid_mesh_uses_processes_where_devices_have_no_slice_index():
    devices = _fake_devices(8, per_process=4)
    grid = mesh_devices(MeshConfig(fsdp=4, dcn_data=2), devices)
    processes = np.vectorize(lambda d: d.process_index)(grid)
    assert grid.shape == (2, 4, 1)
    np.testing.assert_array_equal(processes[:, 0, 0], [0, 1])


def test_hybrid_mesh_uses_processes_of_a_single_multi_host_slice():
    grid = mesh_devices(MeshConfig(fsdp=4, dcn_data=2), _fake_devices(8, per_slice=8, per_process=4))
    np.testing.assert_array_equal(np.vectorize(lambda d: d.process_index)(grid)[:, 0, 0], [0, 1])


def test_dcn_data_must_match_the_number_of_slices():
    with pytest.raises(ConfigError, match=r"mesh.dcn_data=2 but the 8 devices span 4 slices and 1 process; set"):
        mesh_devices(MeshConfig(dcn_data=2), _fake_devices(8, per_slice=2))


def test_make_mesh_rejects_a_mismatch_before_building_anything():
    with pytest.raises(ConfigError, match=r"= 6 does not match the 8 devices"):
        mesh_devices(MeshConfig(data=3, fsdp=2), _fake_devices(8, per_slice=8))


def test_make_mesh_on_the_local_device():
    import jax

    mesh = make_mesh(MeshConfig())
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.devices.size == jax.device_count()
    with pytest.raises(ConfigError, match=rf"does not match the {jax.device_count()} device"):
        make_mesh(MeshConfig(data=jax.device_count() + 1))


# ---------------------------------------------------------------------------------------------------
# Rules and specs (mesh-independent, via eval_shape)


def _leaf(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _spec(spec: Any) -> list[Any]:
    return [list(axis) if isinstance(axis, tuple) else axis for axis in spec]


def test_rules_cover_every_logical_name_the_model_uses():
    import jax

    from bert_jax.models.bert import BertForPreTraining

    boxed = abstract_boxed_params(BertForPreTraining(named_config("tiny")))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    used = {name for leaf in leaves for name in leaf.names if name is not None}
    assert used <= {name for name, _ in LOGICAL_AXIS_RULES}, used


@pytest.fixture(scope="module")
def tiny_specs() -> Any:
    from bert_jax.models.bert import BertForPreTraining

    return param_partition_specs(BertForPreTraining(named_config("tiny")))


@pytest.mark.parametrize(
    "path, spec",
    [
        ("bert/encoder/layer_0/attention/self/query/kernel", ["fsdp", "tensor", None]),
        ("bert/encoder/layer_0/attention/self/query/bias", ["tensor", None]),
        ("bert/encoder/layer_0/attention/output/dense/kernel", ["tensor", None, "fsdp"]),
        ("bert/encoder/layer_0/intermediate/dense/kernel", ["fsdp", "tensor"]),
        ("bert/encoder/layer_0/output/dense/kernel", ["tensor", "fsdp"]),
        ("bert/embeddings/word_embeddings/embedding", ["tensor", "fsdp"]),
        ("bert/embeddings/position_embeddings/embedding", [None, "fsdp"]),
        ("bert/embeddings/LayerNorm/scale", [None]),
        ("bert/pooler/dense/kernel", ["fsdp", "tensor"]),
        ("cls/predictions/bias", ["tensor"]),
        ("cls/seq_relationship/kernel", ["fsdp", None]),
    ],
)
def test_param_partition_specs(tiny_specs, path, spec):
    assert _spec(_leaf(tiny_specs, path)) == spec


def test_logical_to_mesh_sharding_accepts_logical_specs():
    from jax.sharding import PartitionSpec

    mesh = make_mesh(MeshConfig())
    shardings = logical_to_mesh_sharding({"w": PartitionSpec("embed", "mlp"), "b": PartitionSpec("norm")}, mesh)
    assert _spec(shardings["w"].spec) == ["fsdp", "tensor"]
    assert _spec(shardings["b"].spec) == [None]


def test_batch_sharding_splits_only_the_batch_dimension():
    assert _spec(batch_sharding(make_mesh(MeshConfig())).spec) == [["data", "fsdp"]]


def test_global_batch_requires_one_leading_dimension():
    mesh = make_mesh(MeshConfig())
    batch = {"input_ids": np.zeros((4, 8), np.int32), "labels": np.zeros((3,), np.int32)}
    with pytest.raises(ConfigError, match="same leading"):
        global_batch_from_process_local(batch, mesh)


# ---------------------------------------------------------------------------------------------------
# validate_parallelism: each problem is reported with its numbers and a fix

SMALL = BertConfig(vocab_size=1024, hidden_size=128, num_hidden_layers=1, num_attention_heads=8, intermediate_size=512)


def _problems(config: BertConfig, mesh: MeshConfig, batch: int, devices: int = 8) -> str:
    with pytest.raises(ConfigError) as error:
        validate_parallelism(config, mesh, batch, devices)
    message = str(error.value)
    assert message.startswith("Parallelism settings do not fit:")
    return message


def test_validate_accepts_sizes_that_fit():
    assert validate_parallelism(SMALL, MeshConfig(data=2, fsdp=2, tensor=2), 16, 8) is None
    assert validate_parallelism(SMALL, MeshConfig(tensor=-1, data=1), 8, 8) is None


def test_validate_batch_not_divisible_by_batch_shards():
    message = _problems(SMALL, MeshConfig(data=2, fsdp=2, tensor=2), 6)
    assert "global batch size 6 is not divisible by the 4 batch shards (mesh data=2 x fsdp=2" in message
    assert "multiple of 4 (e.g. 4)" in message
    assert message.count("\n  - ") == 1


def test_validate_batch_counts_dcn_data():
    message = _problems(SMALL, MeshConfig(data=2, fsdp=2, dcn_data=2), 12)
    assert "not divisible by the 8 batch shards (mesh data=4 x fsdp=2; the data axis includes dcn_data=2)" in message


def test_validate_heads_not_divisible_by_tensor():
    config = SMALL.replace(num_attention_heads=2)
    message = _problems(config, MeshConfig(data=1, tensor=8), 8)
    assert "num_attention_heads=2 is not divisible by the 8-way 'heads' sharding (mesh tensor=8)" in message
    assert "possible sizes: 1, 2" in message
    assert message.count("\n  - ") == 1


def test_validate_intermediate_not_divisible_by_tensor():
    config = SMALL.replace(intermediate_size=500)
    message = _problems(config, MeshConfig(data=1, tensor=8), 8)
    assert "intermediate_size=500 is not divisible by the 8-way 'mlp' sharding (mesh tensor=8)" in message
    assert message.count("\n  - ") == 1


def test_validate_vocab_not_divisible_suggests_padding():
    config = SMALL.replace(vocab_size=30522)
    message = _problems(config, MeshConfig(data=1, tensor=8), 8)
    assert "padded_vocab_size=30522 is not divisible by the 8-way 'vocab' sharding (mesh tensor=8)" in message
    assert "set model.vocab_pad_multiple to a multiple of 8 (the padded vocabulary then has 30528 rows" in message
    assert message.count("\n  - ") == 1


def test_validate_accepts_a_vocab_padded_to_the_tensor_axis():
    validate_parallelism(SMALL.replace(vocab_size=30522, vocab_pad_multiple=128), MeshConfig(data=1, tensor=8), 8, 8)


def test_validate_hidden_not_divisible_by_fsdp():
    message = _problems(SMALL, MeshConfig(data=1, fsdp=3), 6, devices=3)
    assert "hidden_size=128 is not divisible by the 3-way 'embed' sharding (mesh fsdp=3)" in message
    assert message.count("\n  - ") == 1


def test_validate_reports_every_problem_at_once():
    message = _problems(named_config("tiny"), MeshConfig(data=1, tensor=8), 12)
    assert "num_attention_heads=2" in message
    assert "padded_vocab_size=30522" in message
    assert message.count("\n  - ") == 2


def test_validate_resolves_minus_one_against_the_device_count():
    with pytest.raises(ConfigError, match="does not match the 8 devices"):
        validate_parallelism(SMALL, MeshConfig(data=3), 24, 8)


@pytest.mark.parametrize("vocab, multiple, padded", [(30522, 8, 30528), (30522, 128, 30592), (1024, 8, 1024)])
def test_padded_vocab_size(vocab, multiple, padded):
    assert padded_vocab_size(vocab, multiple) == padded


def test_padded_vocab_size_rejects_non_positive():
    with pytest.raises(ValueError, match="positive"):
        padded_vocab_size(30522, 0)


# ---------------------------------------------------------------------------------------------------
# Multi-device checks (8 simulated CPU devices, in a subprocess)


def _forward_config() -> BertConfig:
    """tiny with 8 heads and a vocabulary padded to 8, so that all three test meshes fit."""
    return named_config("tiny", num_attention_heads=8, vocab_size=padded_vocab_size(30522, 8))


def _numpy_batch(config: BertConfig, batch: int = 8, length: int = 32, predictions: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(length // 2, length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(1, config.vocab_size, size=(batch, length)) * mask).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": (np.arange(length)[None, :] >= lengths[:, None] // 2).astype(np.int32) * mask,
        "masked_lm_positions": rng.integers(0, length // 2, size=(batch, predictions)).astype(np.int32),
    }


def _error_text(fn: Any) -> str | None:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def _mesh_report() -> dict[str, Any]:
    import jax

    configs = {
        "default": MeshConfig(),
        "fsdp2": MeshConfig(fsdp=2),
        "dcn2_folded": MeshConfig(data=2, fsdp=2, dcn_data=2),
    }
    report: dict[str, Any] = {"device_count": jax.device_count()}
    for name, config in configs.items():
        mesh = make_mesh(config)
        report[name] = {"shape": dict(mesh.shape), "ids": [d.id for d in mesh.devices.flat]}
    report["mismatch"] = _error_text(lambda: make_mesh(MeshConfig(data=3, fsdp=2)))
    return report


def _spec_report() -> dict[str, Any]:
    import jax

    from bert_jax.models.bert import BertForPreTraining, init_params

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    tiny = BertForPreTraining(named_config("tiny"))
    shardings = param_shardings(tiny, mesh)
    shapes = jax.eval_shape(lambda: init_params(tiny, jax.random.key(0)))
    paths = {
        "query": "bert/encoder/layer_0/attention/self/query/kernel",
        "word": "bert/embeddings/word_embeddings/embedding",
        "layernorm": "bert/embeddings/LayerNorm/scale",
    }
    report = {}
    for name, path in paths.items():
        sharding = _leaf(shardings, path)
        report[name] = {"spec": _spec(sharding.spec), "shard": list(sharding.shard_shape(_leaf(shapes, path).shape))}
    tensor8 = make_mesh(MeshConfig(data=1, tensor=8))
    report["tiny_tensor8_validate"] = _error_text(
        lambda: validate_parallelism(named_config("tiny"), MeshConfig(data=1, tensor=8), 8, tensor8)
    )
    report["tiny_tensor8_shardings"] = _error_text(lambda: param_shardings(tiny, tensor8))
    return report


def _random_params(model: Any) -> Any:
    """Host (numpy) params of `model`'s shapes: N(0, 0.02), LayerNorm scales near 1, biases nonzero.

    Cheaper than `init_params` on 8 simulated devices, and placing host arrays needs no resharding.
    """
    import jax

    from bert_jax.models.bert import init_params

    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(0)

    def draw(path: Any, shape: Any) -> np.ndarray:
        centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return (centre + rng.normal(0.0, 0.02, shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _forward_report() -> dict[str, Any]:
    """Max |sharded - single-device| of both logits for each mesh, on the same params and batch."""
    import jax

    from bert_jax.models.bert import BertForPreTraining

    config = _forward_config()
    model = BertForPreTraining(config)
    params = _random_params(model)
    batch = _numpy_batch(config)
    apply = jax.jit(lambda p, b: tuple(model.apply({"params": p}, **b)))
    reference = [np.asarray(x) for x in apply(params, batch)]
    report: dict[str, Any] = {"reference_max_abs": [float(np.abs(x).max()) for x in reference]}
    for name, shape in FORWARD_MESHES.items():
        mesh_config = MeshConfig(*shape)
        mesh = make_mesh(mesh_config)
        validate_parallelism(config, mesh_config, len(batch["input_ids"]), mesh)
        sharded_params = jax.device_put(params, param_shardings(model, mesh))
        global_batch = global_batch_from_process_local(batch, mesh)
        outputs = [np.asarray(x) for x in apply(sharded_params, global_batch)]
        query = _leaf(sharded_params, "bert/encoder/layer_0/attention/self/query/kernel")
        report[name] = {
            "max_abs_diff": [float(np.abs(a - b).max()) for a, b in zip(outputs, reference, strict=True)],
            "query_shard": list(query.addressable_shards[0].data.shape),
            "batch_spec": _spec(global_batch["input_ids"].sharding.spec),
            "batch_shard": list(global_batch["input_ids"].addressable_shards[0].data.shape),
            "batch_shape": list(global_batch["input_ids"].shape),
        }
    return report


def _multidevice_report() -> dict[str, Any]:
    return {"mesh": _mesh_report(), "specs": _spec_report(), "forward": _forward_report()}


@pytest.fixture(scope="module")
def multidevice() -> dict[str, Any]:
    return run_report("tests.test_sharding", devices=NUM_SIM_DEVICES, timeout=300)


def test_simulated_devices(multidevice):
    assert multidevice["mesh"]["device_count"] == NUM_SIM_DEVICES


@pytest.mark.parametrize(
    "name, shape",
    [("default", [8, 1, 1]), ("fsdp2", [4, 2, 1]), ("dcn2_folded", [4, 2, 1])],
)
def test_multidevice_mesh_shapes(multidevice, name, shape):
    mesh = multidevice["mesh"][name]
    assert list(mesh["shape"].values()) == shape
    assert sorted(mesh["ids"]) == list(range(NUM_SIM_DEVICES))


def test_multidevice_mismatch_message(multidevice):
    assert multidevice["mesh"]["mismatch"] == (
        "mesh data=3 x fsdp=2 x tensor=1 = 6 does not match the 8 devices; "
        "set mesh.data=-1 or sizes whose product is 8."
    )


@pytest.mark.parametrize(
    "name, spec, shard",
    [
        ("query", ["fsdp", "tensor", None], [64, 1, 64]),  # [hidden 128, heads 2, head_dim 64] on (2, 2, 2)
        ("word", ["tensor", "fsdp"], [15261, 64]),  # [vocab 30522, hidden 128]
        ("layernorm", [None], [128]),  # replicated
    ],
)
def test_param_shardings_on_a_2x2x2_mesh(multidevice, name, spec, shard):
    assert multidevice["specs"][name] == {"spec": spec, "shard": shard}


def test_tiny_on_tensor8_fails_clearly_before_compiling(multidevice):
    message = multidevice["specs"]["tiny_tensor8_validate"]
    assert "num_attention_heads=2 is not divisible by the 8-way 'heads' sharding" in message
    assert "set model.vocab_pad_multiple to a multiple of 8 (the padded vocabulary then has 30528 rows" in message
    assert "is not divisible by mesh axes tensor (8-way)" in multidevice["specs"]["tiny_tensor8_shardings"]


@pytest.mark.parametrize("name", FORWARD_MESHES)
def test_sharded_forward_matches_single_device(multidevice, name):
    forward = multidevice["forward"]
    assert min(forward["reference_max_abs"]) > 1e-3  # the logits are not trivially zero
    mlm_diff, nsp_diff = forward[name]["max_abs_diff"]
    assert mlm_diff <= TOLERANCE and nsp_diff <= TOLERANCE, forward[name]


@pytest.mark.parametrize(
    "name, query_shard, batch_shard",
    [("data8", [128, 8, 16], [1, 32]), ("mixed222", [64, 4, 16], [2, 32]), ("tensor8", [128, 1, 16], [8, 32])],
)
def test_sharded_forward_really_shards(multidevice, name, query_shard, batch_shard):
    forward = multidevice["forward"][name]
    assert forward["query_shard"] == query_shard
    assert forward["batch_spec"] == [["data", "fsdp"]]
    assert forward["batch_shard"] == batch_shard
    assert forward["batch_shape"] == [8, 32]


if __name__ == "__main__":
    print(json.dumps(_multidevice_report()))
