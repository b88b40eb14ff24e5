"""A façade of ``tvm.contrib.graph_executor`` over a Relax VM (see :mod:`tvm_poly.relay`).

``GraphModule(lib["default"](dev))`` with ``set_input(name|index, value)``,
``run(**inputs)``, ``get_output(i)``, ``get_num_outputs()``, ``get_input(name|index)``,
``get_num_inputs()``, ``get_input_index(name)``.  Inputs are checked (name, shape, dtype)
and a wrong one raises :class:`tvm_poly.errors.InputShapeError`.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputShapeError


class _VMGraphModule:
    """The runtime object ``lib["default"](dev)`` returns."""

    def __init__(self, executable, dev, input_specs, output_names):
        import tvm
        from tvm import relax

        self.dev = dev
        self.vm = relax.VirtualMachine(executable, dev)
        self._specs = [(n, tuple(s) if s is not None else None, d) for n, s, d in input_specs]
        self.input_names = [s[0] for s in self._specs]
        self.output_names = list(output_names)
        self._inputs = [None] * len(self._specs)
        self._outputs = []
        self._tvm = tvm

    def index(self, key) -> int:
        if isinstance(key, (int, np.integer)):
            if not 0 <= int(key) < len(self._specs):
                raise InputShapeError(f"input index {key} out of range (model has {len(self._specs)})")
            return int(key)
        if key in self.input_names:
            return self.input_names.index(key)
        raise InputShapeError(f"unknown input {key!r}; model inputs: {', '.join(self.input_names)}")

    def set_input(self, key=None, value=None, **params):
        if key is not None:
            self._set(self.index(key), value)
        for k, v in params.items():
            self._set(self.index(k), v)

    def _set(self, i, value):
        name = self.input_names[i]
        _pname, shape, dtype = self._specs[i]
        arr = value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else np.asarray(value)
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise InputShapeError(f"input {name!r} has shape {tuple(arr.shape)}, model expects {tuple(shape)}")
        if dtype is not None and arr.dtype != np.dtype(dtype):
            raise InputShapeError(f"input {name!r} has dtype {arr.dtype}, model expects {dtype}")
        self._inputs[i] = self._tvm.runtime.tensor(np.ascontiguousarray(arr), self.dev)

    def run(self, **inputs):
        if inputs:
            self.set_input(**inputs)
        missing = [self.input_names[i] for i, v in enumerate(self._inputs) if v is None]
        if missing:
            raise InputShapeError(f"input(s) not set: {', '.join(missing)}")
        out = self.vm["main"](*self._inputs)
        if isinstance(out, self._tvm.runtime.Tensor):
            self._outputs = [out]
        else:
            self._outputs = list(out)

    def get_output(self, index, out=None):
        if not self._outputs:
            raise InputShapeError("get_output before run()")
        res = self._outputs[index]
        if out is not None:
            res.copyto(out)
            return out
        return res

    def get_num_outputs(self):
        return len(self._outputs) if self._outputs else max(len(self.output_names), 1)

    def get_input(self, key, out=None):
        v = self._inputs[self.index(key)]
        if v is None:
            raise InputShapeError(f"input {key!r} not set")
        if out is not None:
            v.copyto(out)
            return out
        return v

    def get_num_inputs(self):
        return len(self._specs)

    def get_input_index(self, name):
        return self.index(name)


class GraphModule:
    """``tvm.contrib.graph_executor.GraphModule`` over a polyinf/llvm Relax executable."""

    def __init__(self, module):
        if not isinstance(module, _VMGraphModule):
            raise TypeError("GraphModule expects lib['default'](dev) from tvm_poly.relay.build")
        self.module = module

    def set_input(self, key=None, value=None, **params):
        self.module.set_input(key, value, **params)

    def run(self, **input_dict):
        self.module.run(**input_dict)

    def get_output(self, index, out=None):
        return self.module.get_output(index, out)

    def get_num_outputs(self):
        return self.module.get_num_outputs()

    def get_input(self, index, out=None):
        return self.module.get_input(index, out)

    def get_num_inputs(self):
        return self.module.get_num_inputs()

    def get_input_index(self, name):
        return self.module.get_input_index(name)

    def __getitem__(self, key):
        return getattr(self, key)


def create(*_args, **_kwargs):
    raise NotImplementedError(
        "graph_executor.create(graph_json, lib, dev) needs a Relay graph JSON; use "
        "GraphModule(lib['default'](dev)) with lib from tvm_poly.relay.build")


__all__ = ["GraphModule", "create"]
