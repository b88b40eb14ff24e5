"""The program's block of small per-kernel constants, pinned in SBUF for the whole program.

Every conv2d's epilogue reads a per-output-channel (scale, bias) pair: ``2 x KT`` fp32 columns
on ``Mk`` partitions, 16-64 B per partition.  Loaded per kernel, each is a DMA far below the
efficiency knee (a 16 B row costs ~the 256 B minimum) plus its 1.3 us trigger latency.  The
block puts every kernel's columns side by side in one ``[partitions, columns]`` fp32 HBM
constant that one split DMA brings in at program start, into an SBUF tile at the bottom of the
address range that is never freed; planners keep that range out of their resident capacity
(:func:`block_bytes`).

``columns(groups, tensor_map, P)`` decides the layout from shapes only (before codegen), the
values are written into the HBM array as each kernel is lowered (:meth:`ConstBlock.put`).
"""
from __future__ import annotations

import numpy as np


def columns(groups, tensor_map, partitions: int = 128) -> dict:
    """Group name -> fp32 columns it owns in the block (a conv2d with a batch-norm or bias
    epilogue: scale and bias per output-channel tile; a batch_norm kernel: its scale and shift)."""
    from .conv import ChanMap
    from .elementwise import affine_columns

    out = {}
    for g in groups:
        if g.name in out:
            continue
        if g.kind == "conv2d" and (g.param("bn") or g.param("bias")):
            out[g.name] = 2 * ChanMap(int(tensor_map[g.output].shape[1]), partitions).T
        elif g.kind == "batch_norm" and len(tensor_map[g.output].shape) >= 2:
            out[g.name] = affine_columns(int(tensor_map[g.output].shape[1]), partitions)
    return out


def block_bytes(groups, tensor_map, partitions: int = 128) -> int:
    """SBUF bytes per partition the block takes (64-byte aligned, as the allocator rounds)."""
    n = sum(columns(groups, tensor_map, partitions).values()) * 4
    return 0 if n == 0 else -(-n // 64) * 64


class ConstBlock:
    """One HBM constant + one SBUF tile holding every group's columns (see module docstring)."""

    def __init__(self, em, const, constants: dict, cols: dict, partitions: int):
        """``const(name, array, dtype)`` makes an HBM constant whose values end up in
        ``constants`` (hbm name -> array); ``cols``: :func:`columns`."""
        self.offsets, n = {}, 0
        for name, c in cols.items():
            self.offsets[name] = (n, c)
            n += c
        self.tile = self.array = None
        if n == 0:
            return
        value = const("const_block", np.zeros((partitions, n), np.float32), "fp32")
        self.array = constants[value.name]  # filled in by put() as the kernels are lowered
        self.tile = em.sbuf_tile(partitions, n * 4, "fp32", "const_block")
        tag, em.tag = em.tag, "const_block"
        em.dma_split(self.tile.ap((n,)), value.flat_ap(0, partitions, n, (n,), (1,)))
        em.tag = tag

    def holds(self, name: str) -> bool:
        return self.tile is not None and name in self.offsets

    def put(self, name: str, arr: np.ndarray):
        """Store ``arr`` [rows, cols] as group ``name``'s columns; returns (tile, first column), or
        None when the block has no room for them (the reservation follows the kernels' default
        channel map; a planned layout with more planes -- poly.aligned_concat_rows -- needs more
        columns): the kernel then loads its own."""
        if self.tile is None or name not in self.offsets:
            return None
        c0, c = self.offsets[name]
        arr = np.asarray(arr, np.float32)
        if arr.shape[1] > c or arr.shape[0] > self.tile.partitions:
            return None
        self.array[: arr.shape[0], c0:c0 + arr.shape[1]] = arr
        return self.tile, c0
