"""On-chip buffer allocation from lifetimes: interval colouring with first fit, spill choice.

A :class:`Buffer` is one SBUF-resident tensor: the kernels (plan groups, by index) from its
producer ``start`` to its last reader ``end`` (inclusive), ``partitions`` x ``nbytes`` per
partition, the group indices that read it (``uses``) and what spilling it would cost
(``save_bytes`` written to HBM by the producer, ``reload_bytes`` read back by the consumers;
the planner takes these from exact footprints).

:func:`allocate` colours the intervals in order of start (larger first on ties): a buffer gets
the lowest byte range (counted from the top of SBUF, so kernel scratch keeps one contiguous range
at the bottom) that no buffer with an overlapping lifetime uses and that stays under the resident
capacity of every kernel in its lifetime (``capacity[t]`` = SBUF bytes per partition minus the
scratch kernel ``t`` needs).  Holes left by dead buffers are reused (first fit), so
fragmentation is bounded by the first-fit gaps; :attr:`Allocation.fragmentation` reports it at
the peak.  When a buffer does not fit, the planner spills what costs least to bring back: among
the new buffer and the buffers live with it, the one with the smallest
``(save + reload bytes) / (bytes freed x (1 + distance to its next use))`` goes to HBM for its
whole life, and the new buffer is retried.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cached_property

ALIGN = 64


def _align(n: int, a: int = ALIGN) -> int:
    return max(a, -(-int(n) // a) * a)


@dataclass(frozen=True)
class Buffer:
    name: str
    start: int
    end: int
    partitions: int
    nbytes: int  # per partition
    uses: tuple = ()
    save_bytes: int = 0
    reload_bytes: int = 0

    def live(self, t: int) -> bool:
        return self.start <= t <= self.end

    def overlaps(self, o: "Buffer") -> bool:
        return self.start <= o.end and o.start <= self.end

    @cached_property
    def _sorted_uses(self) -> tuple:  # (a frozen dataclass may cache: __dict__, not a field)
        return tuple(sorted(self.uses))

    def next_use(self, t: int) -> int:
        """The first use at or after ``t`` (else the end of its life)."""
        us = self._sorted_uses
        i = bisect_left(us, t)
        return us[i] if i < len(us) else self.end


@dataclass
class Allocation:
    size: int  # SBUF bytes per partition
    capacity: tuple  # resident bytes per partition allowed at each kernel
    slots: dict = field(default_factory=dict)  # name -> (address from the top, aligned bytes)
    buffers: dict = field(default_factory=dict)  # name -> Buffer
    spilled: dict = field(default_factory=dict)  # name -> reason
    order: list = field(default_factory=list)

    def offset(self, name: str) -> int:
        """Byte offset inside a partition (resident buffers sit at the top of SBUF)."""
        a, n = self.slots[name]
        return self.size - a - n

    def live_at(self, t: int) -> list:
        return sorted((b for n, b in self.buffers.items() if n in self.slots and b.live(t)),
                      key=lambda b: self.slots[b.name][0])

    def extent_at(self, t: int) -> int:
        return max((sum(self.slots[b.name]) for b in self.live_at(t)), default=0)

    def used_at(self, t: int) -> int:
        return sum(self.slots[b.name][1] for b in self.live_at(t))

    @property
    def peak_time(self) -> int:
        ts = range(len(self.capacity))
        return max(ts, key=lambda t: (self.extent_at(t), -t)) if len(self.capacity) else 0

    @property
    def peak(self) -> int:
        return self.extent_at(self.peak_time) if self.capacity else 0

    @property
    def fragmentation(self) -> float:
        """1 - live bytes / extent at the peak (0 = perfectly packed)."""
        t = self.peak_time
        e = self.extent_at(t)
        return 0.0 if e == 0 else 1.0 - self.used_at(t) / e

    @property
    def spill_save_bytes(self) -> int:
        return sum(self.buffers[n].save_bytes for n in self.spilled if n in self.buffers)

    @property
    def spill_reload_bytes(self) -> int:
        return sum(self.buffers[n].reload_bytes for n in self.spilled if n in self.buffers)

    def check(self):
        """No two buffers with overlapping lifetimes overlap in SBUF; all under capacity."""
        names = list(self.slots)
        for i, a in enumerate(names):
            ba, (xa, na) = self.buffers[a], self.slots[a]
            for t in range(ba.start, ba.end + 1):
                if xa + na > self.capacity[t]:
                    raise AssertionError(f"{a} exceeds the resident capacity at kernel {t}")
            for b in names[i + 1:]:
                bb, (xb, nb) = self.buffers[b], self.slots[b]
                if ba.overlaps(bb) and xa < xb + nb and xb < xa + na:
                    raise AssertionError(f"{a} and {b} overlap")


def _first_fit(busy, n, limit):
    """Lowest address a >= 0 with [a, a+n) free of the ``busy`` ranges and a + n <= limit."""
    a = 0
    for x, m in sorted(busy):
        if a + n <= x:
            break
        a = max(a, x + m)
    return a if a + n <= limit else None


def spill_score(b: Buffer, t: int) -> float:
    """Cost of spilling ``b`` at kernel ``t`` per byte freed and per kernel of distance to its
    next use (small = cheap to spill)."""
    dist = max(0, b.next_use(t) - t)
    return (b.save_bytes + b.reload_bytes) / (max(1, _align(b.nbytes) * b.partitions) * (1 + dist))


def allocate(buffers, capacity, size: int, forced_spills=None) -> Allocation:
    """Place ``buffers`` (see module docstring).  ``capacity[t]``: resident bytes per partition
    allowed while kernel ``t`` runs; ``size``: SBUF bytes per partition."""
    al = Allocation(size, tuple(int(c) for c in capacity))
    al.buffers = {b.name: b for b in buffers}
    for n, why in (forced_spills or {}).items():
        al.spilled[n] = why
    nal = {b.name: _align(b.nbytes) for b in buffers}  # once per buffer: the planner allocates thousands of variants
    todo = sorted((b for b in buffers if b.name not in al.spilled),
                  key=lambda b: (b.start, -nal[b.name], b.name))
    slots, bufs, cap = al.slots, al.buffers, al.capacity
    live: list = []  # placed buffers whose lifetime reaches the current start (todo is by start)
    for b in todo:
        n = nal[b.name]
        live = [o for o in live if o in slots and bufs[o].end >= b.start]
        limit = min(cap[b.start:b.end + 1]) if cap else 0
        while True:
            busy = [slots[o] for o in live if o in slots]
            a = _first_fit(busy, n, limit)
            if a is not None:
                slots[b.name] = (a, n)
                al.order.append(b.name)
                live.append(b.name)
                break
            # does not fit: spill the cheapest of b and the buffers live with it
            cands = [b] + [bufs[o] for o in live if o in slots]
            if n > limit:
                cands = [b]
            victim = min(cands, key=lambda c: (spill_score(c, b.start), c.name != b.name))
            if victim.name == b.name:
                al.spilled[b.name] = (f"does not fit: {n} B per partition, resident capacity "
                                      f"{limit} B over kernels {b.start}..{b.end}")
                break
            del slots[victim.name]
            al.order.remove(victim.name)
            al.spilled[victim.name] = f"evicted for {b.name} (cheaper to reload)"
    return al


def resident_deaths(plan, root=lambda n: n) -> dict:
    """{group index: [resident tensor names]}: the kernel after which each SBUF-placed tensor
    (through its aliases, ``root`` maps a name to its buffer) is dead and its range may be freed.
    A sub-batch buffer (batch tiling: placement.images == k of a kernel's ``images`` (n0, k)) dies
    once per sub-batch, after its last reader there."""
    res = {t.name: t for t in plan.tensors if t.placement == "sbuf"}
    last = {}
    for gi, g in enumerate(plan.groups):
        sub = g.param("images")
        for nm in (g.output,) + tuple(g.inputs):
            r = root(nm)
            if r not in res:
                continue
            per = sub is not None and int(getattr(res[r], "images", 1) or 1) == sub[1]
            last[(r, sub[0] if per else None)] = gi
    out = {}
    for (nm, _), gi in last.items():
        out.setdefault(gi, []).append(nm)
    return out


def release_dead(ctx, names):
    """Free the SBUF ranges of resident tensors after their last reader (a sub-batch buffer is
    reserved again by the next sub-batch's producer)."""
    bands = ctx.bands
    for nm in names:
        if nm in bands:  # a band buffer (spatial tiling)
            ctx.em.free(bands.pop(nm)[0].sbuf)
            continue
        v = ctx.values.get(nm)
        if v is not None and v.sbuf is not None:
            ctx.em.free(v.sbuf)
        if f"{nm}@sub" in ctx.values:
            ctx.values.pop(f"{nm}@sub")
            ctx.values.pop(nm, None)


def batch_views(ctx, g, n0: int, k: int) -> dict:
    """Before lowering a kernel that runs on images [n0, n0+k) of the batch (``images`` param of a
    poly plan): swap in Values of that sub-batch for its activation operands and output.  A
    tensor with a ``k``-image SBUF buffer (placement.images == k < N) is that buffer (reused by
    every sub-batch); any other tensor is viewed (HBM: byte offset; SBUF per-image layout: the
    images' columns).  Returns what to restore after the lowering (:func:`restore_views`)."""
    from target import isa
    from target.codegen.emitter import HbmRef, Tile
    from target.codegen.values import Value

    tm = ctx.tm
    saved = {}
    names = [i for i in g.inputs if not tm[i].is_constant and tm[i].kind != "weight"] + [g.output]
    for nm in dict.fromkeys(names):
        shape = tuple(tm[nm].shape)
        if not shape or shape[0] < n0 + k:
            continue
        N = shape[0]
        pl = ctx.plan.placement(ctx.root(nm))
        if pl.placement == "sbuf" and pl.band_rows:
            continue  # a band buffer of a row segment inside the sub-batch: band_views' job
        sub = pl.placement == "sbuf" and 1 <= int(getattr(pl, "images", 1) or 1) == k < N
        saved.setdefault(nm, ctx.values.get(nm))
        if sub:
            r = ctx.root(nm)
            buf = ctx.values.get(f"{r}@sub")
            if buf is None:
                tile = ctx.em.sbuf_resident(pl.start_partition, pl.num_partitions, pl.offset, pl.nbytes,
                                            ctx.cdt, r)
                buf = Value(r, (k,) + tuple(tm[r].shape[1:]), ctx.cdt, sbuf=tile, images=k)
                ctx.values[f"{r}@sub"] = buf
            if saved[nm] is None:
                saved[nm] = buf  # stays registered: resident_deaths frees it after its last reader
            ctx.values[nm] = Value(nm, (k,) + shape[1:], buf.dtype, sbuf=buf.sbuf, images=k)
            continue
        full = saved[nm]
        if full is None:
            full = ctx.out(nm) if nm == g.output else ctx.value(nm)
            saved[nm] = full
        img = 1
        for d in shape[1:]:
            img *= int(d)
        if full.hbm is not None:
            t = full.hbm.tensor
            it = isa.DTYPES[t.dtype]
            view = HbmRef(isa.HbmTensor(t.name, t.offset + n0 * img * it, (k,) + shape[1:], t.dtype, t.kind))
            ctx.values[nm] = Value(nm, (k,) + shape[1:], full.dtype, hbm=view)
        else:
            tl = full.sbuf
            L = img // tl.partitions
            it = isa.DTYPES[full.dtype]
            view = Tile(tl.mem, tl.partitions, tl.offset + n0 * L * it, k * L * it, tl.dtype, tl.name,
                        tl.start_partition)
            ctx.values[nm] = Value(nm, (k,) + shape[1:], full.dtype, sbuf=view, images=k)
    return saved


def restore_views(ctx, saved: dict):
    for nm, v in saved.items():
        if v is None:
            ctx.values.pop(nm, None)
        else:
            ctx.values[nm] = v


def band_views(ctx, g) -> dict:
    """Before lowering one step of a row-banded kernel (spatial tiling: ``rows`` / ``origin`` /
    ``in_rows`` params of a poly plan): swap in row-window Values (``Value.window``) of its
    inputs and output.  A tensor with a band buffer (placement.band_rows > 0) lives in
    ``ctx.bands[name] = (base Value of band_rows rows, origin row, rows computed)``; before its
    producer writes new rows the buffer drops rows [old origin, new origin) and moves the kept
    halo rows to its front (one engine copy per chunk of rows, all channel planes at once).
    Returns what to restore after the lowering (:func:`restore_views`)."""
    from target.codegen.emitter import CodegenError
    from target.codegen.values import Value

    bands = ctx.bands
    r0, r1 = g.param("rows")
    saved = {}
    for nm, i0, i1 in g.param("in_rows", ()):
        if nm in bands:
            base, org, done = bands[nm]
            if not (org <= i0 and i1 <= done):
                raise CodegenError(f"{g.tag}: rows [{i0}, {i1}) of {nm} are not in its band buffer "
                                   f"(rows [{org}, {done}))")
            saved.setdefault(nm, ctx.values.get(nm))
            ctx.values[nm] = base.window(i0 - org, i1 - i0)
        else:
            full = saved.setdefault(nm, ctx.value(nm))
            ctx.values[nm] = full.window(i0, i1 - i0)
    out = g.output
    pl = ctx.plan.placement(out)
    if pl.placement == "sbuf" and pl.band_rows:
        new_org = int(g.param("origin"))
        shape = tuple(ctx.tm[out].shape)
        N, C, _, W = shape
        if g.param("images"):  # inside a batch-tiled segment: a band buffer of the sub-batch
            N = int(g.param("images")[1])
        if out not in bands:
            tile = ctx.em.sbuf_resident(pl.start_partition, pl.num_partitions, pl.offset, pl.nbytes, ctx.cdt, out)
            base = Value(out, (N, C, pl.band_rows, W), ctx.cdt, sbuf=tile, images=N)
            base.flat_ap(0, pl.num_partitions, base.size // N // pl.num_partitions, (1,), (1,))  # layout check
            bands[out] = (base, new_org, new_org)
        base = _advance(ctx, g, out, r0, r1, new_org, pl.band_rows, "band step rows", "band buffer")
        saved.setdefault(out, ctx.values.get(out))
        ctx.values[out] = base.window(r0 - new_org, r1 - r0)
    else:
        full = saved.setdefault(out, ctx.out(out))
        ctx.values[out] = full.window(r0, r1 - r0)
    return saved


def stage_rows(ctx, g):
    """Before a band step that loads rows of staged inputs (``stage`` param of a poly plan): the
    input is in HBM and several kernels of the row segment read it, so its rows come into a stage
    buffer once (kept halo rows moved to the front, as a band buffer's) and the readers read the
    buffer (``band_views`` finds it in ``ctx.bands``).  One DMA per image, every channel plane."""
    from target.codegen.emitter import CodegenError
    from target.codegen.values import Value

    bands = ctx.bands
    for nm, r0, r1, org, off, nbytes, parts, cap in g.param("stage"):
        src = ctx.value(nm)
        if src.sbuf is not None or len(src.shape) != 4:
            raise CodegenError(f"{g.tag}: staged input {nm} is not a 4-D tensor in HBM")
        N, C, H, W = src.shape
        if C % parts:
            raise CodegenError(f"{g.tag}: staged input {nm}: {C} channels do not split over {parts} partitions")
        if nm not in bands:
            tile = ctx.em.sbuf_resident(0, parts, off, nbytes, ctx.cdt, f"{nm}@stage")
            bands[nm] = (Value(nm, (N, C, cap, W), ctx.cdt, sbuf=tile, images=N), org, org)
        base = _advance(ctx, g, nm, r0, r1, org, cap, "stage rows", "stage buffer")
        n, CT = r1 - r0, C // parts
        dst, srcw = base.window(r0 - org, n), src.window(r0, n)
        for i in range(N):
            e0 = i * C * n * W
            ctx.em.dma_split(dst.flat_ap(e0, parts, CT * n * W, (CT, n * W), (n * W, 1)),
                             srcw.flat_ap(e0, parts, CT * n * W, (CT, n * W), (n * W, 1)))


def _advance(ctx, g, nm, r0, r1, new_org, cap, what, buf):
    """Make band (or stage) buffer ``nm`` hold global rows [new_org, r1) for a step writing rows
    [r0, r1): check the step follows the buffer (rows in order, origin never back, capacity ``cap``
    rows), drop rows [old origin, new_org) by moving the kept ones to the front.  Returns the base."""
    from target.codegen.emitter import CodegenError

    base, org, done = ctx.bands[nm]
    if r1 - new_org > cap or new_org < org or r0 != max(done, new_org):
        raise CodegenError(f"{g.tag}: {what} [{r0}, {r1}) origin {new_org} do not follow the "
                           f"{buf} of {nm} (rows [{org}, {done}), {cap} rows)")
    if new_org > org and done > new_org:
        _shift_rows(ctx.em, base, new_org - org, done - new_org)
    ctx.bands[nm] = (base, new_org, r1)
    return base


def unstage(ctx, g):
    """After the segment's last step reading a staged input: free its stage buffer."""
    for nm in g.param("unstage", ()):
        if nm in ctx.bands:
            ctx.em.free(ctx.bands.pop(nm)[0].sbuf)


def _shift_rows(em, base, d: int, n: int):
    """Move rows [d, d + n) of every channel plane of band buffer ``base`` to rows [0, n) (in
    chunks of at most d rows, front to back, so no copy reads what it overwrites)."""
    N, C, cap, W = base.shape
    tile = base.sbuf
    planes = base.size // tile.partitions // cap // W  # images x channel planes per partition
    for c0 in range(0, n, d):
        m = min(d, n - c0)
        em.copy(tile.ap((planes, m * W), (cap * W, 1), c0 * W),
                tile.ap((planes, m * W), (cap * W, 1), (d + c0) * W))
