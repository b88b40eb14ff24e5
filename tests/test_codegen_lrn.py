"""LRN (fused from the chain from_onnx emits), standalone avg_pool3d channel window, power."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


def lrn_ref(x, size, alpha, beta, bias):
    C = x.shape[1]
    sq = x.astype(np.float64) ** 2
    s = np.zeros_like(sq)
    pf = (size - 1) // 2
    for c in range(C):
        lo, hi = max(0, c - pf), min(C, c - pf + size)
        s[:, c] = sq[:, lo:hi].sum(axis=1)
    return x / (bias + alpha / size * s) ** beta


def lrn_chain(b, x, shape, size, alpha, beta, bias):
    """The Relax ops ONNX LRN becomes (see tvm relax onnx frontend)."""
    N, C, H, W = shape
    sq = b.op("multiply", [x, x], shape)
    e = b.op("expand_dims", [sq], (N, 1, C, H, W), axis=(1,))
    pf = (size - 1) // 2
    a = b.op("avg_pool3d", [e], (N, 1, C, H, W), pool_size=(size, 1, 1), strides=(1, 1, 1),
             padding=(pf, 0, 0, size - 1 - pf, 0, 0), dilation=(1, 1, 1), ceil_mode=False,
             count_include_pad=True, layout="NCDHW")
    s = b.op("squeeze", [a], shape, axis=(1,))
    m = b.op("multiply", [s, b.const(f"alpha{b.k}", alpha)], shape)
    ad = b.op("add", [m, b.const(f"bias{b.k}", bias)], shape)
    p = b.op("power", [ad, b.const(f"beta{b.k}", beta)], shape)
    return b.op("divide", [x, p], shape)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,size,alpha,beta,bias", [
    ((1, 96, 13, 13), 5, 1e-4, 0.75, 1.0),      # AlexNet conv1 (scaled-down plane)
    ((1, 256, 9, 9), 5, 5e-4, 0.75, 2.0),       # ZFNet: two channel tiles
    ((2, 192, 6, 7), 5, 0.5, 0.75, 1.0),        # a partial second tile, strong normalisation
    ((1, 300, 30, 30), 3, 1.0, 0.6, 1.5),       # three tiles, several PSUM chunks
])
def test_lrn(shape, size, alpha, beta, bias, dtype):
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", shape)
    r = b.op("relu", [x], shape)
    y = lrn_chain(b, r, shape, size, alpha, beta, bias)
    g = b.build(y)
    cp = compile_graph(g, "inf2", dtype=dtype)
    assert [gp.kind for gp in cp.plan.groups] == ["elementwise", "lrn"]
    xv = (rng.standard_normal(shape) * 3).astype(np.float32)
    outs, rep = cp.run({"x": xv})
    ref = lrn_ref(np.maximum(xv, 0), size, alpha, beta, bias)
    assert rel_err(outs[y], ref) <= TOL[dtype]
    assert rep.engine_active_cycles["tensor"] > 0  # the window sum runs on the PE array


def test_lrn_unfused_pieces():
    """The same chain with the intermediates exposed runs op by op (avg_pool3d band matmul,
    power on the Scalar engine) and gives the same numbers."""
    shape, size, alpha, beta, bias = (1, 160, 5, 5), 5, 0.3, 0.75, 1.0
    b = GraphBuilder()
    x = b.input("x", shape)
    r = b.op("relu", [x], shape)
    y = lrn_chain(b, r, shape, size, alpha, beta, bias)
    g = b.build([y, "lv5"])  # expose the avg_pool3d... chain member: breaks the fusion
    cp = compile_graph(g, "inf2")
    kinds = [gp.kind for gp in cp.plan.groups]
    assert "lrn" not in kinds and "avg_pool3d" in kinds and "power" in kinds
    xv = (np.random.default_rng(1).standard_normal(shape) * 2).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], lrn_ref(np.maximum(xv, 0), size, alpha, beta, bias)) <= 1e-5


@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool3d_channel_window(cip):
    N, C, H, W, k = 2, 140, 3, 4, 3
    b = GraphBuilder()
    x = b.input("x", (N, 1, C, H, W))
    y = b.op("avg_pool3d", [x], (N, 1, C, H, W), pool_size=(k, 1, 1), strides=(1, 1, 1),
             padding=(1, 0, 0, 1, 0, 0), count_include_pad=cip, ceil_mode=False)
    cp = compile_graph(b.build(y), "inf2")
    xv = np.random.default_rng(2).standard_normal((N, 1, C, H, W)).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    ref = np.zeros_like(xv, dtype=np.float64)
    for c in range(C):
        lo, hi = max(0, c - 1), min(C, c + 2)
        ref[:, :, c] = xv[:, :, lo:hi].sum(axis=2) / (k if cip else hi - lo)
    assert rel_err(outs[y], ref) <= 1e-5


@pytest.mark.parametrize("e", [0.75, 2.0, 0.5, -1.0, -0.3])
def test_power(e):
    b = GraphBuilder()
    x = b.input("x", (3, 50, 70))
    y = b.op("power", [x, b.const("e", e)], (3, 50, 70))
    cp = compile_graph(b.build(y), "inf2")
    xv = np.random.default_rng(3).uniform(0.1, 4, (3, 50, 70)).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], xv.astype(np.float64) ** e) <= 1e-5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("C,N", [(96, 1), (192, 1), (256, 1), (256, 2)])
def test_lrn_reads_and_writes_resident_tensors_in_place(C, N, dtype):
    """poly keeps an LRN's input and output in SBUF: one channel per partition (<= 128 channels)
    or the blocked layout (192 = 96 partitions x 2 planes, 256 = 128 x 2: the band matrix is cut
    per plane pair, 4 matmuls per PSUM chunk): the kernel reads and writes them in place, its only
    DMA is the band matrix."""
    from target import isa

    rng = np.random.default_rng(1)
    shape = (N, C, 9, 9)
    b = GraphBuilder()
    x = b.input("x", shape)
    r = b.op("relu", [x], shape)
    y = lrn_chain(b, r, shape, 5, 1e-3, 0.75, 1.0)
    z = b.op("sigmoid", [y], shape)
    cp = compile_graph(b.build(z), "inf2", planner="poly", dtype=dtype)
    (k,) = [g for g in cp.plan.groups if g.kind == "lrn"]
    xv = (rng.standard_normal(shape) * 3).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[z], 1 / (1 + np.exp(-lrn_ref(np.maximum(xv, 0), 5, 1e-3, 0.75, 1.0)))) <= TOL[dtype]
    placed = {cp.plan.placement(t).placement for t in (k.inputs[0], k.output)}
    dmas = [i for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy) and i.tag == k.tag]
    assert placed == {"sbuf"}
    assert dmas and all(i.src.mem == isa.Mem.HBM and i.dst.mem == isa.Mem.SBUF for i in dmas)  # the band matrix only
    band = sum(i.src.nbytes for i in dmas)
    assert band <= C * C * (4 if dtype == "float32" else 2)


def test_batch_tiling_runs_through_an_lrn():
    """An LRN normalises across channels of one image, so it is batch-separable: batch 8 on inf1,
    where the whole batch's activations do not fit, runs relu -> LRN -> sigmoid per sub-batch
    (the LRN once ended the batch-tiled prefix: Inception v1 b8 inf1 spilled 63 MB there)."""
    from target.config import load_config

    rng = np.random.default_rng(2)
    shape = (8, 96, 28, 28)  # 8 x 96 x 784 x 2 B = 1.2 MB per tensor: 4 live ones > inf1's SBUF
    b = GraphBuilder()
    x = b.input("x", shape)
    r = b.op("relu", [x], shape)
    y = lrn_chain(b, r, shape, 5, 1e-3, 0.75, 1.0)
    z = b.op("sigmoid", [y], shape)
    cp = compile_graph(b.build(z), load_config("inf1"), planner="poly", dtype="bfloat16")
    lrns = [g for g in cp.plan.groups if g.kind == "lrn"]
    assert len(lrns) > 1 and all(g.param("images") for g in lrns)
    xv = (rng.standard_normal(shape) * 3).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[z], 1 / (1 + np.exp(-lrn_ref(np.maximum(xv, 0), 5, 1e-3, 0.75, 1.0)))) <= TOL["bfloat16"]
