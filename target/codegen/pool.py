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


def _fold(em, dst, part, n, op):
    """dst = part(0) <op> part(1) <op> ... <op> part(n-1) on the Vector engine (a copy when n == 1)."""
    if n == 1:
        em.copy(dst, part(0))
        return
    em.tt(dst, part(0), part(1), op=op)
    for k in range(2, n):
        em.tt(dst, dst, part(k), op=op)


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
    partial = not cm.blocked and CT > 1 and C % P

    def load(n, ih0, nrows, stage_elems):
        xt = em.sbuf_tile(parts, stage_elems * it, cdt, "pool_x")
        if partial:
            em.memset(xt.ap((stage_elems,)), 0.0)  # the last tile is partial; keep all bytes defined
        per = stage_elems // CT
        if cm.blocked or CT == 1:
            em.dma_split(xt.ap((CT, nrows * W), (per, 1)),
                         x.flat_ap(n * C * H * W + ih0 * W, parts, CT * H * W, (CT, nrows * W), (H * W, 1)))
        else:
            for j in range(CT):
                em.dma_split(xt.ap((nrows * W,), (1,), j * per, partitions=cm.nparts(j)),
                             x.chan_ap(n, j * P, cm.nparts(j), ih0 * W, (nrows * W,), (1,)))
        return xt

    def store(n, ot, oh0, nbo, per):
        if cm.blocked or CT == 1:
            em.dma_split(out.flat_ap(n * C * OH * OW + oh0 * OW, parts, CT * OH * OW, (CT, nbo * OW), (OH * OW, 1)),
                         ot.ap((CT, nbo * OW), (per, 1)))
        else:
            for j in range(CT):
                em.dma_split(out.chan_ap(n, j * P, cm.nparts(j), oh0 * OW, (nbo * OW,), (1,)),
                             ot.ap((nbo * OW,), (1,), j * per, partitions=cm.nparts(j)))

    if glob:
        if (CT * H * W + CT) * it > em.sbuf.largest_free():
            raise AllocationError(f"global pool {x.shape}: needs {(CT * H * W + CT) * it} B per partition")
        for n in range(N):
            xt = load(n, 0, H, CT * H * W)
            ot = em.sbuf_tile(parts, CT * it, cdt, "pool_o")
            em.reduce(ot.ap((CT,), (1,)), xt.ap((CT, H * W)), op=op, axes=1)
            if mode == "avg":
                em.act(ot.ap((CT,)), ot.ap((CT,)), scale=1.0 / (H * W))
            store(n, ot, 0, 1, 1)
            em.free(xt, ot)
    else:
        def band_bytes(bo):
            rp = (bo - 1) * sh + R
            return CT * it * (rp * W + (rp * Wp if padded else 0) + rp * OW + bo * OW)
        bo = OH
        free = em.sbuf.largest_free() * 0.9
        while bo > 1 and band_bytes(bo) > free:
            bo = -(-bo // 2)
        if band_bytes(bo) > free:
            raise AllocationError(f"pool {x.shape}: one output row needs {band_bytes(1)} B per partition")
        # pipelining: big inputs stream in ~4 bands (load / pad copy / vector passes overlap)
        if N == 1 and bo == OH and C * H * W * it >= 512 * 1024 and OH >= 8:
            bo = -(-OH // 4)
        # bands side by side on partition blocks: with C = 32/64 channels, G bands share one
        # set of Vector instructions over G*C partitions (block starts obey the start rule)
        G = P // C if (CT == 1 and C in (32, 64) and divmap is None) else 1
        em.note(c_tiles=CT, band_rows=bo, bands=-(-OH // bo), bands_side_by_side=G)
        for n in range(N):
            bl = list(range(0, OH, bo))
            for g0 in range(0, len(bl), G):
                grp = bl[g0:g0 + G]
                rpb = (bo - 1) * sh + R
                gp = parts * len(grp)
                xt = em.sbuf_tile(gp, CT * rpb * W * it, cdt, "pool_x")
                tiles = [xt]
                pt_ = None
                if padded:
                    pt_ = em.sbuf_tile(gp, CT * rpb * Wp * it, cdt, "pool_pad")
                    tiles.append(pt_)
                    em.memset(pt_.ap((CT * rpb * Wp,)), NEG if mode == "max" else 0.0)
                elif any(min(bo, OH - oh0) < bo for oh0 in grp) and len(grp) > 1:
                    em.memset(xt.ap((CT * rpb * W,)), 0.0)  # a short band: keep all lanes defined
                nbo_max = 0
                for i, oh0 in enumerate(grp):
                    nbo = min(bo, OH - oh0)
                    nbo_max = max(nbo_max, nbo)
                    rp = (nbo - 1) * sh + R  # padded-coordinate rows of this band
                    r0p = oh0 * sh
                    ih0, ih1 = max(0, r0p - pt), min(H, r0p + rp - pt)
                    nv = max(0, ih1 - ih0)
                    if nv:
                        if partial:
                            em.memset(xt.ap((CT * rpb * W,)), 0.0)
                        if cm.blocked or CT == 1:
                            em.dma_split(xt.ap((CT, nv * W), (rpb * W, 1), partitions=parts, start=i * parts),
                                         x.flat_ap(n * C * H * W + ih0 * W, parts, CT * H * W, (CT, nv * W), (H * W, 1)))
                        else:
                            for j in range(CT):
                                em.dma_split(xt.ap((nv * W,), (1,), j * rpb * W, partitions=cm.nparts(j)),
                                             x.chan_ap(n, j * P, cm.nparts(j), ih0 * W, (nv * W,), (1,)))
                    if padded and nv:
                        dr = ih0 + pt - r0p
                        for j in range(CT):
                            np_ = cm.nparts(j)
                            em.copy(pt_.ap((nv, W), (Wp, 1), j * rpb * Wp + dr * Wp + pl, partitions=np_, start=i * parts),
                                    xt.ap((nv, W), (W, 1), j * rpb * W, partitions=np_, start=i * parts), stream="gpsimd")
                if padded:
                    src, srow, splane = pt_, Wp, rpb * Wp
                else:
                    src, srow, splane = xt, W, rpb * W
                nbo = nbo_max
                rp = (nbo - 1) * sh + R
                tmp = em.sbuf_tile(gp, CT * rpb * OW * it, cdt, "pool_tmp")
                ot = em.sbuf_tile(gp, CT * bo * OW * it, cdt, "pool_o")
                tiles += [tmp, ot]
                tv = tmp.ap((CT, rp, OW), (rpb * OW, OW, 1))
                col = lambda q: src.ap((CT, rp, OW), (splane, srow, sw), q)
                _fold(em, tv, col, S, op)
                ov = ot.ap((CT, nbo, OW), (bo * OW, OW, 1))
                row = lambda r: tmp.ap((CT, nbo, OW), (rpb * OW, sh * OW, 1), r * OW)
                _fold(em, ov, row, R, op)
                if mode == "avg":
                    if divmap is not None:
                        oh0 = grp[0]
                        for j in range(CT):
                            np_ = cm.nparts(j)
                            o = ot.ap((nbo * OW,), (1,), j * bo * OW, partitions=np_)
                            em.tt(o, o, divmap.ap((nbo * OW,), (1,), oh0 * OW, partitions=np_), op="multiply")
                    else:
                        em.act(ov, ov, scale=1.0 / (R * S))
                for i, oh0 in enumerate(grp):
                    nb_i = min(bo, OH - oh0)
                    if cm.blocked or CT == 1:
                        em.dma_split(out.flat_ap(n * C * OH * OW + oh0 * OW, parts, CT * OH * OW, (CT, nb_i * OW), (OH * OW, 1)),
                                     ot.ap((CT, nb_i * OW), (bo * OW, 1), partitions=parts, start=i * parts))
                    else:
                        store(n, ot, oh0, nb_i, bo * OW)
                em.free(*tiles)
    if divmap is not None:
        em.free(divmap)
