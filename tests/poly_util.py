"""Small ONNX graphs for the polyhedral-model tests (tests/test_poly_*.py)."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = ["resnet50", "vgg19", "inception_v1", "inception_v2", "densenet121", "squeezenet",
                "shufflenet", "bvlc_alexnet", "zfnet512"]


def light_path(name: str) -> str:
    return os.path.join(LIGHT_DIR, f"light_{name}.onnx")


def relax_of(model: onnx.ModelProto):
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(model)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _init(name, shape, seed=0):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def make_model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", [_vi(n, s) for n, s in inputs],
                          [_vi(n, s) for n, s in outputs], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def conv_model(n=2, c=3, h=8, w=8, k=4, r=3, pad=1, stride=1):
    p = (h + 2 * pad - r) // stride + 1
    q = (w + 2 * pad - r) // stride + 1
    node = helper.make_node("Conv", ["x", "wt"], ["y"], kernel_shape=[r, r],
                            pads=[pad] * 4, strides=[stride, stride])
    return make_model([node], [("x", (n, c, h, w))], [("y", (n, k, p, q))],
                      [_init("wt", (k, c, r, r))]), (n, k, p, q, c, r, r)


def matmul_model(m=6, k=5, n=7):
    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    return make_model([node], [("a", (m, k)), ("b", (k, n))], [("c", (m, n))])


def residual_model(c=4, h=6, w=6):
    """x -> conv3x3 -> relu -> conv3x3 -> add(x) -> relu: the residual branch is x."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["t1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t1"], ["t2"]),
        helper.make_node("Conv", ["t2", "w2"], ["t3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["t3", "x"], ["t4"]),
        helper.make_node("Relu", ["t4"], ["y"]),
    ]
    return make_model(nodes, [("x", (1, c, h, w))], [("y", (1, c, h, w))],
                      [_init("w1", (c, c, 3, 3), 1), _init("w2", (c, c, 3, 3), 2)])


def relu_chain_model(shape=(2, 3, 4, 5)):
    nodes = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Sigmoid", ["t"], ["y"])]
    return make_model(nodes, [("x", shape)], [("y", shape)])


def gather_model(rows=10, cols=4, nidx=3):
    """A data-dependent gather: y = data[idx] with idx a model input."""
    node = helper.make_node("Gather", ["data", "idx"], ["y"], axis=0)
    g = helper.make_graph([node], "g", [_vi("data", (rows, cols)),
                                        helper.make_tensor_value_info("idx", TensorProto.INT64,
                                                                      [nidx])],
                          [_vi("y", (nidx, cols))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def concat_model(c1=2, c2=3, h=4, w=4):
    node = helper.make_node("Concat", ["a", "b"], ["y"], axis=1)
    return make_model([node], [("a", (1, c1, h, w)), ("b", (1, c2, h, w))],
                      [("y", (1, c1 + c2, h, w))])
