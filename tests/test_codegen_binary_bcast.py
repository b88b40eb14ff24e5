"""multiply / subtract / divide with NumPy broadcasting (the elementwise lowering), including the
Caffe2 Unsqueeze->Mul/Add constants when they do not follow a batch_norm."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph

OPS = {"multiply": np.multiply, "subtract": np.subtract, "divide": np.divide}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("sa,sb,const", [
    ((1, 64, 14, 14), (64, 1, 1), True),      # per-channel constant (Unsqueeze'd vector)
    ((1, 64, 14, 14), (), True),              # scalar constant
    ((2, 3, 8, 5), (1, 3, 1, 5), False),      # broadcast inside the plane
    ((4, 300), (4, 300), False),
])
def test_binary_broadcast(op, sa, sb, const, dtype):
    rng = np.random.default_rng(0)
    av = rng.standard_normal(sa).astype(np.float32)
    bv = rng.uniform(0.5, 2.0, sb).astype(np.float32)  # away from 0 for divide
    b = GraphBuilder()
    x = b.input("a", sa)
    y = b.const("b", bv) if const else b.input("b", sb)
    ref = OPS[op](av.astype(np.float64), bv)
    z = b.op(op, [x, y], ref.shape)
    cp = compile_graph(b.build(z), "inf2", dtype=dtype)
    vals = {"a": av} if const else {"a": av, "b": bv}
    outs, _ = cp.run(vals)
    assert rel_err(outs[z], ref) <= TOL[dtype]
