#!/usr/bin/env python
"""Where a model's simulated latency goes: the probes behind notes/planner.md's latency analysis.

    python scripts/latency_profile.py resnet50 [--config inf2] [--dtype bfloat16] [--batch 1]
                                      [--planner poly] [--bucket 10] [--gaps 0.5]

Compiles one light model (seeded random weights, as the benchmarks do), simulates it with a trace
and prints:

* per time bucket: each engine's busy share, the DMA queues' mean busy share and the kernels
  (tags) that took most of the bucket;
* Tensor-engine gaps longer than ``--gaps`` us and the instruction that ended right before the
  gap closed (usually what the PE waited for);
* DMA work: summed busy time of the queues / number of queues (the latency the DMA alone needs),
  split into HBM<->SBUF and SBUF->SBUF copies, and when each queue finishes (a ragged end is
  lost time);
* per kernel: first and last compute instruction and the DMA span of its tag.

* DMA idle time: per queue, the gaps between its transfers by what the transfer after the gap
  waited for (the semaphore wait that delayed it: e.g. a matmul still reading the buffer it
  overwrites = capacity), and the time after the queue's last transfer.

What-ifs (the cost model changed for both the emitter's clock and the simulator, so the lowering
search sees the same costs):

* ``--free-concat-copies``: the on-chip (SBUF->SBUF) copies of concat kernels cost nothing, i.e.
  the latency a layout that never copies a concat input would reach (notes/planner.md, session 7);
* ``--trigger-latency-scale F``: every DMA's fixed trigger latency (config ``dma.latency_us``)
  times F (0: transfers cost only their bytes);
* ``--free-kernel TAG`` (repeatable): the DMAs of kernel TAG (e.g. ResNet-50's stem ``lv``) cost
  nothing.
"""
from __future__ import annotations

import argparse
import collections
import sys
import warnings


def trace_events(model, config, dtype, batch, planner):
    from tvm_poly.bench import load_graph
    from tvm_poly.driver import compile_graph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g, _, inputs = load_graph(model, batch)
        cp = compile_graph(g, config, planner=planner, dtype=dtype)
        _, rep = cp.run(inputs, check=False, trace=True)
    trace = cp._last.trace
    names = {e["tid"]: e["args"]["name"] for e in trace if e.get("name") == "thread_name"}
    ev = [dict(e, engine=names[e["tid"]]) for e in trace if e.get("ph") == "X"]
    flows = [e for e in trace if e.get("cat") == "semaphore" and e.get("ph") in ("s", "f")]
    return rep, ev, flows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--config", default="inf2")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--planner", default="poly")
    ap.add_argument("--bucket", type=float, default=10.0, help="us per time bucket")
    ap.add_argument("--gaps", type=float, default=0.5, help="report Tensor-engine gaps longer than this (us)")
    ap.add_argument("--free-concat-copies", action="store_true",
                    help="what-if: concat kernels' SBUF->SBUF copies cost nothing")
    ap.add_argument("--trigger-latency-scale", type=float, default=None, metavar="F",
                    help="what-if: each DMA's trigger latency times F")
    ap.add_argument("--free-kernel", action="append", default=[], metavar="TAG",
                    help="what-if: the DMAs of kernel TAG cost nothing (repeatable)")
    a = ap.parse_args(argv)
    if a.trigger_latency_scale is not None or a.free_kernel:
        from target import cost
        base = cost.dma_ticks
        scale, free = a.trigger_latency_scale, set(a.free_kernel)

        def what_if(ins, cfg):
            if ins.tag.split(":")[0] in free:
                return 1
            t = base(ins, cfg)
            if scale is not None:
                lat = int(round(cfg.dma_latency_us * 1e-6 * cfg.tick_khz * 1000))
                t = max(1, t - lat + int(round(lat * scale)))
            return t
        cost.dma_ticks = what_if
    if a.free_concat_copies:
        from target import cost, isa
        ticks = cost.dma_ticks

        def free_concat(ins, cfg):
            if ":concat" in ins.tag and ins.src.mem == isa.Mem.SBUF and ins.dst.mem == isa.Mem.SBUF:
                return 1
            return ticks(ins, cfg)
        cost.dma_ticks = free_concat

    rep, ev, flows = trace_events(a.model, a.config, a.dtype, a.batch, a.planner)
    print(f"{a.model} b{a.batch} {a.dtype} {a.config} {a.planner}: {rep.latency_us:.1f} us, "
          f"HBM {(rep.hbm_read_bytes + rep.hbm_write_bytes) / 1e6:.2f} MB, {rep.num_instructions} instructions")
    queues = sorted({e["engine"] for e in ev if e["engine"].startswith("dma")}, key=lambda q: int(q[3:]))
    nq = max(1, len(queues))

    # ---- busy share per bucket
    BK = a.bucket
    busy = collections.defaultdict(lambda: collections.defaultdict(float))
    tags = collections.defaultdict(collections.Counter)
    for e in ev:
        key = "dma" if e["engine"].startswith("dma") else e["engine"]
        t, end = e["ts"], e["ts"] + e["dur"]
        while t < end:
            b = int(t // BK)
            stop = min(end, (b + 1) * BK)
            busy[b][key] += stop - t
            tags[b][e["cat"].split(":")[0]] += stop - t
            t = stop
    print(f"\nbusy share per {BK:g} us (dma = mean over {nq} queues)")
    for b in sorted(busy):
        row = busy[b]
        top = ", ".join(k for k, _ in tags[b].most_common(3))
        print(f"{b * BK:7.0f} us " + " ".join(f"{k}={row.get(k, 0) / BK * 100:4.0f}%"
                                             for k in ("tensor", "vector", "scalar", "gpsimd"))
              + f" dma={row.get('dma', 0) / BK / nq * 100:4.0f}%  {top}")

    # ---- Tensor-engine gaps
    te = sorted((e for e in ev if e["engine"] == "tensor"), key=lambda e: e["ts"])
    ends = sorted(((e["ts"] + e["dur"], e) for e in ev), key=lambda x: x[0])
    import bisect
    keys = [x[0] for x in ends]
    total = 0.0
    print(f"\nTensor-engine gaps > {a.gaps:g} us (what ended right before the next matmul started)")
    for x, y in zip(te, te[1:]):
        gap = y["ts"] - (x["ts"] + x["dur"])
        if gap <= a.gaps:
            continue
        total += gap
        i = bisect.bisect_right(keys, y["ts"] + 1e-6) - 1
        before = ends[i][1] if i >= 0 else None
        print(f"  {gap:7.2f} us at {x['ts'] + x['dur']:8.2f}: {x['name'][:30]:30s} -> {y['name'][:30]:30s}"
              + (f"  (last done: {before['engine']} {before['name'][:30]})" if before is not None else ""))
    print(f"  total {total:.1f} us")

    # ---- DMA work
    per_q = collections.defaultdict(list)
    kinds = collections.Counter()
    for e in ev:
        if not e["engine"].startswith("dma"):
            continue
        per_q[e["engine"]].append((e["ts"], e["ts"] + e["dur"]))
        ins = e["args"]["instr"]
        kinds["SBUF->SBUF" if "src=sbuf" in ins and "dst=sbuf" in ins else "HBM<->SBUF"] += e["dur"]
    work = sum(b - s for v in per_q.values() for s, b in v)
    print(f"\nDMA work: summed queue busy time / {nq} = {work / nq:.1f} us "
          + ", ".join(f"{k} {v / nq:.1f} us" for k, v in kinds.items()))
    fin = sorted((max(b for _, b in v), q) for q, v in per_q.items())
    if fin:
        print(f"queues finish between {fin[0][0]:.1f} and {fin[-1][0]:.1f} us: "
              + ", ".join(f"{q} {t:.1f}" for t, q in fin))

    # ---- DMA idle time by what ended it
    ev_at = {(e["tid"], round(e["ts"], 4)): e for e in ev}
    starts = {f["id"]: f for f in flows if f["ph"] == "s"}
    delayed_by = collections.defaultdict(list)  # DMA event -> events whose signal released it
    for f in flows:
        if f["ph"] == "f" and f["id"] in starts:
            s = starts[f["id"]]
            src = ev_at.get((s["tid"], round(s["ts"], 4)))
            if src is not None:
                delayed_by[(f["tid"], round(f["ts"], 4))].append(src)
    idle = collections.Counter()
    for q in queues:
        t = 0.0
        for e in sorted((e for e in ev if e["engine"] == q), key=lambda e: e["ts"]):
            if e["ts"] - t > 1e-3:
                srcs = delayed_by.get((e["tid"], round(e["ts"], 4)), [])
                why = ", ".join(sorted({f"{'dma' if s['engine'].startswith('dma') else s['engine']} "
                                        f"{s['name']}" for s in srcs})) or "(no wait: issue order)"
                idle[(e["name"], why)] += e["ts"] - t
            t = e["ts"] + e["dur"]
        idle[("after the queue's last transfer", "")] += rep.latency_us - t
    print(f"\nDMA idle per queue: {sum(idle.values()) / nq:.1f} us; largest causes "
          f"(transfer after the gap <- what released it):")
    for (what, why), v in idle.most_common(12):
        if v / nq >= 0.05:
            print(f"  {v / nq:6.2f} us  {what}" + (f"  <- {why}" if why else ""))

    # ---- per kernel spans
    span, dspan = {}, {}
    for e in ev:
        d = dspan if e["engine"].startswith("dma") else span
        lo, hi = d.get(e["cat"], (float("inf"), 0.0))
        d[e["cat"]] = (min(lo, e["ts"]), max(hi, e["ts"] + e["dur"]))
    print("\nper kernel: compute span, DMA span (us)")
    for t, (lo, hi) in sorted(span.items(), key=lambda kv: kv[1][0]):
        dlo, dhi = dspan.get(t, (0.0, 0.0))
        print(f"  {t:18s} {lo:8.1f} - {hi:8.1f}   dma {dlo:8.1f} - {dhi:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
