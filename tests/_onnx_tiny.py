"""Small ONNX models built in the tests (fast to compile and simulate)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(seed=0, batch=1, dynamic_batch=False, extra_op=None):
    """x[N,3,16,16] -> Conv(8,3x3,pad1) -> BN -> Relu -> MaxPool 2x2 -> Conv(8,1x1)+bias -> Add
    (residual) -> Relu -> Flatten -> Gemm(10) : y[N,10]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * np.sqrt(2 / 27)).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 1, 1)) * np.sqrt(2 / 8)).astype(np.float32)
    b2 = rng.normal(0, 0.05, 8).astype(np.float32)
    s = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    bb = rng.normal(0, 0.1, 8).astype(np.float32)
    mu = rng.normal(0, 0.1, 8).astype(np.float32)
    var = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    wf = (rng.standard_normal((10, 8 * 8 * 8)) * np.sqrt(2 / 512)).astype(np.float32)
    bf = rng.normal(0, 0.05, 10).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w1, "w1"), (w2, "w2"), (b2, "b2"), (s, "s"), (bb, "bb"), (mu, "mu"), (var, "var"),
        (wf, "wf"), (bf, "bf")]]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "p1"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    if extra_op is not None:
        nodes.append(helper.make_node(extra_op, ["y"], ["z"], domain="" if extra_op != "MyCustomOp" else "com.example"))
    out = "z" if extra_op else "y"
    n = "N" if dynamic_batch else batch
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, 16, 16])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [n, 10])], inits)
    opsets = [helper.make_opsetid("", 13)]
    if extra_op == "MyCustomOp":
        opsets.append(helper.make_opsetid("com.example", 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def tiny_host_only():
    """A model with no operator the NeuronCore path offloads (Exp and Neg stay on host...
    unless supported); uses Sin, which has no NeuronCore lowering."""
    graph = helper.make_graph(
        [helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Cos", ["s"], ["y"])],
        "host_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
