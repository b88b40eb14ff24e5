"""``tvm-poly sim PROGRAM.txt [--config inf2|inf1|FILE.toml] [--report R.json] [--trace T.json]
[--input NAME=FILE.npy ...] [--output-dir DIR] [--seed N] [--no-check] [--per-tag]``

Runs a program text file (see :mod:`target.program_text`) on the simulator.  Inputs and weights
not given with ``--input`` are filled with seeded random values (standard normal, seed
``--seed``, default 0).  Prints the report summary; ``--report`` writes the full report as JSON,
``--trace`` a Chrome/Perfetto trace, ``--output-dir`` each output tensor as NAME.npy.
Exit codes: 0 ok, 1 program refused / simulation error, 2 usage or file error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .errors import SimulationError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tvm-poly sim", description="Run a NeuronCore program on the simulator")
    ap.add_argument("program", help="program text file")
    ap.add_argument("--config", default="inf2", help="inf2 | inf1 | path/to/config.toml (default inf2)")
    ap.add_argument("--report", help="write the report as JSON here")
    ap.add_argument("--trace", help="write a Chrome/Perfetto trace JSON here")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                    help="bind an input/weight tensor from a .npy file (repeatable)")
    ap.add_argument("--output-dir", help="write each output tensor as NAME.npy here")
    ap.add_argument("--seed", type=int, default=0, help="seed for random inputs not given (default 0)")
    ap.add_argument("--no-check", action="store_true", help="skip read-before-write and race checks")
    ap.add_argument("--per-tag", action="store_true", help="also print the per-tag breakdown")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    from .config import load_config
    from .program_text import parse_program
    from .simulator import simulate
    from .memory import NP_DTYPES
    from .trace import write_trace
    try:
        with open(args.program) as f:
            text = f.read()
    except OSError as e:
        print(f"tvm-poly sim: cannot read {args.program}: {e}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        prog = parse_program(text)
        tensors = {}
        for spec in args.input:
            name, sep, path = spec.partition("=")
            if not sep:
                print(f"tvm-poly sim: --input expects NAME=FILE.npy, got {spec!r}", file=sys.stderr)
                return 2
            try:
                tensors[name] = np.load(path)
            except OSError as e:
                print(f"tvm-poly sim: cannot read {path}: {e}", file=sys.stderr)
                return 2
        known = {t.name for t in prog.hbm}
        for name in tensors:
            if name not in known:
                print(f"tvm-poly sim: --input {name}: the program has no HBM tensor {name!r}", file=sys.stderr)
                return 2
        rng = np.random.default_rng(args.seed)
        for t in prog.hbm:
            if t.kind in ("input", "weight") and t.name not in tensors:
                tensors[t.name] = rng.standard_normal(t.shape).astype(np.float32).astype(NP_DTYPES[t.dtype])
        res = simulate(prog, cfg, tensors, check=not args.no_check, trace=bool(args.trace))
    except SimulationError as e:
        print(f"tvm-poly sim: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(res.report.summary())
    if args.per_tag:
        print(f"  {'tag':24s} {'instr':>6s} {'hbm_read':>11s} {'hbm_write':>11s} {'dmas':>5s} {'macs':>13s} "
              f"{'stall':>9s}  engine cycles")
        for tag, t in sorted(res.report.per_tag.items()):
            eng = ", ".join(f"{k} {v}" for k, v in sorted(t.engine_active_cycles.items()))
            print(f"  {tag or '(untagged)':24s} {t.num_instructions:6d} {t.hbm_read_bytes:11d} {t.hbm_write_bytes:11d} "
                  f"{t.dma_transfer_count:5d} {t.macs:13d} {t.dma_stall_cycles:9d}  {eng}")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(res.report.to_dict(), f, indent=1)
    if args.trace:
        write_trace(res, args.trace)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        for name, arr in res.outputs.items():
            np.save(os.path.join(args.output_dir, name + ".npy"), np.asarray(arr, dtype=np.float32))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
