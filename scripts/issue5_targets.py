#!/usr/bin/env python
"""Tally issue 5's targets from the table ``scripts/bench_planners.py`` wrote (no re-running).

    python scripts/issue5_targets.py [results/bench_planners.md] [--extract inf1:bfloat16:1]

Prints, per target config: the cells where activations dominate (per-op > 1.5x the compulsory
floor), how many of them ``poly`` moves >= 2x fewer HBM bytes than ``per-op`` in, and the misses
(marked unreachable where per-op is within 2x of the floor);
then how many cells run within 1.15x of their latency bound (and the median / geometric mean /
worst poly/bound), ResNet-50 b1 bf16 inf2 (bytes / floor, latency / bound); with ``--extract`` an
extract table
(model, per-op MB, poly MB, floor MB, per-op/poly, poly us, bound us, poly/bound) for one
target:dtype:batch.
"""
from __future__ import annotations

import argparse
import sys


def read(path):
    rows = []
    head = None
    for line in open(path):
        if not line.startswith("| "):
            continue
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if cols[0] == "model":
            head = cols
            continue
        rows.append(dict(zip(head, cols)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", nargs="?", default="results/bench_planners.md")
    ap.add_argument("--extract", default=None, help="target:dtype:batch, e.g. inf1:bfloat16:1")
    a = ap.parse_args(argv)
    rows = read(a.table)
    for target in sorted({r["target"] for r in rows}, reverse=True):
        dom = [r for r in rows if r["target"] == target and float(r["per-op/floor"]) > 1.5]
        met = [r for r in dom if float(r["per-op/poly"]) >= 2.0]
        print(f"{target}: poly >= 2x fewer HBM bytes than per-op in {len(met)} of {len(dom)} cells "
              f"with per-op > 1.5x floor")
        for r in dom:
            if r not in met:
                # per-op < 2x floor: even a plan at the floor cannot move 2x fewer bytes
                why = " (unreachable: per-op < 2x floor)" if float(r["per-op/floor"]) < 2.0 else ""
                print(f"    miss: {r['model']} b{r['batch']} {r['dtype']}: per-op/poly {r['per-op/poly']} "
                      f"(per-op {r['per-op HBM MB']} MB, poly {r['poly HBM MB']} MB, floor {r['floor MB']} MB){why}")
    pb = sorted(float(r["poly/bound"]) for r in rows)
    if pb:
        import math
        within = sum(x <= 1.15 for x in pb)
        gm = math.exp(sum(math.log(x) for x in pb) / len(pb))
        print(f"latency: poly within 1.15x of its bound in {within} of {len(pb)} cells; poly/bound median "
              f"{pb[len(pb) // 2]:.2f}, geometric mean {gm:.2f}, worst {pb[-1]:.2f}")
    for r in rows:
        if (r["model"], r["batch"], r["target"], r["dtype"]) == ("resnet50", "1", "inf2", "bfloat16"):
            print(f"resnet50 b1 inf2 bf16: poly {r['poly HBM MB']} MB = {r['poly/floor']}x floor; "
                  f"{r['poly us']} us = {r['poly/bound']}x bound ({r['bound us']} us); plan {r['plan s']} s")
    if a.extract:
        target, dtype, batch = a.extract.split(":")
        print("\n| model | per-op MB | poly MB | floor MB | per-op / poly | poly µs | bound µs | poly / bound |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if (r["target"], r["dtype"], r["batch"]) == (target, dtype, batch):
                print(f"| {r['model']} | {r['per-op HBM MB']} | {r['poly HBM MB']} | {r['floor MB']} | "
                      f"{r['per-op/poly']} | {r['poly us']} | {r['bound us']} | {r['poly/bound']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
