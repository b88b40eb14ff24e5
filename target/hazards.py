"""Happens-before data-race detection.

**Happens-before.**  Program order within a stream, plus semaphore edges.  Semaphores only count
up (by one per ``signals`` entry, at completion).  A ``Wait(sem, v)`` is guaranteed to follow
``v`` completed signals, but with several signalling streams not *which* ones; the sound edge is:
for each stream ``t`` that signals ``sem``, let ``other`` be the total number of signals of
``sem`` by all other streams in the whole program; if ``k = v - other >= 1`` then the ``k``-th
signal of ``sem`` in ``t``'s program order happens before the waiter.  (With a single signalling
stream this is exactly "the v-th signal".)  Each instruction gets a vector clock, the join of its
predecessor's and those signallers' clocks; A happens before B iff ``VC(B)[stream(A)] > index(A)``.

**Race check.**  Every access (instruction, memory, read/write, access pattern) is compared with
the earlier accesses of the same memory that are still *live*; two accesses from different
streams, at least one a write, whose bytes overlap and that are not ordered by happens-before are
a race.  Accesses are kept per memory in pages of the per-partition byte space (SBUF/PSUM) or of
flat HBM; a candidate pair is first compared by its bounding box (partition range x byte range),
and only when the boxes overlap and the pair is unordered are the exact byte sets compared.
An earlier access A is dropped when a later dense access B covers A's box, A happens before B, and
B is a write (or both are reads): any future access racing with A then also races with B.
HBM bytes that no instruction ever writes are not tracked at all (reads cannot race).
The instructions are examined in the simulator's commit order, a linearisation of happens-before.
"""
from __future__ import annotations

import numpy as np

from .errors import RaceError
from .isa import Mem
from .memory import ap_dense, ap_dense_rows, ap_element_offsets, ap_extent

_PAGE = {Mem.SBUF: 4096, Mem.PSUM: 2048, Mem.HBM: 65536}


class HazardChecker:
    def __init__(self, sim):
        self.sim = sim
        self.S = len(sim.decoded)
        # signal positions: sem -> stream -> [instr index, ...] in program order (with repetition)
        self.sig_pos: dict[str, dict[int, list[int]]] = {}
        for sem, lst in sim.sem_signals.items():
            per = self.sig_pos.setdefault(sem, {})
            for s, i in lst:
                per.setdefault(s, []).append(i)
        self.sig_tot = {sem: sum(len(v) for v in per.values()) for sem, per in self.sig_pos.items()}
        self.vc: list[list] = [[None] * len(dl) for dl in sim.decoded]
        self.pages = {Mem.SBUF: {}, Mem.PSUM: {}, Mem.HBM: {}}
        # HBM byte intervals that some instruction writes (bounding boxes), merged
        iv = []
        for dl in sim.decoded:
            for d in dl:
                for ap in d.writes:
                    if ap.mem == Mem.HBM:
                        iv.append(ap_extent(ap))
        iv.sort()
        merged = []
        for a, b in iv:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.hbm_written = merged
        self._hbm_lo = [m[0] for m in merged]
        self.remaining = [len(dl) for dl in sim.decoded]
        self.last_vc = [None] * self.S
        self.commits = 0
        self.gc_every = 64
        self.tensor_lo = sorted(t.offset for t in sim.p.hbm) or [0]
        if self.tensor_lo[0] != 0:
            self.tensor_lo.insert(0, 0)

    def _hbm_tracked(self, lo, hi) -> bool:
        import bisect
        k = bisect.bisect_right(self._hbm_lo, hi - 1) - 1
        return k >= 0 and self.hbm_written[k][1] > lo

    def _clock(self, d) -> list:
        s, i = d.s, d.i
        if i > 0:
            vc = list(self.vc[s][i - 1])
        else:
            vc = [0] * self.S
        for t, j in self._sem_preds(d.waits):
            other = self.vc[t][j]
            if other is None:  # cannot happen in a valid linearisation
                continue
            vc = [a if a >= b else b for a, b in zip(vc, other)]
        vc[s] = i + 1
        return vc

    def _sem_preds(self, waits):
        """(stream, index) of every signal that these waits are ordered after: a Wait(sem, v)
        follows stream t's k-th signal of sem when k = v - (signals of sem by other streams)
        is at least 1 (semaphores only count up)."""
        for sem, v in waits:
            per = self.sig_pos.get(sem)
            if not per:
                continue
            tot = self.sig_tot[sem]
            for t, idxs in per.items():
                k = v - (tot - len(idxs))
                if k >= 1:
                    yield t, idxs[k - 1]

    def commit(self, d) -> None:
        vc = self._clock(d)
        self.vc[d.s][d.i] = vc
        self.last_vc[d.s] = vc
        self.remaining[d.s] -= 1
        self.commits += 1
        if self.commits % self.gc_every == 0:
            self._gc()
        for ap in d.reads:
            self._access(d, vc, ap, False)
        for ap in d.writes:
            self._access(d, vc, ap, True)

    def _key_range(self, mem, lo, hi):
        if mem == Mem.HBM:
            import bisect
            a = max(0, bisect.bisect_right(self.tensor_lo, lo) - 1)
            b = max(a, bisect.bisect_right(self.tensor_lo, hi - 1) - 1)
            return range(a, b + 1)
        pg = _PAGE[mem]
        return range(lo // pg, (hi - 1) // pg + 1)

    def _access(self, d, vc, ap, write: bool):
        mem = ap.mem
        lo, hi = ap_extent(ap)
        if mem == Mem.HBM:
            p0, p1 = 0, 1
            if not write and not self._hbm_tracked(lo, hi):
                return
            rowinfo = _rowinfo(ap)
        else:
            p0, p1 = ap.start_partition, ap.start_partition + ap.num_partitions
            rowinfo = None
        dense = ap_dense(ap)
        pages = self.pages[mem]
        s = d.s
        entry = [p0, p1, lo, hi, s, d.i, write, ap, dense, True, d, rowinfo]
        for page in self._key_range(mem, lo, hi):
            lst = pages.get(page)
            if lst is None:
                pages[page] = [entry]
                continue
            removed = False
            for e in lst:
                if not e[9]:
                    removed = True
                    continue
                if e[0] >= p1 or p0 >= e[1] or e[2] >= hi or lo >= e[3]:
                    continue
                es = e[4]
                if es == s or vc[es] > e[5]:
                    # domination: this dense access covers e, e happens before it
                    if dense and (write or not e[6]) and p0 <= e[0] and e[1] <= p1 and lo <= e[2] and e[3] <= hi:
                        e[9] = False
                        removed = True
                    continue
                if not (write or e[6]):
                    continue
                if (e[8] and dense) or _exact_overlap(e, entry, mem):
                    self._race(e, d, ap, write, mem)
            if removed:
                lst[:] = [e for e in lst if e[9]]
            lst.append(entry)

    def _gc(self) -> None:
        """Drop accesses that happen before every instruction still to come: the next instruction
        of each unfinished stream follows that stream's last committed one, so an access A with
        VC(last of s)[stream(A)] > index(A) for every unfinished s can never race again."""
        minf = None
        for s in range(self.S):
            if self.remaining[s] == 0:
                continue
            v = self.last_vc[s]
            if v is None:
                v = self._first_bound(s)
                if v is None:
                    return  # a stream with an unconstrained first instruction could race with anything
            minf = list(v) if minf is None else [a if a <= b else b for a, b in zip(minf, v)]
        for pages in self.pages.values():
            for key in list(pages):
                lst = pages[key]
                if minf is None:
                    keep = []
                else:
                    keep = [e for e in lst if e[9] and minf[e[4]] <= e[5]]
                    for e in lst:
                        if minf[e[4]] > e[5]:
                            e[9] = False
                if keep:
                    pages[key] = keep
                else:
                    del pages[key]

    def _first_bound(self, s):
        """Lower bound of the vector clock of stream s's first instruction (not yet committed):
        the join of its static semaphore predecessors' clocks (or, for a predecessor not yet
        committed, just that predecessor's own component)."""
        d0 = self.sim.decoded[s][0]
        lb = None
        for t, j in self._sem_preds(d0.waits):
            if lb is None:
                lb = [0] * self.S
            other = self.vc[t][j]
            if other is not None:
                lb = [a if a >= b else b for a, b in zip(lb, other)]
            elif lb[t] < j + 1:
                lb[t] = j + 1
        return lb

    def _race(self, e, d, ap, write, mem):
        from .simulator import _text
        other = e[10]
        k1 = "writes" if e[6] else "reads"
        k2 = "writes" if write else "reads"
        raise RaceError(f"data race on {mem.value}: {other.where} ({_text(other.ins)}) {k1} bytes that this "
                        f"instruction {k2}, and no semaphore path orders them",
                        where=d.where, text=_text(d.ins))


def _rowinfo(ap):
    """HBM: (period bytes, in-row lowest byte, row width bytes, rows dense) or None."""
    if ap.num_partitions <= 1:
        return None
    return (abs(ap.partition_stride) * ap.itemsize, _row_lo(ap), _row_width(ap), ap_dense_rows(ap))


def _exact_overlap(ea, eb, mem) -> bool:
    """Do the two accesses (same memory, overlapping boxes) share a byte?"""
    a, b = ea[7], eb[7]
    w0, w1 = max(ea[2], eb[2]), min(ea[3], eb[3])
    if w0 >= w1:
        return False
    ra, rb = ea[11], eb[11]
    if ra is not None and rb is not None and ra[0] == rb[0] and a.itemsize == b.itemsize:
        # rows of both repeat with the same period: compare the in-row extents on the circle
        P, la, wa, da = ra
        _, lb, wb, db = rb
        if P > 0 and wa <= P and wb <= P:
            dlt = (lb - la) % P
            if not (dlt < wa or P - dlt < wb):
                return False
            if da and db:
                return True
    W = w1 - w0
    masks = []
    for ap in (a, b):
        offs = ap_element_offsets(ap)
        m = np.zeros(W + ap.itemsize, dtype=bool)
        sel = offs[(offs + ap.itemsize > w0) & (offs < w1)] - w0
        for k in range(ap.itemsize):
            idx = sel + k
            idx = idx[(idx >= 0) & (idx < W)]
            m[idx] = True
        masks.append(m[:W])
    return bool((masks[0] & masks[1]).any())


def _row_lo(ap) -> int:
    lo = 0
    for n, st in zip(ap.sizes, ap.strides):
        if st < 0:
            lo += (n - 1) * st
    return ap.offset + lo * ap.itemsize


def _row_width(ap) -> int:
    w = 0
    for n, st in zip(ap.sizes, ap.strides):
        w += (n - 1) * abs(st)
    return (w + 1) * ap.itemsize
