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
    chunk = max(1, min(L, CHUNK_BYTES // it))
    nchunks = -(-L // chunk)
    rows = min(P, rows_total)
    xin = em.pool("sbuf", rows, chunk * it, cdt, BUFS, "red_x")
    acc = em.pool("sbuf", rows, 2 * 4, "fp32", BUFS, "red_a")
    steps = [(r0, min(P, rows_total - r0)) for r0 in range(0, rows_total, P)]
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


from . import register_lowering  # noqa: E402


def _lower(op):
    def fn(ctx, g):
        reduce_trailing(ctx.em, ctx.value(g.inputs[0]), ctx.out(g.output), g.param("axis"), op, ctx.cdt)
    return fn


for _op in ("mean", "sum", "max", "min"):
    register_lowering(_op)(_lower(_op))
