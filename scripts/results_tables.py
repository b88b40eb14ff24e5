#!/usr/bin/env python
"""Print results/README.md's planner tables from a `tvm-poly bench` JSON (no re-running).

    python scripts/results_tables.py results/bench/bench.json [--dtype bfloat16] [--config inf2]

One row per model: compulsory floor, HBM MB (x floor) per planner, then simulated cycles per
planner, exactly as stored in the bench cells (tvm_poly/bench.py, schema tvm-poly-bench/1).
"""
from __future__ import annotations

import argparse
import json
import sys

PLANNERS = ("per-op", "fused", "tuned", "poly")


def table(cells, dtype, config, batch=1) -> str:
    rows, order = {}, []
    for c in cells.values():
        if c["dtype"] != dtype or c["config"] != config or c["batch"] != batch or c["status"] != "ok":
            continue
        if c["model"] not in rows:
            order.append(c["model"])
        rows.setdefault(c["model"], {})[c["planner"]] = c
    out = [f"| model | floor MB | {' | '.join(PLANNERS)} | cycles {' | '.join(PLANNERS)} |",
           "|" + "---|" * (2 + 2 * len(PLANNERS))]
    for m in order:
        r = rows[m]
        floor = next(iter(r.values()))["compulsory_bytes"]
        mb = [f"{r[p]['hbm_bytes'] / 1e6:.1f} ({r[p]['floor_ratio']:.2f})" if p in r else "-" for p in PLANNERS]
        cyc = [f"{r[p]['cycles']:,}" if p in r else "-" for p in PLANNERS]
        out.append(f"| {m} | {floor / 1e6:.1f} | " + " | ".join(mb) + " | " + " | ".join(cyc) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json")
    ap.add_argument("--dtype", default=None, help="default: every dtype in the file")
    ap.add_argument("--config", default=None, help="default: every config in the file")
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args(argv)
    d = json.load(open(a.bench_json))
    cells = d["cells"]
    combos = sorted({(c["config"], c["dtype"]) for c in cells.values()})
    for cfg, dt in combos:
        if (a.config and cfg != a.config) or (a.dtype and dt != a.dtype):
            continue
        print(f"### {cfg}, {dt}, batch {a.batch}: HBM MB (x compulsory floor) and simulated cycles\n")
        print(table(cells, dt, cfg, a.batch) + "\n")
    print(f"(from {a.bench_json}, git {d.get('git', '?')}, updated {d.get('updated', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
