"""Spatial tiling (row bands with halo reuse, tvm_poly/row_bands.py): row maps from isl, the band
schedule, and whole programs whose intermediates only fit SBUF as band buffers."""
import dataclasses

import numpy as np
import pytest

from target.config import load_config
from tvm_poly.driver import compile_graph


def _chain(H=40, seed=0, C=32, N=1):
    """x -> conv3x3+relu (h) -> conv1x1 (y) -> relu(y + h) (z) -> maxpool 3x3/2 pad 1 (p) ->
    conv3x3/2 pad 1 -> out: a residual diamond, a pool and two strides."""
    from tests.codegen_util import GraphBuilder
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", (N, 16, H, H))
    w1 = b.const("w1", rng.standard_normal((C, 16, 3, 3)).astype(np.float32) * 0.2)
    w2 = b.const("w2", rng.standard_normal((C, C, 1, 1)).astype(np.float32) * (1.1 / np.sqrt(C)))
    w3 = b.const("w3", rng.standard_normal((24, C, 3, 3)).astype(np.float32) * 0.1)
    s = (N, C, H, H)
    h = b.op("relu", [b.op("conv2d", [x, w1], s, padding=(1, 1, 1, 1), strides=(1, 1))], s)
    y = b.op("conv2d", [h, w2], s, padding=(0, 0, 0, 0), strides=(1, 1))
    z = b.op("relu", [b.op("add", [y, h], s)], s)
    p = b.op("max_pool2d", [z], (N, C, H // 2, H // 2), pool_size=(3, 3), strides=(2, 2), padding=(1, 1, 1, 1))
    o = b.op("conv2d", [p, w3], (N, 24, H // 4, H // 4), padding=(1, 1, 1, 1), strides=(2, 2))
    return b.build([o]), (x, w1, w2, w3), rng


def _ref(xv, w1, w2, w3):
    from tests.test_codegen_conv import conv_ref
    h = np.maximum(conv_ref(xv, w1, (1, 1), (1,) * 4), 0)
    z = np.maximum(conv_ref(h, w2, (1, 1), (0,) * 4) + h, 0)
    zp = np.pad(z, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    OH = z.shape[2] // 2
    p = np.full(z.shape[:2] + (OH, OH), -np.inf)
    for r in range(3):
        for c in range(3):
            p = np.maximum(p, zp[:, :, r:r + 2 * OH:2, c:c + 2 * OH:2])
    return conv_ref(p, w3, (2, 2), (1,) * 4)


def _small_sbuf(kib):
    return dataclasses.replace(load_config("inf1"), sbuf_bytes_per_partition=kib * 1024)


def test_row_maps_are_the_convs_and_pools_windows():
    """isl's {output row -> input rows} per kernel equals the closed form of each operator."""
    from tvm_poly.planners.per_op import plan_per_op
    from tvm_poly.planners.poly import _model_of, model_names
    from tvm_poly.row_bands import row_maps

    g, _, _ = _chain(H=20)
    groups = plan_per_op(g, load_config("inf2"), "float32").groups
    pm = _model_of(g, [])
    maps = row_maps(pm, g, groups, *model_names(g, pm))
    kinds = {gi: groups[gi].kind for gi, _ in maps}
    assert sorted(set(kinds.values())) == ["conv2d", "pool"]
    for (gi, t), m in maps.items():
        node = g.node(groups[gi].ops[0])
        H = g.tensor_map[t].shape[2]
        if groups[gi].kind == "conv2d":
            R, s, pt = g.tensor_map[node.inputs[1]].shape[2], node.attr("strides")[0], node.attr("padding")[0]
        else:
            R, s, pt = groups[gi].param("pool_size")[0], groups[gi].param("strides")[0], groups[gi].param("padding")[0]
        for o in range(len(m.lo)):
            assert (m.lo[o], m.hi[o]) == (max(0, o * s - pt), min(H, o * s - pt + R)), (gi, t, o)


@pytest.mark.parametrize("dtype,tol,C,kib", [("float32", 1e-5, 32, 24), ("bfloat16", 3e-2, 32, 22),
                                             ("float32", 1e-5, 256, 48)])
def test_banded_chain_matches_reference_and_moves_fewer_bytes(dtype, tol, C, kib):
    """With 22-24 KiB of SBUF per partition the 40x40 intermediates spill whole; the planner runs
    the chain in row bands instead (band buffers + halo reuse) and the result is unchanged
    (C = 256: two channel planes per partition, the blocked layout; a 1x1 conv reads a band
    buffer's row window in place, whose planes lie band_rows x W apart)."""
    g, (x, *_), rng = _chain(H=40, C=C)
    tm = g.tensor_map
    ws = [np.asarray(tm[w].value) for w in ("w1", "w2", "w3")]
    xv = rng.standard_normal((1, 16, 40, 40)).astype(np.float32)
    ref = _ref(xv, *ws)
    cfg = _small_sbuf(kib)
    res = {}
    for planner in ("per-op", "poly"):
        cp = compile_graph(g, cfg, planner=planner, dtype=dtype)
        outs, rep = cp.run({x: xv})
        res[planner] = (outs[g.outputs[0]], rep, cp.plan)
    out, rep, plan = res["poly"]
    assert np.linalg.norm(out - ref) <= tol * np.linalg.norm(ref)
    assert plan.get("row_segments"), plan.notes
    bands = [t for t in plan.tensors if t.band_rows]
    assert bands and all(t.band_rows < tm[t.name].shape[2] for t in bands)
    steps = [gp for gp in plan.groups if gp.param("rows")]
    assert len(steps) > len({gp.name for gp in steps})  # kernels run more than once
    halo = [gp for gp in steps if gp.param("origin", -1) >= 0 and gp.param("origin") < gp.param("rows")[0]]
    assert halo  # some band keeps rows of the band before instead of recomputing them
    pa = res["per-op"][1]
    assert rep.hbm_read_bytes + rep.hbm_write_bytes < pa.hbm_read_bytes + pa.hbm_write_bytes


def test_plan_explains_row_bands():
    """`tvm-poly plan` prints each band step's rows, its band buffer and the segments."""
    from tvm_poly.plan_cli import format_plan
    from tvm_poly.planners.poly import plan_poly

    g, _, _ = _chain(H=40)
    plan = plan_poly(g, _small_sbuf(24), "float32")
    text = format_plan(g, plan, 4)
    assert "tiles: rows 0.." in text and "band buffer from row" in text
    assert "spatial tiling: kernels" in text and "(band of" in text
    lo, hi, B = plan.get("row_segments")[0]
    assert text.count(f"{plan.groups[0].tag}") >= B  # the segment's first kernel runs once per band


def test_band_schedule_computes_every_row_once():
    """Halo reuse: over all bands each kernel computes each of its output rows exactly once, and
    every step's input window lies inside the rows its producer has computed and kept."""
    from tvm_poly.planners.per_op import plan_per_op
    from tvm_poly.planners.poly import _model_of, model_names
    from tvm_poly.row_bands import band_schedule, row_maps

    g, _, _ = _chain(H=40)
    tm = g.tensor_map
    groups = plan_per_op(g, load_config("inf1"), "float32").groups
    pm = _model_of(g, [])
    maps = row_maps(pm, g, groups, *model_names(g, pm))
    hi = max(j for j, _ in maps) + 1
    heights = {groups[j].output: tm[groups[j].output].shape[2] for j in range(hi)}
    internal = {groups[j].output for j in range(hi - 1)}
    H = heights[groups[hi - 1].output]
    sch = band_schedule(0, hi, [(0, 3), (3, 7), (7, H)], groups, maps, heights, internal)
    done = {j: [] for j in range(hi)}
    state = {}
    for st in sch.steps:
        for t, a, b in st.inputs:
            if t in state:
                org, top = state[t]
                assert org <= a and b <= top, (st, state[t])
        done[st.group] += list(range(*st.rows))
        t = groups[st.group].output
        state[t] = (st.origin if st.origin >= 0 else 0, st.rows[1])
    for j in range(hi):
        assert sorted(done[j]) == sorted(set(done[j])), j  # no row twice
    assert done[hi - 1] == list(range(H))
    caps = dict(sch.cap_rows)
    assert all(caps[t] < heights[t] for t in internal)


def test_conv_weights_stay_on_chip_across_bands():
    """A banded conv whose weights get a planner slot loads them at its first band only; the
    later bands find them in SBUF (codegen note ``weights=kept``) and the result is unchanged."""
    g, (x, *_), rng = _chain(H=40, C=256)
    tm = g.tensor_map
    xv = rng.standard_normal((1, 16, 40, 40)).astype(np.float32)
    ref = _ref(xv, *[np.asarray(tm[w].value) for w in ("w1", "w2", "w3")])
    cp = compile_graph(g, _small_sbuf(40), planner="poly", dtype="float32")
    kept = cp.plan.get("band_weights_kept")
    assert kept, cp.plan.notes
    name = kept[0].split("/")[0]
    steps = [gp for gp in cp.plan.groups if gp.name == name]
    assert len(steps) > 1 and all(gp.param("weight_slot") for gp in steps)
    assert [gp.param("weight_slot")[3] for gp in steps] == [False] * (len(steps) - 1) + [True]
    out, _ = cp.run({x: xv})
    assert np.linalg.norm(out[g.outputs[0]] - ref) <= 1e-5 * np.linalg.norm(ref)
    # one HBM copy of the laid-out weights: later bands create no constant and load nothing
    assert sum(1 for k in cp.constants if k.startswith(f"{name}/w")) == 1


def test_row_bands_inside_batch_tiling():
    """With 4 images the planner tiles the batch and, inside each sub-batch, the rows: every step
    of the row segment carries both its images and its rows, band buffers hold a sub-batch, and
    the result matches the reference image by image."""
    g, (x, *_), rng = _chain(H=40, C=32, N=4)
    tm = g.tensor_map
    ws = [np.asarray(tm[w].value) for w in ("w1", "w2", "w3")]
    xv = rng.standard_normal((4, 16, 40, 40)).astype(np.float32)
    ref = _ref(xv, *ws)
    cp = compile_graph(g, _small_sbuf(24), planner="poly", dtype="float32")
    plan = cp.plan
    (blo, bhi, k), = plan.get("batch_segments")
    (rlo, rhi, B), = plan.get("row_segments")
    assert k < 4 and blo <= rlo < rhi <= bhi
    both = [gp for gp in plan.groups if gp.param("rows") and gp.param("images")]
    assert len(both) >= (4 // k) * B  # every band of every sub-batch
    assert {gp.param("images")[0] for gp in both} == set(range(0, 4, k))
    assert all(t.images == k for t in plan.tensors if t.band_rows)
    out, _ = cp.run({x: xv})
    assert np.linalg.norm(out[g.outputs[0]] - ref) <= 1e-5 * np.linalg.norm(ref)


def _corrupt_step(plan, pick, **params):
    """A copy of ``plan`` whose first band step for which ``pick(step)`` holds has ``params``."""
    import dataclasses as dc
    from tvm_poly.plan import GroupPlan
    groups = list(plan.groups)
    i = next(k for k, gp in enumerate(groups) if gp.param("rows") and pick(gp))
    gp = groups[i]
    groups[i] = GroupPlan(gp.name, gp.kind, gp.ops, gp.inputs, gp.output,
                          tuple(sorted({**dict(gp.params), **params}.items())))
    return dc.replace(plan, groups=tuple(groups))


def test_inconsistent_band_steps_are_refused_with_a_clear_error():
    """A plan whose band step disagrees with the operator (a conv window that is not the clipped
    closed form) or with its band buffer (rows already dropped) is refused by the codegen with a
    message naming the kernel and the rows, never compiled into wrong numbers."""
    from target.codegen.emitter import CodegenError
    from tvm_poly.planners.poly import plan_poly

    g, _, _ = _chain(H=40)
    cfg = _small_sbuf(24)
    plan = plan_poly(g, cfg, "float32")
    step = next(gp for gp in plan.groups if gp.kind == "conv2d" and gp.param("rows") and gp.param("rows")[0] > 0)
    conv = _corrupt_step(plan, lambda gp: gp is step,
                         in_rows=tuple((t, a + 1, b) for t, a, b in step.param("in_rows")))
    with pytest.raises(CodegenError, match="the plan's window is"):
        compile_graph(g, cfg, planner="poly", dtype="float32", plan=conv)
    band = {t.name for t in plan.tensors if t.band_rows}
    late = next(gp for gp in plan.groups if gp.param("rows") and gp.param("rows")[0] > 0
                and any(t in band for t, _, _ in gp.param("in_rows")))
    bad = tuple((t, 0, b) if t in band else (t, a, b) for t, a, b in late.param("in_rows"))
    stale = _corrupt_step(plan, lambda gp: gp is late, in_rows=bad)
    with pytest.raises(CodegenError, match="not in its band buffer"):
        compile_graph(g, cfg, planner="poly", dtype="float32", plan=stale)


@pytest.mark.parametrize("C,kib", [(64, 32), (192, 40)])
def test_lrn_runs_in_row_bands_in_place(C, kib):
    """conv -> LRN -> conv whose intermediates only fit as band buffers: the LRN (a channel
    window, rows map to themselves) joins the row segment and reads / writes the band buffers in
    place (C = 192: the blocked layout, 96 partitions x 2 planes, band matrix per plane pair)."""
    from target import isa
    from tests.codegen_util import GraphBuilder, rel_err
    from tests.test_codegen_conv import conv_ref
    from tests.test_codegen_lrn import lrn_chain, lrn_ref

    rng = np.random.default_rng(3)
    H = 40
    b = GraphBuilder()
    x = b.input("x", (1, 16, H, H))
    w1 = rng.standard_normal((C, 16, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((24, C, 3, 3)).astype(np.float32) * (0.5 / np.sqrt(C))
    s = (1, C, H, H)
    h = b.op("relu", [b.op("conv2d", [x, b.const("w1", w1)], s, padding=(1, 1, 1, 1), strides=(1, 1))], s)
    n = lrn_chain(b, h, s, 5, 1e-3, 0.75, 1.0)
    o = b.op("conv2d", [n, b.const("w2", w2)], (1, 24, H, H), padding=(1, 1, 1, 1), strides=(1, 1))
    g = b.build([o])
    cp = compile_graph(g, _small_sbuf(kib), planner="poly", dtype="float32")
    xv = rng.standard_normal((1, 16, H, H)).astype(np.float32)
    outs, rep = cp.run({x: xv})
    ref = conv_ref(lrn_ref(np.maximum(conv_ref(xv, w1, (1, 1), (1,) * 4), 0), 5, 1e-3, 0.75, 1.0), w2, (1, 1), (1,) * 4)
    assert rel_err(outs[o], ref) <= 1e-5
    lrns = [gp for gp in cp.plan.groups if gp.kind == "lrn"]
    assert len(lrns) > 1 and all(gp.param("rows") for gp in lrns)  # one step per band
    assert {cp.plan.placement(t).placement for t in (lrns[0].inputs[0], lrns[0].output)} == {"sbuf"}
    lrn_dmas = [i for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy) and
                i.tag in {gp.tag for gp in lrns}]
    assert all(i.src.mem == isa.Mem.HBM for i in lrn_dmas)  # the band matrix only: no copies
    assert sum(i.src.nbytes for i in lrn_dmas) == C * C * 4  # once: it stays in its slot across bands


def _two_readers(H=24, C=32, seed=0):
    """x -> conv3x3 (t); conv3x3(t) (u); conv1x1(t) + u: t has two readers (the ResNet block's
    input: its first conv and the shortcut)."""
    from tests.codegen_util import GraphBuilder
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", (1, 16, H, H))
    w1 = b.const("w1", rng.standard_normal((C, 16, 3, 3)).astype(np.float32) * 0.2)
    w2 = b.const("w2", rng.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.05)
    w3 = b.const("w3", rng.standard_normal((C, C, 1, 1)).astype(np.float32) * 0.1)
    s = (1, C, H, H)
    t = b.op("conv2d", [x, w1], s, padding=(1, 1, 1, 1), strides=(1, 1))
    u = b.op("conv2d", [t, w2], s, padding=(1, 1, 1, 1), strides=(1, 1))
    return b.build([b.op("add", [b.op("conv2d", [t, w3], s, padding=(0, 0, 0, 0), strides=(1, 1)), u], s)])


def test_staged_input_rows_load_once_for_all_readers():
    """An input from outside a row segment that two of its kernels read (``staged``): each band
    loads only rows not loaded before, into a stage buffer smaller than the tensor, and every
    reader's window lies inside the buffer's rows when it runs (halo rows stay)."""
    from tvm_poly.planners.per_op import plan_per_op
    from tvm_poly.planners.poly import _model_of, model_names
    from tvm_poly.row_bands import band_schedule, row_maps

    g = _two_readers()
    tm = g.tensor_map
    groups = plan_per_op(g, load_config("inf1"), "float32").groups
    t = groups[0].output
    assert [sum(t in gp.inputs for gp in groups[1:])] == [2]
    pm = _model_of(g, [])
    maps = row_maps(pm, g, groups, *model_names(g, pm))
    heights = {gp.output: tm[gp.output].shape[2] for gp in groups}
    H = heights[t]
    sch = band_schedule(1, 3, [(0, 5), (5, 11), (11, 18), (18, H)], groups, maps, heights, {groups[1].output},
                        staged=frozenset({t}))
    loaded, org, top = [], 0, 0
    for st in sch.steps:
        for nm, r0, r1, o in st.loads:
            assert nm == t and r0 == max(top, o) and o >= org
            loaded += list(range(r0, r1))
            org, top = o, r1
        for nm, a, b in st.inputs:
            if nm == t:
                assert org <= a and b <= top, (st, org, top)
    assert loaded == list(range(H))  # every row once
    assert dict(sch.reads) == {(t, 1): H}
    assert 0 < dict(sch.stage_rows)[t] < H


@pytest.mark.slow
def test_resnet50_inf1_stages_the_block_input_its_two_convs_share():
    """ResNet-50 b1 fp32 on inf1 with 56 KiB partitions: layer 1's output spills and layer 2's
    first block reads it twice (conv1 and the shortcut's lattice copy); the band segment loads it
    once into a stage buffer.  The numbers still match onnxruntime.  (On the 64 KiB of inf1 it
    stays resident since the pools' and concats' scratch estimates follow their codegen.)"""
    pytest.importorskip("onnxruntime")
    from tests.codegen_util import resnet50_logits_case
    from tvm_poly.models import rel_err

    g, inputs, ref = resnet50_logits_case()
    cfg = dataclasses.replace(load_config("inf1"), sbuf_bytes_per_partition=56 * 1024)
    cp = compile_graph(g, cfg, planner="poly", dtype="float32")
    staged = {s[0] for gp in cp.plan.groups for s in gp.param("stage", ())}
    assert staged
    (nm,) = staged
    assert cp.plan.placement(nm).placement == "hbm"
    outs, rep = cp.run(inputs, check=True)
    assert rel_err(outs[g.outputs[0]], ref) <= 1e-5
    from target import isa
    (h,) = [h for h in cp.program.hbm if h.name == nm]
    read = sum(i.src.nbytes for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy)
               and i.src.mem == isa.Mem.HBM and h.offset <= i.src.offset < h.offset + h.nbytes)
    assert read == h.nbytes  # every byte once, though two kernels read it


def _side_exit(H=24, C=32, seed=0):
    """x -> conv3x3 (t) -> conv1x1 (u) -> conv3x3/2 (v), and t's lattice subsample s = pool 1x1/2
    (t) read only after them: s is a side exit of the segment t..v (not an input of v), like
    ResNet-50's subsample beside the next block's first conv."""
    from tests.codegen_util import GraphBuilder
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", (1, 16, H, H))
    w1 = b.const("w1", rng.standard_normal((C, 16, 3, 3)).astype(np.float32) * 0.2)
    w2 = b.const("w2", rng.standard_normal((C, C, 1, 1)).astype(np.float32) * 0.1)
    w3 = b.const("w3", rng.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.05)
    w4 = b.const("w4", rng.standard_normal((C, C, 1, 1)).astype(np.float32) * 0.1)
    t = b.op("conv2d", [x, w1], (1, C, H, H), padding=(1, 1, 1, 1), strides=(1, 1))
    s = b.op("max_pool2d", [t], (1, C, H // 2, H // 2), pool_size=(1, 1), strides=(2, 2), padding=(0, 0, 0, 0))
    u = b.op("conv2d", [t, w2], (1, C, H, H), padding=(0, 0, 0, 0), strides=(1, 1))
    v = b.op("conv2d", [u, w3], (1, C, H // 2, H // 2), padding=(1, 1, 1, 1), strides=(2, 2))
    sc = b.op("conv2d", [s, w4], (1, C, H // 2, H // 2), padding=(0, 0, 0, 0), strides=(1, 1))
    return b.build([b.op("add", [v, sc], (1, C, H // 2, H // 2))])


def test_side_exit_of_a_band_segment_runs_band_by_band():
    """A kernel of a row segment that the segment's last kernel does not depend on (a side exit)
    computes, in each band, the rows its inputs' rows so far allow: it runs in several steps, every
    row once, each step's window inside the rows its producer keeps, and the producer's band
    buffer stays smaller than its tensor (before, the exit ran at the last band only and needed
    the whole tensor: no schedule)."""
    from tvm_poly.planners.per_op import plan_per_op
    from tvm_poly.planners.poly import _model_of, model_names
    from tvm_poly.row_bands import band_schedule, row_maps

    g = _side_exit()
    tm = g.tensor_map
    groups = plan_per_op(g, load_config("inf1"), "float32").groups
    kinds = [gp.kind for gp in groups]
    assert kinds[:3] == ["conv2d", "pool", "conv2d"], kinds  # t, s (the exit), u
    pm = _model_of(g, [])
    maps = row_maps(pm, g, groups, *model_names(g, pm))
    heights = {gp.output: tm[gp.output].shape[2] for gp in groups}
    t = groups[0].output
    H = heights[groups[2].output]
    sch = band_schedule(0, 3, [(0, 6), (6, 12), (12, 18), (18, H)], groups, maps, heights, {t})
    assert sch is not None
    exit_steps = [st for st in sch.steps if st.group == 1]
    assert len(exit_steps) > 1
    rows = [r for st in exit_steps for r in range(*st.rows)]
    assert rows == list(range(heights[groups[1].output]))
    kept = None
    for st in sch.steps:
        if st.group == 0:
            kept = (st.origin, st.rows[1])
        elif st.group == 1:
            ((nm, a, b),) = st.inputs
            assert nm == t and kept[0] <= a and b <= kept[1], (st, kept)
    assert dict(sch.cap_rows)[t] < heights[t]


@pytest.mark.slow
def test_resnet50_inf1_fp32_keeps_the_short_segment_plan_by_the_search_rule():
    """ResNet-50 b1 fp32 on inf1: the plan with short row segments (a second spatial-tiling pass:
    segments that end before a spilled tensor's last reader) runs layer 1 and the next block's
    entry in one segment with the lattice subsample as a side exit; the driver lowers it beside
    the plan without them and keeps it (fewer HBM bytes and an earlier end: driver._better).
    The numbers still match onnxruntime."""
    pytest.importorskip("onnxruntime")
    from tests.codegen_util import resnet50_logits_case
    from tvm_poly.models import rel_err
    from tvm_poly.planners.poly import plan_poly

    g, inputs, ref = resnet50_logits_case()
    cfg = load_config("inf1")
    cp = compile_graph(g, cfg, planner="poly", dtype="float32")
    classic = plan_poly(g, cfg, "float32")
    assert cp.plan.groups != classic.groups  # the short-segment plan won
    assert [(a[0], a[3]) for a in cp.alternatives] == [("first plan", False), ("short row segments", True)]
    # one planning gives both plans (the driver's way): each the plan of its separate call
    first, short = plan_poly(g, cfg, "float32", short_segments="both")
    alone = plan_poly(g, cfg, "float32", short_segments=True)
    assert first.groups == classic.groups and first.tensors == classic.tensors
    assert short.groups == alone.groups == cp.plan.groups and short.tensors == alone.tensors
    assert cp.plan.get("planned_cost_bytes") < classic.get("planned_cost_bytes")
    ks = cp.plan._kernels
    j = next(i for i, k in enumerate(ks) if k.split(":")[0].endswith("_sub2"))
    assert any(lo <= j < hi - 1 for lo, hi, _ in cp.plan.get("row_segments"))  # a side exit
    outs, rep = cp.run(inputs, check=True)
    assert rel_err(outs[g.outputs[0]], ref) <= 1e-5
    base = compile_graph(g, cfg, planner="poly", dtype="float32", plan=classic)
    _, rep0 = base.run(inputs, check=False)
    assert rep.hbm_read_bytes + rep.hbm_write_bytes < 0.97 * (rep0.hbm_read_bytes + rep0.hbm_write_bytes)
