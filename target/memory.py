"""The core's memories as real NumPy byte arrays, with shadow "written" bitmaps.

* SBUF: ``partitions x bytes_per_partition`` uint8 array.
* PSUM: ``partitions x (banks * bank_bytes)`` uint8 array.
* HBM: one flat uint8 array over the *program's used extent* (the end of its last HbmTensor), not
  the config's full size; every address is checked against both that extent and the config's
  HBM size.

An access pattern becomes an ``np.ndarray`` view (no copy) onto the byte array with the AP's
shape, strides and dtype; the same geometry over the shadow array (one flag per byte) tells
whether every byte read was ever written.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .isa import AP, Mem

NP_DTYPES = {"fp32": np.dtype(np.float32), "bf16": np.dtype(ml_dtypes.bfloat16),
             "fp16": np.dtype(np.float16), "int32": np.dtype(np.int32)}


def ap_extent(ap: AP) -> tuple[int, int]:
    """[lo, hi) byte range of the AP inside one partition (SBUF/PSUM) or in flat HBM."""
    isz = ap.itemsize
    lo = hi = 0
    dims = list(zip(ap.sizes, ap.strides))
    if ap.mem == Mem.HBM:
        dims.append((ap.num_partitions, ap.partition_stride))
    for n, s in dims:
        d = (n - 1) * s
        if d < 0:
            lo += d
        else:
            hi += d
    return ap.offset + lo * isz, ap.offset + hi * isz + isz


def _contiguous(dims) -> bool:
    """(|stride|, size) pairs that tile one contiguous run of elements."""
    run = 1
    for s, n in sorted(dims):
        if s != run:
            return False
        run *= n
    return True


def ap_dense(ap: AP) -> bool:
    """True when the AP touches every byte of its extent exactly once."""
    dims = [(abs(s), n) for n, s in zip(ap.sizes, ap.strides) if n > 1]
    if ap.mem == Mem.HBM and ap.num_partitions > 1:
        dims.append((abs(ap.partition_stride), ap.num_partitions))
    return _contiguous(dims)


def ap_dense_rows(ap: AP) -> bool:
    """Each row (partition) is one contiguous byte range."""
    return _contiguous((abs(s), n) for n, s in zip(ap.sizes, ap.strides) if n > 1)


def ap_element_offsets(ap: AP) -> np.ndarray:
    """Byte offsets (within a partition, or flat for HBM) of every element, as int64."""
    isz = ap.itemsize
    off = np.zeros((1,), dtype=np.int64) + ap.offset
    dims = list(zip(ap.sizes, ap.strides))
    if ap.mem == Mem.HBM:
        dims.insert(0, (ap.num_partitions, ap.partition_stride))
    for n, s in dims:
        off = (off[:, None] + np.arange(n, dtype=np.int64)[None, :] * (s * isz)).reshape(-1)
    return off


class Memory:
    """One memory: bytes + written-flags. ``rows`` partitions of ``row_bytes`` (HBM: rows=1)."""

    def __init__(self, kind: Mem, rows: int, row_bytes: int, limit: int | None = None):
        self.kind = kind
        self.rows = rows
        self.row_bytes = row_bytes
        self.limit = limit  # HBM only: the config's HBM size
        self.data = np.zeros((rows, row_bytes), dtype=np.uint8)
        self.written = np.zeros((rows, row_bytes), dtype=np.uint8)

    # ---------------------------------------------------------------- geometry
    def check(self, ap: AP) -> str | None:
        """Return a description of what is out of range, or None."""
        if ap.mem != self.kind:
            return f"operand in {ap.mem.value} checked against {self.kind.value}"
        if any(n < 1 for n in ap.sizes) or ap.num_partitions < 1:
            return f"empty access pattern (sizes {ap.sizes}, {ap.num_partitions} partitions)"
        lo, hi = ap_extent(ap)
        if self.kind == Mem.HBM:
            if ap.start_partition != 0:
                return "HBM access patterns must have start_partition 0 (use offset)"
            if lo < 0:
                return f"HBM address {lo} is negative"
            if hi > self.limit:
                return f"HBM bytes [{lo}, {hi}) exceed the config's HBM size {self.limit}"
            if hi > self.row_bytes:
                return (f"HBM bytes [{lo}, {hi}) fall outside the program's HBM tensors "
                        f"(used extent {self.row_bytes} B)")
            return None
        name = self.kind.value.upper()
        if ap.start_partition < 0 or ap.start_partition + ap.num_partitions > self.rows:
            return (f"{name} partitions [{ap.start_partition}, {ap.start_partition + ap.num_partitions})"
                    f" outside [0, {self.rows})")
        if lo < 0 or hi > self.row_bytes:
            return f"{name} bytes [{lo}, {hi}) per partition outside [0, {self.row_bytes})"
        return None

    def _geometry(self, ap: AP):
        isz = ap.itemsize
        if self.kind == Mem.HBM:
            shape = (ap.num_partitions, *ap.sizes)
            strides = (ap.partition_stride * isz, *(s * isz for s in ap.strides))
            return shape, strides, ap.offset
        shape = (ap.num_partitions, *ap.sizes)
        strides = (self.row_bytes, *(s * isz for s in ap.strides))
        return shape, strides, ap.start_partition * self.row_bytes + ap.offset

    def view(self, ap: AP) -> np.ndarray:
        shape, strides, off = self._geometry(ap)
        return np.ndarray(shape, dtype=NP_DTYPES[ap.dtype], buffer=self.data, offset=off, strides=strides)

    def written_view(self, ap: AP) -> np.ndarray:
        shape, strides, off = self._geometry(ap)
        return np.ndarray(shape + (ap.itemsize,), dtype=np.uint8, buffer=self.written, offset=off,
                          strides=strides + (1,))

    def _rows_view(self, ap: AP):
        """For an AP whose every row (partition) is one contiguous byte range: a 2-D
        [rows, bytes] view of the shadow array (fast path), else None."""
        if not ap_dense_rows(ap):
            return None
        lo = ap.offset
        for n, s in zip(ap.sizes, ap.strides):
            if s < 0:
                lo += (n - 1) * s * ap.itemsize
        w = ap.free_elems * ap.itemsize
        if self.kind == Mem.HBM:
            if ap.partition_stride < 0 or (ap.num_partitions - 1) * ap.partition_stride * ap.itemsize + lo + w > self.row_bytes:
                return None  # let the bounds-checked general path handle it
            return np.lib.stride_tricks.as_strided(self.written[0, lo:], (ap.num_partitions, w),
                                                   (ap.partition_stride * ap.itemsize, 1))
        return self.written[ap.start_partition:ap.start_partition + ap.num_partitions, lo:lo + w]

    def all_written(self, ap: AP) -> bool:
        v = self._rows_view(ap)
        if v is None:
            v = self.written_view(ap)
        return bool(v.all())

    def mark_written(self, ap: AP) -> None:
        v = self._rows_view(ap)
        if v is None:
            v = self.written_view(ap)
        v[...] = 1

    def read_f32(self, ap: AP) -> np.ndarray:
        """The AP's elements as float32, shape ap.shape (a read-only use: may be a view)."""
        v = self.view(ap)
        if ap.dtype == "bf16":  # exact widening by bit shift (faster than a dtype cast)
            return (v.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return v.astype(np.float32, copy=False)  # fp32: a view (callers never write through it)

    def written_bytes(self) -> int:
        return int(np.count_nonzero(self.written))


class LiveBytes:
    """Peak live bytes of an on-chip memory, at ``granule``-byte granularity per partition.

    A granule becomes live when an instruction writes it (at that instruction's start) and stays
    live until the last read of that value ends (a value never read is live only at its write);
    operands are taken by their bounding box (partition range x byte range).  The peak of the sum
    over time is the memory's peak live footprint -- what an allocator that gives a tile its space
    at the first write and frees it after the last read (NKI's linear scan) needs at least.
    """

    def __init__(self, rows: int, row_bytes: int, granule: int = 64):
        self.g = granule
        n = -(-row_bytes // granule)
        self.lw = np.full((rows, n), -1, dtype=np.int64)  # start tick of the live value's write
        self.lr = np.full((rows, n), -1, dtype=np.int64)  # end tick of its last read so far
        self.ev_t: list = []
        self.ev_c: list = []

    def _box(self, ap: AP):
        lo, hi = ap_extent(ap)
        return (slice(ap.start_partition, ap.start_partition + ap.num_partitions),
                slice(lo // self.g, -(-hi // self.g)))

    def read(self, ap: AP, end: int) -> None:
        b = self._box(ap)
        np.maximum(self.lr[b], end, out=self.lr[b])

    def _retire(self, lw: np.ndarray, lr: np.ndarray) -> None:
        amin = lw.min()
        if amin == lw.max():  # usual case: one value written by one instruction
            if amin < 0:
                return
            emin, emax = lr.min(), lr.max()
            if emin == emax:
                self.ev_t.append(np.array([[amin], [max(emin, amin)]], dtype=np.int64))
                self.ev_c.append(np.array([lw.size], dtype=np.int64))
                return
        m = lw >= 0
        if not m.any():
            return
        a = lw[m]
        e = np.maximum(lr[m], a)
        order = np.lexsort((e, a))
        a, e = a[order], e[order]
        brk = np.flatnonzero((a[1:] != a[:-1]) | (e[1:] != e[:-1])) + 1
        starts = np.concatenate([[0], brk])
        cnt = np.diff(np.concatenate([starts, [a.size]]))
        self.ev_t.append(np.stack([a[starts], e[starts]]))
        self.ev_c.append(cnt)

    def write(self, ap: AP, start: int) -> None:
        b = self._box(ap)
        self._retire(self.lw[b], self.lr[b])
        self.lw[b] = start
        self.lr[b] = -1

    def peak_bytes(self) -> int:
        self._retire(self.lw, self.lr)
        self.lw[...] = -1
        if not self.ev_t:
            return 0
        pairs = np.concatenate(self.ev_t, axis=1)
        cnt = np.concatenate(self.ev_c)
        # +cnt at the write's start, -cnt just after the last read ends ([start, end] inclusive)
        t = np.concatenate([pairs[0] * 2 + 1, pairs[1] * 2 + 2])
        d = np.concatenate([cnt, -cnt])
        order = np.argsort(t, kind="stable")
        t, d = t[order], d[order]
        # apply all deltas at one instant before taking the running maximum
        uniq, idx = np.unique(t, return_index=True)
        sums = np.add.reduceat(d, idx)
        return int(np.cumsum(sums).max()) * self.g
