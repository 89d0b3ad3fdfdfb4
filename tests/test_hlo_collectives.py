"""Reading collectives from HLO text: kinds, async pairs, loop trip counts, bytes from shapes (hand-written HLO)."""

from __future__ import annotations

from bert_jax.compile import hlo_collectives

HLO = """HloModule jit_train_step, entry_computation_layout={(f32[8,4]{1,0})->f32[8,4]{1,0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %p = (s32[], f32[8,4]{1,0}) parameter(0)
  %x = f32[8,4]{1,0} get-tuple-element((s32[], f32[8,4]{1,0}) %p), index=1
  %ag-start = (f32[2,4]{1,0}, f32[8,4]{1,0}) all-gather-start(f32[2,4]{1,0} %x), dimensions={0}
  %ag-done = f32[8,4]{1,0} all-gather-done((f32[2,4]{1,0}, f32[8,4]{1,0}) %ag-start)
  ROOT %t = (s32[], f32[8,4]{1,0}) tuple(s32[] %i, f32[8,4]{1,0} %ag-done)
}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  %p = (s32[], f32[8,4]{1,0}) parameter(0)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main (x: f32[8,4]) -> f32[8,4] {
  %x = f32[8,4]{1,0} parameter(0)
  %w = (s32[], f32[8,4]{1,0}) while((s32[], f32[8,4]{1,0}) %init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  %ar = bf16[1024]{0} all-reduce(bf16[1024]{0} %g), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %rs = f32[256]{0} reduce-scatter(f32[1024]{0} %h), dimensions={0}, to_apply=%add
  ROOT %out = f32[8,4]{1,0} get-tuple-element((s32[], f32[8,4]{1,0}) %w), index=1
}
"""


def test_shape_bytes_of_arrays_and_tuples():
    assert hlo_collectives.shape_bytes("f32[8,128]{1,0}") == 8 * 128 * 4
    assert hlo_collectives.shape_bytes("(bf16[4,2]{1,0}, s32[], pred[3])") == 4 * 2 * 2 + 4 + 3


def test_kinds_counts_and_bytes_with_a_known_trip_count():
    found = {c.kind: c for c in hlo_collectives.collectives(HLO)}
    assert set(found) == {"all-gather", "all-reduce", "reduce-scatter"}
    # the async all-gather sits in a loop that runs 4 times: 4 executions of an 8x4 f32 result
    assert found["all-gather"].count == 4 and found["all-gather"].bytes == 4 * 8 * 4 * 4
    assert not found["all-gather"].in_unknown_loop
    assert (found["all-reduce"].count, found["all-reduce"].bytes) == (1, 1024 * 2)
    assert (found["reduce-scatter"].count, found["reduce-scatter"].bytes) == (1, 256 * 4)


def test_a_loop_of_unknown_trip_count_counts_once_and_is_flagged():
    hlo = HLO.replace(', backend_config={"known_trip_count":{"n":"4"}}', "")
    gather = next(c for c in hlo_collectives.collectives(hlo) if c.kind == "all-gather")
    assert gather.count == 1 and gather.in_unknown_loop


def test_host_callbacks_are_counted_in_compiled_programs():
    """A jax.debug.callback compiled for this CPU (a callback custom-call) and for a TPU slice (send/recv to
    the host), against the same function without it: the count is the callbacks', zero without them."""
    import jax
    import jax.numpy as jnp
    import pytest

    def with_callback(x):
        jax.debug.callback(lambda v: None, x.sum())
        return x * 2

    def without(x):
        return x * 2

    spec = jax.ShapeDtypeStruct((8, 128), jnp.float32)
    assert hlo_collectives.host_transfers(jax.jit(with_callback).lower(spec).compile().as_text()) >= 1
    assert hlo_collectives.host_transfers(jax.jit(without).lower(spec).compile().as_text()) == 0

    pytest.importorskip("libtpu", reason="libtpu is in the test extra (pip install -e '.[test]')")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from bert_jax.compile import tpu_topology

    mesh = Mesh(tpu_topology.parse_topology("v5e:2x2").devices(), ("d",))
    sharded = NamedSharding(mesh, PartitionSpec("d"))
    tpu_spec = jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=sharded)

    def compiled(f):
        return jax.jit(f, in_shardings=sharded, out_shardings=sharded).lower(tpu_spec).compile().as_text()

    assert hlo_collectives.host_transfers(compiled(with_callback)) >= 2  # a send and a recv
    assert hlo_collectives.host_transfers(compiled(without)) == 0
