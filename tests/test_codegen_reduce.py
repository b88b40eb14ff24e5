import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op,shape,axis,keep", [
    ("mean", (1, 1000, 13, 13), (2, 3), True),     # SqueezeNet's GlobalAveragePool
    ("mean", (1, 1024, 7, 7), (2, 3), True),       # DenseNet-121's
    ("sum", (3, 5, 20000), (2,), False),           # long rows: chunked
    ("max", (130, 7), (1,), False),
    ("min", (2, 3, 4), (-1,), True),
])
def test_reduce(op, shape, axis, keep, dtype):
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(shape).astype(np.float32)
    ref = getattr(np, op)(xv.astype(np.float64), axis=axis, keepdims=keep)
    b = GraphBuilder()
    x = b.input("x", shape)
    y = b.op(op, [x], ref.shape, axis=axis, keepdims=keep)
    cp = compile_graph(b.build(y), "inf2", dtype=dtype)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], ref) <= TOL[dtype] * (3 if op == "sum" and dtype == "bfloat16" else 1)
