"""Lattice reads (tvm_poly/graph_subsample.py): a 1x1 stride-2 conv that reads only every other
row and column of its input gets a subsampled copy of it; decided on isl footprints, chosen by the
poly planner only when its plan moves fewer bytes."""
import dataclasses

import numpy as np
import pytest

from target.config import load_config
from tvm_poly.driver import compile_graph


def _block(H=32, C=64, seed=0):
    """x -> conv3x3+relu (h); h -> conv1x1 (a, reads all of h) -> conv3x3/2 (b) -> conv1x1 (c);
    h -> conv1x1/2 (s, the shortcut: reads h on the stride-2 lattice); out = relu(c + s)."""
    from tests.codegen_util import GraphBuilder
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input("x", (1, 16, H, H))
    w = {k: b.const(k, (rng.standard_normal(sh) / np.sqrt(np.prod(sh[1:]))).astype(np.float32))
         for k, sh in (("w0", (C, 16, 3, 3)), ("wa", (C // 2, C, 1, 1)), ("wb", (C // 2, C // 2, 3, 3)),
                       ("wc", (2 * C, C // 2, 1, 1)), ("ws", (2 * C, C, 1, 1)))}
    full, half = (1, C, H, H), (1, C // 2, H // 2, H // 2)
    h = b.op("relu", [b.op("conv2d", [x, w["w0"]], full, padding=(1, 1, 1, 1), strides=(1, 1))], full)
    a = b.op("relu", [b.op("conv2d", [h, w["wa"]], (1, C // 2, H, H), padding=(0,) * 4, strides=(1, 1))],
             (1, C // 2, H, H))
    bb = b.op("relu", [b.op("conv2d", [a, w["wb"]], half, padding=(1, 1, 1, 1), strides=(2, 2))], half)
    out_s = (1, 2 * C, H // 2, H // 2)
    c = b.op("conv2d", [bb, w["wc"]], out_s, padding=(0,) * 4, strides=(1, 1))
    s = b.op("conv2d", [h, w["ws"]], out_s, padding=(0,) * 4, strides=(2, 2))
    o = b.op("relu", [b.op("add", [c, s], out_s)], out_s)
    g = b.build([o])
    return g, x, {k: np.asarray(g.tensor_map[v].value) for k, v in w.items()}, rng


def _ref(xv, w):
    from tests.test_codegen_conv import conv_ref
    h = np.maximum(conv_ref(xv, w["w0"], (1, 1), (1,) * 4), 0)
    a = np.maximum(conv_ref(h, w["wa"], (1, 1), (0,) * 4), 0)
    b = np.maximum(conv_ref(a, w["wb"], (2, 2), (1,) * 4), 0)
    return np.maximum(conv_ref(b, w["wc"], (1, 1), (0,) * 4) + conv_ref(h, w["ws"], (2, 2), (0,) * 4), 0)


def test_lattice_readers_are_decided_by_isl():
    """The shortcut's needed elements of h (through TOPI's pad_temp copy) are exactly the
    stride-2 lattice; the 3x3/2 conv's (a candidate only if the attributes were ignored) are not."""
    from tvm_poly.graph_subsample import _reads_lattice, lattice_readers, subsample_lattice_reads
    from tvm_poly.planners.poly import _model_of, model_names

    g, _, _, _ = _block()
    cands = lattice_readers(g)
    assert {t: {s: [n.op for n in ns] for s, ns in v.items()} for t, v in cands.items()} == \
        {next(iter(cands)): {(2, 2): ["conv2d"]}}
    pm = _model_of(g, [])
    arrays, node_ops = model_names(g, pm)
    (t, by_s), = cands.items()
    assert _reads_lattice(pm, arrays, node_ops, t, by_s[(2, 2)], (2, 2))
    conv3 = [n for n in g.nodes if n.op == "conv2d" and n.attr("strides") == (2, 2) and
             g.tensor_map[n.inputs[1]].shape[2] == 3][0]
    assert not _reads_lattice(pm, arrays, node_ops, conv3.inputs[0], [conv3], (2, 2))
    g2 = subsample_lattice_reads(g, pm, arrays, node_ops)
    new = [n for n in g2.nodes if n.name not in {m.name for m in g.nodes}]
    assert [(n.op, n.attr("pool_size"), n.attr("strides"), n.inputs) for n in new] == \
        [("max_pool2d", (1, 1), (2, 2), (t,))]
    sc = [n for n in g2.nodes if new[0].output in n.inputs]
    assert len(sc) == 1 and sc[0].attr("strides") == (1, 1)
    assert tuple(g2.tensor_map[new[0].output].shape) == (1, 64, 16, 16)


def test_planner_takes_the_rewrite_only_when_it_moves_fewer_bytes():
    """On 8 KiB partitions h spills and the shortcut's reload of all of it dominates: the plan
    with the lattice copy moves fewer bytes (measured on the simulator) and computes the same
    result; on inf2 everything is resident and the graph stays as given."""
    from tvm_poly.planners.poly import plan_poly

    g, x, w, rng = _block()
    xv = rng.standard_normal((1, 16, 32, 32)).astype(np.float32)
    ref = _ref(xv, w)
    small = dataclasses.replace(load_config("inf1"), sbuf_bytes_per_partition=8 * 1024)
    got = {}
    for sub in (True, False):
        plan = plan_poly(g, small, "float32", subsample=sub)
        cp = compile_graph(g, small, planner="poly", dtype="float32", plan=plan, search=False)
        outs, rep = cp.run({x: xv})
        assert np.linalg.norm(outs[g.outputs[0]] - ref) <= 1e-5 * np.linalg.norm(ref)
        got[sub] = (plan, rep.hbm_read_bytes + rep.hbm_write_bytes)
    assert got[True][0].graph is not None and got[False][0].graph is None
    assert any("lattice reads" in n for n in got[True][0].notes)
    assert got[True][1] < got[False][1], got
    assert plan_poly(g, load_config("inf2"), "float32").graph is None


@pytest.mark.slow
def test_resnet50_plans_take_the_lattice_copies_and_the_stem_room_where_they_pay():
    """ResNet-50's three downsampling shortcuts read their block inputs on the stride-2 lattice:
    at b1 fp32 on inf1 (block inputs spill) the plan reads subsampled copies; at b1 bf16 on inf2
    (all resident) the graph stays as given.  At b8 bf16 on inf2 the plan keeps the room the stem
    needs to stage its image (else it im2cols it ~3x over from HBM): at the stem the resident bytes
    leave its stage within 70% of the free range."""
    from tvm_poly.bench import load_graph
    from tvm_poly.planners.poly import _stem_stage, plan_poly
    from target.codegen.const_block import block_bytes

    g, _, _ = load_graph("resnet50", 1)
    p = plan_poly(g, load_config("inf1"), "float32")
    assert p.graph is not None
    assert sorted(n.name for n in p.graph.nodes if n.name.endswith("_sub2")) == \
        sorted(t + "_sub2" for t in ("lv77", "lv170", "lv307"))
    assert plan_poly(g, load_config("inf2"), "bfloat16").graph is None

    g8, _, _ = load_graph("resnet50", 8)
    cfg = load_config("inf2")
    p8 = plan_poly(g8, cfg, "bfloat16")
    pg = p8.graph or g8
    stem = next(gp for gp in p8.groups if gp.kind == "conv2d")
    stage, _ = _stem_stage(pg, stem, 2)
    size = cfg.sbuf_bytes_per_partition
    from tvm_poly.planners.per_op import plan_per_op
    pinned = block_bytes(plan_per_op(pg, cfg, "bfloat16").groups, pg.tensor_map)
    al = p8._allocation
    assert stage(224) <= 0.7 * (size - pinned - al.used_at(0))
