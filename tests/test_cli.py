"""`tvm-poly run` end to end, and every bad input as a one-line error with exit status 2."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tvm_poly import cli, models

sys.path.insert(0, os.path.dirname(__file__))
import _onnx_tiny  # noqa: E402

INF2_TOML = os.path.join(os.path.dirname(os.path.dirname(__file__)), "target", "configs", "inf2.toml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tiny = d / "tiny.onnx"
    onnx.save(_onnx_tiny.tiny_cnn(seed=5), str(tiny))
    onnx.save(_onnx_tiny.tiny_cnn(seed=5, batch=2), str(d / "tiny2.onnx"))
    dyn = d / "dyn.onnx"
    onnx.save(_onnx_tiny.tiny_cnn(seed=5, dynamic_batch=True), str(dyn))
    data = tiny.read_bytes()
    (d / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (d / "garbage.onnx").write_bytes(b"\x00garbage\xff" * 10)
    unsup = d / "unsup.onnx"
    onnx.save(_onnx_tiny.tiny_cnn(extra_op="Celu"), str(unsup))
    onnx.save(_onnx_tiny.tiny_cnn(extra_op="Erf"), str(d / "host_erf.onnx"))  # imports; no NeuronCore lowering
    x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "x_shape.npy", x[:, :, :8])
    np.save(d / "x_dtype.npy", x.astype(np.float64))
    (d / "notnpy.npy").write_bytes(b"nope")
    small = open(INF2_TOML).read().replace('name = "inf2"', 'name = "small"')
    small = re.sub(r"sbuf_bytes *= *\d+", "sbuf_bytes = 16384", small)
    (d / "small.toml").write_text(small)
    (d / "broken.toml").write_text("[memory\n")
    return d


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_end_to_end(files, capsys, tmp_path):
    outs, rep, trace = tmp_path / "o.npz", tmp_path / "r.json", tmp_path / "t.json"
    rc, out, err = run(["run", str(files / "tiny.onnx"), "--input", f"x={files / 'x.npy'}",
                        "--save-outputs", str(outs), "--report", str(rep), "--trace", str(trace),
                        "--reference"], capsys)
    assert rc == 0, err
    for label in ("model", "target", "cycles", "hbm_read_bytes", "engine_active_cycles",
                  "output", "rel err vs onnxruntime"):
        assert re.search(rf"^{label}\s", out, re.M), label
    saved = np.load(outs)
    assert list(saved.keys()) == ["y"]
    x = np.load(files / "x.npy")
    ref = models.reference_outputs(onnx.load(str(files / "tiny.onnx")), {"x": x})["y"]
    assert models.rel_err(saved["y"], ref) <= 1e-3
    r = json.loads(rep.read_text())
    for k in ("cycles", "latency_us", "hbm_read_bytes", "hbm_write_bytes", "dma_transfer_count",
              "dma_transfer_total_bytes", "dma_stall_cycles", "engine_active_cycles",
              "sbuf_peak_bytes", "psum_peak_bytes", "macs", "planner", "config", "host_ops",
              "operators"):
        assert k in r, k
    assert r["planner"] == "poly" and r["config"] == "inf2" and r["host_ops"] == []
    assert r["inputs"]["x"]["source"] == "file" and r["reference_rel_err"]["y"] <= 1e-3
    t = json.loads(trace.read_text())
    assert len([e for e in t["traceEvents"] if e.get("ph") == "X"]) > 10
    threads = {e["args"]["name"] for e in t["traceEvents"] if e.get("name") == "thread_name"}
    assert "tensor" in threads and any(n.startswith("dma") for n in threads)


def test_run_options_inf1_bf16_batch(files, capsys, tmp_path):
    rep = tmp_path / "r.json"
    rc, out, err = run(["run", str(files / "dyn.onnx"), "--batch", "2", "--target", "polyinf/inf1",
                        "--dtype", "bfloat16", "--report", str(rep), "--reference"],
                       capsys)
    assert rc == 0, err
    r = json.loads(rep.read_text())
    assert r["config"] == "inf1" and r["dtype"] == "bfloat16"
    assert r["inputs"]["x"] == {"shape": [2, 3, 16, 16], "source": "random (seed 0)"}
    assert 0 < r["reference_rel_err"]["y"] <= 2e-2


def test_run_config_toml_and_llvm(files, capsys, tmp_path):
    cfg = tmp_path / "mine.toml"
    cfg.write_text(open(INF2_TOML).read().replace('name = "inf2"', 'name = "mine"'))
    rep = tmp_path / "r.json"
    rc, out, err = run(["run", str(files / "tiny.onnx"), "--target", str(cfg), "--report", str(rep)],
                       capsys)
    assert rc == 0, err
    assert json.loads(rep.read_text())["config"] == "mine"
    rc, out, err = run(["run", str(files / "tiny.onnx"), "--target", "llvm"], capsys)
    assert rc == 0, err
    assert "cycles" not in out


def test_seeded_random_inputs_are_reproducible(files, capsys, tmp_path):
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    for path, seed in ((a, "3"), (b, "3"), (c, "4")):
        rc, _, err = run(["run", str(files / "tiny.onnx"), "--seed", seed, "--save-outputs",
                          str(path)], capsys)
        assert rc == 0, err
    assert np.array_equal(np.load(a)["y"], np.load(b)["y"])
    assert not np.array_equal(np.load(a)["y"], np.load(c)["y"])


BAD = [
    (["run", "{d}/trunc.onnx"], "malformed or truncated ONNX"),
    (["run", "{d}/garbage.onnx"], "malformed or truncated ONNX"),
    (["run", "{d}/missing.onnx"], "not found"),
    (["run", "{d}/unsup.onnx"], "unsupported ONNX operator.*Celu"),
    (["run", "{d}/dyn.onnx"], "dynamic batch.*--batch"),
    (["run", "{d}/tiny2.onnx", "--batch", "3"], "fixed batch 2"),
    (["run", "{d}/tiny.onnx", "--batch", "zero"], "invalid int"),
    (["run", "{d}/tiny.onnx", "--input", "x={d}/x_shape.npy"], r"shape \(1, 3, 8, 16\)"),
    (["run", "{d}/tiny.onnx", "--input", "x={d}/x_dtype.npy"], "dtype float64"),
    (["run", "{d}/tiny.onnx", "--input", "q={d}/x.npy"], "unknown input"),
    (["run", "{d}/tiny.onnx", "--input", "x={d}/nofile.npy"], "file not found"),
    (["run", "{d}/tiny.onnx", "--input", "x={d}/notnpy.npy"], "cannot read"),
    (["run", "{d}/tiny.onnx", "--input", "x"], "NAME=FILE"),
    (["run", "{d}/tiny.onnx", "--target", "polyinf/inf7"], "unknown target"),
    (["run", "{d}/tiny.onnx", "--target", "gpu9000"], "unknown target"),
    (["run", "{d}/tiny.onnx", "--target", "{d}/none.toml"], "not found"),
    (["run", "{d}/tiny.onnx", "--target", "{d}/broken.toml"], "invalid hardware config"),
    (["run", "{d}/tiny.onnx", "--target", "{d}/small.toml"], "too small"),
    (["run", "{d}/tiny.onnx", "--planner", "greedy"], "unknown planner 'greedy'"),
    (["run", "{d}/tiny.onnx", "--dtype", "fp8"], "unknown dtype"),
    (["run", "{d}/tiny.onnx", "--trace", "{d}/t.json", "--target", "llvm"], "needs a polyinf"),
    (["run", "--no-such-flag"], "unrecognized arguments"),
    (["frobnicate"], "unknown command"),
]


@pytest.mark.parametrize("argv,msg", BAD, ids=[" ".join(a[1:] if len(a) > 1 else a)[-40:]
                                                 for a, _ in BAD])
def test_bad_input_is_one_line_error(files, capsys, argv, msg):
    argv = [a.format(d=files) for a in argv]
    with pytest.raises(SystemExit) if "--no-such-flag" in argv or "zero" in argv else _noop():
        rc, out, err = run(argv, capsys)
        assert rc == 2
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert re.search(msg, lines[0]), lines[0]
        assert "Traceback" not in err


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["run", "--batch", "zero"])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "invalid int" in err[0]


def test_help_and_subcommands(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "run" in capsys.readouterr().out
    capsys.readouterr()
    for sub in ("sim", "poly", "plan", "bench"):  # dispatched to their own modules
        try:
            rc = cli.main([sub, "--help"])
        except SystemExit as e:  # argparse --help
            rc = e.code
        assert rc == 0
        assert "usage" in capsys.readouterr().out.lower()


def test_plan_subcommand_light_model_and_bad_name(capsys):
    assert cli.main(["plan", "squeezenet", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan by poly (bfloat16):") and "resident" in out
    # the planner's first plan without lowering: the same plan here (no alternative is lowered)
    assert cli.main(["plan", "squeezenet", "--dtype", "bfloat16", "--planner-only"]) == 0
    first = capsys.readouterr().out
    def lines(text):  # (the planner's own time differs between runs)
        return [ln for ln in text.splitlines() if "compulsory traffic" not in ln]
    assert lines(first) == lines(out) and "plans the compiler lowered" not in out
    assert cli.main(["plan", "no_such_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown light model 'no_such_model'" in err and len(err.splitlines()) == 1


def test_console_script_default_resnet50(tmp_path):
    """`tvm-poly run` with no model: the bundled ResNet-50 with seeded random weights."""
    exe = os.path.join(os.path.dirname(sys.executable), "tvm-poly")
    rep = tmp_path / "r.json"
    res = subprocess.run([exe, "run", "--report", str(rep)], capture_output=True, text=True,
                         timeout=600, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "light_resnet50" in res.stdout and "Traceback" not in res.stderr
    r = json.loads(rep.read_text())
    # PE work: the model's 4.09 G MACs plus the residual adds accumulated into PSUM by identity
    # matmuls (K = 128 per output element of the 16 shortcut adds: 0.71 G), less the zero-padding
    # taps that convs reading SBUF-resident inputs skip (clipped taps: ~0.13 G), plus the second
    # copy of the output that the stem and the stage-1 3x3 convs' producers write onto idle lanes
    # (doubled stationary columns: ~0.25 G)
    assert r["host_ops"] == [] and 4.8e9 < r["macs"] < 5.0e9
    assert r["outputs"] == {"gpu_0/softmax_1": {"shape": [1, 1000], "dtype": "float32"}}


def test_console_script_bad_model_exit_code(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "tvm-poly")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"xx")
    res = subprocess.run([exe, "run", str(bad)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: malformed")


def test_run_rebatches_a_batch1_model(files, capsys, tmp_path):
    rep, outs = tmp_path / "r.json", tmp_path / "o.npz"
    rc, out, err = run(["run", str(files / "tiny.onnx"), "--batch", "4", "--report", str(rep),
                        "--save-outputs", str(outs), "--reference"], capsys)
    assert rc == 0, err
    r = json.loads(rep.read_text())
    assert r["inputs"]["x"]["shape"] == [4, 3, 16, 16] and r["host_ops"] == []
    assert np.load(outs)["y"].shape == (4, 10) and r["reference_rel_err"]["y"] <= 1e-3


def test_run_says_why_an_operator_stays_on_the_host(files, capsys):
    """The summary names each host operator's reason (a code generator failure must not look like
    a silent "0 ops on the NeuronCore")."""
    rc, out, err = run(["run", str(files / "host_erf.onnx")], capsys)
    assert rc == 0, err
    assert re.search(r"^offload\s.*1 on the host \(erf\)", out, re.M)
    assert re.search(r"^host because\s+operator erf has no NeuronCore lowering", out, re.M)
