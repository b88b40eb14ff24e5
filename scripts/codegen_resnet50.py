"""ResNet-50 (light, seeded random weights, logits) through graph -> per-op plan -> codegen ->
simulator, compared with onnxruntime.  Prints compile/simulate time, cycles, HBM bytes."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--config", default="inf2")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--no-check", action="store_true", help="simulate without the race checker")
    ap.add_argument("--top", type=int, default=0, help="print the N most expensive operators")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_poly.driver import compile_graph
    from tvm_poly.graph import graph_from_relax
    from tvm_poly.models import light_model, random_inputs, reference_outputs, rel_err

    model = light_model(a.model, seed=0, logits=True)
    inputs = random_inputs(model, seed=0)
    ref = reference_outputs(model, inputs)
    t0 = time.perf_counter()
    mod = from_onnx(model)
    t1 = time.perf_counter()
    g = graph_from_relax(mod)
    cp = compile_graph(g, a.config, dtype=a.dtype)
    t2 = time.perf_counter()
    outs, rep = cp.run(inputs, check=not a.no_check)
    t3 = time.perf_counter()
    (oname,) = g.outputs
    refv = list(ref.values())[0]
    err = rel_err(outs[oname], refv)
    d = rep.to_dict()
    res = {"model": a.model, "dtype": a.dtype, "config": a.config, "rel_err": err,
           "from_onnx_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3), "simulate_s": round(t3 - t2, 3),
           "instructions": cp.program.num_instructions, "kernels": len(cp.plan.groups),
           **{k: d[k] for k in ("cycles", "latency_us", "hbm_read_bytes", "hbm_write_bytes",
                                "dma_transfer_count", "dma_stall_cycles", "macs", "mfu", "engine_active_cycles")}}
    print(json.dumps(res, indent=1))
    if a.top:
        rows = sorted(rep.per_tag.items(), key=lambda kv: -max(kv[1].engine_active_cycles.values() or [0]))
        for tag, tr in rows[:a.top]:
            print(f"{tag:24} hbm r/w {tr.hbm_read_bytes:>9}/{tr.hbm_write_bytes:>9} dma {tr.dma_transfer_count:>4} "
                  f"stall {tr.dma_stall_cycles:>8} active {tr.engine_active_cycles}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if err <= (1e-3 if a.dtype == "float32" else 2e-2) else 1


if __name__ == "__main__":
    sys.exit(main())
