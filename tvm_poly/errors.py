"""Typed errors of the tvm-poly compiler and its user-facing surface.

Every error a user can cause (a bad model file, a wrong input, an unknown target or
planner, a hardware config too small for the model) is a :class:`TvmPolyError`
subclass whose message is one line naming the problem.  The CLI prints
``error: <message>`` and exits non-zero for these; anything else is a bug.
Simulator-side errors live in ``target.errors``.
"""
from __future__ import annotations


class TvmPolyError(Exception):
    """Base class of all tvm-poly compiler / user errors."""

    def __str__(self) -> str:  # keep messages on one line
        return " ".join(super().__str__().split())


class ModelError(TvmPolyError):
    """The model file is malformed, truncated, or not a valid ONNX model."""


class UnsupportedOperatorError(ModelError):
    """The model uses operators nobody can compile (not even the host path)."""

    PREFIX = "unsupported ONNX operator(s): "

    def __init__(self, ops, detail: str = ""):
        if isinstance(ops, str):  # re-created from its message (e.g. across TVM's FFI)
            if ops.startswith(self.PREFIX):
                super().__init__(ops)
                self.ops = [o.strip() for o in ops[len(self.PREFIX):].split("(")[0].split(",")]
                return
            ops = [ops]
        self.ops = sorted(set(ops))
        msg = self.PREFIX + ", ".join(self.ops)
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class DynamicShapeError(ModelError):
    """The model has symbolic/unknown dimensions and no value was given for them."""


class InputShapeError(TvmPolyError):
    """A run-time input has the wrong name, shape or dtype."""


class TargetError(TvmPolyError):
    """Unknown target, or an unreadable / invalid hardware config."""


class PlannerError(TvmPolyError):
    """Unknown planner, or the planner could not produce a plan."""


class CapacityError(PlannerError):
    """The hardware config cannot hold the smallest legal tile (SBUF/PSUM too small)."""


class OptionError(TvmPolyError):
    """An invalid compile option (dtype, ...)."""


class RuntimeProgramError(TvmPolyError):
    """A compiled polyinf program could not be loaded or run."""


def _register_with_ffi() -> None:
    """Let these errors cross TVM's FFI (e.g. raised inside a pass run by tvm.compile)
    with their type intact instead of turning into RuntimeError."""
    try:
        import tvm_ffi
    except ImportError:
        return
    for cls in (TvmPolyError, ModelError, UnsupportedOperatorError, DynamicShapeError,
                InputShapeError, TargetError, PlannerError, CapacityError, OptionError,
                RuntimeProgramError):
        try:
            tvm_ffi.register_error(cls.__name__, cls)
        except Exception:  # already registered / name taken: keep going
            pass


_register_with_ffi()

__all__ = [
    "TvmPolyError", "ModelError", "UnsupportedOperatorError", "DynamicShapeError",
    "InputShapeError", "TargetError", "PlannerError", "CapacityError", "OptionError",
    "RuntimeProgramError",
]
