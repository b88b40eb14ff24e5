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
    (8, 1024, 1000, True, True, True),      # B stationary at M = 8, bias and relu on the rows
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


@pytest.mark.parametrize("M,K,N,expect", [(1, 2048, 1000, "B"), (8, 1024, 1000, "B"),
                                           (200, 256, 96, "A"), (3, 64, 10, "A")])
def test_small_m_matmul_holds_b_stationary(M, K, N, expect):
    """With at most 64 rows of A, B's 128-column blocks are the stationary operand: a matmul costs
    max(64, M) cycles instead of the block's 512 moving columns, so a plane costs ceil(N/128) x 64
    against N cycles; out^T comes back to rows by one transpose per block.  Exact counts: KT planes
    x ceil(N/128) blocks matmuls, ceil(N/128) transposes (each max(rows, 64) cycles), and fewer Tensor-engine cycles than the
    A-stationary formula KT x N."""
    from target import isa
    from target.cost import engine_cycles

    rng = np.random.default_rng(3)
    b = GraphBuilder()
    a = b.input("a", (M, K))
    y = b.op("matmul", [a, b.const("b", rng.standard_normal((K, N)).astype(np.float32))], (M, N))
    cp = compile_graph(b.build(y), "inf2", dtype="bfloat16")
    sched = dict(dict(cp.schedule)["lv0:matmul"])
    assert sched["stationary"] == expect
    pe = [i for i in cp.program.stream("tensor")]
    mms = [i for i in pe if isinstance(i, isa.MatMul)]
    tps = [i for i in pe if isinstance(i, isa.Transpose)]
    KT = -(-K // 128)
    if expect == "B":
        assert len(mms) == KT * -(-N // 128) and len(tps) == -(-N // 128)
        cycles = sum(engine_cycles(i, cp.config) for i in pe)
        blocks = [min(128, N - b0) for b0 in range(0, N, 128)]
        assert cycles == KT * len(blocks) * max(64, M) + sum(max(nb, min(64, M)) for nb in blocks) < KT * N
    else:
        assert not tps or M > 16  # (the M > 16 path transposes A on the Tensor engine)


@pytest.mark.parametrize("K", [4096, 4000])  # blocked and cyclic contraction tiles
def test_constant_b_chunks_load_with_long_rows(K):
    """A constant B too big for SBUF streams in column chunks; re-laid out per chunk at compile
    time, each chunk row is KT*NC contiguous elements (not NC), so the DMAs run at full efficiency.
    inf1's 64 KiB partitions force chunks for a 4096 x 2048 fp32 B."""
    from target import isa
    from target.config import load_config
    from target.cost import dma_chunk_bytes

    rng = np.random.default_rng(2)
    N = 2048
    b = GraphBuilder()
    a = b.input("a", (1, K))
    bv = rng.standard_normal((K, N)).astype(np.float32) / np.sqrt(K)
    y = b.op("matmul", [a, b.const("b", bv)], (1, N))
    g = b.build(y)
    cp = compile_graph(g, load_config("inf1"), dtype="float32")
    sched = dict(dict(cp.schedule)["lv0:matmul"])
    assert sched["n_chunks"] > 1
    assert any(k.endswith("/b_chunks") for k in cp.constants)
    KT = -(-K // 128)
    loads = [i for _, st in cp.program.streams for i in st
             if isinstance(i, isa.DmaCopy) and i.src.mem == isa.Mem.HBM and i.dst.num_partitions > 1
             and i.src.nbytes > 64 * 1024]
    assert loads and min(dma_chunk_bytes(i) for i in loads) >= KT * sched["n_chunk"] * 4 // 2
    av = rng.standard_normal((1, K)).astype(np.float32)
    outs, _ = cp.run({"a": av})
    assert rel_err(outs[y], av.astype(np.float64) @ bv) <= TOL["float32"]


@pytest.mark.parametrize("M,K", [(8, 9216), (16, 1024), (5, 4096)])
def test_small_m_rows_of_a_load_in_runs_of_their_planes(M, K):
    """A few rows of A in HBM (AlexNet's fc6 at batch 8: 8 x 9216) come in as A^T for the blocked
    contraction map k = p*KT + j.  Each partition's KT elements of a row are contiguous in HBM, so
    the load writes them as rows of KT elements ([m][j]) and one on-chip copy reorders them to the
    [j][m] order the stationary reads.  Written [j][m] by the DMA itself every element was a DMA
    row of its own (2-4 B): 4.4 ms on one queue for AlexNet's 147 KB, 20x its latency bound."""
    from target import isa
    from target.cost import dma_chunk_bytes

    rng = np.random.default_rng(5)
    N = 256
    b = GraphBuilder()
    a = b.input("a", (M, K))
    bv = rng.standard_normal((K, N)).astype(np.float32) / np.sqrt(K)
    y = b.op("matmul", [a, b.const("b", bv)], (M, N))
    cp = compile_graph(b.build(y), "inf2", dtype="bfloat16")
    assert dict(dict(cp.schedule)["lv0:matmul"])["a_transpose"] == "dma"
    KT = K // 128
    loads = [i for _, st in cp.program.streams for i in st
             if isinstance(i, isa.DmaCopy) and i.src.mem == isa.Mem.HBM]
    assert loads and min(dma_chunk_bytes(i) for i in loads) >= KT * 2  # was 2 B (one element)
    av = rng.standard_normal((M, K)).astype(np.float32)
    outs, _ = cp.run({"a": av})
    assert rel_err(outs[y], av.astype(np.float64) @ bv) <= TOL["bfloat16"]
