"""max_pool2d / avg_pool2d (NCHW) on the Vector engine.

Channels on partitions with the conv's blocked mapping (C a multiple of 128: channel
p*CT + j on partition p -> the whole input is one DMA with CT*H*W contiguous elements per
partition).  Global pooling is one TensorReduce over the free axis.  Windowed pooling is
separable: a column pass (S taps over a strided AP covering every plane at once), then a row
pass (R taps); padding is a GpSimd copy into a tile pre-filled with -inf (max) or 0 (avg);
avg divides by the window size, or by the per-position valid count when padding is excluded.
"""
from __future__ import annotations

import numpy as np

from target import isa
from .conv import ChanMap
from .emitter import AllocationError, Emitter
from .values import Value

NEG = -3.0e38


def pool2d(em: Emitter, x: Value, out: Value, mode: str, pool_size, strides, padding,
           count_include_pad: bool, const, cdt: str):
    N, C, H, W = x.shape
    _, _, OH, OW = out.shape
    R, S = pool_size
    sh, sw = strides
    pt, pl, pb, pr = padding
    P = em.partitions
    it = isa.DTYPES[cdt]
    cm = ChanMap(C, P)
    CT, parts = cm.T, cm.parts
    op = "max" if mode == "max" else "add"
    glob = (R, S) == (H, W) and (OH, OW) == (1, 1) and not any(padding)
    Hp = max(H + pt + pb, (OH - 1) * sh + R)
    Wp = max(W + pl + pr, (OW - 1) * sw + S)
    padded = (Hp, Wp) != (H, W)
    need = CT * H * W + CT * OH * OW + (0 if glob else CT * Hp * OW + (CT * Hp * Wp if padded else 0))
    if need * it > em.sbuf.largest_free():
        raise AllocationError(f"pool {x.shape}: needs {need * it} B per partition")
    divmap = None
    if mode == "avg" and not glob and any(padding) and not count_include_pad:
        cnt = np.zeros((OH, OW), np.float32)
        for oh in range(OH):
            for ow in range(OW):
                h0, w0 = oh * sh - pt, ow * sw - pl
                cnt[oh, ow] = (min(h0 + R, H) - max(h0, 0)) * (min(w0 + S, W) - max(w0, 0))
        dv = const(f"{em.tag.split(':')[0]}/pool_div", 1.0 / np.maximum(cnt, 1).reshape(1, -1), "fp32")
        divmap = em.sbuf_tile(parts, OH * OW * 4, "fp32", "pool_div")
        em.dma_split(divmap.ap((OH * OW,)), dv.flat_ap(0, parts, 0, (OH * OW,), (1,)))
    for n in range(N):
        xt = em.sbuf_tile(parts, CT * H * W * it, cdt, "pool_x")
        ot = em.sbuf_tile(parts, CT * OH * OW * it, cdt, "pool_o")
        if not cm.blocked and CT > 1 and C % P:
            em.memset(xt.ap((CT * H * W,)), 0.0)  # the last tile is partial; keep all bytes defined
        if cm.blocked or CT == 1:
            em.dma_split(xt.ap((CT * H * W,)), x.flat_ap(n * C * H * W, parts, CT * H * W, (CT * H * W,), (1,)))
        else:
            for j in range(CT):
                em.dma_split(xt.ap((H * W,), (1,), j * H * W, partitions=cm.nparts(j)),
                             x.chan_ap(n, j * P, cm.nparts(j), 0, (H * W,), (1,)))
        tiles = [xt, ot]
        if glob:
            em.reduce(ot.ap((CT,), (1,)), xt.ap((CT, H * W)), op=op, axes=1)
            if mode == "avg":
                em.act(ot.ap((CT,)), ot.ap((CT,)), scale=1.0 / (H * W))
        else:
            if padded:
                pt_ = em.sbuf_tile(parts, CT * Hp * Wp * it, cdt, "pool_pad")
                tiles.append(pt_)
                em.memset(pt_.ap((CT * Hp * Wp,)), NEG if mode == "max" else 0.0)
                for j in range(CT):
                    np_ = cm.nparts(j)
                    em.copy(pt_.ap((H, W), (Wp, 1), j * Hp * Wp + pt * Wp + pl, partitions=np_),
                            xt.ap((H, W), (W, 1), j * H * W, partitions=np_), stream="gpsimd")
                src = pt_
            else:
                src = xt
            tmp = em.sbuf_tile(parts, CT * Hp * OW * it, cdt, "pool_tmp")
            tiles.append(tmp)
            # column pass: tmp[j, h, ow] = op_q src[j, h, ow*sw + q]
            tv = tmp.ap((CT, Hp, OW), (Hp * OW, OW, 1))
            col = lambda q: src.ap((CT, Hp, OW), (Hp * Wp, Wp, sw), q)
            if S == 1:
                em.copy(tv, col(0))
            else:
                em.tt(tv, col(0), col(1), op=op)
                for q in range(2, S):
                    em.tt(tv, tv, col(q), op=op)
            ov = ot.ap((CT, OH, OW), (OH * OW, OW, 1))
            row = lambda r: tmp.ap((CT, OH, OW), (Hp * OW, sh * OW, 1), r * OW)
            if R == 1:
                em.copy(ov, row(0))
            else:
                em.tt(ov, row(0), row(1), op=op)
                for r in range(2, R):
                    em.tt(ov, ov, row(r), op=op)
            if mode == "avg":
                if divmap is not None:
                    for j in range(CT):
                        np_ = cm.nparts(j)
                        o = ot.ap((OH * OW,), (1,), j * OH * OW, partitions=np_)
                        em.tt(o, o, divmap.ap((OH * OW,), partitions=np_), op="multiply")
                else:
                    em.act(ot.ap((CT * OH * OW,)), ot.ap((CT * OH * OW,)), scale=1.0 / (R * S))
        if cm.blocked or CT == 1:
            em.dma_split(out.flat_ap(n * C * OH * OW, parts, CT * OH * OW, (CT * OH * OW,), (1,)),
                         ot.ap((CT * OH * OW,)))
        else:
            for j in range(CT):
                em.dma_split(out.chan_ap(n, j * P, cm.nparts(j), 0, (OH * OW,), (1,)),
                             ot.ap((OH * OW,), (1,), j * OH * OW, partitions=cm.nparts(j)))
        em.free(*tiles)
    if divmap is not None:
        em.free(divmap)
