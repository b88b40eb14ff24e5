"""Chrome / Perfetto trace JSON (open in ui.perfetto.dev or chrome://tracing).

One process ("NeuronCore <config>"), one thread (track) per engine and per DMA queue, one complete
("X") event per instruction spanning its busy time, with the instruction text, tag, and the time
its results become visible (``done_us``) in ``args``.  Flow arrows ("s"/"f" events, category
``semaphore``) go from the instruction whose signal released a waiting instruction to that
instruction, for the waits that actually delayed it.
"""
from __future__ import annotations

import json

from .isa import ENGINES


def build_trace(sim, timeline) -> list:
    cfg = sim.cfg
    tick_us = 1e3 / cfg.tick_khz  # us per tick
    names = sim.stream_names
    order = {n: k for k, n in enumerate(ENGINES)}
    tid = {n: (order[n] if n in order else 10 + int(n[3:])) for n in names}
    ev = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0,
           "args": {"name": f"NeuronCore {cfg.name} ({sim.p.name})"}}]
    for n in names:
        ev.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid[n], "args": {"name": n}})
        ev.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid[n],
                   "args": {"sort_index": tid[n]}})
    from .program_text import format_instr, _OPNAME
    for s, i, start, end, done in timeline:
        d = sim.decoded[s][i]
        ev.append({"name": (d.tag + ":" if d.tag else "") + _OPNAME[type(d.ins)], "cat": d.tag or "untagged",
                   "ph": "X", "pid": 1, "tid": tid[names[s]], "ts": start * tick_us,
                   "dur": (end - start) * tick_us,
                   "args": {"index": i, "instr": format_instr(d.ins), "done_us": done * tick_us,
                            "cycles": d.cycles}})
    where = {(s, i): (start, done) for s, i, start, end, done in timeline}
    for k, (ss, si, ws, wi) in enumerate(getattr(sim, "flows", ())):
        src = where.get((ss, si))
        dst = where.get((ws, wi))
        if src is None or dst is None:
            continue
        ev.append({"name": "semaphore", "cat": "semaphore", "ph": "s", "id": k, "pid": 1, "tid": tid[names[ss]],
                   "ts": src[0] * tick_us})
        ev.append({"name": "semaphore", "cat": "semaphore", "ph": "f", "bp": "e", "id": k, "pid": 1,
                   "tid": tid[names[ws]], "ts": dst[0] * tick_us})
    return ev


def write_trace(res, path: str) -> None:
    """Write ``res.trace`` (simulate(..., trace=True)) as a Chrome trace JSON file."""
    if res.trace is None:
        raise ValueError("simulate(..., trace=True) was not used: the result has no trace")
    with open(path, "w") as f:
        json.dump({"traceEvents": res.trace, "displayTimeUnit": "ns"}, f)
