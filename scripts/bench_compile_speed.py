#!/usr/bin/env python
"""Compile and simulate time of a light model with polyinf vs tvm.compile(target="llvm").

Side by side in one process on this machine (default: ResNet-50, seeded random weights):

* polyinf: ``tvm.compile(mod, target="polyinf")`` and one VM run (= the simulation);
* llvm:    ``tvm.compile(mod, target="llvm")`` and one VM run.

Both start from the same Relax module (ONNX import time is reported separately).  Prints a
Markdown table and, with ``--json OUT``, writes the numbers.

    python scripts/bench_compile_speed.py [--model resnet50] [--dtype float32] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--target", default="polyinf")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    import numpy as np
    import tvm
    from tvm import relax

    import tvm_poly
    from tvm_poly import frontend, models, pipeline
    import_tvm_s = time.perf_counter() - t0

    model = models.light_model(args.model, seed=0, logits=True)
    x = models.random_inputs(model, seed=0)
    (in_name, xv), = x.items()
    (out_name, ref), = models.reference_outputs(model, x).items()
    t0 = time.perf_counter()
    mod = frontend.load_onnx(model)
    import_s = time.perf_counter() - t0

    res = {}
    for label, target in (("llvm", "llvm"), ("polyinf", args.target)):
        t0 = time.perf_counter()
        with tvm_poly.options(dtype=args.dtype):
            ex = tvm.compile(mod, target=target)
        compile_s = time.perf_counter() - t0
        vm = relax.VirtualMachine(ex, tvm.cpu())
        inp = tvm.runtime.tensor(xv)
        t0 = time.perf_counter()
        out = vm["main"](inp).numpy()
        run_s = time.perf_counter() - t0
        res[label] = {"compile_s": compile_s, "run_s": run_s,
                      "rel_err": models.rel_err(out, ref)}
        if label == "polyinf":
            info = pipeline.last_compile()
            rep = tvm_poly.last_report().to_dict()
            res[label].update(partition_s=info.get("compile_s"), host_ops=len(info["host_ops"]),
                              segments=len(info["segments"]), cycles=rep["cycles"],
                              latency_us=rep["latency_us"])

    p, l = res["polyinf"], res["llvm"]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"light_{args.model}, {args.dtype}, {when}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores (import tvm+tvm_poly {import_tvm_s:.1f} s, ONNX import {import_s:.2f} s)")
    print()
    print("| | compile (s) | one run (s) | rel. err vs onnxruntime |")
    print("|---|---:|---:|---:|")
    print(f"| tvm.compile target=llvm | {l['compile_s']:.2f} | {l['run_s']:.2f} (CPU) | {l['rel_err']:.1e} |")
    print(f"| tvm.compile target={args.target} | {p['compile_s']:.2f} | {p['run_s']:.2f} (simulated) | {p['rel_err']:.1e} |")
    print(f"| ratio polyinf / llvm | {p['compile_s'] / l['compile_s']:.2f}x | {p['run_s'] / l['run_s']:.2f}x | |")
    print()
    print(f"polyinf: {p['segments']} device segment(s), {p['host_ops']} host op(s); partition + "
          f"codegen {p['partition_s']:.2f} s; simulated latency {p['latency_us']:.0f} us "
          f"({p['cycles']:,} cycles)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "dtype": args.dtype, "date": when, "results": res,
                       "import_tvm_s": import_tvm_s, "onnx_import_s": import_s}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
