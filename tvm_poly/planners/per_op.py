"""The per-operator planner: one kernel per operator (after the standard epilogue fusion
TVM's FuseOps also does: conv2d/matmul + batch_norm/bias + relu, conv2d + batch_norm + residual
add + relu, add + relu); every kernel loads its inputs from HBM and stores its output to HBM.
reshape/flatten/identity are aliases (no kernel, no copy).  Kernels run in graph order, except
that a kernel waits for the producers of its inputs (a fused residual add may read a shortcut
that graph order computes after the conv)."""
from __future__ import annotations

import dataclasses
import heapq

from tvm_poly.graph import OpGraph
from tvm_poly.plan import GroupPlan, Plan, TensorPlacement
from tvm_poly.planners.patterns import match_lrn

ALIAS_OPS = {"reshape", "identity", "dropout", "expand_dims", "squeeze"}
ELEMENTWISE = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp", "sqrt": "sqrt"}
BINARY = {"add": "add", "subtract": "subtract", "multiply": "multiply", "divide": "divide",
          "maximum": "max", "minimum": "min", "add_n": "add"}


def _channel_vector(graph, tname, cout, ndim):
    """True if tensor is a constant broadcastable as a per-channel vector for NCHW output."""
    t = graph.tensor_map[tname]
    if not t.is_constant:
        return False
    s = tuple(t.shape)
    if len(s) == 1:
        return s[0] == cout and ndim == 2  # row vector for matmul output [.., N]
    full = (1,) * (ndim - len(s)) + s
    return ndim == 4 and full[0] == 1 and full[1] == cout and full[2] == 1 and full[3] == 1


def plan_per_op(graph: OpGraph, config=None, dtype: str = "float32") -> Plan:
    nodes = list(graph.nodes)
    consumers = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    outputs = set(graph.outputs)

    def sole(tensor):
        c = consumers.get(tensor, [])
        return c[0] if len(c) == 1 and tensor not in outputs else None

    done = set()
    groups, placements = [], []
    tm = graph.tensor_map
    for n in nodes:
        if n.name in done:
            continue
        done.add(n.name)
        if n.op in ALIAS_OPS:
            placements.append(TensorPlacement(n.output, "alias", alias_of=n.inputs[0]))
            continue
        lrn = match_lrn(graph, n, consumers, outputs)
        if lrn is not None:  # the LRN chain from_onnx emits -> one kernel
            ops, ins, out, params = lrn
            done.update(ops)
            groups.append(GroupPlan(n.name, "lrn", ops, ins, out, tuple(sorted(params.items()))))
            continue
        ops, params, out = [n.name], {}, n.output
        inputs = list(n.inputs)
        kind = n.op
        if n.op in ("conv2d", "matmul"):
            cout = tm[n.output].shape[1] if n.op == "conv2d" else tm[n.output].shape[-1]
            ndim = len(tm[n.output].shape)
            nxt = sole(out)
            if nxt is not None and nxt.op == "batch_norm" and n.op == "conv2d" and \
                    all(tm[i].is_constant for i in nxt.inputs[1:]):
                ops.append(nxt.name); done.add(nxt.name)
                params["bn"] = tuple(nxt.inputs[1:])
                params["bn_eps"] = nxt.attr("epsilon", 1e-5)
                out = nxt.output
                nxt = sole(out)
            if nxt is not None and nxt.op == "add" and "bn" not in params:
                other = [i for i in nxt.inputs if i != out]
                if len(other) == 1 and _channel_vector(graph, other[0], cout, ndim):
                    ops.append(nxt.name); done.add(nxt.name)
                    params["bias"] = other[0]
                    out = nxt.output
                    nxt = sole(out)
            if nxt is not None and nxt.op in ("add", "add_n") and n.op == "conv2d" and len(nxt.inputs) == 2 \
                    and nxt.name not in done:
                # residual add (ResNet shortcut): accumulated into the conv's PSUM by the codegen
                other = [i for i in nxt.inputs if i != out]
                if len(other) == 1 and not tm[other[0]].is_constant and \
                        tuple(tm[other[0]].shape) == tuple(tm[out].shape) == tuple(tm[nxt.output].shape):
                    ops.append(nxt.name); done.add(nxt.name)
                    params["residual"] = other[0]
                    inputs.append(other[0])
                    out = nxt.output
                    nxt = sole(out)
            if nxt is not None and nxt.op == "relu":
                ops.append(nxt.name); done.add(nxt.name)
                params["act"] = "relu"
                out = nxt.output
        elif n.op in BINARY or n.op in ELEMENTWISE or n.op == "batch_norm":
            kind = "batch_norm" if n.op == "batch_norm" else "elementwise"
            if n.op in BINARY:
                params["op"] = BINARY[n.op]
            elif n.op in ELEMENTWISE:
                params["op"] = ELEMENTWISE[n.op]
            else:
                params["bn_eps"] = n.attr("epsilon", 1e-5)
            nxt = sole(out)
            if nxt is not None and nxt.op == "relu" and n.op not in ELEMENTWISE:
                ops.append(nxt.name); done.add(nxt.name)
                params["act"] = "relu"
                out = nxt.output
        elif n.op in ("max_pool2d", "avg_pool2d"):
            kind = "pool"
            for k, v in n.attrs:
                params[k] = v
            params["mode"] = "max" if n.op == "max_pool2d" else "avg"
        else:
            for k, v in n.attrs:
                params[k] = v
        groups.append(GroupPlan(n.name, kind, tuple(ops), tuple(inputs), out, tuple(sorted(params.items()))))
    aliased = {p.name for p in placements}
    for t in graph.tensors:
        if t.name not in aliased and not t.is_constant:
            placements.append(TensorPlacement(t.name, "hbm"))
    plan = Plan("per-op", dtype, tuple(placements), tuple(groups))
    return dataclasses.replace(plan, groups=_topological(plan))


def _topological(plan):
    """The plan's groups in graph order, except that a group waits for the producers of all its
    inputs (a fused residual add reads a shortcut that graph order may compute after the conv)."""
    groups, root = plan.groups, plan.alias_root()
    made = {root(g.output): i for i, g in enumerate(groups)}
    deps = [{made[root(x)] for x in g.inputs if root(x) in made and made[root(x)] != i}
            for i, g in enumerate(groups)]
    indeg = [len(d) for d in deps]
    users = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    ready = [i for i, n in enumerate(indeg) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(groups[i])
        for u in users.get(i, ()):
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(groups):
        raise ValueError("kernel groups form a cycle")
    return tuple(order)
