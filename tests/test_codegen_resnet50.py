"""ResNet-50 (light, seeded random weights, logits) per-op through the simulator vs onnxruntime."""
import numpy as np
import pytest


@pytest.mark.slow
def test_resnet50_per_op_fp32_matches_onnxruntime():
    pytest.importorskip("onnxruntime")
    from tests.codegen_util import resnet50_logits_case
    from tvm_poly.driver import compile_graph
    from tvm_poly.models import rel_err

    g, inputs, ref = resnet50_logits_case()
    assert all(n.supported for n in g.nodes)
    cp = compile_graph(g, "inf2", dtype="float32")
    outs, rep = cp.run(inputs, check=True)
    assert rel_err(outs[g.outputs[0]], ref) <= 1e-3
    assert rep.macs >= 4_000_000_000
    # every kernel shows up in the per-operator breakdown
    assert {gp.tag for gp in cp.plan.groups} <= set(rep.per_tag)
