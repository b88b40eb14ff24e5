"""Convolution as Tensor-engine matmul sequences (for the fidelity script and tests).

``conv_program(C, H, W, K, R, S, stride, pad, mode)`` builds a complete, race-free Program for one
convolution (batch 1, K <= 128 output channels) plus its input tensors and the NumPy reference:

* ``mode="im2col"``: the host packs (c, r, s) onto rows (the ResNet stem trick for few input
  channels); the CRS rows are split into chunks of <= 128 partitions and each chunk is one
  accumulating matmul per pixel tile.
* ``mode="taps"``: the padded input stays resident in SBUF ([C, Hp*Wp]); one matmul per kernel tap
  (r, s), whose moving operand is the shifted (strided) window of the input -- K = C partitions.
* ``mode="packed_taps"`` (C <= 64): two taps per matmul: partitions 0..C-1 hold the input,
  partitions C..2C-1 a copy shifted by the second tap's offset, so one 2C-row matmul covers both.

Pixel tiles are whole output rows, ``floor(512 / OW)`` rows each (N <= 512), accumulated in a
rotating PSUM bank, evacuated by the Scalar engine (identity) into SBUF and stored at the end.
"""
from __future__ import annotations

import numpy as np

from .isa import Activation, DmaCopy, HbmTensor, MatMul, Program, Wait, hbm_ap, psum_ap, sbuf_ap


def _bf16(x):
    import ml_dtypes
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def conv_reference(x, w, stride, pad):
    """x [C, H, W], w [K, C, R, S] -> [K, OH*OW] (float64 accumulate)."""
    C, H, W = x.shape
    K, _, R, S = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    OH = (H + 2 * pad - R) // stride + 1
    OW = (W + 2 * pad - S) // stride + 1
    cols = np.empty((C, R, S, OH, OW))
    for r in range(R):
        for s in range(S):
            cols[:, r, s] = xp[:, r:r + stride * OH:stride, s:s + stride * OW:stride]
    return (w.reshape(K, -1).astype(np.float64) @ cols.reshape(C * R * S, -1)).astype(np.float32)


def conv_program(C, H, W, K, R, S, stride=1, pad=0, mode="taps", seed=0, name=None):
    """Returns (program, tensors, reference [K, OH*OW])."""
    assert K <= 128
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, R, S)) / np.sqrt(C * R * S)).astype(np.float32)
    ref = conv_reference(_bf16(x), _bf16(w), stride, pad)
    OH = (H + 2 * pad - R) // stride + 1
    OW = (W + 2 * pad - S) // stride + 1
    Hp, Wp = H + 2 * pad, W + 2 * pad
    rows_per_tile = max(1, 512 // OW)
    tiles = [(r0, min(rows_per_tile, OH - r0)) for r0 in range(0, OH, rows_per_tile)]
    npix = OH * OW
    hbm, tensors = [], {}
    off = 0

    def tensor(nm, shape, dtype, kind, value=None):
        nonlocal off
        t = HbmTensor(nm, off, tuple(shape), dtype, kind)
        off += -(-t.nbytes // 64) * 64
        hbm.append(t)
        if value is not None:
            tensors[nm] = value
        return t

    loads, mm = [], []  # dma0 loads, tensor matmuls
    sb = 0  # SBUF bytes per partition used so far

    def alloc(nbytes):
        nonlocal sb
        a = sb
        sb += -(-nbytes // 64) * 64
        return a

    # ------------------------------------------------------------ operands per mode
    groups = []  # per matmul group: list of (stationary AP, moving AP(tile) function)
    if mode == "im2col":
        crs = C * R * S
        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        cols = np.empty((C, R, S, OH, OW), np.float32)
        for r in range(R):
            for s in range(S):
                cols[:, r, s] = xp[:, r:r + stride * OH:stride, s:s + stride * OW:stride]
        cols = cols.reshape(crs, npix)
        wm = w.reshape(K, crs).T.copy()  # [crs, K]
        tc = tensor("cols", (crs, npix), "bf16", "input", cols)
        tw = tensor("w", (crs, K), "bf16", "weight", wm)
        for k0 in range(0, crs, 128):
            kk = min(128, crs - k0)
            mb = alloc(npix * 2)
            wb = alloc(K * 2)
            loads.append(DmaCopy(sbuf_ap(0, kk, mb, (npix,), "bf16"),
                                 hbm_ap(tc.offset + k0 * npix * 2, kk, npix, (npix,), "bf16")))
            loads.append(DmaCopy(sbuf_ap(0, kk, wb, (K,), "bf16"), hbm_ap(tw.offset + k0 * K * 2, kk, K, (K,), "bf16")))
            groups.append((sbuf_ap(0, kk, wb, (K,), "bf16"),
                           (lambda kk, mb: lambda r0, nr: sbuf_ap(0, kk, mb + r0 * OW * 2, (nr * OW,), "bf16"))(kk, mb)))
    elif mode in ("taps", "packed_taps"):
        assert C <= 128 and (mode == "taps" or 2 * C <= 128)
        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad))).reshape(C, Hp * Wp)
        tx = tensor("x_pad", (C, Hp * Wp), "bf16", "input", xp)
        wt = np.transpose(w, (1, 2, 3, 0)).reshape(C, R * S * K)  # w[c, tap, k]
        tw = tensor("w", (C, R * S * K), "bf16", "weight", wt)
        delta = [r * Wp + s for r in range(R) for s in range(S)]
        win = lambda base, t, parts, p0=0: (lambda r0, nr: sbuf_ap(
            p0, parts, base + 2 * (r0 * stride * Wp + delta[t]), (nr, OW), "bf16", strides=(stride * Wp, stride)))
        if mode == "taps":
            xb = alloc(Hp * Wp * 2)
            wb = alloc(R * S * K * 2)
            loads.append(DmaCopy(sbuf_ap(0, C, xb, (Hp * Wp,), "bf16"), hbm_ap(tx.offset, C, Hp * Wp, (Hp * Wp,), "bf16")))
            loads.append(DmaCopy(sbuf_ap(0, C, wb, (R * S * K,), "bf16"),
                                 hbm_ap(tw.offset, C, R * S * K, (R * S * K,), "bf16")))
            for t in range(R * S):
                groups.append((sbuf_ap(0, C, wb + t * K * 2, (K,), "bf16"), win(xb, t, C)))
        else:
            regions = {}  # shift -> SBUF offset of [x | x shifted by `shift`] on 2C partitions
            wb = alloc(R * S * K * 2)
            ntap = R * S
            for t0 in range(0, ntap, 2):
                pair = t0 + 1 < ntap
                shift = delta[t0 + 1] - delta[t0] if pair else 0
                if shift not in regions:
                    base = regions[shift] = alloc(Hp * Wp * 2)
                    loads.append(DmaCopy(sbuf_ap(0, C, base, (Hp * Wp,), "bf16"),
                                         hbm_ap(tx.offset, C, Hp * Wp, (Hp * Wp,), "bf16")))
                    if pair:
                        n = Hp * Wp - shift
                        loads.append(DmaCopy(sbuf_ap(C, C, base, (n,), "bf16"),
                                             hbm_ap(tx.offset + 2 * shift, C, Hp * Wp, (n,), "bf16")))
                base = regions[shift]
                # stationary: rows 0..C-1 tap t0, rows C..2C-1 tap t0+1
                loads.append(DmaCopy(sbuf_ap(0, C, wb + t0 * K * 2, (K,), "bf16"),
                                     hbm_ap(tw.offset + t0 * K * 2, C, R * S * K, (K,), "bf16")))
                if pair:
                    loads.append(DmaCopy(sbuf_ap(C, C, wb + t0 * K * 2, (K,), "bf16"),
                                         hbm_ap(tw.offset + (t0 + 1) * K * 2, C, R * S * K, (K,), "bf16")))
                parts = 2 * C if pair else C
                groups.append((sbuf_ap(0, parts, wb + t0 * K * 2, (K,), "bf16"), win(base, t0, parts)))
    else:
        raise ValueError(f"unknown conv mode {mode!r}")
    ty = tensor("y", (K, npix), "fp32", "output")
    ob = alloc(npix * 4)
    loads[-1] = DmaCopy(loads[-1].dst, loads[-1].src, signals=("in",))
    nload = len(loads)
    # every load signals "in" (one stream, so waiting for all of them is exact)
    loads = [DmaCopy(l.dst, l.src, signals=("in",), tag="load") for l in loads]
    acts = []
    for j, (r0, nr) in enumerate(tiles):
        n = nr * OW
        bank = psum_ap(0, K, (j % 8) * 2048, (n,))
        for g, (st, mv) in enumerate(groups):
            waits = ()
            if g == 0:
                waits = (Wait("in", nload),) + ((Wait("act", j - 7),) if j >= 8 else ())
            mm.append(MatMul(bank, st, mv(r0, nr), start=(g == 0), stop=(g == len(groups) - 1), waits=waits,
                             signals=("mm",) if g == len(groups) - 1 else (), tag="conv"))
        acts.append(Activation(sbuf_ap(0, K, ob + r0 * OW * 4, (n,)), bank, waits=(Wait("mm", j + 1),),
                               signals=("act",), tag="evac"))
    store = DmaCopy(hbm_ap(ty.offset, K, npix, (npix,)), sbuf_ap(0, K, ob, (npix,)),
                    waits=(Wait("act", len(tiles)),), tag="store")
    prog = Program(tuple(hbm), (("dma0", tuple(loads)), ("tensor", tuple(mm)), ("scalar", tuple(acts)),
                                ("dma1", (store,))), name=name or f"conv_{mode}")
    return prog, tensors, ref
