"""A Plan can place an intermediate in SBUF; the driver hands kernels a resident Value
(channel-tiled layout, see target/codegen/values.py) instead of an HBM tensor."""
import dataclasses

import numpy as np

from tests.codegen_util import GraphBuilder, rel_err
from tvm_poly.driver import compile_graph
from tvm_poly.plan import TensorPlacement
from tvm_poly.planners.per_op import plan_per_op


def test_resident_intermediate_skips_hbm():
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", (1, 96, 8, 8))
    y = b.op("sigmoid", [x], (1, 96, 8, 8))
    z = b.op("exp", [y], (1, 96, 8, 8))
    g = b.build(z)
    base = plan_per_op(g)
    res = TensorPlacement(y, "sbuf", start_partition=0, num_partitions=96, offset=0, nbytes=64 * 4)
    plan = dataclasses.replace(base, planner="test-resident",
                               tensors=tuple(t for t in base.tensors if t.name != y) + (res,))
    xv = rng.standard_normal((1, 96, 8, 8)).astype(np.float32)
    ref = np.exp(1 / (1 + np.exp(-xv)))
    outs0, rep0 = compile_graph(g, "inf2").run({"x": xv})
    cp = compile_graph(g, "inf2", plan=plan)
    outs, rep = cp.run({"x": xv})
    assert rel_err(outs[z], ref) <= 1e-5 and rel_err(outs0[z], ref) <= 1e-5
    assert y not in {t.name for t in cp.program.hbm}
    assert rep.hbm_read_bytes + rep.hbm_write_bytes == rep0.hbm_read_bytes + rep0.hbm_write_bytes - 2 * xv.nbytes
