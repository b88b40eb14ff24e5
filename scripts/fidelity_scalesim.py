"""Fidelity: our simulator's Tensor-engine cycles vs SCALE-Sim on ResNet-50's first conv layers.

    python scripts/fidelity_scalesim.py            # creates .venv-scalesim on first use
    python scripts/fidelity_scalesim.py --no-scalesim   # ours only (peer figures for comparison)
    python scripts/fidelity_scalesim.py --json out/fidelity.json

SCALE-Sim (``pip install scalesim``, needs numpy<2.3) runs in its own virtual environment,
``/work/main/.venv-scalesim`` (not committed; the script makes it with
``python3 -m venv .venv-scalesim && .venv-scalesim/bin/pip install scalesim==3.0.0 "numpy<2.3"``).
It is configured as a 128x128 weight-stationary array (the NeuronCore's Tensor engine keeps the
stationary operand -- the weights -- in the PEs) with SRAMs large enough for no stalls; we read
"Total Cycles" from its COMPUTE_REPORT.csv.

Our side: each conv is generated as a real matmul instruction sequence (``target/conv_tiles.py``:
im2col packing of (c, r, s) onto partitions for the stem, tap-by-tap and packed taps for the
3x3), run on the simulator with all checks, verified against a NumPy convolution, and its
Tensor-engine active cycles (NKI cost formula, Tensor clock) are compared.  Cycles are compared as
PE-array steps: SCALE-Sim is clock-agnostic; the peer figures are quoted "at 1.4 GHz" only to
convert to time.

Measured (2026-12-03, inf2 config; SCALE-Sim 3.0.0 WS 128x128):

=================  =========  ==========  ========  ==========================
layer              peer       SCALE-Sim   ours      ours vs SCALE-Sim
=================  =========  ==========  ========  ==========================
conv1 7x7/2 3->64  27,281     26,301      25,088    -4.6%  (im2col, 2 K-chunks)
1x1 64->64 56x56   3,517      3,517       3,136     -10.8%
3x3 64->64 56x56   17,589     17,589      28,224    +60.5% (tap by tap)
3x3 64->64 56x56   17,589     17,589      15,680    -10.9% (packed taps)
=================  =========  ==========  ========  ==========================

Why they differ:

* All "ours below SCALE-Sim" gaps (5-11%) are array fill/drain.  NKI's matmul cost
  ``max(min(64, N_stat), N_moving)`` is the *back-to-back* issue interval: the moving operand streams
  one column per cycle and consecutive matmuls overlap the systolic skew.  SCALE-Sim charges every
  fold its full pipeline latency (about rows + cols + N steps; e.g. the 1x1 layer is one fold of
  3,136 pixels + 381 fill/drain = 3,517).  Our model pays the ~60-cycle fixed access overhead once
  per cross-engine dependency instead (it is latency, not occupancy).
* conv1: our peer figure 27,281 is ~1k above the 26,301 that SCALE-Sim 3.0.0 gives us for the
  padded 230x230 input (224 unpadded gives 24,963); the peer's exact input/padding convention is
  not known.  Ours: 28 pixel tiles of 4 output rows (448 pixels), each two matmuls (K chunks
  of 128 + 19 of the 147 (c, r, s) rows): exactly 2 x 12,544 = 25,088 cycles.
* 3x3 tap by tap is +60%: each tap is a K = 64 matmul, so half the 128 PE rows idle and the layer
  takes 9 x 3,136 cycles, whereas SCALE-Sim's im2col packs all 576 = 9 x 64 rows into 5 full
  folds.  This is a real cost of the tap-by-tap mapping, not a simulator error; packing two taps
  per matmul (K = 128) recovers it and lands 11% below SCALE-Sim for the fill/drain reason above.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
VENV = os.path.join(ROOT, ".venv-scalesim")

# name, (C, H, W, K, R, S, stride, pad), SCALE-Sim topology row (padded input), peer figure
LAYERS = [
    ("conv1 7x7/2 3->64", (3, 224, 224, 64, 7, 7, 2, 3), (230, 230, 7, 7, 3, 64, 2), 27281, ["im2col"]),
    ("1x1 64->64 56x56", (64, 56, 56, 64, 1, 1, 1, 0), (56, 56, 1, 1, 64, 64, 1), 3517, ["taps"]),
    ("3x3 64->64 56x56", (64, 56, 56, 64, 3, 3, 1, 1), (58, 58, 3, 3, 64, 64, 1), 17589, ["taps", "packed_taps"]),
]

SCALESIM_CFG = """[general]
run_name = fidelity

[architecture_presets]
ArrayHeight:    128
ArrayWidth:     128
IfmapSramSzkB:    6144
FilterSramSzkB:   6144
OfmapSramSzkB:    6144
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 10
Dataflow : ws
MemoryBanks:   1
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""

DRIVER = """
from scalesim.scale_sim import scalesim
s = scalesim(save_disk_space=True, verbose=False, config="cfg.cfg", topology="topo.csv", layout="layout.csv")
s.run_scale(top_path="out")
"""


def ensure_venv() -> str:
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        print(f"creating {VENV} with scalesim (numpy<2.3) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    r = subprocess.run([py, "-c", "import scalesim"], capture_output=True)
    if r.returncode:
        subprocess.run([py, "-m", "pip", "install", "-q", "scalesim==3.0.0", "numpy<2.3"], check=True)
    return py


def run_scalesim() -> dict:
    py = ensure_venv()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "cfg.cfg"), "w") as f:
            f.write(SCALESIM_CFG)
        with open(os.path.join(d, "topo.csv"), "w") as f:
            f.write("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n")
            for k, (_, _, row, _, _) in enumerate(LAYERS):
                f.write(f"l{k}, " + ", ".join(str(x) for x in row) + ",\n")
        with open(os.path.join(d, "layout.csv"), "w") as f:
            f.write("Layer name, a, b, c, d, e, f, g, h,\n")
            for k in range(len(LAYERS)):
                f.write(f"l{k}, 1, 1, 1, 1, 1, 1, 1, 1,\n")
        with open(os.path.join(d, "drive.py"), "w") as f:
            f.write(DRIVER)
        subprocess.run([py, "drive.py"], cwd=d, check=True, capture_output=True)
        rep = os.path.join(d, "out", "fidelity", "COMPUTE_REPORT.csv")
        out = {}
        with open(rep) as f:
            head = [h.strip() for h in f.readline().split(",")]
            col = head.index("Total Cycles")
            for line in f:
                cells = [c.strip() for c in line.split(",")]
                if cells and cells[0]:
                    out[int(cells[0])] = int(cells[col])
        return out


def run_ours(config="inf2") -> list:
    import numpy as np
    from target.conv_tiles import conv_program
    from target.simulator import simulate
    rows = []
    for k, (name, shape, _, _, modes) in enumerate(LAYERS):
        for mode in modes:
            prog, tens, ref = conv_program(*shape, mode=mode)
            t0 = time.perf_counter()
            res = simulate(prog, config, tens, check=True)
            wall = time.perf_counter() - t0
            err = float(np.abs(res.outputs["y"] - ref).max() / np.abs(ref).max())
            assert err < 1e-3, (name, mode, err)
            mm = [i for n, ins in prog.streams if n == "tensor" for i in ins]
            rows.append(dict(layer=k, name=name, mode=mode, tensor_cycles=res.report.engine_active_cycles["tensor"],
                             matmuls=len(mm), macs=res.report.macs, rel_err=err, sim_wall_s=round(wall, 3)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-scalesim", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--config", default="inf2")
    a = ap.parse_args(argv)
    ours = run_ours(a.config)
    ss = {} if a.no_scalesim else run_scalesim()
    print(f"{'layer':20s} {'mode':12s} {'matmuls':>7s} {'peer':>7s} {'SCALE-Sim':>9s} {'ours':>7s} {'vs SCALE-Sim':>12s}")
    for r in ours:
        peer = LAYERS[r["layer"]][3]
        s = ss.get(r["layer"])
        r["peer"] = peer
        r["scalesim"] = s
        ref = s if s else peer
        r["diff_pct"] = round(100.0 * (r["tensor_cycles"] - ref) / ref, 1)
        flag = "  >15%" if abs(r["diff_pct"]) > 15 else ""
        print(f"{r['name']:20s} {r['mode']:12s} {r['matmuls']:7d} {peer:7d} {str(s or '-'):>9s} "
              f"{r['tensor_cycles']:7d} {r['diff_pct']:+11.1f}%{flag}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(ours, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
