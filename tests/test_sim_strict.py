"""Planted faults: every illegal-program rule is refused with an error naming the instruction."""
import dataclasses

import numpy as np
import pytest

from target.config import load_config
from target.errors import (AddressError, BindingError, DeadlockError, DtypeError, MatmulLimitError,
                           MemoryKindError, PartitionStartError, ProgramError, PsumBankError, RaceError,
                           ShapeError, UninitializedReadError, WrongEngineError)
from target.isa import (Activation, DmaCopy, HbmTensor, MatMul, Program, TensorCopy, TensorTensor, Wait,
                        hbm_ap, psum_ap, sbuf_ap)
from target.simulator import simulate

CFG = load_config("inf2")
X = HbmTensor("x", 0, (128, 512), "fp32", "input")
Y = HbmTensor("y", X.nbytes, (128, 512), "fp32", "output")
XV = np.ones((128, 512), np.float32)


def load(dst=None, sig="ld"):
    return DmaCopy(dst or sbuf_ap(0, 128, 0, (512,)), hbm_ap(0, 128, 512, (512,)), signals=(sig,) if sig else ())


def run(streams, cfg=CFG, hbm=(X,), tensors=None, check=True):
    return simulate(Program(tuple(hbm), tuple(streams)), cfg, {"x": XV} if tensors is None else tensors,
                    check=check)


def refuse(exc, streams, where, **kw):
    with pytest.raises(exc) as e:
        run(streams, **kw)
    assert e.value.where == where, str(e.value)
    assert where in str(e.value) and f"[{e.value.rule}]" in str(e.value)
    return e.value


# ---------------------------------------------------------------- address range
def test_sbuf_bytes_out_of_range():
    bad = sbuf_ap(0, 128, CFG.sbuf_bytes_per_partition - 1024, (512,))  # 2048 B needed
    e = refuse(AddressError, [("dma0", (load(bad),))], "dma0[0]")
    assert "SBUF bytes" in str(e) and "dma_copy" in str(e)


def test_sbuf_partition_out_of_range():
    refuse(AddressError, [("dma0", (load(),)),
                          ("vector", (TensorCopy(sbuf_ap(96, 64, 4096, (8,)), sbuf_ap(0, 64, 0, (8,)),
                                                 waits=(Wait("ld", 1),)),))], "vector[0]")


def test_psum_out_of_range():
    refuse(AddressError, [("dma0", (load(),)),
                          ("tensor", (MatMul(psum_ap(0, 128, 16 * 1024 - 4, (2,)), sbuf_ap(0, 128, 0, (128,)),
                                             sbuf_ap(0, 128, 0, (2,)), waits=(Wait("ld", 1),)),))], "tensor[0]")


def test_hbm_outside_tensors_and_beyond_config():
    e = refuse(AddressError, [("dma0", (DmaCopy(sbuf_ap(0, 128, 0, (512,)), hbm_ap(4, 128, 512, (512,))),))],
               "dma0[0]")
    assert "outside the program's HBM tensors" in str(e)
    huge = HbmTensor("h", CFG.hbm_bytes - 16, (8,), "fp32", "scratch")
    with pytest.raises(AddressError, match="beyond the config's HBM size"):
        run([("dma0", ())], hbm=(X, huge))


# ---------------------------------------------------------------- partition start
@pytest.mark.parametrize("start,count", [(32, 64), (16, 32), (32, 65), (8, 8)])
def test_partition_start_rule(start, count):
    e = refuse(PartitionStartError, [
        ("dma0", (load(),)),
        ("vector", (TensorCopy(sbuf_ap(start, count, 4096, (8,)), sbuf_ap(start, count, 0, (8,)),
                               waits=(Wait("ld", 1),)),))], "vector[0]")
    assert f"{count} partitions starting at {start}" in str(e)


@pytest.mark.parametrize("start,count", [(0, 128), (64, 64), (96, 32), (32, 1), (0, 33)])
def test_partition_start_rule_legal(start, count):
    run([("dma0", (load(),)),
         ("vector", (TensorCopy(sbuf_ap(start, count, 4096, (8,)), sbuf_ap(start, count, 0, (8,)),
                                waits=(Wait("ld", 1),)),))])


# ---------------------------------------------------------------- matmul limits, banks
def small_array_cfg():
    return dataclasses.replace(CFG, pe_rows=64, pe_cols=64)


def test_matmul_n_limit():
    e = refuse(MatmulLimitError, [("dma0", (load(),)),
                                  ("tensor", (MatMul(psum_ap(0, 128, 0, (513,)), sbuf_ap(0, 128, 0, (128,)),
                                                     sbuf_ap(0, 128, 0, (513,)), waits=(Wait("ld", 1),)),))],
               "tensor[0]")
    assert "N=513" in str(e)


def test_matmul_k_and_m_limits():
    mm = lambda k, m: MatMul(psum_ap(0, m, 0, (64,)), sbuf_ap(0, k, 0, (m,)), sbuf_ap(0, k, 0, (64,)),
                             waits=(Wait("ld", 1),))
    e = refuse(MatmulLimitError, [("dma0", (load(),)), ("tensor", (mm(128, 32),))], "tensor[0]",
               cfg=small_array_cfg())
    assert "K=128" in str(e)
    e = refuse(MatmulLimitError, [("dma0", (load(),)), ("tensor", (mm(64, 100),))], "tensor[0]",
               cfg=small_array_cfg())
    assert "M=100" in str(e)


def test_psum_bank_overflow():
    e = refuse(PsumBankError, [("dma0", (load(),)),
                               ("tensor", (MatMul(psum_ap(0, 128, 1024, (512,)), sbuf_ap(0, 128, 0, (128,)),
                                                  sbuf_ap(0, 128, 0, (512,)), waits=(Wait("ld", 1),)),))],
               "tensor[0]")
    assert "PSUM bank" in str(e)


# ---------------------------------------------------------------- engines, memories, shapes, dtypes
def test_wrong_engine():
    mm = MatMul(psum_ap(0, 128, 0, (512,)), sbuf_ap(0, 128, 0, (128,)), sbuf_ap(0, 128, 0, (512,)))
    e = refuse(WrongEngineError, [("vector", (mm,))], "vector[0]")
    assert "MatMul cannot run on the vector stream" in str(e)
    refuse(WrongEngineError, [("tensor", (load(),))], "tensor[0]")
    refuse(WrongEngineError, [("vector", (Activation(sbuf_ap(0, 1, 0, (4,)), sbuf_ap(0, 1, 0, (4,))),))],
           "vector[0]")


def test_unknown_stream_and_missing_queue():
    with pytest.raises(ProgramError, match="unknown stream"):
        run([("dsp", ())])
    with pytest.raises(ProgramError, match="16 DMA queues"):
        run([("dma16", (load(),))])


def test_memory_kinds():
    mm = MatMul(sbuf_ap(0, 128, 8192, (512,)), sbuf_ap(0, 128, 0, (128,)), sbuf_ap(0, 128, 0, (512,)))
    e = refuse(MemoryKindError, [("tensor", (mm,))], "tensor[0]")
    assert "dst is in sbuf" in str(e)
    pp = TensorTensor(sbuf_ap(0, 8, 0, (4,)), psum_ap(0, 8, 0, (4,)), psum_ap(0, 8, 64, (4,)))
    refuse(MemoryKindError, [("vector", (pp,))], "vector[0]")
    g = TensorCopy(psum_ap(0, 8, 0, (4,)), sbuf_ap(0, 8, 0, (4,)))
    refuse(MemoryKindError, [("gpsimd", (g,))], "gpsimd[0]")


def test_shape_and_dtype_mismatch():
    tt = TensorTensor(sbuf_ap(0, 8, 0, (4,)), sbuf_ap(0, 8, 64, (4,)), sbuf_ap(0, 8, 128, (5,)))
    e = refuse(ShapeError, [("vector", (tt,))], "vector[0]")
    assert "b is [8, 5]" in str(e)
    mm = MatMul(psum_ap(0, 128, 0, (512,), "bf16"), sbuf_ap(0, 128, 0, (128,)), sbuf_ap(0, 128, 0, (512,)))
    refuse(DtypeError, [("tensor", (mm,))], "tensor[0]")
    mm2 = MatMul(psum_ap(0, 64, 0, (512,)), sbuf_ap(0, 128, 0, (128,)), sbuf_ap(0, 128, 0, (512,)))
    refuse(ShapeError, [("tensor", (mm2,))], "tensor[0]")


# ---------------------------------------------------------------- dynamic checks
def test_read_of_never_written_bytes():
    mm = MatMul(psum_ap(0, 128, 0, (512,)), sbuf_ap(0, 128, 0, (128,)), sbuf_ap(0, 128, 4096, (512,)),
                waits=(Wait("ld", 1),))
    e = refuse(UninitializedReadError, [("dma0", (load(),)), ("tensor", (mm,))], "tensor[0]")
    assert "moving reads sbuf bytes never written" in str(e)
    # with check=False the same program runs
    run([("dma0", (load(),)), ("tensor", (mm,))], check=False)


def test_output_never_written():
    with pytest.raises(UninitializedReadError, match="'y'"):
        run([("dma0", (load(),))], hbm=(X, Y))


def test_race_missing_semaphore():
    mm = MatMul(psum_ap(0, 128, 0, (512,)), sbuf_ap(0, 128, 0, (128,)), sbuf_ap(0, 128, 0, (512,)))
    # write-then-read with no wait: the read comes first in time, so it is a never-written read...
    with pytest.raises((RaceError, UninitializedReadError)):
        run([("dma0", (load(),)), ("tensor", (mm,))])
    # ...and a WAR race: the tensor engine reads a tile that a DMA overwrites without waiting for it
    mm2 = dataclasses.replace(mm, waits=(Wait("ld", 1),), signals=("mm",))
    e = refuse(RaceError, [("dma0", (load(),)), ("tensor", (mm2,)),
                           ("dma1", (DmaCopy(sbuf_ap(0, 128, 0, (512,)), hbm_ap(0, 128, 512, (512,)),
                                             waits=(Wait("ld", 1),)),))], "dma1[0]")
    assert "tensor[0]" in str(e) and "no semaphore path" in str(e)


def test_race_detected_even_when_timing_hides_it():
    # vector writes a tile; dma1 (ordered only after a long, unrelated DMA) reads it: the timing is
    # safe by luck, the program is not.
    v = TensorCopy(sbuf_ap(0, 128, 8192, (512,)), sbuf_ap(0, 128, 0, (512,)), waits=(Wait("ld", 1),))
    rd = DmaCopy(hbm_ap(X.nbytes, 128, 512, (512,)), sbuf_ap(0, 128, 8192, (512,)), waits=(Wait("ld2", 1),))
    streams = [("dma0", (load(), load(sbuf_ap(0, 128, 20000, (512,)), sig="ld2"))),
               ("vector", (v,)), ("dma1", (rd,))]
    e = refuse(RaceError, streams, "dma1[0]", hbm=(X, Y))
    assert "vector[0]" in str(e)


def test_race_free_semaphore_program_passes():
    # ping-pong: dma0 loads 4 tiles into 2 buffers, vector doubles each, dma1 stores; buffer reuse is
    # guarded by semaphores (WAR: load of tile i+2 waits for the vector op on tile i).
    n = 4
    x = np.arange(128 * 512 * n, dtype=np.float32).reshape(128, 512 * n)
    xt = HbmTensor("x", 0, (128, 512 * n), "fp32", "input")
    yt = HbmTensor("y", xt.nbytes, (128, 512 * n), "fp32", "output")
    buf = lambda i: sbuf_ap(0, 128, (i % 2) * 2048, (512,))
    obuf = lambda i: sbuf_ap(0, 128, 8192 + (i % 2) * 2048, (512,))
    dma0, vec, dma1 = [], [], []
    for i in range(n):
        w = (Wait("vdone", i - 1),) if i >= 2 else ()
        dma0.append(DmaCopy(buf(i), hbm_ap(i * 2048, 128, 512 * n, (512,)), waits=w, signals=("ld",)))
        vw = [Wait("ld", i + 1)] + ([Wait("st", i - 1)] if i >= 2 else [])
        vec.append(TensorTensor(obuf(i), buf(i), buf(i), op="add", waits=tuple(vw), signals=("vdone",)))
        dma1.append(DmaCopy(hbm_ap(xt.nbytes + i * 2048, 128, 512 * n, (512,)), obuf(i),
                            waits=(Wait("vdone", i + 1),), signals=("st",)))
    res = simulate(Program((xt, yt), (("dma0", tuple(dma0)), ("vector", tuple(vec)), ("dma1", tuple(dma1)))),
                   CFG, {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], 2 * x)


def test_multi_signaller_semaphore_happens_before():
    # two queues each load half and signal the same semaphore; waiting for 2 orders both, waiting
    # for 1 orders neither (either could have been first).
    h0 = DmaCopy(sbuf_ap(0, 64, 0, (512,)), hbm_ap(0, 64, 512, (512,)), signals=("s",))
    h1 = DmaCopy(sbuf_ap(64, 64, 0, (512,)), hbm_ap(64 * 2048, 64, 512, (512,)), signals=("s",))
    rd = lambda v: TensorCopy(sbuf_ap(0, 128, 4096, (512,)), sbuf_ap(0, 128, 0, (512,)), waits=(Wait("s", v),))
    run([("dma0", (h0,)), ("dma1", (h1,)), ("vector", (rd(2),))])
    with pytest.raises(RaceError):
        run([("dma0", (h0,)), ("dma1", (h1,)), ("vector", (rd(1),))])


def test_exact_refinement_interleaved_writes_are_not_a_race():
    # two unordered queues write the even / odd elements of the same SBUF region: boxes overlap,
    # bytes do not.
    ev = DmaCopy(sbuf_ap(0, 128, 0, (256,), strides=(2,)), hbm_ap(0, 128, 512, (256,), strides=(2,)))
    od = DmaCopy(sbuf_ap(0, 128, 4, (256,), strides=(2,)), hbm_ap(4, 128, 512, (256,), strides=(2,)))
    run([("dma0", (ev,)), ("dma1", (od,))])
    od2 = DmaCopy(sbuf_ap(0, 128, 8, (256,), strides=(2,)), hbm_ap(4, 128, 512, (256,), strides=(2,)))
    with pytest.raises(RaceError):
        run([("dma0", (ev,)), ("dma1", (od2,))])


def test_deadlock_is_refused_naming_stuck_instructions():
    a = TensorCopy(sbuf_ap(0, 128, 4096, (512,)), sbuf_ap(0, 128, 0, (512,)), waits=(Wait("b", 1),),
                   signals=("a",))
    b = DmaCopy(sbuf_ap(0, 128, 0, (512,)), hbm_ap(0, 128, 512, (512,)), waits=(Wait("a", 1),), signals=("b",))
    with pytest.raises(DeadlockError) as e:
        run([("vector", (a,)), ("dma0", (b,))])
    assert "vector[0]" in str(e.value) and "dma0[0]" in str(e.value)
    with pytest.raises(DeadlockError, match="only 1 times"):
        run([("dma0", (load(),)), ("vector", (dataclasses.replace(a, waits=(Wait("ld", 2),)),))])


def test_binding_errors():
    with pytest.raises(BindingError, match="'x'"):
        run([("dma0", (load(),))], tensors={})
    with pytest.raises(BindingError, match=r"'x' expects shape \(128, 512\)"):
        run([("dma0", (load(),))], tensors={"x": np.ones((4, 4))})


def test_race_found_after_many_instructions_despite_pruning():
    # 300 ordered vector ops (the checker prunes its history every 64 commits), then a DMA that
    # overwrites the vector engine's source tile with no semaphore path from the last read.
    src = sbuf_ap(0, 128, 0, (512,))
    vec = [TensorCopy(sbuf_ap(0, 128, 8192 + 2048 * (k % 4), (512,)), src,
                      waits=(Wait("ld", 1),) if k == 0 else (), signals=("v",)) for k in range(300)]
    ok = DmaCopy(src, hbm_ap(0, 128, 512, (512,)), waits=(Wait("v", 300),))
    run([("dma0", (load(),)), ("vector", tuple(vec)), ("dma1", (ok,))])
    bad = DmaCopy(src, hbm_ap(0, 128, 512, (512,)), waits=(Wait("v", 299),))
    e = refuse(RaceError, [("dma0", (load(),)), ("vector", tuple(vec)), ("dma1", (bad,))], "dma1[0]")
    assert "vector[299]" in str(e)


def test_big_synthetic_pipeline_is_race_free():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_sim_speed.py")
    spec = importlib.util.spec_from_file_location("bench_sim_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prog = mod.synthetic(tiles=96, taps=3)
    res = simulate(prog, CFG, mod.random_inputs(prog))
    assert res.report.num_instructions == prog.num_instructions == 96 * 6 + 12
    assert res.report.macs == 96 * 3 * 128 * 128 * 128


def test_accumulation_group_discipline():
    from target.errors import AccumulationGroupError
    P = psum_ap(0, 128, 0, (512,))
    mm = lambda start, stop, **kw: MatMul(P, sbuf_ap(0, 128, 0, (128,)), sbuf_ap(0, 128, 0, (512,)), start=start,
                                          stop=stop, **kw)
    ev = Activation(sbuf_ap(0, 128, 8192, (512,)), P, waits=(Wait("mm", 1),))
    first = lambda start=True, stop=False: mm(start, stop, waits=(Wait("ld", 1),))
    # legal: start ... stop, then evacuate
    run([("dma0", (load(),)), ("tensor", (first(), mm(False, True, signals=("mm",)))), ("scalar", (ev,))])
    # evacuating an open group (the stop was forgotten)
    e = refuse(AccumulationGroupError, [("dma0", (load(),)), ("tensor", (first(), mm(False, False, signals=("mm",)))),
                                        ("scalar", (ev,))], "scalar[0]")
    assert "tensor[0]" in str(e)
    # accumulating with no open group
    refuse(AccumulationGroupError, [("dma0", (load(),)), ("tensor", (first(True, True), mm(False, True)))], "tensor[1]")
    # a new group over an open one
    refuse(AccumulationGroupError, [("dma0", (load(),)), ("tensor", (first(), mm(True, True)))], "tensor[1]")


def test_pruning_waits_for_late_streams():
    # dma1 starts only at the end (after all vector ops) yet must still see the race with the
    # first vector instruction's write, even though the checker pruned history meanwhile.
    src = sbuf_ap(0, 128, 0, (512,))
    vec = [TensorCopy(sbuf_ap(0, 128, 8192, (512,)), src, waits=(Wait("ld", 1),) if k == 0 else (),
                      signals=("v",) if k == 0 else ())
           for k in range(200)]
    vec += [TensorCopy(sbuf_ap(0, 128, 16384 + 2048 * (k % 4), (512,)), src, signals=("w",)) for k in range(200)]
    late = DmaCopy(hbm_ap(0, 128, 512, (512,)), sbuf_ap(0, 128, 8192, (512,)), waits=(Wait("ld2", 1),))
    e = refuse(RaceError, [("dma0", (load(), load(sbuf_ap(0, 128, 40960, (512,)), sig="ld2"))),
                           ("vector", tuple(vec)), ("dma1", (late,))], "dma1[0]")
    import re
    k = int(re.search(r"on sbuf: vector\[(\d+)\]", str(e)).group(1))
    assert k < 200  # one of the writers of the tile (the latest one when dma1 ran)
