"""The ``tuned`` planner: per-operator kernels (as ``per-op``) whose conv2d/matmul schedules come
from MetaSchedule measuring candidates on the simulator (:mod:`tvm_poly.tuning`).

Options (module-level :data:`OPTIONS`, or the environment): trials per workload
(``TVM_POLY_TUNE_TRIALS``, default 8), strategy (``TVM_POLY_TUNE_STRATEGY``: ``replay-trace`` or
``evolutionary``), database directory (``TVM_POLY_TUNE_DB``, default ``results/tuning_db``).
The database is a MetaSchedule ``JSONDatabase``: a rerun reuses its records and tunes nothing
that already has ``trials`` records.  MetaSchedule is imported on first use (~20-40 s).
"""
from __future__ import annotations

import os

from tvm_poly.graph import OpGraph
from tvm_poly.plan import GroupPlan, Plan
from tvm_poly.planners.per_op import plan_per_op

OPTIONS: dict = {}
LAST: dict = {}  # the last tuning summary (workloads, default vs tuned cycles)


def options():
    from tvm_poly.tuning import TuneOptions

    return TuneOptions(trials=int(OPTIONS.get("trials", os.environ.get("TVM_POLY_TUNE_TRIALS", 8))),
                       strategy=str(OPTIONS.get("strategy", os.environ.get("TVM_POLY_TUNE_STRATEGY", "replay-trace"))),
                       work_dir=str(OPTIONS.get("db", os.environ.get("TVM_POLY_TUNE_DB",
                                                                   os.path.join("results", "tuning_db")))),
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
    groups = []
    for g in base.groups:
        knobs = res["knobs"].get(g.name)
        if knobs:
            ps = dict(g.params)
            ps["knobs"] = tuple(sorted(knobs.items()))
            g = GroupPlan(g.name, g.kind, g.ops, g.inputs, g.output, tuple(sorted(ps.items())))
        groups.append(g)
    tuning.install_lowerings()
    return Plan("tuned", dtype, base.tensors, tuple(groups))
