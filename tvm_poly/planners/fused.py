"""The ``fused`` planner: TVM's own operator fusion decides the kernels.

The OpGraph is rebuilt as a Relax function (weights become parameters, every node's
output var keeps the node's output name), and TVM's static-shape inference flow groups it:
``DecomposeOpsForInference -> CanonicalizeBindings -> DeadCodeElimination -> LegalizeOps -> AnnotateTIROpPattern ->
FuseOps -> FuseTIR`` (the prefix of ``relax.get_pipeline("static_shape_tuning")``).  To read
the groups back, every ``call_tir`` gets its own copy of its PrimFunc named after the binding
var before ``FuseOps``; a fused function's callees then name its member nodes.

Kernels are the per-op planner's (conv/matmul + batch_norm/bias + relu, add + relu, LRN ...),
so both planners share every lowering.  What TVM's grouping changes is *where intermediates
live*: a tensor produced and consumed inside one TVM group (e.g. the conv+bn output that the
group's residual add + relu reads) is SBUF-resident (the codegen's ``sbuf`` placement) and
never touches HBM; every tensor that crosses a group boundary round-trips HBM, as TVM's fused
kernels do.  Intra-group intermediates the codegen cannot keep on chip (kernel kinds without
resident operands, layouts, capacity) go to HBM and are listed in ``plan.info["hbm_splits"]``.
"""
from __future__ import annotations

import functools

from tvm_poly.graph import OpGraph
from tvm_poly.plan import GroupPlan, Plan, TensorPlacement
from tvm_poly.polymodel import dtype_bytes
from tvm_poly.planners.per_op import plan_per_op

_PFX = "tvmpoly_"  # node vars; TVM's own temporaries are named lv<N>

_PASSES = ("DecomposeOpsForInference", "CanonicalizeBindings", "DeadCodeElimination", "LegalizeOps",
           "AnnotateTIROpPattern", "FuseOps", "FuseTIR")


# ------------------------------------------------------------------ OpGraph -> Relax
def _relax_of(graph: OpGraph):
    """(IRModule, opaque) - a Relax ``main`` computing ``graph``; nodes that cannot be expressed
    become fresh parameters (``opaque``: their names), which fusion cannot cross."""
    import tvm
    from tvm import relax
    from tvm.relax import op as R

    bb = relax.BlockBuilder()
    tm = graph.tensor_map
    params, env, opaque, keep = [], {}, set(), []

    def param(name):
        t = tm[name]
        v = relax.Var(name.replace("/", "_"), relax.TensorType([int(s) for s in t.shape], t.dtype))
        params.append(v)
        env[name] = v
        return v

    for nm in graph.inputs:
        param(nm)
    for t in graph.tensors:
        if t.kind == "weight":
            param(t.name)

    def get(name):
        return env[name] if name in env else param(name)

    def build(n):
        x = [get(i) for i in n.inputs]
        a = n.attr
        op = n.op
        if op == "conv2d":
            return R.nn.conv2d(x[0], x[1], strides=a("strides", (1, 1)), padding=a("padding", (0, 0, 0, 0)),
                               dilation=a("dilation", (1, 1)), groups=int(a("groups", 1)))
        if op == "batch_norm":
            # inference semantics (training=True, the default, normalises by the batch's statistics)
            return relax.TupleGetItem(bb.emit(R.nn.batch_norm(*x[:5], axis=int(a("axis", 1)),
                                                              epsilon=float(a("epsilon", 1e-5)), training=False),
                                              name_hint=f"{_PFX}{n.output}__bn"), 0)
        if op in ("relu",):
            return R.nn.relu(x[0])
        if op in ("sigmoid", "tanh", "exp", "sqrt"):
            return getattr(R, op)(x[0])
        if op in ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power"):
            return getattr(R, op)(x[0], x[1])
        if op == "add_n":
            acc = x[0]
            for k, y in enumerate(x[1:-1]):
                acc = bb.emit(R.add(acc, y), name_hint=f"{_PFX}{n.output}__acc{k}")
            return R.add(acc, x[-1]) if len(x) > 1 else acc
        if op in ("max_pool2d", "avg_pool2d"):
            fn = R.nn.max_pool2d if op == "max_pool2d" else R.nn.avg_pool2d
            kw = dict(pool_size=a("pool_size"), strides=a("strides", (1, 1)), padding=a("padding", (0, 0, 0, 0)),
                      dilation=a("dilation", (1, 1)), ceil_mode=bool(a("ceil_mode", False)))
            if op == "avg_pool2d":
                kw["count_include_pad"] = bool(a("count_include_pad", False))
            return fn(x[0], **kw)
        if op == "avg_pool3d":
            return R.nn.avg_pool3d(x[0], pool_size=a("pool_size"), strides=a("strides", (1, 1, 1)),
                                   padding=a("padding", (0,) * 6), dilation=a("dilation", (1, 1, 1)),
                                   ceil_mode=bool(a("ceil_mode", False)),
                                   count_include_pad=bool(a("count_include_pad", False)))
        if op == "reshape":
            return R.reshape(x[0], tuple(int(s) for s in tm[n.output].shape))
        if op == "matmul":
            return R.matmul(x[0], x[1])
        if op == "permute_dims":
            return R.permute_dims(x[0], a("axes"))
        if op in ("softmax", "log_softmax"):
            return getattr(R.nn, op)(x[0], axis=int(a("axis", -1)))
        if op == "concat":
            return R.concat(x, axis=int(a("axis", 0)))
        if op == "expand_dims":
            ax = a("axis")
            return R.expand_dims(x[0], list(ax) if isinstance(ax, tuple) else [int(ax)])
        if op == "squeeze":
            ax = a("axis")
            return R.squeeze(x[0], list(ax) if isinstance(ax, tuple) else ([int(ax)] if ax is not None else None))
        if op in ("identity", "dropout"):
            return None
        raise NotImplementedError(op)

    with bb.function("main"):
        with bb.dataflow():
            for n in graph.nodes:
                try:
                    e = build(n)
                except Exception:  # noqa: BLE001 - inexpressible node: a fusion barrier
                    e = None
                if e is None:
                    opaque.add(n.name)
                    keep.extend(i for i in n.inputs if i in env)
                    param(n.output)
                    continue
                env[n.output] = bb.emit(e, name_hint=_PFX + n.output)
            res, seen = [], set()
            for o in list(graph.outputs) + keep:  # opaque nodes' inputs stay live (DCE)
                if o not in seen and not isinstance(env[o], relax.Var) or o in graph.outputs:
                    pass
                if o not in seen:
                    seen.add(o)
                    res.append(env[o])
            out = bb.emit_output(res[0] if len(res) == 1 else relax.Tuple(res))
        bb.emit_func_output(out, params)
    return bb.get(), opaque


def _uniquify_call_tir(mod):
    """Give every call_tir in main its own PrimFunc copy named ``u::<binding var>`` (main is
    re-emitted through a BlockBuilder so FuseOps sees a normalized module)."""
    import tvm
    from tvm import relax

    main = mod["main"]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    bb = relax.BlockBuilder()
    vmap = {}

    def remap(e):
        if isinstance(e, relax.Var):
            return vmap.get(e, e)
        if isinstance(e, relax.Tuple):
            return relax.Tuple([remap(f) for f in e.fields])
        if isinstance(e, relax.TupleGetItem):
            return relax.TupleGetItem(remap(e.tuple_value), e.index)
        return e

    used = set()
    params = [relax.Var(p.name, p.ty) for p in main.params]
    vmap.update(zip(main.params, params))
    with bb.function("main", params, pure=main.is_pure):
        with bb.dataflow():
            for blk in main.body.blocks:
                for b in blk.bindings:
                    v = b.value
                    if isinstance(v, relax.Call) and v.op.same_as(call_tir):
                        f = mod[v.args[0]]
                        name = f"u::{b.var.name}"
                        while name in used:
                            name += "'"
                        used.add(name)
                        gv = bb.add_func(f.with_attr("global_symbol", name), name)
                        nv = relax.Call(v.op, [gv, remap(v.args[1])] + list(v.args[2:]), v.attrs, v.ty_args)
                    elif isinstance(v, relax.Call):
                        nv = relax.Call(v.op, [remap(x) for x in v.args], v.attrs, v.ty_args)
                    else:
                        nv = remap(v)
                    vmap[b.var] = bb.emit(nv, name_hint=b.var.name)
            out = bb.emit_output(remap(main.body.body))
        bb.emit_func_output(out)
    return bb.get()


def tvm_fusion_groups(graph: OpGraph):
    """TVM's FuseOps partition of ``graph``: (list of node-name lists in graph order,
    {group index: TVM fused kernel name})."""
    import tvm
    from tvm import relax

    T = relax.transform
    mod, opaque = _relax_of(graph)
    mod = T.DecomposeOpsForInference()(mod)
    # a decomposed batch_norm's output is item 0 of a tuple of TVM temporaries: remember which
    alias = {}
    binds = {b.var: b.value for blk in mod["main"].body.blocks for b in blk.bindings}
    for var, val in binds.items():
        if isinstance(val, relax.TupleGetItem) and str(var.name).startswith(_PFX):
            tup = binds.get(val.tuple_value)
            if isinstance(tup, relax.Tuple) and isinstance(tup.fields[val.index], relax.Var):
                alias[str(tup.fields[val.index].name)] = str(var.name)[len(_PFX):]
    mod = tvm.transform.Sequential([T.CanonicalizeBindings(), T.DeadCodeElimination(), T.LegalizeOps()])(mod)
    mod = _uniquify_call_tir(mod)
    mod = tvm.transform.Sequential([T.AnnotateTIROpPattern(), T.FuseOps()])(mod)
    member = {}  # binding var name -> fused group key
    kname = {}
    main = mod["main"]
    for blk in main.body.blocks:
        for b in blk.bindings:
            v = b.value
            if not isinstance(v, relax.Call) or not isinstance(v.op, tvm.ir.GlobalVar):
                if isinstance(v, relax.Call) and len(v.args) and isinstance(v.args[0], tvm.ir.GlobalVar) \
                        and v.args[0].name_hint.startswith("u::"):
                    member[v.args[0].name_hint[3:].rstrip("'")] = v.args[0].name_hint
                    kname[v.args[0].name_hint] = v.args[0].name_hint[3:]
                continue
            f = mod[v.op]
            if not isinstance(f, relax.Function):
                continue
            key = v.op.name_hint
            kname[key] = key
            for fb in f.body.blocks:
                for x in fb.bindings:
                    y = x.value
                    if isinstance(y, relax.Call) and len(y.args) and isinstance(y.args[0], tvm.ir.GlobalVar) \
                            and y.args[0].name_hint.startswith("u::"):
                        member[y.args[0].name_hint[3:].rstrip("'")] = key
    # FuseTIR must accept the partition (one PrimFunc per group); its names are TVM's kernels
    try:
        fused = T.FuseTIR()(mod)
        tir_names = {gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)} \
            if hasattr(tvm, "tirx") else set()
    except Exception:  # noqa: BLE001 - FuseTIR failure does not change FuseOps' groups
        tir_names = set()
    del tir_names
    node_of = {}
    for var, key in member.items():
        if var.startswith(_PFX):
            node_of[var[len(_PFX):].split("__")[0]] = key
        elif var in alias:
            node_of[alias[var]] = key
    groups, index = [], {}
    for n in graph.nodes:
        key = node_of.get(n.output)
        if key is None or n.name in opaque:
            key = f"single::{n.name}"
        if key not in index:
            index[key] = len(groups)
            groups.append([])
        groups[index[key]].append(n.name)
    names = {index[k]: kname.get(k, k) for k in index}
    return groups, names


# ------------------------------------------------------------------ plan
def plan_fused(graph: OpGraph, config=None, dtype: str = "float32", groups=None) -> Plan:
    """Kernels as the per-op planner builds them; each tensor produced and consumed inside one
    TVM fusion group (and not a graph output) is SBUF-resident for its lifetime (the
    ``sbuf`` placement the codegen honours), everything else round-trips HBM.  A candidate the
    codegen cannot keep on chip (layout, kernel kind, capacity) goes to HBM and is recorded in
    ``plan.info["hbm_splits"]``."""
    import numpy as np

    from tvm_poly.allocation import Buffer, allocate

    if config is None or not hasattr(config, "sbuf_partitions"):
        from target.config import load_config
        config = load_config(config or "inf2")
    tnames = {}
    if groups is None:
        groups, tnames = tvm_fusion_groups(graph)
    base = plan_per_op(graph, config, dtype)
    kernels = list(base.groups)
    node_group = {nm: gi for gi, g in enumerate(groups) for nm in g}
    tm = graph.tensor_map
    it = dtype_bytes(dtype)
    root = base.alias_root()

    def tvm_group(k):
        return node_group.get(k.ops[-1], node_group.get(k.ops[0]))

    producer, readers = {}, {}
    for ki, k in enumerate(kernels):
        producer[root(k.output)] = ki
        for i in k.inputs:
            readers.setdefault(root(i), []).append(ki)
    outputs = {root(o) for o in graph.outputs}
    try:
        from tvm_poly.planners.poly import RESIDENT_KINDS, _capacity, _sbuf_size, resident_kinds_problem, resident_rows
    except Exception:  # noqa: BLE001 - the resident codegen path is not there: all HBM
        RESIDENT_KINDS = None
    buffers, splits = [], {}
    for r, ki in producer.items():
        uses = sorted(set(readers.get(r, [])))
        if not uses or r in outputs or tm[r].kind in ("input", "weight"):
            continue
        gi = tvm_group(kernels[ki])
        if gi is None or any(tvm_group(kernels[u]) != gi for u in uses):
            continue  # crosses a TVM group boundary: HBM, as TVM's fused kernels do
        if RESIDENT_KINDS is None:
            splits[r] = "codegen has no SBUF-resident operands"
            continue
        rows = resident_rows(tm[r].shape)
        if len(tm[r].shape) and int(tm[r].shape[0]) != 1:
            bad = "batch > 1: the fused planner keeps single-image tensors only"
        else:
            bad = resident_kinds_problem(kernels[ki], [kernels[u] for u in uses], r, tm, root)
        if not bad and not rows:
            bad = f"layout of shape {tuple(tm[r].shape)} does not match the kernels' channel mapping"
        elif not bad:
            for u in uses + [ki]:
                g = kernels[u]
                if g.kind == "batch_norm" and int(tm[r].shape[1]) > 128:
                    bad = "batch_norm reads it by channel tiles"
                if g.kind == "elementwise":
                    osh = tuple(tm[g.output].shape)
                    if any(tuple(tm[i].shape) != osh and not (int(np.prod(tm[i].shape)) == 1 and tm[i].is_constant)
                           for i in g.inputs):
                        bad = "a consumer broadcasts it"
        if bad:
            splits[r] = bad
            continue
        elems = int(np.prod(tm[r].shape))
        buffers.append(Buffer(r, ki, max(uses), rows, -(-elems // rows) * it, tuple(uses),
                              elems * it, elems * it * len(uses)))
    placements = [t for t in base.tensors if t.placement == "alias"]
    resident = set()
    peak = 0
    if buffers:
        size = _sbuf_size(config)
        capacity = _capacity(graph, kernels, it, size)
        alloc = allocate(buffers, capacity, size)
        alloc.check()
        peak = getattr(alloc, "peak", 0)
        for b in buffers:
            if b.name in alloc.slots:
                resident.add(b.name)
                placements.append(TensorPlacement(b.name, "sbuf", start_partition=0, num_partitions=b.partitions,
                                                  offset=alloc.offset(b.name), nbytes=alloc.slots[b.name][1]))
            else:
                splits[b.name] = str(alloc.spilled.get(b.name, "does not fit"))
    placed = {p.name for p in placements}
    for t in graph.tensors:
        if t.name not in placed and not t.is_constant:
            placements.append(TensorPlacement(t.name, "hbm"))
    out = []
    for k in kernels:
        gi = tvm_group(k)
        name = tnames.get(gi, "") if gi is not None else ""
        out.append(GroupPlan(k.name, k.kind, k.ops, k.inputs, k.output,
                             tuple(sorted(dict(k.params, **({"tvm_group": int(gi)} if gi is not None else {})).items()))))
    plan = FusedPlan("fused", dtype, tuple(placements), tuple(out))
    object.__setattr__(plan, "info", {
        "tvm_groups": len(groups),
        "tvm_group_nodes": tuple(tuple(g) for g in groups),
        "tvm_kernel_names": tuple(sorted(set(tnames.values()))),
        "resident": tuple(sorted(resident)),
        "hbm_splits": tuple(sorted(splits.items())),
        "sbuf_resident_peak_bytes": int(peak),
    })
    return plan


class FusedPlan(Plan):
    """A :class:`Plan` with ``info``: TVM's groups, the on-chip intermediates, and the
    intra-group intermediates the codegen could not keep on chip (``hbm_splits``)."""

    info: dict = None


def fusion_report(plan: Plan) -> dict:
    info = getattr(plan, "info", None) or {}
    return {"kernels": len(plan.groups), "tvm_groups": info.get("tvm_groups"),
            "resident": list(info.get("resident", ())), "hbm_splits": dict(info.get("hbm_splits", ()))}
