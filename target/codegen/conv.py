"""conv2d on the Tensor engine (NCHW / OIHW, any stride and padding, groups, dilation 1).

Schedule (per image n, per band of output rows; one band when everything fits):

* **channel mode** (C >= 16): input channels on partitions.  C <= 128 -> one tile; C a multiple
  of 128 -> *blocked* mapping (channel p*CT + j on partition p, plane j), so a whole band
  of all CT planes is ONE DMA with CT*H*W contiguous elements per partition (long runs even
  for 7x7 maps); otherwise cyclic tiles of 128.  Output channels use the same mapping.
  With padding the band is loaded contiguously and copied (GpSimd) into a zeroed padded tile.
  For every output-channel tile and every block of <= 512 output pixels (whole rows), all
  (input-tile, tap) pairs accumulate into one PSUM bank: stationary = weight block
  [c, k] (laid out at compile time, one DMA per K-group), moving = the shifted, strided window
  of the input tile (2-D free AP).  Groups are expanded to dense block-diagonal weights and
  all-zero blocks are skipped (depthwise = diagonal 128x128 blocks: full PE rows).
* **packed mode** (few input channels, e.g. the C=3 stem): (c, r, s) taps on partitions
  (im2col by DMA, one DMA per tap row), so 7x7x3 = 147 rows use 2 matmuls per pixel block.
* Epilogue: the PSUM->SBUF evacuation is one Scalar-engine Activation
  ``func(psum * scale[k] + bias[k])`` (folded batch norm / bias, ReLU), into an output tile
  stored with large DMAs split over the queues.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from target import isa
from .emitter import AllocationError, CodegenError, Emitter
from .options import weight_split
from .values import Value


PIPE_MIN_BYTES = 512 * 1024  # input loads at least this big are pipelined in row bands


class ChanMap:
    """Channel <-> (tile j, partition p) mapping."""

    def __init__(self, C: int, P: int, cyclic: bool = False):
        self.C = C
        if C <= P:
            self.T, self.parts, self.blocked = 1, C, False
        elif C % P == 0 and not cyclic:  # cyclic: the SBUF-resident layout (c % P, c // P)
            self.T, self.parts, self.blocked = C // P, P, True
        elif not cyclic and any(C % t == 0 for t in self._plane_counts(C, P)):
            # blocked over fewer partitions (C = parts * T, e.g. 192 = 96 x 2, 544 = 68 x 8): the
            # fewest planes (at least half the partitions used), one DMA per band, and the SBUF
            # row-split layout (so the tensor can stay resident)
            t = next(t for t in self._plane_counts(C, P) if C % t == 0)
            self.T, self.parts, self.blocked = t, C // t, True
        else:
            self.T, self.parts, self.blocked = -(-C // P), P, False
        self.P = P

    @staticmethod
    def _plane_counts(C, P):
        t0 = -(-C // P)
        return range(t0, max(t0 + 1, 2 * t0) + 1)

    def nparts(self, j):
        if self.blocked or self.T == 1:
            return self.parts
        return min(self.P, self.C - j * self.P)

    def index(self):
        """[T, parts] channel index (or C for 'none')."""
        idx = np.full((self.T, self.parts), self.C, dtype=np.int64)
        for j in range(self.T):
            for p in range(self.nparts(j)):
                idx[j, p] = p * self.T + j if self.blocked else j * self.P + p
        return idx


def resident_map(v, C: int, P: int) -> "ChanMap":
    """The channel map of value ``v``'s layout: the default blocked map, or, for an SBUF-resident
    value, the cyclic map / the blocked map over its tile's partitions (a concat laid out on whole
    rows of its inputs, poly.aligned_concat_rows)."""
    if v.sbuf is None:
        return ChanMap(C, P)
    if v.cyclic:
        return ChanMap(C, P, cyclic=True)
    cm = ChanMap(C, P)
    rows = v.sbuf.partitions
    if rows != cm.parts and C > rows and C % rows == 0:
        return ChanMap(C, rows)
    return cm


def full_taps(H, W, OH, OW, R, S, stride, pad):
    """(row taps, column taps) whose input pixel exists for EVERY output pixel of an H x W input
    (padding (pt, pl, ..)): a clipped-tap conv opens its accumulation group with one of them, a
    row pair (``pair_rows``) starts at the first row tap."""
    sh, sw = stride
    pt, pl = pad[0], pad[1]
    return ([r for r in range(R) if r >= pt and (OH - 1) * sh + r - pt <= H - 1],
            [q for q in range(S) if q >= pl and (OW - 1) * sw + q - pl <= W - 1])


def _out_hw(H, W, R, S, stride, pad):
    sh, sw = stride
    pt, pl, pb, pr = pad
    return (H + pt + pb - R) // sh + 1, (W + pl + pr - S) // sw + 1


def conv2d(em: Emitter, x: Value, out: Value, weight: np.ndarray, stride, pad, groups: int,
           const, scale=None, bias=None, func: str = "identity", cdt: str = "fp32", residual: Value = None,
           prefetch: bool = False, pinned=None, weight_slot=None, lane_dup=None, pair_rows: bool = False,
           weight_pack=None):
    """weight: [K, C/groups, R, S] numpy; scale/bias: [K] numpy or None (folded at compile time);
    const(name, array, dtype) -> Value creates compile-time HBM constants.  ``residual`` (same
    shape as ``out``): out = func(conv * scale + bias + residual); the residual is accumulated
    into the conv's PSUM bank by one identity matmul per pixel block (scale folded into the
    weights), so the add costs no Vector/Scalar pass.  ``prefetch``: the plan issues this kernel's
    weight loads ahead of it, so they are cut in bandwidth-sized pieces (``options.weight_split``).
    ``pinned(arr) -> (tile, column) | None``: where the epilogue columns live when the program
    keeps them in its constant block (:mod:`target.codegen.const_block`).
    ``weight_slot = (tile, cache)``: a planner-placed SBUF tile that keeps this kernel's weights
    across its calls (spatial tiling runs a kernel once per row band); ``cache`` (a dict, the same
    for every call) remembers what the tile holds, so a later call with the same laid-out
    weights loads nothing.  Used when the weights load once and fit the tile.
    ``weight_pack`` (:class:`target.codegen.weight_pack.Member`): this kernel's weights are
    columns of a weight pack the driver loaded ahead (several kernels' short weight rows side by
    side, one transfer); the kernel writes its laid-out weights into the pack's HBM constant
    and loads nothing.  Every lowering records ``em.weight_layouts[tag]`` (what a pack can hold).
    ``lane_dup = (shift, halo)`` (K <= 64 channels, SBUF-resident output, one image): the stationary
    holds the weights twice side by side (free: a matmul's cost does not depend on its columns), so
    PSUM lanes K..2K carry a second copy of every output pixel, and output rows [shift, OH) are also
    written to lanes K..2K at row - shift, rows [shift - halo, shift) after them (at OH - shift ..):
    the two-band lane layout the following pool reads in place (pool2d's ``lane_split``).  A third
    element z zeroes the z lane-block rows after them (``(1, 0, 1)``: the input shifted one row up
    for a ``pair_rows`` consumer, its last row the bottom padding).
    ``pair_rows``: the SBUF-resident input (C = 32/64 channels) holds on lanes C..2C its rows
    shifted up by one (the producer's ``lane_dup=(1, 0, 1)``), so taps (r, s) and (r+1, s) are ONE
    matmul with K = 2C rows (stationary [W_r; W_r+1]): a 3x3 conv makes 6 matmuls per pixel
    block instead of 9."""
    N, C, H, W = x.shape
    K, Cg, R, S = weight.shape
    sh, sw = stride
    pt, pl, pb, pr = pad
    OH, OW = _out_hw(H, W, R, S, stride, pad)
    if tuple(out.shape) != (N, K, OH, OW):
        raise CodegenError(f"conv2d output shape {out.shape} != {(N, K, OH, OW)}")
    P = em.partitions
    it = isa.DTYPES[cdt]
    # dense (block-diagonal for groups) weight [K, C, R, S]
    w = np.asarray(weight, dtype=np.float32)
    if residual is not None:
        if tuple(residual.shape) != tuple(out.shape):
            raise CodegenError(f"conv2d residual shape {residual.shape} != output {out.shape}")
        if scale is not None:  # PSUM = conv(w * scale) + residual; the epilogue adds the bias
            w = w * np.asarray(scale, np.float32).reshape(-1, 1, 1, 1)
            scale = None
    if groups > 1:
        if K * C * R * S > 64_000_000:
            raise CodegenError("grouped conv too large for dense block expansion")
        wd = np.zeros((K, C, R, S), np.float32)
        Kg = K // groups
        for g in range(groups):
            wd[g * Kg:(g + 1) * Kg, g * Cg:(g + 1) * Cg] = w[g * Kg:(g + 1) * Kg]
        w = wd
    packed = groups == 1 and C < 16 and R * S > 1
    stage = None
    Wp = W + pl + pr
    Hq = -(-max(H + pt + pb, (OH - 1) * sh + R) // sh) + 1  # staged rows per parity plane (+1, see below)
    staged = [None]  # image currently in the stage

    def stage_image(n):
        """Stage image n (the borders are zeroed once: every image writes the same interior)."""
        for a in range(sh):
            base = a * Hq * Wp
            h0 = (a - pt) % sh  # first input row of this parity
            na = len(range(h0, H, sh))
            r0 = (h0 + pt) // sh  # its plane row
            if staged[0] is None:
                if r0:
                    em.memset(stage.ap((r0 * Wp,), elem_offset=base), 0.0)
                if Hq - r0 - na:
                    em.memset(stage.ap(((Hq - r0 - na) * Wp,), elem_offset=base + (r0 + na) * Wp), 0.0)
                if na and pl:
                    em.memset(stage.ap((na, pl), (Wp, 1), base + r0 * Wp), 0.0)
                if na and Wp - pl - W:
                    em.memset(stage.ap((na, Wp - pl - W), (Wp, 1), base + r0 * Wp + pl + W), 0.0)
            if na:
                em.dma_split(stage.ap((na, W), (Wp, 1), base + r0 * Wp + pl),
                             x.flat_ap(n * C * H * W + h0 * W, C, H * W, (na, W), (sh * W, 1)))
        staged[0] = n

    # row taps (LowerOptions.stem == "rows"): the image is staged split by row parity (plane a
    # holds the row-padded rows a, a+sh, a+2sh, ... contiguously, pitch W, no padding columns), so
    # partition (c, r) -- input row r of every output row -- is ONE contiguous run of plane r % sh
    # (rows oh0 + r // sh + t): every im2col band is a full-rate DMA of only the rows the taps read,
    # the taps s are moving-AP column offsets clipped to the columns inside the image
    # (``_clipped`` over columns only) and the image comes in once
    Hs = max(pt + H + pb, (OH - 1) * sh + R)  # staged rows (zero rows above and below)
    Hsq = -(-Hs // sh)  # rows per parity plane
    full_cols = [s for s in range(S) if s - pl >= 0 and (OW - 1) * sw + s - pl <= W - 1]
    rowtap = packed and x.sbuf is None and C * R <= P and bool(full_cols) and \
        sh * Hsq * W * it <= 0.7 * em.sbuf.largest_free()
    if rowtap:
        em.consulted.add("stem")  # the stem option decides this kernel's layout
    rowtap = rowtap and em.options.stem == "rows"
    if rowtap:
        stage = em.sbuf_tile(C, sh * Hsq * W * it, cdt, "conv_stage")

        def stage_image(n):
            for a in range(sh):
                base = a * Hsq * W
                h0 = (a - pt) % sh  # first input row of plane a
                na = len(range(h0, H, sh))
                r0 = (h0 + pt) // sh  # its plane row
                if staged[0] is None:  # zero rows: the padding above and below
                    if r0:
                        em.memset(stage.ap((r0 * W,), elem_offset=base), 0.0)
                    if Hsq - r0 - na > 0:
                        em.memset(stage.ap(((Hsq - r0 - na) * W,), elem_offset=base + (r0 + na) * W), 0.0)
                if na:
                    em.dma_split(stage.ap((na, W), (W, 1), base + r0 * W),
                                 x.flat_ap(n * C * H * W + h0 * W, C, H * W, (na, W), (sh * W, 1)))
            staged[0] = n
        stage_image(0)
    elif packed and x.sbuf is None and R * S >= 2 * sh * sw and \
            sh * Hq * Wp * it <= 0.7 * em.sbuf.largest_free():
        # load once, padded and split by row parity: the im2col DMAs read each input element
        # ~R*S/(sh*sw) times, so the image comes in once (one channel per partition) and they
        # copy SBUF->SBUF.  Plane a holds the padded rows a, a+sh, a+2sh, ... (zero borders), so
        # tap (c, r, s0)'s im2col rows over a whole band are ONE contiguous run of plane r % sh
        # (whole padded rows, long DMA rows) instead of one short row per output row.  A run
        # starting at column s0 > 0 reads s0 elements of the next row: the extra plane row.
        # With N > 1 images the stage holds one image at a time (restaged at its first band).
        stage = em.sbuf_tile(C, sh * Hq * Wp * it, cdt, "conv_stage")
        stage_image(0)
    km = ChanMap(K, P)
    res_in, res_out = x.sbuf is not None, out.sbuf is not None  # SBUF-resident operands
    # a concat slice (the planner's in-place concat): the output is partitions [p0, p0 + rows) of
    # the concat's buffer, so the output channels map over ``rows`` partitions and the stationary
    # also reads the p0 columns before each weight block: PSUM lanes p0.. carry the output,
    # evacuated lane to lane (lanes 0..p0 get whatever those columns make and are never read)
    lane_off = out.sbuf.start_partition if res_out else 0
    sliced = res_out and (lane_off > 0 or out.sbuf.partitions != km.parts)
    if sliced:
        km = ChanMap(K, out.sbuf.partitions)
        if not ((km.blocked or km.T == 1) and km.parts == out.sbuf.partitions and
                _start_ok(lane_off, km.parts) and lane_off + km.parts <= P and
                (lane_off == 0 or (residual is None and lane_dup is None and weight_slot is None))):
            raise CodegenError(f"conv2d into partitions [{lane_off}, {lane_off + out.sbuf.partitions}) of a "
                               f"resident buffer: needs a blocked {out.sbuf.partitions}-partition channel map, "
                               f"no residual, lane_dup or weight slot (K={K})")
    # clipped taps: a resident input is read in place even with padding.  Tap (r, s) only
    # contributes to the output pixels whose input pixel exists, so its matmul covers that
    # sub-rectangle of the PSUM block; a tap valid for every output pixel opens the group.
    # No zeroed padded copy (a GpSimd pass the Tensor engine waited for, and its SBUF).
    full_r, full_s = full_taps(H, W, OH, OW, R, S, stride, pad)
    clip = res_in and any(pad) and not packed and bool(full_r) and bool(full_s)
    full_tap = (full_r[0], full_s[0]) if clip else None
    Mk = km.parts
    kidx = km.index()  # [KT, Mk]
    KT = km.T
    dup = lane_dup is not None
    if dup and not (res_out and KT == 1 and Mk in (32, 64) and residual is None and N == 1
                    and OW <= em.max_moving_free):
        raise CodegenError(f"conv2d lane_dup needs a resident single-image output of 32 or 64 channels "
                           f"with whole-row pixel blocks and no residual (got K={K}, N={N}, OW={OW})")
    Mm = lane_off + (2 * Mk if dup else Mk)  # stationary columns = PSUM lanes
    wide_o = dataclasses.replace(out.sbuf, partitions=2 * Mk) if dup else None  # both lane blocks
    if dup and len(lane_dup) > 2 and lane_dup[2]:  # zero rows after the lane block's rows
        z0 = OH - lane_dup[0] + lane_dup[1]
        em.memset(wide_o.ap((lane_dup[2] * OW,), (1,), z0 * OW, partitions=Mk, start=Mk), 0.0)

    # ---------------------------------------------------------------- epilogue columns
    cols, c0, own_cols = None, 0, False
    if scale is not None or bias is not None:
        sc = np.ones(K, np.float32) if scale is None else np.asarray(scale, np.float32)
        bi = np.zeros(K, np.float32) if bias is None else np.asarray(bias, np.float32)
        sce, bie = np.append(sc, 0.0), np.append(bi, 0.0)
        arr = np.zeros((Mk, 2 * KT), np.float32)
        arr[:, :KT] = sce[kidx].T
        arr[:, KT:] = bie[kidx].T
        if dup:  # the second lane block's evacuation reads them on lanes K..2K
            arr = np.concatenate([arr, arr])
        if lane_off:  # the evacuation reads them on the output's lanes
            arr = np.concatenate([np.zeros((lane_off, arr.shape[1]), np.float32), arr])
        # (the constant block sized its columns for the unsliced channel map)
        got = pinned(arr) if pinned is not None and not sliced else None
        if got is not None:  # the program's constant block (const_block.py) holds them
            cols, c0 = got
        else:
            cv = const(f"{em.tag.split(':')[0]}/epilogue", arr, "fp32")
            cols = em.sbuf_tile(arr.shape[0], 2 * KT * 4, "fp32", "conv_cols")
            em.dma(cols.ap((2 * KT,), partitions=arr.shape[0]), cv.flat_ap(0, arr.shape[0], 2 * KT, (2 * KT,), (1,)))
            own_cols = True

    ident = None
    if residual is not None:
        ident = em.identity(Mk, cdt, "conv_ident")
    res_hbm = residual is not None and residual.sbuf is None

    def epi(jk, nk, start=0):
        if cols is None:
            return 1.0, 0.0
        return (cols.ap((1,), elem_offset=c0 + jk, partitions=nk, start=start),
                cols.ap((1,), elem_offset=c0 + KT + jk, partitions=nk, start=start))

    # ---------------------------------------------------------------- contraction blocks
    wext = np.zeros((K + 1, C + 1, R, S), np.float32)
    wext[:K, :C] = w
    pairing, wsingle = False, None  # row-pair packing (channel mode, ``pair_rows``)
    wbufs = 2  # K groups of weights (if any) stream through two buffers; one: see _k_group_size
    diag_blocks = 0  # > 0: depthwise weights stored as their diagonals (channel mode, below)
    if packed:
        # partitions = (c, r, s0) with s = s0 + sw*s1; taps s1 become moving-AP column offsets.
        # s0 over all of S ("full im2col", fewest matmuls) or over S mod sw ("phase packing",
        # sw-times fewer DMA bytes); pick the cheaper by the config's cost figures.
        def plan_for(nphase):
            S1 = -(-S // nphase)
            rows_ = C * R * nphase
            nq = -(-rows_ // P)
            Wu2 = (OW - 1) * sw + 1 + nphase * (S1 - 1) if nphase < S else (OW - 1) * sw + 1
            nblk = -(-(OH * OW) // maxn_)
            f32 = getattr(em.config, "matmul_fp32_factor", 4) if cdt == "fp32" else 1
            t_pe = nblk * nq * S1 * max(64, min(maxn_, OH * OW)) * f32 / (getattr(em.config, "tensor_ghz", 2.8) * 1e9)
            nbytes = rows_ * OH * Wu2 * it
            qbw = getattr(em.config, "dma_queue_bandwidth_gbps", 17.0) * 1e9
            t_dma = nbytes / (len(em.dma_streams) * qbw * 0.8) + rows_ * getattr(em.config, "dma_latency_us", 1.3) * 1e-6 / len(em.dma_streams)
            return max(t_pe, t_dma), nphase, S1, Wu2
        maxn_ = em.max_moving_free
        cands = [plan_for(S)] + ([plan_for(sw)] if 1 < sw < S else [])
        _, nphase, S1, Wu = min(cands) if not rowtap else (0, 1, S, W)
        # r innermost: consecutive partitions read consecutive input rows (one DMA per run); from
        # the parity-split stage, r grouped by parity (r, r+sh, ... are consecutive plane rows)
        rs = sorted(range(R), key=lambda r: (r % sh, r)) if stage is not None else list(range(R))
        taps = [(c, r, s0) for c in range(C) for s0 in range(nphase) for r in rs]
        nQ = -(-len(taps) // P)
        qsz = -(-len(taps) // nQ)
        chunks = [taps[i:i + qsz] for i in range(0, len(taps), qsz)]
        rows = max(len(q) for q in chunks)
        # blocks: (q, s1)
        blocks_by_jk = {jk: [(q, s1) for q in range(len(chunks)) for s1 in range(S1)] for jk in range(KT)}
        arr = np.zeros((rows, len(chunks), S1, KT, Mk), np.float32)
        for q, ch in enumerate(chunks):
            for p, (c, r, s0) in enumerate(ch):
                for s1 in range(S1):
                    sidx = s0 + nphase * s1 if nphase < S else s0
                    if sidx < S:
                        arr[p, q, s1] = wext[kidx, c, r, sidx]
        wparts = rows
        blk_off = {(q, s1, jk): ((q * S1 + s1) * KT + jk) * Mk
                   for q in range(len(chunks)) for s1 in range(S1) for jk in range(KT)}
        kgroups = [list(range(KT))]
        wconsts = [arr.reshape(rows, -1)]
    else:
        cm = resident_map(x, C, P) if res_in else ChanMap(C, P)  # a resident input's layout
        cidx = cm.index()  # [CT, parts]
        CT = cm.T
        # A[jk, m, j, p, tap] = w[kidx[jk, m], cidx[j, p], tap]
        A = wext.reshape(K + 1, C + 1, R * S)[kidx][:, :, cidx]  # [KT, Mk, CT, parts, RS]
        nz = np.abs(A).sum(axis=(1, 3, 4)) > 0  # [KT, CT]
        wparts = cm.parts
        wbytes_all = int(nz.sum()) * R * S * Mk * it
        budget = em.sbuf.largest_free() // 3
        # weights once unless even one-output-row bands (double-buffered) would not fit next to
        # them: streaming K groups reloads every weight once per band (x bands HBM bytes)
        row_band = (0 if res_in else CT * R * W * it) + (CT * R * (W + pl + pr) * it if any(pad) and not clip else 0) + \
            (0 if res_out else KT * OW * it)
        if wbytes_all <= budget or wbytes_all + 2 * row_band <= 0.8 * em.sbuf.largest_free():
            kgroups = [list(range(KT))]
        else:
            per_kt = max(int(nz[jk].sum()) for jk in range(KT)) * R * S * Mk * it
            g = max(1, (budget // 2) // max(per_kt, 1))
            g, wbufs = _k_group_size(g, KT, per_kt, em.sbuf.largest_free(), x.shape, (K, OH, OW), (R, S),
                                     stride, it, res_in, res_out, any(pad) and not clip, pl + pr,
                                     em.max_moving_free, P)
            kgroups = [list(range(i, min(KT, i + g))) for i in range(0, KT, g)]
        wconsts, blk_off, blocks_by_jk = [], {}, {}
        pairing = pair_rows and clip and C in (32, 64) and CT == 1 and groups == 1 and len(kgroups) == 1 \
            and weight_slot is None and x.base is None and N == 1 and x.images == 1 and full_r[0] + 1 < R
        if pair_rows and not pairing:
            raise CodegenError(f"conv2d {x.shape}->{out.shape}: pair_rows needs a resident single-image "
                               f"32/64-channel input read with clipped taps")
        # tap packing ("full PE rows" for C <= 64): partition block i (rows i*C..) holds the
        # padded input shifted left by i columns, so taps (r, s..s+g-1) are ONE matmul with
        # K = g*C rows.  Needs the padded path (pl >= g-1 keeps the shifted copy in the tile).
        tpack = 1
        if C in (32, 64) and groups == 1 and not res_in and S > 1 and pl >= 1:  # block starts obey the partition-start rule
            tpack = max(1, min(P // C, S, pl + 1))
        blk_parts = {}
        if tpack > 1:
            ng = -(-S // tpack)
            wparts = tpack * C
            kgroups = [list(range(KT))]
            tg = [(r, sg) for r in range(R) for sg in range(ng)]
            arr = np.zeros((wparts, len(tg) * KT, Mk), np.float32)
            for jk in range(KT):
                blocks_by_jk[jk] = []
                for ti, (r, sg) in enumerate(tg):
                    b = jk * len(tg) + ti
                    gs = min(tpack, S - sg * tpack)
                    for i in range(gs):
                        arr[i * C:(i + 1) * C, b, :] = A[jk, :, 0, :, r * S + sg * tpack + i].T
                    blk_off[(0, ti, jk)] = b * Mk
                    blocks_by_jk[jk].append((0, ti))
                    blk_parts[(0, ti)] = gs * C
            wconsts.append(arr.reshape(wparts, -1))
        if pairing:
            # taps (r, r+1) from the first row tap valid everywhere down: pairs (lanes 0..C tap r,
            # lanes C..2C tap r+1 through the shifted copy); the other rows single
            prs = list(range(full_r[0], R - 1, 2))
            singles = [r for r in range(R) if r not in set(prs) | {r + 1 for r in prs}]
            pb = [(jk, r, q) for jk in range(KT) for r in prs for q in range(S)]
            sb = [(jk, r, q) for jk in range(KT) for r in singles for q in range(S)]
            arr = np.zeros((2 * C, len(pb), Mk), np.float32)
            for b, (jk, r, q) in enumerate(pb):
                arr[:C, b] = A[jk, :, 0, :, r * S + q].T
                arr[C:, b] = A[jk, :, 0, :, (r + 1) * S + q].T
                blk_off[(0, R * S + r * S + q, jk)] = b * Mk
                blk_parts[(0, R * S + r * S + q)] = 2 * C
            arr_s = np.zeros((C, max(1, len(sb)), Mk), np.float32)
            for b, (jk, r, q) in enumerate(sb):
                arr_s[:, b] = A[jk, :, 0, :, r * S + q].T
                blk_off[(0, r * S + q, jk)] = (len(pb) + b) * Mk
                blk_parts[(0, r * S + q)] = C
            for jk in range(KT):
                blocks_by_jk[jk] = [(0, R * S + r * S + q) for (k2, r, q) in pb if k2 == jk] + \
                    [(0, r * S + q) for (k2, r, q) in sb if k2 == jk]
            wparts = 2 * C
            wconsts.append(arr.reshape(2 * C, -1))
            wsingle = arr_s.reshape(C, -1) if sb else None
        for grp in (kgroups if tpack == 1 and not pairing else []):
            blist = [(j, t, jk) for jk in grp for j in range(CT) if nz[jk, j] for t in range(R * S)]
            arr = np.zeros((cm.parts, max(1, len(blist)), Mk), np.float32)
            for b, (j, t, jk) in enumerate(blist):
                arr[:, b, :] = A[jk, :, j, :, t].T
                blk_off[(j, t, jk)] = b * Mk
            for jk in grp:
                blocks_by_jk[jk] = [(j, t) for (j, t, k2) in blist if k2 == jk]
            wconsts.append(arr.reshape(cm.parts, -1))
        # depthwise (groups == C == K, the same channel map in and out): every nonzero block is a
        # diagonal, so HBM holds only the diagonals (parts x blocks) and the stationary blocks are
        # built on chip, W[p, b, m] = I[p, m] * d[p, b] (GpSimd): Mk-fold fewer weight
        # bytes (ShuffleNet's 544-channel 3x3: 666 KB -> 10 KB per kernel at bf16)
        if groups == C == K and Cg == 1 and tpack == 1 and not pairing and not dup and not lane_off and \
                cm.parts == Mk and len(wconsts) == 1 and np.array_equal(cidx, kidx):
            dense = wconsts[0].reshape(Mk, -1, Mk)
            dvals = dense[np.arange(Mk), :, np.arange(Mk)]  # [Mk, blocks]
            em.consulted.add("depthwise")
            if em.options.depthwise == "diag" and np.count_nonzero(dense) == np.count_nonzero(dvals):
                diag_blocks = dense.shape[1]
                wconsts = [np.ascontiguousarray(dvals)]

    tagbase = em.tag.split(":")[0]
    # dup: the weights twice, [W_0 .. W_n | W_0 .. W_n] (loaded once, the second half copied on
    # chip); block b's stationary is the 2-D pattern (2, Mk) over both halves = [W_b | W_b]
    wsize = diag_blocks * Mk if diag_blocks else max(a.shape[1] for a in wconsts) * (2 if dup else 1)
    if wsingle is not None:
        wsize += wsingle.shape[1]
    kept = None  # (tile, already loaded) when the planner's slot keeps the weights across calls
    if weight_slot is not None and len(kgroups) == 1:
        wt, cache = weight_slot
        if wparts <= wt.partitions and wsize * it <= wt.nbytes:
            held = cache.get("weights")
            kept = (wt, held is not None and held.shape == wconsts[0].shape and np.array_equal(held, wconsts[0]))
            cache["weights"] = wconsts[0]
    # one plain weight array loaded once into a fresh tile: a weight pack can hold it instead
    em.weight_layouts[tagbase] = (wparts, wconsts[0].shape[1], cdt) if (
        len(wconsts) == 1 and wsingle is None and not dup and not lane_off and weight_slot is None
        and not diag_blocks) else None
    if weight_pack is not None:
        kept = (weight_pack.take(em.weight_layouts[tagbase], wconsts[0]), True)
    wvals = [None if kept and kept[1] else const(f"{tagbase}/w{gi}", a, cdt) for gi, a in enumerate(wconsts)]
    wsval = const(f"{tagbase}/w0s", wsingle, cdt) if wsingle is not None else None
    # lane_off: the weights sit behind lane_off initialised elements, so block b's stationary is the
    # lane_off + Mk columns ending at its last column; the leading columns (the slack, or the block
    # before) fill PSUM lanes 0..lane_off that are never read
    wpool = None if kept else em.pool("sbuf", wparts, (wsize + lane_off) * it, cdt,
                                      1 if len(kgroups) == 1 else wbufs, "conv_w")
    em.note(weights="kept" if kept and kept[1] else "slot" if kept else "loaded")

    # ---------------------------------------------------------------- bands
    def in_rows(bo):
        return (bo - 1) * sh + R

    if not packed:
        Wu = (OW - 1) * sw + 1
    Wrow = W if rowtap else Wp if stage is not None else Wu  # row pitch of the packed im2col band tiles

    def band_bytes(bo):
        if packed:
            return len(chunks) * bo * Wrow * it + (0 if res_out else KT * bo * OW * it)
        rows_p = in_rows(bo)
        b = 0 if res_in else CT * rows_p * W * it
        if any(pad) and not clip:
            b += CT * rows_p * Wp * it
        return b + (0 if res_out else KT * bo * OW * it) + (KT * bo * OW * it if res_hbm else 0)

    free = em.sbuf.largest_free()  # the weight pool is already allocated
    bo = OH
    while bo > 1 and band_bytes(bo) > free * 0.9:
        bo = -(-bo // 2)
    nbands = -(-OH // bo)
    if N * nbands > 1:
        while bo > 1 and 2 * band_bytes(bo) > free * 0.9:
            bo = -(-bo // 2)
        nbands = -(-OH // bo)
    # pipelining: a big input load is cut into ~4 bands (double-buffered) so the Tensor engine
    # starts on the first band while the rest streams in, and stores overlap compute
    rows_in = len(taps) * Wu if packed else C * W
    load_bytes = rows_in * in_rows(OH) * it
    f32 = getattr(em.config, "matmul_fp32_factor", 4) if cdt == "fp32" else 1
    n_mm = sum(len(b) for b in blocks_by_jk.values()) * -(-(OH * OW) // em.max_moving_free)
    t_pe = n_mm * max(64, min(em.max_moving_free, OH * OW)) * f32 / (getattr(em.config, "tensor_ghz", 2.8) * 1e9)
    t_load = load_bytes / (len(em.dma_streams) * getattr(em.config, "dma_queue_bandwidth_gbps", 17.0) * 1e9)
    if not res_in and N * nbands == 1 and load_bytes >= PIPE_MIN_BYTES and OH >= 8 and t_pe >= t_load:
        rpb = max(1, em.max_moving_free // OW) if OW <= em.max_moving_free else 1
        bo2 = -(-OH // min(4, OH // 2))
        bo2 = min(OH, -(-bo2 // rpb) * rpb)
        if bo2 < bo and 2 * band_bytes(bo2) <= free * 0.9:
            bo = bo2
            nbands = -(-OH // bo)
    if band_bytes(bo) > free:
        raise AllocationError(f"conv2d {x.shape}->{out.shape}: one output row needs "
                              f"{band_bytes(1)} B per partition, {free} B free")
    nb = 2 if N * nbands > 1 else 1
    # weights streamed in K groups over several bands: band-outer loads every group once per band
    # (weights x bands of HBM bytes), group-outer every band's input once per group (input x
    # groups); *band blocks* keep the inputs of m bands in SBUF and run every group over them, so
    # weights load once per block and inputs once (weights x blocks + input): m as large as fits
    G = len(kgroups)
    nbands_all = N * nbands
    w_total = sum(a.size for a in wconsts) * it
    x_in_b = 0 if res_in else N * load_bytes
    r_total = N * K * OH * OW * it if res_hbm else 0  # the shortcut band: loaded per step
    x_total = x_in_b + r_total
    blockm = None
    if G > 1 and nbands_all > 1 and not res_in and wbufs == 2:
        in_b = CT * in_rows(bo) * W * it + (CT * in_rows(bo) * Wp * it if any(pad) and not clip else 0)
        rest_b = band_bytes(bo) - in_b
        fit = [m for m in range(2, nbands_all + 1)
               if (m + (m < nbands_all)) * in_b + 2 * rest_b <= 0.9 * free]
        if fit:
            m = max(fit)
            c_block = w_total * -(-nbands_all // m) + x_in_b + r_total * G
            if c_block < min(w_total * nbands_all + x_total, w_total + x_total * G):
                blockm = m
    nb_in = (blockm + (blockm < nbands_all)) if blockm else nb
    em.note(mode=("packed" if packed else "channel"), k_tiles=KT, k_blocked=km.blocked,
            c_tiles=(None if packed else CT), c_blocked=(None if packed else cm.blocked),
            rows=(len(chunks[0]) if packed else wparts), phases=(nphase if packed else None),
            tap_pack=(None if packed else tpack), k_groups=len(kgroups), band_rows=bo, bands=N * nbands,
            resident_in=res_in, resident_out=res_out)
    if packed:
        in_pools = [em.pool("sbuf", len(ch), bo * Wrow * it, cdt, nb, f"conv_in{q}_") for q, ch in enumerate(chunks)]
        pad_pool = None
    else:
        in_pool = None if res_in else em.pool("sbuf", cm.parts * tpack, CT * in_rows(bo) * W * it, cdt, nb_in, "conv_in")
        pad_pool = em.pool("sbuf", cm.parts * tpack, CT * in_rows(bo) * Wp * it, cdt, nb_in, "conv_pad") \
            if any(pad) and not clip else None
    out_pool = None if res_out else em.pool("sbuf", Mk, KT * bo * OW * it, cdt, nb, "conv_out")
    res_pool = em.pool("sbuf", Mk, KT * bo * OW * it, cdt, nb, "conv_res") if res_hbm else None
    psum_pool = em.pool("psum", Mm, None, "fp32", min(4, em.psum_banks), "conv_ps")

    # pixel blocks inside a band
    maxn = em.max_moving_free

    def pix_blocks(nrows):
        if OW <= maxn:
            rpb = max(1, maxn // OW)
            rpb = -(-nrows // (-(-nrows // rpb)))  # balance
            return [(t0, min(rpb, nrows - t0), 0, OW) for t0 in range(0, nrows, rpb)]
        cpb = -(-OW // (-(-OW // maxn)))
        return [(t0, 1, c0, min(cpb, OW - c0)) for t0 in range(nrows) for c0 in range(0, OW, cpb)]

    def load_band(n, oh0, nbo):
        """Issue the DMAs (and pad copies) of one band; returns a moving-AP function."""
        if packed:
            tiles = [p.next() for p in in_pools]
            has_pad = any(pad)
            if stage is not None and staged[0] != n:
                stage_image(n)
            if rowtap:  # per (channel, parity): its partitions (c, r) <- row-shifted runs of the plane
                nrow = nbo  # rows per partition of the band tile
                npc = max(1, min(nrow, -(-len(em.dma_streams) // (C * sh)))) if oh0 == 0 else 1
                step = -(-nrow // npc)
                i = 0
                for c in range(C):
                    for a in range(sh):
                        k = len(range(a, R, sh))  # taps r = a, a+sh, ...: plane a, rows oh0 + r // sh
                        for f0 in range(0, nrow, step):
                            nf = min(step, nrow - f0)
                            em.dma(tiles[0].ap((nf * W,), elem_offset=f0 * W, partitions=k, start=i),
                                   stage.ap((k, nf * W), (W, 1), a * Hsq * W + (oh0 + f0) * W, partitions=1, start=c))
                        i += k

                def mov(blk, t0, nr, ow0, nw):
                    off = t0 * W + ow0 * sw + blk[1] - pl
                    if nr == 1:
                        return tiles[0].ap((nw,), (sw,), off, partitions=len(chunks[0]))
                    return tiles[0].ap((nr, nw), (W, sw), off, partitions=len(chunks[0]))
                return mov
            for q, ch in enumerate(chunks) if stage is not None else ():
                # from the padded parity planes: one DMA per run of partitions (c, s0, r, r+sh..)
                runs = []
                for i, (c, r, s) in enumerate(ch):
                    key = (c, s, r % sh)
                    if runs and runs[-1][0] == key and runs[-1][2] + runs[-1][3] == i and \
                            runs[-1][1] + sh * runs[-1][3] == r:
                        runs[-1][3] += 1
                    else:
                        runs.append([key, r, i, 1])
                for (c, s, a), r, i, k in runs:
                    off = a * Hq * Wp + (oh0 + r // sh) * Wp + s
                    em.dma(tiles[q].ap((nbo * Wp,), partitions=k, start=i),
                           stage.ap((k, nbo * Wp), (Wp, 1), off, partitions=1, start=c))
            for q, ch in enumerate(chunks) if stage is None else ():
                tq = tiles[q]
                if has_pad:
                    em.memset(tq.ap((nbo * Wu,), partitions=len(ch)), 0.0)
                # one DMA per run of partitions (c, s0, r..r+k) with the same valid window:
                # consecutive r are consecutive input rows (HBM partition stride W)
                runs = []
                for i, (c, r, s) in enumerate(ch):  # s = the phase s0
                    # rows t: ih = (oh0+t)*sh + r - pt in [0, H)
                    t_lo = max(0, -(-(pt - r - oh0 * sh) // sh))
                    t_hi = min(nbo, (H - 1 + pt - r - oh0 * sh) // sh + 1)
                    u_lo = max(0, pl - s)
                    u_hi = min(Wu, W + pl - s)
                    if t_hi <= t_lo or u_hi <= u_lo:
                        continue
                    key = (c, s, t_lo, t_hi, u_lo, u_hi)
                    if runs and runs[-1][0] == key and runs[-1][2] + runs[-1][3] == i and \
                            runs[-1][1] + runs[-1][3] == r:
                        runs[-1][3] += 1
                    else:
                        runs.append([key, r, i, 1])
                for (c, s, t_lo, t_hi, u_lo, u_hi), r, i, k in runs:
                    ih = (oh0 + t_lo) * sh + r - pt
                    iw = u_lo + s - pl
                    em.dma_split(tq.ap((t_hi - t_lo, u_hi - u_lo), (Wu, 1), t_lo * Wu + u_lo, partitions=k, start=i),
                                 x.flat_ap((n * C + c) * H * W + ih * W + iw, k, W, (t_hi - t_lo, u_hi - u_lo), (sh * W, 1)))

            def mov(blk, t0, nr, ow0, nw):
                q, s1 = blk
                off = t0 * Wrow + ow0 * sw + s1 * nphase
                if nr == 1:
                    return tiles[q].ap((nw,), (sw,), off, partitions=len(chunks[q]))
                return tiles[q].ap((nr, nw), (Wrow, sw), off, partitions=len(chunks[q]))
            return mov
        # channel mode: padded-coordinate input rows [oh0*sh, oh0*sh + in_rows)
        nrows_p = in_rows(nbo)
        r0p = oh0 * sh
        ih0 = max(0, r0p - pt)
        ih1 = min(H, r0p + nrows_p - pt)
        nvalid = ih1 - ih0
        plane_s = in_rows(bo) * W
        if res_in:  # resident input: read (or pad-copy) straight from its SBUF buffer, at the
            st = x.sbuf  # element offsets of the APs the load DMA would have read
            if cm.blocked:
                # per plane: a row window's planes lie its base's plane apart, not H*W
                poffs = [_rel(st, x.flat_ap(n * C * H * W + j * H * W + ih0 * W, cm.parts, CT * H * W,
                                            (nvalid * W,), (1,))) for j in range(CT)]
            else:
                poffs = [_rel(st, x.chan_ap(n, j * P, cm.nparts(j), ih0 * W, (nvalid * W,), (1,))) for j in range(CT)]
        else:
            st = in_pool.next()
            poffs = [j * plane_s for j in range(CT)]
        if res_in:
            pass
        elif cm.blocked:
            em.dma_split(st.ap((CT, nvalid * W), (plane_s, 1)),
                         x.flat_ap(n * C * H * W + ih0 * W, cm.parts, CT * H * W, (CT, nvalid * W), (H * W, 1)))
        else:
            for j in range(CT):
                nc = cm.nparts(j)
                for i in range(tpack):  # tap packing: one copy of the input per partition block
                    em.dma_split(st.ap((nvalid * W,), elem_offset=j * plane_s, partitions=nc, start=i * nc),
                                 x.chan_ap(n, j * P, nc, ih0 * W, (nvalid * W,), (1,)))
        cshift = 0
        if pad_pool is None:
            base, row = st, W
            pofs = poffs
            roff = r0p - ih0  # 0 without padding
            if clip:  # unpadded coordinates: input row = t*sh + r - pt (+ band start)
                roff, cshift = roff - pt, -pl
        else:
            pt_ = pad_pool.next()
            plane = in_rows(bo) * Wp
            em.memset(pt_.ap((CT * plane,)), 0.0)
            dr = ih0 + pt - r0p  # first valid row inside the padded band
            for j in range(CT):
                nc = cm.nparts(j)
                if tpack > 1:  # block i is the padded plane shifted left by i columns
                    for i in range(tpack):
                        em.copy(pt_.ap((nvalid, W), (Wp, 1), j * plane + dr * Wp + pl - i, partitions=nc, start=i * nc),
                                st.ap((nvalid, W), (W, 1), poffs[j], partitions=nc, start=i * nc), stream="gpsimd")
                    continue
                em.copy(pt_.ap((nvalid, W), (Wp, 1), j * plane + dr * Wp + pl, partitions=nc),
                        st.ap((nvalid, W), (W, 1), poffs[j], partitions=nc), stream="gpsimd")
            base, row, roff = pt_, Wp, 0
            pofs = [j * plane for j in range(CT)]

        wide = dataclasses.replace(base, partitions=2 * C) if pairing else None

        def mov(blk, t0, nr, ow0, nw):
            j, t = blk
            src = base
            if pairing and t >= R * S:  # a (r, r+1) pair: both lane blocks of the input
                (r, s), npart, src = divmod(t - R * S, S), 2 * C, wide
            elif tpack > 1:
                r, sg = divmod(t, -(-S // tpack))
                s, npart = sg * tpack, blk_parts[blk]
            else:
                r, s = divmod(t, S)
                npart = cm.nparts(j)
            off = pofs[j] + (t0 * sh + r + roff) * row + ow0 * sw + s + cshift
            if nr == 1:
                return src.ap((nw,), (sw,), off, partitions=npart)
            return src.ap((nr, nw), (sh * row, sw), off, partitions=npart)
        return mov

    def stat(gi, blk, jk, nk):
        key = (blk[0], blk[1], jk)
        np_ = len(chunks[blk[0]]) if packed else blk_parts.get(tuple(blk), cm.nparts(blk[0]))
        if dup:
            return wtiles[gi].ap((2, Mk), (wconsts[gi].shape[1], 1), blk_off[key], partitions=np_)
        # (lane_off: nk = lane_off + Mk lanes, the block -- stored lane_off elements further on --
        # and the lane_off columns before it)
        return wtiles[gi].ap((nk,), (1,), blk_off[key], partitions=np_)

    def load_weights(gi):
        if kept is not None and kept[1]:
            return kept[0]  # loaded by an earlier call: nothing to move
        t = wpool.next() if kept is None else kept[0]
        a = wconsts[gi]
        if diag_blocks:  # the diagonals in, then one op per block, W_b = I * d_b (d_b: a
            # per-partition scalar), on GpSimd: Vector or Scalar would put the builds between the
            # previous kernel's evacuations in their in-order streams (notes/planner.md, session 8)
            dt_ = em.sbuf_tile(Mk, diag_blocks * it, cdt, "conv_wdiag")
            em.dma_split(dt_.ap((diag_blocks,), partitions=Mk), wvals[gi].flat_ap(0, Mk, diag_blocks, (diag_blocks,), (1,)),
                         **weight_split(em, prefetch))
            eye = em.identity(Mk, cdt, "conv_eye")
            for b in range(diag_blocks):
                d = dt_.ap((1,), elem_offset=b, partitions=Mk)
                dst = t.ap((Mk,), (1,), b * Mk, partitions=Mk)
                em.ts(dst, eye.ap((Mk,), partitions=Mk), op0="multiply", operand0=d, stream="gpsimd")
            em.free(dt_, eye)
            return t
        if lane_off:
            em.memset(t.ap((lane_off,), partitions=a.shape[0]), 0.0)
        em.dma_split(t.ap((a.shape[1],), elem_offset=lane_off, partitions=a.shape[0]),
                     wvals[gi].flat_ap(0, a.shape[0], a.shape[1], (a.shape[1],), (1,)),
                     **weight_split(em, prefetch))
        if dup:
            em.copy(t.ap((a.shape[1],), elem_offset=a.shape[1], partitions=a.shape[0]),
                    t.ap((a.shape[1],), partitions=a.shape[0]), stream="gpsimd")
        if wsval is not None:  # the single (unpaired) taps after the pairs, on lanes 0..C
            n1 = wsingle.shape[1]
            em.dma_split(t.ap((n1,), elem_offset=a.shape[1] + lane_off, partitions=C),
                         wsval.flat_ap(0, C, n1, (n1,), (1,)),
                         **weight_split(em, prefetch))
        return t

    def resident_off(v, n, jk, nk, pix):
        """Element offset in ``v``'s resident tile of output-channel tile jk, pixel pix, image n
        (the offset of the AP a store DMA would have written)."""
        return _rel(v.sbuf, v.flat_ap(n * K * OH * OW + jk * OH * OW + pix, nk, KT * OH * OW, (1,), (1,))
                    if km.blocked else v.chan_ap(n, jk * P, nk, pix, (1,), (1,)))

    def rows_ap(t, off, nr, nw, nk):
        """nr whole output rows (or nw pixels of one row) of tile ``t`` from element ``off``."""
        return t.ap((nr, nw), (OW, 1), off, partitions=nk) if nr > 1 else t.ap((nw,), (1,), off, partitions=nk)

    bands = [(n, oh0, min(bo, OH - oh0)) for n in range(N) for oh0 in range(0, OH, bo)]
    weights_once = G == 1
    # loop order when the weights stream in K groups (see band blocks above): band-outer, band
    # blocks, or group-outer (input x groups; nothing for an SBUF-resident input): the fewest bytes
    k_outer = blockm is not None or (not weights_once and wbufs == 1)
    if not weights_once and len(bands) > 1 and blockm is None and wbufs == 2:
        k_outer = w_total + x_total * G < w_total * len(bands) + x_total
    em.note(loop_order=f"band_blocks_of_{blockm}" if blockm else "k_groups_outer" if k_outer else "bands_outer")
    if blockm:
        steps = [(gi, bi) for b0 in range(0, len(bands), blockm) for gi in range(G)
                 for bi in range(b0, min(b0 + blockm, len(bands)))]
    elif k_outer:
        steps = [(gi, bi) for gi in range(G) for bi in range(len(bands))]
    else:
        steps = [(gi, bi) for bi in range(len(bands)) for gi in range(G)]
    wtiles = {}
    wcur, wnext = None, None
    if weights_once:
        wtiles[0] = load_weights(0)
    elif wbufs == 2:
        wnext = load_weights(steps[0][0])
    nxt = load_band(*bands[steps[0][1]])
    cache = {steps[0][1]: nxt}  # band blocks: the loaded input bands of the current block
    cur_band, mov, ot, rt = None, None, None, None
    for si, (gi, bi_) in enumerate(steps):
        n, oh0, nbo = bands[bi_]
        grp = kgroups[gi]
        if bi_ != cur_band:
            mov, cur_band = (cache[bi_] if blockm else nxt), bi_
            if res_hbm:  # the band of the shortcut, laid out like the output band
                rt = res_pool.next()
                _band_dma(em, residual, rt, km, n, 0, KT, oh0, nbo, bo, OW, OH, P, load=True)
            if not k_outer:
                ot = None if res_out else out_pool.next()
        if k_outer:
            ot = None if res_out else out_pool.next()
        if not weights_once and gi != wcur and wbufs == 1:
            # one buffer (group-outer): the group loads when the previous one is done with it
            wtiles[gi], wcur = load_weights(gi), gi
        elif not weights_once and gi != wcur:
            # K groups stream through two buffers: the group used now was loaded one group
            # ahead; prefetch the next different group of the step order
            wtiles[gi], wcur = wnext, gi
            nxt_g = next((g2 for g2, _ in steps[si + 1:] if g2 != gi), None)
            wnext = load_weights(nxt_g) if nxt_g is not None else None
        last_of_band = si + 1 == len(steps) or steps[si + 1][1] != bi_
        if blockm:  # load each band of a block once, one step ahead (the block's first group)
            if si + 1 < len(steps) and steps[si + 1][1] not in cache:
                b2 = steps[si + 1][1]
                cache = {k: v for k, v in cache.items() if k // blockm == b2 // blockm}
                cache[b2] = load_band(*bands[b2])
        elif last_of_band and si + 1 < len(steps):
            nxt = load_band(*bands[steps[si + 1][1]])  # prefetch the next band before our stores
        stores_now = nbo * OW * it >= 2048 and KT > 1 and not res_out
        for jk in grp:
            nk = Mk if km.blocked or KT == 1 else min(P, K - jk * P)
            blks = blocks_by_jk[jk]
            for (t0, nr, ow0, nw) in pix_blocks(nbo):
                ps = psum_pool.next()
                nkm = (2 * nk if dup else nk) + lane_off
                dst = ps.ap((nr * nw,), partitions=nkm)
                # row taps: blocks (q, s) clip columns only (the stage holds the padding rows)
                mms = _clipped(blks, ps, nkm, 0, t0, nr, ow0, nw, (0, full_cols[0]), 1, S, 1, sw, 0, pl,
                               1 << 30, W) if rowtap else \
                    [(blk, dst, t0, nr, ow0, nw) for blk in blks] if not clip else \
                    _clipped(blks, ps, nkm, oh0, t0, nr, ow0, nw, full_tap, R, S, sh, sw, pt, pl, H, W)
                for bi2, (blk, d_ap, a0, na, b0, nb_) in enumerate(mms):
                    em.matmul(d_ap, stat(gi, blk, jk, nkm), mov(blk, a0, na, b0, nb_),
                              start=bi2 == 0, stop=bi2 == len(mms) - 1 and residual is None)
                if dup:
                    dst = ps.ap((nr * nw,), partitions=nk)
                elif lane_off:
                    dst = ps.ap((nr * nw,), partitions=nk, start=lane_off)
                o_off = jk * bo * OW + t0 * OW + ow0  # in a band tile laid out like the output band
                pix = (oh0 + t0) * OW + ow0
                if residual is not None:  # PSUM += I @ shortcut
                    r_ap = rows_ap(rt, o_off, nr, nw, nk) if res_hbm else \
                        rows_ap(residual.sbuf, resident_off(residual, n, jk, nk, pix), nr, nw, nk)
                    em.matmul(dst, ident.ap((nk,), (1,), 0, partitions=nk), r_ap, start=False, stop=True)
                sc, bb = epi(jk, nk, lane_off)
                # evacuate PSUM into the band tile, or straight into the resident output
                dst_o = rows_ap(out.sbuf, resident_off(out, n, jk, nk, pix), nr, nw, nk) if res_out else \
                    rows_ap(ot, o_off, nr, nw, nk)
                em.act(dst_o, dst, func=func, scale=sc, bias=bb)
                if dup:  # the second lane block: rows past the shift, then the halo rows before it
                    shift, halo = lane_dup[:2]
                    a, b_ = oh0 + t0, oh0 + t0 + nr
                    h0 = max(a, shift - halo)
                    for r0, r1, local in ((max(a, shift), b_, max(a, shift) - shift),
                                          (h0, min(b_, shift), OH - shift + h0 - (shift - halo))):
                        if r1 > r0:
                            sc2, bb2 = epi(jk, nk, start=nk)
                            em.act(wide_o.ap(((r1 - r0) * nw,), (1,), local * OW, partitions=nk, start=nk),
                                   ps.ap(((r1 - r0) * nw,), (1,), (r0 - a) * nw, partitions=nk, start=nk),
                                   func=func, scale=sc2, bias=bb2)
            if stores_now:
                _band_dma(em, out, ot, km, n, jk, jk + 1, oh0, nbo, bo, OW, OH, P)
        if not stores_now and not res_out:
            if k_outer:  # this group's output planes of the band
                _band_dma(em, out, ot, km, n, grp[0], grp[-1] + 1, oh0, nbo, bo, OW, OH, P)
            elif last_of_band:
                _band_dma(em, out, ot, km, n, 0, KT, oh0, nbo, bo, OW, OH, P)
    # release
    if wpool is not None:
        wpool.release()
    if out_pool is not None:
        out_pool.release()
    if res_pool is not None:
        res_pool.release()
    if ident is not None:
        em.free(ident)
    psum_pool.release()
    if packed:
        for p in in_pools:
            p.release()
    else:
        if in_pool is not None:
            in_pool.release()
        if pad_pool is not None:
            pad_pool.release()
    if own_cols:
        em.free(cols)
    if stage is not None:
        em.free(stage)


def _k_group_size(g2, KT, per_kt, free, xshape, oshape, taps, stride, it, res_in, res_out, padded, pw,
                  max_moving=512, P=128):
    """(K-tiles per group, weight buffers) for a conv whose weights stream in K groups.

    ``g2`` K-tiles per group through two buffers is the default (the next group loads while the
    current one computes).  Read in the group-outer order, every group re-reads the whole input
    (``G = ceil(KT / g)`` passes), so larger groups through ONE buffer (the next group loads
    after the current one's last matmul: a stall per group, G - 1 in all) can move far fewer
    bytes: VGG-19's 512-channel 3x3 convs at fp32 on inf1 (73 KB of weights per partition, 64
    KiB partitions) pass their input 4 times with one K-tile per group, twice with two.
    Estimated bytes per choice: weights once + input passes (each pass with its bands' halo
    rows), or for two buffers also the band-outer order (weights per band, input once) and band
    blocks.  A choice whose bands hold fewer pixels than the default's is not taken: ResNet-50's
    7x7 1x1 convs at batch 8 would go from whole-image to one-row bands, 7-column matmuls."""
    N, C, H, W = xshape
    K, OH, OW = oshape
    R, S = taps
    sh = stride[0]
    CT = -(-C // P)
    w_total = KT * per_kt * P

    def passes(f):
        """(input bytes of one pass over all bands, bands, bands a block holds) with band rows
        fitting ``f`` (a block: the inputs of m bands stay while every group runs over them)."""
        def band_in(bo):
            rows = (bo - 1) * sh + R
            return (0 if res_in else CT * rows * W * it) + (CT * rows * (W + pw) * it if padded else 0)

        def band(bo):
            return band_in(bo) + (0 if res_out else KT * bo * OW * it)
        if 2 * band(1) > 0.9 * f:
            return None
        bo = OH
        while bo > 1 and 2 * band(bo) > 0.9 * f:
            bo = -(-bo // 2)
        nb = -(-OH // bo)
        rows = min(H, nb * ((bo - 1) * sh + R))
        ib, rest = band_in(bo), band(bo) - band_in(bo)
        m = max([k for k in range(2, N * nb + 1) if (k + (k < N * nb)) * ib + 2 * rest <= 0.9 * f] or [1])
        return (0 if res_in else N * C * rows * W * it), N * nb, m, bo

    best, px0 = None, None
    for g, bufs in [(g2, 2)] + [(g, 1) for g in range(g2 + 1, KT)]:
        got = passes(free - bufs * g * per_kt)
        if got is None:
            continue
        x1, nb, m, bo = got
        # bigger groups leave less room for the bands: not at the price of shorter matmuls (a
        # band's pixels are a matmul's moving columns, up to max_moving_free)
        px = min(bo * OW, max_moving)
        if px0 is None:
            px0 = px
        elif px < px0:
            continue
        G = -(-KT // g)
        cost = w_total + x1 * G
        if bufs == 2:
            cost = min(cost, w_total * nb + x1, w_total * -(-nb // m) + x1)
        if best is None or cost < best[0]:
            best = (cost, g, bufs)
    return (g2, 2) if best is None else (best[1], best[2])


def _clipped(blks, ps, nk, oh0, t0, nr, ow0, nw, full_tap, R, S, sh, sw, pt, pl, H, W):
    """Matmuls of one PSUM block [nr rows x nw columns] with clipped taps: for each contraction
    block (input tile j, tap t = r*S + s) the sub-rectangle of output pixels whose input pixel
    (row (oh0+t')*sh + r - pt, column ow*sw + s - pl) lies inside the H x W input; taps that
    reach no pixel are dropped.  A block of the tap valid everywhere comes first (it opens the
    accumulation group over the whole block)."""
    out = []
    first = None
    for blk in blks:
        j, t = blk
        r, q = divmod(t % (R * S), S)  # a row pair (t >= R*S) is valid where its first tap is
        lo_t = max(t0, -(-(pt - r - oh0 * sh) // sh))
        hi_t = min(t0 + nr, (H - 1 + pt - r - oh0 * sh) // sh + 1)
        lo_w = max(ow0, -(-(pl - q) // sw))
        hi_w = min(ow0 + nw, (W - 1 + pl - q) // sw + 1)
        if hi_t <= lo_t or hi_w <= lo_w:
            continue
        na, nb = hi_t - lo_t, hi_w - lo_w
        if (na, nb) == (nr, nw):
            d_ap = ps.ap((nr * nw,), partitions=nk)
        elif na == 1:
            d_ap = ps.ap((nb,), (1,), (lo_t - t0) * nw + (lo_w - ow0), partitions=nk)
        else:
            d_ap = ps.ap((na, nb), (nw, 1), (lo_t - t0) * nw + (lo_w - ow0), partitions=nk)
        item = (blk, d_ap, lo_t, na, lo_w, nb)
        if first is None and (r, q) == full_tap:
            first = item
        else:
            out.append(item)
    if first is None:
        raise CodegenError("conv2d clipped taps: no contraction block covers the whole PSUM block")
    return [first] + out


def _start_ok(p0: int, n: int) -> bool:
    """The engines' partition start rule for an n-partition access starting at p0."""
    return p0 == 0 if n > 64 else (p0 in (0, 64) if n > 32 else p0 in (0, 32, 64, 96))


def _rel(tile, ap) -> int:
    """Element offset of ``ap`` inside the resident ``tile`` (it must start on its first partition)."""
    if ap.start_partition != tile.start_partition:
        raise CodegenError(f"resident {tile.name}: access starts on partition {ap.start_partition}, "
                           f"the kernel needs {tile.start_partition}")
    return (ap.offset - tile.offset) // tile.itemsize


def _band_dma(em, v, t, km, n, j0, j1, oh0, nbo, bo, OW, OH, P, load=False):
    """Output-channel tiles [j0, j1) of rows [oh0, oh0+nbo) of image n: band tile ``t`` -> ``v``
    (a store), or ``v`` -> ``t`` when ``load`` (a tensor laid out like the output band)."""
    K = km.C
    pairs = []
    if km.blocked:
        pairs.append((v.flat_ap(n * K * OH * OW + oh0 * OW + j0 * OH * OW, km.parts, km.T * OH * OW,
                                (j1 - j0, nbo * OW), (OH * OW, 1)),
                      t.ap((j1 - j0, nbo * OW), (bo * OW, 1), j0 * bo * OW)))
    else:
        for jk in range(j0, j1):
            nk = km.nparts(jk)
            pairs.append((v.chan_ap(n, jk * P, nk, oh0 * OW, (nbo * OW,), (1,)),
                          t.ap((nbo * OW,), (1,), jk * bo * OW, partitions=nk)))
    for hbm_ap, band_ap in pairs:
        if load:
            em.dma_split(band_ap, hbm_ap)
        else:
            em.dma_split(hbm_ap, band_ap)
