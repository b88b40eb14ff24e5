"""``tvm-poly poly MODEL.onnx [--batch N] [--json] [--deps] [--op NAME] [--summary]``.

Prints :meth:`PolyModel.dump` (statements, domains, accesses, schedule, diagnostics; with
``--deps`` also the flow dependences), or the JSON view with ``--json``. ``MODEL`` may also be
the name of a bundled light model (``resnet50``, ``vgg19``, ...). User errors: one line
``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tvm-poly poly",
                description="Print the polyhedral model (isl) of an ONNX model's legalized TIR.")
    p.add_argument("model", help="ONNX file or a bundled light model name")
    p.add_argument("--batch", type=int, default=None, help="value of a dynamic batch dimension")
    p.add_argument("--json", action="store_true", help="print the model as JSON")
    p.add_argument("--deps", action="store_true", help="also print the flow dependences")
    p.add_argument("--op", action="append", default=None, metavar="NAME",
                   help="only this operator (binding name, e.g. lv16; repeatable)")
    p.add_argument("--summary", action="store_true",
                   help="only the summary line, MACs, compulsory traffic and timings")
    return p


def _load(path: str, batch: int | None):
    """The Relax module of a model file or bundled light model name."""
    from tvm_poly.frontend import load_onnx
    from tvm_poly.models import model_path

    return load_onnx(model_path(path), batch=batch)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from tvm_poly.polymodel import PolyError

    try:
        from tvm_poly.errors import TvmPolyError
    except ImportError:  # pragma: no cover
        TvmPolyError = PolyError
    try:
        t0 = time.perf_counter()
        mod = _load(args.model, args.batch)
        t1 = time.perf_counter()
        from tvm_poly.extract import LAST_TIMES, extract

        model = extract(mod)
        t2 = time.perf_counter()
        if args.json:
            js = model.to_json()
            if args.deps:
                from tvm_poly.dataflow import flow

                js["dependences"] = [
                    {"array": arr, "source": src, "sink": dst, "relation": str(m)}
                    for arr, pairs in flow(model).by_statement_pair().items()
                    for (src, dst), m in pairs.items()]
            sys.stdout.write(json.dumps(js, indent=1) + "\n")
        elif args.summary:
            from tvm_poly.queries import compulsory_traffic

            t = compulsory_traffic(model)
            sys.stdout.write(model.summary() + "\n")
            sys.stdout.write(f"compulsory traffic: inputs {t.inputs:,} B, weights {t.weights:,} B, "
                             f"outputs {t.outputs:,} B, total {t.total:,} B\n")
            steps = ", ".join(f"{k} {v:.2f}s" for k, v in LAST_TIMES.steps.items())
            sys.stdout.write(f"import {t1 - t0:.2f}s, extract {t2 - t1:.2f}s ({steps})\n")
        else:
            sys.stdout.write(model.dump(deps=args.deps, ops=args.op) + "\n")
        return 0
    except (TvmPolyError, PolyError, FileNotFoundError) as e:
        msg = " ".join(str(e).split())
        if isinstance(e, FileNotFoundError):
            msg = f"model file not found: {e}"
        sys.stderr.write(f"error: {msg}\n")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
