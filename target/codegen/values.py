"""Tensor handles that operator codegen reads and writes.

A :class:`Value` is a logical tensor (row-major shape, ISA dtype) with a placement:

* ``hbm``: an :class:`HbmRef` (the per-op planner puts every tensor here), or
* ``sbuf``: a resident :class:`Tile` in the *row-split layout*: the row-major tensor of
  ``size`` elements is cut into ``tile.partitions`` rows of ``L = size / rows`` contiguous
  elements; flat element ``e`` lives on partition ``e // L`` at element ``e % L`` of the tile.
  For NCHW with N = 1 this is "one channel per partition" when C <= 128 and the kernels'
  *blocked* mapping (channel p*CT + j on partition p, plane j) when C is a multiple of 128, so
  every kernel's HBM access pattern maps 1:1 onto the resident tile (an access whose row
  stride is not L raises CodegenError: e.g. cyclic tiles of a C=200 tensor cannot be resident).

* ``sbuf`` with ``cyclic``: the *cyclic layout* of a concat chain (DenseNet's dense-block
  buffer, N = 1): channel c on partition c % 128 of plane c // 128 (planes F = H*W elements
  apart on each partition), the last plane partial.  Every prefix of the channels is the same
  layout over the first planes, and 32 new channels land on 32 partitions at a start the
  engines accept, so a chain of concats never moves data.  Only whole-channel accesses inside
  one plane map onto it (:meth:`flat_ap` with row stride F).

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
    images: int = 1  # resident only: > 1 = per-image row-split (image n's rows at n * L on each partition)
    base: Optional["Value"] = None  # row window: this Value is rows [row0, row0 + H) of ``base``
    row0: int = 0
    cyclic: bool = False  # resident only: the cyclic channel layout (see the module docstring)

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
        return self.flat_ap(((n * C) + c0) * F + elem_off, nc, F, sizes, strides)

    def window(self, row0: int, rows: int) -> "Value":
        """Rows [row0, row0 + rows) of an NCHW tensor as a Value of shape (N, C, rows, W) over the
        same placement (HBM or SBUF-resident): operator code runs unchanged on a band of a
        tensor (the view translates its access patterns, see :meth:`flat_ap`)."""
        if len(self.shape) != 4 or not 0 <= row0 < row0 + rows <= self.shape[2]:
            raise CodegenError(f"{self.name}: no row window [{row0}, {row0 + rows}) of shape {self.shape}")
        root, r0 = (self.base, self.row0 + row0) if self.base is not None else (self, row0)
        N, C, _, W = self.shape
        return Value(f"{self.name}[rows {row0}:{row0 + rows}]", (N, C, rows, W), self.dtype, hbm=root.hbm,
                     sbuf=root.sbuf, partitions=root.partitions, images=root.images, base=root, row0=r0)

    def _to_base(self, elem_off, partitions, partition_stride, sizes, strides):
        """Translate an access over this row window's flat index space to its base tensor: a
        stride that is a multiple of the window's channel plane (rows x W) steps whole planes of
        the base; the other strides must stay inside one plane."""
        N, C, Hw, W = self.shape
        H = self.base.shape[2]
        Fw, F = Hw * W, H * W
        q, r = divmod(int(elem_off), Fw)
        span = r
        out_strides = []
        for n, st in zip(sizes, strides):
            if n > 1 and st % Fw == 0:
                out_strides.append(st // Fw * F)
            else:
                out_strides.append(st)
                span += (n - 1) * abs(st)
        ps = partition_stride
        if ps % Fw == 0:
            ps = ps // Fw * F
        else:  # rows inside one plane: must not leave it either
            span += (partitions - 1) * abs(partition_stride)
        if span >= Fw:
            raise CodegenError(f"{self.name}: access pattern crosses a channel plane of the row window")
        return q * F + self.row0 * W + r, ps, tuple(out_strides)

    def flat_ap(self, elem_off: int, partitions: int, partition_stride: int, sizes, strides) -> isa.AP:
        """AP over the flat row-major tensor: row p (of ``partitions``) starts at element
        ``elem_off + p * partition_stride``."""
        if self.base is not None:
            off, ps, st = self._to_base(elem_off, partitions, partition_stride, sizes, strides)
            return self.base.flat_ap(off, partitions, ps, sizes, st)
        if self.hbm is not None:
            return self.hbm.ap(elem_off, partitions, partition_stride, sizes, strides)
        if self.sbuf is not None and self.cyclic:
            return self._cyclic_ap(elem_off, partitions, partition_stride, sizes, strides)
        if self.sbuf is not None:
            rows = self.sbuf.partitions
            img = self.size // max(1, self.images)
            if img % rows or self.size % max(1, self.images):
                raise CodegenError(f"{self.name}: {self.size} elements do not split into {rows} rows")
            L = img // rows
            n_img, r = divmod(int(elem_off), img)
            p0, off = divmod(r, L)
            off += n_img * L  # images > 1: each partition holds row p of every image, image-major
            if partitions > 1 and partition_stride != L:
                raise CodegenError(f"resident {self.name}: access with row stride {partition_stride} "
                                   f"does not match its layout ({rows} rows of {L})")
            return self.sbuf.ap(sizes, strides, off, partitions=partitions, start=p0, dtype=self.dtype)
        raise CodegenError(f"value {self.name} has no placement")

    def planes(self) -> int:
        """Channel planes per partition (the cyclic layout: ceil(C / 128))."""
        _, C, _ = self.ncf()
        return -(-C // self.sbuf.partitions) if self.cyclic else 1

    def _cyclic_ap(self, elem_off, partitions, partition_stride, sizes, strides) -> isa.AP:
        """flat_ap over the cyclic layout: rows are channels (stride F), inside one plane."""
        N, C, F = self.ncf()
        if N != 1:
            raise CodegenError(f"cyclic resident {self.name}: one image only")
        c0, f = divmod(int(elem_off), F)
        P = self.sbuf.partitions
        span = f
        for n, st in zip(sizes, strides):
            span += (n - 1) * abs(st)
        if (partitions > 1 and partition_stride != F) or span >= F or \
                c0 // P != (c0 + partitions - 1) // P:
            raise CodegenError(f"cyclic resident {self.name}: access at element {elem_off} over {partitions} "
                               f"rows of stride {partition_stride} is not whole channels of one plane")
        return self.sbuf.ap(sizes, strides, (c0 // P) * F + f, partitions=partitions, start=c0 % P, dtype=self.dtype)
