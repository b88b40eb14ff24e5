"""Helpers for the codegen tests: tiny OpGraphs built by hand, relative-error check."""
from __future__ import annotations

import numpy as np

from tvm_poly.graph import OpGraph, OpNode, TensorInfo
from tvm_poly.models import rel_err  # noqa: F401  (re-exported for the codegen tests)


def resnet50_logits_case():
    """(OpGraph, inputs, onnxruntime logits) of light ResNet-50 with seeded random weights."""
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_poly.graph import graph_from_relax
    from tvm_poly.models import light_model, random_inputs, reference_outputs

    model = light_model("resnet50", seed=0, logits=True)
    inputs = random_inputs(model, seed=0)
    ref = list(reference_outputs(model, inputs).values())[0]
    return graph_from_relax(from_onnx(model)), inputs, ref


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

    def channel_shuffle(self, x, groups):
        """reshape -> permute_dims (0, 2, 1, 3, 4) -> reshape: ShuffleNet's channel shuffle."""
        N, C, H, W = self.tensors[x].shape
        r = self.op("reshape", [x], (N, groups, C // groups, H, W))
        t = self.op("permute_dims", [r], (N, C // groups, groups, H, W), axes=(0, 2, 1, 3, 4))
        return self.op("reshape", [t], (N, C, H, W))

    def build(self, outputs):
        outputs = tuple([outputs] if isinstance(outputs, str) else outputs)
        ts = []
        for t in self.tensors.values():
            kind = "output" if t.name in outputs else t.kind
            ts.append(TensorInfo(t.name, t.shape, t.dtype, kind, t.value))
        return OpGraph(tuple(self.nodes), tuple(ts), tuple(self.inputs), outputs)
