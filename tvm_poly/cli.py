"""``tvm-poly``: command line of tvm-poly.

Subcommands::

    tvm-poly run [MODEL.onnx | LIGHT_NAME] [--target polyinf|polyinf/inf1|CONFIG.toml]
                 [--planner poly|per-op|fused|tuned] [--dtype float32|bfloat16] [--batch N]
                 [--input NAME=FILE.npy ...] [--seed N] [--save-outputs OUT.npz]
                 [--report OUT.json] [--trace OUT.json] [--reference] [--no-check]
    tvm-poly sim ...    (target.sim_cli: run / check a program text on the simulator)
    tvm-poly plan ...   (tvm_poly.plan_cli: the poly planner's plan of a model)
    tvm-poly poly ...   (tvm_poly.poly_cli: the polyhedral model of a model)

``run`` with no model runs the onnx wheel's light ResNet-50 with seeded random weights
(``LIGHT_NAME`` is any of the nine bundled light models).  Inputs not given are seeded
random N(0, 1).  Every user error is one line ``error: ...`` and exit status 2; an
unexpected failure is one line ``internal error: ...`` and exit status 3
(``TVM_POLY_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_USAGE = 2
EXIT_INTERNAL = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message)
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tvm-poly run", description="Compile an ONNX model for a polyinf target "
                "and run it on the NeuronCore simulator.")
    p.add_argument("model", nargs="?", default=None,
                   help="ONNX file or a bundled light model name (default: resnet50)")
    p.add_argument("--target", default="polyinf",
                   help="polyinf (NeuronCore-v2), polyinf/inf1, a hardware config .toml, or llvm")
    from .pipeline import DEFAULT_OPTIONS, known_planners

    p.add_argument("--planner", default=DEFAULT_OPTIONS["planner"],
                   help=f"memory planner: {', '.join(known_planners())} (default {DEFAULT_OPTIONS['planner']})")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--batch", type=int, default=None, help="value of a dynamic batch dimension")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input from a .npy file (repeatable); others are seeded random")
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs and weights")
    p.add_argument("--save-outputs", metavar="OUT.npz", help="save outputs under their ONNX names")
    p.add_argument("--report", metavar="OUT.json", help="write the run report as JSON")
    p.add_argument("--trace", metavar="OUT.json", help="write a Chrome/Perfetto timeline")
    p.add_argument("--reference", action="store_true",
                   help="also run onnxruntime and print the relative error of each output")
    p.add_argument("--no-check", action="store_true",
                   help="skip the simulator's strict checks (uninitialised reads, data races); "
                        "faster, but an illegal program would run unrefused")
    return p


def _fail(msg) -> int:
    sys.stderr.write(f"error: {' '.join(str(msg).split())}\n")
    return EXIT_USAGE


def _parse_inputs(items):
    import numpy as np

    from .errors import InputShapeError

    values = {}
    for item in items:
        if "=" not in item:
            raise InputShapeError(f"--input {item!r}: expected NAME=FILE.npy")
        name, path = item.rsplit("=", 1)
        if not os.path.exists(path):
            raise InputShapeError(f"--input {name}: file not found: {path}")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise InputShapeError(f"--input {name}: cannot read {path} as .npy ({e})") from e
        if not isinstance(arr, np.ndarray):
            raise InputShapeError(f"--input {name}: {path} holds several arrays; give one .npy")
        values[name] = arr
    return values


def _fmt_int(v):
    return f"{v:,}" if isinstance(v, int) else (f"{v:,.3f}" if isinstance(v, float) else str(v))


def cmd_run(argv) -> int:
    args = _run_parser().parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np

    from . import models
    from .frontend import load_onnx, model_io, read_onnx, validate_inputs, with_batch
    from .pipeline import check_dtype, check_planner, options
    from .targets import is_polyinf, parse_target

    # cheap checks first: a bad flag fails before any heavy work
    dtype = check_dtype(args.dtype)
    planner = check_planner(args.planner)
    target = parse_target(args.target)
    polyinf = is_polyinf(target)
    if args.trace and not polyinf:
        return _fail("--trace needs a polyinf target")
    given = _parse_inputs(args.input)

    if args.model is None or (args.model in models.NAMES and not os.path.exists(args.model)):
        name = args.model or "resnet50"
        model = models.light_model(name, seed=args.seed)
        model_desc = f"light_{name} (onnx wheel, seeded random weights, seed {args.seed})"
    else:
        model = read_onnx(args.model)
        model_desc = args.model
    model = with_batch(model, args.batch)
    specs, out_names = model_io(model, batch=args.batch)
    shapes = {n: s for n, s, _d in specs}
    given = validate_inputs(specs, given, allow_missing=True)
    values = {**models.random_inputs(model, seed=args.seed, shapes=shapes), **given}
    sources = {n: "file" if n in given else f"random (seed {args.seed})" for n in shapes}

    import tvm
    from tvm import relax

    from . import runtime
    from .pipeline import last_compile

    mod = load_onnx(model, batch=args.batch)
    t0 = time.perf_counter()
    with options(planner=planner, dtype=dtype):
        ex = tvm.compile(mod, target=target)
    compile_s = time.perf_counter() - t0
    info = last_compile() if polyinf else {}

    vm = relax.VirtualMachine(ex, tvm.cpu())
    runtime.reset_report()
    if args.trace:
        runtime.set_trace_path(args.trace)
    if args.no_check:
        runtime.set_sim_check(False)
    t0 = time.perf_counter()
    try:
        res = vm["main"](*[tvm.runtime.tensor(values[n]) for n, _s, _d in specs])
    finally:
        runtime.set_trace_path(None)
        runtime.set_sim_check(None)
    run_s = time.perf_counter() - t0
    outs = [res] if isinstance(res, tvm.runtime.Tensor) else list(res)
    outputs = {name: o.numpy() for name, o in zip(out_names, outs)}

    rep = runtime.last_report()
    report = rep.to_dict() if rep is not None else {}
    report.update({"model": model_desc, "target": str(args.target), "compile_seconds": compile_s,
                   "run_seconds": run_s,
                   "inputs": {n: {"shape": list(shapes[n]), "source": sources[n]} for n in shapes},
                   "outputs": {n: {"shape": list(v.shape), "dtype": str(v.dtype)}
                               for n, v in outputs.items()}})
    if polyinf:
        report.setdefault("host_ops", info.get("host_ops", []))
        report["device_ops"] = info.get("device_ops", 0)
        report["lowering"] = [sg.get("lowering") for sg in info.get("segments", [])]
    if args.reference:
        ref = models.reference_outputs(model, {n: values[n] for n in shapes})
        report["reference_rel_err"] = {n: models.rel_err(outputs[n], ref[n]) for n in outputs}

    if args.save_outputs:
        np.savez(args.save_outputs, **outputs)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=runtime._json_default)
            f.write("\n")
    _print_summary(report, polyinf, args, planner, dtype)
    return 0


def _print_summary(r, polyinf, args, planner, dtype):
    rows = [("model", r["model"]),
            ("target", f"{args.target}" + (f" (config {r.get('config')}, planner {planner}, "
                                           f"dtype {dtype})" if polyinf else ""))]
    for n, d in r["inputs"].items():
        rows.append(("input", f"{n} {tuple(d['shape'])} {d['source']}"))
    rows.append(("compile", f"{r['compile_seconds']:.2f} s"))
    rows.append(("run (simulated)" if polyinf else "run", f"{r['run_seconds']:.2f} s wall"))
    if polyinf:
        host = r.get("host_ops") or []
        ops = sorted({h["op"] for h in host})
        low = sorted({x for x in r.get("lowering") or [] if x})
        if low:  # the lowering options the search kept (per segment when they differ)
            rows.append(("lowering", "; ".join(low)))
        rows.append(("offload", f"{r.get('device_ops', 0)} ops on the NeuronCore in "
                                f"{r.get('segments', 0)} segment(s); "
                                f"{len(host)} on the host" + (f" ({', '.join(ops)})" if ops else "")))
        reasons = {}
        for h in host:  # why (a code generator failure shows here, not only as a warning)
            reasons.setdefault(h.get("reason") or "unsupported", []).append(h["name"])
        for why, names in list(reasons.items())[:3]:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            rows.append(("host because", f"{why} ({', '.join(names[:3])}{more})"))
        if len(reasons) > 3:
            rows.append(("host because", f"... {len(reasons) - 3} more reasons in the report's host_ops"))
        for k in ("cycles", "latency_us", "hbm_read_bytes", "hbm_write_bytes",
                  "dma_transfer_count", "dma_transfer_total_bytes", "dma_stall_cycles",
                  "sbuf_peak_bytes", "psum_peak_bytes", "macs"):
            if k in r:
                rows.append((k, _fmt_int(r[k])))
        eng = r.get("engine_active_cycles") or {}
        if eng:
            rows.append(("engine_active_cycles", ", ".join(f"{k} {_fmt_int(v)}" for k, v in eng.items())))
        if "mfu" in r:
            rows.append(("mfu", f"{r['mfu']:.3f}"))
        ops = sorted(r.get("operators") or [], key=lambda o: -(o.get("hbm_read_bytes", 0) +
                                                              o.get("hbm_write_bytes", 0)))
        for o in ops[:5]:
            rows.append(("top HBM traffic", f"{o['name']}: read {_fmt_int(o.get('hbm_read_bytes', 0))} B, "
                                            f"write {_fmt_int(o.get('hbm_write_bytes', 0))} B, "
                                            f"{_fmt_int(o.get('dma_transfer_count', 0))} DMAs, "
                                            f"MACs {_fmt_int(o.get('macs', 0))}"))
    for n, d in r["outputs"].items():
        rows.append(("output", f"{n} {tuple(d['shape'])} {d['dtype']}"))
    for n, e in (r.get("reference_rel_err") or {}).items():
        rows.append(("rel err vs onnxruntime", f"{n}: {e:.3e}"))
    for flag, label in ((args.save_outputs, "outputs saved"), (args.report, "report"),
                        (args.trace, "trace")):
        if flag:
            rows.append((label, flag))
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))


def _sub(module, argv) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return _fail(f"{module} is not available ({e})")
    return int(mod.main(argv) or 0)


def _user_errors():
    errs = [OSError]
    from .errors import TvmPolyError

    errs.append(TvmPolyError)
    try:
        from target.errors import SimulationError

        errs.append(SimulationError)
    except ImportError:
        pass
    return tuple(errs)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: tvm-poly {run,sim,plan,poly,bench} ...\n"
             "  run   compile an ONNX model for polyinf and run it on the simulator\n"
             "  sim   the NeuronCore simulator on a program text\n"
             "  plan  the poly planner's plan: residency, loads, stores, spills, SBUF map\n"
             "  poly  the polyhedral model of a model\n"
             "  bench planners side by side (models x planners x configs x dtypes x batches)\n")
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage)
        return 0 if argv else EXIT_USAGE
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "run":
            return cmd_run(rest)
        if cmd == "sim":
            return _sub("target.sim_cli", rest)
        if cmd == "plan":
            return _sub("tvm_poly.plan_cli", rest)
        if cmd == "poly":
            return _sub("tvm_poly.poly_cli", rest)
        if cmd == "bench":
            return _sub("tvm_poly.bench", rest)
        return _fail(f"unknown command {cmd!r}; expected run, sim, plan, poly or bench")
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the CLI never shows a traceback
        if os.environ.get("TVM_POLY_DEBUG"):
            raise
        if isinstance(e, _user_errors()):
            return _fail(e)
        msg = " ".join(str(e).split())[:500]
        sys.stderr.write(f"internal error: {type(e).__name__}: {msg}\n")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
