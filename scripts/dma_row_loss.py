#!/usr/bin/env python
"""DMA queue time lost to short rows, per kernel: where a program's transfers run below full rate.

    python scripts/dma_row_loss.py MODEL:BATCH:CONFIG:DTYPE[:PLANNER] ... [--top 6]

e.g. ``python scripts/dma_row_loss.py bvlc_alexnet:8:inf2:bfloat16 squeezenet:8:inf1:float32:per-op``.
Compiles each cell (light ONNX model, seeded random weights; no simulation) and, for every DMA of
the program, charges ``bytes / (queue bandwidth x efficiency(row)) - bytes / queue bandwidth``:
the time the config's efficiency curve adds over a full-rate transfer of the same bytes (the
trigger latency is not counted).  Prints the total per queue and the kernels (tag, HBM or
on-chip) that lose most, with their bytes and the row sizes (contiguous bytes per partition row,
``target.cost.dma_chunk_bytes``) they move in.

Session 12 found two codegen faults with it, transfers whose every element was its own DMA row:
a matmul's A^T at batch 8 (AlexNet b8 inf2 bf16: 9.2 -> 0.85 ms) and a global mean's 4-byte
result rows (SqueezeNet b8 inf2 bf16: 938 -> 767 us).
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings


def row_loss(program, cfg):
    """{(tag, "hbm" | "sbuf"): [lost us, bytes, {row sizes}]} over the program's DMAs."""
    from target import isa
    from target.cost import dma_bytes, dma_chunk_bytes, dma_efficiency

    bw = cfg.dma_queue_bandwidth_gbps * 1e3  # bytes per us
    out = collections.defaultdict(lambda: [0.0, 0, set()])
    for _, stream in program.streams:
        for ins in stream:
            if not isinstance(ins, isa.DmaCopy):
                continue
            row, nbytes = dma_chunk_bytes(ins), dma_bytes(ins)
            eff = dma_efficiency(row, cfg.dma_efficiency_curve)
            key = (ins.tag, "hbm" if isa.Mem.HBM in (ins.src.mem, ins.dst.mem) else "sbuf")
            rec = out[key]
            rec[0] += nbytes / bw / eff - nbytes / bw
            rec[1] += nbytes
            rec[2].add(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", help="MODEL:BATCH:CONFIG:DTYPE[:PLANNER] (planner default poly)")
    ap.add_argument("--top", type=int, default=6)
    a = ap.parse_args(argv)
    from target.config import load_config
    from tvm_poly.bench import load_graph
    from tvm_poly.driver import compile_graph

    for cell in a.cells:
        parts = cell.split(":")
        if len(parts) not in (4, 5):
            print(f"error: cell {cell!r}: expected MODEL:BATCH:CONFIG:DTYPE[:PLANNER]", file=sys.stderr)
            return 2
        model, batch, config, dtype = parts[:4]
        planner = parts[4] if len(parts) == 5 else "poly"
        cfg = load_config(config)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g, _, _ = load_graph(model, int(batch))
            cp = compile_graph(g, config, planner=planner, dtype=dtype)
        loss = row_loss(cp.program, cfg)
        nq = cfg.dma_queues
        total = sum(v[0] for v in loss.values()) / nq
        print(f"== {cell}: {total:.1f} us per queue lost to short rows (compiled in {time.perf_counter() - t0:.0f} s)")
        for (tag, kind), (us, nbytes, rows) in sorted(loss.items(), key=lambda kv: -kv[1][0])[:a.top]:
            print(f"   {tag:28s} {kind:4s} {us / nq:9.1f} us/queue  {nbytes / 1e6:8.2f} MB  rows {sorted(rows)[:4]} B")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
