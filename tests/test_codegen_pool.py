import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


def pool_ref(x, mode, k, s, pad, out_hw, count_include_pad=False):
    N, C, H, W = x.shape
    OH, OW = out_hw
    pt, pl, pb, pr = pad
    out = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * s[0] - pt, ow * s[1] - pl
            win = x[:, :, max(h0, 0):min(h0 + k[0], H), max(w0, 0):min(w0 + k[1], W)]
            if mode == "max":
                out[:, :, oh, ow] = win.max(axis=(2, 3))
            else:
                d = k[0] * k[1] if count_include_pad else win.shape[2] * win.shape[3]
                out[:, :, oh, ow] = win.sum(axis=(2, 3)) / d
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("xs,mode,k,s,pad,ohw", [
    ((1, 64, 20, 20), "max", (3, 3), (2, 2), (1, 1, 1, 1), (10, 10)),   # ResNet stem pool
    ((1, 256, 7, 7), "avg", (7, 7), (1, 1), (0, 0, 0, 0), (1, 1)),      # global average pool
    ((2, 200, 9, 9), "avg", (3, 3), (2, 2), (1, 1, 1, 1), (5, 5)),      # cyclic tiles, padding excluded
    ((1, 32, 9, 9), "max", (3, 3), (2, 2), (0, 0, 0, 0), (4, 4)),
    ((1, 64, 9, 9), "max", (3, 3), (2, 2), (0, 0, 1, 1), (5, 5)),      # ceil mode: extra row/column
    ((1, 96, 9, 9), "avg", (3, 3), (1, 1), (1, 1, 1, 1), (9, 9)),
])
def test_pool(xs, mode, k, s, pad, ohw, dtype):
    """Padding costs no padded copy: rows outside the input are filled, column taps are clipped
    (the only copies are a first column tap on Vector, none on GpSimd)."""
    from target import isa

    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", xs)
    y = b.op("max_pool2d" if mode == "max" else "avg_pool2d", [x], xs[:2] + ohw, pool_size=k, strides=s,
             padding=pad, count_include_pad=False, layout="NCHW", dilation=(1, 1))
    cp = compile_graph(b.build(y), "inf2", dtype=dtype)
    xv = rng.standard_normal(xs).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], pool_ref(xv, mode, k, s, pad, ohw)) <= TOL[dtype]
    assert not any(isinstance(i, isa.TensorCopy) for i in cp.program.stream("gpsimd"))


@pytest.mark.parametrize("C,mode", [(64, "max"), (32, "avg"), (24, "max")])  # 24: ShuffleNet's stem, 32-lane blocks
def test_pool_bands_side_by_side_on_partition_blocks(C, mode):
    rng = np.random.default_rng(1)
    xs = (1, C, 112, 112)
    b = GraphBuilder()
    x = b.input("x", xs)
    y = b.op("max_pool2d" if mode == "max" else "avg_pool2d", [x], (1, C, 56, 56), pool_size=(3, 3),
             strides=(2, 2), padding=(1, 1, 1, 1), count_include_pad=True, layout="NCHW", dilation=(1, 1))
    cp = compile_graph(b.build(y), "inf2")
    xv = rng.standard_normal(xs).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], pool_ref(xv, mode, (3, 3), (2, 2), (1, 1, 1, 1), (56, 56), True)) <= 1e-5
    lanes = max(i.dst.num_partitions for i in cp.program.stream("vector"))
    assert lanes == (128 if C in (32, 64) else 3 * 32 + C)  # 4 bands; blocks at 0, 32, 64, 96
