"""The ``tuned`` planner: per-operator kernels (as ``per-op``) whose conv2d/matmul schedules come
from MetaSchedule measuring candidates on the simulator (:mod:`tvm_poly.tuning`).

Options (module-level :data:`OPTIONS`, or the environment): trials per workload
(``TVM_POLY_TUNE_TRIALS``, default 8), strategy (``TVM_POLY_TUNE_STRATEGY``: ``replay-trace`` or
``evolutionary``), database directory (``TVM_POLY_TUNE_DB``, default ``~/.cache/tvm-poly/tuning_db``;
``tvm-poly bench`` uses ``<out>/tuning_db``).
The database is a MetaSchedule ``JSONDatabase``: a rerun reuses its records and tunes nothing
that already has ``trials`` records.  MetaSchedule is imported on first use (~20-40 s).
"""
from __future__ import annotations

import os

from tvm_poly.graph import OpGraph
from tvm_poly.plan import GroupPlan, Plan
from tvm_poly.planners.per_op import plan_per_op

DEFAULT_DB = os.path.join(os.path.expanduser("~"), ".cache", "tvm-poly", "tuning_db")
OPTIONS: dict = {}
LAST: dict = {}  # the last tuning summary (workloads, default vs tuned cycles)


def options():
    from tvm_poly.tuning import TuneOptions

    return TuneOptions(trials=int(OPTIONS.get("trials", os.environ.get("TVM_POLY_TUNE_TRIALS", 8))),
                       strategy=str(OPTIONS.get("strategy", os.environ.get("TVM_POLY_TUNE_STRATEGY", "replay-trace"))),
                       work_dir=str(OPTIONS.get("db", os.environ.get("TVM_POLY_TUNE_DB", DEFAULT_DB))),
                       seed=int(OPTIONS.get("seed", 0)))


def plan_tuned(graph: OpGraph, config=None, dtype: str = "float32") -> Plan:
    from tvm_poly import tuning

    if config is None or not hasattr(config, "sbuf_partitions"):
        from target.config import load_config
        config = load_config(config or "inf2")
    base = plan_per_op(graph, config, dtype)
    res = tuning.tune_plan(graph, base, config, dtype, options(), log=OPTIONS.get("log"))
    LAST.clear()
    LAST.update(res)
    tuning.install_lowerings()
    plan = _with_knobs(base, res["knobs"])
    if OPTIONS.get("whole_program_check", True) and any(res["knobs"].values()):
        plan = _whole_program_guard(graph, config, dtype, base, plan, res)
    return plan


def _with_knobs(base: Plan, knobs_by_group: dict) -> Plan:
    groups = []
    for g in base.groups:
        knobs = knobs_by_group.get(g.name)
        if knobs:
            ps = dict(g.params)
            ps["knobs"] = tuple(sorted(knobs.items()))
            g = GroupPlan(g.name, g.kind, g.ops, g.inputs, g.output, tuple(sorted(ps.items())))
        groups.append(g)
    return Plan("tuned", base.dtype, base.tensors, tuple(groups))


def _program_cycles(graph, config, dtype, plan) -> int:
    import numpy as np

    from tvm_poly.driver import compile_graph

    cp = compile_graph(graph, config, dtype=dtype, plan=plan)
    rng = np.random.default_rng(0)
    vals = {n: rng.standard_normal(graph.tensor(n).shape).astype(np.float32) for n in graph.inputs}
    for t in graph.tensors:
        if t.kind == "weight" and not t.is_constant:
            vals[t.name] = rng.standard_normal(t.shape).astype(np.float32)
    _, rep = cp.run(vals, check=False)
    return int(rep.cycles)


def _whole_program_guard(graph, config, dtype, base, plan, res):
    """Kernels are tuned alone; in the whole program, overlap across kernel boundaries can eat a
    small per-kernel gain.  Simulate the program with and without the knobs; if the tuned one is
    slower, keep only the knobs whose gain alone is large (2 %, then 5 %), else none."""
    try:
        c0 = _program_cycles(graph, config, dtype, base)
        c1 = _program_cycles(graph, config, dtype, plan)
    except Exception as e:  # noqa: BLE001 - the guard must not break planning
        LAST["whole_program"] = {"error": f"{type(e).__name__}: {e}"}
        return plan
    info = {"per_op_cycles": c0, "tuned_cycles": c1, "kept": "all"}
    if c1 > c0:
        gain = {}
        for w in res["workloads"].values():
            g = 1 - w["tuned_cycles"] / max(1, w["default_cycles"])
            for k in w["kernels"]:
                gain[k] = g
        chosen = None
        for thr in (0.02, 0.05):
            kn = {k: v for k, v in res["knobs"].items() if v and gain.get(k, 0) >= thr}
            if not kn:
                continue
            p2 = _with_knobs(base, kn)
            c2 = _program_cycles(graph, config, dtype, p2)
            if c2 <= c0:
                chosen, info = p2, {"per_op_cycles": c0, "tuned_cycles": c2, "kept": f"gain >= {thr:.0%}"}
                break
        if chosen is None:
            chosen, info = _with_knobs(base, {}), {"per_op_cycles": c0, "tuned_cycles": c0, "kept": "none"}
        plan = chosen
    LAST["whole_program"] = info
    return plan
