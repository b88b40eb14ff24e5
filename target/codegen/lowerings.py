"""Plan-group kinds -> operator codegen.  ``ctx`` is a tvm_poly.driver.LowerCtx:
``ctx.em`` (Emitter), ``ctx.cdt`` (compute dtype), ``ctx.value(name)`` (read a graph tensor),
``ctx.out(name)`` (the Value to write), ``ctx.const(hbm_name, array, dtype)`` (a compile-time
constant), ``ctx.info(name)`` (TensorInfo: shape, value), ``ctx.node(name)`` (OpNode)."""
from __future__ import annotations

import numpy as np

from . import register_lowering
from .elementwise import channel_affine, elementwise
from .emitter import CodegenError
from . import lrn, movement, reduce, softmax  # noqa: F401  (concat/permute_dims/softmax/lrn/power/mean...)


def bn_scale_shift(ctx, names, eps):
    gamma, beta, mean, var = (np.asarray(ctx.info(n).value, dtype=np.float64) for n in names)
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return scale.astype(np.float32), shift.astype(np.float32)


def band_pad(ctx, g, pad, stride, rows_k, dilation=1):
    """Padding of one row band of a conv/pool (spatial tiling, ``rows`` param): output rows
    [o0, o1) read input rows [a, b) = [o0*s - top, (o1-1)*s - top + (R-1)*d + 1); the rows of
    that range outside the tensor are the band's padding.  The plan's input window (from isl)
    must be exactly the clipped range."""
    rows = g.param("rows")
    if rows is None:
        return pad
    o0, o1 = rows
    H = int(ctx.info(g.inputs[0]).shape[2])
    win = [w for w in g.param("in_rows", ()) if w[0] == g.inputs[0]]
    if not win:
        raise CodegenError(f"{g.tag}: row band without an input window")
    _, i0, i1 = win[0]
    a = o0 * stride - pad[0]
    b = (o1 - 1) * stride - pad[0] + (rows_k - 1) * dilation + 1
    if (i0, i1) != (max(0, a), min(H, b)):
        raise CodegenError(f"{g.tag}: band rows [{o0}, {o1}) read input rows [{max(0, a)}, {min(H, b)}), "
                           f"the plan's window is [{i0}, {i1})")
    return (i0 - a, pad[1], b - i1, pad[3])


@register_lowering("elementwise")
def lower_elementwise(ctx, g):
    ins = [ctx.value(i) for i in g.inputs]
    out = ctx.out(g.output)
    op = g.param("op")
    post = g.param("act")
    if len(ins) == 1 and op in ("relu",) and post:
        post = None
    elementwise(ctx.em, out, ins, op, post, cdt=ctx.cdt)


class _Lazy:
    """A constant Value made on first use."""

    def __init__(self, make):
        self._make, self._v = make, None

    def __getattr__(self, k):
        if self._v is None:
            self._v = self._make()
        return getattr(self._v, k)


@register_lowering("batch_norm")
def lower_batch_norm(ctx, g):
    node = ctx.node(g.ops[0])
    if node.attr("axis", 1) != 1:
        raise CodegenError(f"{g.tag}: batch_norm over axis {node.attr('axis')}")
    if not all(ctx.info(n).is_constant for n in node.inputs[1:]):
        raise CodegenError(f"{g.tag}: batch_norm with run-time statistics")
    scale, shift = bn_scale_shift(ctx, node.inputs[1:], g.param("bn_eps", 1e-5))
    blk = getattr(ctx, "const_block", None)
    if blk is not None and blk.holds(g.name):  # the columns live in the program's constant block
        # (made only if the block has no room for the kernel's layout after all)
        sc = _Lazy(lambda: ctx.const(f"{g.name}/bn_scale", scale, "fp32"))
        sh = _Lazy(lambda: ctx.const(f"{g.name}/bn_shift", shift, "fp32"))
    else:
        blk = None
        sc = ctx.const(f"{g.name}/bn_scale", scale, "fp32")
        sh = ctx.const(f"{g.name}/bn_shift", shift, "fp32")
    x = ctx.value(g.inputs[0])
    out = ctx.out(g.output)
    channel_affine(ctx.em, x, out, sc, sh, func=g.param("act") or "identity", cdt=ctx.cdt,
                   pinned=(lambda arr: blk.put(g.name, arr)) if blk is not None else None, values=(scale, shift))


@register_lowering("conv2d")
def lower_conv2d(ctx, g):
    from .conv import conv2d

    node = ctx.node(g.ops[0])
    wname = node.inputs[1]
    winfo = ctx.info(wname)
    if not winfo.is_constant:
        raise CodegenError(f"{g.tag}: conv2d weights must be compile-time constants")
    pad = tuple(node.attr("padding", (0, 0, 0, 0)))
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    pad = (pad[0], pad[1], pad[2], pad[3])  # relax: (top, left, bottom, right)
    stride = tuple(node.attr("strides", (1, 1)))
    pad = band_pad(ctx, g, pad, stride[0], int(winfo.shape[2]), int(tuple(node.attr("dilation", (1, 1)))[0]))
    scale = bias = None
    if g.param("bn"):
        scale, bias = bn_scale_shift(ctx, g.param("bn"), g.param("bn_eps", 1e-5))
    if g.param("bias"):
        b = np.asarray(ctx.info(g.param("bias")).value, np.float32).reshape(-1)
        bias = b if bias is None else bias + b
    x = ctx.value(g.inputs[0])
    res = ctx.value(g.param("residual")) if g.param("residual") else None
    out = ctx.out(g.output)
    slot = planner_slot(ctx, g, "weights")
    conv2d(ctx.em, x, out, np.asarray(winfo.value, np.float32), stride, pad, int(node.attr("groups", 1)),
           ctx.const, scale=scale, bias=bias, func=g.param("act") or "identity", cdt=ctx.cdt, residual=res,
           prefetch=bool(g.param("prefetch")), weight_slot=slot, lane_dup=g.param("lane_pair") or g.param("row_dup"),
           pair_rows=bool(g.param("pair_rows")), weight_pack=ctx.weight_packs.get(g.name),
           pinned=(lambda arr: ctx.const_block.put(g.name, arr)) if getattr(ctx, "const_block", None) else None)
    release_slot(ctx, g)


def planner_slot(ctx, g, what: str):
    """(tile, cache) of the planner-placed SBUF slot that keeps kernel ``g``'s constants (conv
    weights, an LRN band matrix) across its calls (spatial tiling: once per row band), or None."""
    if not g.param("weight_slot"):
        return None
    off, nb, parts, _last = g.param("weight_slot")
    if g.name not in ctx.weight_slots:
        ctx.weight_slots[g.name] = (ctx.em.sbuf_resident(0, parts, off, nb, ctx.cdt, f"{g.name}/{what}"), {})
    return ctx.weight_slots[g.name]


def release_slot(ctx, g):
    """Free the slot after the kernel's last call (the plan marks it)."""
    if g.param("weight_slot") and g.param("weight_slot")[3] and g.name in ctx.weight_slots:
        ctx.em.free(ctx.weight_slots.pop(g.name)[0])


@register_lowering("matmul")
def lower_matmul(ctx, g):
    from .matmul import matmul

    a, b = (ctx.value(i) for i in g.inputs[:2])
    bias = ctx.const_value(g.param("bias"), "fp32") if g.param("bias") else None
    binfo = ctx.info(ctx.root(g.inputs[1]))
    matmul(ctx.em, a, b, ctx.out(g.output), bias=bias, func=g.param("act") or "identity", cdt=ctx.cdt,
           prefetch=bool(g.param("prefetch")), b_value=binfo.value if binfo.is_constant else None,
           const=ctx.const)


@register_lowering("pool")
def lower_pool(ctx, g):
    from .pool import pool2d

    if g.param("layout", "NCHW") != "NCHW":
        raise CodegenError(f"{g.tag}: pool layout {g.param('layout')}")
    pad = tuple(g.param("padding", (0, 0, 0, 0)))
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    if tuple(g.param("dilation", (1, 1))) != (1, 1):
        raise CodegenError(f"{g.tag}: pool dilation")
    pad = band_pad(ctx, g, pad, tuple(g.param("strides", (1, 1)))[0], tuple(g.param("pool_size"))[0])
    pool2d(ctx.em, ctx.value(g.inputs[0]), ctx.out(g.output), g.param("mode"), tuple(g.param("pool_size")),
           tuple(g.param("strides", (1, 1))), pad, bool(g.param("count_include_pad", False)), ctx.const, ctx.cdt,
           lane_split=g.param("lane_pair"))
