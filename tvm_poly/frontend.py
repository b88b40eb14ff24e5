"""ONNX import with typed errors: ``load_onnx(path_or_model, batch=None, shape=None)``.

* malformed / truncated files -> :class:`ModelError` naming the file;
* symbolic or unknown input dimensions without ``batch``/``shape`` ->
  :class:`DynamicShapeError` naming the input and dimension; ``batch`` on a fixed
  batch-1 model re-batches it (:func:`with_batch`);
* operators the ONNX importer does not know -> :class:`UnsupportedOperatorError`
  listing them by name (operators the NeuronCore cannot run are *not* an error:
  they stay on the host);
* :func:`validate_inputs` checks run-time inputs (names, shapes, dtypes) against the
  model and raises :class:`InputShapeError`.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import DynamicShapeError, InputShapeError, ModelError, UnsupportedOperatorError


def read_onnx(path_or_model):
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto, checked."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        model, where = path_or_model, "model"
    else:
        if isinstance(path_or_model, (bytes, bytearray)):
            data, where = bytes(path_or_model), "<bytes>"
        else:
            where = os.fspath(path_or_model)
            if not os.path.exists(where):
                raise ModelError(f"model file not found: {where}")
            if os.path.isdir(where):
                raise ModelError(f"model path is a directory: {where}")
            with open(where, "rb") as f:
                data = f.read()
        if not data:
            raise ModelError(f"empty model file: {where}")
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except Exception as e:
            raise ModelError(f"malformed or truncated ONNX file {where}: {type(e).__name__}: {e}") from e
        if where != "<bytes>" and any(t.data_location == onnx.TensorProto.EXTERNAL
                                      for t in model.graph.initializer):
            from onnx.external_data_helper import load_external_data_for_model

            try:
                load_external_data_for_model(model, os.path.dirname(os.path.abspath(where)))
            except Exception as e:
                raise ModelError(f"cannot load the external weights of {where}: {e}") from e
    if not model.graph.node:
        raise ModelError(f"malformed or truncated ONNX file {where}: the graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"invalid ONNX model {where}: {msg}") from e
    return model


def _dims(value_info):
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param if d.HasField("dim_param") and d.dim_param else "?")
    return out


def input_shapes(model, batch: int | None = None, shape: dict | None = None) -> dict:
    """Static shape of every real input: given ``shape`` > model > ``batch`` for dim 0.
    Raises :class:`DynamicShapeError` if a dimension stays unknown."""
    inits = {t.name for t in model.graph.initializer}
    shape = dict(shape or {})
    real = [i for i in model.graph.input if i.name not in inits]
    unknown = set(shape) - {i.name for i in real}
    if unknown:
        raise InputShapeError(
            f"shape given for unknown input(s) {', '.join(sorted(unknown))}; "
            f"model inputs: {', '.join(i.name for i in real)}")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise DynamicShapeError(f"batch must be a positive integer, got {batch!r}")
    out = {}
    for vi in real:
        if vi.name in shape:
            out[vi.name] = tuple(int(s) for s in shape[vi.name])
            continue
        dims = _dims(vi)
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            raise DynamicShapeError(f"input {vi.name!r} has unknown rank; give its shape")
        if dims and not isinstance(dims[0], int):
            if batch is None:
                raise DynamicShapeError(
                    f"input {vi.name!r} has dynamic batch dimension {dims[0]!r} "
                    f"(shape {dims}); give --batch N (or shape=)")
            dims[0] = batch
        elif batch is not None and dims and dims[0] != batch:
            raise DynamicShapeError(
                f"input {vi.name!r} has fixed batch {dims[0]}; --batch {batch} cannot change it"
                + (" (only batch-1 models are re-batched)" if dims[0] != 1 else ""))
        rest = [d for d in dims if not isinstance(d, int)]
        if rest:
            raise DynamicShapeError(
                f"input {vi.name!r} has dynamic dimension(s) {rest} (shape {dims}); give shape=")
        out[vi.name] = tuple(dims)
    return out


def with_batch(model, batch: int):
    """A copy of a fixed batch-1 model re-batched to ``batch``.

    The leading dimension of every real input and output becomes ``batch`` (value_info
    is dropped: the importer infers it); ``Reshape`` shape constants whose leading entry
    is the old batch 1 get ``0`` there ("copy the input's dimension", ONNX semantics), so the
    classifier's flatten and ShuffleNet's channel shuffles follow the batch.  Models whose
    inputs are not all batch 1 are returned unchanged (``input_shapes`` then reports them)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if batch is None or batch == 1 or not real or any(
            not i.type.tensor_type.shape.dim or _dims(i)[0] != 1 for i in real):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i in g.input:
        if i.name not in inits:
            i.type.tensor_type.shape.dim[0].dim_value = int(batch)
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_value = int(batch)
    del g.value_info[:]
    shape_inputs = {n.input[1] for n in g.node if n.op_type == "Reshape" and len(n.input) > 1}
    minits = {t.name: t for t in g.initializer}
    for name in shape_inputs & set(minits):
        arr = numpy_helper.to_array(minits[name]).copy()
        if arr.ndim == 1 and arr.size > 1 and arr[0] == 1:
            arr[0] = 0
            minits[name].CopyFrom(numpy_helper.from_array(arr, name))
    return m


def _check_ops(model):
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"If", "Constant"}
    bad = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")
                  and n.op_type not in known} |
                 {f"{n.domain}.{n.op_type}" for n in model.graph.node
                  if n.domain not in ("", "ai.onnx")})
    if bad:
        raise UnsupportedOperatorError(bad)


def load_onnx(path_or_model, batch: int | None = None, shape: dict | None = None,
              keep_params_in_input: bool = False):
    """Import an ONNX model as a Relax ``tvm.IRModule`` with static input shapes.

    The inputs of ``main`` are the model's real inputs, in ONNX order; weights become
    Relax constants (or trailing parameters with ``keep_params_in_input=True``)."""
    model = with_batch(read_onnx(path_or_model), batch)
    shapes = input_shapes(model, batch, shape)
    _check_ops(model)
    from tvm.relax.frontend.onnx import from_onnx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_onnx(model, shape_dict={k: list(v) for k, v in shapes.items()},
                            keep_params_in_input=keep_params_in_input)
    except Exception as e:
        import tvm

        if isinstance(e, tvm.error.OpNotImplemented):
            raise UnsupportedOperatorError([str(e).split(":")[-1].strip()]) from e
        msg = " ".join(str(e).split())[:300]
        raise ModelError(f"cannot import ONNX model: {type(e).__name__}: {msg}") from e
    return mod


def validate_inputs(specs, values: dict, *, allow_missing: bool = False) -> dict:
    """Check ``values`` (name -> array) against ``specs`` [(name, shape, dtype)].

    Returns the values as contiguous NumPy arrays in spec order; raises
    :class:`InputShapeError` naming the input for an unknown name, a missing input, a
    wrong shape or a wrong dtype (no silent casts)."""
    names = [s[0] for s in specs]
    extra = set(values) - set(names)
    if extra:
        raise InputShapeError(
            f"unknown input(s) {', '.join(sorted(extra))}; model inputs: {', '.join(names)}")
    out = {}
    for name, shape, dtype in specs:
        if name not in values:
            if allow_missing:
                continue
            raise InputShapeError(f"missing input {name!r} (shape {tuple(shape)}, {dtype})")
        v = values[name]
        if hasattr(v, "numpy") and not isinstance(v, np.ndarray):
            v = v.numpy()
        v = np.asarray(v)
        if tuple(v.shape) != tuple(shape):
            raise InputShapeError(
                f"input {name!r} has shape {tuple(v.shape)}, model expects {tuple(shape)}")
        if v.dtype != np.dtype(dtype):
            raise InputShapeError(f"input {name!r} has dtype {v.dtype}, model expects {dtype}")
        out[name] = np.ascontiguousarray(v)
    return out


def model_io(model, batch=None, shape=None):
    """([(name, shape, dtype)] of real inputs with static shapes, [output names])."""
    from .models import input_specs, output_names

    shapes = input_shapes(model, batch, shape)
    specs = [(n, shapes[n], d) for n, _s, d in input_specs(model)]
    return specs, output_names(model)


__all__ = ["read_onnx", "with_batch", "input_shapes", "load_onnx", "validate_inputs", "model_io"]
