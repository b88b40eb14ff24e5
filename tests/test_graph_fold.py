"""Constant per-channel affine chains fold into batch_norm at compile time."""
import numpy as np

from tests.codegen_util import GraphBuilder, rel_err
from tvm_poly.driver import compile_graph
from tvm_poly.graph_fold import fold_constant_affine


def _bn_ref(x, g, b, m, v, eps=1e-5):
    sc = g / np.sqrt(v + eps)
    return x * sc[:, None, None] + (b - m * sc)[:, None, None]


def test_bn_mul_add_relu_and_bias_before_bn():
    rng = np.random.default_rng(0)
    C, shape = 40, (1, 40, 6, 6)
    b = GraphBuilder()
    x = b.input("x", shape)
    bias = b.const("bias", rng.standard_normal((1, C, 1, 1)))
    xb = b.op("add", [x, bias], shape)
    prm = [b.const(n, rng.uniform(0.5, 1.5, C) if n in ("g", "v") else rng.standard_normal(C))
           for n in ("g", "be", "m", "v")]
    y = b.op("batch_norm", [xb] + prm, shape, epsilon=1e-5, axis=1)
    s = b.const("s", rng.uniform(0.5, 1.5, (C, 1, 1)))
    t = b.const("t", rng.standard_normal((C, 1, 1)))
    y = b.op("multiply", [y, s], shape)
    y = b.op("add", [t, y], shape)
    y = b.op("subtract", [y, b.const("u", 0.25)], shape)
    z = b.op("relu", [y], shape)
    g = b.build(z)
    f = fold_constant_affine(g)
    assert [n.op for n in f.nodes] == ["batch_norm", "relu"]
    assert f.nodes[0].output == "lv4" and f.nodes[0].inputs[0] == "x"
    cp = compile_graph(f, "inf2")
    assert [k.kind for k in cp.plan.groups] == ["batch_norm"]  # bn + relu: one kernel
    xv = rng.standard_normal(shape).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    tv = {n: g.tensor(n).value for n in ("bias", "g", "be", "m", "v", "s", "t")}
    ref = _bn_ref(xv + tv["bias"], tv["g"], tv["be"], tv["m"], tv["v"]) * tv["s"] + tv["t"] - 0.25
    assert rel_err(outs[z], np.maximum(ref, 0)) <= 1e-5


def test_no_fold_when_intermediate_is_shared():
    rng = np.random.default_rng(1)
    C, shape = 8, (1, 8, 3, 3)
    b = GraphBuilder()
    x = b.input("x", shape)
    prm = [b.const(n, rng.uniform(0.5, 1.5, C)) for n in ("g", "be", "m", "v")]
    y = b.op("batch_norm", [x] + prm, shape, epsilon=1e-5, axis=1)
    m = b.op("multiply", [y, b.const("s", rng.uniform(0.5, 1.5, (C, 1, 1)))], shape)
    w = b.op("add", [m, y], shape)  # y used twice: no fold
    g = b.build(w)
    assert fold_constant_affine(g) is g
