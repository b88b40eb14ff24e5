"""Cross-channel window operators on the Tensor engine, and ``power``.

Channels live on partitions, so a window along the channel axis crosses partitions: no
Vector/Scalar instruction can reach a neighbouring partition.  The Tensor engine can: a
matmul with a *band matrix* as the stationary operand sums the window in one pass,

    psum[c, f] = sum_c' B[c', c] * moving[c', f],   B[c', c] = w(c) for c - pf <= c' < c - pf + size,

accumulating over the (at most three) 128-channel input tiles that reach a 128-channel
output tile.  The band matrix is a compile-time constant (its rows for input tile i are
loaded once per kernel).

* :func:`lrn` (ONNX LRN, which from_onnx spells as multiply(x, x) -> expand_dims ->
  avg_pool3d(size, 1, 1) -> squeeze -> * alpha -> + bias -> power(beta) -> divide(x, .);
  the planner fuses the chain into one kernel):
  ``out = x * exp(-beta * log(bias + alpha/size * sum_window x^2))`` with the square on the
  Scalar engine, the window sum on the Tensor engine into PSUM, ``log`` (reading PSUM, with
  scale alpha/size and bias folded into the activation) and ``exp`` (scale -beta) on the
  Scalar engine, and the final multiply by x on the Vector engine.
* :func:`channel_window_avg`: a standalone ``avg_pool3d`` with window (size, 1, 1) over
  the channel dim of ``expand_dims(x, 1)`` (the same band matmul, divisor folded into B).
* :func:`power`: x ** b for a scalar constant b (square/sqrt/rsqrt/reciprocal when b is
  2/0.5/-0.5/-1, else exp(b * log(x)) on the Scalar engine).
"""
from __future__ import annotations

import numpy as np

from target import isa
from .conv import ChanMap
from .emitter import CodegenError, Emitter
from .values import Value, prod

BUFS = 2
CHUNK_BYTES = 8192  # per partition per channel tile for the loads


def band_matrix(C: int, size: int, pf: int, divisor: str = None):
    """B[c', c] for c' in [c - pf, c - pf + size) clipped to [0, C): 1 (divisor None), 1/size
    ('include': padding counts) or 1 / (number of channels in the clipped window) ('exclude')."""
    B = np.zeros((C, C), np.float32)
    for c in range(C):
        lo, hi = max(0, c - pf), min(C, c - pf + size)
        div = 1.0 if divisor is None else float(size if divisor == "include" else hi - lo)
        B[lo:hi, c] = 1.0 / div
    return B


def _tiles(C, P):
    return [(t * P, min(P, C - t * P)) for t in range(-(-C // P))]


def channel_window(em: Emitter, x: Value, out: Value, B: np.ndarray, size: int, pf: int, const,
                   cdt: str, mode: str, channel_axis: int = 1, alpha: float = 1.0, bias: float = 1.0,
                   beta: float = 0.75, name: str = "lrn", band_slot=None):
    """mode 'lrn': out = x * (bias + alpha * (B^T x^2))^-beta;  mode 'sum': out = B^T x.
    ``band_slot = (tile, cache)``: a planner-placed SBUF tile that keeps the band matrix across
    the kernel's calls (spatial tiling runs it once per row band; a later call loads nothing)."""
    N, C, F = x.ncf(channel_axis)
    P = em.partitions
    it = isa.DTYPES[cdt]
    # channel tiles: 128 consecutive channels each, or -- when an operand is SBUF-resident in the
    # blocked layout (C = parts x T, channel p*T + t on partition p, plane t) -- the planes of that
    # layout.  Blocked tiles are consecutive tiles of the channel order ``order``; the band matrix
    # is permuted the same way, so tile pair (i, j) is its block [i*parts.., j*parts..]
    cm = ChanMap(C, P)
    blocked = channel_axis == 1 and C > P and cm.blocked and (x.sbuf is not None or out.sbuf is not None)
    if blocked:
        order = np.array([p * cm.T + t for t in range(cm.T) for p in range(cm.parts)])
        B = B[np.ix_(order, order)]
        tiles = [(t * cm.parts, cm.parts) for t in range(cm.T)]
    else:
        tiles = _tiles(C, P)
    T = len(tiles)
    MM = min(em.max_moving_free, em.psum_bank_bytes // 4)

    def cap(v, n, t, f0, nf):
        """Tile t's channels of image n, elements [f0, f0 + nf) of each channel plane."""
        if blocked:
            return v.flat_ap(n * C * F + t * F + f0, cm.parts, cm.T * F, (nf,), (1,))
        c0, nc = tiles[t]
        return v.chan_ap(n, c0, nc, f0, (nf,), (1,), channel_axis=channel_axis)

    # which input tiles reach output tile j (a nonzero block of the band matrix)
    reach = [[i for i, (d0, nd) in enumerate(tiles) if np.any(B[d0:d0 + nd, c0:c0 + nc])]
             for c0, nc in tiles]
    if band_slot is not None and (band_slot[0].partitions < min(P, C) or band_slot[0].nbytes < T * C * it):
        raise CodegenError(f"{name}: band matrix slot {band_slot[0].partitions} x {band_slot[0].nbytes} B is "
                           f"smaller than {min(P, C)} x {T * C * it} B")
    held = band_slot[1].get("band") if band_slot is not None else None
    band = band_slot[0] if band_slot is not None else em.sbuf_tile(min(P, C), T * C * it, cdt, f"{name}_band")
    if held is None or held.shape != B.shape or not np.array_equal(held, B):
        bconst = const(f"{name}/band", B, cdt)
        for i, (d0, nd) in enumerate(tiles):
            em.dma_split(band.ap((C,), elem_offset=i * C, partitions=nd), bconst.flat_ap(d0 * C, nd, C, (C,), (1,)))
        if band_slot is not None:
            band_slot[1]["band"] = B
    nbuf_per = (2 if mode == "lrn" else 1) + 1  # x (+ square) + out per channel tile
    budget = max(MM * it, em.sbuf.largest_free() // 2)
    fch = max(MM, min(CHUNK_BYTES // it, budget // max(1, T * nbuf_per * BUFS * it)))
    fch = (fch // MM) * MM if fch >= MM else fch
    fch = min(F, fch)
    xpool = [em.pool("sbuf", nc, fch * it, cdt, BUFS, f"{name}_x{t}") for t, (c0, nc) in enumerate(tiles)]
    qpool = [em.pool("sbuf", nc, fch * it, cdt, BUFS, f"{name}_q{t}") for t, (c0, nc) in enumerate(tiles)] \
        if mode == "lrn" else None
    opool = [em.pool("sbuf", nc, fch * it, cdt, BUFS, f"{name}_o{t}") for t, (c0, nc) in enumerate(tiles)]
    tpool = em.pool("sbuf", min(P, C), MM * 4, "fp32", 3, f"{name}_t")
    ppool = em.pool("psum", min(P, C), MM * 4, "fp32", 4, f"{name}_ps")
    steps = [(n, f0, min(fch, F - f0)) for n in range(N) for f0 in range(0, F, fch)]

    # an SBUF-resident operand (at most 128 channels, one per partition, or the blocked layout)
    # is read / written in place: no SBUF->SBUF copies around the kernel
    x_in = x.sbuf is not None and (T == 1 or blocked) and channel_axis == 1
    o_in = out.sbuf is not None and (T == 1 or blocked) and channel_axis == 1

    def load(step):
        n, f0, nf = step
        if x_in:
            return [cap(x, n, t, f0, nf) for t in range(T)]
        xs = []
        for t, (c0, nc) in enumerate(tiles):
            xt = xpool[t].next().ap((nf,), partitions=nc)
            em.dma_split(xt, cap(x, n, t, f0, nf))
            xs.append(xt)
        return xs

    nxt = load(steps[0])
    for si, step in enumerate(steps):
        n, f0, nf = step
        xs = nxt
        nxt = load(steps[si + 1]) if si + 1 < len(steps) else None
        ots = [opool[j].next() for j in range(T)]
        qs = [qpool[t].next() for t in range(T)] if mode == "lrn" else None
        # squares of the whole chunk first (the PE array runs ahead), then per PSUM bank:
        # window matmul -> log/exp -> multiply, so the engines pipeline inside a load chunk
        if mode == "lrn":
            for t, (c0, nc) in enumerate(tiles):
                em.act(qs[t].ap((nf,), partitions=nc), xs[t], func="square")
            mv = [qs[t].ap((fch,), partitions=nc) for t, (c0, nc) in enumerate(tiles)]
        else:
            mv = xs
        for m0 in range(0, nf, MM):
            mm = min(MM, nf - m0)
            for j, (c0, nc) in enumerate(tiles):
                ps = ppool.next().ap((mm,), partitions=nc)
                rs = reach[j]
                for k, i in enumerate(rs):
                    d0, nd = tiles[i]
                    em.matmul(ps, band.ap((nc,), elem_offset=i * C + c0, partitions=nd),
                              _sub(mv[i], m0, mm, nd), start=(k == 0), stop=(k == len(rs) - 1))
                o = cap(out, n, j, f0 + m0, mm) if o_in else ots[j].ap((mm,), elem_offset=m0, partitions=nc)
                if mode == "lrn":
                    tt = tpool.next().ap((mm,), partitions=nc)
                    em.act(tt, ps, func="log", scale=float(alpha), bias=float(bias))
                    em.act(tt, tt, func="exp", scale=-float(beta))
                    em.tt(o, _sub(xs[j], m0, mm, nc), tt, op="multiply")
                else:
                    em.copy(o, ps)
        for j, (c0, nc) in enumerate(tiles if not o_in else ()):
            em.dma_split(cap(out, n, j, f0, nf), ots[j].ap((nf,), partitions=nc))
    for pl in xpool + (qpool or []) + opool + [tpool, ppool]:
        pl.release()
    if band_slot is None:
        em.free(band)


def _sub(ap: isa.AP, e0: int, ne: int, nparts: int) -> isa.AP:
    """Elements [e0, e0+ne) of a 1-D tile AP (same partitions)."""
    return isa.AP(ap.mem, ap.start_partition, nparts, ap.offset + e0 * ap.itemsize, (ne,), (1,), ap.dtype)


def lrn(em: Emitter, x: Value, out: Value, size: int, pf: int, alpha: float, bias: float, beta: float,
        const, cdt: str, name: str = "lrn", band_slot=None):
    """ONNX LRN: out = x / (bias + alpha * sum_window x^2) ** beta, ``alpha`` already divided by
    ``size`` (the window is channels [c - pf, c - pf + size))."""
    N, C, F = x.ncf(1)
    B = band_matrix(C, size, pf)
    channel_window(em, x, out, B, size, pf, const, cdt, "lrn", 1, alpha, bias, beta, name, band_slot)


def channel_window_avg(em: Emitter, x: Value, out: Value, size: int, pf: int, count_include_pad: bool,
                       const, cdt: str, channel_axis: int, name: str = "cwin"):
    N, C, F = x.ncf(channel_axis)
    B = band_matrix(C, size, pf, "include" if count_include_pad else "exclude")
    channel_window(em, x, out, B, size, pf, const, cdt, "sum", channel_axis, name=name)


POWER_FUNCS = {2.0: "square", 0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal", 1.0: "identity"}


def power(em: Emitter, x: Value, out: Value, b: float, cdt: str):
    """out = x ** b (b a scalar constant), elementwise over the flat tensor."""
    n = x.size
    P = em.partitions
    it = isa.DTYPES[cdt]
    rows = max(1, min(P, (n * it) // 4096))
    F = n // rows
    pieces = [(0, rows, F)] if F else []
    if n - rows * F:
        pieces.append((rows * F, 1, n - rows * F))
    chunk = max(1, 16384 // it)
    pool = em.pool("sbuf", rows, min(chunk, max(F, n - rows * F)) * it, cdt, 3, "pow")
    steps = [(base, r, f, c0, min(chunk, f - c0)) for base, r, f in pieces for c0 in range(0, f, chunk)]
    func = POWER_FUNCS.get(float(b))
    if func is None and float(b) == int(b):
        raise CodegenError(f"power with integer exponent {b} (exp/log is only valid for x > 0)")

    def load(s):
        base, r, f, c0, nc = s
        t = pool.next().ap((nc,), partitions=r)
        em.dma_split(t, x.flat_ap(base + c0, r, f, (nc,), (1,)))
        return t

    nxt = load(steps[0])
    for i, s in enumerate(steps):
        base, r, f, c0, nc = s
        t = nxt
        nxt = load(steps[i + 1]) if i + 1 < len(steps) else None
        if func is not None:
            em.act(t, t, func=func)
        else:
            em.act(t, t, func="log")
            em.act(t, t, func="exp", scale=float(b))
        em.dma_split(out.flat_ap(base + c0, r, f, (nc,), (1,)), t)
    pool.release()


# ------------------------------------------------------------------ lowerings
from . import register_lowering  # noqa: E402


@register_lowering("lrn")
def lower_lrn(ctx, g):
    x = ctx.value(g.inputs[0])
    if len(x.shape) != 4:
        raise CodegenError(f"{g.tag}: LRN of a rank-{len(x.shape)} tensor")
    from .lowerings import planner_slot, release_slot
    lrn(ctx.em, x, ctx.out(g.output), int(g.param("size")), int(g.param("pf")), float(g.param("alpha")),
        float(g.param("bias")), float(g.param("beta")), ctx.const, ctx.cdt, name=g.name,
        band_slot=planner_slot(ctx, g, "band"))  # spatial tiling: the band matrix stays across bands
    release_slot(ctx, g)


@register_lowering("avg_pool3d")
def lower_avg_pool3d(ctx, g):
    """avg_pool3d with a (size, 1, 1) window: a window along dim 2 (the channel axis of an
    expand_dims'ed NCHW tensor) -> band matmul; anything else is not lowered."""
    ps = tuple(g.param("pool_size", ()) or ())
    pad = tuple(g.param("padding", ()) or ())
    if len(pad) == 3:
        pad = pad + pad
    x = ctx.value(g.inputs[0])
    if len(ps) != 3 or ps[1:] != (1, 1) or tuple(g.param("strides", (1, 1, 1))) != (1, 1, 1) or \
            len(pad) != 6 or any(pad[k] for k in (1, 2, 4, 5)) or g.param("ceil_mode", False) or \
            pad[0] + pad[3] != ps[0] - 1 or len(x.shape) != 5 or \
            tuple(g.param("dilation", (1, 1, 1)) or (1, 1, 1)) != (1, 1, 1):
        raise CodegenError(f"{g.tag}: avg_pool3d other than a (k, 1, 1) window with 'same' padding")
    channel_window_avg(ctx.em, x, ctx.out(g.output), int(ps[0]), int(pad[0]),
                       bool(g.param("count_include_pad", False)), ctx.const, ctx.cdt, channel_axis=2,
                       name=g.name)


@register_lowering("power")
def lower_power(ctx, g):
    if len(g.inputs) != 2 or not ctx.info(g.inputs[1]).is_constant or \
            np.asarray(ctx.info(g.inputs[1]).value).size != 1:
        raise CodegenError(f"{g.tag}: power needs a scalar constant exponent")
    x = ctx.value(g.inputs[0])
    out = ctx.out(g.output)
    if tuple(x.shape) != tuple(out.shape):
        raise CodegenError(f"{g.tag}: broadcasting power")
    power(ctx.em, x, out, float(np.asarray(ctx.info(g.inputs[1]).value).reshape(())), ctx.cdt)
