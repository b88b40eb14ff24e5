"""Channel shuffles fold into the weights around them (tvm_poly/graph_shuffle.py)."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph
from tvm_poly.graph_shuffle import fold_channel_shuffles


def _np_conv(x, w, pad, groups):
    from tests.test_codegen_conv import conv_ref
    return conv_ref(x, w, (1, 1), (pad,) * 4, groups)


def _shuffle_unit(C, g, H, rng, extra_reader=False):
    """x -> relu -> channel shuffle (g groups) -> depthwise 3x3 -> bn -> grouped 1x1 (g)."""
    b = GraphBuilder()
    x = b.input("x", (1, C, H, H))
    h = b.op("relu", [x], (1, C, H, H))
    s = b.channel_shuffle(h, g)
    wd = rng.standard_normal((C, 1, 3, 3)).astype(np.float32) / 3
    d = b.op("conv2d", [s, b.const("wd", wd)], (1, C, H, H), strides=(1, 1), padding=(1, 1, 1, 1), groups=C,
             dilation=(1, 1))
    bn = dict(g=rng.uniform(0.5, 2, C), be=rng.standard_normal(C), m=rng.standard_normal(C), v=rng.uniform(0.5, 2, C))
    e = b.op("batch_norm", [d] + [b.const(k, v) for k, v in bn.items()], (1, C, H, H), epsilon=1e-5, axis=1)
    wg = rng.standard_normal((C, C // g, 1, 1)).astype(np.float32) / np.sqrt(C // g)
    y = b.op("conv2d", [e, b.const("wg", wg)], (1, C, H, H), strides=(1, 1), padding=(0, 0, 0, 0), groups=g,
             dilation=(1, 1))
    outs = [y] + ([b.op("sigmoid", [s], (1, C, H, H))] if extra_reader else [])
    xv = rng.standard_normal((1, C, H, H)).astype(np.float32)
    hv = np.maximum(xv, 0)
    sv = hv.reshape(1, g, C // g, H, H).transpose(0, 2, 1, 3, 4).reshape(1, C, H, H)
    dv = _np_conv(sv, wd, 1, C)
    sc = bn["g"] / np.sqrt(bn["v"] + 1e-5)
    ev = dv * sc[None, :, None, None] + (bn["be"] - bn["m"] * sc)[None, :, None, None]
    return b.build(outs), y, {"x": xv}, _np_conv(ev, wg, 0, g)


@pytest.mark.parametrize("planner", ["per-op", "poly"])
@pytest.mark.parametrize("C,g", [(24, 3), (136, 4)])
def test_shuffle_folds_into_depthwise_bn_and_grouped_conv(C, g, planner):
    rng = np.random.default_rng(C)
    g0, y, inputs, ref = _shuffle_unit(C, g, 7, rng)
    g1 = fold_channel_shuffles(g0)
    assert [n.op for n in g1.nodes] == ["relu", "conv2d", "batch_norm", "conv2d"]
    assert g1.nodes[-1].attr("groups") == 1  # the permutation is in the dense weight's columns
    cp = compile_graph(g1, "inf2", planner=planner)
    outs, _ = cp.run(inputs)
    assert rel_err(outs[y], ref) <= TOL["float32"]


def test_shuffle_read_twice_is_kept():
    g0, y, inputs, ref = _shuffle_unit(24, 3, 5, np.random.default_rng(0), extra_reader=True)
    g1 = fold_channel_shuffles(g0)
    assert "permute_dims" in [n.op for n in g1.nodes]
    outs, _ = compile_graph(g1, "inf2").run(inputs)
    assert rel_err(outs[y], ref) <= TOL["float32"]


def test_shufflenet_has_no_shuffle_kernels_left():
    from tvm_poly.frontend import load_onnx
    from tvm_poly.graph import graph_from_relax
    from tvm_poly.models import model_path

    g = graph_from_relax(load_onnx(model_path("shufflenet")))
    assert not any(n.op == "permute_dims" for n in g.nodes)
