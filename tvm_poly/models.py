"""The nine light ONNX models bundled with the ``onnx`` wheel, with honest weights.

The wheel's ``onnx/backend/test/data/light/light_<name>.onnx`` models produce most of
their weights with ``ConstantOfShape(value=0.02)``: every reference output is then
uniform, which proves nothing.  :func:`light_model` replaces each such node by a
seeded random initializer of sensible scale for its role:

* Conv / Gemm / MatMul weights: He-normal, std = sqrt(2 / fan_in);
* biases: N(0, 0.05);
* BatchNormalization: scale U(0.5, 1.5), bias N(0, 0.1), mean N(0, 0.1), var U(0.5, 1.5);
  the BN that ends a residual branch (its output goes straight into a Sum/Add of
  activations) gets scale U(0.1, 0.3), so activations stay O(1) through the blocks;
* Caffe2-style affine (Unsqueeze -> Mul / Add): multiplier U(0.5, 1.5), offset N(0, 0.1).

Each tensor's values depend only on ``seed`` and the tensor's name.  Compare logits,
not probabilities: a final softmax of random logits saturates; :func:`strip_softmax`
removes it.  :func:`reference_outputs` runs a model with onnxruntime.
"""
from __future__ import annotations

import os
import zlib

import numpy as np

from .errors import ModelError

NAMES = ("resnet50", "vgg19", "inception_v1", "inception_v2", "densenet121", "squeezenet",
         "shufflenet", "bvlc_alexnet", "zfnet512")


def light_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def model_path(arg: str) -> str:
    """A command-line model argument: an existing file or ``*.onnx`` path as given, else the
    name of a bundled light model (``resnet50``, ``vgg19``, ...)."""
    if os.path.exists(arg) or arg.endswith(".onnx"):
        return arg
    return light_path(arg)


def light_path(name: str) -> str:
    if name not in NAMES:
        raise ModelError(f"unknown light model {name!r}; known: {', '.join(NAMES)}")
    return os.path.join(light_dir(), f"light_{name}.onnx")


def _consumers(graph):
    cons = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            cons.setdefault(name, []).append((node, k))
    return cons


def _role(name, graph, cons, shape):
    """(kind, fan_in) of a weight tensor from how it is consumed."""
    seen = set()
    frontier = [name]
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        for node, k in cons.get(t, []):
            op = node.op_type
            if op in ("Unsqueeze", "Reshape", "Flatten", "Identity", "Cast") and k == 0:
                frontier.extend(node.output)
                continue
            if op in ("Conv", "ConvTranspose"):
                if k == 1:
                    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                    return "weight", fan_in
                return "bias", 0
            if op in ("Gemm", "MatMul"):
                if k == 1 and len(shape) == 2:
                    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                    return "weight", int(shape[1] if trans_b else shape[0])
                if k == 0 and len(shape) == 2:
                    trans_a = any(a.name == "transA" and a.i for a in node.attribute)
                    return "weight", int(shape[0] if trans_a else shape[1])
                return "bias", 0
            if op == "BatchNormalization":
                if k == 1 and _feeds_residual_sum(node, graph, cons):
                    return "bn_scale_residual", 0
                return ("bn_scale", "bn_bias", "bn_mean", "bn_var")[k - 1] if k >= 1 else "act", 0
            if op == "Mul":
                return "scale", 0
            if op in ("Add", "Sum", "Sub"):
                return "offset", 0
    return "other", 0


def _feeds_residual_sum(node, graph, cons) -> bool:
    """Whether ``node``'s output goes straight into a Sum/Add of two or more activations
    (the end of a residual branch or its projection shortcut)."""
    inits = {t.name for t in graph.initializer}
    for user, _k in cons.get(node.output[0], []):
        if user.op_type in ("Sum", "Add"):
            if sum(1 for i in user.input if i not in inits) >= 2:
                return True
    return False


def _random(kind, fan_in, shape, rng):
    if kind == "bn_scale_residual":
        # residual branches end with a small gain (as "zero-init last BN gamma" does, but
        # not zero): activations then stay O(1) through all blocks instead of growing
        # ~2.5x per block, while every branch still contributes
        return rng.uniform(0.1, 0.3, size=shape).astype(np.float32)
    if kind == "weight":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / max(fan_in, 1)))
    if kind in ("bn_scale", "scale", "bn_var"):
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    if kind == "bias":
        return rng.normal(0.0, 0.05, size=shape).astype(np.float32)
    return rng.normal(0.0, 0.1, size=shape).astype(np.float32)


def randomize_constant_weights(model, seed: int = 0):
    """A copy of ``model`` whose float ConstantOfShape weights are seeded random initializers."""
    import onnx
    from onnx import numpy_helper

    model = _copy(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    cons = _consumers(g)
    keep_nodes, new_inits, dropped = [], [], set()
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            value = None
            for a in node.attribute:
                if a.name == "value":
                    value = numpy_helper.to_array(a.t)
            if value is None or value.dtype != np.float32:
                keep_nodes.append(node)
                continue
            shape = tuple(int(s) for s in numpy_helper.to_array(inits[node.input[0]]).ravel())
            out = node.output[0]
            kind, fan_in = _role(out, g, cons, shape)
            rng = np.random.default_rng([int(seed), zlib.crc32(out.encode())])
            arr = _random(kind, fan_in, shape, rng)
            new_inits.append(numpy_helper.from_array(arr, name=out))
            dropped.add(node.input[0])
            continue
        keep_nodes.append(node)
    still_used = {i for n in keep_nodes for i in n.input}
    dropped -= still_used
    del g.node[:]
    g.node.extend(keep_nodes)
    kept = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    # old-style models list initializers as graph inputs: keep only the real inputs
    init_names = {t.name for t in g.initializer}
    real_inputs = [i for i in g.input if i.name not in init_names and i.name not in dropped]
    del g.input[:]
    g.input.extend(real_inputs)
    if model.ir_version < 4:
        model.ir_version = 4  # initializers need not be graph inputs from IR v4 on
    return model


def _copy(model):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def light_model(name: str, seed: int = 0, logits: bool = False):
    """The bundled light model ``name`` with seeded random weights (``onnx.ModelProto``).

    ``logits=True`` also removes the final Softmax (see :func:`strip_softmax`)."""
    import onnx

    model = onnx.load(light_path(name))
    model = randomize_constant_weights(model, seed)
    return strip_softmax(model) if logits else model


def strip_softmax(model):
    """A copy of ``model`` whose graph outputs produced by Softmax are replaced by the
    softmax inputs (the logits).  Output names become the logits' tensor names."""
    model = _copy(model)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    outputs = list(g.output)
    changed = False
    for idx, out in enumerate(outputs):
        node = producer.get(out.name)
        if node is None or node.op_type != "Softmax":
            continue
        logits = node.input[0]
        g.node.remove(node)
        new = type(out)()
        new.CopyFrom(out)
        new.name = logits
        outputs[idx] = new
        changed = True
    if changed:
        del g.output[:]
        g.output.extend(outputs)
    return model


def input_specs(model) -> list[tuple[str, tuple, str]]:
    """[(name, shape, numpy dtype)] of the model's real inputs (not initializers).
    Unknown dims are ``None``."""
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    specs = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        shape = tuple((d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
                      for d in tt.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name if tt.elem_type else "float32"
        specs.append((i.name, shape, dtype))
    return specs


def output_names(model) -> list[str]:
    return [o.name for o in model.graph.output]


def random_inputs(model, seed: int = 0, shapes: dict | None = None) -> dict:
    """Seeded N(0, 1) inputs for every real input of ``model`` (static shapes needed)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, dtype in input_specs(model):
        shape = tuple((shapes or {}).get(name, shape))
        if any(s is None for s in shape):
            from .errors import DynamicShapeError

            raise DynamicShapeError(f"input {name!r} has unknown dimensions {shape}")
        if np.issubdtype(np.dtype(dtype), np.floating):
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = rng.integers(0, 10, size=shape).astype(dtype)
    return out


def reference_outputs(model, inputs: dict) -> dict:
    """Outputs of ``model`` on ``inputs`` from onnxruntime, by ONNX output name."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    res = sess.run(names, inputs)
    return dict(zip(names, res))


def rel_err(out, ref) -> float:
    """Norm-wise relative error ||out - ref|| / ||ref||."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


__all__ = ["NAMES", "light_dir", "light_path", "light_model", "randomize_constant_weights",
           "strip_softmax", "input_specs", "output_names", "random_inputs",
           "reference_outputs", "rel_err"]
