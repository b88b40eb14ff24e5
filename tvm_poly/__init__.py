"""tvm-poly: a simulated NeuronCore (``polyinf``) backend for Apache TVM.

``import tvm`` loads this package through the ``tvm.backends`` entry point and calls
:func:`_autoload`, which registers the ``polyinf`` target tags, hooks the Relax
``"default"`` pipeline so ``tvm.compile(mod, target="polyinf")`` offloads to the
NeuronCore, and registers the ``polyinf.run`` packed function that the compiled
executables call.  Importing ``tvm_poly`` itself is light: heavy parts (ONNX, islpy,
the simulator) load on first use.

Python API (all lazily imported)::

    tvm_poly.target("polyinf/inf1" | "my.toml")   # -> tvm.target.Target
    with tvm_poly.options(planner="per-op", dtype="bfloat16"):
        ex = tvm.compile(mod, target="polyinf")
    tvm_poly.last_report()                          # report of the latest simulated run
    tvm_poly.load_onnx(path, batch=None, shape=None)
    tvm_poly.light_model("resnet50", seed=0)
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "target": ("tvm_poly.targets", "make_target"),
    "options": ("tvm_poly.pipeline", "options"),
    "current_options": ("tvm_poly.pipeline", "current_options"),
    "PolyinfPartition": ("tvm_poly.pipeline", "PolyinfPartition"),
    "last_report": ("tvm_poly.runtime", "last_report"),
    "load_onnx": ("tvm_poly.frontend", "load_onnx"),
    "light_model": ("tvm_poly.models", "light_model"),
    "errors": ("tvm_poly.errors", None),
}


def _autoload() -> None:
    """Entry point of the ``tvm.backends`` group: called by ``import tvm``."""
    from . import pipeline, runtime, targets

    targets.register_tags()
    pipeline.install_hook()
    runtime.register()


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod_name, attr = _LAZY[name]
        mod = importlib.import_module(mod_name)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'tvm_poly' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
