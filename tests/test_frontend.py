"""ONNX import with typed errors, input validation, and the bundled light models."""
import os
import sys

import numpy as np
import onnx
import pytest

from tvm_poly import frontend, models
from tvm_poly.errors import (DynamicShapeError, InputShapeError, ModelError,
                             UnsupportedOperatorError)

sys.path.insert(0, os.path.dirname(__file__))
import _onnx_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bytes():
    return _onnx_tiny.tiny_cnn().SerializeToString()


@pytest.mark.parametrize("frac", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_truncated_file_is_model_error(tmp_path, tiny_bytes, frac):
    p = tmp_path / "cut.onnx"
    p.write_bytes(tiny_bytes[:int(len(tiny_bytes) * frac)])
    with pytest.raises(ModelError, match="cut.onnx"):
        frontend.load_onnx(str(p))


def test_every_truncation_is_rejected(tiny_bytes):
    """No prefix of a model parses into a 'valid' smaller model (checked every 97 bytes)."""
    for cut in range(1, len(tiny_bytes) - 1, 97):
        with pytest.raises(ModelError):
            frontend.read_onnx(tiny_bytes[:cut])


@pytest.mark.parametrize("data", [b"", b"not an onnx model at all", bytes(range(256)) * 4])
def test_garbage_is_model_error(tmp_path, data):
    p = tmp_path / "bad.onnx"
    p.write_bytes(data)
    with pytest.raises(ModelError):
        frontend.load_onnx(str(p))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        frontend.load_onnx(str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelError, match="directory"):
        frontend.load_onnx(str(tmp_path))


def test_invalid_graph_is_model_error():
    m = _onnx_tiny.tiny_cnn()
    m.graph.node[2].input[0] = "does_not_exist"
    with pytest.raises(ModelError, match="invalid ONNX model"):
        frontend.load_onnx(m)


def test_dynamic_batch_needs_batch():
    m = _onnx_tiny.tiny_cnn(dynamic_batch=True)
    with pytest.raises(DynamicShapeError, match="'x'.*batch"):
        frontend.load_onnx(m)
    mod = frontend.load_onnx(m, batch=2)
    assert [int(d) for d in mod["main"].params[0].ty.shape.values] == [2, 3, 16, 16]
    mod = frontend.load_onnx(m, shape={"x": (3, 3, 16, 16)})
    assert int(mod["main"].params[0].ty.shape.values[0]) == 3
    with pytest.raises(DynamicShapeError):
        frontend.load_onnx(m, batch=0)


def test_fixed_batch_other_than_1_cannot_be_changed():
    with pytest.raises(DynamicShapeError, match="fixed batch 2"):
        frontend.load_onnx(_onnx_tiny.tiny_cnn(batch=2), batch=4)
    mod = frontend.load_onnx(_onnx_tiny.tiny_cnn(batch=2), batch=2)
    assert int(mod["main"].params[0].ty.shape.values[0]) == 2


@pytest.mark.parametrize("name", ["shufflenet", "bvlc_alexnet"])
def test_rebatch_batch1_model(name):
    """--batch N on a fixed batch-1 model: inputs re-batched and Reshape constants follow
    (ShuffleNet's channel shuffles, AlexNet's flatten); sample i of the batch equals the
    batch-1 model on sample i."""
    m1 = models.light_model(name, logits=True)
    m3 = frontend.with_batch(m1, 3)
    onnx.checker.check_model(m3)
    assert models.input_specs(m3)[0][1][0] == 3
    x = models.random_inputs(m3, seed=0)
    (k, r3), = models.reference_outputs(m3, x).items()
    (_, r1), = models.reference_outputs(m1, {n: v[2:3] for n, v in x.items()}).items()
    assert r3.shape[0] == 3
    np.testing.assert_allclose(r3[2:3], r1, rtol=1e-5, atol=1e-5)
    assert frontend.with_batch(m1, 1) is m1
    mod = frontend.load_onnx(m1, batch=3)
    assert int(mod["main"].params[0].ty.shape.values[0]) == 3


def test_other_dynamic_dims_need_shape():
    m = _onnx_tiny.tiny_cnn()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(DynamicShapeError, match="'H'"):
        frontend.load_onnx(m, batch=1)


def test_shape_for_unknown_input():
    with pytest.raises(InputShapeError, match="unknown input"):
        frontend.load_onnx(_onnx_tiny.tiny_cnn(), shape={"y": (1, 2)})


@pytest.mark.parametrize("op,listed", [("Celu", "Celu"), ("LpNormalization", "LpNormalization"),
                                       ("MyCustomOp", "com.example.MyCustomOp")])
def test_unsupported_operator_listed_by_name(op, listed):
    """A valid ONNX operator the importer cannot convert is listed by name."""
    m = _onnx_tiny.tiny_cnn(extra_op=op)
    with pytest.raises(UnsupportedOperatorError, match=listed) as ei:
        frontend.load_onnx(m)
    assert ei.value.ops == [listed]


def test_unknown_standard_operator_is_model_error():
    m = _onnx_tiny.tiny_cnn(extra_op="NoSuchOp")
    with pytest.raises(ModelError, match="NoSuchOp"):
        frontend.load_onnx(m)


def test_unsupported_operator_error_keeps_ops():
    e = UnsupportedOperatorError(["B", "A", "A"])
    assert e.ops == ["A", "B"] and str(e) == "unsupported ONNX operator(s): A, B"
    again = UnsupportedOperatorError(str(e))  # as re-created across TVM's FFI
    assert again.ops == ["A", "B"] and str(again) == str(e)


def test_validate_inputs():
    specs = [("x", (1, 3, 16, 16), "float32")]
    ok = frontend.validate_inputs(specs, {"x": np.zeros((1, 3, 16, 16), np.float32)})
    assert ok["x"].flags.c_contiguous
    with pytest.raises(InputShapeError, match=r"shape \(1, 3, 8, 8\).*\(1, 3, 16, 16\)"):
        frontend.validate_inputs(specs, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(InputShapeError, match="dtype float64"):
        frontend.validate_inputs(specs, {"x": np.zeros((1, 3, 16, 16))})
    with pytest.raises(InputShapeError, match="unknown input"):
        frontend.validate_inputs(specs, {"x": np.zeros((1, 3, 16, 16), np.float32), "z": 1})
    with pytest.raises(InputShapeError, match="missing input 'x'"):
        frontend.validate_inputs(specs, {})
    assert frontend.validate_inputs(specs, {}, allow_missing=True) == {}


def test_model_io():
    specs, outs = frontend.model_io(_onnx_tiny.tiny_cnn(dynamic_batch=True), batch=3)
    assert specs == [("x", (3, 3, 16, 16), "float32")] and outs == ["y"]


# ------------------------------------------------------------------ light models
@pytest.fixture(scope="module")
def squeeze():
    return models.light_model("squeezenet", seed=0)


def test_light_models_exist():
    assert len(models.NAMES) == 9
    for n in models.NAMES:
        assert os.path.exists(models.light_path(n))
    with pytest.raises(ModelError):
        models.light_path("resnet18")


def test_random_weights_replace_constant_of_shape(squeeze):
    assert not any(n.op_type == "ConstantOfShape" for n in squeeze.graph.node)
    onnx.checker.check_model(squeeze)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in squeeze.graph.initializer}
    w = inits["conv10_w_0"]  # 1000 x 512 x 1 x 1 conv weights: He-normal
    assert abs(w.std() - np.sqrt(2 / 512)) < 0.1 * np.sqrt(2 / 512)
    assert len(np.unique(w)) > 1000
    specs = models.input_specs(squeeze)
    assert specs == [("data_0", (1, 3, 224, 224), "float32")]


def test_random_weights_seeded_and_roles():
    a = models.light_model("squeezenet", seed=0)
    b = models.light_model("squeezenet", seed=0)
    c = models.light_model("squeezenet", seed=1)
    ta = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    tc = {t.name: onnx.numpy_helper.to_array(t) for t in c.graph.initializer}
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not np.array_equal(ta["conv10_w_0"], tc["conv10_w_0"])
    r = models.light_model("resnet50", seed=0)
    tr = {t.name: onnx.numpy_helper.to_array(t) for t in r.graph.initializer}
    var = [v for k, v in tr.items() if k.endswith("_bn_riv_0") or k.endswith("_bn_var_0")]
    scale = [v for k, v in tr.items() if k.endswith("_bn_s_0")]
    assert var and all((v > 0).all() for v in var)
    assert scale and all((v > 0).all() for v in scale)


def test_strip_softmax_and_reference(squeeze):
    logits = models.strip_softmax(squeeze)
    assert [n.op_type for n in logits.graph.node][-1] != "Softmax"
    assert models.output_names(logits) != models.output_names(squeeze)
    x = models.random_inputs(squeeze, seed=0)
    prob = list(models.reference_outputs(squeeze, x).values())[0]
    lg = list(models.reference_outputs(logits, x).values())[0]
    e = np.exp(lg - lg.max(axis=1, keepdims=True))
    np.testing.assert_allclose(prob, e / e.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert lg.std() > 0.1  # the logits really differ between classes
    assert models.light_model("squeezenet", logits=True).graph.output[0].name == \
        logits.graph.output[0].name


def test_rel_err():
    assert models.rel_err(np.ones(4), np.ones(4)) == 0
    assert abs(models.rel_err(np.array([1.0, 0]), np.array([0.0, 1])) - np.sqrt(2)) < 1e-12


def test_external_data_model(tmp_path):
    m = _onnx_tiny.tiny_cnn()
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.weights", size_threshold=0)
    assert (tmp_path / "ext.weights").exists()
    mod = frontend.load_onnx(str(path))
    assert mod["main"].params[0].name == "x"
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(ModelError, match="external weights"):
        frontend.load_onnx(str(path))
