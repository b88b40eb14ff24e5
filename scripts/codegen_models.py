"""All nine light models through graph_from_relax -> compile_graph (per-op) -> simulator, against
onnxruntime on seeded random weights (logits).  Usage: python scripts/codegen_models.py [float32|bfloat16] [names...]"""
import sys, time, traceback
import numpy as np
from tvm.relax.frontend.onnx import from_onnx
from tvm_poly.driver import compile_graph
from tvm_poly.graph import graph_from_relax
from tvm_poly.models import light_model, random_inputs, reference_outputs, rel_err, NAMES
dt = sys.argv[1] if len(sys.argv) > 1 else "float32"
names = sys.argv[2:] or NAMES
for nm in names:
    try:
        m = light_model(nm, seed=0, logits=True)
        inp = random_inputs(m, seed=0)
        ref = list(reference_outputs(m, inp).values())[0]
        t0 = time.time(); g = graph_from_relax(from_onnx(m)); 
        uns = [n.op for n in g.nodes if not n.supported]
        cp = compile_graph(g, "inf2", dtype=dt); t1 = time.time()
        outs, rep = cp.run(inp, check=False); t2 = time.time()
        print(f"{nm:14} err {rel_err(outs[g.outputs[0]], ref):.2e} compile {t1-t0:.1f}s sim {t2-t1:.1f}s lat {rep.latency_us:.0f}us unsupported={uns}", flush=True)
    except Exception as e:
        print(f"{nm:14} FAIL {type(e).__name__}: {str(e)[:300]}", flush=True)
