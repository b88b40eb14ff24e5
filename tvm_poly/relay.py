"""A façade of the old ``tvm.relay`` API for scripts written before Relay was removed.

This is **not** Relay: TVM 0.27 has no Relay.  ``from tvm_poly import relay`` gives the
two entry points those scripts use, implemented on Relax, so a script runs with only
its import lines changed::

    from tvm_poly import relay                      # was: from tvm import relay
    from tvm_poly.contrib import graph_executor     # was: from tvm.contrib import graph_executor

    mod, params = relay.frontend.from_onnx(onnx_model, shape={"data": (1, 3, 224, 224)})
    with tvm.transform.PassContext(opt_level=3):
        lib = relay.build(mod, target="polyinf", params=params)
    m = graph_executor.GraphModule(lib["default"](tvm.cpu()))
    m.set_input("data", x); m.run(); y = m.get_output(0).numpy()

``mod`` is a Relax IRModule; ``lib`` wraps a Relax VM executable (``lib.export_library``
works; load it back with :func:`load_module`).  Works for ``target="llvm"`` too.
"""
from __future__ import annotations

import types

_NAMES_ATTR = "polyinf.onnx_input_names"
_OUT_ATTR = "polyinf.onnx_output_names"


def _from_onnx(model, shape=None, dtype="float32", opset=None, freeze_params=True,
               convert_config=None, export_node_renamed_model_path=None):
    """Relay-style ``from_onnx``: returns ``(mod, params)``.

    With ``freeze_params=True`` (default) weights are constants and ``params`` is empty;
    with ``False`` they are trailing parameters of ``main`` and ``params`` maps their
    names to ``tvm.runtime.Tensor`` (bind them again with ``relay.build(..., params=)``)."""
    from tvm import relax

    from .frontend import load_onnx, read_onnx
    from .models import input_specs, output_names

    model = read_onnx(model)
    # ``dtype``: accepted for compatibility; inputs keep the dtypes the ONNX model declares
    mod = load_onnx(model, shape=shape, keep_params_in_input=not freeze_params)
    params = {}
    if not freeze_params:
        mod, detached = relax.frontend.detach_params(mod)
        func = mod["main"]
        n_in = int(func.attrs["num_input"])
        for p, v in zip(list(func.params)[n_in:], detached.get("main", [])):
            params[p.name] = v
    func = mod["main"]
    names = [n for n, _s, _d in input_specs(model)]
    mod = mod.clone()
    mod["main"] = func.with_attr(_NAMES_ATTR, names).with_attr(_OUT_ATTR, output_names(model))
    return mod, params


frontend = types.SimpleNamespace(from_onnx=_from_onnx)


class ExecutorFactory:
    """What ``relay.build`` returns: ``lib["default"](dev)`` makes a graph-executor module."""

    def __init__(self, executable, input_specs, output_names, params=None):
        self.executable = executable
        self.input_specs = [(n, tuple(s) if s is not None else None, d) for n, s, d in input_specs]
        self.input_names = [s[0] for s in self.input_specs]
        self.output_names = list(output_names)
        self.params = dict(params or {})

    def __getitem__(self, key):
        if key != "default":
            raise KeyError(f"{key!r}: only 'default' is available")
        return self._create

    def _create(self, dev=None):
        import tvm

        from .contrib.graph_executor import _VMGraphModule

        return _VMGraphModule(self.executable, dev if dev is not None else tvm.cpu(),
                              self.input_specs, self.output_names)

    # old API spellings
    def get_lib(self):
        return self.executable

    def get_params(self):
        return dict(self.params)

    def export_library(self, path, **kwargs):
        """Export the executable (``tvm.runtime.load_module(path)`` or
        :func:`load_module` load it back; input names travel in a sidecar file)."""
        import json

        self.executable.export_library(path, **kwargs)
        with open(str(path) + ".io.json", "w", encoding="utf-8") as f:
            json.dump({"inputs": self.input_specs, "outputs": self.output_names}, f)


def load_module(path):
    """Load an ``ExecutorFactory`` exported with ``lib.export_library(path)``."""
    import json
    import os

    import tvm

    ex = tvm.runtime.load_module(path)
    side = str(path) + ".io.json"
    if not os.path.exists(side):
        from .errors import ModelError

        raise ModelError(f"{side} not found (written by ExecutorFactory.export_library)")
    with open(side, encoding="utf-8") as f:
        io = json.load(f)
    return ExecutorFactory(ex, io["inputs"], io["outputs"])


def build(mod, target=None, target_host=None, params=None, mod_name="default", executor=None,
          runtime=None):
    """Relay-style ``build``: compile ``mod`` (from :func:`frontend.from_onnx`) for
    ``target`` (``"polyinf"``, ``"polyinf/inf1"``, a config ``.toml``, or any TVM target
    such as ``"llvm"``); ``params`` are bound as constants.  Returns an ExecutorFactory."""
    import tvm
    from tvm import relax

    from .targets import parse_target

    tgt = parse_target(target if target is not None else "llvm")
    func = mod["main"]
    attrs = func.attrs if func.attrs is not None else {}
    input_names = list(attrs[_NAMES_ATTR]) if _NAMES_ATTR in attrs else None
    output_names = list(attrs[_OUT_ATTR]) if _OUT_ATTR in attrs else []
    if params:
        bind = {}
        for k, v in params.items():
            bind[k] = v if isinstance(v, tvm.runtime.Tensor) else tvm.runtime.tensor(v)
        mod = relax.transform.BindParams("main", bind)(mod)
    func = mod["main"]
    n_in = int(func.attrs["num_input"]) if func.attrs is not None and "num_input" in func.attrs \
        else len(func.params)
    if len(func.params) > n_in:
        missing = [p.name for p in list(func.params)[n_in:]]
        from .errors import InputShapeError

        raise InputShapeError(f"relay.build: no value for parameter(s) {', '.join(missing[:5])}"
                              + (" ..." if len(missing) > 5 else "") + "; pass params=")
    params_in = list(func.params)[:n_in]
    if input_names is None or len(input_names) != n_in:
        input_names = [p.name for p in params_in]
    specs = [(name, tuple(int(d) for d in p.ty.shape.values), str(p.ty.dtype))
             for name, p in zip(input_names, params_in)]
    ex = tvm.compile(mod, target=tgt)
    return ExecutorFactory(ex, specs, output_names, params)


__all__ = ["frontend", "build", "load_module", "ExecutorFactory"]
