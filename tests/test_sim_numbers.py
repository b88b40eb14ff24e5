"""Simulator numbers: matmul product and exact cycles, bf16 rounding, scalar/vector ops, DMA."""
import ml_dtypes
import numpy as np
import pytest

from target.config import load_config
from target.isa import (Activation, DmaCopy, HbmTensor, Iota, MatMul, Memset, Program, TensorCopy,
                        TensorReduce, TensorScalar, TensorTensor, Transpose, Wait, hbm_ap, psum_ap, sbuf_ap)
from target.simulator import simulate

CFG = load_config("inf2")
BF = ml_dtypes.bfloat16


def bf(x):
    return np.asarray(x, np.float32).astype(BF).astype(np.float32)


def matmul_program(K, M, N, dt="bf16"):
    a = HbmTensor("a", 0, (K, M), "fp32", "input")
    b = HbmTensor("b", a.nbytes, (K, N), "fp32", "input")
    c = HbmTensor("c", a.nbytes + b.nbytes, (M, N), "fp32", "output")
    A = sbuf_ap(0, K, 0, (M,), dt)
    B = sbuf_ap(0, K, 1024, (N,), dt)
    P = psum_ap(0, M, 0, (N,))
    O = sbuf_ap(0, M, 8192, (N,))
    return Program((a, b, c), (
        ("dma0", (DmaCopy(A, hbm_ap(a.offset, K, M, (M,)), signals=("a",)),)),
        ("dma1", (DmaCopy(B, hbm_ap(b.offset, K, N, (N,)), signals=("b",)),
                  DmaCopy(hbm_ap(c.offset, M, N, (N,)), O, waits=(Wait("o", 1),)))),
        ("tensor", (MatMul(P, A, B, waits=(Wait("a", 1), Wait("b", 1)), signals=("mm",), tag="mm"),)),
        ("scalar", (Activation(O, P, waits=(Wait("mm", 1),), signals=("o",), tag="evac"),)),
    ), name="mm")


@pytest.mark.parametrize("dt,factor", [("bf16", 1), ("fp32", 4)])
def test_matmul_128x128x512_product_and_exact_cycles(dt, factor):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((128, 128)).astype(np.float32)
    b = rng.standard_normal((128, 512)).astype(np.float32)
    res = simulate(matmul_program(128, 128, 512, dt), CFG, {"a": a, "b": b})
    if dt == "bf16":
        ref = bf(a).T @ bf(b)
    else:
        ref = a.T @ b
    np.testing.assert_allclose(res.outputs["c"], ref, rtol=1e-5, atol=1e-4)
    # NKI formula: max(min(64, N_stationary=128), N_moving=512) = 512, x4 for fp32
    cycles = max(min(64, 128), 512) * factor
    assert res.report.engine_active_cycles["tensor"] == cycles
    assert res.report.per_tag["mm"].engine_active_cycles == {"tensor": cycles}
    assert res.report.macs == 128 * 128 * 512
    (mm,) = [t for t in res.timeline if res.program.streams[t[0]][0] == "tensor"]
    assert mm[3] - mm[2] == cycles * CFG.ticks_per_cycle("tensor")


def test_matmul_small_stationary_uses_min64():
    res = simulate(matmul_program(32, 16, 40), CFG, {"a": np.ones((32, 16)), "b": np.ones((32, 40))})
    assert res.report.engine_active_cycles["tensor"] == max(min(64, 16), 40)
    np.testing.assert_array_equal(res.outputs["c"], np.full((16, 40), 32.0, np.float32))


def test_bf16_rounding_is_real():
    # 1 + 2^-9 is not representable in bf16 (8 mantissa bits): rounds to 1.0
    a = np.full((1, 1), 1.0 + 2 ** -9, np.float32)
    b = np.ones((1, 1), np.float32)
    r16 = simulate(matmul_program(1, 1, 1, "bf16"), CFG, {"a": a, "b": b}).outputs["c"]
    r32 = simulate(matmul_program(1, 1, 1, "fp32"), CFG, {"a": a, "b": b}).outputs["c"]
    assert r16[0, 0] == 1.0
    assert r32[0, 0] == np.float32(1.0 + 2 ** -9)


def _run_sbuf(streams, inputs, outputs, tensors):
    """helper: program over named hbm tensors; inputs/outputs: list of (name, shape, dtype)"""
    hbm, off = [], 0
    for kind, lst in (("input", inputs), ("output", outputs)):
        for name, shape, dt in lst:
            t = HbmTensor(name, off, shape, dt, kind)
            hbm.append(t)
            off += t.nbytes
    return simulate(Program(tuple(hbm), streams), CFG, tensors)


def test_accumulation_group_and_activation_bias_scale():
    K, M, N = 64, 32, 100
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2 * K, M)).astype(np.float32)
    b = rng.standard_normal((2 * K, N)).astype(np.float32)
    bias = rng.standard_normal((M, 1)).astype(np.float32)
    A0, A1 = sbuf_ap(0, K, 0, (M,)), sbuf_ap(64, K, 0, (M,))
    B0, B1 = sbuf_ap(0, K, 256, (N,)), sbuf_ap(64, K, 256, (N,))
    Bias = sbuf_ap(0, M, 1024, (1,))
    P = psum_ap(0, M, 2048, (N,))  # bank 1
    O = sbuf_ap(0, M, 4096, (N,))
    sa, sb_, sc, so = 0, 2 * K * M * 4, 2 * K * M * 4 + 2 * K * N * 4, 2 * K * M * 4 + 2 * K * N * 4 + M * 4
    streams = (
        ("dma0", (DmaCopy(sbuf_ap(0, 2 * K, 0, (M,)), hbm_ap(sa, 2 * K, M, (M,))),
                  DmaCopy(sbuf_ap(0, 2 * K, 256, (N,)), hbm_ap(sb_, 2 * K, N, (N,))),
                  DmaCopy(Bias, hbm_ap(sc, M, 1, (1,)), signals=("in",)),
                  DmaCopy(hbm_ap(so, M, N, (N,)), O, waits=(Wait("act", 1),)))),
        ("tensor", (MatMul(P, A0, B0, start=True, stop=False, waits=(Wait("in", 1),)),
                    MatMul(P, A1, B1, start=False, stop=True, signals=("mm",)))),
        ("scalar", (Activation(O, P, func="relu", bias=Bias, scale=0.5, waits=(Wait("mm", 1),), signals=("act",)),)),
    )
    res = _run_sbuf(streams, [("a", (2 * K, M), "fp32"), ("b", (2 * K, N), "fp32"), ("bias", (M, 1), "fp32")],
                    [("o", (M, N), "fp32")], {"a": a, "b": b, "bias": bias})
    ref = np.maximum((a.T @ b) * 0.5 + bias, 0)
    np.testing.assert_allclose(res.outputs["o"], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("func,ref", [
    ("exp", np.exp), ("tanh", np.tanh), ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("sqrt", lambda x: np.sqrt(np.abs(x))), ("reciprocal", lambda x: 1 / x),
    ("rsqrt", lambda x: 1 / np.sqrt(np.abs(x))), ("square", np.square), ("identity", lambda x: x),
    ("gelu", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
])
def test_activation_table(func, ref):
    x = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32) + 0.1
    if func in ("sqrt", "rsqrt"):
        x = np.abs(x)
    S, D = sbuf_ap(0, 8, 0, (16,)), sbuf_ap(0, 8, 64, (16,))
    streams = (("dma0", (DmaCopy(S, hbm_ap(0, 8, 16, (16,)), signals=("i",)),)),
               ("scalar", (Activation(D, S, func=func, waits=(Wait("i", 1),), signals=("o",)),)),
               ("dma1", (DmaCopy(hbm_ap(512, 8, 16, (16,)), D, waits=(Wait("o", 1),)),)))
    res = _run_sbuf(streams, [("x", (8, 16), "fp32")], [("y", (8, 16), "fp32")], {"x": x})
    np.testing.assert_allclose(res.outputs["y"], ref(x), rtol=1e-5, atol=1e-6)


def test_vector_ops_reduce_transpose_iota_memset():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 4, 8)).astype(np.float32)
    X = sbuf_ap(0, 16, 0, (4, 8))
    Y = sbuf_ap(0, 16, 256, (4, 8))
    R = sbuf_ap(0, 16, 512, (4,))
    T = psum_ap(0, 32, 0, (16,))          # transpose of [16, 32] -> [32, 16]
    T2 = sbuf_ap(0, 32, 1024, (16,))
    I = sbuf_ap(0, 16, 2048, (4,), "int32")
    Mz = sbuf_ap(0, 16, 3072, (8,))
    col = sbuf_ap(0, 16, 0, (1,))         # x[:, 0, 0] as per-partition operand
    out = [("add", (16, 4, 8)), ("ts", (16, 4, 8)), ("red", (16, 4)), ("tr", (32, 16)), ("io", (16, 4)),
           ("ms", (16, 8))]
    offs, o = {}, x.nbytes
    for n, sh in out:
        offs[n] = o
        o += int(np.prod(sh)) * 4
    streams = (
        ("dma0", (DmaCopy(X, hbm_ap(0, 16, 32, (4, 8)), signals=("x",)),)),
        ("vector", (TensorTensor(Y, X, X, op="multiply", waits=(Wait("x", 1),)),
                    TensorScalar(Y, Y, op0="add", operand0=col, op1="max", operand1=0.25),
                    TensorReduce(R, X, op="max", axes=1),
                    TensorCopy(T2, T, waits=(Wait("t", 1),)),
                    Memset(Mz, value=-3.5, signals=("v",)))),
        ("tensor", (Transpose(T, sbuf_ap(0, 16, 0, (32,)), waits=(Wait("x", 1),), signals=("t",)),)),
        ("gpsimd", (Iota(I, base=5, channel_multiplier=10, pattern=(2,), signals=("g",)),)),
        ("dma1", (DmaCopy(hbm_ap(offs["ts"], 16, 32, (32,)), sbuf_ap(0, 16, 256, (32,)), waits=(Wait("v", 1),)),
                  DmaCopy(hbm_ap(offs["red"], 16, 4, (4,)), R),
                  DmaCopy(hbm_ap(offs["tr"], 32, 16, (16,)), T2),
                  DmaCopy(hbm_ap(offs["ms"], 16, 8, (8,)), Mz),
                  DmaCopy(hbm_ap(offs["io"], 16, 4, (4,), "int32"), I, waits=(Wait("g", 1),)),
                  DmaCopy(hbm_ap(offs["add"], 16, 32, (32,)), X))),
    )
    res = _run_sbuf(streams, [("x", (16, 4, 8), "fp32")],
                    [(n, sh, "int32" if n == "io" else "fp32") for n, sh in out], {"x": x})
    o = res.outputs
    np.testing.assert_allclose(o["ts"], np.maximum(x * x + x[:, :1, :1], 0.25), rtol=1e-6)
    np.testing.assert_array_equal(o["red"], x.max(axis=2))
    np.testing.assert_array_equal(o["tr"], x.reshape(16, 32).T)
    np.testing.assert_array_equal(o["io"], 5 + 10 * np.arange(16)[:, None] + 2 * np.arange(4)[None, :])
    np.testing.assert_array_equal(o["ms"], np.full((16, 8), -3.5, np.float32))
    np.testing.assert_array_equal(o["add"], x)


def test_dma_converts_fp32_to_bf16_and_back():
    x = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)
    S = sbuf_ap(0, 4, 0, (64,), "bf16")
    streams = (("dma0", (DmaCopy(S, hbm_ap(0, 4, 64, (64,))),
                         DmaCopy(hbm_ap(1024, 4, 64, (64,)), S))),)
    res = _run_sbuf(streams, [("x", (4, 64), "fp32")], [("y", (4, 64), "fp32")], {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], bf(x))


def test_bf16_output_tensor_dtype():
    x = np.random.default_rng(6).standard_normal((4, 8)).astype(np.float32)
    streams = (("dma0", (DmaCopy(sbuf_ap(0, 4, 0, (8,)), hbm_ap(0, 4, 8, (8,))),
                         DmaCopy(hbm_ap(128, 4, 8, (8,), "bf16"), sbuf_ap(0, 4, 0, (8,))))),)
    res = _run_sbuf(streams, [("x", (4, 8), "fp32")], [("y", (4, 8), "bf16")], {"x": x})
    assert res.outputs["y"].dtype == BF
    np.testing.assert_array_equal(res.outputs["y"].astype(np.float32), bf(x))


def test_negative_strides_and_reversed_hbm_rows():
    x = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
    # read HBM rows in reverse order (negative partition stride) and each row reversed
    from target.isa import AP, Mem
    src = AP(Mem.HBM, 0, 4, 3 * 32 + 7 * 4, (8,), (-1,), "fp32", -8)
    streams = (("dma0", (DmaCopy(sbuf_ap(0, 4, 0, (8,)), src),
                         DmaCopy(hbm_ap(128, 4, 8, (8,)), sbuf_ap(0, 4, 0, (8,))))),)
    res = _run_sbuf(streams, [("x", (4, 8), "fp32")], [("y", (4, 8), "fp32")], {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], x[::-1, ::-1])


def test_identity_built_on_chip():
    """Emitter.identity: GpSimd iota (i - p) then Vector is_equal 0 -> an exact identity matrix."""
    import numpy as np

    from target.codegen.emitter import Emitter
    from target.config import load_config
    from target.simulator import simulate
    from target import isa

    cfg = load_config("inf2")
    em = Emitter(cfg, "ident")
    t = em.identity(96, "bf16")
    out = em.hbm_tensor("y", (96, 96), "fp32", "output")
    em.dma(out.ap(0, 96, 96, (96,), (1,)), t.ap((96,), partitions=96))
    res = simulate(em.finish(), cfg, {})
    assert np.array_equal(res.outputs["y"], np.eye(96, dtype=np.float32))
    assert "is_equal" in isa.ALU_OPS
