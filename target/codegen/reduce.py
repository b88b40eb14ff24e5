"""Reductions over trailing axes: ``mean`` / ``sum`` / ``max`` / ``min`` (ONNX
GlobalAveragePool arrives as ``mean(x, axis=[2, 3], keepdims=True)``).

The tensor is viewed as [rows, L] with the reduced (trailing, contiguous) axes on the free
axis and everything before them on partitions (for NCHW: channels on partitions, the plane
on the free axis).  Per tile of 128 rows: one DMA in (several tiles' worth of free elements
per partition when rows are few), one TensorReduce (Vector), the 1/L scale for ``mean`` on
the Scalar engine, one DMA out.  Very long rows are reduced in chunks and combined.
"""
from __future__ import annotations

from target import isa
from .emitter import CodegenError, Emitter
from .values import Value, prod

CHUNK_BYTES = 32768
BUFS = 3


def reduce_trailing(em: Emitter, x: Value, out: Value, axes, op: str, cdt: str):
    shape = tuple(x.shape)
    rank = len(shape)
    axes = sorted({(a + rank) % rank for a in (axes if axes is not None and len(axes) else range(rank))})
    if axes != list(range(axes[0], rank)):
        raise CodegenError(f"reduction over non-trailing axes {axes} of {shape}")
    rows_total = prod(shape[:axes[0]])
    L = prod(shape[axes[0]:])
    if prod(out.shape) != rows_total:
        raise CodegenError(f"reduction output {out.shape} does not match {rows_total} rows")
    P = em.partitions
    it = isa.DTYPES[cdt]
    rop = "max" if op == "max" else ("min" if op == "min" else "add")
    if x.sbuf is not None:  # resident: reduced in place, the results stored with one split DMA
        return _reduce_resident(em, x, out, L, op, rop)
    done = 0
    if rows_total >= 2 * P and L * it <= CHUNK_BYTES:
        done = _reduce_row_split(em, x, out, L, op, rop, rows_total // P, it, cdt)
    chunk = max(1, min(L, CHUNK_BYTES // it))
    nchunks = -(-L // chunk)
    rows = min(P, rows_total - done)
    if rows <= 0:
        return
    xin = em.pool("sbuf", rows, chunk * it, cdt, BUFS, "red_x")
    acc = em.pool("sbuf", rows, 2 * 4, "fp32", BUFS, "red_a")
    steps = [(r0, min(P, rows_total - r0)) for r0 in range(done, rows_total, P)]
    for r0, nr in steps:
        a = acc.next()
        res = a.ap((1,), elem_offset=0, partitions=nr)
        part = a.ap((1,), elem_offset=1, partitions=nr)
        for k in range(nchunks):
            c0, nc = k * chunk, min(chunk, L - k * chunk)
            t = xin.next().ap((nc,), partitions=nr)
            em.dma_split(t, x.flat_ap(r0 * L + c0, nr, L, (nc,), (1,)))
            em.reduce(res if k == 0 else part, t, op=rop, axes=1)
            if k:
                em.tt(res, res, part, op=rop)
        if op == "mean":
            em.act(res, res, func="identity", scale=1.0 / L)
        em.dma(out.flat_ap(r0, nr, 1, (1,), (1,)), res)
    xin.release()
    acc.release()


def _reduce_row_split(em: Emitter, x: Value, out: Value, L: int, op: str, rop: str, T: int, it: int,
                      cdt: str) -> int:
    """Many short rows in HBM (SqueezeNet's global pool at batch 8: 8000 rows of 169): partition p
    takes the T consecutive rows [p*T, (p+1)*T), so the loads are runs of several rows and the
    results leave as ONE [P, T] DMA instead of a 4-byte row per partition and 128-row tile
    (which cost ~60 ns a row: 63 x 7.7 us of queue time there).  Returns the rows done (P*T; 0
    when the tiles do not fit the free SBUF range: the 128-row tiles below then do it all)."""
    P = em.partitions
    # BUFS row tiles and the [P, T] results within the free range (inf1's 64 KiB partitions),
    # with a tile's worth of slack: the allocator places tiles where their region frees first,
    # not packed from one end of the largest range
    room = em.sbuf.largest_free() - T * 4 - 256
    tc = min(T, CHUNK_BYTES // (L * it), room // ((BUFS + 1) * L * it))
    if tc < 1:
        return 0
    xin = em.pool("sbuf", P, tc * L * it, cdt, BUFS, "red_x")
    res = em.sbuf_tile(P, T * 4, "fp32", "red_res")
    for t0 in range(0, T, tc):
        nt = min(tc, T - t0)
        t = xin.next()
        em.dma_split(t.ap((nt * L,)), x.flat_ap(t0 * L, P, T * L, (nt * L,), (1,)))
        em.reduce(res.ap((nt,), (1,), t0), t.ap((nt, L), (L, 1)), op=rop, axes=1)
    if op == "mean":
        em.act(res.ap((T,)), res.ap((T,)), func="identity", scale=1.0 / L)
    em.dma_split(out.flat_ap(0, P, T, (T,), (1,)), res.ap((T,)), min_piece=1)
    xin.release()
    em.free(res)
    return P * T


def _reduce_resident(em: Emitter, x: Value, out: Value, L: int, op: str, rop: str):
    """An SBUF-resident input in its row-split layout: partition p holds the rows [p*T, (p+1)*T)
    of L elements each (a blocked channel layout, T planes), so ONE TensorReduce over the last
    free axis gives [rows, T] -- row p*T + t of the output -- and the results go out as one
    [rows, T] DMA (split over the queues) instead of a one-element row per partition and tile.
    With N > 1 images (``Value.images``) each partition holds its T rows of every image, image
    after image: one TensorReduce over N*T rows, and row n*C + p*T + t of the output (C = rows*T)
    is element n*T + t of partition p."""
    rows = x.sbuf.partitions
    N = max(1, x.images)
    if (N > 1 and (x.cyclic or N != int(x.shape[0]))) or x.size % (rows * N) or (x.size // N // rows) % L:
        raise CodegenError(f"reduction of resident {x.name} {x.shape}: its layout ({rows} partitions"
                           f"{f', {N} images' if N > 1 else ''}) does not hold whole rows of {L} elements")
    T = x.size // N // rows // L
    res = em.sbuf_tile(rows, N * T * 4, "fp32", "red_res")
    em.reduce(res.ap((N * T,)), x.flat_ap(0, rows, T * L, (N * T, L), (L, 1)), op=rop, axes=1)
    if op == "mean":
        em.act(res.ap((N * T,)), res.ap((N * T,)), func="identity", scale=1.0 / L)
    # one split transfer per image: its C results are one contiguous HBM range, so the pieces'
    # ranges are disjoint (pieces over all images interleave, and the emitter orders overlapping
    # HBM writes: SqueezeNet b8's 16 pieces ran on 2 queues, 40 us)
    for n in range(N):
        em.dma_split(out.flat_ap(n * rows * T, rows, T, (T,), (1,)), res.ap((T,), (1,), n * T), min_piece=1)
    em.free(res)


from . import register_lowering  # noqa: E402


def _lower(op):
    def fn(ctx, g):
        reduce_trailing(ctx.em, ctx.value(g.inputs[0]), ctx.out(g.output), g.param("axis"), op, ctx.cdt)
    return fn


for _op in ("mean", "sum", "max", "min"):
    register_lowering(_op)(_lower(_op))
