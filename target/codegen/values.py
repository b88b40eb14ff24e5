"""Tensor handles that operator codegen reads and writes.

A :class:`Value` is a logical tensor (row-major shape, ISA dtype) with a placement:

* ``hbm``: an :class:`HbmRef` (the per-op planner puts every tensor here), or
* ``sbuf``: a resident :class:`Tile` in the *channel-tiled layout*: for a tensor viewed as
  ``[N, C, F]`` (F = product of the trailing dims), channel ``c`` of image ``n`` lives on
  partition ``c % 128`` at element offset ``((c // 128) * N + n) * F`` of the tile.
  Kernels reading or writing a resident value use the cyclic channel mapping for it
  (``conv.ChanMap(C, P, cyclic=True)``); flat accesses must be channel-row shaped.

Operator code asks for access patterns through :meth:`Value.chan_ap` /
:meth:`Value.flat_ap` and moves data with DMA; a DMA from a resident value is an
SBUF->SBUF copy, so the same operator code serves both placements (a later planner
can additionally skip the copy by computing on the resident tile directly).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from target import isa
from .emitter import CodegenError, HbmRef, Tile


def prod(xs):
    n = 1
    for x in xs:
        n *= int(x)
    return n


@dataclass
class Value:
    name: str
    shape: tuple
    dtype: str  # ISA dtype (fp32 | bf16)
    hbm: Optional[HbmRef] = None
    sbuf: Optional[Tile] = None
    partitions: int = 128

    @property
    def itemsize(self):
        return isa.DTYPES[self.dtype]

    @property
    def size(self):
        return prod(self.shape)

    def ncf(self, channel_axis: int = 1):
        """(N, C, F) view: dims before the channel axis, the channel axis, dims after."""
        s = self.shape
        if len(s) == 0:
            return 1, 1, 1
        if len(s) == 1:
            return 1, s[0], 1
        return prod(s[:channel_axis]), s[channel_axis], prod(s[channel_axis + 1:])

    def chan_ap(self, n: int, c0: int, nc: int, elem_off: int, sizes, strides,
                channel_axis: int = 1) -> isa.AP:
        """AP over channels [c0, c0+nc) of image n: partition = channel; the free dims
        (``sizes``/``strides`` in elements) index inside one channel plane from ``elem_off``."""
        N, C, F = self.ncf(channel_axis)
        if self.hbm is not None:
            return self.hbm.ap(((n * C) + c0) * F + elem_off, nc, F, sizes, strides)
        if self.sbuf is not None:
            P = self.partitions
            if c0 // P != (c0 + nc - 1) // P:
                raise CodegenError(f"{self.name}: channel range crosses a partition tile")
            off = ((c0 // P) * N + n) * F + elem_off
            return self.sbuf.ap(sizes, strides, off, partitions=nc, start=c0 % P, dtype=self.dtype)
        raise CodegenError(f"value {self.name} has no placement")

    def flat_ap(self, elem_off: int, partitions: int, partition_stride: int, sizes, strides) -> isa.AP:
        """AP over the flat row-major tensor: row p (of ``partitions``) starts at element
        ``elem_off + p * partition_stride``.  For a resident value the rows must be channel
        planes (partition_stride == F, or a single row inside one plane)."""
        if self.hbm is not None:
            return self.hbm.ap(elem_off, partitions, partition_stride, sizes, strides)
        if self.sbuf is not None:
            N, C, F = self.ncf()
            nc_, f = divmod(int(elem_off), F)
            n, c = divmod(nc_, C)
            if partitions > 1 and partition_stride != F:
                raise CodegenError(f"resident {self.name}: flat access with row stride {partition_stride} "
                                   f"is not channel-row shaped (F={F})")
            return self.chan_ap(n, c, partitions, f, sizes, strides)
        raise CodegenError(f"value {self.name} has no placement")
