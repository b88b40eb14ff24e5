"""Partition mechanics of the polyinf Relax pass, on tiny modules.

Segment formation, host fallback, the begin/report protocol and the hook are tested with
a relu-only fake code generator (tests/_fake_polyinf_backend.py) so that each case is
exact and fast; the real code generator is exercised in test_tvm_compile.py."""
import json
import os
import sys
import unittest.mock as um

import numpy as np
import pytest

import tvm
from tvm import relax

import tvm_poly
from tvm_poly import pipeline, runtime
from tvm_poly.errors import OptionError, PlannerError

sys.path.insert(0, os.path.dirname(__file__))
import _fake_polyinf_backend as fake  # noqa: E402

SHAPE = (1, 8, 4, 4)


def _module(ops):
    """main(x) applying ``ops`` (names of relax.op functions) in sequence."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            v = x
            for op in ops:
                v = bb.emit({"relu": relax.op.nn.relu, "exp": relax.op.exp,
                             "neg": relax.op.negative}[op](v))
            o = bb.emit_output(v)
        bb.emit_func_output(o)
    return bb.get()


def _ref(ops, x):
    for op in ops:
        x = {"relu": lambda a: np.maximum(a, 0), "exp": np.exp, "neg": np.negative}[op](x)
    return x


@pytest.fixture
def fake_backend():
    with um.patch.object(pipeline, "_import_backend", lambda: (fake, fake)):
        yield


def _calls(mod, name):
    return mod.script().count(f'"{name}"')


def _run(ex, x):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("ops,segments,host", [
    (["relu", "relu"], 1, 0),
    (["relu", "exp", "relu"], 2, 1),
    (["exp", "neg"], 0, 2),
    (["relu", "relu", "exp", "relu", "neg"], 2, 2),
])
def test_partition_and_numbers(fake_backend, ops, segments, host):
    mod = _module(ops)
    with tvm.target.Target("polyinf"):
        part = pipeline.PolyinfPartition()(mod)
    info = pipeline.last_compile()
    assert _calls(part, "polyinf.run") == segments == len(info["segments"])
    assert len(info["host_ops"]) == host
    assert _calls(part, "polyinf.begin") == 1
    assert "relax.nn.relu" not in str(part) or segments == 0
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    ex = tvm.compile(mod, target="polyinf")
    np.testing.assert_allclose(_run(ex, x), _ref(ops, x), rtol=1e-6, atol=1e-6)
    rep = tvm_poly.last_report().to_dict()
    assert rep["segments"] == segments
    assert [h["op"] for h in rep["host_ops"]] == [h["op"] for h in info["host_ops"]]
    assert rep["planner"] == "poly" and rep["config"] == "inf2" and rep["dtype"] == "float32"
    n_relu = ops.count("relu")
    assert rep["hbm_read_bytes"] == n_relu * int(np.prod(SHAPE)) * 4
    assert len(rep["operators"]) == n_relu
    json.dumps(rep)  # plain JSON


def test_original_module_untouched(fake_backend):
    mod = _module(["relu", "exp"])
    before = mod.script()
    with tvm.target.Target("polyinf"):
        pipeline.PolyinfPartition()(mod)
    assert mod.script() == before


def test_hook_leaves_other_targets_alone(fake_backend):
    mod = _module(["relu", "exp"])
    pipeline._LAST_COMPILE.clear()
    ex = tvm.compile(mod, target="llvm")
    assert pipeline.last_compile() == {}
    x = np.ones(SHAPE, "float32")
    runtime.reset_report()
    np.testing.assert_allclose(_run(ex, x), np.exp(x), rtol=1e-6)
    assert tvm_poly.last_report() is None


def test_relax_build_and_inf1_and_hook_idempotent(fake_backend):
    pipeline.install_hook()
    pipeline.install_hook()
    from tvm.relax import pipeline as rp
    assert not hasattr(rp.PIPELINE_MAP["default"].__polyinf_orig__, "__polyinf_orig__")
    mod = _module(["relu"])
    ex = relax.build(mod, target="polyinf/inf1")
    x = -np.ones(SHAPE, "float32")
    assert (_run(ex, x) == 0).all()
    assert tvm_poly.last_report().to_dict()["config"] == "inf1"


def test_report_resets_each_inference(fake_backend):
    ex = tvm.compile(_module(["relu", "exp", "relu"]), target="polyinf")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = tvm.runtime.tensor(np.ones(SHAPE, "float32"))
    vm["main"](x)
    first = tvm_poly.last_report().to_dict()
    vm["main"](x)
    second = tvm_poly.last_report().to_dict()
    assert first["segments"] == second["segments"] == 2
    assert first["cycles"] == second["cycles"] > 0
    # a host-only model reports zero device work and its host ops, not a stale report
    ex2 = tvm.compile(_module(["exp"]), target="polyinf")
    _run(ex2, np.ones(SHAPE, "float32"))
    r = tvm_poly.last_report().to_dict()
    assert r["segments"] == 0 and r["cycles"] == 0 and r["hbm_read_bytes"] == 0
    assert [h["op"] for h in r["host_ops"]] == ["relax.exp"]


def test_options_validate_and_nest(fake_backend):
    assert pipeline.current_options() == {"planner": "poly", "dtype": "float32"}
    with tvm_poly.options(dtype="bf16") as o:
        assert o["dtype"] == "bfloat16"
        with tvm_poly.options(planner="per-op"):
            assert pipeline.current_options()["dtype"] == "bfloat16"
    assert pipeline.current_options()["dtype"] == "float32"
    with pytest.raises(PlannerError, match="unknown planner 'magic'"):
        with tvm_poly.options(planner="magic"):
            pass
    with pytest.raises(OptionError):
        with tvm_poly.options(dtype="int8"):
            pass
    with pytest.raises(PlannerError):  # typed even through tvm.compile's FFI
        with tvm.target.Target("polyinf"):
            pipeline.PolyinfPartition(planner="magic")(_module(["relu"]))


def test_blob_roundtrip():
    blob = pipeline.pack_blob({"a": [1, 2]}, "program text\nline 2\n")
    assert pipeline.unpack_blob(blob) == ({"a": [1, 2]}, "program text\nline 2\n")


def test_unrelated_host_op_does_not_split_a_device_run(fake_backend):
    """main: a = relu(x); b = exp(x) (host, independent); c = relu(a); out = b + c.
    The order stays on the device while it can: one segment [a, c], not two."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(x))
            b = bb.emit(relax.op.exp(x))
            c = bb.emit(relax.op.nn.relu(a))
            o = bb.emit_output(relax.op.add(b, c))
        bb.emit_func_output(o)
    mod = bb.get()
    ex = tvm.compile(mod, target="polyinf")
    info = pipeline.last_compile()
    assert [s["ops"] for s in info["segments"]] == [["lv", "lv2"]]
    xv = np.random.default_rng(1).standard_normal(SHAPE).astype("float32")
    np.testing.assert_allclose(_run(ex, xv), np.exp(xv) + np.maximum(xv, 0), rtol=1e-6)


def test_partition_is_idempotent(fake_backend):
    with tvm.target.Target("polyinf"):
        once = pipeline.PolyinfPartition()(_module(["relu", "exp", "relu"]))
        twice = pipeline.PolyinfPartition()(once)
    assert twice.script() == once.script()
    assert _calls(twice, "polyinf.begin") == 1 and _calls(twice, "polyinf.run") == 2


def test_graph_extraction_failure_runs_on_host_with_report():
    class Broken:
        PLANNERS = ("per-op",)

        @staticmethod
        def graph_from_relax(func):
            raise NotImplementedError("construct not modelled")

    mod = _module(["relu", "exp"])
    with um.patch.object(pipeline, "_import_backend", lambda: (Broken, fake)):
        with pytest.warns(UserWarning, match="graph extraction failed"):
            ex = tvm.compile(mod, target="polyinf")
    x = np.full(SHAPE, -1.0, "float32")
    np.testing.assert_allclose(_run(ex, x), np.ones(SHAPE), rtol=1e-6)
    rep = tvm_poly.last_report().to_dict()
    assert rep["segments"] == 0
    assert [h["op"] for h in rep["host_ops"]] == ["relax.nn.relu", "relax.exp"]
    assert all("construct not modelled" in h["reason"] for h in rep["host_ops"])


def test_multi_segment_export_fresh_process_with_traces(fake_backend, tmp_path):
    import subprocess
    import textwrap
    ops = ["relu", "exp", "relu", "neg", "relu"]
    ex = tvm.compile(_module(ops), target="polyinf")
    assert len(pipeline.last_compile()["segments"]) == 3
    lib = tmp_path / "multi.so"
    ex.export_library(str(lib))
    x = np.random.default_rng(3).standard_normal(SHAPE).astype("float32")
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import json, numpy as np, tvm
        from tvm import relax
        from tvm_poly import runtime
        ex = tvm.runtime.load_module({str(lib)!r})
        vm = relax.VirtualMachine(ex, tvm.cpu())
        runtime.set_trace_path({str(tmp_path / 'trace.json')!r})
        out = vm["main"](tvm.runtime.tensor(np.load({str(tmp_path / 'x.npy')!r}))).numpy()
        np.save({str(tmp_path / 'out.npy')!r}, out)
        print(json.dumps(runtime.last_report().to_dict()))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), _ref(ops, x), rtol=1e-6, atol=1e-6)
    assert rep["segments"] == 3 and len(rep["operators"]) == 3
    assert [h["op"] for h in rep["host_ops"]] == ["relax.exp", "relax.negative"]
    assert rep["hbm_read_bytes"] == 3 * int(np.prod(SHAPE)) * 4
    for name in ("trace.json", "trace.seg1.json", "trace.seg2.json"):
        assert json.load(open(tmp_path / name))["traceEvents"], name
