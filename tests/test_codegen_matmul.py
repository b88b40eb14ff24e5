import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("M,K,N,bias,relu,const_b", [
    (1, 2048, 1000, True, False, True),     # ResNet classifier
    (4, 300, 700, False, True, True),       # cyclic K tiles, 2 N blocks
    (200, 256, 96, True, True, False),      # PE transpose path, 2 M tiles, run-time B
    (3, 64, 10, False, False, True),
])
def test_matmul(M, K, N, bias, relu, const_b, dtype):
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    a = b.input("a", (M, K))
    bv = rng.standard_normal((K, N)).astype(np.float32) / np.sqrt(K)
    bb = b.const("b", bv) if const_b else b.input("b", (K, N))
    y = b.op("matmul", [a, bb], (M, N))
    biasv = rng.standard_normal(N).astype(np.float32)
    if bias:
        y = b.op("add", [y, b.const("bias", biasv)], (M, N))
    if relu:
        y = b.op("relu", [y], (M, N))
    g = b.build(y)
    cp = compile_graph(g, "inf2", dtype=dtype)
    assert len(cp.plan.groups) == 1
    av = rng.standard_normal((M, K)).astype(np.float32)
    vals = {"a": av} if const_b else {"a": av, "b": bv}
    outs, rep = cp.run(vals)
    ref = av.astype(np.float64) @ bv
    if bias:
        ref = ref + biasv
    if relu:
        ref = np.maximum(ref, 0)
    assert rel_err(outs[y], ref) <= TOL[dtype]
    assert rep.macs >= M * K * N
