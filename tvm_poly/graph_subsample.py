"""Readers that see only a strided lattice of a tensor get a subsampled copy of it.

A 1 x 1 convolution with stride s and no padding (ResNet's downsampling shortcut) reads only the
pixels (s*i, s*j) of its input: 1/s^2 of it.  When that input spills to HBM, the reader loads all
of it back (the codegen moves whole rows: an element-strided DMA runs at a few bytes per
descriptor), and when it is resident, it holds the whole tensor for that reader's sake.

``subsample_lattice_reads(graph, model)`` gives such readers their own tensor ``t_sub{s}`` =
``max_pool2d(t, 1 x 1, stride s)`` -- the lattice, computed by an engine copy while ``t`` is on
chip -- and makes them stride-1 convolutions of it.  The other readers of ``t`` are unchanged.  The
rewrite only adds a choice: the poly planner plans the model with and without it and keeps the
cheaper plan (``plan_poly``), so a model whose tensors all stay on chip is not changed.

Which readers qualify is decided on the polyhedral model when there is one: the union of the
reader's read footprints on ``t`` must *equal* the lattice ``{t[n, c, h, w] : h % s_h = 0 and
w % s_w = 0}`` (isl set equality); the convolution's attributes only propose the candidates.
"""
from __future__ import annotations

import dataclasses
import math

from .graph import OpGraph, OpNode, TensorInfo


def lattice_readers(graph: OpGraph) -> dict:
    """{tensor: {(sh, sw): [reader nodes]}}: conv2d readers with a 1 x 1 kernel, no padding,
    dilation 1 and a stride > 1 of an intermediate 4-D tensor (candidates; see the module doc)."""
    tm = graph.tensor_map
    out: dict = {}
    for n in graph.nodes:
        if n.op != "conv2d" or not n.supported or len(n.inputs) < 2:
            continue
        t, w = tm.get(n.inputs[0]), tm.get(n.inputs[1])
        if t is None or w is None or len(t.shape) != 4 or tuple(int(s) for s in w.shape[2:]) != (1, 1):
            continue
        if t.kind in ("input", "weight") or t.is_constant:
            continue
        s = tuple(int(v) for v in n.attr("strides", (1, 1)))
        if s == (1, 1) or any(int(p) for p in n.attr("padding", (0, 0, 0, 0))) or \
                tuple(int(d) for d in n.attr("dilation", (1, 1))) != (1, 1) or \
                n.attr("data_layout", "NCHW") != "NCHW":
            continue
        out.setdefault(n.inputs[0], {}).setdefault(s, []).append(n)
    return out


def _reads_lattice(model, arrays: dict, node_ops: dict, tensor: str, nodes, stride) -> bool:
    """True when the elements of ``tensor`` that ``nodes`` need are exactly the stride lattice of
    the tensor's box (isl).  Needed = read by the statements that write the node's output, or by
    the instances of its internal stages (TOPI's ``pad_temp`` copy) that write what those read:
    the pad stage copies the whole input even at padding 0, the convolution reads the lattice."""
    import islpy as isl

    from tvm_poly.queries import footprint, needs

    arr = arrays.get(tensor)
    if arr is None:
        return False
    ops = set().union(*(node_ops.get(n.name, set()) for n in nodes))
    stmts = [s for s in model.statements if s.op in ops]
    internal = {a.array for s in stmts for a in s.writes if model.array(a.array).kind == "internal"}
    its = [s.domain for s in stmts if s.role != "init" and not {a.array for a in s.writes} & internal]
    if not its:
        return False
    frontier, got = its, None
    for _ in range(4):  # internal stages feeding internal stages (pad -> pack -> compute)
        fp = footprint(model, frontier, arr).elements
        got = fp if got is None else got.union(fp)
        nxt = [needs(model, frontier, a) for a in sorted(internal)]
        nxt = [u for u in nxt if not u.is_empty()]
        if not nxt:
            break
        frontier = nxt
    else:
        return False
    box = model.array(arr).box
    sh, sw = stride
    lat = isl.Set(f"{{ {box.get_tuple_name()}[i0, i1, i2, i3] : i2 mod {sh} = 0 and i3 mod {sw} = 0 }}",
                  context=model.ctx)
    return got.coalesce().is_equal(lat.intersect(box))


def subsample_lattice_reads(graph: OpGraph, model=None, arrays=None, node_ops=None) -> OpGraph:
    """The rewritten graph (``graph`` itself when no reader qualifies).  ``model``, ``arrays``,
    ``node_ops``: the graph's PolyModel and its names (``poly.model_names``); without a model the
    conv attributes decide alone."""
    cands = lattice_readers(graph)
    if not cands:
        return graph
    tm = dict(graph.tensor_map)
    used = set(tm) | {n.name for n in graph.nodes}
    after: dict = {}  # producer node name -> new pool nodes to insert after it
    renamed: dict = {}  # reader node name -> new input tensor
    for t, by_stride in sorted(cands.items()):
        prod = graph.producer(t)
        if prod is None:
            continue
        for s, nodes in sorted(by_stride.items()):
            if model is not None and not _reads_lattice(model, arrays or {}, node_ops or {}, t, nodes, s):
                continue
            name = f"{t}_sub{s[0]}" if s[0] == s[1] else f"{t}_sub{s[0]}x{s[1]}"
            while name in used:
                name += "_"
            used.add(name)
            N, C, H, W = (int(v) for v in tm[t].shape)
            shape = (N, C, math.ceil(H / s[0]), math.ceil(W / s[1]))
            tm[name] = TensorInfo(name, shape, tm[t].dtype, "intermediate")
            attrs = (("ceil_mode", False), ("count_include_pad", False), ("dilation", (1, 1)), ("layout", "NCHW"),
                     ("padding", (0, 0, 0, 0)), ("pool_size", (1, 1)), ("strides", s))
            after.setdefault(prod.name, []).append(
                OpNode(name, "max_pool2d", (t,), name, attrs, (tuple(tm[t].shape),), (tm[t].dtype,)))
            for n in nodes:
                renamed[n.name] = name
    if not renamed:
        return graph
    nodes = []
    for n in graph.nodes:
        if n.name in renamed:
            src = renamed[n.name]
            n = dataclasses.replace(n, inputs=(src,) + tuple(n.inputs[1:]),
                                    attrs=tuple((k, (1, 1) if k == "strides" else v) for k, v in n.attrs),
                                    shapes=(tuple(tm[src].shape),) + tuple(n.shapes[1:]))
        nodes.append(n)
        nodes.extend(after.get(n.name, ()))
    return OpGraph(tuple(nodes), tuple(tm.values()), graph.inputs, graph.outputs, graph.name)
