"""softmax along one axis: rows on partitions, the softmax axis on the free axis.

Per tile of up to 128 rows: reduce-max (Vector) -> negate (Vector) -> exp(x - max) (Scalar,
the max as a per-partition bias column) -> reduce-sum (Vector) -> reciprocal (Scalar) ->
multiply by the per-partition column (Vector) -> store.  The exponentials are kept in fp32.

The tensor is viewed as [outer, L, inner] (L = the softmax axis): for inner == 1 the rows
are the outer index (contiguous rows of L elements); otherwise, per outer index, the rows are
the inner index and the L elements of a row are ``inner`` apart (a strided DMA).
"""
from __future__ import annotations

from target import isa
from .emitter import AllocationError, Emitter
from .values import Value, prod

BUFS = 2


def softmax(em: Emitter, x: Value, out: Value, axis: int = -1, cdt: str = "fp32", log: bool = False):
    shape = tuple(x.shape)
    rank = len(shape)
    axis = axis + rank if axis < 0 else axis
    L = int(shape[axis])
    outer, inner = prod(shape[:axis]), prod(shape[axis + 1:])
    P = em.partitions
    it = isa.DTYPES[cdt]
    need = BUFS * L * (it + 4) + 4 * 64
    if need > em.sbuf.largest_free():
        raise AllocationError(f"softmax over {L} elements needs {need} B per partition")
    rows_total = outer if inner == 1 else inner
    rows = min(P, rows_total)
    xin = em.pool("sbuf", rows, L * it, cdt, BUFS, "sm_x")
    ex = em.pool("sbuf", rows, L * 4, "fp32", BUFS, "sm_e")
    cols = em.pool("sbuf", rows, 4 * 4, "fp32", BUFS, "sm_c")

    # (outer index, first row, rows): a step is up to 128 rows
    steps = []
    if inner == 1:
        for r0 in range(0, outer, P):
            steps.append((0, r0, min(P, outer - r0)))
    else:
        for o in range(outer):
            for r0 in range(0, inner, P):
                steps.append((o, r0, min(P, inner - r0)))

    def hbm_ap(v, step):
        o, r0, nr = step
        if inner == 1:
            return v.flat_ap(r0 * L, nr, L, (L,), (1,))
        return v.flat_ap(o * L * inner + r0, nr, 1, (L,), (inner,))

    def load(step):
        t = xin.next().ap((L,), partitions=step[2])
        em.dma_split(t, hbm_ap(x, step))
        return t

    nxt = load(steps[0])
    for i, step in enumerate(steps):
        nr = step[2]
        xt = nxt
        nxt = load(steps[i + 1]) if i + 1 < len(steps) else None
        c = cols.next()
        mx = c.ap((1,), elem_offset=0, partitions=nr)
        sm = c.ap((1,), elem_offset=1, partitions=nr)
        et = ex.next().ap((L,), partitions=nr)
        em.reduce(mx, xt, op="max", axes=1)
        em.ts(mx, mx, op0="multiply", operand0=-1.0)
        em.act(et, xt, func="exp", bias=mx)
        em.reduce(sm, et, op="add", axes=1)
        if log:  # log_softmax = x - max - log(sum)
            em.act(sm, sm, func="log")
            em.ts(et, xt, op0="add", operand0=mx, op1="subtract", operand1=sm)
        else:
            em.act(sm, sm, func="reciprocal")
            em.ts(et, et, op0="multiply", operand0=sm)
        em.dma_split(hbm_ap(out, step), et)
    for p in (xin, ex, cols):
        p.release()


# ------------------------------------------------------------------ lowerings
from . import register_lowering  # noqa: E402


@register_lowering("softmax")
def lower_softmax(ctx, g):
    softmax(ctx.em, ctx.value(g.inputs[0]), ctx.out(g.output), int(g.param("axis", -1)), ctx.cdt)


@register_lowering("log_softmax")
def lower_log_softmax(ctx, g):
    softmax(ctx.em, ctx.value(g.inputs[0]), ctx.out(g.output), int(g.param("axis", -1)), ctx.cdt, log=True)
