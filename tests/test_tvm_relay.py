"""The relay / graph_executor façade: an old Relay script with only its imports changed."""
import os
import sys

import numpy as np
import pytest

import tvm

import tvm_poly
from tvm_poly import models, relay
from tvm_poly.contrib import graph_executor
from tvm_poly.errors import InputShapeError

sys.path.insert(0, os.path.dirname(__file__))
import _onnx_tiny  # noqa: E402


@pytest.fixture(scope="module")
def case():
    model = _onnx_tiny.tiny_cnn(seed=3)
    x = models.random_inputs(model, seed=3)["x"]
    ref = models.reference_outputs(model, {"x": x})["y"]
    return model, x, ref


def old_script(onnx_model, data, target, freeze_params=True):
    """What a pre-Relax TVM script did (imports aside)."""
    shape_dict = {"x": data.shape}
    mod, params = relay.frontend.from_onnx(onnx_model, shape_dict, freeze_params=freeze_params)
    with tvm.transform.PassContext(opt_level=3):
        lib = relay.build(mod, target=target, params=params)
    dev = tvm.cpu(0)
    module = graph_executor.GraphModule(lib["default"](dev))
    module.set_input("x", tvm.runtime.tensor(data))
    module.run()
    return lib, module, module.get_output(0).numpy(), params


@pytest.mark.parametrize("target", ["llvm", "polyinf"])
@pytest.mark.parametrize("freeze", [True, False])
def test_old_script_runs(case, target, freeze):
    model, x, ref, = case
    lib, m, out, params = old_script(model, x, target, freeze)
    assert out.shape == (1, 10)
    assert models.rel_err(out, ref) <= 1e-3
    assert (len(params) == 0) == freeze
    if not freeze:
        assert set(params) == {"w1", "w2", "b2", "s", "bb", "mu", "var", "wf", "bf"}
    assert m.get_num_outputs() == 1 and m.get_num_inputs() == 1
    np.testing.assert_array_equal(m.get_input("x").numpy(), x)
    if target == "polyinf":
        rep = tvm_poly.last_report().to_dict()
        assert rep["segments"] == 1 and rep["host_ops"] == []


def test_graph_module_api(case):
    model, x, ref = case
    lib, m, out, _ = old_script(model, x, "polyinf")
    m.set_input(0, x)
    m.run()
    np.testing.assert_array_equal(m.get_output(0).numpy(), out)
    m.run(x=x * 2)
    assert not np.allclose(m.get_output(0).numpy(), out)
    m.set_input(x=x)
    m.run()
    np.testing.assert_array_equal(m.get_output(0).numpy(), out)
    assert m.get_input_index("x") == 0
    with pytest.raises(InputShapeError, match="unknown input"):
        m.set_input("data", x)
    with pytest.raises(InputShapeError, match="shape"):
        m.set_input("x", x[:, :2])
    with pytest.raises(InputShapeError, match="dtype"):
        m.set_input("x", x.astype(np.float64))
    with pytest.raises(InputShapeError, match="out of range"):
        m.set_input(3, x)
    fresh = graph_executor.GraphModule(lib["default"](tvm.cpu()))
    with pytest.raises(InputShapeError, match="not set"):
        fresh.run()


def test_onnx_names_with_slashes_and_export(tmp_path):
    """ResNet-style input names ('gpu_0/data_0') work as set_input keys; the factory
    exports and loads back."""
    import onnx
    model = _onnx_tiny.tiny_cnn(seed=4)
    for n in model.graph.node:
        n.input[:] = ["gpu_0/data_0" if i == "x" else i for i in n.input]
    model.graph.input[0].name = "gpu_0/data_0"
    onnx.checker.check_model(model)
    x = models.random_inputs(model, seed=4)["gpu_0/data_0"]
    ref = models.reference_outputs(model, {"gpu_0/data_0": x})["y"]
    mod, params = relay.frontend.from_onnx(model, {"gpu_0/data_0": x.shape})
    lib = relay.build(mod, target="polyinf", params=params)
    m = graph_executor.GraphModule(lib["default"](tvm.cpu()))
    m.set_input("gpu_0/data_0", x)
    m.run()
    assert models.rel_err(m.get_output(0).numpy(), ref) <= 1e-3
    path = tmp_path / "lib.so"
    lib.export_library(str(path))
    lib2 = relay.load_module(str(path))
    m2 = graph_executor.GraphModule(lib2["default"](tvm.cpu()))
    m2.run(**{"gpu_0/data_0": x})
    np.testing.assert_array_equal(m2.get_output(0).numpy(), m.get_output(0).numpy())


def test_build_without_params_is_typed_error(case):
    model, x, ref = case
    mod, params = relay.frontend.from_onnx(model, {"x": x.shape}, freeze_params=False)
    with pytest.raises(InputShapeError, match="params"):
        relay.build(mod, target="llvm")
