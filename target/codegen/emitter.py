"""The codegen Emitter: builds a :class:`target.isa.Program` from operator code.

Operator code never writes semaphores by hand.  It allocates tiles, builds access
patterns and calls ``em.emit(stream, InstrClass, **fields)`` (or the helpers
``dma``/``matmul``/``act``...).  The Emitter

* derives each instruction's reads and writes from its AP fields,
* tracks, per memory region (HBM bytes, SBUF/PSUM partitions x bytes), the last
  writer and the readers since, and makes every instruction wait for the
  instructions it conflicts with (RAW, WAR, WAW) on *other* streams,
* drops waits that are already implied (vector clocks: what each stream knows to
  have completed, transitively),
* at :meth:`finish` turns the remaining dependencies into per-stream counting
  semaphores (``sem_<stream>``): an instruction that somebody waits on signals its
  stream's semaphore, and a wait for it is ``Wait(sem_<stream>, rank)``.

Assumption (shared with the simulator): instructions of one stream start and
complete in program order, so same-stream dependencies need no semaphore and a
counting semaphore reaching ``rank`` means every earlier signaller completed.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

from target import isa
from target.isa import AP, Mem

ENGINE_STREAMS = ("tensor", "vector", "scalar", "gpsimd")


class CodegenError(ValueError):
    """Operator cannot be lowered (shape/config limits)."""


class AllocationError(CodegenError):
    """SBUF or PSUM cannot hold a requested tile."""


# ------------------------------------------------------------------ access regions
def ap_box(ap: AP):
    """Conservative bounding box (space, p0, p1, b0, b1) of an access pattern."""
    span = 1
    for s, st in zip(ap.sizes, ap.strides):
        if s > 1:
            span += (s - 1) * abs(st)
    if ap.mem == Mem.HBM:
        if ap.num_partitions > 1:
            span += (ap.num_partitions - 1) * abs(ap.partition_stride)
        # strides are non-negative in everything we emit; the 6th element describes the
        # rows (one per "partition" row): (row stride bytes, rows, row width bytes)
        it = ap.itemsize
        if ap.num_partitions > 1:
            row = (span - (ap.num_partitions - 1) * abs(ap.partition_stride)) * it
            rows = (abs(ap.partition_stride) * it, ap.num_partitions, row)
        else:
            rows = (0, 1, span * it)
        return ("hbm", 0, 1, ap.offset, ap.offset + span * it, rows)
    return (ap.mem.value, ap.start_partition, ap.start_partition + ap.num_partitions,
            ap.offset, ap.offset + span * ap.itemsize)


READ_FIELDS = ("src", "a", "b", "stationary", "moving", "bias", "scale", "operand0", "operand1")


class _Entry:
    __slots__ = ("p0", "p1", "b0", "b1", "write", "ref", "dead", "rows")

    def __init__(self, p0, p1, b0, b1, write, ref, rows=None):
        self.p0, self.p1, self.b0, self.b1, self.write, self.ref = p0, p1, b0, b1, write, ref
        self.rows = rows
        self.dead = False


def _rows_overlap(o1, r1, o2, r2) -> bool:
    """Exact test for two sets of equally spaced byte rows (HBM APs): rows i of the first at
    o1 + i*S, width w1; rows j of the second at o2 + j*S, width w2 (same S)."""
    S1, n1, w1 = r1
    S2, n2, w2 = r2
    if n1 == 1 and n2 == 1:
        return True
    if S1 != S2 or S1 == 0 or w1 > S1 or w2 > S2:
        return True
    S, d = S1, o2 - o1
    # need integer k = i - j in [-(n2-1), n1-1] with d - w1 < k*S < d + w2
    klo = (d - w1) // S + 1
    khi = -((-(d + w2)) // S) - 1
    return max(klo, -(n2 - 1)) <= min(khi, n1 - 1)


class _Bucket:
    __slots__ = ("w", "r", "rkey")

    def __init__(self):
        self.w, self.r, self.rkey = [], [], {}


class _Tracker:
    """Bucketed interval index of accesses per memory space.  Reads only need to be checked
    against writes (RAW), writes against both (WAR, WAW); a read identical to an earlier read
    of the same stream replaces it (stream order); each live entry is tested once per access;
    entries every stream already knows to be complete (``retired``) are dropped."""

    BUCKET = {"hbm": 1 << 18, "sbuf": 2048, "psum": 2048}

    def __init__(self):
        self.buckets: dict = defaultdict(_Bucket)
        self.retired: dict = {}  # stream -> highest index every stream has waited past

    def _scan(self, lst, p0, p1, b0, b1, rows, write, stream, deps, seen):
        retired = self.retired
        keep = []
        for e in lst:
            if e.dead:
                continue
            if 0 <= e.ref.idx <= retired.get(e.ref.stream, -1):
                e.dead = True
                continue
            eid = id(e)
            if eid in seen:
                keep.append(e)
                continue
            seen.add(eid)
            if e.p0 < p1 and p0 < e.p1 and e.b0 < b1 and b0 < e.b1:
                if rows is not None and e.rows is not None and not _rows_overlap(e.b0, e.rows, b0, rows):
                    keep.append(e)
                    continue
                deps.append(e.ref)
                if write and e.p0 >= p0 and e.p1 <= p1 and e.b0 >= b0 and e.b1 <= b1 and \
                        (rows is None or rows[1] == 1 or rows[2] >= rows[0]):
                    e.dead = True  # covered by this write, which is ordered after it
                    continue
            keep.append(e)
        return keep

    def peek(self, box, write: bool = True) -> int:
        """Latest estimated end (``ref.end``) of the live accesses an access to ``box`` would
        have to wait for (writes for a read; reads and writes for a write).  Changes nothing."""
        space, p0, p1, b0, b1 = box[:5]
        bs = self.BUCKET[space]
        retired = self.retired
        end = 0
        for k in range(b0 // bs, (b1 - 1) // bs + 1):
            b = self.buckets.get((space, k))
            if b is None:
                continue
            for lst in ((b.w, b.r) if write else (b.w,)):
                for e in lst:
                    if e.dead or e.ref.end <= end or 0 <= e.ref.idx <= retired.get(e.ref.stream, -1):
                        continue
                    if e.p0 < p1 and p0 < e.p1 and e.b0 < b1 and b0 < e.b1:
                        end = e.ref.end
        return end

    def access(self, box, write: bool, ref):
        space, p0, p1, b0, b1 = box[:5]
        rows = box[5] if len(box) > 5 else None
        bs = self.BUCKET[space]
        keys = [(space, k) for k in range(b0 // bs, (b1 - 1) // bs + 1)]
        deps = []
        seen = set()
        stream = ref.stream
        bk = [self.buckets[k] for k in keys]
        for b in bk:
            b.w = self._scan(b.w, p0, p1, b0, b1, rows, write, stream, deps, seen)
            if write:
                b.r = self._scan(b.r, p0, p1, b0, b1, rows, write, stream, deps, seen)
                b.rkey = {k: e for k, e in b.rkey.items() if not e.dead}
        if not write and stream is not None:
            rk = (stream, p0, p1, b0, b1, rows)
            old = bk[0].rkey.get(rk)
            if old is not None and not old.dead:
                old.ref = ref  # same region read again by the same stream: keep the newest
                return deps
        ent = _Entry(p0, p1, b0, b1, write, ref, rows)
        for b in bk:
            (b.w if write else b.r).append(ent)
        if not write and stream is not None:
            bk[0].rkey[(stream, p0, p1, b0, b1, rows)] = ent
        return deps


# ------------------------------------------------------------------ allocation
class _RangeAllocator:
    """First-fit allocator of byte ranges [0, size) (same range on every partition)."""

    def __init__(self, size: int, align: int, what: str):
        self.size, self.align, self.what = size, align, what
        self.free_list = [(0, size)]
        self.used = 0
        self.peak = 0
        self.cursor = 0  # next-fit: rotate addresses so consecutive kernels do not reuse them

    def _size(self, nbytes: int) -> int:
        return max(self.align, -(-nbytes // self.align) * self.align)

    def _take(self, i: int, a: int, n: int) -> int:
        """Cut [a, a+n) out of free range i."""
        fa, fb = self.free_list[i]
        self.free_list[i:i + 1] = ([(fa, a)] if a > fa else []) + ([(a + n, fb)] if a + n < fb else [])
        self.used += n
        self.peak = max(self.peak, self.used)
        return a

    def alloc(self, nbytes: int, ready=None) -> int:
        """``ready(offset, nbytes) -> tick``: when the range is free of earlier accesses (the
        emitter's estimate); the range that frees earliest wins (next-fit order on ties), so a
        prefetch is not queued behind a region that is read late."""
        n = self._size(nbytes)
        if ready is not None:
            cands = []
            for i, (a, b) in enumerate(self.free_list):
                if b - a >= n:
                    for off in {a, b - n} | ({self.cursor} if a < self.cursor <= b - n else set()):
                        cands.append((ready(off, n), (off - self.cursor) % self.size, i, off))
            if cands:
                _, _, i, a = min(cands)
                self.cursor = (a + n) % self.size
                return self._take(i, a, n)
        order = [i for i, (a, b) in enumerate(self.free_list) if b > self.cursor] + \
                [i for i, (a, b) in enumerate(self.free_list) if b <= self.cursor]
        for i in order:
            a, b = self.free_list[i]
            a = max(a, self.cursor) if b - max(a, self.cursor) >= n and a < self.cursor else a
            if b - a >= n:
                self.cursor = (a + n) % self.size
                return self._take(i, a, n)
        raise AllocationError(
            f"{self.what}: cannot allocate {nbytes} B per partition "
            f"({self.used} of {self.size} B in use, largest free range "
            f"{max((b - a for a, b in self.free_list), default=0)} B)")

    def reserve(self, off: int, nbytes: int):
        """Take the exact range [off, off+nbytes) (a planner-chosen resident allocation)."""
        n = self._size(nbytes)
        for i, (a, b) in enumerate(self.free_list):
            if a <= off and off + n <= b:
                return self._take(i, off, n)
        raise AllocationError(f"{self.what}: range [{off}, {off + n}) is not free")

    def free(self, off: int, nbytes: int):
        n = self._size(nbytes)
        self.used -= n
        fl = self.free_list + [(off, off + n)]
        fl.sort()
        merged = []
        for a, b in fl:
            if merged and merged[-1][1] == a:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        self.free_list = merged

    def largest_free(self) -> int:
        return max((b - a for a, b in self.free_list), default=0)


@dataclass
class Tile:
    """An SBUF or PSUM allocation: partitions [0, partitions), bytes [offset, offset+nbytes)."""
    mem: Mem
    partitions: int
    offset: int
    nbytes: int  # per partition
    dtype: str
    name: str = ""
    start_partition: int = 0

    @property
    def itemsize(self):
        return isa.DTYPES[self.dtype]

    @property
    def elems(self):
        return self.nbytes // self.itemsize

    def ap(self, sizes=None, strides=None, elem_offset: int = 0, partitions=None,
           start: int = 0, dtype: Optional[str] = None) -> AP:
        """View [np, *sizes] (strides in elements, default row-major) at ``elem_offset``."""
        dt = dtype or self.dtype
        if sizes is None:
            sizes = (self.nbytes // isa.DTYPES[dt],)
        sizes = tuple(int(s) for s in sizes)
        if strides is None:
            strides, acc = [], 1
            for s in reversed(sizes):
                strides.append(acc)
                acc *= s
            strides = tuple(reversed(strides))
        np_ = self.partitions - start if partitions is None else partitions
        ap = AP(self.mem, self.start_partition + start, int(np_),
                self.offset + elem_offset * isa.DTYPES[dt], sizes, tuple(int(s) for s in strides), dt)
        b = ap_box(ap)
        if b[4] > self.offset + self.nbytes or start + np_ > self.partitions:
            raise CodegenError(f"view {sizes}/{strides}@{elem_offset} exceeds tile {self.name} "
                               f"({self.partitions}x{self.nbytes}B)")
        return ap


@dataclass(frozen=True)
class HbmRef:
    """A tensor in HBM (row-major) plus helpers for access patterns over it."""
    tensor: isa.HbmTensor

    @property
    def name(self):
        return self.tensor.name

    @property
    def dtype(self):
        return self.tensor.dtype

    @property
    def shape(self):
        return self.tensor.shape

    def ap(self, elem_offset, partitions, partition_stride, sizes, strides) -> AP:
        it = isa.DTYPES[self.tensor.dtype]
        ap = AP(Mem.HBM, 0, int(partitions), self.tensor.offset + int(elem_offset) * it,
                tuple(int(s) for s in sizes), tuple(int(s) for s in strides), self.tensor.dtype,
                partition_stride=int(partition_stride))
        b = ap_box(ap)
        if b[3] < self.tensor.offset or b[4] > self.tensor.offset + self.tensor.nbytes:
            raise CodegenError(f"HBM view out of bounds of {self.tensor.name}")
        return ap


class _Rec:
    __slots__ = ("stream", "idx", "cls", "fields", "waits", "snap", "end")

    def __init__(self, stream, idx, cls, fields):
        self.stream, self.idx, self.cls, self.fields = stream, idx, cls, fields
        self.waits = {}
        self.snap = None
        self.end = 0  # estimated completion (ticks), for DMA queue choice


# ------------------------------------------------------------------ emitter
class Emitter:
    """Collects instructions for one Program (see module docstring)."""

    def __init__(self, config, name: str = "program", dma_queues: Optional[int] = None, options=None):
        from .options import LowerOptions
        self.config = config
        self.name = name
        self.options = options if options is not None else LowerOptions()
        self.consulted: set = set()  # LowerOptions fields some kernel's lowering depended on
        self.partitions = int(getattr(config, "sbuf_partitions", 128))
        self.sbuf = _RangeAllocator(int(getattr(config, "sbuf_bytes_per_partition", 196608)), 64, "SBUF")
        self.psum_bank_bytes = int(getattr(config, "psum_bank_bytes", 2048))
        self.psum_banks = int(getattr(config, "psum_banks", 8))
        self.psum = _RangeAllocator(self.psum_bank_bytes * self.psum_banks, self.psum_bank_bytes, "PSUM")
        nq = int(dma_queues or getattr(config, "dma_queues", 16))
        self.dma_streams = tuple(f"dma{i}" for i in range(max(1, nq)))
        self._dma_load = {q: 0 for q in self.dma_streams}
        self._free_at = {}  # stream -> estimated tick when it is free
        import os
        self.dma_piece_bytes = int(os.environ.get("POLYINF_DMA_PIECE", 96 * 1024))
        self.dma_min_piece = int(os.environ.get("POLYINF_DMA_MIN_PIECE", 32 * 1024))
        # set by the driver while it lowers the program's last weight-loading kernel: nothing is
        # queued behind those loads, so they are cut in TAIL_ROUNDS rounds over all queues (the
        # queues finish within a piece of each other and the consumer follows the rounds)
        self.tail = False
        self.streams: dict[str, list[_Rec]] = {s: [] for s in ENGINE_STREAMS + self.dma_streams}
        self.known: dict[str, dict[str, int]] = {s: {} for s in self.streams}
        self.tracker = _Tracker()
        self.hbm: list[isa.HbmTensor] = []
        self._hbm_names: dict[str, HbmRef] = {}
        self._hbm_top = 0
        self.notes: dict = {}  # tag -> schedule choices (see note())
        self.weight_layouts: dict = {}  # kernel -> (partitions, columns, dtype) a weight pack can hold, or None
        self._ro_ranges, self._ro_starts, self._ro_count = [], [], 0  # ascending (offsets grow)
        self.tag = ""
        self.pe_rows = int(getattr(config, "pe_rows", 128))
        self.pe_cols = int(getattr(config, "pe_cols", 128))
        self.max_moving_free = int(getattr(config, "max_moving_free", 512))

    # ---------------------------------------------------------------- memory
    def note(self, **kv):
        """Record schedule choices of the current kernel (``em.tag``): CompiledProgram.schedule."""
        self.notes.setdefault(self.tag, {}).update(kv)

    def hbm_tensor(self, name: str, shape, dtype: str, kind: str = "scratch") -> HbmRef:
        if name in self._hbm_names:
            raise CodegenError(f"HBM tensor {name!r} defined twice")
        t = isa.HbmTensor(name, self._hbm_top, tuple(int(s) for s in shape), dtype, kind)
        self._hbm_top += -(-t.nbytes // 512) * 512
        self.hbm.append(t)
        if kind in ("input", "weight"):  # read-only for the whole program
            self._ro_ranges.append((t.offset, t.offset + t.nbytes))
            self._ro_starts.append(t.offset)
            self._ro_count = len(self._ro_ranges)
        ref = HbmRef(t)
        self._hbm_names[name] = ref
        return ref

    def _read_only(self, ap: AP) -> bool:
        import bisect
        ro = self._ro_ranges
        k = bisect.bisect_right(self._ro_starts, ap.offset) - 1
        if k < 0:
            return False
        a, b = ro[k]
        return a <= ap.offset < b and ap_box(ap)[4] <= b

    def hbm_ref(self, name: str) -> HbmRef:
        return self._hbm_names[name]

    def sbuf_tile(self, partitions: int, nbytes: int, dtype: str, name: str = "") -> Tile:
        if not 1 <= partitions <= self.partitions:
            raise CodegenError(f"tile {name}: {partitions} partitions (max {self.partitions})")
        P = self.partitions
        off = self.sbuf.alloc(nbytes, ready=lambda o, n: self.tracker.peek(("sbuf", 0, P, o, o + n)))
        return Tile(Mem.SBUF, partitions, off, -(-nbytes // 4) * 4, dtype, name)

    def sbuf_resident(self, start_partition: int, partitions: int, offset: int, nbytes: int, dtype: str,
                      name: str = "") -> Tile:
        """A planner-placed SBUF allocation (kept for the whole program)."""
        if start_partition != 0:
            raise CodegenError(f"resident {name}: allocations start at partition 0")
        self.sbuf.reserve(offset, nbytes)
        return Tile(Mem.SBUF, partitions, offset, -(-nbytes // 4) * 4, dtype, name)

    def psum_tile(self, partitions: int, nbytes: int = None, name: str = "") -> Tile:
        nbytes = self.psum_bank_bytes if nbytes is None else nbytes
        if nbytes > self.psum_bank_bytes:
            raise CodegenError(f"PSUM tile {name} of {nbytes} B exceeds one bank")
        off = self.psum.alloc(nbytes)
        return Tile(Mem.PSUM, partitions, off, nbytes, "fp32", name)

    def free(self, *tiles: Tile):
        for t in tiles:
            (self.sbuf if t.mem == Mem.SBUF else self.psum).free(t.offset, t.nbytes)

    def pool(self, mem: str, partitions: int, nbytes: int, dtype: str, bufs: int = 2, name: str = ""):
        return TilePool(self, mem, partitions, nbytes, dtype, bufs, name)

    # ---------------------------------------------------------------- emission
    def emit(self, stream: str, cls, **fields):
        """Append an instruction; ``stream=None`` for a DmaCopy picks the DMA queue on which it
        is estimated to start earliest (list scheduling with the config's cost model)."""
        if stream is not None and stream not in self.streams:
            raise CodegenError(f"unknown stream {stream!r}")
        fields.setdefault("tag", self.tag)
        rec = _Rec(stream, -1, cls, fields)
        deps = []
        for f in READ_FIELDS:
            v = fields.get(f)
            if isinstance(v, AP):
                if v.mem == Mem.HBM and self._read_only(v):
                    continue  # inputs/weights are never written: their reads cannot conflict
                deps += self.tracker.access(ap_box(v), False, rec)
        dst = fields.get("dst")
        if isinstance(dst, AP):
            if cls is isa.MatMul and not fields.get("start", True):
                deps += self.tracker.access(ap_box(dst), False, rec)
            deps += self.tracker.access(ap_box(dst), True, rec)
        busy, lat = self._cost(cls, fields, stream or self.dma_streams[0])
        if stream is None:
            by = {}
            for d in deps:
                if by.get(d.stream, -1) < d.end:
                    by[d.stream] = d.end
            top = sorted(by.items(), key=lambda kv: -kv[1])[:2]
            fa, ld = self._free_at, self._dma_load

            def ready_on(q):
                if not top:
                    return 0
                return top[0][1] if top[0][0] != q else (top[1][1] if len(top) > 1 else 0)
            stream = min(self.dma_streams, key=lambda q: (max(fa.get(q, 0), ready_on(q)), -fa.get(q, 0), ld[q]))
        # same-stream order is free (in-order issue); other streams' results wait for visibility
        ready = max([0] + [d.end for d in deps if d.stream != stream])
        start = max(self._free_at.get(stream, 0), ready)
        rec.end = start + busy + lat  # when its results are visible to other engines
        self._free_at[stream] = start + busy  # the engine issues its next instruction then
        rec.stream = stream
        idx = len(self.streams[stream])
        rec.idx = idx
        need: dict[str, int] = {}
        for d in deps:
            s, i = d.stream, d.idx
            if s != stream and need.get(s, -1) < i:
                need[s] = i
        known = self.known[stream]
        for s, i in sorted(need.items(), key=lambda kv: -kv[1]):
            if known.get(s, -1) >= i:
                continue
            rec.waits[s] = i
            for k, v in self.streams[s][i].snap.items():
                if known.get(k, -1) < v:
                    known[k] = v
        known[stream] = idx
        rec.snap = dict(known)
        self.streams[stream].append(rec)
        self._n_emit = getattr(self, "_n_emit", 0) + 1
        if self._n_emit % 64 == 0:
            # every stream (also ones not used yet: their future instructions must be ordered too)
            allst = list(self.streams)
            self.tracker.retired = {s: min(self.known[t].get(s, -1) for t in allst) for s in allst}
        return rec

    def _cost(self, cls, fields, stream) -> tuple[int, int]:
        """(busy, latency) ticks as the simulator times them: an engine is busy for the cost
        formula's cycles and its results become visible ``access_overhead_cycles`` later
        (back-to-back instructions hide that overhead); a DMA's queue time has no extra latency."""
        cfg = self.config
        try:
            from target import cost as _cost
            ins = cls(**fields)
            if cls is isa.DmaCopy:
                return _cost.dma_ticks(ins, cfg), 0
            tpc = cfg.ticks_per_cycle(stream)
            return _cost.engine_cycles(ins, cfg) * tpc, cfg.access_overhead_cycles * tpc
        except Exception:
            if cls is isa.DmaCopy:
                return 2000 + max(fields["dst"].nbytes, fields["src"].nbytes) // 16, 0
            return 100, 0

    # convenience wrappers ------------------------------------------------
    def dma(self, dst: AP, src: AP, queue: Optional[str] = None):
        rec = self.emit(queue, isa.DmaCopy, dst=dst, src=src)
        self._dma_load[rec.stream] += max(dst.nbytes, src.nbytes) + 2048
        return rec

    def dma_split(self, dst: AP, src: AP, piece_bytes: int = None, min_piece: int = None):
        """One logical transfer as several DMAs on different queues: split along partitions
        (groups of 32, keeping the partition-start rule) and then along the outermost free
        dim, so that each piece is about ``piece_bytes`` (latency is per transfer and each
        queue has a fraction of the bandwidth)."""
        if piece_bytes is None:
            piece_bytes = self.dma_piece_bytes
        total = max(dst.nbytes, src.nbytes)
        nq = len(self.dma_streams)
        # enough pieces for bandwidth (~piece_bytes each) and, for latency-critical medium
        # transfers, up to one piece per queue as long as pieces stay >= 8 KiB
        npieces = max(-(-total // piece_bytes), min(nq, total // (min_piece or self.dma_min_piece)), 1)
        if self.tail:  # the program's last loads: rounds over all queues (see ``tail``)
            npieces = max(npieces, min(nq * TAIL_ROUNDS, total // self.dma_min_piece))
        if npieces > nq:  # whole rounds over the queues (equal pieces finish together)
            npieces = -(-npieces // nq) * nq
        if npieces == 1 or dst.num_partitions != src.num_partitions:
            return [self.dma(dst, src)]
        P = dst.num_partitions
        # partition groups of >= 8 partitions (a DMA engine serves 8 partitions)
        pgroups = max(1, min(npieces, P // 8))
        pg = -(-P // pgroups)
        if pg % 8 and pg > 8:
            pg = -(-pg // 8) * 8
        npg = -(-P // pg)
        rest = -(-npieces // npg)
        fsplit = 1
        if rest > 1 and dst.sizes[0] == src.sizes[0] and dst.sizes[0] > 1:
            fsplit = min(rest, dst.sizes[0])
        recs = []
        step = -(-dst.sizes[0] // fsplit)
        # free chunks outermost: the first part of every partition row is queued first, so a
        # consumer of the leading elements (first K-tile of weights, first rows) starts early
        for f0 in range(0, dst.sizes[0], step):
            nf = min(step, dst.sizes[0] - f0)
            for p0 in range(0, P, pg):
                np_ = min(pg, P - p0)
                recs.append(self.dma(_sub(dst, p0, np_, f0, nf), _sub(src, p0, np_, f0, nf)))
        return recs

    def matmul(self, dst: AP, stationary: AP, moving: AP, start=True, stop=True):
        return self.emit("tensor", isa.MatMul, dst=dst, stationary=stationary, moving=moving,
                         start=start, stop=stop)

    def act(self, dst: AP, src: AP, func="identity", bias=0.0, scale=1.0, stream="scalar"):
        return self.emit(stream, isa.Activation, dst=dst, src=src, func=func, bias=bias, scale=scale)

    def tt(self, dst: AP, a: AP, b: AP, op="add", stream="vector"):
        return self.emit(stream, isa.TensorTensor, dst=dst, a=a, b=b, op=op)

    def ts(self, dst: AP, src: AP, op0="multiply", operand0=1.0, op1=None, operand1=0.0, stream="vector"):
        return self.emit(stream, isa.TensorScalar, dst=dst, src=src, op0=op0, operand0=operand0,
                         op1=op1, operand1=operand1)

    def identity(self, n: int, dtype: str, name: str = "identity") -> Tile:
        """An n x n identity matrix in a new SBUF tile, built on chip (no HBM constant): GpSimd
        iota v[p, i] = i - p, then Vector is_equal(v, 0)."""
        v = self.sbuf_tile(n, n * 4, "fp32", f"{name}_iota")
        t = self.sbuf_tile(n, n * isa.DTYPES[dtype], dtype, name)
        self.emit("gpsimd", isa.Iota, dst=v.ap((n,), partitions=n), base=0, channel_multiplier=-1, pattern=(1,))
        self.ts(t.ap((n,), partitions=n), v.ap((n,), partitions=n), op0="is_equal", operand0=0.0)
        self.free(v)
        return t

    def memset(self, dst: AP, value=0.0, stream="gpsimd"):
        return self.emit(stream, isa.Memset, dst=dst, value=value)

    def copy(self, dst: AP, src: AP, stream="vector"):
        return self.emit(stream, isa.TensorCopy, dst=dst, src=src)

    def reduce(self, dst: AP, src: AP, op="add", axes=1, stream="vector"):
        return self.emit(stream, isa.TensorReduce, dst=dst, src=src, op=op, axes=axes)

    # ---------------------------------------------------------------- finish
    def estimated_end_us(self) -> float:
        """When the program's last instruction completes, by the emitter's clock (the simulator's
        cost model applied in issue order: equal to the simulated latency when every engine's
        order of work is the one issued)."""
        end = max((r.end for recs in self.streams.values() for r in recs), default=0)
        return end / self.config.tick_khz * 1000

    def finish(self) -> isa.Program:
        waited = defaultdict(set)
        for recs in self.streams.values():
            for r in recs:
                for s, i in r.waits.items():
                    waited[s].add(i)
        rank = {}
        for s, idxs in waited.items():
            for n, i in enumerate(sorted(idxs)):
                rank[(s, i)] = n + 1
        streams = []
        for s, recs in self.streams.items():
            if not recs:
                continue
            out = []
            for r in recs:
                f = dict(r.fields)
                f["waits"] = tuple(isa.Wait(f"sem_{t}", rank[(t, i)]) for t, i in sorted(r.waits.items()))
                f["signals"] = (f"sem_{s}",) if (s, r.idx) in rank else ()
                out.append(r.cls(**f))
            streams.append((s, tuple(out)))
        return isa.Program(hbm=tuple(self.hbm), streams=tuple(streams), name=self.name)


TAIL_ROUNDS = 4


def _sub(ap: AP, p0: int, np_: int, f0: int, nf: int) -> AP:
    """Partitions [p0, p0+np_) and outermost-free-dim [f0, f0+nf) of an AP."""
    off = ap.offset + f0 * ap.strides[0] * ap.itemsize
    sizes = (nf,) + tuple(ap.sizes[1:])
    if ap.mem == Mem.HBM:
        return AP(ap.mem, 0, np_, off + p0 * ap.partition_stride * ap.itemsize, sizes, ap.strides,
                  ap.dtype, ap.partition_stride)
    return AP(ap.mem, ap.start_partition + p0, np_, off, sizes, ap.strides, ap.dtype)


class TilePool:
    """``bufs`` rotating tiles of one shape: ``pool.next()`` gives the next one.  Reuse is
    safe because the Emitter orders the new writes after the old reads (WAR)."""

    def __init__(self, em: Emitter, mem, partitions, nbytes, dtype, bufs, name):
        self.em = em
        if mem == "psum":
            self.tiles = [em.psum_tile(partitions, nbytes, f"{name}{i}") for i in range(bufs)]
        else:
            self.tiles = [em.sbuf_tile(partitions, nbytes, dtype, f"{name}{i}") for i in range(bufs)]
        self.i = 0

    def next(self) -> Tile:
        t = self.tiles[self.i % len(self.tiles)]
        self.i += 1
        return t

    def release(self):
        self.em.free(*self.tiles)
        self.tiles = []
