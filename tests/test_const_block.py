"""The program's constant block (target/codegen/const_block.py): every kernel's per-channel
epilogue columns in one HBM constant, loaded by one split DMA at program start."""
import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


def _bn_conv_graph(C, K, H, rng):
    """x -> batch_norm -> relu -> conv3x3 + bias (DenseNet's pre-activation order)."""
    b = GraphBuilder()
    x = b.input("x", (1, C, H, H))
    bn = dict(g=rng.uniform(0.5, 2, C), be=rng.standard_normal(C), m=rng.standard_normal(C), v=rng.uniform(0.5, 2, C))
    y = b.op("batch_norm", [x] + [b.const(k, v) for k, v in bn.items()], (1, C, H, H), epsilon=1e-5, axis=1)
    y = b.op("relu", [y], (1, C, H, H))
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    bias = rng.standard_normal((1, K, 1, 1)).astype(np.float32)
    y = b.op("conv2d", [y, b.const("w", w)], (1, K, H, H), strides=(1, 1), padding=(1, 1, 1, 1), groups=1,
             dilation=(1, 1))
    o = b.op("add", [y, b.const("bias", bias)], (1, K, H, H))
    xv = rng.standard_normal((1, C, H, H)).astype(np.float32)
    sc = bn["g"] / np.sqrt(bn["v"] + 1e-5)
    h = np.maximum(xv * sc[None, :, None, None] + (bn["be"] - bn["m"] * sc)[None, :, None, None], 0)
    from tests.test_codegen_conv import conv_ref
    ref = conv_ref(h, w, (1, 1), (1, 1, 1, 1)) + bias
    return b.build(o), o, {"x": xv}, ref


@pytest.mark.parametrize("planner", ["per-op", "poly"])  # batch_norm reads HBM / its resident input
@pytest.mark.parametrize("C", [96, 320, 200])  # one tile, blocked planes, cyclic tiles
def test_batch_norm_and_conv_columns_in_the_block(C, planner):
    from target import isa
    from target.codegen.const_block import columns

    g, o, inputs, ref = _bn_conv_graph(C, 64, 6, np.random.default_rng(C))
    cp = compile_graph(g, "inf2", planner=planner, dtype="float32")
    kinds = {k.name: k.kind for k in cp.plan.groups}
    assert sorted(kinds.values()) == ["batch_norm", "conv2d"]
    assert set(columns(cp.plan.groups, g.tensor_map)) == set(kinds)
    names = set(cp.constants)
    assert "const_block" in names and not any(n.endswith(("/bn_scale", "/bn_shift", "/epilogue")) for n in names)
    # the only DMAs with rows under 64 B are none: every per-channel column came with the block
    small = [i for _, st in cp.program.streams for i in st
             if isinstance(i, isa.DmaCopy) and i.tag != "const_block" and i.dst.free_elems * i.dst.itemsize < 64]
    assert not small
    outs, _ = cp.run(inputs)
    assert rel_err(outs[o], ref) <= TOL["float32"]
