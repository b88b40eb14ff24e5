#!/usr/bin/env python3
"""Time the whole-model polyhedral build of the nine ONNX light models, step by step.

Steps: ``from_onnx`` (Relax import), ``legalize`` (relax.transform.LegalizeOps), ``tir walk``
(PrimFunc templates: loops, blocks, affine indices), ``isl build`` (domains, access relations),
``relax walk`` (bindings, tensor identity), ``flow`` (value-based flow dependences of every
array), ``liveness`` (first write / last read of every array). Prints one line per model with
its slowest step, and the slowest step overall. ``build`` is the wall time of all steps but
``from_onnx``; ``cpu`` the process CPU time of the same (lower than wall on a busy machine).

    .venv/bin/python scripts/bench_poly_build.py [--models resnet50,vgg19] [--no-flow] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODELS = ["resnet50", "vgg19", "inception_v1", "inception_v2", "densenet121", "squeezenet",
          "shufflenet", "bvlc_alexnet", "zfnet512"]


def bench(name: str, with_flow: bool = True) -> dict:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_poly import dataflow
    from tvm_poly.extract import LAST_TIMES, extract

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        f"light_{name}.onnx")
    t0 = time.perf_counter()
    mod = from_onnx(onnx.load(path))
    c0 = time.process_time()
    steps = {"from_onnx": time.perf_counter() - t0}
    model = extract(mod)
    steps.update(LAST_TIMES.steps)
    if with_flow:
        t = time.perf_counter()
        fl = dataflow.flow(model)
        fl.per_array
        steps["flow"] = time.perf_counter() - t
        t = time.perf_counter()
        dataflow.liveness_table(model)
        steps["liveness"] = time.perf_counter() - t
    cpu = time.process_time() - c0
    build = sum(v for k, v in steps.items() if k != "from_onnx")
    return {"model": name, "ops": len(model.ops), "statements": len(model.statements),
            "arrays": len(model.arrays), "macs": model.macs(),
            "diagnostics": len(model.diagnostics), "steps": steps, "build_s": build, "cpu_s": cpu,
            "slowest": max(steps, key=steps.get)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--no-flow", action="store_true", help="skip dataflow and liveness")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = [bench(n, not args.no_flow) for n in args.models.split(",") if n]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    names = list(rows[0]["steps"])
    print(f"{'model':<14}{'ops':>5}{'stmts':>7}{'MACs':>16}  " +
          "".join(f"{n:>11}" for n in names) + f"{'build':>9}{'cpu':>8}  slowest")
    for r in rows:
        print(f"{r['model']:<14}{r['ops']:>5}{r['statements']:>7}{r['macs']:>16,}  " +
              "".join(f"{r['steps'].get(n, 0.0):>10.2f}s" for n in names) +
              f"{r['build_s']:>8.2f}s{r['cpu_s']:>7.2f}s  {r['slowest']}")
    total = {n: sum(r["steps"].get(n, 0.0) for r in rows) for n in names}
    worst = max(rows, key=lambda r: r["build_s"])
    print(f"slowest model: {worst['model']} ({worst['build_s']:.2f}s, slowest step "
          f"{worst['slowest']}); slowest step over all models: {max(total, key=total.get)} "
          f"({max(total.values()):.2f}s of {sum(total.values()):.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
