"""concat / permute_dims (incl. ShuffleNet's channel shuffle) / expand_dims+squeeze aliases."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shapes,axis", [
    ([(1, 64, 28, 28), (1, 32, 28, 28), (1, 96, 28, 28)], 1),   # inception-style channel concat
    ([(2, 3, 5, 7), (2, 5, 5, 7)], 1),                          # small blocks, N > 1
    ([(1, 1000), (1, 24)], -1),                                  # last axis
    ([(3, 4, 2), (1, 4, 2)], 0),
])
def test_concat(shapes, axis, dtype):
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    names = [b.input(f"x{i}", s) for i, s in enumerate(shapes)]
    vals = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    ref = np.concatenate([vals[n] for n in names], axis=axis)
    y = b.op("concat", names, ref.shape, axis=axis)
    r = b.op("relu", [y], ref.shape)  # an intermediate concat (compute dtype in HBM)
    cp = compile_graph(b.build([y, r]), "inf2", dtype=dtype)
    outs, rep = cp.run(vals)
    assert rel_err(outs[y], ref) <= TOL[dtype]
    assert rel_err(outs[r], np.maximum(ref, 0)) <= TOL[dtype]
    # pure data movement: no engine work for the concat kernel
    assert set(rep.per_tag)


def _shuffle_graph(C, g, H, W):
    b = GraphBuilder()
    x = b.input("x", (1, C, H, W))
    y = b.op("relu", [x], (1, C, H, W))
    z = b.op("relu", [b.channel_shuffle(y, g)], (1, C, H, W))
    return b.build(z), z


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("C,g,H,W", [(112, 4, 14, 14), (272, 4, 7, 7), (24, 3, 5, 5)])
def test_channel_shuffle(C, g, H, W, dtype):
    graph, z = _shuffle_graph(C, g, H, W)
    cp = compile_graph(graph, "inf2", dtype=dtype)
    xv = np.random.default_rng(1).standard_normal((1, C, H, W)).astype(np.float32)
    outs, rep = cp.run({"x": xv})
    ref = np.maximum(xv, 0).reshape(1, g, C // g, H, W).transpose(0, 2, 1, 3, 4).reshape(1, C, H, W)
    assert rel_err(outs[z], ref) <= TOL[dtype]
    kinds = [gp.kind for gp in cp.plan.groups]
    assert kinds == ["elementwise", "permute_dims", "elementwise"]


@pytest.mark.parametrize("shape,axes", [
    ((2, 3, 4, 5), (0, 2, 3, 1)),
    ((6, 7), (1, 0)),
    ((2, 3, 4, 5, 6, 7), (5, 3, 1, 0, 2, 4)),   # more dims than an AP holds
    ((4, 1, 9), None),
])
def test_permute(shape, axes):
    rng = np.random.default_rng(2)
    b = GraphBuilder()
    x = b.input("x", shape)
    oshape = np.transpose(np.zeros(shape), axes).shape
    y = b.op("permute_dims", [x], oshape, axes=axes)
    cp = compile_graph(b.build(y), "inf2")
    xv = rng.standard_normal(shape).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert np.array_equal(outs[y], np.transpose(xv, axes))


def test_expand_squeeze_alias():
    b = GraphBuilder()
    x = b.input("x", (1, 8, 4, 4))
    e = b.op("expand_dims", [x], (1, 1, 8, 4, 4), axis=(1,))
    r = b.op("relu", [e], (1, 1, 8, 4, 4))
    s = b.op("squeeze", [r], (1, 8, 4, 4), axis=(1,))
    z = b.op("exp", [s], (1, 8, 4, 4))
    cp = compile_graph(b.build(z), "inf2")
    xv = np.random.default_rng(3).standard_normal((1, 8, 4, 4)).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[z], np.exp(np.maximum(xv, 0))) <= 1e-6
    assert [g.kind for g in cp.plan.groups] == ["elementwise", "elementwise"]


def test_resident_concat_moves_over_several_queues():
    """A concat of SBUF-resident inputs (DenseNet) copies between row-split layouts; a big
    piece is split over the DMA queues (one queue moves ~17 GB/s, all 16 ~272 GB/s)."""
    from target import isa
    from tests.codegen_util import GraphBuilder, rel_err
    from tvm_poly.driver import compile_graph

    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", (1, 256, 28, 28))
    h = b.op("relu", [x], (1, 256, 28, 28))
    w = (rng.standard_normal((32, 256, 1, 1)) / 16).astype(np.float32)
    c = b.op("conv2d", [h, b.const("w", w)], (1, 32, 28, 28), strides=(1, 1), padding=(0, 0, 0, 0), groups=1,
             dilation=(1, 1))
    y = b.op("concat", [h, c], (1, 288, 28, 28), axis=1)
    o = b.op("sigmoid", [y], (1, 288, 28, 28))
    g = b.build(o)
    cp = compile_graph(g, "inf2", planner="poly", dtype="bfloat16")
    assert cp.plan.placement(y).placement == "sbuf" and cp.plan.placement(h).placement == "sbuf"
    moves = [(q, i) for q, st in cp.program.streams for i in st
             if isinstance(i, isa.DmaCopy) and i.tag.endswith(":concat")]
    assert moves and all(i.src.mem == isa.Mem.SBUF and i.dst.mem == isa.Mem.SBUF for _, i in moves)
    assert len({q for q, _ in moves}) >= 4
    xv = rng.standard_normal((1, 256, 28, 28)).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    hv = np.maximum(xv, 0)
    ref = 1 / (1 + np.exp(-np.concatenate([hv, np.einsum("kc,nchw->nkhw", w[:, :, 0, 0], hv)], axis=1)))
    assert rel_err(outs[o], ref) <= 2e-2


def test_concat_copy_pieces_follow_the_lowering_option():
    """A concat input the engines cannot write in place (32 channels at partition 80) is copied
    on chip; ``LowerOptions.copy_piece`` is the least bytes per DMA piece of that copy: smaller
    pieces spread it over more queues (the copy is on its readers' critical path).  Same values."""
    import numpy as np
    from target import isa
    from target.codegen.options import LowerOptions
    from tests.codegen_util import GraphBuilder
    from tvm_poly.driver import compile_graph

    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", (1, 16, 56, 56))

    def conv(k):
        w = b.const(f"w{k}", rng.standard_normal((k, 16, 1, 1)).astype(np.float32) / 4)
        return b.op("conv2d", [x, w], (1, k, 56, 56), strides=(1, 1), padding=(0, 0, 0, 0), groups=1,
                    dilation=(1, 1))
    y = b.op("concat", [conv(80), conv(32)], (1, 112, 56, 56), axis=1)
    y = b.op("relu", [y], (1, 112, 56, 56))
    g = b.build(y)
    progs = {p: compile_graph(g, "inf2", planner="poly", dtype="bfloat16", options=LowerOptions(copy_piece=p))
             for p in (32 * 1024, 8 * 1024)}
    copies = {p: [i for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy)
                  and ":concat" in i.tag and i.src.mem == isa.Mem.SBUF] for p, cp in progs.items()}
    assert copies[32 * 1024] and len(copies[8 * 1024]) > len(copies[32 * 1024])
    assert min(i.dst.nbytes for i in copies[8 * 1024]) >= 8 * 1024
    assert sum(i.dst.nbytes for i in copies[8 * 1024]) == sum(i.dst.nbytes for i in copies[32 * 1024])
    xv = {"x": rng.standard_normal((1, 16, 56, 56)).astype(np.float32)}
    np.testing.assert_array_equal(progs[32 * 1024].run(xv)[0][y], progs[8 * 1024].run(xv)[0][y])
