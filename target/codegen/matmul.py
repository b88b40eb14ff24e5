"""matmul / dense / Gemm on the Tensor engine: out[M, N] = A[M, Kd] @ B[Kd, N] (+ bias[N]) (relu).

* Contraction Kd on partitions with the conv's *blocked* mapping k = p*KT + j (``ChanMap``: KT =
  Kd/128 planes, or fewer partitions when that divides, 544 = 68 x 8), so B (natural row-major
  [Kd, N]) loads as ONE DMA with KT*N contiguous elements per partition (no compile-time
  re-layout needed), else cyclic tiles.
* stationary = A^T plane j [k, m<=128]: an SBUF-resident single row of A (a global pool's output)
  is used in place (its row-split layout is exactly A^T); else by a strided DMA when M is small
  (<= 16 rows), else loaded row-major (long runs) and transposed on the Tensor engine.
* moving = B plane j [k, n<=512]; all KT planes accumulate into one PSUM bank.
* Epilogue: bias along the free axis is a Vector add reading PSUM against a bias tile
  replicated over the M partitions (one DMA with partition stride 0); ReLU on the Scalar engine
  (or directly as the PSUM evacuation when there is no bias).
* B is split into column chunks when it does not fit SBUF (double-buffered).  A compile-time
  constant B is then re-laid out as ``[chunk][partition][plane][column]`` so that every chunk is
  one DMA with KT*NC contiguous elements per partition (in natural order a chunk row is only
  NC elements, e.g. 128 B for VGG's fc6: 1/8 of the DMA efficiency).
"""
from __future__ import annotations

import numpy as np

from target import isa
from .conv import ChanMap
from .options import weight_split
from .emitter import CodegenError, Emitter
from .values import Value, prod

SMALL_M = 16


def matmul(em: Emitter, a: Value, b: Value, out: Value, bias: Value = None, func: str = "identity",
           cdt: str = "fp32", prefetch: bool = False, b_value=None, const=None):
    """``b_value`` (numpy [Kd, N]) and ``const(name, array, dtype) -> Value``: B is a compile-time
    constant that may be re-laid out per column chunk (see the module docstring)."""
    if len(b.shape) != 2:
        raise CodegenError(f"matmul with batched right operand {b.shape} is not supported")
    Kd, N = b.shape
    M = prod(a.shape[:-1])
    if a.shape[-1] != Kd or prod(out.shape) != M * N:
        raise CodegenError(f"matmul shapes {a.shape} @ {b.shape} -> {out.shape}")
    P = em.partitions
    it = isa.DTYPES[cdt]
    km = ChanMap(Kd, P)  # the conv's channel mapping (also over fewer partitions: 544 = 68 x 8)
    blocked, KT, parts = km.blocked, km.T, km.parts

    def kparts(j):
        return parts if blocked or KT == 1 else min(P, Kd - j * P)

    # ---- B column chunks
    maxn = em.max_moving_free
    # B (all column chunks) gets at most half of the free SBUF; A^T, bias and outputs the rest
    budget = em.sbuf.largest_free() // 2
    NC = N
    while NC > 1 and KT * NC * it * (1 if NC == N else 2) > budget:
        NC = -(-NC // 2)
    if KT * NC * it * (1 if NC == N else 2) > budget:
        raise CodegenError(f"matmul: B [{Kd}, {N}] chunk does not fit SBUF")
    nchunks = -(-N // NC)
    # A^T by DMA for a few rows; a cyclic contraction map (Kd not a multiple of its planes) has
    # no run longer than one element per partition that way, so it takes the transpose path
    small = M <= SMALL_M and (blocked or KT == 1)
    em.note(k_tiles=KT, k_blocked=blocked, n_chunk=NC, n_chunks=nchunks, m_tiles=-(-M // P),
            a_transpose=("resident" if a.sbuf is not None and M == 1 else "dma" if small else "tensor"))
    bpool = em.pool("sbuf", parts, KT * NC * it, cdt, 2 if nchunks > 1 else 1, "mm_b")
    chunked = None
    if nchunks > 1 and b_value is not None and const is not None:
        bv = np.asarray(b_value, np.float32).reshape(Kd, N)
        if blocked:  # k = p*KT + j
            A = bv.reshape(parts, KT, N)
        else:  # k = j*P + p, zero rows past Kd
            A = np.zeros((KT * parts, N), np.float32)
            A[:Kd] = bv
            A = A.reshape(KT, parts, N).transpose(1, 0, 2)
        Ap = np.zeros((parts, KT, nchunks * NC), np.float32)
        Ap[:, :, :N] = A
        arr = Ap.reshape(parts, KT, nchunks, NC).transpose(2, 0, 1, 3)  # [chunk][partition][plane][col]
        chunked = const(f"{em.tag.split(':')[0]}/b_chunks", arr.reshape(nchunks * parts, KT * NC), cdt)

    def load_b(c):
        n0, nn = c * NC, min(NC, N - c * NC)
        t = bpool.next()
        if chunked is not None:  # chunk c: rows [c*parts, (c+1)*parts), KT*NC contiguous each
            em.dma_split(t.ap((KT * NC,)), chunked.flat_ap(c * parts * KT * NC, parts, KT * NC, (KT * NC,), (1,)),
                         **weight_split(em, prefetch))
        elif blocked or KT == 1:
            em.dma_split(t.ap((KT, nn), (NC, 1)), b.flat_ap(n0, parts, KT * N, (KT, nn), (N, 1)),
                         **weight_split(em, prefetch))
        else:
            for j in range(KT):
                em.dma_split(t.ap((nn,), (1,), j * NC, partitions=kparts(j)),
                             b.flat_ap(j * P * N + n0, kparts(j), N, (nn,), (1,)))
        return t

    # ---- A^T for every M tile (kept for all column chunks)
    MT = -(-M // P)
    at_tiles = []
    # an SBUF-resident A row (M = 1, e.g. a global pool's output feeding the classifier) already
    # is A^T in the row-split layout: channel p*KT + j on partition p at element j = [j][m]
    in_place = a.sbuf is not None and a.base is None and M == 1 and a.images == 1 and \
        (blocked or KT == 1) and a.sbuf.partitions == parts and a.dtype == cdt
    for mt in range(MT):
        m0, nm = mt * P, min(P, M - mt * P)
        if in_place:
            at_tiles.append((m0, nm, a.sbuf))
            continue
        at = em.sbuf_tile(parts, KT * nm * it, cdt, "mm_at")  # layout [j][m]
        if small:
            # A^T directly: partition p <- A[m, p*KT + j] (blocked) / A[m, j*P + p] (cyclic)
            if blocked and KT > 1 and nm > 1:
                # rows first: partition p gets A[m, p*KT : (p+1)*KT] for every m ([m][j], runs of
                # KT elements on both sides, split over the queues), then one on-chip copy puts
                # them in the [j][m] order the stationary reads.  Written [j][m] by the DMA
                # itself, every element would be its own DMA row (2-4 B runs: AlexNet's fc6 at
                # batch 8 took 4.4 ms on one queue for 147 KB)
                raw = em.sbuf_tile(parts, nm * KT * it, cdt, "mm_araw")
                em.dma_split(raw.ap((nm, KT), (KT, 1)), a.flat_ap(m0 * Kd, parts, KT, (nm, KT), (Kd, 1)))
                em.copy(at.ap((KT, nm), (nm, 1)), raw.ap((KT, nm), (1, KT)))
                em.free(raw)
            elif blocked or KT == 1:
                em.dma(at.ap((nm, KT), (1, nm)), a.flat_ap(m0 * Kd, parts, KT, (nm, KT), (Kd, 1)))
            else:
                for j in range(KT):
                    em.dma(at.ap((nm,), (1,), j * nm, partitions=kparts(j)),
                           a.flat_ap(m0 * Kd + j * P, kparts(j), 1, (nm,), (Kd,)))
        else:
            ar = em.sbuf_tile(nm, Kd * it, cdt, "mm_a")
            em.dma_split(ar.ap((Kd,), partitions=nm), a.flat_ap(m0 * Kd, nm, Kd, (Kd,), (1,)))
            tp = em.pool("psum", P, None, "fp32", 2, "mm_tp")
            for j in range(KT):
                kp = kparts(j)
                ps = tp.next()
                src = ar.ap((kp,), (KT,), j, partitions=nm) if blocked else ar.ap((kp,), (1,), j * P, partitions=nm)
                dst = ps.ap((nm,), partitions=kp)
                em.emit("tensor", isa.Transpose, dst=dst, src=src)
                em.copy(at.ap((nm,), (1,), j * nm, partitions=kp), dst, stream="vector")
            tp.release()
            em.free(ar)
        at_tiles.append((m0, nm, at))

    # ---- bias replicated over M partitions
    brep = None
    if bias is not None:
        mrows = min(P, M)
        brep = em.sbuf_tile(mrows, N * 4, "fp32", "mm_bias")
        em.dma_split(brep.ap((N,), partitions=mrows), bias.flat_ap(0, mrows, 0, (N,), (1,)))

    opool = em.pool("sbuf", min(P, M), NC * it, cdt, 2, "mm_out")
    ppool = em.pool("psum", min(P, M), None, "fp32", min(4, em.psum_banks), "mm_ps")
    tbanks = min(2, em.psum.largest_free() // em.psum_bank_bytes)  # out^T accumulators
    bstat = tbanks > 0 and _b_stationary(em, M, KT, NC, len(ppool.tiles))
    em.note(stationary="B" if bstat else "A")
    tpool = tstage = None
    if bstat:  # out^T accumulators (one PSUM bank per group of 128-column blocks) and their SBUF copy
        tpool = em.pool("psum", P, None, "fp32", tbanks, "mm_tps")
        tstage = em.pool("sbuf", P, em.psum_bank_bytes, "fp32", 2, "mm_tsb")
    nxt = load_b(0)
    for c in range(nchunks):
        bt = nxt
        if c + 1 < nchunks:
            nxt = load_b(c + 1)
        n0, nn = c * NC, min(NC, N - c * NC)
        for (m0, nm, at) in at_tiles:
            ot = opool.next()
            blocks = [(nb0, min(maxn, nn - nb0)) for nb0 in range(0, nn, maxn)]
            # contraction planes outermost over all PSUM blocks of the chunk (one accumulation
            # group per bank): the Tensor engine follows B's planes as they arrive
            pss = [ppool.next().ap((nb,), partitions=nm) for _, nb in blocks] if len(blocks) <= len(ppool.tiles) else None
            if bstat:
                _b_stationary_blocks(em, at, bt, nm, nn, NC, KT, kparts, pss, tpool, tstage)
            elif pss is not None:
                for j in range(KT):
                    kp = kparts(j)
                    for (nb0, nb), ps in zip(blocks, pss):
                        em.matmul(ps, at.ap((nm,), (1,), j * nm, partitions=kp),
                                  bt.ap((nb,), (1,), j * NC + nb0, partitions=kp),
                                  start=j == 0, stop=j == KT - 1)
            for bi, (nb0, nb) in enumerate(blocks):
                if pss is not None:
                    ps = pss[bi]
                else:
                    ps = ppool.next().ap((nb,), partitions=nm)
                    for j in range(KT):
                        kp = kparts(j)
                        em.matmul(ps, at.ap((nm,), (1,), j * nm, partitions=kp),
                                  bt.ap((nb,), (1,), j * NC + nb0, partitions=kp),
                                  start=j == 0, stop=j == KT - 1)
                o = ot.ap((nb,), (1,), nb0, partitions=nm)
                if brep is not None:
                    em.tt(o, ps, brep.ap((nb,), (1,), n0 + nb0, partitions=nm), op="add")
                    if func != "identity":
                        em.act(o, o, func=func)
                else:
                    em.act(o, ps, func=func)
            em.dma_split(out.flat_ap(m0 * N + n0, nm, N, (nn,), (1,)), ot.ap((nn,), partitions=nm))
    opool.release()
    ppool.release()
    if bstat:
        tstage.release()
        tpool.release()
    bpool.release()
    for _, _, at in at_tiles:
        if not in_place:
            em.free(at)
    if brep is not None:
        em.free(brep)


def _b_stationary(em: Emitter, M: int, KT: int, NC: int, banks: int) -> bool:
    """Whether B is the stationary operand (see :func:`_b_stationary_blocks`): one M tile of at most
    64 rows, the chunk's PSUM blocks all held at once, and fewer estimated Tensor-engine cycles.

    A stationary (today's default): a matmul per 512-column block costs its N moving columns, so
    a plane of B costs N cycles whatever M is.  B stationary: a matmul per 128-column block costs
    max(64, M) (the stationary's load is hidden, NKI's cost formula), so a plane costs
    ceil(N/128) x 64 for M <= 64, plus one transpose per block to bring out^T back to rows.  For
    a classifier at batch 1 (1000 columns) that is 8 x 64 = 512 against 1000 cycles a plane."""
    if M > 64 or -(-NC // em.max_moving_free) > banks:
        return False
    pe = em.pe_cols
    nblk = -(-NC // pe)
    a_cost = KT * sum(max(min(64, M), min(em.max_moving_free, NC - b0)) for b0 in range(0, NC, em.max_moving_free))
    b_cost = KT * nblk * max(64, M) + nblk * max(pe, min(64, M))
    # + the out^T evacuation and two cross-engine handoffs (PSUM -> SBUF copy, transposes),
    # each ~the access overhead plus the copy, in Tensor-engine cycles
    cfg = em.config
    ghz = getattr(cfg, "tensor_ghz", 2.8)
    over = 3 * getattr(cfg, "access_overhead_cycles", 60) * ghz / getattr(cfg, "vector_ghz", 1.12) + \
        max(64, nblk * M) * ghz / getattr(cfg, "vector_ghz", 1.12)
    return b_cost + over < a_cost


def _b_stationary_blocks(em: Emitter, at, bt, nm: int, nn: int, NC: int, KT: int, kparts, pss, tpool, tstage):
    """out[m, n] of one B chunk into the PSUM blocks ``pss`` with B stationary: per 128-column
    block b, out^T[b] [128 n, nm m] accumulates over the KT planes (planes outermost: the Tensor
    engine follows B's planes as they arrive), is copied to SBUF (fp32) and transposed back into
    ``pss`` (rows m, columns n), where the row epilogue reads it as on the A-stationary path."""
    pe, maxn = em.pe_cols, em.max_moving_free
    per_bank = max(1, (em.psum_bank_bytes // 4) // nm)
    nblk = -(-nn // pe)
    for g0 in range(0, nblk, per_bank):
        grp = range(g0, min(nblk, g0 + per_bank))
        ps = tpool.next()
        for j in range(KT):
            kp = kparts(j)
            for b in grp:
                nb = min(pe, nn - b * pe)
                em.matmul(ps.ap((nm,), (1,), (b - g0) * nm, partitions=nb),
                          bt.ap((nb,), (1,), j * NC + b * pe, partitions=kp),
                          at.ap((nm,), (1,), j * nm, partitions=kp), start=j == 0, stop=j == KT - 1)
        sb = tstage.next()
        # evacuate out^T: the full 128-row blocks together, a last partial block on its own rows
        full = [b for b in grp if (b + 1) * pe <= nn]
        if full:
            w = len(full) * nm
            em.copy(sb.ap((w,), (1,), (full[0] - g0) * nm, partitions=pe), ps.ap((w,), (1,), (full[0] - g0) * nm, partitions=pe))
        for b in grp:
            if b not in full:
                nb = nn - b * pe
                em.copy(sb.ap((nm,), (1,), (b - g0) * nm, partitions=nb), ps.ap((nm,), (1,), (b - g0) * nm, partitions=nb))
        for b in grp:
            nb = min(pe, nn - b * pe)
            n0 = b * pe
            dst = pss[n0 // maxn]
            em.emit("tensor", isa.Transpose, dst=_cols(dst, n0 % maxn, nb, nm),
                    src=sb.ap((nm,), (1,), (b - g0) * nm, partitions=nb))


def _cols(ps, c0: int, n: int, rows: int):
    """Columns [c0, c0 + n) of PSUM block AP ``ps`` over its first ``rows`` partitions."""
    import dataclasses
    it = isa.DTYPES[ps.dtype]
    return dataclasses.replace(ps, offset=ps.offset + c0 * it, sizes=(n,), strides=(1,), num_partitions=rows)
