#!/usr/bin/env python
"""The nine ONNX light models on polyinf: per model, compile time, simulate time, error vs
onnxruntime (logits, seeded random weights), cycles, latency and HBM traffic.

    python scripts/check_models.py [--dtype float32|bfloat16] [--target polyinf] [MODEL ...]

Compiles with ``tvm.compile(mod, target=...)`` (the user's path); "simulate" is the VM run
(the simulated NeuronCore plus any host operators)."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    import tvm
    from tvm import relax

    import tvm_poly
    from tvm_poly import frontend, models, pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(models.NAMES))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--target", default="polyinf")
    ap.add_argument("--planner", default="per-op")
    a = ap.parse_args(argv)
    tol = {"float32": 1e-3, "bfloat16": 2e-2}[a.dtype]
    hdr = (f"{'model':<14}{'compile s':>10}{'sim s':>8}{'rel err':>10}{'cycles':>12}{'latency us':>12}"
           f"{'HBM rd MB':>11}{'HBM wr MB':>11}{'DMAs':>8}{'host ops':>9}  ok")
    print(f"target={a.target} dtype={a.dtype} planner={a.planner}")
    print(hdr)
    print("-" * len(hdr))
    bad = 0
    for name in a.models:
        try:
            model = models.light_model(name, seed=0, logits=True)
            x = models.random_inputs(model, seed=0)
            (_, ref), = models.reference_outputs(model, x).items()
            mod = frontend.load_onnx(model)
            t0 = time.perf_counter()
            with tvm_poly.options(planner=a.planner, dtype=a.dtype):
                ex = tvm.compile(mod, target=a.target)
            t1 = time.perf_counter()
            info = pipeline.last_compile()
            vm = relax.VirtualMachine(ex, tvm.cpu())
            (_, xv), = x.items()
            t2 = time.perf_counter()
            out = vm["main"](tvm.runtime.tensor(xv)).numpy()
            t3 = time.perf_counter()
            rep = tvm_poly.last_report().to_dict()
            err = models.rel_err(out, ref)
            ok = err <= tol and not info["host_ops"]
            bad += not ok
            print(f"{name:<14}{t1 - t0:>10.1f}{t3 - t2:>8.1f}{err:>10.2e}{rep['cycles']:>12,}"
                  f"{rep['latency_us']:>12,.0f}{rep['hbm_read_bytes'] / 1e6:>11.1f}"
                  f"{rep['hbm_write_bytes'] / 1e6:>11.1f}{rep['dma_transfer_count']:>8}"
                  f"{len(info['host_ops']):>9}  {'yes' if ok else 'NO'}", flush=True)
        except Exception as e:  # keep going: one line per model
            bad += 1
            print(f"{name:<14} FAILED {type(e).__name__}: {' '.join(str(e).split())[:150]}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
