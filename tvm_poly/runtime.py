"""The ``polyinf.run`` packed function: runs compiled programs on the NeuronCore simulator.

Every offloaded segment of a polyinf executable is one call
``polyinf.run(key, blob, *inputs, *constants, *outputs)`` (destination-passing style):
``blob`` is the zlib-packed header + program text made by :mod:`tvm_poly.pipeline`.
Parsed programs are cached by ``key`` so the text is parsed once per process.
The report of each simulated segment is merged into the report of the current
inference (segment 0 starts a new one); :func:`last_report` returns it.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading

from .errors import RuntimeProgramError

_CACHE: dict = {}
_LOCK = threading.Lock()
_STATE = {"report": None}
_TRACE_SINK = {"path": None}
_registered = False

# fields every report has, even for an inference that offloaded nothing
REPORT_FIELDS = {
    "cycles": 0, "latency_us": 0.0, "hbm_read_bytes": 0, "hbm_write_bytes": 0,
    "dma_transfer_count": 0, "dma_transfer_total_bytes": 0, "dma_stall_cycles": 0,
    "engine_active_cycles": {}, "sbuf_peak_bytes": 0, "psum_peak_bytes": 0, "macs": 0,
}

# report fields that are peaks (merged with max) rather than totals (summed)
_MAX_FIELDS = ("peak",)


class Report:
    """Report of one inference of a polyinf executable (all its segments merged).

    ``to_dict()`` has the simulator's fields (``cycles``, ``latency_us``,
    ``hbm_read_bytes``, ``hbm_write_bytes``, ``dma_transfer_count``,
    ``dma_transfer_total_bytes``, ``dma_stall_cycles``, ``engine_active_cycles``,
    ``sbuf_peak_bytes``, ``psum_peak_bytes``, ``macs``, ``operators`` ...) plus
    ``planner``, ``dtype``, ``config``, ``host_ops`` and ``segments``.
    """

    def __init__(self, meta: dict):
        self.meta = dict(meta)
        self.segment_reports: list = []  # the simulator's Report of each segment
        self._dicts: list = []
        self._merged: dict = {}

    def add(self, seg_report) -> None:
        self.segment_reports.append(seg_report)
        d = _report_dict(seg_report)
        self._dicts.append(d)
        self._merged = _merge(self._merged, d) if self._merged else d

    def to_dict(self) -> dict:
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in REPORT_FIELDS.items()}
        d.update(self._merged)
        reps = self._dicts
        if len(reps) > 1:
            for k in ("config", "program", "report_clock_ghz"):
                if k in reps[0]:
                    d[k] = reps[0][k]
            cyc = sum(r.get("cycles", 0) for r in reps)
            if cyc and all("mfu" in r for r in reps):
                d["mfu"] = sum(r["mfu"] * r.get("cycles", 0) for r in reps) / cyc
            if d.get("dma_transfer_count"):
                d["dma_transfer_average_bytes"] = (
                    d.get("dma_transfer_total_bytes", 0) / d["dma_transfer_count"])
        d["operators"] = [dict(name=k, **v) for k, v in (d.get("per_tag") or {}).items()]
        d.update(self.meta)
        d["segments"] = len(self.segment_reports)
        return d

    def to_json(self, path=None, indent=2) -> str:
        s = json.dumps(self.to_dict(), indent=indent, default=_json_default)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(s + "\n")
        return s

    def __getattr__(self, name):  # report fields as attributes: rep.cycles, rep.host_ops
        if name.startswith("_") or "_merged" not in self.__dict__:
            raise AttributeError(name)
        d = self.to_dict()
        if name in d:
            return d[name]
        raise AttributeError(f"report has no field {name!r}")

    def __repr__(self):
        d = self.to_dict()
        keys = ("cycles", "latency_us", "hbm_read_bytes", "hbm_write_bytes", "planner", "config")
        return "Report(" + ", ".join(f"{k}={d.get(k)!r}" for k in keys) + ")"


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def _report_dict(rep) -> dict:
    if rep is None:
        return {}
    if isinstance(rep, dict):
        return dict(rep)
    if hasattr(rep, "to_dict"):
        return dict(rep.to_dict())
    import dataclasses

    if dataclasses.is_dataclass(rep):
        return dataclasses.asdict(rep)
    return dict(vars(rep))


def _merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            if k not in out:
                out[k] = v
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and \
                    isinstance(out[k], (int, float)):
                out[k] = max(out[k], v) if any(m in k for m in _MAX_FIELDS) else out[k] + v
            else:
                out[k] = _merge(out[k], v)
        return out
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    return a


def last_report() -> Report | None:
    """The report of the most recent inference that ran a polyinf program (or None)."""
    return _STATE["report"]


def reset_report() -> None:
    _STATE["report"] = None


_SIM_CHECK = {"on": None}


def set_sim_check(on) -> None:
    """Run the simulator's strict checks (uninitialised reads, data races) on every
    segment: True/False, or None for the ``TVM_POLY_SIM_CHECK`` environment variable
    (default on: an illegal program is refused rather than run; ``TVM_POLY_SIM_CHECK=0``
    or ``tvm-poly run --no-check`` trades the checks for ~40% less simulation time)."""
    _SIM_CHECK["on"] = on


def set_trace_path(path) -> None:
    """Write a Chrome/Perfetto trace of each simulated segment to ``path`` (None: off).

    With several segments, segment i > 0 goes to ``<path stem>.seg<i>.json``."""
    _TRACE_SINK["path"] = path


# ---------------------------------------------------------------------------- loading
class _Entry:
    def __init__(self, header, program, config):
        self.header = header
        self.program = program
        self.config = config
        self.n_in = len(header["inputs"])
        self.n_const = len(header["constants"])
        self.n_out = len(header["outputs"])


def _load_config(header):
    from .targets import load_hardware_config

    text = header.get("config_text")
    if text is None:
        return load_hardware_config(header["config"])
    fd, path = tempfile.mkstemp(suffix=".toml", prefix="polyinf-config-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return load_hardware_config(path)
    finally:
        os.unlink(path)


def _entry(key: str, blob) -> _Entry:
    e = _CACHE.get(key)
    if e is not None:
        return e
    import numpy as np

    from .pipeline import FORMAT_VERSION, unpack_blob

    try:
        header, text = unpack_blob(np.from_dlpack(blob).tobytes())
    except Exception as err:
        raise RuntimeProgramError(f"corrupt polyinf program blob: {err}") from err
    if header.get("version") != FORMAT_VERSION:
        raise RuntimeProgramError(
            f"polyinf program format {header.get('version')} unsupported (want {FORMAT_VERSION})")
    from target.program_text import parse_program

    program = parse_program(text)
    e = _Entry(header, program, _load_config(header))
    with _LOCK:
        _CACHE[key] = e
    return e


def _to_numpy(t, dtype_tag=None):
    import numpy as np

    a = np.from_dlpack(t)
    if dtype_tag == "bfloat16":
        import ml_dtypes

        a = a.view(ml_dtypes.bfloat16)
    return a


def _simulate(entry: _Entry, values: dict, trace_path=None):
    """Run the program on the simulator: values by HBM name -> (outputs by HBM name, report)."""
    from target.simulator import simulate

    check = _SIM_CHECK["on"]
    if check is None:
        check = os.environ.get("TVM_POLY_SIM_CHECK", "1") not in ("", "0")
    res = simulate(entry.program, entry.config, values, check=check, trace=bool(trace_path))
    if trace_path:
        write_trace(res.trace, trace_path)
    return res.outputs, res.report


def write_trace(trace, path) -> None:
    """Write simulator trace events as a Chrome/Perfetto JSON file."""
    events = trace.get("traceEvents", trace) if isinstance(trace, dict) else list(trace or [])
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ns"}, f, default=_json_default)


def run_segment(key, blob, *args):
    e = _entry(key, blob)
    h = e.header
    if len(args) != e.n_in + e.n_const + e.n_out:
        raise RuntimeProgramError(
            f"polyinf.run got {len(args)} tensors, program wants "
            f"{e.n_in} inputs + {e.n_const} constants + {e.n_out} outputs")
    values = {}
    for (hbm, _g), t in zip(h["inputs"], args[:e.n_in]):
        values[hbm] = _to_numpy(t)
    for (hbm, tag), t in zip(h["constants"], args[e.n_in:e.n_in + e.n_const]):
        values[hbm] = _to_numpy(t, tag)
    outs = args[e.n_in + e.n_const:]
    trace_path = _TRACE_SINK["path"]
    if trace_path and h["segment"] > 0:
        stem, ext = os.path.splitext(trace_path)
        trace_path = f"{stem}.seg{h['segment']}{ext or '.json'}"
    try:
        results, report = _simulate(e, values, trace_path)
    except Exception as err:
        from target.errors import SimulationError

        if isinstance(err, SimulationError):
            raise RuntimeProgramError(f"simulation failed: {err}") from err
        raise
    for (hbm, _g), t in zip(h["outputs"], outs):
        dst = _to_numpy(t)
        src = results[hbm]
        dst[...] = src.reshape(dst.shape).astype(dst.dtype, copy=False)
    if _STATE["report"] is None:
        _STATE["report"] = Report({
            "planner": h["planner"], "dtype": h["dtype"], "config": e.config.name
            if hasattr(e.config, "name") else h["config"], "host_ops": h["host_ops"]})
    _STATE["report"].add(report)


def begin_run(meta_json) -> None:
    """``polyinf.begin``: the first call of every polyinf inference; opens its report."""
    meta = json.loads(str(meta_json))
    meta.pop("num_segments", None)
    _STATE["report"] = Report(meta)


def register() -> None:
    """Register ``polyinf.run`` with TVM's global function registry (idempotent)."""
    global _registered
    if _registered:
        return
    import tvm

    tvm.register_global_func("polyinf.run", run_segment, override=True)
    tvm.register_global_func("polyinf.begin", begin_run, override=True)
    _registered = True


__all__ = ["Report", "last_report", "reset_report", "register", "run_segment",
           "set_sim_check", "set_trace_path"]
