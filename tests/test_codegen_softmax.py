import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


def np_softmax(x, axis):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,axis", [
    ((1, 1000), -1),          # classifier head
    ((300, 37), 1),           # several row tiles
    ((2, 10, 6), 1),          # softmax over a middle axis (strided rows)
    ((4, 3, 200), 0),
])
def test_softmax(shape, axis, dtype):
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", shape)
    y = b.op("softmax", [x], shape, axis=axis)
    cp = compile_graph(b.build(y), "inf2", dtype=dtype)
    xv = (rng.standard_normal(shape) * 4).astype(np.float32)
    outs, rep = cp.run({"x": xv})
    assert rel_err(outs[y], np_softmax(xv, axis)) <= TOL[dtype]
    assert rep.engine_active_cycles["scalar"] > 0 and rep.engine_active_cycles["vector"] > 0


def test_log_softmax():
    b = GraphBuilder()
    x = b.input("x", (5, 100))
    y = b.op("log_softmax", [x], (5, 100), axis=-1)
    cp = compile_graph(b.build(y), "inf2")
    xv = np.random.default_rng(1).standard_normal((5, 100)).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], np.log(np_softmax(xv, -1))) <= 1e-5
