"""Planner registry: name -> function(graph, config, dtype) -> Plan."""
from __future__ import annotations

from .per_op import plan_per_op
from .poly import plan_poly
from .fused import plan_fused  # TVM FuseOps groups (tvm imported lazily)

from .tuned import plan_tuned  # MetaSchedule on the simulator (imported on first use)

PLANNERS = {"per-op": plan_per_op, "poly": plan_poly, "fused": plan_fused, "tuned": plan_tuned}


def get_planner(name: str):
    try:
        return PLANNERS[name]
    except KeyError:
        from tvm_poly.errors import PlannerError
        raise PlannerError(f"unknown planner {name!r}; available: {', '.join(sorted(PLANNERS))}") from None


def register_planner(name: str, fn, override: bool = False):
    if name in PLANNERS and not override:
        raise ValueError(f"planner {name!r} already registered")
    PLANNERS[name] = fn
