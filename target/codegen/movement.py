"""Data-movement operators: concat, permute_dims (transpose), standalone copies.

These move bytes and compute nothing, so they run on the DMA queues only:

* ``concat``: every input is copied into its slice of the output.  For HBM-placed
  tensors it is one HBM->HBM DMA per input and outer index: the contiguous block as one
  row (the DMA efficiency curve counts contiguous bytes per row), cut by ``dma_split``
  into pieces on different queues; blocks under 2 KiB become one row per outer index.  For SBUF-resident values along the channel
  axis the copy goes through :meth:`Value.chan_ap` (an SBUF<->HBM or SBUF->SBUF DMA).
* ``permute_dims``: the output is written in row-major order; the source is read with the
  permuted strides (a strided DMA descriptor, as DMA engines do for transposes).  Dims
  that stay adjacent are coalesced; more than 5 remaining dims loop in Python.
  ShuffleNet's channel shuffle (reshape -> permute(0,2,1,3,4) -> reshape) becomes
  contiguous runs of H*W elements.
"""
from __future__ import annotations

import itertools

from target import isa
from .emitter import CodegenError, Emitter
from .values import Value, prod

MAX_DMA_BYTES = 1 << 20  # one logical transfer per ~1 MiB (then dma_split spreads it)
MAX_DMA_ELEMS = MAX_DMA_BYTES // 4


def _norm_axis(axis, rank):
    axis = int(axis)
    if axis < 0:
        axis += rank
    if not 0 <= axis < rank:
        raise CodegenError(f"axis {axis} out of range for rank {rank}")
    return axis


def copy_block(em: Emitter, dst: Value, dst_off: int, src: Value, src_off: int, n_elems: int):
    """Copy ``n_elems`` contiguous elements src[src_off:] -> dst[dst_off:] (both HBM): one
    contiguous row, cut by ``dma_split`` into ~96 KiB pieces on different queues."""
    for e0 in range(0, n_elems, MAX_DMA_ELEMS):
        ne = min(MAX_DMA_ELEMS, n_elems - e0)
        em.dma_split(dst.flat_ap(dst_off + e0, 1, 0, (ne,), (1,)),
                     src.flat_ap(src_off + e0, 1, 0, (ne,), (1,)))


def concat(em: Emitter, out: Value, inputs: list[Value], axis: int):
    rank = len(out.shape)
    axis = _norm_axis(axis, rank)
    outer = prod(out.shape[:axis])
    inner = prod(out.shape[axis + 1:])
    total = out.shape[axis]
    if axis == 1 and rank == 4 and any(v.base is not None for v in list(inputs) + [out]):
        return concat_windows(em, out, inputs)
    if (outer == 1 or axis == 1) and (out.sbuf is not None or any(v.sbuf is not None for v in inputs)):
        return concat_flat(em, out, inputs, outer)
    c0 = 0
    for v in inputs:
        if len(v.shape) != rank:
            raise CodegenError(f"concat input {v.name} has rank {len(v.shape)}, output {rank}")
        ci = v.shape[axis]
        blk = ci * inner
        if out.hbm is not None and v.hbm is not None:
            if outer == 1 or blk * isa.DTYPES[v.dtype] >= 2048:
                for o in range(outer):
                    copy_block(em, out, (o * total + c0) * inner, v, o * blk, blk)
            else:
                # small blocks: one DMA with one row per outer index
                rows_per = max(1, MAX_DMA_BYTES // max(1, blk * 4))
                for o0 in range(0, outer, rows_per):
                    no = min(rows_per, outer - o0)
                    d = out.flat_ap((o0 * total + c0) * inner, no, total * inner, (blk,), (1,))
                    s = v.flat_ap(o0 * blk, no, blk, (blk,), (1,))
                    em.dma_split(d, s)
        elif axis == 1:
            # resident values: channel rows through chan_ap (tiles of 128 channels)
            P = em.partitions
            N = outer
            for n in range(N):
                for k0 in range(0, ci, P):
                    nk = min(P, ci - k0)
                    # keep both sides inside one 128-channel tile
                    parts = _split_tiles([(c0 + k0, nk)], P) if out.sbuf is not None else [(c0 + k0, nk)]
                    for oc, onc in parts:
                        sc = oc - c0
                        em.dma(out.chan_ap(n, oc, onc, 0, (inner,), (1,)),
                               v.chan_ap(n, sc, onc, 0, (inner,), (1,)))
        else:
            raise CodegenError(f"concat along axis {axis} of SBUF-resident values")
        c0 += ci
    if c0 != total:
        raise CodegenError(f"concat inputs give {c0} along axis {axis}, output has {total}")


def concat_windows(em: Emitter, out: Value, inputs: list):
    """Channel concat when an operand is a row window (spatial tiling): a window's channel planes
    are separate runs of its base, so every DMA moves whole planes: every s-th channel at once,
    s = the channel planes per partition of a resident operand (1 for HBM), at most 128."""
    N, C, Hw, W = out.shape
    Fw = Hw * W

    def planes(v):
        return None if v.sbuf is None else v.shape[1] // v.sbuf.partitions

    To = planes(out)
    for n in range(N):
        c0 = 0
        for v in inputs:
            ci = v.shape[1]
            Ti = planes(v)
            ts = {t for t in (To, Ti) if t}
            runs = []
            if len(ts) > 1:  # both resident, different layouts: plane by plane
                runs = [(c, 1, 1) for c in range(ci)]
            else:
                st = ts.pop() if ts else 1
                for r in range(st):
                    cs = [c for c in range(ci) if (c0 + c if To else c) % st == r]
                    runs += [(cs[k], len(cs[k:k + 128]), st) for k in range(0, len(cs), 128)]
            for c, cnt, st in runs:
                em.dma_split(out.flat_ap((n * C + c0 + c) * Fw, cnt, st * Fw, (Fw,), (1,)),
                             v.flat_ap((n * ci + c) * Fw, cnt, st * Fw, (Fw,), (1,)))
            c0 += ci
        if c0 != C:
            raise CodegenError(f"concat inputs give {c0} channels, output has {C}")


def _flat_range_ap(v: Value, off: int, n: int):
    """One AP over the flat elements [off, off+n) of ``v`` (HBM: one row; SBUF row-split layout:
    whole rows, or a piece of one row), or None when the range needs several."""
    if v.sbuf is None:
        return v.flat_ap(off, 1, 0, (n,), (1,))
    L = _row_len(v)
    if off % L == 0 and n % L == 0 and (off % (L * v.sbuf.partitions)) + n <= L * v.sbuf.partitions:
        return v.flat_ap(off, n // L, L, (L,), (1,))
    if off // L == (off + n - 1) // L:
        return v.flat_ap(off, 1, L, (n,), (1,))
    return None


def _row_len(v: Value):
    if v.sbuf is not None and v.cyclic:  # one channel per row (see values.py)
        return v.ncf()[2]
    return None if v.sbuf is None else prod(v.shape) // max(1, v.images) // v.sbuf.partitions


def _plane_cuts(v: Value, base: int, lo: int, hi: int) -> set:
    """Positions in [lo, hi) (coordinates where ``v`` starts at ``base``) where a cyclic value's
    next plane begins: an AP covers one plane."""
    if v.sbuf is None or not v.cyclic:
        return set()
    step = v.ncf()[2] * v.sbuf.partitions
    return {k for k in range(base + step, hi, step) if k >= lo}


def concat_flat(em: Emitter, out: Value, inputs: list, images: int = 1):
    """Concat along the first axis after ``images`` (N images along channels, or nothing before
    the axis): per image, input i is the flat range [off_i, off_i + size_i) of the output image,
    so it moves with in-order DMAs (the DMA reshapes between the two row-split layouts): one DMA
    for the part aligned to both layouts' rows (multiples of their lcm), single-row pieces for an
    unaligned head and tail."""
    import math

    Lo = _row_len(out)
    out_img = prod(out.shape) // images
    # the least bytes per DMA piece of a copy (``LowerOptions.copy_piece``): a concat's copies
    # are on the critical path of its readers, so smaller pieces over more queues finish sooner,
    # at one trigger latency more per piece of queue work
    piece = em.options.copy_piece
    for n_img in range(images):
        off = 0
        for v in inputs:
            n = prod(v.shape) // images
            Lv = _row_len(v)
            Ls = [L for L in (Lo, Lv) if L]
            lcm = 1
            for L in Ls:
                lcm = lcm * L // math.gcd(lcm, L)
            a, b = off, off + n  # output-image coordinates
            if lcm == 1:
                pieces = [(a, n)]
            else:
                bases = [(Lo, 0)] * (Lo is not None) + [(Lv, off)] * (Lv is not None)

                def aligned(x):
                    return all((x - base) % L == 0 for L, base in bases)
                h = a
                while h < b and not aligned(h):
                    h += 1
                t = b
                while t > h and not aligned(t):
                    t -= 1
                cuts = set()
                for lo, hi in ((a, h), (t, b)):
                    for L, base in bases:
                        k = lo + ((-(lo - base)) % L)
                        while k < hi:
                            cuts.add(k)
                            k += L
                # the aligned middle is whole rows of both layouts: cut it at multiples of the lcm
                # into about one piece per queue (a row-split relayout moves across partitions, so
                # Emitter.dma_split cannot cut it; one DMA would run on one queue alone)
                units = (t - h) // lcm
                npc = min(len(em.dma_streams), units, max(1, (t - h) * v.itemsize // piece))
                if npc > 1:
                    step = -(-units // npc) * lcm
                    cuts |= set(range(h + step, t, step))
                cuts |= _plane_cuts(out, 0, a, b) | _plane_cuts(v, off, a, b)
                pts = sorted({a, b, h, t} | cuts)
                pieces = [(x, y - x) for x, y in zip(pts, pts[1:]) if y > x]
            for o, c in pieces:
                d = _flat_range_ap(out, n_img * out_img + o, c)
                s_ = _flat_range_ap(v, n_img * n + o - off, c)
                if d is None or s_ is None:
                    raise CodegenError(f"concat {out.name}: range [{o}, {o + c}) does not map to one AP")
                if d == s_:
                    continue  # written in place (the input is a slice of the output's buffer)
                em.consulted.add("copy_piece")
                em.dma_split(d, s_, min_piece=piece)  # over the queues: one queue moves ~17 GB/s
            off += n
        if off != out_img:
            raise CodegenError(f"concat inputs give {off} elements per image, output has {out_img}")


def _split_tiles(ranges, P):
    out = []
    for c0, nc in ranges:
        c = c0
        while c < c0 + nc:
            e = min(c0 + nc, (c // P + 1) * P)
            out.append((c, e - c))
            c = e
    return out


def permute(em: Emitter, out: Value, x: Value, axes):
    rank = len(x.shape)
    axes = tuple(range(rank))[::-1] if axes is None or len(axes) == 0 else tuple(_norm_axis(a, rank) for a in axes)
    if sorted(axes) != list(range(rank)):
        raise CodegenError(f"permute_dims axes {axes} are not a permutation of rank {rank}")
    if x.hbm is None or out.hbm is None:
        raise CodegenError("permute_dims of SBUF-resident values")
    in_strides = []
    acc = 1
    for s in reversed(x.shape):
        in_strides.append(acc)
        acc *= int(s)
    in_strides = in_strides[::-1]
    oshape = [int(x.shape[a]) for a in axes]
    sstr = [in_strides[a] for a in axes]
    # drop size-1 dims and merge output-adjacent dims that are adjacent in the source too
    dims = []
    for n, s in zip(oshape, sstr):
        if n == 1:
            continue
        if dims and dims[-1][1] == s * n:
            dims[-1] = (dims[-1][0] * n, s)
        else:
            dims.append((n, s))
    if not dims:
        dims = [(1, 1)]
    ostr, acc = [], 1
    for n, _ in reversed(dims):
        ostr.append(acc)
        acc *= n
    ostr = ostr[::-1]
    sizes = [d[0] for d in dims]
    sst = [d[1] for d in dims]
    if len(dims) == 1:
        copy_block(em, out, 0, x, 0, sizes[0])  # a permutation that keeps the order
        return
    # the innermost 4 dims go into the AP free dims when possible; one dim becomes the row
    # (partition-like) dim; the rest loop in Python
    loop = dims[:-5] if len(dims) > 5 else []
    body = dims[len(loop):]
    bsizes = sizes[len(loop):]
    it = isa.DTYPES[x.dtype]
    # split a huge row dim so every DMA stays below MAX_DMA_BYTES
    row_n = bsizes[0]
    row_bytes = prod(bsizes[1:]) * it
    rows_per = max(1, MAX_DMA_BYTES // max(1, row_bytes))
    for idx in itertools.product(*[range(d[0]) for d in loop]):
        so = sum(i * d[1] for i, d in zip(idx, loop))
        oo = sum(i * s for i, s in zip(idx, ostr[:len(loop)]))
        for r0 in range(0, row_n, rows_per):
            nr = min(rows_per, row_n - r0)
            fs = tuple(bsizes[1:])
            d = out.flat_ap(oo + r0 * ostr[len(loop)], nr, ostr[len(loop)], fs, tuple(ostr[len(loop) + 1:]))
            s = x.flat_ap(so + r0 * sst[len(loop)], nr, sst[len(loop)], fs, tuple(sst[len(loop) + 1:]))
            em.dma_split(d, s)


# ------------------------------------------------------------------ lowerings
from . import register_lowering  # noqa: E402


@register_lowering("concat")
def lower_concat(ctx, g):
    concat(ctx.em, ctx.out(g.output), [ctx.value(i) for i in g.inputs], g.param("axis", 0))


@register_lowering("permute_dims")
def lower_permute_dims(ctx, g):
    permute(ctx.em, ctx.out(g.output), ctx.value(g.inputs[0]), g.param("axes"))
