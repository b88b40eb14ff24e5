import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


def conv_ref(x, w, stride, pad, groups=1):
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    pt, pl, pb, pr = pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    OH = (H + pt + pb - R) // stride[0] + 1
    OW = (W + pl + pr - S) // stride[1] + 1
    out = np.zeros((N, K, OH, OW))
    Kg = K // groups
    for g in range(groups):
        for r in range(R):
            for s in range(S):
                win = xp[:, g * Cg:(g + 1) * Cg, r:r + stride[0] * OH:stride[0], s:s + stride[1] * OW:stride[1]]
                out[:, g * Kg:(g + 1) * Kg] += np.einsum("nchw,kc->nkhw", win, w[g * Kg:(g + 1) * Kg, :, r, s])
    return out


def run_conv(xs, ws, stride, pad, groups=1, dtype="float32", bn=False, relu=False, bias=False, seed=0,
             options=None):
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", xs)
    wv = (rng.standard_normal(ws) / np.sqrt(ws[1] * ws[2] * ws[3])).astype(np.float32)
    w = b.const("w", wv)
    ref = conv_ref(rng.standard_normal(xs).astype(np.float32) * 0, wv, stride, pad, groups)
    y = b.op("conv2d", [x, w], ref.shape, strides=stride, padding=pad, groups=groups, dilation=(1, 1))
    K = ws[0]
    consts = {}
    if bn:
        consts = dict(g=rng.uniform(0.5, 2, K), be=rng.standard_normal(K), m=rng.standard_normal(K),
                      v=rng.uniform(0.5, 2, K))
        ins = [b.const(k, v) for k, v in consts.items()]
        y = b.op("batch_norm", [y] + ins, ref.shape, epsilon=1e-5, axis=1)
    if bias:
        bv = rng.standard_normal((1, K, 1, 1)).astype(np.float32)
        y = b.op("add", [y, b.const("bias", bv)], ref.shape)
    if relu:
        y = b.op("relu", [y], ref.shape)
    g = b.build(y)
    cp = compile_graph(g, "inf2", dtype=dtype, options=options)
    xv = rng.standard_normal(xs).astype(np.float32)
    outs, rep = cp.run({"x": xv})
    ref = conv_ref(xv, wv, stride, pad, groups)
    if bn:
        sc = consts["g"] / np.sqrt(consts["v"] + 1e-5)
        ref = ref * sc[None, :, None, None] + (consts["be"] - consts["m"] * sc)[None, :, None, None]
    if bias:
        ref = ref + bv
    if relu:
        ref = np.maximum(ref, 0)
    return rel_err(outs[y], ref), cp, rep


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("xs,ws,stride,pad,groups", [
    ((1, 64, 14, 14), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    ((1, 256, 7, 7), (384, 256, 1, 1), (1, 1), (0, 0, 0, 0), 1),       # blocked in/out, 3 k tiles
    ((1, 256, 14, 14), (512, 256, 1, 1), (2, 2), (0, 0, 0, 0), 1),    # strided 1x1 (downsample)
    ((2, 200, 9, 9), (136, 200, 3, 3), (2, 2), (1, 0, 2, 1), 1),      # cyclic tiles, asym pad, N=2
    ((1, 3, 32, 32), (16, 3, 7, 7), (2, 2), (3, 3, 3, 3), 1),          # packed stem
    ((1, 160, 10, 10), (160, 1, 3, 3), (1, 1), (1, 1, 1, 1), 160),    # depthwise
    ((1, 48, 8, 8), (96, 16, 3, 3), (1, 1), (1, 1, 1, 1), 3),         # grouped
    ((1, 16, 4, 600), (32, 16, 1, 3), (1, 1), (0, 1, 0, 1), 1),        # wide rows (> 512 pixels)
])
def test_conv2d(xs, ws, stride, pad, groups, dtype):
    err, cp, rep = run_conv(xs, ws, stride, pad, groups, dtype)
    assert err <= TOL[dtype], err
    assert rep.macs > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conv_bn_relu_fused(dtype):
    err, cp, rep = run_conv((1, 64, 12, 12), (128, 64, 3, 3), (1, 1), (1, 1, 1, 1), 1, dtype, bn=True, relu=True)
    assert err <= TOL[dtype]
    assert len(cp.plan.groups) == 1 and cp.plan.groups[0].ops == ("lv0", "lv1", "lv2")
    # one Activation per PSUM block: the epilogue is fused into the evacuation
    acts = [i for i in cp.program.stream("scalar")]
    assert all(a.func == "relu" for a in acts)


def test_conv_bias_add_fused():
    err, cp, _ = run_conv((1, 32, 8, 8), (64, 32, 3, 3), (1, 1), (1, 1, 1, 1), 1, bias=True, relu=True)
    assert err <= 1e-5
    assert len(cp.plan.groups) == 1


def test_stem_packs_taps_on_partitions():
    err, cp, rep = run_conv((1, 3, 64, 64), (64, 3, 7, 7), (2, 2), (3, 3, 3, 3), 1, bn=True, relu=True)
    assert err <= 1e-5
    mms = cp.program.stream("tensor")
    # (c, r, s) taps on partitions: either the full 147-row im2col (2 matmuls per pixel block)
    # or stride-phase packing (c, r, s mod 2) = 42 rows x 4 column taps
    kmax = max(m.stationary.num_partitions for m in mms)
    nblk = -(-32 * 32 // 512)
    assert (kmax, len(mms)) in ((128, 2 * nblk), (42, 4 * nblk))


@pytest.mark.parametrize("xs,ws,stride,pad,dtype", [
    ((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3, 3, 3), "bfloat16"),  # ResNet stem (fp32: no room to stage)
    ((1, 3, 33, 31), (16, 3, 5, 3), (2, 1), (2, 1, 1, 0), "float32"),
    ((1, 3, 30, 30), (24, 3, 3, 3), (1, 1), (1, 1, 1, 1), "bfloat16")])  # stride 1: one parity plane
def test_stem_stages_the_image_once_padded_by_row_parity(xs, ws, stride, pad, dtype):
    """The packed stem brings the image in once (padded, split by row parity) and builds each
    band's im2col rows from it with SBUF->SBUF DMAs that each move whole padded rows of a band:
    no HBM re-reads and no DMA row shorter than the padded width x band rows."""
    from target import isa

    err, cp, rep = run_conv(xs, ws, stride, pad, 1, dtype, bn=True, relu=True)
    assert err <= TOL[dtype], err
    C, H, W = xs[1:]
    assert rep.hbm_read_bytes < C * H * W * 4 + 64 * 1024  # the image (fp32) once, plus weights
    im2col = [i for _, st in cp.program.streams for i in st
              if isinstance(i, isa.DmaCopy) and i.src.mem == isa.Mem.SBUF and i.dst.mem == isa.Mem.SBUF]
    Wp = W + pad[1] + pad[3]
    assert im2col and min(i.dst.free_elems for i in im2col) >= Wp



@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("C,ws,pad,stride", [(64, 3, 1, 1), (32, 3, 1, 2), (64, 5, 2, 1)])
def test_tap_packing_fills_pe_rows(C, ws, pad, stride, dtype):
    err, cp, rep = run_conv((1, C, 12, 12), (48, C, ws, ws), (stride, stride), (pad,) * 4, 1, dtype, relu=True)
    assert err <= TOL[dtype], err
    mms = cp.program.stream("tensor")
    assert max(m.stationary.num_partitions for m in mms) > C  # two taps share one matmul


def test_weights_streamed_in_k_groups_over_several_bands():
    """512x512x3x3 fp32 weights (9.4 MB) do not fit next to the input: K-groups stream through
    two buffers while the input is pipelined in row bands (regression: wrong buffer reuse)."""
    err, cp, rep = run_conv((1, 512, 16, 16), (512, 512, 3, 3), (1, 1), (1, 1, 1, 1), 1, bias=True, relu=True)
    assert err <= 1e-5, err


def test_conv_and_pool_band_on_small_sbuf_config():
    """inf1 has 64 KiB per partition: a 64x112x112 layer must be cut in row bands."""
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", (1, 64, 112, 112))
    wv = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    y = b.op("conv2d", [x, b.const("w", wv)], (1, 64, 112, 112), strides=(1, 1), padding=(1, 1, 1, 1),
             groups=1, dilation=(1, 1))
    z = b.op("max_pool2d", [y], (1, 64, 56, 56), pool_size=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1),
             layout="NCHW", dilation=(1, 1))
    cp = compile_graph(b.build(z), "inf1")
    xv = rng.standard_normal((1, 64, 112, 112)).astype(np.float32)
    outs, rep = cp.run({"x": xv}, check=False)
    from tests.test_codegen_pool import pool_ref
    ref = pool_ref(conv_ref(xv, wv, (1, 1), (1, 1, 1, 1)), "max", (3, 3), (2, 2), (1, 1, 1, 1), (56, 56))
    assert rel_err(outs[z], ref) <= 1e-5
    assert rep.sbuf_peak_bytes <= 128 * 65536


def _residual_graph(K, H, shortcut_conv, rng):
    """x -> conv3x3+bn -> (+ shortcut) -> relu; shortcut = x, or a 1x1 conv of x placed AFTER the
    main conv in graph order (a ResNet downsample branch)."""
    b = GraphBuilder()
    C = K if not shortcut_conv else K // 2
    x = b.input("x", (1, C, H, H))
    w = b.const("w", (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32))
    bn = dict(g=rng.uniform(0.5, 2, K), be=rng.standard_normal(K), m=rng.standard_normal(K), v=rng.uniform(0.5, 2, K))
    y = b.op("conv2d", [x, w], (1, K, H, H), strides=(1, 1), padding=(1, 1, 1, 1), groups=1, dilation=(1, 1))
    y = b.op("batch_norm", [y] + [b.const(k, v) for k, v in bn.items()], (1, K, H, H), epsilon=1e-5, axis=1)
    sc, ws = x, None
    if shortcut_conv:
        ws = b.const("ws", (rng.standard_normal((K, C, 1, 1)) / np.sqrt(C)).astype(np.float32))
        sc = b.op("conv2d", [x, ws], (1, K, H, H), strides=(1, 1), padding=(0, 0, 0, 0), groups=1, dilation=(1, 1))
    s = b.op("add_n", [y, sc], (1, K, H, H))
    o = b.op("relu", [s], (1, K, H, H))
    g = b.build(o)
    xv = rng.standard_normal((1, C, H, H)).astype(np.float32)
    scale = bn["g"] / np.sqrt(bn["v"] + 1e-5)
    ref = conv_ref(xv, g.tensor_map[w].value, (1, 1), (1, 1, 1, 1)) * scale[None, :, None, None] \
        + (bn["be"] - bn["m"] * scale)[None, :, None, None]
    ref = ref + (conv_ref(xv, g.tensor_map[ws].value, (1, 1), (0, 0, 0, 0)) if shortcut_conv else xv)
    return g, o, {"x": xv}, np.maximum(ref, 0)


@pytest.mark.parametrize("planner", ["per-op", "poly"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("K,H,shortcut_conv", [(64, 10, False), (256, 7, True)])
def test_residual_add_accumulates_into_psum(K, H, shortcut_conv, dtype, planner):
    """conv + bn + add(shortcut) + relu is one kernel: the shortcut is accumulated into the conv's
    PSUM bank by an identity matmul (no Vector add), read from HBM (per-op) or from its
    SBUF-resident buffer (poly); a shortcut produced later in graph order is scheduled first."""
    from target import isa

    g, o, inputs, ref = _residual_graph(K, H, shortcut_conv, np.random.default_rng(3))
    cp = compile_graph(g, "inf2", planner=planner, dtype=dtype)
    (k,) = [k for k in cp.plan.groups if "lv0" in k.ops]
    assert k.param("residual") and {"lv0", "lv1"} <= set(k.ops) and o in k.ops
    if shortcut_conv:  # the downsample conv runs before the kernel that reads its output
        assert [gp.ops[0] for gp in cp.plan.groups] == ["lv2", "lv0"]
    outs, rep = cp.run(inputs)
    assert rel_err(outs[o], ref) <= TOL[dtype]
    ins = [i for _, st in cp.program.streams for i in st]
    assert not any(isinstance(i, isa.TensorTensor) and i.op == "add" for i in ins)
    # one identity matmul per PSUM block (K-tile x pixel block): stationary is K x K
    idm = [i for i in cp.program.stream("tensor") if i.stationary.num_partitions == i.stationary.free_elems
           and i.start is False and i.stop is True]
    assert len(idm) >= -(-K // 128)
    if planner == "poly" and shortcut_conv:
        assert cp.plan.placement(k.param("residual")).placement == "sbuf"


def test_epilogue_columns_come_from_one_constant_block():
    """Every conv's (scale, bias) columns live in the program's constant block: one HBM constant,
    loaded once at program start, instead of a small DMA per kernel."""
    from target import isa
    from target.codegen.const_block import block_bytes, columns

    g, o, inputs, ref = _residual_graph(256, 7, True, np.random.default_rng(4))
    cp = compile_graph(g, "inf2", planner="poly", dtype="float32")
    cols = columns(cp.plan.groups, g.tensor_map)
    assert cols == {"lv0": 4}  # 256 channels = 2 blocked tiles x (scale, bias); lv2 has no epilogue
    assert block_bytes(cp.plan.groups, g.tensor_map) == 64
    assert "const_block" in cp.constants and not any(k.endswith("/epilogue") for k in cp.constants)
    dmas = [i for _, st in cp.program.streams for i in st if i.tag == "const_block"]
    blk = cp.program.tensor("const_block")
    assert 1 <= len(dmas) <= 16 and all(blk.offset <= i.src.offset < blk.offset + blk.nbytes for i in dmas)
    assert not any(isinstance(i, isa.DmaCopy) and i.dst.free_elems * i.dst.itemsize <= 64
                   for _, st in cp.program.streams for i in st if i.tag != "const_block")
    outs, _ = cp.run(inputs)
    assert rel_err(outs[o], ref) <= TOL["float32"]


@pytest.mark.parametrize("xs,ws,stride,pad,dtype", [
    ((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3, 3, 3), "bfloat16"),  # ResNet stem
    ((1, 3, 33, 31), (16, 3, 5, 3), (2, 1), (2, 1, 1, 0), "float32"),     # asymmetric padding
    ((2, 3, 30, 30), (24, 3, 3, 3), (1, 1), (1, 1, 1, 1), "bfloat16"),    # stride 1, two images
    ((1, 3, 40, 40), (8, 3, 11, 11), (4, 4), (2, 2, 2, 2), "float32")])   # AlexNet-like 11x11/4
def test_stem_row_taps(xs, ws, stride, pad, dtype):
    """``LowerOptions(stem="rows")``: the image is staged once, split by row parity; partition
    (c, r) holds the input rows r, r + sh, r + 2sh, ... of plane c (the rows its taps read, ONE
    contiguous run of the parity plane per band: every im2col DMA moves whole unpadded rows), and
    each column tap s is its own matmul over the output columns whose input column exists
    (clipped taps instead of padding columns).  The im2col moves exactly C*R*OH rows of W per
    image."""
    from target import isa
    from target.codegen.options import LowerOptions

    err, cp, rep = run_conv(xs, ws, stride, pad, 1, dtype, bn=True, relu=True, options=LowerOptions(stem="rows"))
    assert err <= TOL[dtype], err
    N, C, H, W = xs
    K, _, R, S = ws
    assert rep.hbm_read_bytes < N * C * H * W * 4 + 64 * 1024  # the image(s) once, plus weights
    mms = cp.program.stream("tensor")
    assert {m.stationary.num_partitions for m in mms} == {C * R}
    OH = (H + pad[0] + pad[2] - R) // stride[0] + 1
    OW = (W + pad[1] + pad[3] - S) // stride[1] + 1
    nblk = -(-OH // max(1, 512 // OW))  # pixel blocks of whole rows per image
    assert len(mms) <= N * nblk * S + N * nblk  # S taps per block (a band edge may add a block)
    assert sum(m.moving.free_elems for m in mms) < N * OH * OW * S  # clipped taps skip padding columns
    im2col = [i for _, st in cp.program.streams for i in st
              if isinstance(i, isa.DmaCopy) and i.src.mem == isa.Mem.SBUF and i.dst.mem == isa.Mem.SBUF]
    assert im2col and all(i.dst.free_elems % W == 0 and i.src.sizes[-1] == i.dst.free_elems for i in im2col)
    it = 2 if dtype == "bfloat16" else 4
    assert sum(i.dst.nbytes for i in im2col) == N * C * R * OH * W * it


def test_lowering_search_keeps_the_earliest_estimated_end():
    """The poly planner's programs are lowered with each lowering option that differs in one field
    and the earliest estimated end wins; the emitter's estimate is the simulated latency."""
    from target.codegen.options import LowerOptions

    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", (1, 3, 64, 64))
    w1 = b.const("w1", rng.standard_normal((32, 3, 7, 7)).astype(np.float32) * 0.1)
    y = b.op("conv2d", [x, w1], (1, 32, 32, 32), strides=(2, 2), padding=(3, 3, 3, 3), groups=1, dilation=(1, 1))
    y = b.op("relu", [y], (1, 32, 32, 32))
    w2 = b.const("w2", rng.standard_normal((64, 32, 3, 3)).astype(np.float32) * 0.1)
    y = b.op("conv2d", [y, w2], (1, 64, 32, 32), strides=(1, 1), padding=(1, 1, 1, 1), groups=1, dilation=(1, 1))
    g = b.build(y)
    cp = compile_graph(g, "inf2", planner="poly", dtype="bfloat16")
    tried = dict(cp.search)
    # moves in the fields the kernels consulted are tried (the stem's layout, its weights'
    # prefetch pieces); fields nothing consulted (no concat copies, no packable weights) are not
    assert LowerOptions() in tried and LowerOptions(stem="rows") in tried and len(tried) >= 3
    assert all(o.copy_piece == LowerOptions().copy_piece and not o.weight_pack for o in tried)
    assert tried[cp.options] == min(tried.values())
    _, rep = cp.run({"x": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)})
    assert abs(rep.latency_us - tried[cp.options]) <= 0.01 * rep.latency_us
    fixed = compile_graph(g, "inf2", planner="poly", dtype="bfloat16", options=LowerOptions(stem="rows"))
    assert fixed.options == LowerOptions(stem="rows") and len(fixed.search) == 1
    with pytest.raises(ValueError, match="stem"):
        LowerOptions(stem="diagonal")


def test_stem_restages_each_image_of_a_batch():
    """N > 1: the stage holds one image at a time; the image is still read from HBM only once."""
    err, cp, rep = run_conv((3, 3, 40, 40), (16, 3, 7, 7), (2, 2), (3, 3, 3, 3), 1, "bfloat16", bn=True)
    assert err <= TOL["bfloat16"], err
    assert rep.hbm_read_bytes < 3 * 3 * 40 * 40 * 4 + 32 * 1024


def test_weights_stay_once_when_small_bands_fit_beside_them():
    """A conv whose weights exceed a third of the free SBUF still loads them once when one-row
    bands fit next to them (streaming K groups would reload every weight once per band)."""
    from target.config import load_config

    rng = np.random.default_rng(7)
    b = GraphBuilder()
    x = b.input("x", (1, 512, 13, 13))  # weights 36 KiB per partition (bf16) > 1/3 of inf1's 64 KiB
    wv = (rng.standard_normal((512, 512, 3, 3)) / 68).astype(np.float32)
    y = b.op("conv2d", [x, b.const("w", wv)], (1, 512, 13, 13), strides=(1, 1), padding=(1, 1, 1, 1), groups=1,
             dilation=(1, 1))
    g = b.build(y)
    cp = compile_graph(g, load_config("inf1"), dtype="bfloat16")
    sched = dict(dict(cp.schedule)["lv0:conv2d"])
    assert sched["k_groups"] == 1
    xv = rng.standard_normal((1, 512, 13, 13)).astype(np.float32)
    outs, rep = cp.run({"x": xv})
    assert rel_err(outs[y], conv_ref(xv, wv, (1, 1), (1, 1, 1, 1))) <= TOL["bfloat16"]
    assert rep.hbm_read_bytes <= wv.size * 2 + xv.nbytes + 64 * 1024


@pytest.mark.parametrize("N", [4, 24])
def test_streamed_weights_load_once_per_band_block(N):
    """Weights too big for SBUF stream in K groups; with several bands (here N images) the
    inputs of a block of bands stay in SBUF while every group runs over them: each weight loads
    once per block and each input once (N = 4: one block, weights once; N = 24: the blocks that
    fit), instead of every weight once per band or every input once per group."""
    from target.config import load_config

    rng = np.random.default_rng(11)
    b = GraphBuilder()
    x = b.input("x", (N, 512, 7, 7))
    wv = (rng.standard_normal((1024, 512, 3, 3)) / 68).astype(np.float32)  # 18.9 MB fp32
    y = b.op("conv2d", [x, b.const("w", wv)], (N, 1024, 7, 7), strides=(1, 1), padding=(1, 1, 1, 1), groups=1,
             dilation=(1, 1))
    g = b.build(y)
    cp = compile_graph(g, load_config("inf1"), dtype="float32")
    sched = dict(dict(cp.schedule)["lv0:conv2d"])
    G = sched["k_groups"]
    xv = rng.standard_normal((N, 512, 7, 7)).astype(np.float32)
    outs, rep = cp.run({"x": xv}, check=False)
    assert rel_err(outs[y], conv_ref(xv, wv, (1, 1), (1, 1, 1, 1))) <= TOL["float32"]
    if N == 4:  # all four inputs fit beside two weight groups: weights once, input once
        assert G > 1 and sched["loop_order"] == "band_blocks_of_4"
        assert rep.hbm_read_bytes <= wv.nbytes + xv.nbytes + 64 * 1024
    else:  # blocks of the bands that fit would reload the weights ~5x: group-outer is cheaper
        assert G > 1 and sched["loop_order"] == "k_groups_outer"
        assert rep.hbm_read_bytes <= wv.nbytes + G * xv.nbytes + 64 * 1024


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("xs,stride,pad", [
    ((1, 544, 7, 7), (1, 1), (1, 1, 1, 1)),     # blocked 68 x 8 (ShuffleNet's last stage)
    ((2, 256, 14, 14), (2, 2), (1, 0, 1, 1)),   # blocked 128 x 2, strided, asymmetric pad, N=2
    ((1, 96, 9, 9), (1, 1), (0, 0, 0, 0)),      # one plane
])
def test_depthwise_weights_load_as_diagonals(xs, stride, pad, dtype):
    """``LowerOptions(depthwise="diag")``: a depthwise conv's HBM weights are the C x R x S taps
    (its blocks' diagonals), the stationary blocks are built on chip; same numbers as the
    block-diagonal blocks loaded whole (``"dense"``), which move Mk-fold more weight bytes."""
    from target.codegen.options import LowerOptions

    C = xs[1]
    ws = (C, 1, 3, 3)
    it = 4 if dtype == "float32" else 2
    got = {}
    for mode in ("diag", "dense"):
        err, cp, rep = run_conv(xs, ws, stride, pad, C, dtype, options=LowerOptions(depthwise=mode))
        assert err <= TOL[dtype], (mode, err)
        got[mode] = rep.hbm_read_bytes
    x_bytes = int(np.prod(xs)) * 4  # graph inputs stay fp32 in HBM
    assert got["diag"] == x_bytes + C * 9 * it
    assert got["dense"] - x_bytes >= 60 * C * 9 * it


def test_larger_k_groups_through_one_buffer_pass_the_input_fewer_times():
    """VGG-19's 512-channel 3x3 convs at fp32 on inf1: 73 KB of weights per partition (64 KiB
    partitions) stream in K groups, and in the group-outer order every group re-reads the whole
    batch's input.  One K-tile per group through two buffers passes the input 4 times; two
    K-tiles per group through one buffer (the next group loads after the current one's last
    matmul) pass it twice: weights once + 2 x input."""
    from target.config import load_config

    rng = np.random.default_rng(11)
    b = GraphBuilder()
    x = b.input("x", (8, 512, 14, 14))
    wv = (rng.standard_normal((512, 512, 3, 3)) / 68).astype(np.float32)  # 9.4 MB fp32
    y = b.op("conv2d", [x, b.const("w", wv)], (8, 512, 14, 14), strides=(1, 1), padding=(1, 1, 1, 1), groups=1,
             dilation=(1, 1))
    cp = compile_graph(b.build(y), load_config("inf1"), dtype="float32")
    sched = dict(dict(cp.schedule)["lv0:conv2d"])
    assert (sched["k_tiles"], sched["k_groups"], sched["loop_order"]) == (4, 2, "k_groups_outer")
    xv = rng.standard_normal((8, 512, 14, 14)).astype(np.float32)
    outs, rep = cp.run({"x": xv})
    assert rel_err(outs[y], conv_ref(xv, wv, (1, 1), (1, 1, 1, 1))) <= TOL["float32"]
    assert rep.hbm_read_bytes <= wv.nbytes + 2 * xv.nbytes + 64 * 1024
