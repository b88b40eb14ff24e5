"""tvm-poly bench: JSON schema on a small model, resume, table and plots."""
import json
import os

import pytest

from tvm_poly import bench

CELL_KEYS = {"model", "planner", "config", "dtype", "batch", "status", "error", "hbm_read_bytes",
             "hbm_write_bytes", "hbm_bytes", "compulsory_bytes", "floor_ratio", "cycles", "latency_us",
             "dma_stall_cycles", "macs", "macs_per_hbm_byte", "mfu", "sbuf_peak_bytes", "kernels",
             "instructions", "compile_seconds", "simulate_seconds", "rel_err", "planner_info", "per_kernel"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench"))
    rc = bench.main(["--models", "squeezenet", "--planners", "per-op,fused", "--out", out])
    assert rc == 0
    with open(os.path.join(out, "bench.json")) as f:
        return out, json.load(f)


def test_json_schema(run):
    out, data = run
    assert data["schema"] == bench.SCHEMA
    assert data["command"].startswith("tvm-poly bench --models squeezenet")
    assert set(data["cells"]) == {"squeezenet|per-op|inf2|float32|b1", "squeezenet|fused|inf2|float32|b1"}
    for c in data["cells"].values():
        assert c["status"] == "ok", c["error"]
        assert CELL_KEYS <= set(c)
        assert c["hbm_bytes"] == c["hbm_read_bytes"] + c["hbm_write_bytes"] >= c["compulsory_bytes"] > 0
        assert c["floor_ratio"] >= 1.0 and c["cycles"] > 0 and c["macs"] > 0
        assert c["rel_err"] is not None and c["rel_err"] < 1e-3
        assert sum(r + w for _, r, w, _ in c["per_kernel"]) == c["hbm_bytes"]
    fused = data["cells"]["squeezenet|fused|inf2|float32|b1"]
    assert fused["planner_info"]["tvm_groups"] > 0


def test_table_and_plots(run):
    out, data = run
    md = open(os.path.join(out, "bench.md")).read()
    assert "| model | planner |" in md and "squeezenet | fused" in md
    for p in ("hbm_bytes.png", "per_kernel_traffic_squeezenet.png", "timeline.png"):
        assert os.path.getsize(os.path.join(out, p)) > 1000


def test_resumes_finished_cells(run, monkeypatch):
    out, data = run
    calls = []
    monkeypatch.setattr(bench, "run_cell", lambda *a, **k: calls.append(a) or {"status": "error", "error": "x"})
    assert bench.main(["--models", "squeezenet", "--planners", "per-op,fused", "--out", out, "--no-plots"]) == 0
    assert calls == []
    after = json.load(open(os.path.join(out, "bench.json")))
    assert after["cells"] == data["cells"]


def test_failing_cell_is_recorded_not_raised():
    c = bench.run_cell("squeezenet", "per-op", "no-such-config", "float32", 1, reference=False)
    assert c["status"] == "error" and c["error"]


def test_bad_options_are_user_errors():
    from tvm_poly.cli import main

    assert main(["bench", "--models", "nope"]) == 2
    assert main(["bench", "--planners", "nope", "--models", "squeezenet"]) == 2


def test_compulsory_floor_counts_weights_in_compute_dtype():
    from tests.codegen_util import GraphBuilder
    import numpy as np

    gb = GraphBuilder()
    x = gb.input("x", (1, 8))
    w = gb.const("w", np.ones((8, 4)))
    g = gb.build(gb.op("matmul", [x, w], (1, 4)))
    assert bench.compulsory_bytes(g, "float32") == 8 * 4 + 32 * 4 + 4 * 4
    assert bench.compulsory_bytes(g, "bfloat16") == 8 * 4 + 32 * 2 + 4 * 4


def test_latency_profile_script(capsys):
    """scripts/latency_profile.py (the probes behind notes/planner.md): its DMA work never exceeds
    the simulated latency and every queue finishes by the end."""
    import re
    import runpy
    import sys

    from target import cost

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "latency_profile.py")

    def profile(*extra):
        argv, sys.argv = sys.argv, ["latency_profile.py", "squeezenet", "--bucket", "50", *extra]
        ticks = cost.dma_ticks
        try:
            with pytest.raises(SystemExit) as e:
                runpy.run_path(path, run_name="__main__")
        finally:
            sys.argv = argv
            cost.dma_ticks = ticks  # a what-if patches the cost model
        assert e.value.code == 0
        out = capsys.readouterr().out
        lat = float(re.search(r": ([\d.]+) us, HBM", out).group(1))
        work = float(re.search(r"DMA work: summed queue busy time / \d+ = ([\d.]+) us", out).group(1))
        last = float(re.search(r"queues finish between [\d.]+ and ([\d.]+) us", out).group(1))
        idle = float(re.search(r"DMA idle per queue: ([\d.]+) us", out).group(1))
        assert 0 < work <= lat and last <= lat + 1e-6
        assert abs(work + idle - lat) < 0.5  # every queue is busy or idle for the whole run
        assert "Tensor-engine gaps" in out and "per kernel" in out
        return lat, work

    lat, work = profile()
    # what-if: no trigger latency -- less DMA work by about one latency per transfer
    lat0, work0 = profile("--trigger-latency-scale", "0")
    assert work0 < work - 1.0 and lat0 < lat
