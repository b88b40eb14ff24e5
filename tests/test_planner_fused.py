"""The fused planner: TVM's FuseOps groups, intra-group intermediates on chip, numerics."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err


def _residual_block(C=64, H=14):
    rng = np.random.default_rng(0)
    gb = GraphBuilder()
    x = gb.input("x", (1, C, H, H))
    w1 = gb.const("w1", rng.standard_normal((C, C, 3, 3)) * 0.05)
    w2 = gb.const("w2", rng.standard_normal((C, C, 1, 1)) * 0.1)
    bn = [gb.const(f"bn{i}", v) for i, v in enumerate(
        (rng.uniform(0.5, 1.5, C), rng.normal(0, 0.1, C), rng.normal(0, 0.1, C), rng.uniform(0.5, 1.5, C)))]
    c1 = gb.op("conv2d", [x, w1], (1, C, H, H), strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    b1 = gb.op("batch_norm", [c1] + bn, (1, C, H, H), axis=1, epsilon=1e-5)
    r1 = gb.op("relu", [b1], (1, C, H, H))
    c2 = gb.op("conv2d", [r1, w2], (1, C, H, H), strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    a = gb.op("add", [c2, x], (1, C, H, H))
    r2 = gb.op("relu", [a], (1, C, H, H))
    p = gb.op("max_pool2d", [r2], (1, C, H // 2, H // 2), pool_size=(2, 2), strides=(2, 2), padding=(0, 0, 0, 0),
              dilation=(1, 1), ceil_mode=False, layout="NCHW")
    g = gb.build(p)
    return g, dict(x=x, w1=w1, w2=w2, bn=bn, c1=c1, b1=b1, r1=r1, c2=c2, a=a, r2=r2, p=p)



def _np_conv(x, w, pad):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((N, K, H, W), np.float64)
    for r in range(R):
        for s in range(S):
            out += np.einsum("kc,nchw->nkhw", w[:, :, r, s], xp[:, :, r:r + H, s:s + W])
    return out


def test_registered():
    from tvm_poly.planners import PLANNERS, get_planner
    from tvm_poly.planners.fused import plan_fused

    assert get_planner("fused") is plan_fused and "fused" in PLANNERS


def test_tvm_groups_follow_fuseops():
    from tvm_poly.planners.fused import tvm_fusion_groups

    g, n = _residual_block()
    groups, names = tvm_fusion_groups(g)
    by = {nm: tuple(grp) for grp in groups for nm in grp}
    # conv + bn + relu is one TVM group; conv + residual add + relu another; pooling alone
    assert by[n["c1"]] == (n["c1"], n["b1"], n["r1"])
    assert by[n["c2"]] == (n["c2"], n["a"], n["r2"])
    assert by[n["p"]] == (n["p"],)
    assert any(nm.startswith("fused_") for nm in names.values())


def test_plan_keeps_group_intermediates_on_chip_and_matches_numpy():
    from tvm_poly.driver import compile_graph
    from tvm_poly.planners.fused import fusion_report

    g, n = _residual_block()
    cp = compile_graph(g, "inf2", planner="fused")
    plan = cp.plan
    # the conv output that the group's residual add reads is never materialised: the kernel
    # accumulates the shortcut into the conv's PSUM (the kernels are per-op's) ...
    (k2,) = [k for k in plan.groups if n["c2"] in k.ops]
    assert n["a"] in k2.ops and n["r2"] in k2.ops
    assert n["c2"] not in {t.name for t in cp.program.hbm}
    # ... tensors crossing a TVM group boundary reach HBM
    assert plan.placement(n["r1"]).placement == "hbm"
    assert plan.placement(n["r2"]).placement == "hbm"
    rep_f = fusion_report(plan)
    assert rep_f["tvm_groups"] == 3
    x = np.random.default_rng(1).standard_normal((1, 64, 14, 14)).astype(np.float32)
    outs, rep = cp.run({"x": x}, check=True)
    tm = g.tensor_map
    gam, bet, mu, var = (np.asarray(tm[b].value, np.float64) for b in n["bn"])
    y = _np_conv(x.astype(np.float64), tm[n["w1"]].value, 1)
    y = (y - mu[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None] * gam[None, :, None, None] \
        + bet[None, :, None, None]
    y = np.maximum(y, 0)
    y = _np_conv(y, tm[n["w2"]].value, 0) + x
    y = np.maximum(y, 0)
    ref = y.reshape(1, 64, 7, 2, 7, 2).max(axis=(3, 5))
    assert rel_err(outs[n["p"]], ref) <= TOL["float32"]
    # TVM's groups are per-op's kernels here: the same HBM traffic, never more
    _, rep_p = compile_graph(g, "inf2", planner="per-op").run({"x": x}, check=False)
    assert rep.hbm_read_bytes + rep.hbm_write_bytes <= rep_p.hbm_read_bytes + rep_p.hbm_write_bytes


def test_unexpressible_nodes_are_fusion_barriers():
    """A node the Relax rebuild cannot express becomes a parameter: its neighbours still group."""
    from tvm_poly.planners import fused

    g, n = _residual_block()
    nodes = tuple(nd if nd.name != n["a"] else nd.__class__(nd.name, "mystery_op", nd.inputs, nd.output, nd.attrs,
                                                          nd.shapes, nd.dtypes) for nd in g.nodes)
    g2 = g.__class__(nodes, g.tensors, g.inputs, g.outputs)
    groups, _ = fused.tvm_fusion_groups(g2)
    by = {nm: tuple(grp) for grp in groups for nm in grp}
    assert by[n["a"]] == (n["a"],)
    assert by[n["c1"]] == (n["c1"], n["b1"], n["r1"])


@pytest.mark.parametrize("planner", ["fused", "tuned"])
def test_selectable_through_tvm_compile(planner, tmp_path, monkeypatch):
    """``tvm.compile(..., target="polyinf")`` with options(planner=...) runs the comparison planners."""
    import tvm
    from tvm import relax

    import tvm_poly
    from tests._onnx_tiny import tiny_cnn
    from tvm_poly import frontend, models, pipeline
    from tvm_poly.planners import tuned as tuned_mod

    monkeypatch.setitem(tuned_mod.OPTIONS, "db", str(tmp_path / "db"))
    monkeypatch.setitem(tuned_mod.OPTIONS, "trials", 2)
    model = tiny_cnn()
    x = models.random_inputs(model, seed=1)
    ref = models.reference_outputs(model, x)["y"]
    with tvm_poly.options(planner=planner):
        ex = tvm.compile(frontend.load_onnx(model), target="polyinf")
    info = pipeline.last_compile()
    assert info["planner"] == planner and info["host_ops"] == []
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x["x"])).numpy()
    assert models.rel_err(out, ref) <= 1e-3
