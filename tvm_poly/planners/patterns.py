"""Multi-node operator patterns that planners fuse into one kernel.

``match_lrn``: ONNX LRN as the Relax ONNX frontend spells it,

    sq  = multiply(x, x)
    e   = expand_dims(sq, axis=1)                       # [N, 1, C, H, W]
    a   = avg_pool3d(e, pool_size=(size, 1, 1), strides=1, padding=(pf, 0, 0, pb, 0, 0),
                     count_include_pad=True)
    s   = squeeze(a, axis=1)
    m   = multiply(s, alpha)                            # scalar constants
    b   = add(m, bias)
    p   = power(b, beta)
    out = divide(x, p)

becomes one ``lrn`` kernel with params size, pf, alpha (already divided by size), bias, beta.
Every intermediate must have exactly one consumer (x itself may have others).
"""
from __future__ import annotations

import numpy as np


def _scalar_const(graph, name):
    t = graph.tensor_map.get(name)
    if t is None or not t.is_constant or np.asarray(t.value).size != 1:
        return None
    return float(np.asarray(t.value).reshape(()))


def _other(node, name):
    o = [i for i in node.inputs if i != name]
    return o[0] if len(o) == 1 else None


def match_lrn(graph, n, consumers, outputs):
    """If node ``n`` starts an LRN chain: (ops, inputs, output, params); else None."""
    if n.op != "multiply" or len(n.inputs) != 2 or n.inputs[0] != n.inputs[1]:
        return None
    x = n.inputs[0]
    xs = tuple(graph.tensor_map[x].shape)
    if len(xs) != 4:
        return None

    def sole(t):
        c = consumers.get(t, [])
        return c[0] if len(c) == 1 and t not in outputs else None

    chain = [n]
    e = sole(n.output)
    if e is None or e.op != "expand_dims" or tuple(graph.tensor_map[e.output].shape) != (xs[0], 1) + xs[1:]:
        return None
    chain.append(e)
    a = sole(e.output)
    if a is None or a.op != "avg_pool3d":
        return None
    ps = tuple(a.attr("pool_size", ()) or ())
    pad = tuple(a.attr("padding", ()) or ())
    if len(ps) != 3 or ps[1:] != (1, 1) or tuple(a.attr("strides", (1, 1, 1))) != (1, 1, 1) or \
            len(pad) != 6 or pad[1:3] != (0, 0) or pad[4:6] != (0, 0) or \
            not a.attr("count_include_pad", False) or a.attr("ceil_mode", False) or \
            tuple(a.attr("dilation", (1, 1, 1)) or (1, 1, 1)) != (1, 1, 1):
        return None
    size, pf, pb = int(ps[0]), int(pad[0]), int(pad[3])
    if pf + pb != size - 1:
        return None
    chain.append(a)
    s = sole(a.output)
    if s is None or s.op != "squeeze" or tuple(graph.tensor_map[s.output].shape) != xs:
        return None
    chain.append(s)
    m = sole(s.output)
    alpha = _scalar_const(graph, _other(m, s.output)) if m is not None and m.op == "multiply" else None
    if alpha is None:
        return None
    chain.append(m)
    b = sole(m.output)
    bias = _scalar_const(graph, _other(b, m.output)) if b is not None and b.op == "add" else None
    if bias is None or bias <= 0:
        return None
    chain.append(b)
    p = sole(b.output)
    if p is None or p.op != "power" or p.inputs[0] != b.output:
        return None
    beta = _scalar_const(graph, p.inputs[1])
    if beta is None:
        return None
    chain.append(p)
    d = sole(p.output)
    if d is None or d.op != "divide" or tuple(d.inputs) != (x, p.output):
        return None
    chain.append(d)
    params = {"size": size, "pf": pf, "alpha": alpha / size, "bias": bias, "beta": beta}
    return tuple(c.name for c in chain), (x,), d.output, params
