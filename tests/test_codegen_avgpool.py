"""avg_pool2d corner cases the light models do not all exercise: count_include_pad both ways,
asymmetric padding, non-square kernels/strides, kernel larger than the stride."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


def avg_ref(x, k, s, pad, out_hw, cip):
    N, C, H, W = x.shape
    pt, pl, pb, pr = pad
    OH, OW = out_hw
    out = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * s[0] - pt, ow * s[1] - pl
            hs, he = max(h0, 0), min(h0 + k[0], H)
            ws, we = max(w0, 0), min(w0 + k[1], W)
            win = x[:, :, hs:he, ws:we]
            if cip:  # padded positions count (window clipped to the padded extent)
                d = (min(h0 + k[0], H + pb) - h0) * (min(w0 + k[1], W + pr) - w0)
            else:
                d = (he - hs) * (we - ws)
            out[:, :, oh, ow] = win.sum(axis=(2, 3)) / d
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cip", [True, False])
@pytest.mark.parametrize("xs,k,s,pad", [
    ((1, 192, 28, 28), (3, 3), (1, 1), (1, 1, 1, 1)),    # Inception: 3x3 s1 'same'
    ((1, 64, 56, 56), (2, 2), (2, 2), (0, 0, 0, 0)),     # DenseNet transition
    ((2, 24, 15, 11), (3, 2), (2, 1), (1, 0, 2, 1)),     # asymmetric everything
])
def test_avg_pool(xs, k, s, pad, cip, dtype):
    N, C, H, W = xs
    OH = (H + pad[0] + pad[2] - k[0]) // s[0] + 1
    OW = (W + pad[1] + pad[3] - k[1]) // s[1] + 1
    b = GraphBuilder()
    x = b.input("x", xs)
    y = b.op("avg_pool2d", [x], (N, C, OH, OW), pool_size=k, strides=s, padding=pad,
             count_include_pad=cip, ceil_mode=False, layout="NCHW", dilation=(1, 1))
    cp = compile_graph(b.build(y), "inf2", dtype=dtype)
    xv = np.random.default_rng(0).standard_normal(xs).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], avg_ref(xv, k, s, pad, (OH, OW), cip)) <= TOL[dtype]
