"""per-op vs poly planner: HBM bytes, compulsory floor, cycles, DMA stalls, spills, planner time.

For each model (ONNX light models, seeded random weights, logits), batch, target config and
dtype: compile with both planners (same kernels, codegen and simulator), simulate, check the
outputs against onnxruntime, and write one Markdown row.  The table goes to
``results/bench_planners.md`` (``--out``) and is printed.

    .venv/bin/python scripts/bench_planners.py --models resnet50 squeezenet --batches 1 8 \
        --configs inf2 inf1 --dtypes float32 bfloat16
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

MODELS = ["resnet50", "squeezenet", "inception_v1", "inception_v2", "densenet121", "shufflenet",
          "bvlc_alexnet", "zfnet512", "vgg19"]
HEADER = ("| model | batch | target | dtype | per-op HBM MB | poly HBM MB | floor MB | per-op/floor | "
          "poly/floor | per-op/poly | per-op us | poly us | bound us | poly/bound | poly stall cyc | "
          "poly DMA rows >= 2 KiB | spill save/reload MB | plan s | err per-op / poly |")


INTRO = """# per-op vs poly planner (scripts/bench_planners.py)

Light ONNX models with seeded random weights (logits), simulator timing; `inf2` = polyinf, `inf1` = polyinf/inf1.
HBM MB = hbm_read_bytes + hbm_write_bytes of the whole run; floor = compulsory traffic from the polyhedral model
(inputs + weights + outputs once, every tensor at the compute dtype); us = simulated latency;
bound = max(Tensor-engine busy time of the poly run, floor / aggregate DMA bandwidth), issue 5's latency bound;
stall = Tensor-engine cycles waiting on DMA (poly); DMA rows >= 2 KiB = share of poly's DMA bytes moved in rows of
at least 2 KiB per partition; spill = poly spill_save/spill_reload bytes; plan s = poly (includes isl extraction); err = relative L2 error vs onnxruntime.
"""


def _mb(b):
    return f"{b / 1e6:.1f}"


def latency_bound(rep, floor_bytes, cfg):
    """Issue 5's latency bound in us: max(Tensor-engine busy time of the plan, floor bytes over
    the aggregate DMA bandwidth of the config's queues)."""
    te_us = rep.engine_active_cycles.get("tensor", 0) / (cfg.tensor_ghz * 1e3)
    dma_us = floor_bytes / (cfg.dma_queues * cfg.dma_queue_bandwidth_gbps * 1e3)
    return max(te_us, dma_us)


def long_row_share(program) -> float:
    """Share of the program's DMA bytes moved in rows of >= 2 KiB per partition (the NKI
    guide's recommended minimum; issue 5's coalescing target)."""
    from target import isa
    from target.cost import dma_bytes, dma_chunk_bytes

    tot = big = 0
    for _, ins in program.streams:
        for i in ins:
            if isinstance(i, isa.DmaCopy):
                b = dma_bytes(i)
                tot += b
                big += b if dma_chunk_bytes(i) >= 2048 else 0
    return big / tot if tot else 1.0


def run_one(name, batch, cfg, dtype):
    import numpy as np
    from tvm_poly.driver import compile_graph
    from tvm_poly.frontend import load_onnx
    from tvm_poly.graph import graph_from_relax
    from tvm_poly.models import light_model, random_inputs, reference_outputs, rel_err, input_specs

    model = light_model(name, seed=0, logits=True)
    if batch != 1:  # the light models have a fixed batch of 1: re-batch (inputs, outputs, Reshape)
        from tvm_poly.frontend import with_batch
        model = with_batch(model, batch)
    shapes = {n: (batch,) + tuple(s[1:]) for n, s, _ in input_specs(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = load_onnx(model)
    g = graph_from_relax(mod)
    inputs = random_inputs(model, seed=0, shapes=shapes)
    ref = list(reference_outputs(model, inputs).values())[0]
    res = {}
    for planner in ("per-op", "poly"):
        t0 = time.perf_counter()
        cp = compile_graph(g, cfg, planner=planner, dtype=dtype)
        tc = time.perf_counter() - t0
        outs, rep = cp.run(inputs, check=False)
        err = rel_err(outs[g.outputs[0]], ref)
        res[planner] = dict(hbm=rep.hbm_read_bytes + rep.hbm_write_bytes, us=rep.latency_us,
                            stall=rep.dma_stall_cycles, err=err, compile=tc, plan=cp.plan, rep=rep,
                            long_rows=long_row_share(cp.program))
    p = res["poly"]["plan"]
    floor = p.get("compulsory_bytes")
    a, b = res["per-op"], res["poly"]
    bound = latency_bound(b["rep"], floor, cp.config)
    row = (f"| {name} | {batch} | {cfg} | {dtype} | {_mb(a['hbm'])} | {_mb(b['hbm'])} | {_mb(floor)} | "
           f"{a['hbm'] / floor:.2f} | {b['hbm'] / floor:.2f} | {a['hbm'] / b['hbm']:.2f} | {a['us']:.0f} | "
           f"{b['us']:.0f} | {bound:.0f} | {b['us'] / bound:.2f} | {b['stall']} | {100 * b['long_rows']:.0f}% | "
           f"{_mb(p.get('spill_save_bytes'))}/{_mb(p.get('spill_reload_bytes'))} | "
           f"{p.get('planner_seconds'):.1f} | {a['err']:.1e} / {b['err']:.1e} |")
    return row, res


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--configs", nargs="*", default=["inf2", "inf1"])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--out", default="results/bench_planners.md")
    a = ap.parse_args(argv)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    new = not os.path.exists(a.out)
    with open(a.out, "a") as f:
        if new:
            f.write(INTRO + "\n" + HEADER + "\n")
            f.write("|" + "---|" * (HEADER.count("|") - 1) + "\n")
        print(HEADER, flush=True)
        for m in a.models:
            for bt in a.batches:
                for cfg in a.configs:
                    for dt in a.dtypes:
                        try:
                            row, _ = run_one(m, bt, cfg, dt)
                        except Exception as e:  # noqa: BLE001 - report and go on
                            msg = " ".join(str(e).split())[:120]
                            row = f"| {m} | {bt} | {cfg} | {dt} | failed: {type(e).__name__}: {msg} |"
                        print(row, flush=True)
                        f.write(row + "\n")
                        f.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
