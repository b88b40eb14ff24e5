import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("sa,sb,relu", [
    ((1, 64, 56, 56), (1, 64, 56, 56), True),
    ((1, 1000), (1000,), False),
    ((2, 3, 5, 7), (3, 1, 7), False),
    ((1, 256, 14, 14), (1, 256, 1, 1), True),
    ((1, 10007), (1,), False),
])
def test_add_broadcast(sa, sb, relu, dtype):
    b = GraphBuilder()
    x, y = b.input("a", sa), b.input("b", sb)
    out_shape = np.broadcast_shapes(sa, sb)
    z = b.op("add", [x, y], out_shape)
    if relu:
        z = b.op("relu", [z], out_shape)
    g = b.build(z)
    cp = compile_graph(g, "inf2", dtype=dtype)
    rng = np.random.default_rng(0)
    av, bv = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    outs, rep = cp.run({"a": av, "b": bv})
    ref = av + bv
    if relu:
        ref = np.maximum(ref, 0)
    assert rel_err(outs[z], ref) <= TOL[dtype]
    assert rep.hbm_write_bytes == ref.size * 4
    assert set(rep.per_tag) == {"lv0:elementwise"}


def test_add_n_relu_and_standalone_relu():
    b = GraphBuilder()
    x, y, w = b.input("a", (1, 128, 9, 9)), b.input("b", (1, 128, 9, 9)), b.input("c", (1, 128, 9, 9))
    s = b.op("add_n", [x, y, w], (1, 128, 9, 9))
    r = b.op("relu", [s], (1, 128, 9, 9))
    r2 = b.op("relu", [x], (1, 128, 9, 9))
    g = b.build([r, r2])
    cp = compile_graph(g, "inf2")
    rng = np.random.default_rng(1)
    vals = {k: rng.standard_normal((1, 128, 9, 9)).astype(np.float32) for k in "abc"}
    outs, rep = cp.run(vals)
    assert rel_err(outs[r], np.maximum(vals["a"] + vals["b"] + vals["c"], 0)) < 1e-6
    assert rel_err(outs[r2], np.maximum(vals["a"], 0)) < 1e-6
    assert len(cp.plan.groups) == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_norm_standalone(dtype):
    C = 160
    rng = np.random.default_rng(2)
    b = GraphBuilder()
    x = b.input("x", (2, C, 6, 7))
    gam, bet = b.const("g", rng.uniform(0.5, 2, C)), b.const("be", rng.standard_normal(C))
    mu, var = b.const("m", rng.standard_normal(C)), b.const("v", rng.uniform(0.5, 2, C))
    y = b.op("batch_norm", [x, gam, bet, mu, var], (2, C, 6, 7), epsilon=1e-5, axis=1)
    y = b.op("relu", [y], (2, C, 6, 7))
    g = b.build(y)
    cp = compile_graph(g, "inf2", dtype=dtype)
    xv = rng.standard_normal((2, C, 6, 7)).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    t = g.tensor_map
    sc = t["g"].value / np.sqrt(t["v"].value + 1e-5)
    ref = np.maximum(xv * sc[:, None, None] + (t["be"].value - t["m"].value * sc)[:, None, None], 0)
    assert rel_err(outs[y], ref) <= TOL[dtype]
