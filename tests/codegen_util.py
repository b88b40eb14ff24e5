"""Helpers for the codegen tests: tiny OpGraphs built by hand, relative-error check."""
from __future__ import annotations

import numpy as np

from tvm_poly.graph import OpGraph, OpNode, TensorInfo


def rel_err(out, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(out, dtype=np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


TOL = {"float32": 1e-5, "bfloat16": 2e-2}


class GraphBuilder:
    def __init__(self):
        self.nodes, self.tensors, self.inputs = [], {}, []
        self.k = 0

    def input(self, name, shape):
        self.tensors[name] = TensorInfo(name, tuple(shape), "float32", "input")
        self.inputs.append(name)
        return name

    def const(self, name, value):
        value = np.asarray(value, dtype=np.float32)
        self.tensors[name] = TensorInfo(name, value.shape, "float32", "weight", value)
        return name

    def op(self, op, inputs, shape, **attrs):
        name = f"lv{self.k}"
        self.k += 1
        ins = tuple(inputs)
        self.nodes.append(OpNode(name, op, ins, name, tuple(sorted(attrs.items())),
                                 tuple(self.tensors[i].shape for i in ins),
                                 tuple("float32" for _ in ins)))
        self.tensors[name] = TensorInfo(name, tuple(shape), "float32", "intermediate")
        return name

    def build(self, outputs):
        outputs = tuple([outputs] if isinstance(outputs, str) else outputs)
        ts = []
        for t in self.tensors.values():
            kind = "output" if t.name in outputs else t.kind
            ts.append(TensorInfo(t.name, t.shape, t.dtype, kind, t.value))
        return OpGraph(tuple(self.nodes), tuple(ts), tuple(self.inputs), outputs)
