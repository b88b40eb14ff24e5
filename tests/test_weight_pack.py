"""Weight packs (target/codegen/weight_pack.py): several kernels' short weight rows in one transfer."""
import numpy as np
import pytest

from target import isa
from target.codegen.emitter import CodegenError
from target.codegen.options import LowerOptions
from target.codegen.weight_pack import plan_packs
from target.cost import dma_chunk_bytes
from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


class G:  # the plan-group fields plan_packs reads
    def __init__(self, name, kind="conv2d", **params):
        self.name, self.kind, self._p = name, kind, {"prefetch": True, **params}

    def param(self, k, default=None):
        return self._p.get(k, default)


def test_plan_packs_joins_kernels_of_one_partition_count_until_the_row_is_long():
    lay = {"a": (128, 512, "bf16"), "b": (128, 512, "bf16"), "c": (64, 256, "bf16"), "d": (128, 1024, "bf16"),
           "e": (128, 4096, "bf16"), "f": (64, 256, "bf16"), "h": None, "i": (128, 256, "bf16")}
    groups = [G("a"), G("b"), G("c"), G("x", "pool"), G("d"), G("e"), G("f"), G("h"), G("i")]
    # a, b, d: 1 + 1 + 2 KiB = 4 KiB closes the 128-partition pack; e's row is long already;
    # c and f (64 partitions) pack across the others; h has no packable layout; i alone: dropped
    assert plan_packs(groups, lay, 4096) == [("a", "b", "d"), ("c", "f")]
    assert plan_packs(groups, lay, 0) == []
    # the span: f is the 3rd weight-loading kernel after c, d the 3rd after a
    assert plan_packs(groups, lay, 4096, span=3) == [("a", "b", "d"), ("c", "f")]
    assert plan_packs(groups, lay, 4096, span=2) == [("a", "b")]
    # kernels that run per band / per image block, or are not prefetched, never join
    groups2 = [G("a", weight_slot=(0, 1, 128, True)), G("b"), G("d", prefetch=False), G("i")]
    assert plan_packs(groups2, lay, 4096) == [("b", "i")]


def _bottlenecks(b, x, C, n):
    """n residual bottlenecks C -> C/4 (1x1) -> C/4 (3x3) -> C (1x1) + x, relu: ResNet's short rows."""
    rng = np.random.default_rng(0)
    shape = b.tensors[x].shape
    H, W = shape[2], shape[3]

    def conv(v, cin, cout, k):
        w = b.const(f"w{b.k}", rng.standard_normal((cout, cin, k, k)).astype(np.float32) / np.sqrt(cin * k * k))
        p = k // 2
        return b.op("conv2d", [v, w], (1, cout, H, W), strides=(1, 1), padding=(p, p, p, p), groups=1,
                    dilation=(1, 1))
    for _ in range(n):
        y = b.op("relu", [conv(x, C, C // 4, 1)], (1, C // 4, H, W))
        y = b.op("relu", [conv(y, C // 4, C // 4, 3)], (1, C // 4, H, W))
        x = b.op("relu", [b.op("add", [conv(y, C // 4, C, 1), x], (1, C, H, W))], (1, C, H, W))
    return x


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_weight_packs_load_short_rows_together_and_compute_the_same(dtype):
    b = GraphBuilder()
    x = b.input("x", (1, 512, 14, 14))
    y = _bottlenecks(b, x, 512, 3)
    g = b.build(y)
    plain = compile_graph(g, "inf2", planner="poly", dtype=dtype, options=LowerOptions())
    packed = compile_graph(g, "inf2", planner="poly", dtype=dtype, options=LowerOptions(weight_pack=4096))
    notes = [dict(kv).get("weight_pack") for _, kv in packed.schedule]
    assert any(notes) and not any(dict(kv).get("weight_pack") for _, kv in plain.schedule)

    def weight_loads(cp):
        hbm = {t.name: t for t in cp.program.hbm}
        return [i for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy)
                and i.src.mem == isa.Mem.HBM and any(t.kind == "weight" and t.offset <= i.src.offset < t.offset + t.nbytes
                                                     for t in hbm.values())]
    before, after = weight_loads(plain), weight_loads(packed)
    # the same weight bytes, in fewer transfers with longer rows
    assert sum(isa_bytes(i) for i in after) == sum(isa_bytes(i) for i in before)
    assert len(after) < len(before)
    assert np.mean([dma_chunk_bytes(i) for i in after]) > np.mean([dma_chunk_bytes(i) for i in before])
    inputs = {"x": np.random.default_rng(1).standard_normal((1, 512, 14, 14)).astype(np.float32)}
    o1, r1 = plain.run(inputs)
    o2, r2 = packed.run(inputs)
    np.testing.assert_array_equal(o1[y], o2[y])  # the same arithmetic on the same operands
    assert r2.hbm_read_bytes == r1.hbm_read_bytes
    assert r2.dma_transfer_count < r1.dma_transfer_count


def isa_bytes(i):
    from target.cost import dma_bytes
    return dma_bytes(i)


def test_a_member_that_lays_out_other_weights_is_refused():
    from target.codegen.weight_pack import Member

    class P:
        array = np.zeros((128, 8), np.float32)
    m = Member(P(), "lv3", (128, 4, "bf16"), 0)
    with pytest.raises(CodegenError, match="lv3: weight pack reserved"):
        m.take((128, 6, "bf16"), np.zeros((128, 6)))


def test_the_lowering_search_tries_packs_only_where_kernels_could_share_one():
    b = GraphBuilder()
    x = b.input("x", (1, 512, 14, 14))
    g = b.build(_bottlenecks(b, x, 512, 2))
    cp = compile_graph(g, "inf2", planner="poly", dtype="bfloat16")
    assert any(o.weight_pack for o, _ in cp.search)
    b = GraphBuilder()  # one conv: nothing to pack with
    x = b.input("x", (1, 512, 14, 14))
    w = b.const("w", np.ones((128, 512, 1, 1), np.float32))
    g = b.build(b.op("conv2d", [x, w], (1, 128, 14, 14), strides=(1, 1), padding=(0, 0, 0, 0), groups=1,
                     dilation=(1, 1)))
    cp = compile_graph(g, "inf2", planner="poly", dtype="bfloat16")
    assert not any(o.weight_pack for o, _ in cp.search)


def test_lowering_options_refuse_bad_values():
    with pytest.raises(ValueError, match="weight_pack -1"):
        LowerOptions(weight_pack=-1)
    with pytest.raises(ValueError, match="copy_piece 100: at least 512 bytes"):
        LowerOptions(copy_piece=100)
    with pytest.raises(ValueError, match="depthwise 'sparse'"):
        LowerOptions(depthwise="sparse")
