"""Simulator timing: DMA bytes/bandwidth + latency, efficiency curve, overlap, ports, overhead, stalls."""
import math

import numpy as np
import pytest

from target.config import load_config
from target.cost import dma_efficiency
from target.isa import (Activation, DmaCopy, HbmTensor, MatMul, Program, TensorCopy, TensorScalar, Wait,
                        hbm_ap, psum_ap, sbuf_ap)
from target.simulator import simulate

CFG = load_config("inf2")
TICK_US = 1e3 / CFG.tick_khz


def one_dma(rows, row_elems):
    t = HbmTensor("x", 0, (rows, row_elems), "fp32", "input")
    p = Program((t,), (("dma0", (DmaCopy(sbuf_ap(0, rows, 0, (row_elems,)), hbm_ap(0, rows, row_elems,
                                                                                    (row_elems,))),)),))
    return simulate(p, CFG, {"x": np.zeros((rows, row_elems), np.float32)})


def test_dma_time_is_latency_plus_bytes_over_bandwidth():
    res = one_dma(128, 1024)  # 4 KiB per partition: full efficiency
    nbytes = 128 * 1024 * 4
    expect_us = CFG.dma_latency_us + nbytes / (CFG.dma_queue_bandwidth_gbps * 1e9) * 1e6
    assert res.report.latency_us == pytest.approx(expect_us, abs=TICK_US)
    assert res.report.dma_active_time == pytest.approx(expect_us, abs=TICK_US)
    assert res.report.hbm_read_bytes == nbytes and res.report.dma_transfer_count == 1
    assert res.report.cycles == math.ceil(res.report.latency_us * 1e3 * CFG.report_clock_ghz - 1e-6)


def test_dma_efficiency_falls_below_2k_per_partition():
    res = one_dma(128, 64)  # 256 B per partition -> efficiency 0.25
    nbytes = 128 * 64 * 4
    assert dma_efficiency(256, CFG.dma_efficiency_curve) == 0.25
    expect_us = CFG.dma_latency_us + nbytes / (CFG.dma_queue_bandwidth_gbps * 1e9 * 0.25) * 1e6
    assert res.report.latency_us == pytest.approx(expect_us, abs=TICK_US)
    effs = [dma_efficiency(b, CFG.dma_efficiency_curve) for b in (64, 256, 1024, 2048, 4096, 65536)]
    assert effs == sorted(effs) and effs[3] < 1.0 and effs[4] == effs[5] == 1.0


def pipeline(n_tiles, double_buffer=True):
    """load x tile -> matmul with resident weight -> relu evacuation -> store."""
    K, M, N = 128, 128, 512
    w = HbmTensor("w", 0, (K, M), "bf16", "weight")
    x = HbmTensor("x", w.nbytes, (K, N * n_tiles), "bf16", "input")
    y = HbmTensor("y", w.nbytes + x.nbytes, (M, N * n_tiles), "fp32", "output")
    nb = 2 if double_buffer else 1
    W = sbuf_ap(0, K, 0, (M,), "bf16")
    xb = lambda i: sbuf_ap(0, K, 1024 + (i % nb) * 1024, (N,), "bf16")
    ob = lambda i: sbuf_ap(0, M, 8192 + (i % nb) * 2048, (N,))
    pb = lambda i: psum_ap(0, M, (i % nb) * 2048, (N,))
    # loads alternate over queues dma0/dma2, stores over dma1/dma3 (each queue is in order); one
    # semaphore per queue, so "tile i arrived" is exactly "its queue signalled i//2 + 1 times".
    lq, sq = (lambda i: "x%d" % (2 * (i % 2))), (lambda i: "st%d" % (1 + 2 * (i % 2)))
    ld, te, sc, st = [DmaCopy(W, hbm_ap(0, K, M, (M,), "bf16"), signals=("w",))], [], [], []
    for i in range(n_tiles):
        waits = (Wait("mm", i - nb + 1),) if i >= nb else ()
        ld.append(DmaCopy(xb(i), hbm_ap(x.offset + i * N * 2, K, N * n_tiles, (N,), "bf16"), waits=waits,
                          signals=(lq(i),)))
        tw = [Wait("w", 1), Wait(lq(i), i // 2 + 1)] + ([Wait("act", i - nb + 1)] if i >= nb else [])
        te.append(MatMul(pb(i), W, xb(i), waits=tuple(tw), signals=("mm",), tag="mm"))
        j = i - nb
        aw = [Wait("mm", i + 1)] + ([Wait(sq(j), j // 2 + 1)] if i >= nb else [])
        sc.append(Activation(ob(i), pb(i), func="relu", waits=tuple(aw), signals=("act",)))
        st.append(DmaCopy(hbm_ap(y.offset + i * N * 4, M, N * n_tiles, (N,)), ob(i), waits=(Wait("act", i + 1),),
                          signals=(sq(i),)))
    streams = (("dma0", tuple(ld[:1] + ld[1::2])), ("dma2", tuple(ld[2::2])), ("tensor", tuple(te)),
               ("scalar", tuple(sc)), ("dma1", tuple(st[0::2])), ("dma3", tuple(st[1::2])))
    prog = Program((w, x, y), streams)
    rng = np.random.default_rng(0)
    tens = {"w": rng.standard_normal((K, M)), "x": rng.standard_normal((K, N * n_tiles))}
    return simulate(prog, CFG, tens), tens


def test_double_buffering_overlaps_load_and_compute():
    res, tens = pipeline(8)
    tl = res.timeline
    serial_ticks = sum(done - start for _, _, start, _, done in tl)
    total_ticks = max(done for *_, done in tl)
    assert total_ticks < 0.6 * serial_ticks
    single, _ = pipeline(8, double_buffer=False)
    assert res.report.latency_us < 0.8 * single.report.latency_us
    import ml_dtypes
    bf = lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_allclose(res.outputs["y"], np.maximum(bf(tens["w"]).T @ bf(tens["x"]), 0), rtol=1e-4,
                               atol=1e-3)
    assert res.report.per_tag["mm"].macs == 8 * 128 * 128 * 512
    assert res.report.dma_stall_cycles > 0  # the tensor engine waits for the first loads


def _two_engine(e1, e2, mem_psum=False):
    src = sbuf_ap(0, 128, 0, (1024,))
    mk = lambda eng, off: TensorScalar(sbuf_ap(0, 128, off, (1024,)), src, op0="multiply", operand0=2.0,
                                       waits=(Wait("ld", 1),))
    p = Program((HbmTensor("x", 0, (128, 1024), "fp32", "input"),),
                (("dma0", (DmaCopy(src, hbm_ap(0, 128, 1024, (1024,)), signals=("ld",)),)),
                 (e1, (mk(e1, 8192),)), (e2, (mk(e2, 16384),))))
    res = simulate(p, CFG, {"x": np.ones((128, 1024), np.float32)})
    st = {p.streams[s][0]: (a, b) for s, _, a, b, _ in res.timeline}
    return st[e1], st[e2]


def test_port_conflict_vector_gpsimd_serialise_on_sbuf():
    (a0, a1), (b0, b1) = _two_engine("vector", "gpsimd")
    assert a1 <= b0 or b1 <= a0  # no overlap
    (a0, a1), (b0, b1) = _two_engine("vector", "scalar")  # SBUF only: no PSUM conflict
    assert a0 == b0


def test_engine_clock_and_fixed_overhead_on_cross_engine_dependency():
    res, _ = pipeline(1)
    tl = {(res.program.streams[s][0], i): (a, b, d) for s, i, a, b, d in res.timeline}
    mm_start, mm_end, mm_done = tl[("tensor", 0)]
    assert mm_end - mm_start == 512 * CFG.ticks_per_cycle("tensor")
    assert mm_done - mm_end == CFG.access_overhead_cycles * CFG.ticks_per_cycle("tensor")
    act_start, act_end, _ = tl[("scalar", 0)]
    assert act_start == mm_done  # waits for the matmul's signal, visible after the overhead
    assert act_end - act_start == 512 * CFG.ticks_per_cycle("scalar")  # max(MIN_II, N) at 1.4 GHz
    assert res.report.engine_active_cycles["scalar"] == 512


def test_back_to_back_instructions_hide_the_overhead():
    src = sbuf_ap(0, 128, 0, (1024,))
    ops = tuple(TensorScalar(sbuf_ap(0, 128, 8192 + 4096 * k, (1024,)), src, operand0=1.0,
                             waits=(Wait("ld", 1),)) for k in range(4))
    p = Program((HbmTensor("x", 0, (128, 1024), "fp32", "input"),),
                (("dma0", (DmaCopy(src, hbm_ap(0, 128, 1024, (1024,)), signals=("ld",)),)), ("vector", ops)))
    res = simulate(p, CFG, {"x": np.ones((128, 1024), np.float32)})
    starts = [a for s, i, a, b, d in res.timeline if p.streams[s][0] == "vector"]
    per = 1024 * CFG.ticks_per_cycle("vector")
    assert np.diff(starts).tolist() == [per] * 3
    assert res.report.engine_active_cycles["vector"] == 4 * 1024


def test_strided_access_halves_rate():
    src = sbuf_ap(0, 128, 0, (256,), strides=(8,))  # 32 B innermost stride
    p = Program((HbmTensor("x", 0, (128, 2048), "fp32", "input"),),
                (("dma0", (DmaCopy(sbuf_ap(0, 128, 0, (2048,)), hbm_ap(0, 128, 2048, (2048,)), signals=("ld",)),)),
                 ("vector", (TensorCopy(sbuf_ap(0, 128, 16384, (256,)), src, waits=(Wait("ld", 1),)),))))
    res = simulate(p, CFG, {"x": np.ones((128, 2048), np.float32)})
    assert res.report.engine_active_cycles["vector"] == 2 * 256


def test_dma_stall_cycles_count_tensor_idle_waiting_on_a_dma():
    from target.cost import dma_ticks
    K = 128
    ld = DmaCopy(sbuf_ap(0, K, 0, (512,), "bf16"), hbm_ap(0, K, 512, (512,), "bf16"), signals=("x",))
    mm = MatMul(psum_ap(0, K, 0, (512,)), sbuf_ap(0, K, 0, (K,), "bf16"), sbuf_ap(0, K, 0, (512,), "bf16"),
                waits=(Wait("x", 1),), signals=("mm",))
    ev = Activation(sbuf_ap(0, K, 4096, (512,)), psum_ap(0, K, 0, (512,)), waits=(Wait("mm", 1),))
    p = Program((HbmTensor("x", 0, (K, 512), "bf16", "input"),),
                (("dma0", (ld,)), ("tensor", (mm,)), ("scalar", (ev,))))
    res = simulate(p, CFG, {"x": np.ones((K, 512))})
    assert res.report.dma_stall_cycles == dma_ticks(ld, CFG) // CFG.ticks_per_cycle("tensor")
    assert res.report.per_tag[""].dma_stall_cycles == res.report.dma_stall_cycles
    assert res.report.semaphore_wait_cycles["tensor"] == res.report.dma_stall_cycles
    # the scalar engine waited for the DMA and then the matmul (+ its fixed access latency)
    sc_start = [a for s_, i, a, b, d in res.timeline if p.streams[s_][0] == "scalar"][0]
    assert res.report.semaphore_wait_cycles["scalar"] == sc_start // CFG.ticks_per_cycle("scalar")


def test_sbuf_peak_live_bytes_vs_footprint():
    T = lambda off: sbuf_ap(0, 128, off, (512,))
    x = HbmTensor("x", 0, (128, 512), "fp32", "input")
    y = HbmTensor("y", x.nbytes, (128, 512), "fp32", "output")
    z = HbmTensor("z", 2 * x.nbytes, (128, 512), "fp32", "output")
    hx, hy, hz = (hbm_ap(t.offset, 128, 512, (512,)) for t in (x, y, z))
    p = Program((x, y, z), (
        ("dma0", (DmaCopy(T(0), hx, signals=("a",)), DmaCopy(T(4096), hx, waits=(Wait("s", 1),), signals=("c",)))),
        ("vector", (TensorCopy(T(2048), T(0), waits=(Wait("a", 1),), signals=("b",)),)),
        ("dma1", (DmaCopy(hy, T(2048), waits=(Wait("b", 1),), signals=("s",)),
                  DmaCopy(hz, T(4096), waits=(Wait("c", 1),)))),
    ))
    rep = simulate(p, CFG, {"x": np.ones((128, 512), np.float32)}).report
    assert rep.sbuf_footprint_bytes == 3 * 128 * 2048
    assert rep.sbuf_peak_bytes == 2 * 128 * 2048  # A and B live together; C only after both died
    assert rep.psum_peak_bytes == 0
