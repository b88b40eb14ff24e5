"""Simulator speed: simulated instructions per second and wall time.

    python scripts/bench_sim_speed.py                 # big synthetic conv-like program
    python scripts/bench_sim_speed.py --tiles 3000 --taps 9
    python scripts/bench_sim_speed.py PROGRAM.txt     # any program text file (e.g. a whole model)
    python scripts/bench_sim_speed.py --no-check      # without read-before-write / race checks
    python scripts/bench_sim_speed.py --resnet50      # whole ResNet-50 through tvm_poly's per-op codegen

The synthetic program is a software-pipelined stream of conv tiles, shaped like a ResNet-50
layer sequence: per tile one input load (4 load queues, 4-slot SBUF ring), ``taps`` accumulating
matmuls into a rotating PSUM bank, one Scalar-engine ReLU evacuation to an SBUF ring, one store (4
store queues), plus a weight load per layer; all buffer reuse is guarded by semaphores (so the race
checker has real work: every access is checked against unordered accesses).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from target.isa import (Activation, DmaCopy, HbmTensor, MatMul, Program, Wait, hbm_ap, psum_ap,  # noqa: E402
                        sbuf_ap)
from target.memory import NP_DTYPES  # noqa: E402


def synthetic(tiles=4000, taps=4, layers=None, K=128, M=128, N=128, nb=4):
    layers = layers or max(1, min(50, tiles // 8))
    per_layer = max(1, tiles // layers)
    slot_elems = N + 2 * taps  # shifted windows inside one input slot
    x = HbmTensor("x", 0, (K, tiles * slot_elems), "bf16", "input")
    w = HbmTensor("w", x.nbytes, (layers, K, taps * M), "bf16", "weight")
    y = HbmTensor("y", x.nbytes + w.nbytes, (M, tiles * N), "bf16", "output")
    in_slot = lambda i: sbuf_ap(0, K, (i % nb) * slot_elems * 2, (slot_elems,), "bf16")
    win = lambda i, t: sbuf_ap(0, K, (i % nb) * slot_elems * 2 + 2 * t, (N,), "bf16")
    wbase = nb * slot_elems * 2
    w_slot = lambda l: sbuf_ap(0, K, wbase + (l % 2) * taps * M * 2, (taps * M,), "bf16")
    w_tap = lambda l, t: sbuf_ap(0, K, wbase + (l % 2) * taps * M * 2 + t * M * 2, (M,), "bf16")
    obase = wbase + 2 * taps * M * 2
    out_slot = lambda i: sbuf_ap(0, M, obase + (i % nb) * N * 2, (N,), "bf16")
    bank = lambda i: psum_ap(0, M, (i % 8) * 2048, (N,))
    loads = {q: [] for q in range(4)}
    stores = {q: [] for q in range(4)}
    wq, tensor, scalar = [], [], []
    for l in range(layers):
        waits = (Wait("mm", (l - 1) * per_layer),) if l >= 2 else ()
        wq.append(DmaCopy(w_slot(l), hbm_ap(w.offset + l * K * taps * M * 2, K, taps * M, (taps * M,), "bf16"),
                          waits=waits, signals=("w",), tag=f"layer{l}"))
    for i in range(tiles):
        l = min(i // per_layer, layers - 1)
        tag = f"layer{l}"
        q = i % 4
        lw = (Wait("mm", i - nb + 1),) if i >= nb else ()
        loads[q].append(DmaCopy(in_slot(i), hbm_ap(i * slot_elems * 2, K, tiles * slot_elems, (slot_elems,), "bf16"),
                                waits=lw, signals=(f"ld{q}",), tag=tag))
        for t in range(taps):
            waits = ()
            if t == 0:
                waits = [Wait(f"ld{q}", i // 4 + 1), Wait("w", l + 1)]
                if i >= 8:
                    waits.append(Wait("act", i - 8 + 1))
                waits = tuple(waits)
            tensor.append(MatMul(bank(i), w_tap(l, t), win(i, t), start=(t == 0), stop=(t == taps - 1),
                                 waits=waits, signals=("mm",) if t == taps - 1 else (), tag=tag))
        aw = [Wait("mm", i + 1)]
        if i >= nb:
            j = i - nb
            aw.append(Wait(f"st{j % 4}", j // 4 + 1))
        scalar.append(Activation(out_slot(i), bank(i), func="relu", waits=tuple(aw), signals=("act",), tag=tag))
        stores[q].append(DmaCopy(hbm_ap(y.offset + i * N * 2, M, tiles * N, (N,), "bf16"), out_slot(i),
                                 waits=(Wait("act", i + 1),), signals=(f"st{q}",), tag=tag))
    streams = [(f"dma{q}", tuple(loads[q])) for q in range(4)] + [("dma8", tuple(wq)), ("tensor", tuple(tensor)),
                                                                  ("scalar", tuple(scalar))]
    streams += [(f"dma{4 + q}", tuple(stores[q])) for q in range(4)]
    return Program((x, w, y), tuple(streams), name=f"synthetic_{tiles}x{taps}")


def random_inputs(prog, seed=0):
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32).astype(NP_DTYPES[t.dtype])
            for t in prog.hbm if t.kind in ("input", "weight")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("program", nargs="?")
    ap.add_argument("--tiles", type=int, default=4000)
    ap.add_argument("--taps", type=int, default=4)
    ap.add_argument("--n", type=int, default=128, help="moving free size of each matmul")
    ap.add_argument("--config", default="inf2")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--resnet50", action="store_true", help="compile ResNet-50 (light ONNX model) and run it")
    ap.add_argument("--dtype", default="float32", help="compute dtype for --resnet50 (float32|bfloat16)")
    a = ap.parse_args(argv)
    from target.simulator import simulate
    t0 = time.perf_counter()
    tens = None
    if a.resnet50:
        from tvm.relax.frontend.onnx import from_onnx
        from tvm_poly.driver import compile_graph
        from tvm_poly.graph import graph_from_relax
        from tvm_poly.models import light_model, random_inputs as model_inputs
        model = light_model("resnet50", seed=0, logits=True)
        cp = compile_graph(graph_from_relax(from_onnx(model)), a.config, dtype=a.dtype)
        prog = cp.program
        vals = model_inputs(model, seed=0)
        tens = dict(cp.constants)
        for hbm, gname in cp.inputs + cp.runtime_weights:
            tens[hbm] = np.asarray(vals[gname]).astype(NP_DTYPES[prog.tensor(hbm).dtype])
    elif a.program:
        from target.program_text import parse_program
        prog = parse_program(open(a.program).read())
    else:
        prog = synthetic(a.tiles, a.taps, N=a.n)
    t1 = time.perf_counter()
    if tens is None:
        tens = random_inputs(prog)
    if a.profile:
        import cProfile
        import pstats
        cProfile.runctx("res = simulate(prog, a.config, tens, check=not a.no_check)", globals(), locals(), "/tmp/sim.prof")
        pstats.Stats("/tmp/sim.prof").sort_stats("cumulative").print_stats(25)
        return 0
    t2, c2 = time.perf_counter(), time.process_time()
    res = simulate(prog, a.config, tens, check=not a.no_check)
    t3, c3 = time.perf_counter(), time.process_time()
    n = prog.num_instructions
    print(f"program {prog.name}: {n} instructions, build/parse {t1 - t0:.2f} s")
    print(f"simulate (check={not a.no_check}): {t3 - t2:.2f} s wall ({c3 - c2:.2f} s CPU), "
          f"{n / (t3 - t2):,.0f} instructions/s")
    print(res.report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
