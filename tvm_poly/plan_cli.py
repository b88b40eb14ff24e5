"""``tvm-poly plan MODEL.onnx [--target polyinf[/inf1]] [--batch N] [--dtype ..] [--planner poly]``

Prints the memory plan: per operator group (kernel) what it reads (resident in SBUF or loaded
from HBM, with bytes), what it writes (resident, or stored to HBM), which tensors were spilled and
why, and the SBUF map at the peak with the buffers live there.  Tensors that could not be kept
on chip are named with the reason (capacity: the buffers live at that point).

The plan printed is the one the compiler keeps: for the poly planner the driver may lower
alternative plans beside the planner's first one and keep the better program
(``driver.compile_graph``); the last lines say which were tried.  ``--planner-only`` prints the
planner's first plan without lowering anything (faster).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _config_of(target: str) -> str:
    t = target.strip()
    if t.startswith("polyinf"):
        rest = t[len("polyinf"):].lstrip("/")
        return rest or "inf2"
    return t


def _fmt_b(n: int) -> str:
    n = int(n)
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def format_plan(graph, plan, it: int) -> str:
    tm = graph.tensor_map
    root = plan.alias_root()

    place = {t.name: t for t in plan.tensors}

    def where(n):
        r = root(n)
        p = place.get(r)
        t = tm[r]
        nb = int(np.prod(t.shape)) * (4 if t.kind in ("input", "output") or r in graph.outputs else it)
        if t.is_constant or t.kind == "weight":
            return "weight", nb
        return ("sbuf" if p is not None and p.placement == "sbuf" else "hbm"), nb

    info = dict(getattr(plan, "info", ()) or ())
    lines = [f"plan by {plan.planner} ({plan.dtype}): {len(plan.groups)} kernels"]
    tot = {"loaded": 0, "stored": 0, "resident": 0}
    for gi, g in enumerate(plan.groups):
        res_in, loads, w = [], [], 0
        sub = g.param("images")
        rows = g.param("rows")  # spatial tiling: this step computes output rows [r0, r1)
        win = {n: (a, b) for n, a, b in g.param("in_rows", ())}
        win[g.output] = rows

        def where_g(n):  # bytes of this step's sub-batch / row window
            k, nb = where(n)
            shp = tm[root(n)].shape
            if sub and k != "weight" and len(shp) and int(shp[0]) >= sub[1]:
                nb = nb * sub[1] // int(shp[0])
            if rows and k != "weight" and win.get(n) and len(shp) == 4:
                a, b = win[n]
                nb = nb * (b - a) // int(shp[2])
            return k, nb
        for i in g.inputs:
            k, nb = where_g(i)
            if k == "sbuf":
                res_in.append(i)
            elif k == "weight":
                w += nb
            else:
                loads.append(f"{i} {_fmt_b(nb)}")
                tot["loaded"] += nb
        for key in ("bn", "bias"):
            v = g.param(key)
            for c in (v if isinstance(v, tuple) else (v,) if v else ()):
                if c in tm:
                    w += int(np.prod(tm[c].shape)) * 4
        k, nb = where_g(g.output)
        out = f"{g.output} resident" if k == "sbuf" else f"{g.output} stored {_fmt_b(nb)}"
        if k == "sbuf":
            tot["resident"] += nb
        else:
            tot["stored"] += nb
        tiles = f"images {sub[0]}..{sub[0] + sub[1] - 1}" if sub else "whole tensor"
        if rows:
            band = place.get(root(g.output))
            tiles = f"rows {rows[0]}..{rows[1] - 1}" + (
                f" (band buffer from row {g.param('origin')})" if band is not None and band.band_rows else "")
        per = "per sub-batch" if sub else "per band" if rows else "once"
        lines.append(f"[{gi:3d}] {g.tag:<26} tiles: {tiles} | resident in: {', '.join(res_in) or '-'}"
                     f" | loaded: {', '.join(loads) or '-'} | weights {_fmt_b(w)} {per} | out: {out}")
    lines.append(f"totals: activations loaded {_fmt_b(tot['loaded'])}, stored {_fmt_b(tot['stored'])}, "
                 f"kept resident {_fmt_b(tot['resident'])}")
    if info:
        lines.append(f"compulsory traffic {_fmt_b(info.get('compulsory_bytes', 0))}; "
                     f"spill save {_fmt_b(info.get('spill_save_bytes', 0))}, reload "
                     f"{_fmt_b(info.get('spill_reload_bytes', 0))}; planner {info.get('planner_seconds')} s; "
                     f"polyhedral model: {'yes' if info.get('polyhedral_model') else 'no (whole-tensor view)'}")
    for seg in info.get("batch_segments", ()) or ():
        lo, hi, k = seg
        lines.append(f"batch tiling: kernels {lo}..{hi - 1} run per sub-batch of {k} images")
    for lo, hi, B in info.get("row_segments", ()) or ():
        lines.append(f"spatial tiling: kernels {lo}..{hi - 1} run in {B} row bands (halo rows stay in band buffers)")
    alloc = getattr(plan, "_allocation", None)
    kernels = getattr(plan, "_kernels", None) or tuple(g.tag for g in plan.groups)
    if alloc is not None and alloc.slots:
        t = alloc.peak_time
        lines.append(f"SBUF map at peak (kernel {t}: {kernels[t]}), resident extent "
                     f"{_fmt_b(alloc.extent_at(t))} per partition of {_fmt_b(alloc.size)}, capacity there "
                     f"{_fmt_b(alloc.capacity[t])}, fragmentation {alloc.fragmentation:.1%}:")
        for b in sorted(alloc.live_at(t), key=lambda b: alloc.offset(b.name)):
            off = alloc.offset(b.name)
            band = place.get(b.name)
            lines.append(f"    [{off:>6}, {off + alloc.slots[b.name][1]:>6}) x p[0:{b.partitions}]  {b.name}"
                         f"  live kernels {b.start}..{b.end}"
                         + (f"  (band of {band.band_rows} rows)" if band is not None and band.band_rows else ""))
    spilled = info.get("spilled", ())
    if spilled:
        lines.append("spilled to HBM (did not fit):")
        for n, why in spilled:
            lines.append(f"    {n}: {why}")
    nr = info.get("not_resident", ())
    if nr:
        lines.append(f"kept in HBM by rule ({len(nr)} tensors):")
        for n, why in nr[:40]:
            lines.append(f"    {n}: {why}")
        if len(nr) > 40:
            lines.append(f"    ... {len(nr) - 40} more")
    for note in getattr(plan, "notes", ()) or ():
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tvm-poly plan", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX model file or a bundled light model name (resnet50, ...)")
    ap.add_argument("--target", default="polyinf", help="polyinf (inf2) or polyinf/inf1")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--planner", default="poly")
    ap.add_argument("--planner-only", action="store_true",
                    help="the planner's first plan, without the compiler's alternatives (no lowering)")
    a = ap.parse_args(argv)
    try:
        from target.config import load_config
        from .frontend import load_onnx
        from .graph import graph_from_relax
        from .models import model_path
        from .polymodel import dtype_bytes
        from .planners import get_planner

        cfg = load_config(_config_of(a.target))
        g = graph_from_relax(load_onnx(model_path(a.model), batch=a.batch))
        alternatives = ()
        if a.planner_only:
            plan = get_planner(a.planner)(g, cfg, a.dtype)
        else:
            import warnings

            from .driver import compile_graph
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cp = compile_graph(g, cfg, planner=a.planner, dtype=a.dtype)
            plan, alternatives = cp.plan, cp.alternatives
    except Exception as e:  # noqa: BLE001 - one-line error for the CLI
        print(f"tvm-poly plan: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(format_plan(getattr(plan, "graph", None) or g, plan, dtype_bytes(a.dtype)))
    if len(alternatives) > 1:
        print("plans the compiler lowered (estimated end, HBM bytes; the kept one is printed above):")
        for label, end_us, hbm, kept in alternatives:
            print(f"    {label:34s} {end_us:10.1f} us {hbm / 1e6:9.2f} MB" + ("  <- kept" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
