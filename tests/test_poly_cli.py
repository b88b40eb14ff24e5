"""`tvm-poly poly MODEL.onnx`: the polyhedral model from the command line."""

from __future__ import annotations

import json

import onnx

import poly_util as U
from tvm_poly import poly_cli


def _conv_file(tmp_path):
    model, _ = U.conv_model(n=1, c=3, h=8, w=8, k=4)
    path = tmp_path / "conv.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_poly_cli_dump(tmp_path, capsys):
    assert poly_cli.main([_conv_file(tmp_path), "--deps"]) == 0
    out = capsys.readouterr().out
    assert "op #0 gv = conv2d(x, const_0)" in out
    assert "stmt gv.conv2d_nchw [update] 6,912 instances, 6,912 MACs" in out
    assert "flow dependences" in out


def test_poly_cli_json_and_summary(tmp_path, capsys):
    path = _conv_file(tmp_path)
    assert poly_cli.main([path, "--json", "--deps"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["macs"] == 4 * 8 * 8 * 3 * 9
    assert {s["name"] for s in js["statements"]} == {"gv.pad_temp", "gv.conv2d_nchw.init",
                                                     "gv.conv2d_nchw"}
    assert any(d["source"] == "gv.pad_temp" for d in js["dependences"])
    assert poly_cli.main([path, "--summary"]) == 0
    out = capsys.readouterr().out
    assert "6,912 MACs" in out and "compulsory traffic" in out


def test_poly_cli_missing_file(tmp_path, capsys):
    assert poly_cli.main([str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.onnx" in err


def test_poly_cli_batch_override(tmp_path, capsys):
    model, _ = U.conv_model(n=1, c=3, h=8, w=8, k=4)
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    path = str(tmp_path / "dyn.onnx")
    onnx.save(model, path)
    assert poly_cli.main([path, "--batch", "3", "--summary"]) == 0
    assert f"{3 * 4 * 8 * 8 * 3 * 9:,} MACs" in capsys.readouterr().out
    assert poly_cli.main([path]) == 2  # a symbolic batch needs --batch
    assert capsys.readouterr().err.startswith("error:")


def test_poly_cli_one_operator(capsys):
    assert poly_cli.main(["zfnet512", "--op", "lv1", "--deps"]) == 0
    out = capsys.readouterr().out
    assert "op #1 lv1 = conv2d(gpu_0/data_0, lv)" in out
    assert "op #2 " not in out
    assert "lv1.pad_temp -> lv1.conv2d_nchw" in out
    assert poly_cli.main(["zfnet512", "--op", "nope"]) == 2
