"""max_pool2d / avg_pool2d (NCHW) on the Vector engine.

Channels on partitions with the conv's blocked mapping (C a multiple of 128: channel
p*CT + j on partition p -> the whole input is one DMA with CT*H*W contiguous elements per
partition).  Global pooling is one TensorReduce over the free axis.  Windowed pooling is
separable: a column pass (S taps over a strided AP covering every plane at once), then a row
pass (R taps).  Padding costs no copy: tile rows outside the input are filled with -inf (max)
or 0 (avg) and each column tap covers only the output columns whose input column exists; avg
divides by the window size, or by the per-position valid count when padding is excluded.
SBUF-resident operands are read and written in place where the layout allows.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from target import isa
from .conv import ChanMap, _rel, resident_map
from .emitter import AllocationError, CodegenError, Emitter
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
           count_include_pad: bool, const, cdt: str, lane_split=None):
    """``lane_split = (shift, halo)``: the SBUF-resident input (C = 32/64 channels on lanes 0..C)
    also holds, on lanes C..2C of its byte range, the input rows from ``shift`` on (at row -
    shift) and the ``halo`` rows before them (after those), as the producing conv's ``lane_dup``
    wrote them.  The two output bands (rows [0, OH/2) and [OH/2, OH)) then run side by side on
    2C lanes straight from the input buffer (no SBUF->SBUF load), into the resident output; band
    1 moves to its lanes 0..C through the Tensor engine (a matmul with a lane-shifting identity)."""
    N, C, H, W = x.shape
    _, _, OH, OW = out.shape
    R, S = pool_size
    sh, sw = strides
    pt, pl, pb, pr = padding
    P = em.partitions
    it = isa.DTYPES[cdt]
    cm = resident_map(x if x.sbuf is not None else out, C, P)  # (input and output share the layout)
    CT, parts = cm.T, cm.parts
    op = "max" if mode == "max" else "add"
    glob = (R, S) == (H, W) and (OH, OW) == (1, 1) and not any(padding)
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
        # SBUF-resident operands are read / written in place (their row-split layout is the
        # blocked channel mapping): no SBUF->SBUF copies around the reduction
        direct = cm.blocked or CT == 1
        for n in range(N):
            x_in = x.sbuf is not None and direct
            o_in = out.sbuf is not None and direct
            xt = None if x_in else load(n, 0, H, CT * H * W)
            ot = None if o_in else em.sbuf_tile(parts, CT * it, cdt, "pool_o")
            src = x.flat_ap(n * C * H * W, parts, CT * H * W, (CT, H * W), (H * W, 1)) if x_in else xt.ap((CT, H * W))
            dst = out.flat_ap(n * C, parts, CT, (CT,), (1,)) if o_in else ot.ap((CT,), (1,))
            em.reduce(dst, src, op=op, axes=1)
            if mode == "avg":
                em.act(dst, dst, scale=1.0 / (H * W))
            if not o_in:
                store(n, ot, 0, 1, 1)
            em.free(*[t for t in (xt, ot) if t is not None])
    elif lane_split is not None:
        if not (x.sbuf is not None and out.sbuf is not None and x.base is None and out.base is None
                and lane_split_ok(x.shape, out.shape, pool_size, strides, padding, mode)
                and tuple(lane_split) == lane_split_geometry(out.shape, strides, padding)):
            raise CodegenError(f"pool {x.shape}->{out.shape}: lane_split {lane_split} does not apply")
        shift, halo = lane_split
        OH0, OHa, C2 = OH // 2, OH - OH // 2, 2 * C  # rows of band 1 / band 0 (odd OH: band 0's last
        # row runs alone on lanes 0..C after the two-band loop)
        xw = dataclasses.replace(x.sbuf, partitions=C2)  # lanes C..2C: the second band's rows
        ow_ = dataclasses.replace(out.sbuf, partitions=C2)
        rows_loc = (OHa - 1) * sh + R - pt  # input rows (from the band's first) the windows read
        tmp = em.sbuf_tile(C2, (halo + rows_loc) * OW * it, cdt, "pool_tmp")
        em.note(bands=2, lane_split=True)
        # tmp rows in padded coordinates: [0, halo) is padding for band 0, band 1's halo rows
        if halo:
            em.memset(tmp.ap((halo * OW,), partitions=C), NEG)
            _column_pass(em, xw.ap, (0, W), tmp.ap, (0, OW), 1, halo, W, OW, S, sw, pl, op, NEG,
                         {"partitions": C, "start": C, "src_offset": (H - shift) * W})
        # band 1 (lanes C..2C) goes to output rows [OH0, OH) on lanes 0..C through the Tensor
        # engine: stationary = columns C..2C of a 2C identity (picks lanes C..2C), then the PSUM
        # evacuation.  (A cross-lane SBUF->SBUF DMA would wait for the row pass in its in-order
        # queue, and the weight prefetches behind it in that queue with it.)
        ident = em.identity(C2, cdt, "pool_lanes")
        pp = em.pool("psum", C, None, "fp32", 2, "pool_ps")
        # in chunks of output rows, so the next kernel starts on the first rows while the Vector
        # engine pools the rest (each chunk column-passes only the input rows not done yet)
        rpc = max(1, min(OH0, -(-OH0 // 4), em.max_moving_free // OW))
        done = 0  # local input rows column-passed so far
        for j0 in range(0, OH0, rpc):
            j1 = min(OH0, j0 + rpc)
            need = (j1 - 1) * sh + R - pt  # local rows [0, need) feed output rows < j1
            if need > done:
                _column_pass(em, xw.ap, (0, W), tmp.ap, (0, OW), 1, need - done, W, OW, S, sw, pl, op, NEG,
                             {"src_offset": done * W, "dst_offset": (halo + done) * OW})
                done = need
            _row_pass(em, ow_.ap((1, j1 - j0, OW), (0, OW, 1), j0 * OW), tmp, 0, j0 * sh * OW, 1, j1 - j0, OW,
                      R, sh, op, cdt, {})
            n = (j1 - j0) * OW
            ps = pp.next()
            em.matmul(ps.ap((n,), partitions=C), ident.ap((C,), (1,), C, partitions=C2),
                      ow_.ap((n,), (1,), j0 * OW, partitions=C2))
            em.act(out.sbuf.ap((n,), (1,), (OHa + j0) * OW, partitions=C), ps.ap((n,), partitions=C), stream="scalar")
        if OHa > OH0:  # band 0's last row, lanes 0..C only (band 1 has no row there)
            need = (OHa - 1) * sh + R - pt
            if need > done:
                _column_pass(em, x.sbuf.ap, (0, W), tmp.ap, (0, OW), 1, need - done, W, OW, S, sw, pl, op, NEG,
                             {"src_offset": done * W, "dst_offset": (halo + done) * OW, "partitions": C})
            _row_pass(em, out.sbuf.ap((1, 1, OW), (0, OW, 1), OH0 * OW, partitions=C), tmp, 0, OH0 * sh * OW, 1, 1, OW,
                      R, sh, op, cdt, {"partitions": C})
        pp.release()
        em.free(ident)
        em.free(tmp)
    else:
        fill = NEG if mode == "max" else 0.0  # padding never wins a max / adds nothing to a sum
        in_place = (cm.blocked or CT == 1) and not partial and divmap is None and x.sbuf is not None \
            and out.sbuf is not None and x.base is None and out.base is None

        def band_in_place(n, oh0, nbo) -> bool:
            """Output rows [oh0, oh0+nbo) of image n straight from the SBUF-resident input into the
            resident output when the band's input rows all exist (no padding rows to fill): no
            SBUF->SBUF load of the input, no store of the result.  False: nothing emitted."""
            rp = (nbo - 1) * sh + R
            r0 = oh0 * sh - pt  # first input row
            if not (in_place and 0 <= r0 and r0 + rp <= H):
                return False
            xo = _rel(x.sbuf, x.flat_ap(n * C * H * W + r0 * W, parts, CT * H * W, (1,), (1,)))
            oo = _rel(out.sbuf, out.flat_ap(n * C * OH * OW + oh0 * OW, parts, CT * OH * OW, (1,), (1,)))
            tmp = em.sbuf_tile(parts, CT * rp * OW * it, cdt, "pool_tmp")
            _column_pass(em, x.sbuf.ap, (H * W, W), tmp.ap, (rp * OW, OW), CT, rp, W, OW, S, sw, pl, op, fill,
                         {"src_offset": xo, "partitions": parts})
            ov = out.sbuf.ap((CT, nbo, OW), (OH * OW, OW, 1), oo, partitions=parts)
            _row_pass(em, ov, tmp, rp * OW, 0, CT, nbo, OW, R, sh, op, cdt, {"partitions": parts})
            if mode == "avg":
                em.act(ov, ov, scale=1.0 / (R * S))
            em.free(tmp)
            return True

        def band_bytes(bo):
            rp = (bo - 1) * sh + R
            return CT * it * (rp * W + rp * OW + bo * OW)
        bo = OH
        free = em.sbuf.largest_free() * 0.9
        while bo > 1 and band_bytes(bo) > free:
            bo = -(-bo // 2)
        if band_bytes(bo) > free:
            raise AllocationError(f"pool {x.shape}: one output row needs {band_bytes(1)} B per partition")
        # pipelining: big inputs stream in ~4 bands (load / pad copy / vector passes overlap)
        if N == 1 and bo == OH and C * H * W * it >= 512 * 1024 and OH >= 8:
            bo = -(-OH // 4)
        # bands side by side on partition blocks: with C <= 64 channels, G bands share one set of
        # Vector instructions over the blocks (block i starts at i * pst, a multiple of 32 or 64
        # as the start rule wants; with C < pst the lanes between blocks are filled and ignored)
        pst = next((b for b in (32, 64) if C <= b), 0) if CT == 1 and divmap is None else 0
        G = P // pst if pst else 1
        em.note(c_tiles=CT, band_rows=bo, bands=-(-OH // bo), bands_side_by_side=G)
        for n in range(N):
            bl = list(range(0, OH, bo))
            for g0 in range(0, len(bl), G):
                grp = bl[g0:g0 + G]
                rpb = (bo - 1) * sh + R
                gp = (pst * (len(grp) - 1) + parts) if len(grp) > 1 else parts
                if len(grp) == 1 and band_in_place(n, grp[0], min(bo, OH - grp[0])):
                    continue
                xt = em.sbuf_tile(gp, CT * rpb * W * it, cdt, "pool_x")
                tiles = [xt]
                if len(grp) > 1 and pst != parts:  # the lanes between blocks: defined, never stored
                    em.memset(xt.ap((CT * rpb * W,), partitions=gp), fill)
                nbo_max = 0
                for i, oh0 in enumerate(grp):
                    nbo = min(bo, OH - oh0)
                    nbo_max = max(nbo_max, nbo)
                    rp = (nbo - 1) * sh + R  # padded-coordinate rows of this band
                    r0p = oh0 * sh
                    ih0, ih1 = max(0, r0p - pt), min(H, r0p + rp - pt)
                    nv = max(0, ih1 - ih0)
                    dr = ih0 + pt - r0p if nv else 0  # padding rows above the band's input rows
                    # rows of the tile no input row lands in (padding, or a short band's tail
                    # that the shared Vector instructions still read): the fill value
                    if partial:  # the last channel tile is partial: keep all its bytes defined
                        em.memset(xt.ap((CT * rpb * W,), partitions=parts, start=i * pst), 0.0)
                    for f0, f1 in ((0, dr), (dr + nv, rpb)):
                        if f1 > f0:
                            em.memset(xt.ap((CT, (f1 - f0) * W), (rpb * W, 1), f0 * W, partitions=parts, start=i * pst), fill)
                    if nv:
                        if cm.blocked or CT == 1:
                            dst = xt.ap((CT, nv * W), (rpb * W, 1), dr * W, partitions=parts, start=i * pst)
                            src = x.flat_ap(n * C * H * W + ih0 * W, parts, CT * H * W, (CT, nv * W), (H * W, 1))
                            if x.sbuf is not None and i == 0:
                                # resident input, same lanes: an engine copy (a DMA of these short
                                # rows -- one 7x7 plane is 98 B in bf16 -- runs at a tenth of its rate)
                                em.copy(dst, src, stream="gpsimd")
                            else:
                                em.dma_split(dst, src)
                        else:
                            for j in range(CT):
                                em.dma_split(xt.ap((nv * W,), (1,), j * rpb * W + dr * W, partitions=cm.nparts(j)),
                                             x.chan_ap(n, j * P, cm.nparts(j), ih0 * W, (nv * W,), (1,)))
                nbo = nbo_max
                rp = (nbo - 1) * sh + R
                tmp = em.sbuf_tile(gp, CT * rpb * OW * it, cdt, "pool_tmp")
                ot = em.sbuf_tile(gp, CT * bo * OW * it, cdt, "pool_o")
                tiles += [tmp, ot]
                _column_pass(em, xt.ap, (rpb * W, W), tmp.ap, (rpb * OW, OW), CT, rp, W, OW, S, sw, pl, op, fill, {})
                ov = ot.ap((CT, nbo, OW), (bo * OW, OW, 1))
                _row_pass(em, ov, tmp, rpb * OW, 0, CT, nbo, OW, R, sh, op, cdt, {})
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
                        dst = out.flat_ap(n * C * OH * OW + oh0 * OW, parts, CT * OH * OW, (CT, nb_i * OW), (OH * OW, 1))
                        src = ot.ap((CT, nb_i * OW), (bo * OW, 1), partitions=parts, start=i * pst)
                        if out.sbuf is not None and i == 0:  # resident output, same lanes: engine copy
                            em.copy(dst, src, stream="gpsimd")
                        else:
                            em.dma_split(dst, src)
                    else:
                        store(n, ot, oh0, nb_i, bo * OW)
                em.free(*tiles)
    if divmap is not None:
        em.free(divmap)


def _column_pass(em, src, src_st, dst, dst_st, CT, rows, W, OW, S, sw, pl, op, fill, lanes):
    """tmp[c, row, ow] = op over taps q of x[c, row, ow*sw + q - pl]: ``src``/``dst`` are tile
    ``ap`` methods, ``*_st`` their (plane, row) strides in elements, ``lanes`` extra ``ap``
    arguments (partitions, start, elem offsets are added to ``elem_offset``).  Column padding
    costs nothing: tap q covers only the output columns whose input column exists.  Stride 2:
    two adjacent taps valid everywhere are disjoint column pairs, ONE TensorReduce over a
    (.., OW, 2) pattern (N cycles in bf16) instead of a copy and a TensorTensor (3N)."""
    so, do = lanes.pop("src_offset", 0), lanes.pop("dst_offset", 0)
    spans = []
    for q in range(S):
        lo = max(0, -(-(pl - q) // sw))
        hi = min(OW, (W - 1 + pl - q) // sw + 1)
        if hi > lo:
            spans.append((q, lo, hi))
    full = [t for t in spans if (t[1], t[2]) == (0, OW)]

    def col(q, lo, hi):
        return src((CT, rows, hi - lo), src_st + (sw,), so + lo * sw + q - pl, **lanes)

    def tcols(lo, hi):
        return dst((CT, rows, hi - lo), dst_st + (1,), do + lo, **lanes)
    fq = {t[0] for t in full}
    pair = next((q for q in range(S - 1) if sw == 2 and q in fq and q + 1 in fq), None)
    done = set()
    if pair is not None:
        em.reduce(tcols(0, OW), src((CT, rows, OW, 2), src_st + (2, 1), so + pair - pl, **lanes), op=op, axes=1)
        done = {pair, pair + 1}
    elif full:
        em.copy(tcols(0, OW), col(*full[0]))
        done = {full[0][0]}
    else:
        em.memset(dst((CT, rows, OW), dst_st + (1,), do, **lanes), fill)
    for t in spans:
        if t[0] not in done:
            em.tt(tcols(t[1], t[2]), tcols(t[1], t[2]), col(*t), op=op)


def _row_pass(em, ov, tmp, tplane, toff, CT, nbo, OW, R, sh, op, cdt, lanes):
    """ov[c, oh, ow] = op over r of tmp[c, oh*sh + r, ow] (tmp rows in padded coordinates)."""
    row = lambda r: tmp.ap((CT, nbo, OW), (tplane, sh * OW, 1), toff + r * OW, **lanes)
    if sh == 2 and R >= 2 and cdt == "bf16":
        # rows (0, 1) are disjoint pairs: one reduction (strided: 2N for the pair, vs 3N as
        # copy + TensorTensor; in fp32 the strided reduction costs 4N)
        em.reduce(ov, tmp.ap((CT, nbo, OW, 2), (tplane, 2 * OW, 1, OW), toff, **lanes), op=op, axes=1)
        for r in range(2, R):
            em.tt(ov, ov, row(r), op=op)
    else:
        _fold(em, ov, row, R, op)


def lane_split_ok(x_shape, out_shape, pool_size, strides, padding, mode) -> bool:
    """Can pool2d's ``lane_split`` take this pool (see pool2d)?"""
    N, C, H, W = (int(v) for v in x_shape)
    OH = int(out_shape[2])
    R, _ = pool_size
    sh, _ = strides
    pt = padding[0]
    if mode != "max" or N != 1 or C not in (32, 64) or OH < 2:
        return False
    OHa, OHb = OH - OH // 2, OH // 2  # band 0 takes the odd row
    shift = OHa * sh
    # the lower band's windows stay inside the input; its halo rows fit after its rows
    return (OHb - 1) * sh + R - 1 - pt + shift <= H - 1 and 0 <= pt <= shift


def lane_split_geometry(out_shape, strides, padding):
    """(shift, halo) of the two-band lane layout: band 1 (output rows ceil(OH/2)..) reads input
    rows from ``shift`` = ceil(OH/2) * sh on, and ``halo`` = pt rows before it."""
    OH = int(out_shape[2])
    return ((OH - OH // 2) * strides[0], int(padding[0]))
