"""In-place channel concat (poly planner ``_concat_slices`` + conv2d with a partition offset):
a concat input produced by a conv is a slice of the concat's resident buffer, the conv writes
its PSUM lanes straight onto those partitions and the concat moves nothing."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tests.test_codegen_conv import conv_ref
from tvm_poly.driver import compile_graph


def _conv(b, rng, inp, ref, K, k, pad):
    """A stride-1 k x k conv (K output channels, same size) on graph tensor ``inp`` whose reference
    value is ``ref``: (graph tensor, numpy reference)."""
    H = ref.shape[2]
    w = (rng.standard_normal((K, ref.shape[1], k, k)) / np.sqrt(ref.shape[1] * k * k)).astype(np.float32)
    y = b.op("conv2d", [inp, b.const(f"w{b.k}", w)], (1, K, H, H), strides=(1, 1), padding=(pad,) * 4,
             groups=1, dilation=(1, 1))
    return y, conv_ref(ref, w, (1, 1), (pad,) * 4)


def _fire(E, H, rng, S=32, C=48):
    """SqueezeNet's fire module and a 1x1 conv after it: x -> squeeze 1x1 -> relu ->
    [expand 1x1 -> relu, expand 3x3 -> relu] -> concat -> conv 1x1."""
    b = GraphBuilder()
    x = b.input("x", (1, C, H, H))
    xv = rng.standard_normal((1, C, H, H)).astype(np.float32)

    s, sr = _conv(b, rng, x, xv, S, 1, 0)
    s, sr = b.op("relu", [s], (1, S, H, H)), np.maximum(sr, 0)
    e1, e1r = _conv(b, rng, s, sr, E, 1, 0)
    e1, e1r = b.op("relu", [e1], (1, E, H, H)), np.maximum(e1r, 0)
    e3, e3r = _conv(b, rng, s, sr, E, 3, 1)
    e3, e3r = b.op("relu", [e3], (1, E, H, H)), np.maximum(e3r, 0)
    cat = b.op("concat", [e1, e3], (1, 2 * E, H, H), axis=1)
    catr = np.concatenate([e1r, e3r], axis=1)
    o, orf = _conv(b, rng, cat, catr, 16, 1, 0)
    return b.build(o), o, {"x": xv}, orf


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("E", [64, 192])  # one plane per partition / blocked over 64 partitions (192 = 64 x 3)
def test_fire_module_concat_in_place(E, dtype):
    g, o, inputs, ref = _fire(E, 13, np.random.default_rng(E))
    cp = compile_graph(g, "inf2", planner="poly", dtype=dtype)
    notes = [n for n in cp.plan.notes if n.startswith("concat in place")]
    assert len(notes) == 1
    slices = [t for t in cp.plan.tensors if t.placement == "alias" and t.num_partitions]
    assert sorted((t.start_partition, t.num_partitions) for t in slices) == [(0, 64), (64, 64)]
    cat = next(k for k in cp.plan.groups if k.kind == "concat")
    moved = [i for _, st in cp.program.streams for i in st if i.tag == cat.tag]
    assert moved == []  # the concat moves nothing
    outs, rep = cp.run(inputs)  # with the race / overlap checker
    assert rel_err(outs[o], ref) <= TOL[dtype]
    base = compile_graph(g, "inf2", planner="per-op", dtype=dtype)
    outb, _ = base.run(inputs, check=False)
    assert rel_err(outs[o], outb[o]) <= TOL[dtype]


def test_conv_into_a_partition_offset_needs_a_legal_channel_map():
    """A slice the conv cannot write lane to lane is refused by name, not miscompiled."""
    import dataclasses

    from target.codegen.conv import conv2d
    from target.codegen.emitter import CodegenError, Emitter
    from target.codegen.values import Value
    from target.config import load_config

    em = Emitter(load_config("inf2"))
    buf = em.sbuf_resident(0, 128, 0, 4096, "fp32", "cat")
    view = Value("y", (1, 48, 4, 4), "fp32", sbuf=dataclasses.replace(buf, partitions=48, start_partition=64))
    x = Value("x", (1, 8, 4, 4), "fp32", sbuf=em.sbuf_resident(0, 8, 8192, 64, "fp32", "x"))
    res = Value("r", (1, 48, 4, 4), "fp32", sbuf=em.sbuf_resident(0, 48, 16384, 64, "fp32", "r"))
    with pytest.raises(CodegenError, match=r"partitions \[64, 112\).*no residual"):
        conv2d(em, x, view, np.ones((48, 8, 1, 1), np.float32), (1, 1), (0, 0, 0, 0), 1,
               lambda n, a, d: None, residual=res, cdt="fp32")


def _dense_block(H, rng, C0=64, G=32):
    """DenseNet's dense block, two layers: y0 = conv(x); per layer: h = relu(cat) -> conv 3x3
    (G channels) -> cat = concat(cat, that); then a 1x1 conv over the last concat."""
    b = GraphBuilder()
    x = b.input("x", (1, 16, H, H))
    xv = rng.standard_normal((1, 16, H, H)).astype(np.float32)

    cat, catr = _conv(b, rng, x, xv, C0, 1, 0)
    for _ in range(2):
        C = catr.shape[1]
        h, hr = b.op("relu", [cat], (1, C, H, H)), np.maximum(catr, 0)
        n, nr = _conv(b, rng, h, hr, G, 3, 1)
        cat = b.op("concat", [cat, n], (1, C + G, H, H), axis=1)
        catr = np.concatenate([catr, nr], axis=1)
    o, orf = _conv(b, rng, cat, catr, 16, 1, 0)
    return b.build(o), o, {"x": xv}, orf


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dense_block_concats_share_one_buffer(dtype):
    """cat1 = [y0 | n1] is itself the first 96 partitions of cat2 = [cat1 | n2]: every concat
    input is a (chained) slice of cat2's buffer and no concat moves a byte."""
    g, o, inputs, ref = _dense_block(8, np.random.default_rng(3))
    cp = compile_graph(g, "inf2", planner="poly", dtype=dtype)
    slices = {t.name: (t.alias_of, t.start_partition, t.num_partitions) for t in cp.plan.tensors
              if t.placement == "alias" and t.num_partitions}
    cats = [k for k in cp.plan.groups if k.kind == "concat"]
    assert len(cats) == 2 and len(slices) == 4  # y0, n1, cat1 (in cat2), n2
    assert slices[cats[0].output] == (cats[1].output, 0, 96)
    moved = [i for _, st in cp.program.streams for i in st if i.tag in {k.tag for k in cats}]
    assert moved == []
    outs, _ = cp.run(inputs)
    assert rel_err(outs[o], ref) <= TOL[dtype]


def test_concat_relayout_is_split_over_the_queues():
    """288 channels (blocked 96 partitions x 3 planes) + 32 -> 320 (80 x 4): the resident concat
    changes the row-split layout, so its copies move data across partitions (SBUF->SBUF DMAs that
    Emitter.dma_split cannot cut).  The concat cuts them at multiples of both layouts' rows: many
    pieces on several queues, not one DMA on one queue (the 288 come from a pool: no conv writes
    them into a slice of the concat)."""
    from target import isa

    rng = np.random.default_rng(4)
    b = GraphBuilder()
    xv = rng.standard_normal((1, 16, 14, 14)).astype(np.float32)
    x = b.input("x", xv.shape)
    h, rh = _conv(b, rng, x, xv, 288, 1, 0)
    a = b.op("max_pool2d", [h], (1, 288, 14, 14), pool_size=(3, 3), strides=(1, 1), padding=(1, 1, 1, 1))
    hp = np.pad(rh, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ra = np.max([hp[:, :, r:r + 14, s:s + 14] for r in range(3) for s in range(3)], axis=0)
    c, rc = _conv(b, rng, x, xv, 32, 3, 1)
    cat = b.op("concat", [a, c], (1, 320, 14, 14), axis=1)
    y, ry = _conv(b, rng, cat, np.concatenate([ra, rc], axis=1), 64, 1, 0)
    cp = compile_graph(b.build(y), "inf2", planner="poly", dtype="float32")
    assert {cp.plan.placement(t).placement for t in (a, cat)} == {"sbuf"}
    outs, _ = cp.run({x: xv})
    assert rel_err(outs[y], ry) <= TOL["float32"]
    (k,) = [g for g in cp.plan.groups if g.kind == "concat"]
    moves = [(s, i) for s, st in cp.program.streams for i in st
             if isinstance(i, isa.DmaCopy) and i.tag == k.tag and i.src.mem == i.dst.mem == isa.Mem.SBUF]
    big = [i for _, i in moves if i.src.num_partitions != i.dst.num_partitions]
    assert len(big) >= 4 and len({s for s, _ in moves}) >= 4  # ~one per 32 KiB (Emitter.dma_min_piece)
    assert sum(i.dst.nbytes for _, i in moves) >= 288 * 196 * 4  # every element of the 288 moved once


def _densenet_block(H, rng, C0=96, G=32, layers=3):
    """DenseNet's dense block as the model has it: per layer, bn -> relu -> conv 1x1 (128) ->
    relu -> conv 3x3 (G channels) and cat = concat(cat, that); a bn -> relu -> 1x1 conv reads
    the last concat (the transition).  C0 + 32k channels: 96, 128, 160 (two planes), 192."""
    b = GraphBuilder()
    x = b.input("x", (1, 16, H, H))
    xv = rng.standard_normal((1, 16, H, H)).astype(np.float32)
    cat, catr = _conv(b, rng, x, xv, C0, 1, 0)

    def bn_relu(v, vr):
        C = vr.shape[1]
        gam, bet = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
        mu, var = rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
        y = b.op("batch_norm", [v] + [b.const(f"bn{b.k}_{k}", a) for k, a in
                                      (("g", gam), ("b", bet), ("m", mu), ("v", var))], vr.shape, epsilon=1e-5, axis=1)
        r = (vr - mu[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5) * gam[None, :, None, None] + \
            bet[None, :, None, None]
        return b.op("relu", [y], vr.shape), np.maximum(r, 0)
    for _ in range(layers):
        h, hr = bn_relu(cat, catr)
        h, hr = _conv(b, rng, h, hr, 128, 1, 0)
        h, hr = b.op("relu", [h], hr.shape), np.maximum(hr, 0)
        n, nr = _conv(b, rng, h, hr, G, 3, 1)
        cat = b.op("concat", [cat, n], (1, catr.shape[1] + G, H, H), axis=1)
        catr = np.concatenate([catr, nr], axis=1)
    h, hr = bn_relu(cat, catr)
    o, orf = _conv(b, rng, h, hr, 64, 1, 0)
    return b.build(o), o, {"x": xv}, orf


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dense_block_in_the_cyclic_layout_moves_only_its_first_input(dtype):
    """The concat chain and the batch norms that read it take the cyclic layout (channel c on
    partition c % 128 of plane c // 128): each concat is a prefix of the next (a cyclic slice)
    and each 32-channel conv output lands on 32 partitions of one plane at a legal start (the
    160-channel concat puts the second layer's channels on plane 1, partitions 0..32).  Nothing
    moves; in the row-split layout the 160-channel buffer (80 x 2) copies the whole 128-channel
    one (128 x 1 -> 80 x 2) and the 32 channels of the 192-channel one land at partition 80."""
    from target import isa

    g, o, inputs, ref = _densenet_block(8, np.random.default_rng(5))
    cp = compile_graph(g, "inf2", planner="poly", dtype=dtype)
    cats = [k for k in cp.plan.groups if k.kind == "concat"]
    cyc = {t.name for t in cp.plan.tensors if t.cyclic}
    assert {k.output for k in cats} <= cyc
    slices = {t.name: (t.start_partition, t.num_partitions, t.plane, t.cyclic) for t in cp.plan.tensors
              if t.placement == "alias" and t.num_partitions}
    convs = [k for k in cp.plan.groups if k.kind == "conv2d"]
    new = [k.output for k in convs if k.output in {c.inputs[1] for c in cats}]
    assert [slices[n] for n in new] == [(96, 32, 0, False), (0, 32, 1, False), (32, 32, 1, False)]
    assert slices[cats[0].output][3] and slices[cats[1].output] == (0, 128, 0, True)

    def copied(cp):
        return sum(i.dst.nbytes for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy)
                   and i.tag.endswith(":concat") and i.src.mem == i.dst.mem == isa.Mem.SBUF)
    assert copied(cp) == 0  # (the chain's first input is a conv's output too: a slice as well)
    from tvm_poly.planners.poly import plan_poly
    rows = compile_graph(g, "inf2", planner="poly", dtype=dtype,
                         plan=plan_poly(g, cp.config, dtype, cyclic_layouts=False))
    assert not any(t.cyclic for t in rows.plan.tensors) and copied(rows) > copied(cp)
    outs, rep = cp.run(inputs)
    assert rel_err(outs[o], ref) <= TOL[dtype]
    outs2, rep2 = rows.run(inputs)
    assert rel_err(outs2[o], ref) <= TOL[dtype] and rep.latency_us < rep2.latency_us


def test_cyclic_values_map_whole_channels_of_one_plane():
    from target.codegen.emitter import CodegenError, Emitter
    from target.codegen.values import Value
    from target.config import load_config

    em = Emitter(load_config("inf2"))
    t = em.sbuf_resident(0, 128, 0, 2 * 64 * 4, "fp32", "cat")
    v = Value("cat", (1, 200, 8, 8), "fp32", sbuf=t, cyclic=True)
    ap = v.chan_ap(0, 160, 32, 5, (10,), (1,))  # channels 160..192: plane 1, partitions 32..64
    assert (ap.start_partition, ap.num_partitions, ap.offset) == (32, 32, (64 + 5) * 4)
    assert v.planes() == 2
    with pytest.raises(CodegenError, match="not whole channels of one plane"):
        v.chan_ap(0, 120, 16, 0, (64,), (1,))  # channels 120..136 straddle planes 0 and 1


def _inception_concat(rng, widths=(112, 288, 64, 64), H=13):
    """Four 1x1-conv branches concatenated (Inception v1's 528-channel module 4d) and a 1x1 conv
    and a 3x3/1 max pool -> 1x1 conv reading the concat (module 4e's first branch and pool branch)."""
    b = GraphBuilder()
    x = b.input("x", (1, 32, H, H))
    xv = rng.standard_normal((1, 32, H, H)).astype(np.float32)
    outs = [_conv(b, rng, x, xv, k, 1, 0) for k in widths]
    C = sum(widths)
    cat = b.op("concat", [o for o, _ in outs], (1, C, H, H), axis=1)
    catr = np.concatenate([r for _, r in outs], axis=1)
    y1, r1 = _conv(b, rng, cat, catr, 64, 1, 0)
    p = b.op("max_pool2d", [cat], (1, C, H, H), pool_size=(3, 3), strides=(1, 1), padding=(1, 1, 1, 1))
    cp_ = np.pad(catr, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    pr = np.max([cp_[:, :, r:r + H, s:s + H] for r in range(3) for s in range(3)], axis=0)
    y2, r2 = _conv(b, rng, p, pr, 64, 1, 0)
    y = b.op("add", [y1, y2], (1, 64, H, H))
    return b.build(y), y, {"x": xv}, r1 + r2, cat, p


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_concat_on_whole_rows_of_every_input(dtype):
    """528 channels are 88 x 6 in the kernels' default blocked map, which puts the 112-channel
    input on 18.67 partitions: the concat copies it in per-row pieces.  The planner lays the
    concat out as 66 x 8 (every input on whole rows: 14, 36, 8, 8), the pool that reads it too,
    and the convs contract over 66-row planes; the driver lowers the plan with and without and
    keeps the earlier end unless the other moves 1% fewer HBM bytes (here: with)."""
    from target import isa
    from tvm_poly.planners.poly import plan_poly

    g, y, inputs, ref, cat, pool = _inception_concat(np.random.default_rng(6))
    cp = compile_graph(g, "inf2", planner="poly", dtype=dtype)
    rows = dict(dict(cp.plan.info)["aligned_rows"])
    assert rows == {cat: 66, pool: 66}
    plain = compile_graph(g, "inf2", planner="poly", dtype=dtype, plan=plan_poly(g, cp.config, dtype, aligned_layouts=False))

    def copies(c):
        return [i for _, st in c.program.streams for i in st if isinstance(i, isa.DmaCopy) and i.tag.endswith(":concat")]
    assert 0 < len(copies(cp)) < len(copies(plain))
    from tvm_poly.driver import _hbm_bytes
    for c in (cp, plain):
        outs, rep = c.run(inputs)
        assert rel_err(outs[y], ref) <= TOL[dtype]
        assert _hbm_bytes(c.program) == rep.hbm_read_bytes + rep.hbm_write_bytes  # the driver's measure


def test_concat_rows_stay_default_when_a_reader_needs_them():
    """A reader that is neither a conv, a lane-to-lane kernel nor a concat (here a global pool's
    classifier reads the pool output, so the layout would reach a matmul) keeps the default map."""
    from tvm_poly.planners.poly import aligned_concat_rows

    class G:
        def __init__(self, name, kind, inputs, output, **p):
            self.name, self.kind, self.inputs, self.output, self._p = name, kind, tuple(inputs), output, p

        def param(self, k, default=None):
            return self._p.get(k, default)

    class T:
        def __init__(self, shape, const=False):
            self.shape, self.is_constant = shape, const
    tm = {"a": T((1, 112, 13, 13)), "b": T((1, 416, 13, 13)), "c": T((1, 528, 13, 13)), "p": T((1, 528, 1, 1)),
          "f": T((1, 10))}
    groups = [G("cat", "concat", ["a", "b"], "c", axis=1), G("gp", "pool", ["c"], "p"), G("fc", "matmul", ["p"], "f")]
    assert aligned_concat_rows(groups, tm, lambda t: t) == {}
    groups[2] = G("cv", "conv2d", ["p"], "f")
    assert aligned_concat_rows(groups, tm, lambda t: t) == {"c": 66, "p": 66}
