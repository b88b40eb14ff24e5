"""Test double of tvm_poly.graph / tvm_poly.driver (relu only, hand-written programs).

Only for the partition mechanics tests (segment formation around host ops, the
begin/report protocol, traces, exported multi-segment executables) where an exact, tiny
program makes every expected number obvious.  It is not shipped and proves nothing about
the real code generator; test_tvm_compile.py runs the real one."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from target.isa import AP, Activation, DmaCopy, HbmTensor, Mem, Program, Wait


@dataclass
class Node:
    name: str
    op: str
    supported: bool
    reason: str
    inputs: tuple
    shape: tuple


class OpGraph:
    def __init__(self, nodes):
        self.nodes = nodes

    def subgraph(self, names):
        names = set(names)
        return OpGraph([n for n in self.nodes if n.name in names])


def graph_from_relax(func_or_mod):
    from tvm import relax

    func = func_or_mod if isinstance(func_or_mod, relax.Function) else func_or_mod["main"]
    nodes = []
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            op = v.op.name if isinstance(v, relax.Call) and hasattr(v.op, "name") else type(v).__name__
            ok = op == "relax.nn.relu" and len(v.args[0].ty.shape) == 4
            ins = tuple(a.name for a in (v.args if isinstance(v, relax.Call) else [])
                        if isinstance(a, relax.Var))
            shape = tuple(int(s) for s in b.var.ty.shape) if ok else ()
            if isinstance(v, relax.Call):
                nodes.append(Node(b.var.name, op, ok, "" if ok else f"{op} not in fake", ins, shape))
    return OpGraph(nodes)


@dataclass
class CompiledProgram:
    program: Program
    constants: dict
    inputs: tuple
    outputs: tuple


PLANNERS = ("per-op",)


def compile_graph(graph, config, planner="per-op", dtype="float32"):
    """Each relu: DMA in, Activation relu, DMA out; chained through HBM scratch."""
    hbm, streams = [], {"dma0": [], "scalar": [], "dma1": []}
    produced = {n.name for n in graph.nodes}
    off = 0
    tensors = {}

    def tensor(name, shape, kind):
        nonlocal off
        if name not in tensors:
            t = HbmTensor(name, off, shape, "fp32", kind)
            off += t.nbytes
            tensors[name] = t
            hbm.append(t)
        return tensors[name]

    inputs, outputs = [], []
    for k, n in enumerate(graph.nodes):
        (src,) = n.inputs
        if src not in produced:
            tensor(src, n.shape, "input")
            inputs.append((src, src))
        t_in = tensors[src]
        t_out = tensor(n.name, n.shape, "scratch")
        c = n.shape[1]
        free = int(np.prod(n.shape)) // c
        hbm_ap = lambda t: AP(Mem.HBM, 0, c, t.offset, (free,), (1,), "fp32", free)
        sb = AP(Mem.SBUF, 0, c, 0, (free,), (1,), "fp32")
        sb2 = AP(Mem.SBUF, 0, c, free * 4, (free,), (1,), "fp32")
        waits_in = (Wait(f"out{k-1}", 1),) if k else ()
        streams["dma0"].append(DmaCopy(sb, hbm_ap(t_in), tag=n.name, waits=waits_in, signals=(f"in{k}",)))
        streams["scalar"].append(Activation(sb2, sb, "relu", tag=n.name, waits=(Wait(f"in{k}", 1),),
                                            signals=(f"act{k}",)))
        streams["dma1"].append(DmaCopy(hbm_ap(t_out), sb2, tag=n.name, waits=(Wait(f"act{k}", 1),),
                                       signals=(f"out{k}",)))
    last = graph.nodes[-1].name
    hbm = [HbmTensor(t.name, t.offset, t.shape, t.dtype, "output") if t.name == last else t for t in hbm]
    outputs.append((last, last))
    prog = Program(tuple(hbm), tuple(streams.items()), name="fake")
    return CompiledProgram(prog, {}, tuple(inputs), tuple(outputs))
