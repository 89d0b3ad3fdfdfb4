"""Device meshes, the logical-axis rules, and the param/batch sharding helpers.

Parallelism is a configuration, never a model edit: the model names every parameter dimension with
a logical axis ("vocab", "embed", "heads", ...), `LOGICAL_AXIS_RULES` maps those names to the mesh
axes ("data", "fsdp", "tensor"), and `MeshConfig` says how many devices each mesh axis spans.

    mesh = make_mesh(MeshConfig(data=-1, fsdp=2))
    validate_parallelism(model.config, mesh_config, global_batch_size, mesh)   # before any compile
    params = jax.device_put(params, param_shardings(model, mesh))
    batch = global_batch_from_process_local(numpy_batch, mesh)

Mesh axes, from the outermost (least communication) to the innermost (most):
  data    pure data parallelism: params replicated, batch split. With `dcn_data > 1` this axis also
          spans slices (or hosts) over the data-center network, a hybrid ICI x DCN mesh.
  fsdp    data parallelism with params, gradients and optimizer state sharded over it (ZeRO-3):
          the batch is split over it too, and each layer's weights are all-gathered when used.
  tensor  Megatron-style model parallelism: attention heads, the MLP width and the vocabulary split.

Logical-axis rules (`LOGICAL_AXIS_RULES`): flax applies the first rule whose mesh axes are still free.

- "batch" -> ("data", "fsdp"): both data-parallel flavours split the examples; fsdp differs from data
  only in also sharding the params.
- "embed" (the hidden size, on every kernel) -> "fsdp": ZeRO-3. Every weight matrix has an "embed"
  dimension, so each fsdp shard holds 1/fsdp of every layer; XLA all-gathers a layer's weights for the
  matmul and reduce-scatters its gradient. Parameter and optimizer memory fall by the fsdp factor.
- "heads", "mlp" -> "tensor": Megatron's split. Query/key/value are column-parallel over heads, the
  attention output row-parallel over heads; the MLP's up projection column-, its down projection
  row-parallel over "mlp". One all-reduce per block, no communication inside attention.
- "vocab" -> "tensor": the word embedding table and the tied MLM decoder are the largest single
  matrices (30522 x hidden); splitting the vocabulary splits the logits' biggest matmul too.
- "embed_out" -> "tensor": the output side of the square hidden -> hidden kernels (pooler, MLM
  transform), whose input side is already "embed" -> fsdp; tensor-parallel column split.
- "kv" (the head dim), "norm" (LayerNorm scale/bias), "length" -> None: small or needed whole on every
  device; splitting them buys no memory and costs collectives.
- "activation_embed" -> None: the hidden dimension of activations ([batch, length, hidden] between blocks),
  whole on every device. It has its own name because "embed" -> fsdp would clash with "batch" -> fsdp.

Activations: the hidden states between blocks are pinned to ("batch", "length", "activation_embed"), rows over
data x fsdp and the hidden dimension whole, with `constrain_activation` (a `with_sharding_constraint`, so their
gradients get the same layout). That is the layout FSDP and Megatron's split want anyway (weights gathered or
split inside a block, activations whole between blocks). Left to XLA's propagation, the backward pass of the
masked-LM head on a data x fsdp x tensor mesh was miscompiled (issue 40, jax/jaxlib 0.10.2 on CPU): the
partitioner re-tiled the rows of a cotangent from (data, fsdp) to (fsdp, data) order with a collective-permute
and never permuted them back, so on a (2, 2, 2) mesh the gradients of batch shards 1 and 2 were swapped and
every weight below the head trained on the wrong rows' gradients (the loss itself, the forward pass, was right).

Everything here checks sizes with a clear message (`ConfigError`, a `ValueError`) before anything
is compiled, and no function reads absl flags.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax.errors import ConfigError

logger = logging.getLogger(__name__)

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# The rules table; its rationale is in the module docstring ("Logical-axis rules").
LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("activation_embed", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How many devices each mesh axis spans; -1 (at most one of data/fsdp/tensor) means "the rest".

    `dcn_data` is data parallelism across slices (TPU multislice) or processes over the data-center
    network; the mesh's "data" axis then has `dcn_data * data` devices, slice-major. The product
    `dcn_data * data * fsdp * tensor` must equal the device count; `make_mesh` checks it.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1

    def __post_init__(self) -> None:
        for name in ("data", "fsdp", "tensor", "dcn_data"):
            value = getattr(self, name)
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if not is_int or not (value >= 1 or (value == -1 and name != "dcn_data")):
                fix = "a positive integer" if name == "dcn_data" else "a positive integer or -1 (the rest)"
                raise ConfigError(f"mesh.{name} must be {fix}, got {value!r}.")
        if [self.data, self.fsdp, self.tensor].count(-1) > 1:
            raise ConfigError(
                f"At most one mesh size may be -1 (the rest), got {self._describe()}; give the others explicitly."
            )

    def _describe(self) -> str:
        parts = [f"data={self.data}", f"fsdp={self.fsdp}", f"tensor={self.tensor}"]
        if self.dcn_data != 1:
            parts.insert(0, f"dcn_data={self.dcn_data}")
        return " x ".join(parts)

    @property
    def is_resolved(self) -> bool:
        return -1 not in (self.data, self.fsdp, self.tensor)

    def resolve(self, num_devices: int) -> MeshConfig:
        """The same config with -1 replaced by the remaining devices; checks the product is `num_devices`."""
        fields = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        if not self.is_resolved:
            fixed = self.dcn_data * math.prod(v for v in fields.values() if v != -1)
            rest = next(k for k, v in fields.items() if v == -1)
            if num_devices % fixed:
                raise ConfigError(
                    f"mesh {self._describe()}: the {_devices(num_devices)} cannot be split into {fixed} "
                    f"(the product of the other sizes), so {rest}=-1 has no whole value; "
                    f"choose sizes whose product divides {num_devices}."
                )
            fields[rest] = num_devices // fixed
        resolved = dataclasses.replace(self, **fields)
        product = resolved.num_devices
        if product != num_devices:
            raise ConfigError(
                f"mesh {resolved._describe()} = {product} does not match the {_devices(num_devices)}; "
                f"set mesh.data=-1 or sizes whose product is {num_devices}."
            )
        return resolved

    @property
    def num_devices(self) -> int:
        """Devices this (resolved) config spans."""
        self._require_resolved()
        return self.dcn_data * self.data * self.fsdp * self.tensor

    @property
    def ici_shape(self) -> tuple[int, int, int]:
        """(data, fsdp, tensor) within one slice: the fast-interconnect part of the mesh."""
        self._require_resolved()
        return (self.data, self.fsdp, self.tensor)

    @property
    def mesh_shape(self) -> tuple[int, int, int]:
        """The global mesh shape over `MESH_AXES`; the data axis includes `dcn_data`."""
        self._require_resolved()
        return (self.dcn_data * self.data, self.fsdp, self.tensor)

    def _require_resolved(self) -> None:
        if not self.is_resolved:
            raise ConfigError(f"mesh {self._describe()} has a -1 size; call .resolve(num_devices) first.")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _devices(n: int) -> str:
    return _plural(n, "device", "devices")


# ---------------------------------------------------------------------------------------------------
# Meshes


def _granules(devices: Sequence[Any], attr: str) -> int:
    """How many distinct `attr` values (slices or processes) the devices have; 0 if they lack it."""
    return len({getattr(d, attr) for d in devices}) if hasattr(devices[0], attr) else 0


def _topology_mesh(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    """`create_device_mesh`, splitting physical axes only when the shape cannot map without it."""
    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def mesh_devices(config: MeshConfig, devices: Sequence[Any] | None = None) -> np.ndarray:
    """The devices arranged in a (data, fsdp, tensor) array, topology-aware; see `make_mesh`."""
    devices = list(jax.devices() if devices is None else devices)
    resolved = config.resolve(len(devices))
    if resolved.dcn_data == 1:
        return _topology_mesh(resolved.mesh_shape, devices)
    slices, processes = _granules(devices, "slice_index"), _granules(devices, "process_index")
    if resolved.dcn_data in (slices, processes):
        # Slices (TPU multislice) when they match, else processes (e.g. GPU hosts) as the DCN units.
        return mesh_utils.create_hybrid_device_mesh(
            resolved.ici_shape,
            (resolved.dcn_data, 1, 1),
            devices,
            process_is_granule=slices != resolved.dcn_data,
        )
    if max(slices, processes) == 1:
        # One slice and one process (a single host, simulated CPU devices): there is no DCN link to
        # respect, so dcn_data only folds into the data axis. Same mesh shape, same numerics.
        logger.warning(
            "mesh.dcn_data=%d but all %d devices are in one slice and process; building a single-slice "
            "mesh with data=%d (dcn_data folded into data).",
            resolved.dcn_data,
            len(devices),
            resolved.mesh_shape[0],
        )
        return _topology_mesh(resolved.mesh_shape, devices)
    found = _plural(processes, "process", "processes")
    if slices:
        found = f"{_plural(slices, 'slice', 'slices')} and {found}"
    raise ConfigError(
        f"mesh.dcn_data={resolved.dcn_data} but the {_devices(len(devices))} span {found}; set "
        f"mesh.dcn_data to the number of slices (or of processes, where devices have no slice index)."
    )


def make_mesh(config: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A `Mesh` over ("data", "fsdp", "tensor") for `config` on `devices` (default: all devices).

    Device order comes from `mesh_utils.create_device_mesh` (ICI topology-aware on TPU), or
    `create_hybrid_device_mesh` when `config.dcn_data > 1` and the devices span that many slices
    (or, on platforms without slice indices such as GPU, processes). If all devices sit in one
    slice/process, as with simulated CPU devices, `dcn_data` folds into the data axis with a warning.
    Raises `ConfigError` naming the sizes and the fix when they do not multiply to the device count.
    """
    return Mesh(mesh_devices(config, devices), MESH_AXES)


# ---------------------------------------------------------------------------------------------------
# Logical axes -> shardings


def _is_spec_leaf(x: Any) -> bool:
    return isinstance(x, PartitionSpec | nn.meta.AxisMetadata)


def _logical_spec(x: Any) -> PartitionSpec:
    """The logical PartitionSpec of one leaf: as given, from its box, or replicated when unboxed."""
    return x if isinstance(x, PartitionSpec) else nn.get_partition_spec(x)


def logical_partition_specs(tree: Any) -> Any:
    """Logical PartitionSpecs for a tree of boxed (`nn.Partitioned`) values or of logical specs.

    Unboxed array leaves are replicated (an empty spec), as `nn.get_partition_spec` does.
    """
    return jax.tree.map(_logical_spec, tree, is_leaf=_is_spec_leaf)


def logical_to_mesh_specs(tree: Any, rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
    """Mesh-axis PartitionSpecs (mesh-independent) for a boxed or logical-spec tree under `rules`."""
    return nn.logical_to_mesh(logical_partition_specs(tree), rules)


def logical_to_mesh_sharding(tree: Any, mesh: Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
    """`NamedSharding`s on `mesh` for a tree of boxed values or logical PartitionSpecs under `rules`.

    The result has the tree's structure with boxes removed, i.e. that of the unboxed params.
    """
    return nn.logical_to_mesh_sharding(logical_partition_specs(tree), mesh, rules)


def _default_init_args() -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (jnp.zeros((1, 8), jnp.int32),), {"deterministic": True}


def abstract_boxed_params(
    model: nn.Module,
    init_args: Sequence[Any] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """The boxed params' shapes and logical names via `jax.eval_shape(model.init)`: no real init.

    `init_args`/`init_kwargs` are what `model.init` takes after the rng; the default, a [1, 8] int32
    `input_ids` and `deterministic=True`, fits `BertModel`/`BertForPreTraining`.
    """
    if init_args is None:
        init_args, default_kwargs = _default_init_args()
        init_kwargs = default_kwargs if init_kwargs is None else init_kwargs
    kwargs = dict(init_kwargs or {})
    variables = jax.eval_shape(lambda rng: model.init(rng, *init_args, **kwargs), jax.random.key(0))
    return variables["params"]


def param_partition_specs(
    model: nn.Module,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
    init_args: Sequence[Any] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Mesh-axis PartitionSpecs for `model`'s (unboxed) params under `rules`; mesh-independent."""
    return logical_to_mesh_specs(abstract_boxed_params(model, init_args, init_kwargs), rules)


def _axis_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in names)


def _check_divisible(shapes: Any, shardings: Any, mesh: Mesh) -> None:
    """Every sharded dimension must divide evenly; names the first param that does not, and the fix."""
    flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    flat_shardings = jax.tree.leaves(shardings)
    for (path, shape), sharding in zip(flat_shapes, flat_shardings, strict=True):
        for dim, (size, axes) in enumerate(zip(shape.shape, sharding.spec, strict=False)):
            ways = _axis_size(mesh, axes)
            if size % ways:
                raise ConfigError(
                    f"Param {jax.tree_util.keystr(path)} {tuple(shape.shape)}: dimension {dim} ({size}) "
                    f"is not divisible by mesh axes {axes} ({ways}-way); change the mesh sizes or the "
                    "model size (validate_parallelism names the config field)."
                )


def param_shardings(
    model: nn.Module,
    mesh: Mesh,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
    init_args: Sequence[Any] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """`NamedSharding`s for `model`'s params on `mesh`, shaped like `init_params`' output.

    Uses `jax.eval_shape` on `model.init` (no memory, no compute); checks that every sharded
    dimension divides evenly so a misfit fails here, not inside `jit`.
    """
    boxed = abstract_boxed_params(model, init_args, init_kwargs)
    shardings = logical_to_mesh_sharding(boxed, mesh, rules)
    _check_divisible(nn.meta.unbox(boxed), shardings, mesh)
    return shardings


def traced_in_mesh(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """`fn`, traced with `mesh` as the abstract mesh: code inside it can then place a `shard_map` on the job's
    mesh without being handed it (the splash attention kernel, deep in the model, does)."""

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced


def constrain_activation(
    x: jax.Array, logical_axes: tuple[str | None, ...], rules: LogicalRules = LOGICAL_AXIS_RULES
) -> jax.Array:
    """`x` pinned to the layout its logical axes name, on the mesh the step is traced in (`traced_in_mesh`).

    Without a mesh of more than one device (a plain `jit`, one device) `x` is returned unchanged. The constraint
    also fixes the layout of `x`'s gradient, which is the point: see "Activations" in the module docstring for
    the miscompile that XLA's own choice of layout produced.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    spec = nn.logical_to_mesh_axes(logical_axes, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES) -> NamedSharding:
    """The input batch's sharding: dimension 0 over the "batch" rule's axes, the rest replicated."""
    return nn.logical_to_mesh_sharding(PartitionSpec("batch"), mesh, rules)


def global_batch_from_process_local(
    local_batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
) -> dict[str, jax.Array]:
    """Global `jax.Array`s from this process's rows of the batch (`make_array_from_process_local_data`).

    Each process passes its own rows (the same number in every process); the global batch is their
    concatenation in the order of the processes' devices along the batch mesh axes (process order for
    `make_mesh` over `jax.devices()` on CPU), split over those axes. Every batch shard must
    therefore lie on the devices of one process: a mesh whose batch axes do not separate the processes
    (e.g. tensor parallelism across hosts with data * fsdp smaller than the process count) raises a
    `ConfigError`, since the processes' different rows would otherwise silently become inconsistent
    copies of one shard.
    """
    sharding = batch_sharding(mesh, rules)
    shards = _axis_size(mesh, sharding.spec[0])
    rows = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in local_batch.items()}
    if len(set(rows.values())) > 1 or None in rows.values():
        raise ConfigError(f"Every batch array needs the same leading (batch) dimension; got {rows}.")
    global_rows = next(iter(rows.values()), 0) * jax.process_count()
    if global_rows % shards:
        raise ConfigError(
            f"Global batch of {global_rows} rows does not split over the {shards} batch shards "
            f"(mesh axes {sharding.spec[0]}); use a global batch size that is a multiple of {shards}."
        )
    if jax.process_count() > 1:
        _check_batch_shards_per_process(sharding, global_rows)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def place_host_tree(host_tree: Any, shardings: Any) -> Any:
    """Host arrays (the same full values on every process) as global arrays with `shardings`; each process
    transfers only the slices its devices hold (warm starts, restored host copies)."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda index, x=x: np.asarray(x)[index]),
        host_tree,
        shardings,
    )


def _check_batch_shards_per_process(sharding: NamedSharding, global_rows: int) -> None:
    """Each batch shard (a range of rows) must be held by the devices of a single process."""
    owners: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((global_rows,)).items():
        owners.setdefault(index[0].start or 0, set()).add(device.process_index)
    shared = sorted(tuple(sorted(p)) for p in owners.values() if len(p) > 1)
    if shared:
        raise ConfigError(
            f"The batch mesh axes {sharding.spec[0]} ({_plural(len(owners), 'shard', 'shards')}) do not separate the "
            f"{jax.process_count()} processes: processes {list(shared[0])} hold the same batch shard but each feeds "
            "its own rows. Give every process its own data/fsdp positions: make mesh data * fsdp (times dcn_data) "
            "a multiple of the process count, and keep tensor parallelism within a process."
        )


# ---------------------------------------------------------------------------------------------------
# Start-up validation


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """`vocab_size` rounded up to a multiple of `multiple` (e.g. the tensor-parallel size, or 128)."""
    if vocab_size <= 0 or multiple <= 0:
        raise ValueError(f"vocab_size and multiple must be positive, got {vocab_size} and {multiple}.")
    return -(-vocab_size // multiple) * multiple


def vocab_shards(mesh_config: MeshConfig, devices: int | Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES) -> int:
    """Into how many parts the vocabulary rows are split on this mesh (the tensor axis by default)."""
    sizes = _mesh_axis_sizes(mesh_config, devices)
    return math.prod(sizes[a] for a in _rule_axes(rules, "vocab"))


def _mesh_axis_sizes(mesh_config: MeshConfig, devices: int | Mesh) -> dict[str, int]:
    if isinstance(devices, Mesh):
        return dict(devices.shape)
    return dict(zip(MESH_AXES, mesh_config.resolve(devices).mesh_shape, strict=True))


def _rule_axes(rules: LogicalRules, logical: str) -> tuple[str, ...]:
    """The mesh axes of the first rule for `logical` (what flax applies when they are free)."""
    for name, axes in rules:
        if name == logical:
            return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    return ()


def _divisors(n: int, at_most: int) -> str:
    return ", ".join(str(d) for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _split_problem(
    field: str, value: int, logical: str, axes: tuple[str, ...], sizes: dict[str, int], hint: str = ""
) -> str | None:
    ways = math.prod(sizes[a] for a in axes)
    if value % ways == 0:
        return None
    where = " x ".join(f"{a}={sizes[a]}" for a in axes)
    fix = " or ".join(f"mesh.{a}" for a in axes)
    return (
        f"{field}={value} is not divisible by the {ways}-way {logical!r} sharding (mesh {where}); "
        f"{hint}set {fix} so the split divides {value} (possible sizes: {_divisors(value, ways)})"
        + ("." if hint else f", or make {field} a multiple of {ways}.")
    )


class ModelShape(Protocol):
    """The sizes of a model that the mesh splits: any model family's config has these fields."""

    num_attention_heads: int
    intermediate_size: int
    hidden_size: int
    vocab_size: int
    vocab_pad_multiple: int

    @property
    def padded_vocab_size(self) -> int: ...


def validate_parallelism(
    model_config: ModelShape,
    mesh_config: MeshConfig,
    global_batch_size: int,
    devices: int | Mesh,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
) -> None:
    """Checks, before anything compiles, that the model, batch and mesh sizes fit together.

    `devices` is the device count (then `mesh_config`'s -1 is resolved against it) or a built `Mesh`
    (its axis sizes are used). Raises one `ConfigError` (a `ValueError`) listing every problem, each
    with the numbers and a fix: batch not divisible by the batch shards (dcn_data x data x fsdp), and
    heads, intermediate size, vocabulary or hidden size not divisible by the axes they are split over.
    """
    sizes = _mesh_axis_sizes(mesh_config, devices)
    problems: list[str] = []
    batch_axes = _rule_axes(rules, "batch")
    shards = math.prod(sizes[a] for a in batch_axes)
    if global_batch_size <= 0 or global_batch_size % shards:
        where = " x ".join(f"{a}={sizes[a]}" for a in batch_axes)
        problems.append(
            f"global batch size {global_batch_size} is not divisible by the {shards} batch shards "
            f"(mesh {where}; the data axis includes dcn_data={mesh_config.dcn_data}); use a global batch "
            f"size that is a multiple of {shards} (e.g. {max(1, global_batch_size // shards) * shards}) "
            f"or change mesh.data / mesh.fsdp / mesh.dcn_data."
        )
    vocab_ways = math.prod(sizes[a] for a in _rule_axes(rules, "vocab"))
    vocab_hint = (
        f"set model.vocab_pad_multiple to a multiple of {vocab_ways} (the padded vocabulary then has "
        f"{padded_vocab_size(model_config.vocab_size, math.lcm(vocab_ways, model_config.vocab_pad_multiple))} "
        "rows; padding ids are masked out and stripped on export), or "
    )
    checks = (
        ("num_attention_heads", model_config.num_attention_heads, "heads", ""),
        ("intermediate_size", model_config.intermediate_size, "mlp", ""),
        ("padded_vocab_size", model_config.padded_vocab_size, "vocab", vocab_hint),
        ("hidden_size", model_config.hidden_size, "embed", ""),
        ("hidden_size", model_config.hidden_size, "embed_out", ""),
    )
    for field, value, logical, hint in checks:
        problem = _split_problem(field, value, logical, _rule_axes(rules, logical), sizes, hint)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("Parallelism settings do not fit:\n  - " + "\n  - ".join(problems))


__all__ = [
    "LOGICAL_AXIS_RULES",
    "MESH_AXES",
    "LogicalRules",
    "MeshConfig",
    "ModelShape",
    "abstract_boxed_params",
    "batch_sharding",
    "constrain_activation",
    "global_batch_from_process_local",
    "logical_partition_specs",
    "logical_to_mesh_sharding",
    "logical_to_mesh_specs",
    "make_mesh",
    "mesh_devices",
    "padded_vocab_size",
    "param_partition_specs",
    "param_shardings",
    "place_host_tree",
    "validate_parallelism",
    "vocab_shards",
]
