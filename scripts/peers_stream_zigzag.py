"""Peers side by side: KU Leuven's ZigZag (layer by layer) and Stream (layer-fused) on the light
models with a NeuronCore-like hardware description, beside tvm-poly's planners.

    python scripts/peers_stream_zigzag.py [--models resnet50,squeezenet] [--dtype bfloat16]
        [--bench results/bench/bench.json] [--out results/peers] [--skip-stream] [--skip-zigzag]

Both tools need Python >= 3.12: the script makes its own venv ``.venv-peers`` (not committed)
from the first Python >= 3.12 it finds (``$PEERS_PYTHON``, ``python3.12``, pyenv's 3.12.x) and
installs ``zigzag-dse`` / ``stream-dse`` there; without such a Python the peers are skipped with a
message and only our numbers and the published ones are printed.

Hardware (both tools): one 128x128 MAC array (K x C unrolled, weight-stationary), a 16-bit
weight register per PE, 2 MiB of PSUM (outputs, 32-bit partial sums), a 24 MiB SBUF holding
inputs, weights and outputs, and DRAM (HBM) behind a 2048-bit port.  Operand precisions follow
``--dtype`` (bf16: 16-bit activations and weights).  Off-chip bytes = the DRAM level's read and
write word accesses x the DRAM word width.

Published (ResNet-50, batch 1, bf16, 128x128 array, 24 MiB SBUF): Stream fused 79.5 MB, Stream
per-layer 170.8 MB, ZigZag 92.4 MB; compulsory floor about 51.4 MB.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_VENV = os.path.join(ROOT, ".venv-peers")
PEER_PKGS = ("zigzag-dse==3.9.1", "stream-dse==2.1.1", "six==1.17.0")
PUBLISHED = {"resnet50": {"stream_fused_mb": 79.5, "stream_layer_mb": 170.8, "zigzag_mb": 92.4, "floor_mb": 51.4}}
DRAM_WORD_BITS = 2048

HARDWARE = """name: neuroncore_like
memories:
  rf_w:
    size: 16
    r_cost: 0.02
    w_cost: 0.02
    area: 0
    latency: 1
    operands: [I2]
    ports:
      - {{name: r_port_1, type: read, bandwidth_min: 16, bandwidth_max: 16, allocation: ["I2, tl"]}}
      - {{name: w_port_1, type: write, bandwidth_min: 16, bandwidth_max: 16, allocation: ["I2, fh"]}}
    served_dimensions: []
  psum:
    size: 16777216
    r_cost: 2
    w_cost: 2
    area: 0
    latency: 1
    operands: [O]
    ports:
      - {{name: r_port_1, type: read, bandwidth_min: 4096, bandwidth_max: 4096, allocation: ["O, tl", "O, th"]}}
      - {{name: w_port_1, type: write, bandwidth_min: 4096, bandwidth_max: 4096, allocation: ["O, fh", "O, fl"]}}
    served_dimensions: [D2]
  sbuf:
    size: 201326592
    r_cost: 100
    w_cost: 100
    area: 0
    latency: 1
    operands: [I1, I2, O]
    ports:
      - {{name: r_port_1, type: read, bandwidth_min: 64, bandwidth_max: 8192, allocation: ["I1, tl", "I2, tl", "O, tl", "O, th"]}}
      - {{name: w_port_1, type: write, bandwidth_min: 64, bandwidth_max: 8192, allocation: ["I1, fh", "I2, fh", "O, fh", "O, fl"]}}
    served_dimensions: [D1, D2]
  dram:
    size: 100000000000
    r_cost: 700
    w_cost: 750
    area: 0
    latency: 1
    operands: [I1, I2, O]
    ports:
      - {{name: rw_port_1, type: read_write, bandwidth_min: 64, bandwidth_max: {dram_bits}, allocation: ["I1, fh", "I1, tl", "I2, fh", "I2, tl", "O, fh", "O, tl", "O, fl", "O, th"]}}
    served_dimensions: [D1, D2]
operational_array:
  unit_energy: 0.04
  unit_area: 1
  dimensions: [D1, D2]
  sizes: [128, 128]
"""

MAPPING = """- name: default
  spatial_mapping:
    D1:
      - K, 128
    D2:
      - C, 128
  memory_operand_links:
    O: O
    W: I2
    I: I1
"""


# ------------------------------------------------------------------ inside the peers venv
def inner_zigzag(onnx_path, hw, mapping, dump):
    import logging

    logging.disable(logging.INFO)
    from zigzag.api import get_hardware_performance_zigzag

    t0 = time.time()
    _e, lat, cmes = get_hardware_performance_zigzag(onnx_path, hw, mapping, opt="latency", dump_folder=dump,
                                                    lpf_limit=4, nb_spatial_mappings_generated=1,
                                                    loma_show_progress_bar=False)
    total_bits = 0
    per_op = {}
    for cme, _ in cmes:
        for op, levels in cme.memory_word_access.items():
            top = levels[-1]  # the DRAM level of this operand
            words = sum(int(v) for v in top.data.values())
            per_op[str(op)] = per_op.get(str(op), 0) + words * DRAM_WORD_BITS // 8
            total_bits += words * DRAM_WORD_BITS
    return {"offchip_bytes": total_bits // 8, "per_operand_bytes": per_op, "cycles": float(lat),
            "seconds": round(time.time() - t0, 1)}


STREAM_HW = """name: neuroncore_like_stream
cores:
  0: ./nc_core.yaml
  1: ./pooling.yaml
  2: ./simd.yaml
  3: ./offchip.yaml
offchip_core_id: 3
unit_energy_cost: 0
core_connectivity:
  - type: link
    cores: [0, 1]
    bandwidth: 4096
  - type: link
    cores: [0, 2]
    bandwidth: 4096
  - type: bus
    cores: [0, 1, 2, 3]
    bandwidth: {dram_bits}
"""


def write_stream_hw(work):
    """Stream's multi-core description: our NeuronCore-like compute core (the ZigZag description
    without its DRAM level), Stream's example pooling and SIMD cores, and the DRAM as the off-chip
    core."""
    import stream

    ex = os.path.join(os.path.dirname(stream.__file__), "inputs", "examples", "hardware", "cores")
    for f in ("pooling.yaml", "simd.yaml"):
        shutil.copy(os.path.join(ex, f), os.path.join(work, f))
    hw = HARDWARE.format(dram_bits=DRAM_WORD_BITS)
    core = hw.split("  dram:")[0] + "operational_array:" + hw.split("operational_array:")[1]
    core = core.replace("name: neuroncore_like\n", "name: nc_pe\ntype: zigzag.compute\n")
    with open(os.path.join(work, "nc_core.yaml"), "w") as f:
        f.write(core)
    off = ("name: offchip\ntype: zigzag.offchip\nmemories:\n  dram:" + hw.split("  dram:")[1].split("operational_array:")[0]
           + "operational_array:\n  unit_energy: 0\n  unit_area: 0\n  dimensions: [D1, D2]\n  sizes: [0, 0]\n")
    with open(os.path.join(work, "offchip.yaml"), "w") as f:
        f.write(off)
    path = os.path.join(work, "stream_hw.yaml")
    with open(path, "w") as f:
        f.write(STREAM_HW.format(dram_bits=DRAM_WORD_BITS))
    return path


def inner_stream(onnx_path, work, dump, mode):
    """Stream's evaluate_mapping with its own mapping generator (layer-fused groups).  Off-chip
    bytes = the off-chip core's read and write accesses x its port width, over all fused groups
    (Stream's MemoryAccessesEstimationStage counts accesses in port-width words)."""
    import logging

    logging.disable(logging.WARNING)
    from stream.api import SolveOptions, evaluate_mapping

    hw = write_stream_hw(work)
    t0 = time.time()
    stage = {"fusion_cut_points": "per-layer"} if mode == "lbl" else {}
    est = evaluate_mapping(hw, onnx_path, os.path.join(dump, mode),
                           options=SolveOptions(time_limit_s=30, artifacts=False, stage_options=stage))
    gma = est.context.get("group_memory_accesses") or {}
    bits = 0
    for g in gma.values():
        for c in (g or {}).get("cores", []):
            if c.get("is_offchip"):
                bits += int(c["read"]) * int(c["read_bandwidth"]) + int(c["write"]) * int(c["write_bandwidth"])
    if not gma:
        raise RuntimeError("Stream reported no memory accesses")
    return {"offchip_bytes": bits // 8, "cycles": float(est.cycles), "groups": len(est.group_cycles),
            "seconds": round(time.time() - t0, 1)}


# ------------------------------------------------------------------ driver (project venv)
def find_python312():
    cands = [os.environ.get("PEERS_PYTHON"), shutil.which("python3.13"), shutil.which("python3.12")]
    cands += sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python"), reverse=True)
    cands += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python")), reverse=True)
    for c in cands:
        if not c or not os.path.exists(c):
            continue
        try:
            v = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2] >= (3, 12))"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001
            continue
        if v == "True":
            return c
    return None


def ensure_venv():
    py = os.path.join(PEERS_VENV, "bin", "python")
    if os.path.exists(py):
        ok = subprocess.run([py, "-c", "import zigzag, stream, six"], capture_output=True).returncode == 0
        if ok:
            return py
    base = find_python312()
    if base is None:
        return None
    if not os.path.exists(py):
        subprocess.run([base, "-m", "venv", PEERS_VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *PEER_PKGS], check=True)
    return py


def export_model(name, dtype, out_dir):
    import onnx

    from tvm_poly.models import light_model

    bits = 16 if dtype == "bfloat16" else 32
    m = onnx.shape_inference.infer_shapes(light_model(name, seed=0, logits=True))
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            n.attribute.extend([onnx.helper.make_attribute("weight_size", bits),
                                onnx.helper.make_attribute("act_size", bits),
                                onnx.helper.make_attribute("output_size", 32)])
    path = os.path.join(out_dir, f"{name}.onnx")
    onnx.save(m, path)
    return path


def export_model_stream(name, dtype, out_dir):
    """The model as Stream 2.1's ONNX frontend reads it: two-input Sum -> Add, a global AveragePool
    -> GlobalAveragePool, and every tensor typed in ``dtype`` (Stream sizes tensors by their
    ONNX element type).  Operators Stream has no parser for (Concat, LRN ...) make it fail: that
    model is reported as not run."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(os.path.join(out_dir, f"{name}.onnx"))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    for n in m.graph.node:
        if n.op_type == "Sum" and len(n.input) == 2:
            n.op_type = "Add"
        if n.op_type == "AveragePool":
            ks = [list(a.ints) for a in n.attribute if a.name == "kernel_shape"]
            if ks and shapes.get(n.input[0], [])[2:] == ks[0]:
                n.op_type = "GlobalAveragePool"
                del n.attribute[:]
    if dtype == "bfloat16":
        for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
                vi.type.tensor_type.elem_type = TensorProto.BFLOAT16
        inits = []
        for t in m.graph.initializer:
            if t.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(t).astype(np.float32)
                bf = (arr.view(np.uint32) >> 16).astype(np.uint16)
                nt = helper.make_tensor(t.name, TensorProto.BFLOAT16, arr.shape, bf.tobytes(), raw=True)
                inits.append(nt)
            else:
                inits.append(t)
        del m.graph.initializer[:]
        m.graph.initializer.extend(inits)
    path = os.path.join(out_dir, f"{name}_stream.onnx")
    onnx.save(m, path)
    return path


def ours(bench_path, model, dtype):
    if not os.path.exists(bench_path):
        return {}
    with open(bench_path) as f:
        cells = json.load(f).get("cells", {})
    out = {}
    for c in cells.values():
        if c.get("status") == "ok" and c["model"] == model and c["dtype"] == dtype and c["config"] == "inf2" \
                and c["batch"] == 1:
            out[c["planner"]] = c["hbm_bytes"]
            out["floor"] = c["compulsory_bytes"]
    return out


def run_inner(py, args, timeout):
    r = subprocess.run([py, os.path.abspath(__file__), "--inner", *args], capture_output=True, text=True,
                       timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(tail[0][:300])
    return json.loads(lines[-1])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--inner":
        kind = argv[1]
        if kind == "zigzag":
            res = inner_zigzag(*argv[2:6])
        else:
            res = inner_stream(*argv[2:6])
        print(json.dumps(res))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--bench", default=os.path.join(ROOT, "results", "bench", "bench.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "peers"))
    ap.add_argument("--skip-stream", action="store_true")
    ap.add_argument("--skip-zigzag", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per tool run")
    ap.add_argument("--merge", action="store_true", help="update peers.json instead of replacing it")
    a = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    os.makedirs(work, exist_ok=True)
    hw = os.path.join(work, "neuroncore_like.yaml")
    with open(hw, "w") as f:
        f.write(HARDWARE.format(dram_bits=DRAM_WORD_BITS))
    mp = os.path.join(work, "mapping.yaml")
    with open(mp, "w") as f:
        f.write(MAPPING)
    py = ensure_venv()
    if py is None:
        print("peers skipped: ZigZag and Stream need Python >= 3.12 and none was found "
              "(set PEERS_PYTHON=/path/to/python3.12)")
    results, jpath = {}, os.path.join(a.out, "peers.json")
    if a.merge and os.path.exists(jpath):  # keep the other models' / skipped tools' earlier runs
        with open(jpath) as f:
            results = json.load(f).get("results", {})
    for model in [m for m in a.models.split(",") if m]:
        row = dict(results.get(model, {}))
        row.update({"model": model, "dtype": a.dtype, "ours": ours(a.bench, model, a.dtype),
                    "published": PUBLISHED.get(model, {})})
        if py is not None:
            path = export_model(model, a.dtype, work)
            if not a.skip_zigzag:
                try:
                    row["zigzag"] = run_inner(py, ["zigzag", path, hw, mp, os.path.join(work, f"zz_{model}")],
                                              a.timeout)
                except Exception as e:  # noqa: BLE001
                    row["zigzag"] = {"error": str(e)}
            if not a.skip_stream:
                for mode in ("fused", "lbl"):  # Stream's own fusion groups / one group per layer
                    try:
                        spath = export_model_stream(model, a.dtype, work)
                        row[f"stream_{mode}"] = run_inner(py, ["stream", spath, work,
                                                               os.path.join(work, f"st_{model}"), mode], a.timeout)
                    except Exception as e:  # noqa: BLE001
                        row[f"stream_{mode}"] = {"error": str(e)}
        results[model] = row
        print(_row_text(row), flush=True)
    with open(jpath, "w") as f:
        json.dump({"command": "python scripts/peers_stream_zigzag.py " + " ".join(argv), "hardware": HARDWARE.format(
            dram_bits=DRAM_WORD_BITS), "results": results}, f, indent=1)
    md = _markdown(results, argv)
    with open(os.path.join(a.out, "peers.md"), "w") as f:
        f.write(md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _mb(x):
    return f"{x / 1e6:.1f}" if isinstance(x, (int, float)) else "-"


def _tool(row, k):
    v = row.get(k)
    if not v:
        return "-"
    if "error" in v:
        return "failed"
    return _mb(v["offchip_bytes"])


def _row_text(row):
    o = row["ours"]
    return (f"{row['model']}: ZigZag {_tool(row, 'zigzag')} MB, Stream fused {_tool(row, 'stream_fused')} MB, "
            f"Stream per-layer {_tool(row, 'stream_lbl')} MB | ours per-op {_mb(o.get('per-op'))}, fused "
            f"{_mb(o.get('fused'))}, tuned {_mb(o.get('tuned'))}, poly {_mb(o.get('poly'))}, floor {_mb(o.get('floor'))} MB")


def _markdown(results, argv):
    cols = ("model", "ZigZag (ours run)", "Stream fused (ours run)", "Stream per-layer (ours run)",
            "ZigZag (pub.)", "Stream fused (pub.)", "Stream per-layer (pub.)", "tvm-poly per-op", "fused", "tuned",
            "poly", "floor")
    lines = [f"Off-chip (HBM/DRAM) MB. Command: `python scripts/peers_stream_zigzag.py {' '.join(argv)}`", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    notes = []
    for m, r in results.items():
        o, p = r["ours"], r["published"]
        lines.append("| " + " | ".join([m, _tool(r, "zigzag"), _tool(r, "stream_fused"), _tool(r, "stream_lbl"),
                                        str(p.get("zigzag_mb", "-")), str(p.get("stream_fused_mb", "-")),
                                        str(p.get("stream_layer_mb", "-")), _mb(o.get("per-op")), _mb(o.get("fused")),
                                        _mb(o.get("tuned")), _mb(o.get("poly")), _mb(o.get("floor"))]) + " |")
        for k in ("zigzag", "stream_fused", "stream_lbl"):
            if isinstance(r.get(k), dict) and "error" in r[k]:
                notes.append(f"- {m} {k}: {r[k]['error']}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


if __name__ == "__main__":
    sys.exit(main())
