"""Elementwise operators with NumPy broadcasting: unary activations (Scalar engine),
n-ary binary chains (Vector engine), optional fused activation after the chain.

Schedule: the output is viewed as [rows on partitions, free]; the free axis is cut
into chunks of ``CHUNK_BYTES`` per partition; each chunk is loaded (one DMA per
operand, queues balanced by the Emitter), computed and stored, with ``BUFS`` rotating
buffers so that loads of chunk i+1 overlap compute of chunk i and the store of i-1.
"""
from __future__ import annotations

import numpy as np

from target import isa
from .emitter import CodegenError, Emitter
from .values import Value, prod

CHUNK_BYTES = 16384  # per partition per operand: well above the 2 KiB DMA efficiency knee
BUFS = 3
BLOCK = 512  # elements per partition of a resident operand's pixel block (a matmul's moving size)
DIV = 2  # aim for about this many chunks (pipelining) when the tensor is big enough
PIECE_BYTES = 192 * 1024  # streaming kernels: fewer, larger DMAs (latency is per transfer)
COMMUTATIVE = {"add", "multiply", "max", "min"}
UNARY = set(isa.ACT_FUNCS)


def bcast_strides(shape, out_shape):
    r = len(out_shape)
    s = (1,) * (r - len(shape)) + tuple(shape)
    st, acc = [0] * r, 1
    for i in reversed(range(r)):
        st[i] = acc if s[i] != 1 else 0
        acc *= s[i]
    return st


def coalesce(out_shape, stride_lists):
    """Merge adjacent dims that are contiguous for every operand; drop size-1 dims.
    Returns [(size, [stride per operand])], outermost first."""
    dims = [(int(out_shape[i]), [sl[i] for sl in stride_lists])
            for i in range(len(out_shape)) if out_shape[i] != 1]
    merged = []
    for size, sts in dims:
        if merged:
            psize, psts = merged[-1]
            if all(ps == s * size for ps, s in zip(psts, sts)):
                merged[-1] = (psize * size, sts)
                continue
        merged.append((size, sts))
    return merged


def elementwise(em: Emitter, out: Value, inputs: list[Value], op: str, post: str = None,
                cdt: str = None):
    """out = post(((in0 op in1) op in2) ...); a single input with op in ACT_FUNCS is a
    unary activation."""
    cdt = cdt or out.dtype
    unary = len(inputs) == 1
    if unary and op not in UNARY:
        raise CodegenError(f"unary elementwise op {op!r} not supported")
    if not unary and op not in isa.ALU_OPS:
        raise CodegenError(f"binary elementwise op {op!r} not supported")
    if out.sbuf is not None or any(v.sbuf is not None for v in inputs):
        return elementwise_resident(em, out, inputs, op, post, cdt)
    oshape = tuple(out.shape)
    strides = [bcast_strides(v.shape, oshape) for v in inputs]
    ostr = bcast_strides(oshape, oshape)
    dims = coalesce(oshape, [ostr] + strides)
    n = prod(oshape)
    P = em.partitions
    if not dims:
        dims = [(1, [1] + [0] * len(inputs))]
    flat = all(all(d[1][k + 1] in (0, d[1][0]) for d in dims) for k in range(len(inputs))) and \
        all(len({d[1][k + 1] == 0 for d in dims}) == 1 for k in range(len(inputs)))
    if flat:
        # [rows=P, F] contiguous rows, plus a tail of n % P elements on one partition
        kinds = ["scalar" if all(d[1][k + 1] == 0 for d in dims) else "full" for k in range(len(inputs))]
        it = isa.DTYPES[cdt]
        # rows of >= ~4 KiB each (DMA efficiency) but no more than 128 partitions
        P = max(1, min(P, (n * it) // 4096))
        F = n // P
        pieces = []
        if F:
            pieces.append((0, P, F))
        if n % P:
            pieces.append((P * F, 1, n % P))
        for base, rows, f in pieces:
            _run_rows(em, out, inputs, op, post, cdt, rows, f,
                      lambda k, r0, nr, c0, nc, base=base, f=f: _flat_ap(inputs, out, kinds, k, base, r0, nr, c0, nc, f),
                      kinds)
        return
    # general broadcast: partitions = outermost coalesced dim, free = the rest
    if len(dims) > 4:
        raise CodegenError(f"broadcast of {[v.shape for v in inputs]} -> {oshape} needs too many dims")
    rows_total = dims[0][0]
    fdims = dims[1:]
    fsizes = [d[0] for d in fdims]
    F = prod(fsizes)
    kinds = []
    for k in range(len(inputs)):
        if all(d[1][k + 1] == 0 for d in fdims):
            kinds.append("column")
        else:
            kinds.append("strided")

    def ap_for(k, r0, nr, c0, nc):
        # k = -1: output; c0/nc cut the outermost free dim
        sts = [d[1][k + 1] for d in dims]
        v = out if k < 0 else inputs[k]
        inner = prod(fsizes[1:])
        sizes = [nc] + fsizes[1:] if fsizes else [1]
        fst = sts[1:] if fsizes else [0]
        off = r0 * sts[0] + (c0 * fst[0] if fsizes else 0)
        if k >= 0 and kinds[k] == "column":
            return v.flat_ap(off, nr, sts[0], (1,), (1,))
        return v.flat_ap(off, nr, sts[0], sizes, fst)

    if fsizes:
        outer, inner = fsizes[0], prod(fsizes[1:])
    else:
        outer, inner = 1, 1
    _run_rows(em, out, inputs, op, post, cdt, rows_total, outer, ap_for, kinds, inner=inner,
              tile_sizes=lambda nc: [nc] + fsizes[1:] if fsizes else [1])


def elementwise_resident(em: Emitter, out: Value, inputs: list, op: str, post: str = None, cdt: str = None):
    """Elementwise with SBUF-resident operands (row-split layout, see values.py): the tensor is
    ``rows`` partitions x ``L`` contiguous elements; engine instructions read resident operands
    and write a resident output in place, HBM operands stream through rotating tiles.  Operands
    must have the output's shape (same ``rows`` when resident) or be single-element scalars."""
    cdt = cdt or out.dtype
    it = isa.DTYPES[cdt]
    size = prod(out.shape)
    res = [v for v in list(inputs) + [out] if v.sbuf is not None]
    rows = res[0].sbuf.partitions
    images = max(1, res[0].images)
    if size % (rows * images) or any(v.sbuf.partitions != rows or max(1, v.images) != images for v in res):
        raise CodegenError(f"resident elementwise {out.name}: operands split into different rows")
    img = size // images
    L = img // rows
    full = []
    for v in inputs:
        if tuple(v.shape) == tuple(out.shape):
            full.append(True)
        elif prod(v.shape) == 1 and v.sbuf is None:
            full.append(False)
        else:
            raise CodegenError(f"resident elementwise: operand {v.name} {v.shape} vs output {out.shape}")
    if not any(full):
        raise CodegenError("elementwise op with only scalar operands")
    streamed = [k for k, v in enumerate(inputs) if full[k] and v.sbuf is None]
    chunk = L if not streamed and out.sbuf is not None else max(1, min(L, CHUNK_BYTES // it))
    pools = {k: em.pool("sbuf", rows, chunk * it, cdt, BUFS, f"ewr{k}_") for k in streamed}
    opool = None if out.sbuf is not None else em.pool("sbuf", rows, chunk * it, cdt, BUFS, "ewr_o")
    scal = {}
    for k, v in enumerate(inputs):
        if not full[k]:
            t = em.sbuf_tile(rows, it, cdt, f"ewr_s{k}")
            em.dma(t.ap((1,)), v.flat_ap(0, rows, 0, (1,), (1,)))
            scal[k] = t
    order = [k for k in range(len(inputs)) if full[k]] + [k for k in range(len(inputs)) if not full[k]]
    if order[0] != 0 and op not in COMMUTATIVE:
        raise CodegenError(f"{op} with a broadcast first operand")
    # a row window (Value.window) of a tensor is contiguous only within one channel plane: its
    # chunks must not cross planes
    plane = prod(out.shape[2:]) if any(v.base is not None for v in list(inputs) + [out]) else L
    if L % plane:
        plane = L
    pieces = [(n_img, f0, min(chunk, p0 + plane - f0)) for n_img in range(images)
              for p0 in range(0, L, plane) for f0 in range(p0, p0 + plane, chunk)]
    for n_img, f0, nf in pieces:
        f0 += n_img * img  # flat element of (image n_img, row 0, column f0)
        aps = {}
        for k, v in enumerate(inputs):
            if not full[k]:
                aps[k] = scal[k].ap((1,))
            elif v.sbuf is not None:
                aps[k] = v.flat_ap(f0, rows, L, (nf,), (1,))
            else:
                t = pools[k].next().ap((nf,))
                em.dma_split(t, v.flat_ap(f0, rows, L, (nf,), (1,)))
                aps[k] = t
        dst = out.flat_ap(f0, rows, L, (nf,), (1,)) if opool is None else opool.next().ap((nf,))
        if len(inputs) == 1:
            em.act(dst, aps[0], func=op)
        else:
            for i, k in enumerate(order[1:]):
                src = aps[order[0]] if i == 0 else dst
                if full[k]:
                    em.tt(dst, src, aps[k], op=op)
                else:
                    em.ts(dst, src, op0=op, operand0=aps[k])
            if post:
                em.act(dst, dst, func=post)
        if opool is not None:
            em.dma_split(out.flat_ap(f0, rows, L, (nf,), (1,)), dst)
    for p in pools.values():
        p.release()
    if opool is not None:
        opool.release()
    for t in scal.values():
        em.free(t)


def _flat_ap(inputs, out, kinds, k, base, r0, nr, c0, nc, f):
    v = out if k < 0 else inputs[k]
    if k >= 0 and kinds[k] == "scalar":
        return v.flat_ap(0, nr, 0, (1,), (1,))
    return v.flat_ap(base + r0 * f + c0, nr, f, (nc,), (1,))


def _run_rows(em, out, inputs, op, post, cdt, rows_total, outer, ap_for, kinds, inner=1, tile_sizes=None):
    P = em.partitions
    it = isa.DTYPES[cdt]
    chunk = max(1, CHUNK_BYTES // (it * inner))
    # at least ~4 chunks when the tensor is big enough, so loads, compute and stores overlap
    total_pp = outer * inner * it
    chunk = min(chunk, max(1, max(2048, total_pp // DIV) // (it * inner)))
    chunk = max(1, min(chunk, outer))
    chunk = -(-outer // (-(-outer // chunk)))  # equal chunks
    nfull = sum(1 for k in kinds if k in ("full", "strided"))
    ncol = len(kinds) - nfull
    tile_elems = chunk * inner
    rows = min(P, rows_total)
    # budget: shrink the chunk if SBUF is tight
    while chunk > 1 and (max(nfull, 1) * BUFS * tile_elems * it + ncol * BUFS * 64) > em.sbuf.largest_free() // 2:
        chunk = max(1, chunk // 2)
        tile_elems = chunk * inner
    pools = {}
    for k, kind in enumerate(kinds):
        if kind in ("full", "strided"):
            pools[k] = em.pool("sbuf", rows, tile_elems * it, cdt, BUFS, f"ew{k}_")
        else:
            pools[k] = em.pool("sbuf", rows, it, cdt, BUFS, f"ewc{k}_")
    if tile_sizes is None:
        tile_sizes = lambda nc: [nc]
    em.note(rows=min(P, rows_total), chunk_elems=chunk * inner, chunks=-(-rows_total // P) * -(-outer // chunk))
    steps = [(r0, min(P, rows_total - r0), c0, min(chunk, outer - c0))
             for r0 in range(0, rows_total, P) for c0 in range(0, outer, chunk)]

    def load(step):
        r0, nr, c0, nc = step
        sizes = tile_sizes(nc)
        tiles = {}
        for k in range(len(inputs)):
            t = pools[k].next()
            if kinds[k] in ("full", "strided"):
                dst = t.ap(sizes, partitions=nr)
            else:
                dst = t.ap((1,), partitions=nr)
            em.dma_split(dst, ap_for(k, r0, nr, c0, nc), piece_bytes=PIECE_BYTES)
            tiles[k] = dst
        return tiles

    # software pipeline in emission order: the loads of step i+1 are queued before the
    # store of step i, so no load waits behind a store (queues are in order)
    nxt = load(steps[0]) if steps else None
    for i, step in enumerate(steps):
        r0, nr, c0, nc = step
        tiles = nxt
        nxt = load(steps[i + 1]) if i + 1 < len(steps) else None
        res = _compute(em, tiles, kinds, op, post, tile_sizes(nc), nr)
        em.dma_split(ap_for(-1, r0, nr, c0, nc), res, piece_bytes=PIECE_BYTES)
    for p in pools.values():
        p.release()


def _compute(em, tiles, kinds, op, post, sizes, nr):
    n = len(tiles)
    if n == 1:
        t = tiles[0]
        if kinds[0] not in ("full", "strided"):
            raise CodegenError("unary op on a broadcast scalar")
        em.act(t, t, func=op)
        return t
    order = list(range(n))
    full = [k for k in order if kinds[k] in ("full", "strided")]
    if not full:
        raise CodegenError("elementwise op with only scalar operands")
    first = order[0]
    if kinds[first] not in ("full", "strided"):
        if op not in COMMUTATIVE:
            raise CodegenError(f"{op} with a broadcast first operand")
        # move the first full operand to the front (commutative chain)
        order.remove(full[0])
        order.insert(0, full[0])
    acc = tiles[order[0]]
    for k in order[1:]:
        if kinds[k] in ("full", "strided"):
            em.tt(acc, acc, tiles[k], op=op)
        else:
            em.ts(acc, acc, op0=op, operand0=tiles[k])
    if post:
        em.act(acc, acc, func=post)
    return acc


def _cols(em, rows, ncols, pinned, arr, loads):
    """(tile, first column) of the [rows, ncols] fp32 epilogue columns: from the program's
    constant block when ``pinned`` places them there, else a tile filled by ``loads(tile)``."""
    got = pinned(arr()) if pinned is not None else None
    if got is not None:
        return got[0], got[1], False
    cols = em.sbuf_tile(rows, ncols * 4, "fp32", "bn_cols")
    loads(cols)
    return cols, 0, True


def _channel_affine_resident(em, x, out, scale, bias, func, cdt, pinned=None, values=None):
    """channel_affine over the row-split layout (N = 1): ``rows`` partitions of ``planes``
    channel planes each (channel p*planes + j on partition p, plane j); the per-channel scale and
    shift load as [rows, planes] columns (one DMA each, partition stride ``planes``)."""
    N, C, F = x.ncf()
    v0 = x if x.sbuf is not None else out
    rows = v0.sbuf.partitions
    if C % rows or any(v.sbuf is not None and (v.sbuf.partitions != rows or max(1, v.images) != N)
                       for v in (x, out)):
        raise CodegenError(f"resident batch_norm {x.name}: layout does not split by channels")
    planes = C // rows
    L = planes * F
    it = isa.DTYPES[cdt]
    def arr():
        sc, bi = values
        return np.concatenate([np.asarray(sc, np.float32).reshape(rows, planes),
                               np.asarray(bi, np.float32).reshape(rows, planes)], axis=1)

    def loads(cols):
        em.dma(cols.ap((planes,), partitions=rows), scale.flat_ap(0, rows, planes, (planes,), (1,)))
        em.dma(cols.ap((planes,), elem_offset=planes, partitions=rows), bias.flat_ap(0, rows, planes, (planes,), (1,)))
    cols, c0, own = _cols(em, rows, 2 * planes, pinned if values is not None else None, arr, loads)
    chunk = max(1, min(F, CHUNK_BYTES // it))
    pin = None if x.sbuf is not None else em.pool("sbuf", rows, chunk * it, cdt, BUFS, "bnr_x")
    pout = None if out.sbuf is not None else em.pool("sbuf", rows, chunk * it, cdt, BUFS, "bnr_o")
    # both resident: pixel blocks outermost (all planes of a block, then the next block), so a
    # consumer that walks pixel blocks -- a conv's matmuls -- starts on block 0 while the rest is
    # computed (the engines work in parallel instead of one after the other)
    step = chunk if (pin or pout) else min(F, BLOCK)
    order = [(n_img, f0, j) for n_img in range(N) for f0 in range(0, F, step) for j in range(planes)] \
        if not (pin or pout) else [(n_img, f0, j) for n_img in range(N) for j in range(planes) for f0 in range(0, F, step)]
    for n_img, f0, j in order:
        sc = cols.ap((1,), elem_offset=c0 + j, partitions=rows)
        bi = cols.ap((1,), elem_offset=c0 + planes + j, partitions=rows)
        nf = min(step, F - f0)
        f0 += n_img * C * F  # image n_img
        src = x.flat_ap(j * F + f0, rows, L, (nf,), (1,))
        if pin is not None:
            t = pin.next().ap((nf,))
            em.dma_split(t, src)
            src = t
        dst = out.flat_ap(j * F + f0, rows, L, (nf,), (1,)) if pout is None else pout.next().ap((nf,))
        em.act(dst, src, func=func, scale=sc, bias=bi)
        if pout is not None:
            em.dma_split(out.flat_ap(j * F + f0, rows, L, (nf,), (1,)), dst)
    for p in (pin, pout):
        if p is not None:
            p.release()
    if own:
        em.free(cols)


def _tile_columns(em, C, scale, bias, pinned, values):
    """(tile, first column, own) of the per-channel columns over 128-channel tiles: scale of tile
    ct in column 2 ct, shift in 2 ct + 1 (the HBM path's tiles and a cyclic layout's planes)."""
    P = em.partitions
    CT = -(-C // P)

    def arr():
        a = np.zeros((P, 2 * CT), np.float32)
        for ct in range(CT):
            nc = min(P, C - ct * P)
            a[:nc, 2 * ct] = np.asarray(values[0], np.float32)[ct * P:ct * P + nc]
            a[:nc, 2 * ct + 1] = np.asarray(values[1], np.float32)[ct * P:ct * P + nc]
        return a

    def loads(cols):
        for ct in range(CT):
            c0, nc = ct * P, min(P, C - ct * P)
            em.dma(cols.ap((1,), elem_offset=2 * ct, partitions=nc), scale.flat_ap(c0, nc, 1, (1,), (1,)))
            em.dma(cols.ap((1,), elem_offset=2 * ct + 1, partitions=nc), bias.flat_ap(c0, nc, 1, (1,), (1,)))
    return _cols(em, P, 2 * CT, pinned if values is not None else None, arr, loads)


def _channel_affine_cyclic(em, x, out, scale, bias, func, cdt, pinned=None, values=None):
    """channel_affine where an operand has the cyclic layout (a concat chain's buffer, N = 1):
    plane j holds channels [128 j, 128 j + rows_j) on partitions 0..rows_j; per pixel block, one
    Activation per plane (the conv that reads the output starts on the first block)."""
    N, C, F = x.ncf()
    P = em.partitions
    cols, c0, own = _tile_columns(em, C, scale, bias, pinned, values)
    step = min(F, BLOCK)
    for f0 in range(0, F, step):
        nf = min(step, F - f0)
        for j in range(-(-C // P)):
            nc = min(P, C - j * P)
            em.act(out.chan_ap(0, j * P, nc, f0, (nf,), (1,)), x.chan_ap(0, j * P, nc, f0, (nf,), (1,)), func=func,
                   scale=cols.ap((1,), elem_offset=c0 + 2 * j, partitions=nc),
                   bias=cols.ap((1,), elem_offset=c0 + 2 * j + 1, partitions=nc))
    if own:
        em.free(cols)


def affine_columns(C: int, partitions: int = 128) -> int:
    """fp32 columns channel_affine needs for C channels in either layout (the constant block's
    reservation): 2 x planes (resident row-split) or 2 x channel tiles (HBM path)."""
    from .conv import ChanMap
    return 2 * max(ChanMap(C, partitions).T, -(-C // partitions))


def channel_affine(em: Emitter, x: Value, out: Value, scale: Value, bias: Value, func="identity",
                   cdt: str = None, pinned=None, values=None):
    """out[n, c, ...] = func(x[n, c, ...] * scale[c] + bias[c]) (one Scalar-engine Activation per
    tile; scale/bias are [C] vectors in HBM, loaded once as per-partition columns).  ``values``
    (numpy scale, bias) and ``pinned(arr) -> (tile, column) | None``: the columns may come from
    the program's constant block instead (then ``scale``/``bias`` are not read)."""
    cdt = cdt or out.dtype
    N, C, F = x.ncf()
    P = em.partitions
    cyc = [v.cyclic for v in (x, out) if v.sbuf is not None]
    if len(cyc) == 2 and all(cyc) and N == 1:
        return _channel_affine_cyclic(em, x, out, scale, bias, func, cdt, pinned, values)
    if (x.sbuf is not None or out.sbuf is not None) and not any(cyc):
        return _channel_affine_resident(em, x, out, scale, bias, func, cdt, pinned, values)
    # (otherwise staged through SBUF tiles per 128-channel tile: a cyclic operand's tiles are its planes)
    it = isa.DTYPES[cdt]
    chunk = max(1, min(F, CHUNK_BYTES // it))
    CT = -(-C // P)
    cols, k0, own = _tile_columns(em, C, scale, bias, pinned, values)
    pool = em.pool("sbuf", P, chunk * it, cdt, BUFS, "bn_x")
    for ct in range(CT):
        c0, nc = ct * P, min(P, C - ct * P)
        sc = cols.ap((1,), elem_offset=k0 + 2 * ct, partitions=nc)
        bi = cols.ap((1,), elem_offset=k0 + 2 * ct + 1, partitions=nc)
        for n in range(N):
            for f0 in range(0, F, chunk):
                nf = min(chunk, F - f0)
                t = pool.next().ap((nf,), partitions=nc)
                em.dma_split(t, x.chan_ap(n, c0, nc, f0, (nf,), (1,)))
                em.act(t, t, func=func, scale=sc, bias=bi)
                em.dma_split(out.chan_ap(n, c0, nc, f0, (nf,), (1,)), t)
    pool.release()
    if own:
        em.free(cols)
