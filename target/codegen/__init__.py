"""Per-operator codegen for the polyinf target: plan groups -> NeuronCore instructions.

* :mod:`.emitter`: :class:`Emitter` (tiles, automatic semaphores, DMA queue balancing),
  :class:`Tile`, :class:`TilePool`.
* :mod:`.values`: :class:`Value` tensor handles (HBM or SBUF-resident placement).
* one module per operator family (:mod:`.elementwise`, :mod:`.conv`, :mod:`.matmul`, :mod:`.pool`).
* :data:`LOWERINGS`: plan-group kind -> ``fn(ctx, group)``; see notes/codegen.md.
"""
from __future__ import annotations

from .emitter import AllocationError, CodegenError, Emitter, Tile, TilePool
from .values import Value

LOWERINGS: dict = {}


def register_lowering(kind: str):
    """Decorator: ``@register_lowering("softmax") def lower(ctx, group): ...``."""
    def deco(fn):
        LOWERINGS[kind] = fn
        return fn
    return deco


from . import lowerings  # noqa: E402,F401  (registers the built-in lowerings)

__all__ = ["Emitter", "Tile", "TilePool", "Value", "CodegenError", "AllocationError", "LOWERINGS",
           "register_lowering"]
