"""Compile-time folding of channel shuffles into the weights of the operators around them.

ShuffleNet's channel shuffle is ``reshape [N, C, H, W] -> [N, g, C/g, H, W]``, ``permute_dims
(0, 2, 1, 3, 4)``, ``reshape -> [N, C, H, W]``: a fixed permutation of the channels,
``out[o] = in[pi(o)]`` with ``pi(o) = (o % g) * (C / g) + o // g``.  Materialised, it is a
full copy of the activation through a layout no kernel reads in place.  A compiler that owns
the weights does not need it: the per-channel operators after the shuffle (depthwise conv,
batch_norm, relu, ...) compute the same values in the *unshuffled* channel order when their
per-channel parameters are permuted, and the next channel-mixing conv absorbs the permutation
into its input-channel axis (its grouped weight becomes the dense block-diagonal weight with
permuted columns, which is what the codegen builds for a grouped conv anyway).  Like TVM's
FoldScaleAxis, this rewrites the graph for every planner.

The rewrite applies when the shuffle's output reaches, through single-consumer per-channel
operators, exactly one conv2d; otherwise the shuffle stays (and runs as a permute kernel).
"""
from __future__ import annotations

import numpy as np

from .graph import OpGraph, OpNode, TensorInfo

CHANNELWISE = {"relu", "sigmoid", "tanh", "exp", "sqrt"}


def shuffle_permutation(graph: OpGraph, node: OpNode):
    """(input tensor, output tensor, removed nodes, pi) if ``node`` is the permute_dims of a
    channel shuffle, else None."""
    tm = graph.tensor_map
    if node.op != "permute_dims" or tuple(node.attr("axes") or ()) != (0, 2, 1, 3, 4):
        return None
    prods = {n.output: n for n in graph.nodes}
    users = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    r1 = prods.get(node.inputs[0])
    after = users.get(node.output, [])
    if r1 is None or r1.op != "reshape" or len(after) != 1 or after[0].op != "reshape":
        return None
    r2 = after[0]
    outputs = set(graph.outputs)
    if len(users.get(r1.output, [])) != 1 or {r1.output, node.output} & outputs:
        return None
    x, y = r1.inputs[0], r2.output
    xs, ys, ms = tuple(tm[x].shape), tuple(tm[y].shape), tuple(tm[r1.output].shape)
    if len(xs) != 4 or xs != ys or len(ms) != 5 or ms[0] != xs[0] or ms[1] * ms[2] != xs[1] or ms[3:] != xs[2:]:
        return None
    g, cg = ms[1], ms[2]
    o = np.arange(xs[1])
    return x, y, (r1, node, r2), (o % g) * cg + o // g


def fold_channel_shuffles(graph: OpGraph) -> OpGraph:
    """Remove every foldable channel shuffle (see the module docstring)."""
    skip = set()
    while True:
        for n in graph.nodes:
            got = shuffle_permutation(graph, n) if n.name not in skip else None
            if got is not None:
                new = _fold_one(graph, *got)
                if new is None:
                    skip.add(n.name)
                    continue
                graph = new
                break
        else:
            return graph


def _fold_one(graph: OpGraph, x, y, removed, pi):
    tm = dict(graph.tensor_map)
    outputs = set(graph.outputs)
    users = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    C = len(pi)
    inv = np.argsort(pi)  # inv[c] = o with pi(o) = c: new per-channel params = old[inv]
    chain, cur = [], y
    while True:
        us = users.get(cur, [])
        if len(us) != 1 or cur in outputs or us[0].inputs.count(cur) != 1 or us[0].inputs[0] != cur:
            return None
        n = us[0]
        if n.op == "conv2d":
            w = tm[n.inputs[1]]
            groups = int(n.attr("groups", 1))
            if not w.is_constant or len(n.inputs) != 2:
                return None
            if groups == C and tuple(w.shape)[:2] == (C, 1):  # depthwise: per channel
                chain.append(n)
                cur = n.output
                continue
            break  # the channel-mixing conv absorbs the permutation
        if n.op == "batch_norm" and all(tm[p].is_constant for p in n.inputs[1:]) and n.attr("axis", 1) == 1:
            chain.append(n)
            cur = n.output
            continue
        if n.op in CHANNELWISE:
            chain.append(n)
            cur = n.output
            continue
        return None
    absorb = n
    used = {t.name for t in tm.values()}

    def const(base, arr):
        nm, i = f"{base}/unshuffled", 1
        while nm in used:
            nm, i = f"{base}/unshuffled{i}", i + 1
        used.add(nm)
        arr = np.ascontiguousarray(np.asarray(arr, np.float32))
        tm[nm] = TensorInfo(nm, tuple(arr.shape), "float32", "weight", arr)
        return nm

    def rebuilt(n, ins, attrs=None):
        return OpNode(n.name, n.op, tuple(ins), n.output, tuple(sorted((attrs or dict(n.attrs)).items())),
                      tuple(tuple(tm[i].shape) for i in ins), tuple(tm[i].dtype for i in ins), n.supported, n.reason)

    new_nodes = {}
    src = x
    for n in chain:
        ins = [src] + list(n.inputs[1:])
        if n.op == "conv2d":
            ins[1] = const(n.inputs[1], np.asarray(tm[n.inputs[1]].value)[inv])
        elif n.op == "batch_norm":
            ins[1:] = [const(p, np.asarray(tm[p].value).reshape(-1)[inv]) for p in n.inputs[1:]]
        new_nodes[n.name] = rebuilt(n, ins)
        src = n.output
    w = np.asarray(tm[absorb.inputs[1]].value, np.float32)
    K, Cg, R, S = w.shape
    groups = int(absorb.attr("groups", 1))
    dense = np.zeros((K, C, R, S), np.float32)
    Kg = K // groups
    for gi in range(groups):
        dense[gi * Kg:(gi + 1) * Kg, gi * Cg:(gi + 1) * Cg] = w[gi * Kg:(gi + 1) * Kg]
    attrs = dict(absorb.attrs)
    attrs["groups"] = 1
    new_nodes[absorb.name] = rebuilt(absorb, [src, const(absorb.inputs[1], dense[:, inv])], attrs)
    gone = {r.name for r in removed}
    nodes = tuple(new_nodes.get(n.name, n) for n in graph.nodes if n.name not in gone)
    live = set(graph.inputs) | set(graph.outputs)
    for n in nodes:
        live.update(n.inputs)
        live.add(n.output)
    tensors = tuple(t for nm, t in tm.items() if nm in live)
    return OpGraph(nodes, tensors, graph.inputs, graph.outputs, graph.name)
