"""The tuned planner: MetaSchedule tunes one small convolution end to end on the simulator.

One module-scoped tuning run (MetaSchedule start-up is a few seconds once the tensor-intrinsic import is skipped, see tvm_poly.tuning; the trials
themselves well under a second each)."""
import time

import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err


def _conv_graph():
    rng = np.random.default_rng(0)
    gb = GraphBuilder()
    x = gb.input("x", (1, 32, 20, 20))
    w = gb.const("w", rng.standard_normal((64, 32, 3, 3)) * 0.05)
    b = gb.const("b", rng.normal(0, 0.05, (1, 64, 1, 1)))
    y = gb.op("conv2d", [x, w], (1, 64, 20, 20), strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    z = gb.op("add", [y, b], (1, 64, 20, 20))
    r = gb.op("relu", [z], (1, 64, 20, 20))
    return gb.build(r), x, w, b, r


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    pytest.importorskip("xgboost")
    from target.config import load_config
    from tvm_poly import tuning
    from tvm_poly.planners.per_op import plan_per_op

    g, *_ = _conv_graph()
    cfg = load_config("inf2")
    # pay MetaSchedule's one-time start-up (~20-50 s: TuneContext, intrinsics) on a 1-trial matmul
    gb = GraphBuilder()
    a = gb.input("a", (4, 64))
    wm = gb.const("wm", np.ones((64, 32)))
    gm = gb.build(gb.op("matmul", [a, wm], (4, 32)))
    tuning.tune_plan(gm, plan_per_op(gm, cfg, "float32"), cfg, "float32",
                     tuning.TuneOptions(trials=1, work_dir=str(tmp_path_factory.mktemp("warm_db"))))
    db = str(tmp_path_factory.mktemp("tune_db"))
    opts = tuning.TuneOptions(trials=6, strategy="replay-trace", work_dir=db)
    t0 = time.perf_counter()
    res = tuning.tune_plan(g, plan_per_op(g, cfg, "float32"), cfg, "float32", opts)
    return {"graph": g, "cfg": cfg, "db": db, "opts": opts, "res": res, "seconds": time.perf_counter() - t0}


def test_tunes_one_conv_within_a_minute(tuned):
    res = tuned["res"]
    (wl,) = res["workloads"].values()
    assert wl["records"] >= 6
    assert wl["tuned_cycles"] <= wl["default_cycles"]
    assert tuned["seconds"] < 60


def test_database_is_saved_and_reused(tuned):
    import os

    from tvm_poly import tuning
    from tvm_poly.planners.per_op import plan_per_op

    db = tuned["db"]
    assert os.path.getsize(os.path.join(db, "database_tuning_record.json")) > 0
    g, cfg = tuned["graph"], tuned["cfg"]
    t0 = time.perf_counter()
    again = tuning.tune_plan(g, plan_per_op(g, cfg, "float32"), cfg, "float32", tuned["opts"])
    assert time.perf_counter() - t0 < 10  # no new trials: the records are reused
    (wl,) = again["workloads"].values()
    assert wl["records"] == list(tuned["res"]["workloads"].values())[0]["records"]
    assert again["knobs"] == tuned["res"]["knobs"]


def test_space_decisions_are_codegen_knobs(tuned):
    """Each decision MetaSchedule sampled reaches the codegen: different knobs, different programs."""
    from tvm_poly import tuning

    g, cfg = tuned["graph"], tuned["cfg"]
    from tvm_poly.planners.per_op import plan_per_op

    (w,) = tuning.workloads(g, plan_per_op(g, cfg, "float32"), "float32", cfg).values()
    mod = tuning.workload_primfunc(w)
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    tuning.make_space(w)(sch)
    knobs = tuning.knobs_from_mod(sch.mod, w)
    assert set(knobs) == {"pix", "dma_piece", "psum_bufs"}
    assert knobs["pix"] % 20 == 0 and knobs["pix"] <= 512  # whole output rows per PSUM block
    a = tuning.measure(w, {"pix": 40, "dma_piece": 32768, "psum_bufs": 2}, cfg, "float32")
    b = tuning.measure(w, {"pix": 400, "dma_piece": 196608, "psum_bufs": 4}, cfg, "float32")
    assert a["cycles"] != b["cycles"]


def test_tuned_planner_end_to_end(tuned, monkeypatch):
    from tvm_poly.driver import compile_graph
    from tvm_poly.planners import get_planner, tuned as tuned_mod

    g, x, w, b, r = _conv_graph()
    monkeypatch.setitem(tuned_mod.OPTIONS, "db", tuned["db"])
    monkeypatch.setitem(tuned_mod.OPTIONS, "trials", 6)
    assert get_planner("tuned") is tuned_mod.plan_tuned
    cp = compile_graph(g, "inf2", planner="tuned")
    assert cp.plan.planner == "tuned"
    knobs = tuned["res"]["knobs"]["lv0"]
    assert (dict(cp.plan.groups[0].param("knobs") or ()) == knobs)
    xv = np.random.default_rng(3).standard_normal((1, 32, 20, 20)).astype(np.float32)
    outs, rep = cp.run({"x": xv}, check=True)
    _, rep_p = compile_graph(g, "inf2", planner="per-op").run({"x": xv}, check=False)
    assert rep.cycles <= rep_p.cycles
    tm = g.tensor_map
    wv = np.asarray(tm[w].value, np.float64)
    xp = np.pad(xv.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, 64, 20, 20))
    for i in range(3):
        for j in range(3):
            ref += np.einsum("kc,nchw->nkhw", wv[:, :, i, j], xp[:, :, i:i + 20, j:j + 20])
    ref = np.maximum(ref + np.asarray(tm[b].value), 0)
    assert rel_err(outs[r], ref) <= TOL["float32"]


def test_whole_program_guard_never_slower_than_per_op(tuned, monkeypatch):
    """If the program with tuned kernels simulates slower than per-op, the knobs are dropped."""
    from tvm_poly.planners import tuned as tuned_mod

    g, *_ = _conv_graph()
    monkeypatch.setitem(tuned_mod.OPTIONS, "db", tuned["db"])
    monkeypatch.setitem(tuned_mod.OPTIONS, "trials", 6)
    calls = []

    def fake_cycles(graph, config, dtype, plan):
        has = any(gp.param("knobs") for gp in plan.groups)
        calls.append(has)
        return 200 if has else 100  # tuned looks slower in the whole program

    monkeypatch.setattr(tuned_mod, "_program_cycles", fake_cycles)
    plan = tuned_mod.plan_tuned(g, None, "float32")
    assert not any(gp.param("knobs") for gp in plan.groups)
    assert tuned_mod.LAST["whole_program"]["kept"] == "none"
    assert calls[:2] == [False, True]
