"""Row-window Values (target/codegen/values.py, Value.window): operator code runs unchanged on a
band of rows of a tensor, the groundwork of spatial tiling (notes/planner.md)."""
import numpy as np
import pytest

from target.codegen import Emitter
from target.codegen.conv import conv2d
from target.codegen.emitter import CodegenError
from target.codegen.values import Value
from target.config import load_config
from target.simulator import simulate
from tests.codegen_util import TOL, rel_err
from tests.test_codegen_conv import conv_ref


def _const_fn(em, consts):
    def const(name, arr, dtype):
        from target.memory import NP_DTYPES
        a = np.ascontiguousarray(np.asarray(arr, np.float32).astype(NP_DTYPES[dtype]))
        ref = em.hbm_tensor(name, a.shape, dtype, "weight")
        consts[name] = a
        return Value(name, tuple(a.shape), dtype, hbm=ref)
    return const


@pytest.mark.parametrize("C,K,H,stride,pad", [(32, 48, 20, 1, 1), (160, 64, 17, 2, 1), (3, 16, 24, 2, 3)])
def test_conv_on_row_windows_computes_output_bands(C, K, H, stride, pad):
    """Output rows [o0, o1) of a conv = the conv of input rows [o0*s - pt, (o1-1)*s - pt + R),
    clipped, with the clipped rows as padding: each band computed through window views of the
    HBM input and output matches the whole-tensor reference."""
    rng = np.random.default_rng(C)
    R = 7 if C == 3 else 3
    W = H
    cfg = load_config("inf2")
    em = Emitter(cfg, "bands")
    x = Value("x", (1, C, H, W), "fp32", hbm=em.hbm_tensor("x", (1, C, H, W), "fp32", "input"))
    OH = (H + 2 * pad - R) // stride + 1
    y = Value("y", (1, K, OH, OH), "fp32", hbm=em.hbm_tensor("y", (1, K, OH, OH), "fp32", "output"))
    w = (rng.standard_normal((K, C, R, R)) / np.sqrt(C * R * R)).astype(np.float32)
    consts = {}
    const = _const_fn(em, consts)
    bands = [(0, 3), (3, OH // 2), (OH // 2, OH)]
    for bi, (o0, o1) in enumerate(bands):
        a = o0 * stride - pad
        b = (o1 - 1) * stride - pad + R
        i0, i1 = max(0, a), min(H, b)
        em.tag = f"band{bi}:conv2d"
        conv2d(em, x.window(i0, i1 - i0), y.window(o0, o1 - o0), w, (stride, stride),
               (i0 - a, pad, b - i1, pad), 1, const, cdt="fp32")
    xv = rng.standard_normal((1, C, H, W)).astype(np.float32)
    res = simulate(em.finish(), cfg, {"x": xv, **consts})
    ref = conv_ref(xv, w, (stride, stride), (pad,) * 4)
    assert rel_err(res.outputs["y"], ref) <= TOL["float32"]


def test_window_of_a_window_and_bad_accesses():
    em = Emitter(load_config("inf2"), "w")
    v = Value("v", (1, 4, 10, 8), "fp32", hbm=em.hbm_tensor("v", (1, 4, 10, 8), "fp32", "input"))
    ww = v.window(2, 6).window(1, 3)  # rows [3, 6) of v
    assert ww.base is v and ww.row0 == 3 and ww.shape == (1, 4, 3, 8)
    ap = ww.chan_ap(0, 1, 2, 8, (8,), (1,))  # channels 1-2, window row 1 = base row 4
    assert ap.offset == v.hbm.tensor.offset + (1 * 80 + 4 * 8) * 4 and ap.partition_stride == 80
    with pytest.raises(CodegenError, match="crosses a channel plane"):
        ww.flat_ap(0, 1, 0, (30,), (1,))  # 30 contiguous elements run past a 24-element plane
    with pytest.raises(CodegenError, match="no row window"):
        v.window(8, 5)


def test_pool_on_row_windows_of_a_resident_input():
    """The same through an SBUF-resident base: a 2x2/2 max pool band by band from windows of a
    resident (row-split) input."""
    from target.codegen.pool import pool2d

    rng = np.random.default_rng(2)
    cfg = load_config("inf2")
    em = Emitter(cfg, "pool_bands")
    C, H = 32, 12
    xh = Value("xh", (1, C, H, H), "fp32", hbm=em.hbm_tensor("xh", (1, C, H, H), "fp32", "input"))
    tile = em.sbuf_resident(0, C, 0, H * H * 4, "fp32", "x")
    x = Value("x", (1, C, H, H), "fp32", sbuf=tile)
    em.tag = "load:copy"
    em.dma(tile.ap((H * H,)), xh.flat_ap(0, C, H * H, (H * H,), (1,)))
    y = Value("y", (1, C, H // 2, H // 2), "fp32", hbm=em.hbm_tensor("y", (1, C, H // 2, H // 2), "fp32", "output"))
    consts = {}
    for bi, (o0, o1) in enumerate([(0, 2), (2, 3), (3, 6)]):
        em.tag = f"band{bi}:pool"
        pool2d(em, x.window(2 * o0, 2 * (o1 - o0)), y.window(o0, o1 - o0), "max", (2, 2), (2, 2), (0, 0, 0, 0),
               False, _const_fn(em, consts), "fp32")
    xv = rng.standard_normal((1, C, H, H)).astype(np.float32)
    res = simulate(em.finish(), cfg, {"xh": xv, **consts})
    ref = xv.reshape(1, C, H // 2, 2, H // 2, 2).max(axis=(3, 5))
    assert np.array_equal(res.outputs["y"], ref)
