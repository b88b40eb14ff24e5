"""The ``polyinf`` TVM targets.

TVM 0.27 has no Python API for a new target kind, so a polyinf target is an ``llvm``
target (host code for operators left on the CPU) whose ``keys`` contain ``"polyinf"``
and whose ``model`` field names the hardware config.  TVM drops the tag name when it
builds a Target from a tag (``Target("polyinf").tag == ""``), so everything here
dispatches on ``keys`` and ``model``, never on the tag.

Tags (registered at ``import tvm`` through the ``tvm.backends`` entry point):

=================  ==================================  ==========
tag                hardware                            model
=================  ==================================  ==========
``polyinf``        NeuronCore-v2 (Inferentia2/Trn1)    ``inf2``
``polyinf/inf2``   NeuronCore-v2                       ``inf2``
``polyinf/inf1``   NeuronCore-v1 (Inferentia)          ``inf1``
=================  ==================================  ==========

A user's own hardware config: ``tvm_poly.target("/path/to/my.toml")`` returns a Target
whose ``model`` is the absolute path (the string form
``"llvm -keys=polyinf,cpu -model=/path/to/my.toml"`` is equivalent).
"""
from __future__ import annotations

import os

from .errors import TargetError

KEY = "polyinf"
TAGS = {"polyinf": "inf2", "polyinf/inf2": "inf2", "polyinf/inf1": "inf1"}
CONFIG_NAMES = ("inf2", "inf1")

_registered = False


def _tag_config(model: str) -> dict:
    return {"kind": "llvm", "keys": [KEY, "cpu"], "model": model}


def register_tags() -> None:
    """Register the polyinf tags with TVM (idempotent)."""
    global _registered
    if _registered:
        return
    from tvm.target import register_tag

    for tag, model in TAGS.items():
        register_tag(tag, _tag_config(model), override=True)
    _registered = True


def is_polyinf(target) -> bool:
    """True if ``target`` (a Target, or None) is a polyinf target."""
    if target is None:
        return False
    try:
        return KEY in tuple(target.keys)
    except AttributeError:
        return False


def make_target(spec="polyinf"):
    """A polyinf :class:`tvm.target.Target` from a tag, a config name or a TOML path.

    ``spec`` may be a Target already (returned unchanged if it is polyinf), one of the
    tags above, ``"inf1"``/``"inf2"``, or a path to a hardware-config TOML file (which is
    validated now).  Anything else raises :class:`TargetError`.
    """
    import tvm

    register_tags()
    if isinstance(spec, tvm.target.Target):
        if not is_polyinf(spec):
            raise TargetError(f"target {spec} is not a polyinf target (no 'polyinf' key)")
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TargetError(f"invalid target {spec!r}")
    spec = spec.strip()
    if spec in TAGS:
        return tvm.target.Target(spec)
    if spec in CONFIG_NAMES:
        return tvm.target.Target(_tag_config(spec))
    if spec.startswith("polyinf/") and not spec.endswith(".toml"):
        raise TargetError(
            f"unknown target {spec!r}; known: {', '.join(TAGS)} or a path to a config .toml")
    if spec.endswith(".toml") or os.sep in spec:
        path = os.path.abspath(os.path.expanduser(spec))
        load_hardware_config(path)  # validate now: a bad file is a TargetError here
        return tvm.target.Target(_tag_config(path))
    try:
        t = tvm.target.Target(spec)
    except Exception as e:  # TVM raises ValueError for unknown kinds
        raise TargetError(
            f"unknown target {spec!r}; known: {', '.join(TAGS)} or a path to a config .toml"
        ) from e
    if not is_polyinf(t):
        raise TargetError(f"target {spec!r} is not a polyinf target")
    return t


def parse_target(spec):
    """Like :func:`make_target` but also accepts ordinary TVM targets (e.g. ``"llvm"``)."""
    import tvm

    if isinstance(spec, tvm.target.Target):
        return spec
    try:
        return make_target(spec)
    except TargetError:
        if isinstance(spec, str) and not (spec.startswith("polyinf") or spec.endswith(".toml")):
            try:
                return tvm.target.Target(spec)
            except Exception as e:
                raise TargetError(
                    f"unknown target {spec!r}; known: {', '.join(TAGS)}, a config .toml, "
                    "or any TVM target such as 'llvm'") from e
        raise


def config_spec(target) -> str:
    """The hardware-config name or path a polyinf target refers to (its ``model``)."""
    if not is_polyinf(target):
        raise TargetError(f"target {target} is not a polyinf target")
    model = str(target.attrs.get("model", "")) if hasattr(target, "attrs") else ""
    return model or "inf2"


def load_hardware_config(spec: str):
    """``target.config.load_config(spec)`` with errors turned into :class:`TargetError`."""
    from target.config import load_config

    if spec not in CONFIG_NAMES and not os.path.exists(spec):
        raise TargetError(f"hardware config not found: {spec}")
    try:
        return load_config(spec)
    except Exception as e:
        raise TargetError(f"invalid hardware config {spec}: {e}") from e


def resolve_config(target=None):
    """The :class:`target.config.HardwareConfig` of a polyinf target (default: current)."""
    import tvm

    if target is None:
        target = tvm.target.Target.current(allow_none=True)
    return load_hardware_config(config_spec(target))


__all__ = ["KEY", "TAGS", "register_tags", "is_polyinf", "make_target", "parse_target",
           "config_spec", "load_hardware_config", "resolve_config"]
