"""The polyhedral model of the nine ONNX light models (whole networks)."""

from __future__ import annotations

import onnx
import pytest

import poly_util as U
from tvm_poly import counting, dataflow, queries
from tvm_poly.extract import check_tvm_regions, extract

# multiply-accumulates of the updates `acc += a * b` (conv, grouped conv, matmul) per model;
# ResNet-50's figure is the independent one (conv + FC = 4,089,184,256), the others pin
# today's extraction (VGG-19 ~19.6 G, as usually quoted for 224x224).
MACS = {
    "resnet50": 4_089_184_256,
    "vgg19": 19_632_062_464,
    "inception_v1": 1_431_556_352,
    "inception_v2": 2_018_851_840,
    "densenet121": 2_834_161_664,
    "squeezenet": 349_151_936,
    "shufflenet": 124_664_528,
    "bvlc_alexnet": 654_560_384,
    "zfnet512": 1_481_727_008,
}


def load(name):
    return extract(U.relax_of(onnx.load(U.light_path(name))))


@pytest.fixture(scope="module")
def resnet():
    return load("resnet50")


@pytest.mark.parametrize("name", U.LIGHT_MODELS)
def test_light_model_extracts_completely(name, resnet):
    m = resnet if name == "resnet50" else load(name)
    assert m.ops and m.statements
    listed = {d.statement for d in m.diagnostics} | {d.op for d in m.diagnostics}
    for s in m.statements:
        for a in s.reads + s.writes:
            assert a.exact or s.name in listed or s.op in listed, (s.name, a.text)
        assert s.writes, s.name
        if len(m.statements) < 600:
            assert s.instances == counting.card(s.domain)
    for o in m.ops:
        assert o.statements, o.name
    # every tensor an operator reads was produced earlier or is an input / constant
    produced = set(m.inputs)
    for o in m.ops:
        for n in o.inputs:
            assert n in produced or m.array(n).kind == "const", (o.name, n)
        produced |= set(o.outputs)
    assert set(m.outputs) <= produced
    assert m.macs() == MACS[name]
    if len(m.statements) < 600:  # (the bigger ones take seconds; same PrimFunc kinds)
        # every access lies inside the region TVM itself declares, instance by instance
        assert check_tvm_regions(m) == []


def test_resnet50_macs_conv_plus_fc(resnet):
    assert resnet.macs() == 4_089_184_256
    kinds = {resnet.op(op).kind for op in resnet.macs_by_op()}
    assert kinds == {"conv2d", "matmul"}
    assert len(resnet.macs_by_op()) == 53 + 1


def test_resnet50_weights_are_const_folded_broadcasts(resnet):
    first = resnet.ops[0]
    assert first.kind == "broadcast_to" and first.const_folded
    assert resnet.array(first.outputs[0]).kind == "weight"
    t = queries.compulsory_traffic(resnet)
    assert t.inputs == 1 * 3 * 224 * 224 * 4
    assert t.outputs == 1000 * 4
    # conv 23,454,912 + FC 2,048,000 + bias 1,000 + batch-norm 4 x 26,560 parameters
    assert t.weights == 25_610_152 * 4


def test_resnet50_cross_operator_flow_and_halo(resnet):
    m = resnet
    fl = dataflow.flow(m)
    conv = m.statement("lv16.conv2d_nchw")  # 3x3, 64 -> 64 channels, 56 x 56, pad 1
    bn_read = m.readers("lv16")
    sub = [s for s in bn_read if s.op != "lv16"][0]
    dep = fl.between(conv.name, sub.name)
    # only the last reduction step feeds the batch norm, one instance per output element
    assert counting.card_map(dep) == 64 * 56 * 56
    assert dep.domain().is_subset(m.iterations(conv.name, "rc = 63 and ry = 2 and rx = 2"))
    # a 4 x 7 output tile (all input channels) reads a 6 x 9 window of the padded input
    tile = m.iterations(conv.name, "ff = 5 and 10 <= yy < 14 and 20 <= xx < 27")
    assert queries.footprint(m, tile, "lv16.pad_temp").count == 64 * 6 * 9
    need = queries.needs_by_statement(m, tile)
    # the halo of the padded input, and the one filter of the const-folded weight producer
    assert set(need) == {"lv16.pad_temp", "lv15.T_broadcast_to"}
    assert counting.card(need["lv15.T_broadcast_to"]) == 64 * 3 * 3
    assert queries.footprint(m, need["lv16.pad_temp"], "lv14").count == 64 * 6 * 9


def test_resnet50_residual_liveness_ends_at_the_add(resnet):
    m = resnet
    sums = [o for o in m.ops if o.kind == "sum"]
    assert len(sums) == 16
    for s in sums:
        (stacked,) = s.inputs
        stack = m.op(m.array(stacked).producer)
        assert stack.kind == "stack" and dataflow.liveness(m, stacked).last_op == s.index
        for branch in stack.inputs:  # the two summands end at the stack feeding the sum
            assert dataflow.liveness(m, branch).last_op == stack.index
    # identity shortcuts: the block input stays live from the block's first conv to the add
    identity = 0
    for s in sums:
        stack = m.op(m.array(s.inputs[0]).producer)
        for branch in stack.inputs:
            src = m.op(m.array(branch).producer)
            if src.kind != "broadcast_to":
                continue
            (x,) = src.inputs
            if m.op(m.array(x).producer).kind != "relu":
                continue  # the projection branch (batch norm output)
            live = dataflow.liveness(m, x)
            readers = sorted({st.op_index for st in m.readers(x)})
            assert live.last_op == src.index == readers[-1]
            assert readers[0] < stack.index - 5  # first read: the block's first conv
            identity += 1
    assert identity == 16 - 4  # four blocks have projection shortcuts


def test_resnet50_dump_mentions_every_statement(resnet):
    text = resnet.dump()
    assert text.count("\n  stmt ") == len(resnet.statements)
    assert "op #1 lv1 = conv2d(gpu_0/data_0, lv)" in text
