"""Kernels read and write SBUF-resident tensors in place, with no SBUF->SBUF copies:

* a padded conv reads its resident input with *clipped taps* (each tap's matmul covers only the
  output pixels whose input pixel exists) instead of a zeroed padded copy;
* a windowed pool handles padding by clipping its column taps (no padded copy either:
  tests/test_codegen_pool.py::test_pool);
* a global pool reduces its resident input straight into its resident output, and the
  classifier's matmul uses that row as its stationary operand (the pool -> FC handoff used to
  go through HBM).
"""
import numpy as np
import pytest

from target import isa
from tests.codegen_util import TOL, GraphBuilder, rel_err
from tests.test_codegen_conv import conv_ref
from tests.test_codegen_pool import pool_ref
from tvm_poly.driver import compile_graph


def _ins(cp, tag_prefix):
    return [i for _, st in cp.program.streams for i in st if i.tag.split(":")[0] == tag_prefix]


def _kernel_of(cp, op):
    (k,) = [k for k in cp.plan.groups if op in k.ops]
    return k


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("xs,ws,stride,pad,clipped", [
    ((1, 64, 12, 12), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), True),     # ResNet stage-1 3x3
    ((1, 64, 12, 12), (128, 64, 3, 3), (2, 2), (1, 1, 1, 1), True),    # strided (downsampling) 3x3
    ((1, 256, 7, 7), (128, 256, 3, 3), (1, 1), (1, 1, 1, 1), True),    # blocked input, 2 planes
    ((1, 32, 9, 9), (48, 32, 5, 5), (1, 1), (2, 2, 2, 2), True),       # Inception 5x5
    ((1, 32, 4, 4), (16, 32, 3, 3), (1, 1), (2, 2, 2, 2), False),      # no tap covers every pixel
])
def test_padded_conv_reads_resident_input_in_place(xs, ws, stride, pad, clipped, dtype):
    rng = np.random.default_rng(1)
    b = GraphBuilder()
    x = b.input("x", xs)
    r = b.op("relu", [x], xs)
    wv = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    xv = rng.standard_normal(xs).astype(np.float32)
    ref = conv_ref(np.maximum(xv, 0), wv, stride, pad)
    y = b.op("conv2d", [r, b.const("w", wv)], ref.shape, strides=stride, padding=pad, groups=1, dilation=(1, 1))
    cp = compile_graph(b.build(y), "inf2", planner="poly", dtype=dtype)
    assert cp.plan.placement(r).placement == "sbuf"
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], ref) <= TOL[dtype]
    conv = _ins(cp, _kernel_of(cp, y).tag.split(":")[0])
    copies = [i for i in conv if isinstance(i, (isa.TensorCopy, isa.Memset))]
    if clipped:
        assert not copies, "a clipped-tap conv makes no padded copy of its resident input"
        mms = [i for i in conv if isinstance(i, isa.MatMul)]
        # some taps cover only part of a PSUM block (the border pixels have no input there)
        full = max(i.dst.free_elems for i in mms)
        assert any(i.dst.free_elems < full for i in mms)
    else:
        assert copies, "without a tap valid everywhere the conv falls back to the padded copy"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("C", [2048, 544, 96])  # blocked 128 x 16, blocked 68 x 8, one plane
def test_global_pool_feeds_the_classifier_in_sbuf(C, dtype):
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", (1, C, 7, 7))
    r = b.op("relu", [x], (1, C, 7, 7))
    p = b.op("avg_pool2d", [r], (1, C, 1, 1), pool_size=(7, 7), strides=(1, 1), padding=(0, 0, 0, 0),
             count_include_pad=False, layout="NCHW", dilation=(1, 1))
    f = b.op("reshape", [p], (1, C))
    wv = (rng.standard_normal((C, 1000)) / np.sqrt(C)).astype(np.float32)
    y = b.op("matmul", [f, b.const("w", wv)], (1, 1000))
    cp = compile_graph(b.build(y), "inf2", planner="poly", dtype=dtype)
    assert cp.plan.placement(p).placement == "sbuf"
    xv = rng.standard_normal((1, C, 7, 7)).astype(np.float32)
    outs, rep = cp.run({"x": xv})
    ref = np.maximum(xv, 0).mean(axis=(2, 3)) @ wv
    assert rel_err(outs[y], ref) <= TOL[dtype]
    # nothing moves SBUF -> SBUF and the pooled row never touches HBM
    dmas = [i for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy)]
    assert not any(i.src.mem == i.dst.mem for i in dmas)
    assert {p, f} & {t.name for t in cp.program.hbm} == set()
    assert rep.hbm_read_bytes == sum(t.nbytes for t in cp.program.hbm if t.kind in ("input", "weight"))


def _stem_graph(rng, K=64, H=32, extra_reader=False, pool_pad=1):
    """7x7/2 conv (3 -> K) + relu -> 3x3/2 max pool -> 1x1 conv: the stem of ResNet/DenseNet (pool
    padding 1); SqueezeNet's pool has none, so an odd conv output (H = 46: 23 rows) pools to an
    odd 11 rows."""
    from tests.test_codegen_pool import pool_ref
    b = GraphBuilder()
    x = b.input("x", (1, 3, H, H))
    w1 = (rng.standard_normal((K, 3, 7, 7)) / np.sqrt(147)).astype(np.float32)
    Hc = (H + 6 - 7) // 2 + 1
    Hp = (Hc + 2 * pool_pad - 3) // 2 + 1
    pp = (pool_pad,) * 4
    c = b.op("conv2d", [x, b.const("w1", w1)], (1, K, Hc, Hc), strides=(2, 2), padding=(3, 3, 3, 3),
             groups=1, dilation=(1, 1))
    r = b.op("relu", [c], (1, K, Hc, Hc))
    p = b.op("max_pool2d", [r], (1, K, Hp, Hp), pool_size=(3, 3), strides=(2, 2), padding=pp,
             count_include_pad=False, layout="NCHW", dilation=(1, 1))
    w2 = (rng.standard_normal((32, K, 1, 1)) / np.sqrt(K)).astype(np.float32)
    y = b.op("conv2d", [p, b.const("w2", w2)], (1, 32, Hp, Hp), strides=(1, 1), padding=(0, 0, 0, 0),
             groups=1, dilation=(1, 1))
    outs = [y]
    if extra_reader:
        outs.append(b.op("sigmoid", [r], (1, K, Hc, Hc)))
    xv = rng.standard_normal((1, 3, H, H)).astype(np.float32)
    rv = np.maximum(conv_ref(xv, w1, (2, 2), (3, 3, 3, 3)), 0)
    pv = pool_ref(rv, "max", (3, 3), (2, 2), pp, (Hp, Hp))
    return b.build(outs), {"x": xv}, y, conv_ref(pv, w2, (1, 1), (0, 0, 0, 0)), r


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("K,H,pool_pad", [(64, 32, 1), (32, 32, 1), (64, 46, 0)])  # last: odd pool rows
def test_stem_writes_the_pools_lower_band_on_idle_lanes(K, H, pool_pad, dtype):
    """conv -> max pool through a resident K-channel tensor: the conv's stationary holds its
    weights twice, PSUM lanes K..2K carry a copy and the conv writes the pool's lower band
    there; the pool runs both bands on 2K lanes in place: no SBUF->SBUF DMA at all."""
    g, inputs, y, ref, r = _stem_graph(np.random.default_rng(5), K=K, H=H, pool_pad=pool_pad)
    cp = compile_graph(g, "inf2", planner="poly", dtype=dtype)
    pairs = [k for k in cp.plan.groups if k.param("lane_pair")]
    assert [k.kind for k in pairs] == ["conv2d", "pool"] and cp.plan.placement(r).placement == "sbuf"
    outs, _ = cp.run(inputs)
    assert rel_err(outs[y], ref) <= TOL[dtype]
    dmas = [i for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy)]
    pool_tag = pairs[1].tag
    assert not any(i.src.mem == i.dst.mem and i.tag == pool_tag for i in dmas)
    # the pool's Vector work runs on 2K lanes
    vec = [i for i in cp.program.stream("vector") if i.tag == pool_tag]
    assert vec and max(i.dst.num_partitions for i in vec) == 2 * K
    # the doubled stationary costs no extra HBM bytes: the weights load once
    w1 = [t for t in cp.program.hbm if t.kind == "weight" and t.name.startswith(pairs[0].tag.split(":")[0] + "/w")]
    assert w1 and all(t.nbytes <= 3 * 7 * 7 * K * (4 if dtype == "float32" else 2) * 1.5 for t in w1)


def test_no_lane_pair_when_the_conv_output_has_another_reader():
    g, inputs, y, ref, r = _stem_graph(np.random.default_rng(6), extra_reader=True)
    cp = compile_graph(g, "inf2", planner="poly", dtype="float32")
    assert not any(k.param("lane_pair") for k in cp.plan.groups)
    outs, _ = cp.run(inputs)
    assert rel_err(outs[y], ref) <= TOL["float32"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("C,k,stride,pad", [
    (64, 3, 1, 1),   # ResNet stage-1 3x3
    (64, 3, 2, 1),   # strided
    (32, 5, 1, 2),   # Inception-style 5x5 on 32 channels
])
def test_row_pairs_contract_two_taps_per_matmul(C, k, stride, pad, dtype):
    """A 1x1 conv writes its resident C-channel output also one row up on lanes C..2C; the padded
    kxk conv reading it contracts row taps (r, r+1) in one matmul (K = 2C)."""
    rng = np.random.default_rng(7)
    H = 12
    b = GraphBuilder()
    x = b.input("x", (1, C, H, H))
    w1 = (rng.standard_normal((C, C, 1, 1)) / np.sqrt(C)).astype(np.float32)
    a = b.op("conv2d", [x, b.const("w1", w1)], (1, C, H, H), strides=(1, 1), padding=(0, 0, 0, 0), groups=1,
             dilation=(1, 1))
    r = b.op("relu", [a], (1, C, H, H))
    w2 = (rng.standard_normal((48, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
    xv = rng.standard_normal((1, C, H, H)).astype(np.float32)
    rv = np.maximum(conv_ref(xv, w1, (1, 1), (0, 0, 0, 0)), 0)
    ref = conv_ref(rv, w2, (stride, stride), (pad,) * 4)
    y = b.op("conv2d", [r, b.const("w2", w2)], ref.shape, strides=(stride, stride), padding=(pad,) * 4, groups=1,
             dilation=(1, 1))
    cp = compile_graph(b.build(y), "inf2", planner="poly", dtype=dtype)
    prod, cons = _kernel_of(cp, a), _kernel_of(cp, y)
    assert prod.param("row_dup") == (1, 0, 1) and cons.param("pair_rows")
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], ref) <= TOL[dtype]
    mms = [i for i in cp.program.stream("tensor") if i.tag == cons.tag]
    pairs = [i for i in mms if i.stationary.num_partitions == 2 * C]
    singles = [i for i in mms if i.stationary.num_partitions == C]
    # one accumulation group per PSUM block; each row pair saves one matmul per column tap
    blocks = sum(1 for i in mms if i.start)
    n_pairs = len(range(pad, k - 1, 2))  # pairs (r, r+1) from the first row tap valid everywhere
    assert pairs and len(pairs) + len(singles) == len(mms) <= blocks * (k * k - k * n_pairs)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("C,pad", [(96, (0, 0, 0, 0)), (256, (0, 0, 0, 0)), (96, (1, 1, 1, 1))])
def test_windowed_pool_between_resident_tensors_runs_in_place(C, pad, dtype):
    """A max pool whose input and output stay in SBUF reads and writes them in place (no SBUF->SBUF
    DMA) for every band whose input rows all exist; bands with padding rows fill their tile with an
    engine copy on the same lanes (a DMA of short rows runs at a fraction of its rate) -- no
    SBUF->SBUF DMA either way."""
    rng = np.random.default_rng(8)
    H = 13
    OH = (H + pad[0] + pad[2] - 3) // 2 + 1
    b = GraphBuilder()
    x = b.input("x", (1, C, H, H))
    r = b.op("relu", [x], (1, C, H, H))
    p = b.op("max_pool2d", [r], (1, C, OH, OH), pool_size=(3, 3), strides=(2, 2), padding=pad,
             count_include_pad=False, layout="NCHW", dilation=(1, 1))
    y = b.op("sigmoid", [p], (1, C, OH, OH))
    cp = compile_graph(b.build(y), "inf2", planner="poly", dtype=dtype)
    assert {cp.plan.placement(t).placement for t in (r, p)} == {"sbuf"}
    xv = rng.standard_normal((1, C, H, H)).astype(np.float32)
    outs, _ = cp.run({"x": xv})
    ref = 1 / (1 + np.exp(-pool_ref(np.maximum(xv, 0), "max", (3, 3), (2, 2), pad, (OH, OH))))
    assert rel_err(outs[y], ref) <= TOL[dtype]
    k = _kernel_of(cp, p)
    s2s = [i for _, st in cp.program.streams for i in st
           if isinstance(i, isa.DmaCopy) and i.tag == k.tag and i.src.mem == i.dst.mem]
    assert not s2s
    copies = [i for i in cp.program.stream("gpsimd") if i.tag == k.tag and type(i).__name__ == "TensorCopy"]
    assert bool(copies) == any(pad)  # the padded band(s): filled tile, by an engine copy
