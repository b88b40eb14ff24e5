"""Compile-time folding of constant per-channel affine chains into ``batch_norm``.

Caffe2-exported models (Inception v2, DenseNet-121) follow every BatchNormalization with
``Unsqueeze -> Mul`` and ``Unsqueeze -> Add`` of constant per-channel vectors, and ShuffleNet
adds a constant conv bias right before a BatchNormalization.  All of these are one affine map
per channel, so (as TVM's FoldScaleAxis / Neuron's compiler do) they fold into the batch_norm
parameters at compile time:

    batch_norm(x; g, b, m, v) * s      ->  batch_norm(x; g*s, b*s, m, v)
    batch_norm(x; g, b, m, v) + t      ->  batch_norm(x; g, b+t, m, v)      (also t + bn, bn - t)
    batch_norm(x + t; g, b, m, v)      ->  batch_norm(x; g, b, m+t, v)

``s``/``t`` must be constants broadcastable as per-channel vectors (shape (C,1,1), (1,C,1,1),
(C,) for rank-2, or a scalar) and every folded intermediate must have exactly one consumer and
not be a graph output.  The folded node keeps the batch_norm's name and takes the output of
the last folded operator; the folded operators disappear from the graph (their Relax bindings
have no node and follow their users onto the device).
"""
from __future__ import annotations

import numpy as np

from .graph import OpGraph, OpNode, TensorInfo


def _channel_vec(t: TensorInfo, C: int, rank: int):
    """The constant as a [C] vector if it broadcasts per channel over an NC... tensor."""
    if t is None or not t.is_constant:
        return None
    v = np.asarray(t.value, dtype=np.float64)
    s = tuple(v.shape)
    if v.size == 1:
        return np.full(C, float(v.reshape(())))
    if len(s) > rank:
        return None
    full = (1,) * (rank - len(s)) + s
    if rank < 2 or full[1] != C or any(d != 1 for i, d in enumerate(full) if i != 1):
        return None
    return v.reshape(C)


def fold_constant_affine(graph: OpGraph) -> OpGraph:
    tm = dict(graph.tensor_map)
    nodes = list(graph.nodes)
    outputs = set(graph.outputs)
    changed = False
    k = 0

    def consumers(t):
        return [n for n in nodes if t in n.inputs]

    def sole(t):
        c = consumers(t)
        return c[0] if len(c) == 1 and t not in outputs and c[0].inputs.count(t) == 1 else None

    def new_const(base, arr):
        nonlocal k
        k += 1
        nm = f"{base}/fold{k}"
        while nm in tm:
            k += 1
            nm = f"{base}/fold{k}"
        arr = np.asarray(arr, dtype=np.float32)
        tm[nm] = TensorInfo(nm, tuple(arr.shape), "float32", "weight", arr)
        return nm

    i = 0
    while i < len(nodes):
        n = nodes[i]
        if n.op != "batch_norm" or len(n.inputs) != 5 or n.attr("axis", 1) != 1 or \
                not all(tm[p].is_constant for p in n.inputs[1:]):
            i += 1
            continue
        x, g, b, m, v = n.inputs
        shape = tuple(tm[n.output].shape)
        rank, C = len(shape), shape[1] if len(shape) > 1 else 0
        gv, bv, mv = (np.asarray(tm[p].value, np.float64).reshape(-1) for p in (g, b, m))
        out = n.output
        removed = []
        # --- pre: x = add(y, t) with t per-channel constant, x used only here
        prod = next((p for p in nodes if p.output == x), None)
        if prod is not None and prod.op in ("add", "subtract") and sole(x) is n:
            ys = [a for a in prod.inputs if not tm[a].is_constant]
            cs = [a for a in prod.inputs if tm[a].is_constant]
            if len(ys) == 1 and len(cs) == 1 and tuple(tm[ys[0]].shape) == shape and \
                    (prod.op == "add" or prod.inputs[1] == cs[0]):
                t = _channel_vec(tm[cs[0]], C, rank)
                if t is not None:
                    mv = mv - t if prod.op == "add" else mv + t
                    x = ys[0]
                    removed.append(prod)
        # --- post: * s, + t, - t
        while True:
            c = sole(out)
            if c is None or c.op not in ("multiply", "add", "subtract") or len(c.inputs) != 2:
                break
            other = [a for a in c.inputs if a != out]
            if len(other) != 1 or tuple(tm[c.output].shape) != shape:
                break
            t = _channel_vec(tm.get(other[0]), C, rank)
            if t is None or (c.op == "subtract" and c.inputs[0] != out):
                break
            if c.op == "multiply":
                gv, bv = gv * t, bv * t
            elif c.op == "add":
                bv = bv + t
            else:
                bv = bv - t
            removed.append(c)
            out = c.output
        if not removed:
            i += 1
            continue
        changed = True
        ins = (x, new_const(n.name + "/gamma", gv) if not np.array_equal(gv, np.asarray(tm[g].value).reshape(-1)) else g,
               new_const(n.name + "/beta", bv), new_const(n.name + "/mean", mv) if x != n.inputs[0] else m, v)
        nn = OpNode(n.name, n.op, ins, out, n.attrs, tuple(tuple(tm[a].shape) for a in ins),
                    tuple(tm[a].dtype for a in ins), n.supported, n.reason)
        gone = {r.name for r in removed}
        nodes = [nn if p is n else p for p in nodes if p.name not in gone]
        i = nodes.index(nn) + 1
    if not changed:
        return graph
    used = set(graph.outputs) | set(graph.inputs)
    for n in nodes:
        used.update(n.inputs)
        used.add(n.output)
    tensors = tuple(t for nm, t in tm.items() if nm in used)
    return OpGraph(tuple(nodes), tensors, graph.inputs, graph.outputs, graph.name)
