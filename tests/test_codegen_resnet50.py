"""ResNet-50 (light, seeded random weights, logits) per-op through the simulator vs onnxruntime."""
import numpy as np
import pytest


@pytest.mark.slow
def test_resnet50_per_op_fp32_matches_onnxruntime():
    pytest.importorskip("onnxruntime")
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_poly.driver import compile_graph
    from tvm_poly.graph import graph_from_relax
    from tvm_poly.models import light_model, random_inputs, reference_outputs, rel_err

    model = light_model("resnet50", seed=0, logits=True)
    inputs = random_inputs(model, seed=0)
    ref = list(reference_outputs(model, inputs).values())[0]
    g = graph_from_relax(from_onnx(model))
    assert all(n.supported for n in g.nodes)
    cp = compile_graph(g, "inf2", dtype="float32")
    outs, rep = cp.run(inputs, check=False)
    assert rel_err(outs[g.outputs[0]], ref) <= 1e-3
    assert rep.macs >= 4_000_000_000
    # every kernel shows up in the per-operator breakdown
    assert {gp.tag for gp in cp.plan.groups} <= set(rep.per_tag)
