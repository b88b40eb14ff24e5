"""Instruction costs: the NKI "estimated instruction cost" formulas, with every constant from the
hardware config.

Engine cycles (N = elements per partition of the instruction's input, own engine clock):

==========================  =====================================================
MatMul                      max(min(matmul_min_stationary, N_stationary), N_moving),
                            x matmul_fp32_factor when an operand is fp32
Transpose (Tensor)          max(P, min(64, F))
Activation, TensorScalar,   max(min_ii, N)
TensorCopy, Memset
TensorTensor                max(min_ii, N) if one input is in PSUM, else max(min_ii, 2N)
TensorReduce                N (ceil(N/2) for bf16 input)
Iota                        iota_fixed_cycles + N
==========================  =====================================================

On Vector/Scalar/GpSimd, N is multiplied by ``strided_factor`` (2) when an operand's innermost
non-unit dimension has a stride above ``strided_stride_bytes`` (16 B): the documented halving of
the SBUF/PSUM access rate.

**Fixed access overhead.** NKI states its formulas as the *average* cost of many instructions
running back-to-back on an engine, i.e. as an initiation interval.  The fixed ~60-cycle
SBUF/PSUM access overhead is therefore modelled as pipeline *latency*: an engine is busy for the
formula's cycles and may issue its next instruction right after (back-to-back instructions hide
the overhead), but the instruction's results -- and so its semaphore signals -- become visible
``access_overhead_cycles`` later.  The overhead is thus paid once per cross-engine dependency,
not once per instruction.  Engine active cycles count only the formula's cycles.

**DMA.** A transfer occupies its queue for
``latency + bytes / (queue_bandwidth * efficiency(chunk))``, where ``bytes`` is the larger of
the source and destination byte counts and ``chunk`` is the contiguous run of bytes per
partition row (the smaller of the source's and the destination's runs, capped at the row).
``efficiency`` follows the config's ``dma.efficiency_curve``: interpolated linearly in
log2(bytes) between the points, proportional to bytes below the first point (overhead-bound: a
constant time per descriptor), and the last point's value beyond it.  The inf2 curve:
256 B -> 0.25, 512 B -> 0.45, 1 KiB -> 0.65, 2 KiB -> 0.85, >= 4 KiB -> 1.0.  Queues run
independently (16 x 17 GB/s = 272 GB/s stays under the 410 GB/s HBM figure, so HBM
contention is not modelled).
"""
from __future__ import annotations

import math

from .isa import AP, Mem, MatMul, Transpose, Activation, TensorTensor, TensorScalar, TensorReduce, \
    TensorCopy, Memset, Iota, DmaCopy


def _strided(ap: AP, cfg) -> bool:
    for n, s in zip(reversed(ap.sizes), reversed(ap.strides)):
        if n > 1:
            return abs(s) * ap.itemsize > cfg.strided_stride_bytes
    return False


def engine_cycles(ins, cfg) -> int:
    """Cycles (engine's own clock) the instruction occupies its engine."""
    t = type(ins)
    if t is MatMul:
        m = ins.stationary.free_elems
        n = ins.moving.free_elems
        c = max(min(cfg.matmul_min_stationary, m), n)
        if ins.stationary.dtype == "fp32" or ins.moving.dtype == "fp32":
            c = c * cfg.matmul_fp32_factor
        return max(1, int(math.ceil(c)))
    if t is Transpose:
        return max(1, max(ins.src.num_partitions, min(64, ins.src.free_elems)))
    if t is Memset or t is Iota:
        ops = (ins.dst,)
        n = ins.dst.free_elems
    else:
        ops = [ins.dst, ins.src] if t is not TensorTensor else [ins.dst, ins.a, ins.b]
        n = (ins.a if t is TensorTensor else ins.src).free_elems
    f = n * cfg.strided_factor if any(_strided(a, cfg) for a in ops) else n
    if t is TensorTensor:
        one_psum = ins.a.mem == Mem.PSUM or ins.b.mem == Mem.PSUM
        c = max(cfg.min_ii, f if one_psum else 2 * f)
    elif t is TensorReduce:
        c = f / 2 if ins.src.dtype == "bf16" else f
    elif t is Iota:
        c = cfg.iota_fixed_cycles + f
    else:
        c = max(cfg.min_ii, f)
    return max(1, int(math.ceil(c)))


def _run_bytes(ap: AP) -> int:
    """Contiguous bytes per partition row."""
    run = 1
    for n, s in zip(reversed(ap.sizes), reversed(ap.strides)):
        if n == 1:
            continue
        if s != run:
            break
        run *= n
    else:
        return ap.free_elems * ap.itemsize
    return run * ap.itemsize


def dma_chunk_bytes(ins: DmaCopy) -> int:
    row = min(ins.src.free_elems * ins.src.itemsize, ins.dst.free_elems * ins.dst.itemsize)
    return max(1, min(_run_bytes(ins.src), _run_bytes(ins.dst), row))


def dma_bytes(ins: DmaCopy) -> int:
    return max(ins.src.nbytes, ins.dst.nbytes)


def dma_efficiency(chunk: int, curve) -> float:
    b0, e0 = curve[0]
    if chunk <= b0:
        return e0 * chunk / b0
    for (b1, e1), (b2, e2) in zip(curve, curve[1:]):
        if chunk <= b2:
            x = (math.log2(chunk) - math.log2(b1)) / (math.log2(b2) - math.log2(b1))
            return e1 + x * (e2 - e1)
    return curve[-1][1]


def dma_ticks(ins: DmaCopy, cfg) -> int:
    """Ticks (1 / cfg.tick_khz ms) a DMA occupies its queue: latency + bytes / (bw * eff)."""
    tick_hz = cfg.tick_khz * 1000
    lat = int(round(cfg.dma_latency_us * 1e-6 * tick_hz))
    eff = dma_efficiency(dma_chunk_bytes(ins), cfg.dma_efficiency_curve)
    xfer = math.ceil(dma_bytes(ins) * tick_hz / (cfg.dma_queue_bandwidth_gbps * 1e9 * eff) - 1e-9)
    return max(1, lat + xfer)
