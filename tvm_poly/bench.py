"""``tvm-poly bench``: models x planners x configs x dtypes x batch sizes on the simulator.

Every *cell* compiles one model with one planner (``tvm_poly.driver.compile_graph`` on the
model's OpGraph, the path ``tvm.compile(..., target="polyinf")`` takes for a fully offloaded
model) and simulates one inference.  Results go to ``<out>/bench.json`` after every cell, so an
interrupted or extended run resumes: a cell already in the file is not redone (``--force``
redoes it).  ``<out>/bench.md`` is the table and ``<out>/*.png`` the plots.

JSON schema (``schema: tvm-poly-bench/1``)::

    {"schema": "tvm-poly-bench/1", "command": "...", "updated": "...",
     "cells": {"<model>|<planner>|<config>|<dtype>|b<batch>": {
        "model", "planner", "config", "dtype", "batch", "status": "ok" | "error", "error",
        "hbm_read_bytes", "hbm_write_bytes", "hbm_bytes", "compulsory_bytes", "floor_ratio",
        "cycles", "latency_us", "dma_stall_cycles", "macs", "macs_per_hbm_byte", "mfu",
        "sbuf_peak_bytes", "kernels", "instructions", "compile_seconds", "simulate_seconds",
        "rel_err" (vs onnxruntime, fp32 logits; null if --no-reference), "planner_info",
        "lowering" (the LowerOptions kept), "lowerings_tried",
        "per_kernel": [[tag, hbm_read, hbm_write, busiest-engine cycles], ...]}}}

Compulsory floor: graph inputs and outputs once in fp32 (their HBM dtype) plus every weight
once in the compute dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

SCHEMA = "tvm-poly-bench/1"
DEFAULT_PLANNERS = ("per-op", "fused", "tuned", "poly")
COLUMNS = ("model", "planner", "config", "dtype", "batch", "HBM MB", "x floor", "cycles", "latency us",
           "DMA stall cyc", "MACs/HBM B", "compile s", "simulate s")


def cell_key(model, planner, config, dtype, batch) -> str:
    return f"{model}|{planner}|{config}|{dtype}|b{batch}"


def _with_batch(model, batch):
    """A copy of the ONNX model whose real inputs have batch ``batch`` (shape inference redone)."""
    import onnx

    if batch == 1:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for i in m.graph.input:
        if i.name in inits:
            continue
        d = i.type.tensor_type.shape.dim
        if d:
            d[0].ClearField("dim_param")
            d[0].dim_value = batch
    for o in list(m.graph.output) + list(m.graph.value_info):
        d = o.type.tensor_type.shape.dim
        if d:
            d[0].ClearField("dim_value")
            d[0].dim_param = "N"
    del m.graph.value_info[:]
    # Reshape targets written for batch 1 (e.g. [1, 2048] before the classifier) follow the batch
    from onnx import numpy_helper

    inits_by_name = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in inits_by_name:
            t = inits_by_name[n.input[1]]
            shape = numpy_helper.to_array(t).copy()
            if shape.ndim == 1 and shape.size and shape[0] == 1:
                shape[0] = batch
                t.CopyFrom(numpy_helper.from_array(shape, t.name))
    return m


def compulsory_bytes(graph, dtype) -> int:
    from .polymodel import dtype_bytes

    it = dtype_bytes(dtype)
    n = 0
    for t in graph.tensors:
        if t.kind == "input" or t.name in graph.outputs:
            n += t.size * 4
        elif t.kind == "weight":
            n += t.size * it
    return int(n)


_MODEL_CACHE: dict = {}


def load_graph(name: str, batch: int = 1, seed: int = 0):
    """(OpGraph, onnx model, inputs) of a bundled light model (logits, seeded random weights)."""
    key = (name, batch, seed)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    import warnings

    from .frontend import load_onnx
    from .graph import graph_from_relax
    from .models import light_model, random_inputs

    model = _with_batch(light_model(name, seed=seed, logits=True), batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = load_onnx(model)
        g = graph_from_relax(mod)
    inputs = random_inputs(model, seed=seed)
    _MODEL_CACHE.clear()  # one model at a time (ResNet-50 weights are ~100 MB)
    _MODEL_CACHE[key] = (g, model, inputs)
    return _MODEL_CACHE[key]


def run_cell(model, planner, config, dtype, batch, reference=True, keep=None) -> dict:
    """Compile + simulate one cell; never raises (errors become ``status: error``)."""
    from .driver import compile_graph
    from .models import reference_outputs, rel_err

    cell = {"model": model, "planner": planner, "config": config, "dtype": dtype, "batch": batch}
    try:
        g, onnx_model, inputs = load_graph(model, batch)
        host = sorted({n.op for n in g.nodes if not n.supported})
        if host:
            raise RuntimeError(f"operators without a NeuronCore lowering stay on the host: {', '.join(host)}")
        t0 = time.perf_counter()
        cp = compile_graph(g, config, planner=planner, dtype=dtype)
        t1 = time.perf_counter()
        outs, rep = cp.run(inputs, check=False)
        t2 = time.perf_counter()
        d = rep.to_dict()
        hbm = int(rep.hbm_read_bytes + rep.hbm_write_bytes)
        floor = compulsory_bytes(g, dtype)
        err = None
        if reference:
            ref = reference_outputs(onnx_model, inputs)
            errs = [rel_err(outs[o], ref[n]) for o, n in zip(g.outputs, ref) if o in outs]
            err = max(errs) if errs else None
        info = getattr(cp.plan, "info", None)
        if planner == "tuned":
            from .planners import tuned as _t
            info = {"workloads": _t.LAST.get("workloads", {}), "whole_program": _t.LAST.get("whole_program")}
        cell.update({
            "status": "ok", "error": None,
            "hbm_read_bytes": int(rep.hbm_read_bytes), "hbm_write_bytes": int(rep.hbm_write_bytes),
            "hbm_bytes": hbm, "compulsory_bytes": floor, "floor_ratio": round(hbm / max(floor, 1), 4),
            "cycles": int(rep.cycles), "latency_us": float(rep.latency_us),
            "dma_stall_cycles": int(rep.dma_stall_cycles), "macs": int(rep.macs),
            "macs_per_hbm_byte": round(rep.macs / max(hbm, 1), 3), "mfu": float(rep.mfu),
            "sbuf_peak_bytes": int(rep.sbuf_peak_bytes), "kernels": len(cp.plan.groups),
            "instructions": int(rep.num_instructions),
            "compile_seconds": round(t1 - t0, 3), "simulate_seconds": round(t2 - t1, 3),
            "rel_err": err, "planner_info": _jsonable(_short_info(info)),
            "lowering": cp.options.describe() if cp.options else None,
            "lowerings_tried": len(cp.search),
            "per_kernel": [[tag, int(t["hbm_read_bytes"]), int(t["hbm_write_bytes"]),
                            int(max((t.get("engine_active_cycles") or {0: 0}).values()))]
                           for tag, t in d["per_tag"].items()],
        })
        if keep is not None:
            keep["result"] = getattr(cp, "_last", None)
    except Exception as e:  # noqa: BLE001 - a failing cell is a result, not a crash
        cell.update({"status": "error", "error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"})
    return cell


def _short_info(info):
    if not isinstance(info, dict):
        return None
    out = {}
    for k, v in info.items():
        if k in ("tvm_group_nodes",):
            continue
        if isinstance(v, (list, tuple)) and len(v) > 40:
            out[k] = {"count": len(v)}
        else:
            out[k] = v
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    try:
        return float(x)
    except Exception:  # noqa: BLE001
        return str(x)


# ------------------------------------------------------------------ files
def load_results(path) -> dict:
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("schema") == SCHEMA:
            return data
    return {"schema": SCHEMA, "command": "", "cells": {}}


def save_results(path, data):
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def markdown(data, order=None) -> str:
    cells = list(data["cells"].values())
    if order:
        idx = {k: i for i, k in enumerate(order)}
        cells.sort(key=lambda c: idx.get(cell_key(c["model"], c["planner"], c["config"], c["dtype"], c["batch"]), 1 << 30))
    lines = [f"Command: `{data.get('command', '')}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    errors = []
    for c in cells:
        if c.get("status") != "ok":
            errors.append(c)
            continue
        lines.append("| " + " | ".join(str(v) for v in (
            c["model"], c["planner"], c["config"], c["dtype"], c["batch"], f"{c['hbm_bytes'] / 1e6:.1f}",
            f"{c['floor_ratio']:.2f}", f"{c['cycles']:,}", f"{c['latency_us']:.1f}", f"{c['dma_stall_cycles']:,}",
            f"{c['macs_per_hbm_byte']:.1f}", f"{c['compile_seconds']:.1f}", f"{c['simulate_seconds']:.1f}")) + " |")
    if errors:
        lines += ["", "Cells that did not run:", ""]
        for c in errors:
            lines.append(f"- {c['model']} / {c['planner']} / {c['config']} / {c['dtype']} / b{c['batch']}: {c['error']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plots
def plots(data, out_dir, timeline=None, traffic_model=None, traffic_planners=("per-op", "poly")) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    ok = [c for c in data["cells"].values() if c.get("status") == "ok"]
    if not ok:
        return made
    # 1. HBM bytes per planner per model (first config/dtype/batch present)
    cfg, dt, b = ok[0]["config"], ok[0]["dtype"], ok[0]["batch"]
    sel = [c for c in ok if (c["config"], c["dtype"], c["batch"]) == (cfg, dt, b)]
    models = list(dict.fromkeys(c["model"] for c in sel))
    planners = [p for p in DEFAULT_PLANNERS if any(c["planner"] == p for c in sel)] + \
        sorted({c["planner"] for c in sel} - set(DEFAULT_PLANNERS))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(models) + 2), 4))
    w = 0.8 / max(1, len(planners))
    for pi, p in enumerate(planners):
        xs, ys = [], []
        for mi, m in enumerate(models):
            c = next((c for c in sel if c["model"] == m and c["planner"] == p), None)
            if c:
                xs.append(mi + (pi - (len(planners) - 1) / 2) * w)
                ys.append(c["hbm_bytes"] / 1e6)
        ax.bar(xs, ys, w, label=p)
    for mi, m in enumerate(models):
        c = next(c for c in sel if c["model"] == m)
        ax.hlines(c["compulsory_bytes"] / 1e6, mi - 0.45, mi + 0.45, colors="k", linestyles="dashed",
                  label="compulsory floor" if mi == 0 else None)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=20)
    ax.set_ylabel("HBM bytes (MB)")
    ax.set_title(f"HBM traffic per planner ({cfg}, {dt}, batch {b})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = os.path.join(out_dir, "hbm_bytes.png")
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    made.append(p1)
    # 2. per-kernel traffic of one model for two planners
    tm = traffic_model or ("resnet50" if "resnet50" in models else models[0])
    series = []
    for p in traffic_planners:
        c = next((c for c in sel if c["model"] == tm and c["planner"] == p), None)
        if c:
            series.append((p, c))
    if series:
        fig, ax = plt.subplots(figsize=(10, 4))
        for p, c in series:
            ys = [(r + wr) / 1e6 for _, r, wr, _ in c["per_kernel"]]
            ax.plot(range(len(ys)), ys, marker=".", label=f"{p} (total {c['hbm_bytes'] / 1e6:.1f} MB)")
        ax.set_xlabel("kernel (program order)")
        ax.set_ylabel("HBM bytes (MB)")
        ax.set_title(f"{tm}: HBM traffic per kernel")
        ax.legend()
        fig.tight_layout()
        p2 = os.path.join(out_dir, f"per_kernel_traffic_{tm}.png")
        fig.savefig(p2, dpi=110)
        plt.close(fig)
        made.append(p2)
    # 3. timeline (engine activity) of one simulated run
    if timeline is not None:
        title, res = timeline
        tl = getattr(res, "timeline", None) or []
        if tl:
            end = max(e for _, _, _, e, _ in tl) or 1
            scale = float(res.report.latency_us) / end
            names = [n for n, _ in res.program.streams] if getattr(res, "program", None) is not None else []
            label = (lambda s: names[s] if isinstance(s, int) and s < len(names) else str(s))
            tl = [(label(s), i, st, en, dn) for s, i, st, en, dn in tl]
            streams = sorted({s for s, *_ in tl}, key=lambda s: (s.startswith("dma"), len(s), s))
            fig, ax = plt.subplots(figsize=(12, 0.35 * len(streams) + 1.5))
            for yi, s in enumerate(streams):
                segs = [(st * scale, max((en - st) * scale, 1e-3)) for s2, _, st, en, _ in tl if s2 == s]
                ax.broken_barh(segs, (yi - 0.4, 0.8), linewidth=0)
            ax.set_yticks(range(len(streams)))
            ax.set_yticklabels(streams, fontsize=7)
            ax.set_xlabel("simulated time (us)")
            ax.set_title(f"timeline: {title}")
            fig.tight_layout()
            p3 = os.path.join(out_dir, "timeline.png")
            fig.savefig(p3, dpi=110)
            plt.close(fig)
            made.append(p3)
    return made


def _git_state() -> str:
    """``<commit>[+dirty]`` of the source tree the numbers come from (empty outside git)."""
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no", "--",
                                "tvm_poly", "target"], capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return ""


# ------------------------------------------------------------------ CLI
def _parser():
    from .models import NAMES

    p = argparse.ArgumentParser(prog="tvm-poly bench", description="Planners side by side on the simulator.")
    p.add_argument("--models", default=",".join(NAMES), help="comma-separated light model names")
    p.add_argument("--planners", default=None, help=f"default: the registered ones of {','.join(DEFAULT_PLANNERS)}")
    p.add_argument("--configs", default="inf2", help="comma-separated: inf2, inf1 or config .toml paths")
    p.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--out", default=os.path.join("results", "bench"), help="output directory")
    p.add_argument("--force", action="store_true", help="redo cells already in bench.json")
    p.add_argument("--no-reference", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--timeline", default=None, metavar="MODEL:PLANNER",
                   help="plot this cell's timeline (default: the first model with poly, else per-op)")
    p.add_argument("--traffic", default="per-op,poly", metavar="P1,P2",
                   help="planners compared in the per-kernel traffic plot")
    p.add_argument("--tune-trials", type=int, default=None, help="tuned planner: trials per workload")
    p.add_argument("--tune-strategy", default=None, choices=("replay-trace", "evolutionary"))
    p.add_argument("--tune-db", default=None, help="tuned planner: database directory")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    from .errors import OptionError
    from .models import NAMES
    from .planners import PLANNERS

    models = [m for m in a.models.split(",") if m]
    bad = [m for m in models if m not in NAMES]
    if bad:
        raise OptionError(f"unknown model(s) {', '.join(bad)}; known: {', '.join(NAMES)}")
    planners = [p for p in (a.planners.split(",") if a.planners else DEFAULT_PLANNERS) if p]
    if a.planners is None:
        planners = [p for p in planners if p in PLANNERS]
    unknown = [p for p in planners if p not in PLANNERS]
    if unknown:
        raise OptionError(f"unknown planner(s) {', '.join(unknown)}; registered: {', '.join(sorted(PLANNERS))}")
    configs = [c for c in a.configs.split(",") if c]
    dtypes = [d for d in a.dtypes.split(",") if d]
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            raise OptionError(f"unknown dtype {d!r}")
    try:
        batches = [int(b) for b in a.batch.split(",") if b]
    except ValueError:
        raise OptionError(f"--batch expects integers, got {a.batch!r}") from None
    if "tuned" in planners:
        from .planners import tuned

        if a.tune_trials is not None:
            tuned.OPTIONS["trials"] = a.tune_trials
        if a.tune_strategy:
            tuned.OPTIONS["strategy"] = a.tune_strategy
        tuned.OPTIONS["db"] = a.tune_db or os.path.join(a.out, "tuning_db")
    os.makedirs(a.out, exist_ok=True)
    jpath = os.path.join(a.out, "bench.json")
    data = load_results(jpath)
    data["command"] = "tvm-poly bench " + " ".join(argv)
    data["git"] = _git_state()
    cells = [(m, p, c, d, b) for m in models for b in batches for c in configs for d in dtypes for p in planners]
    keys = [cell_key(*x) for x in cells]
    todo = [x for x, k in zip(cells, keys) if a.force or data["cells"].get(k, {}).get("status") != "ok"]
    tl_model, tl_planner = (a.timeline.split(":", 1) if a.timeline else
                            (models[0], "poly" if "poly" in planners else planners[0]))
    keep_tl = {}
    from tqdm import tqdm

    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", dynamic_ncols=True, file=sys.stderr)
    for x in todo:
        bar.set_description(f"{x[0]}/{x[1]}/{x[2]}/{x[3]}/b{x[4]}")
        keep = {} if (x[0], x[1]) == (tl_model, tl_planner) and not keep_tl else None
        cell = run_cell(*x, reference=not a.no_reference, keep=keep)
        if keep is not None and keep.get("result") is not None:
            keep_tl["cell"] = (f"{x[0]} / {x[1]} / {x[2]} / {x[3]}", keep["result"])
        data["cells"][cell_key(*x)] = cell
        save_results(jpath, data)
        bar.update(1)
    bar.close()
    if not keep_tl and not a.no_plots and (tl_model, tl_planner) in {(m, p) for m, p, *_ in cells}:
        cfg0, dt0, b0 = configs[0], dtypes[0], batches[0]
        keep = {}
        run_cell(tl_model, tl_planner, cfg0, dt0, b0, reference=False, keep=keep)
        if keep.get("result") is not None:
            keep_tl["cell"] = (f"{tl_model} / {tl_planner} / {cfg0} / {dt0}", keep["result"])
    sub = {"schema": SCHEMA, "command": data["command"], "cells": {k: data["cells"][k] for k in keys if k in data["cells"]}}
    md = markdown(sub, keys)
    with open(os.path.join(a.out, "bench.md"), "w", encoding="utf-8") as f:
        f.write(md)
    made = []
    if not a.no_plots:
        made = plots(sub, a.out, timeline=keep_tl.get("cell"),
                     traffic_planners=tuple(a.traffic.split(",")))
    sys.stdout.write(md)
    for m in made:
        sys.stdout.write(f"plot: {m}\n")
    sys.stdout.write(f"results: {jpath}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
