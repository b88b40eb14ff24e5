import numpy as np
import pytest

from tests.codegen_util import TOL, GraphBuilder, rel_err
from tvm_poly.driver import compile_graph


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op,shape,axis,keep", [
    ("mean", (1, 1000, 13, 13), (2, 3), True),     # SqueezeNet's GlobalAveragePool
    ("mean", (1, 1024, 7, 7), (2, 3), True),       # DenseNet-121's
    ("sum", (3, 5, 20000), (2,), False),           # long rows: chunked
    ("max", (130, 7), (1,), False),
    ("mean", (8, 1000, 13, 13), (2, 3), True),     # ... at batch 8: rows split over partitions
    ("max", (2, 300, 9), (2,), False),             # 600 rows = 128 x 4 + a 88-row rest
    ("min", (2, 3, 4), (-1,), True),
])
def test_reduce(op, shape, axis, keep, dtype):
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(shape).astype(np.float32)
    ref = getattr(np, op)(xv.astype(np.float64), axis=axis, keepdims=keep)
    b = GraphBuilder()
    x = b.input("x", shape)
    y = b.op(op, [x], ref.shape, axis=axis, keepdims=keep)
    cp = compile_graph(b.build(y), "inf2", dtype=dtype)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], ref) <= TOL[dtype] * (3 if op == "sum" and dtype == "bfloat16" else 1)


def test_many_short_rows_from_hbm_leave_in_one_transfer():
    """8000 rows of 169 (SqueezeNet's global pool at batch 8): partition p reduces the rows
    [p*T, (p+1)*T), so the results go out as [128, T] rows instead of one 4-byte row per partition
    per 128-row tile (63 transfers of 128 4-byte rows: ~60 ns a row on the DMA queues)."""
    from target import isa
    from target.cost import dma_chunk_bytes

    b = GraphBuilder()
    x = b.input("x", (8, 1000, 13, 13))
    y = b.op("mean", [x], (8, 1000, 1, 1), axis=(2, 3), keepdims=True)
    cp = compile_graph(b.build(y), "inf2", dtype="bfloat16")
    dmas = [i for _, st in cp.program.streams for i in st if isinstance(i, isa.DmaCopy)]
    stores = [i for i in dmas if i.dst.mem == isa.Mem.HBM]
    assert sum(i.dst.num_partitions for i in stores if dma_chunk_bytes(i) <= 4) <= 128  # only the 64-row rest
    assert min(dma_chunk_bytes(i) for i in dmas if i.src.mem == isa.Mem.HBM) >= 169 * 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_row_split_reduction_fits_inf1_partitions(dtype):
    """The row-split tiles are sized to the free SBUF range: on inf1 (64 KiB partitions) three
    32 KiB row tiles do not fit (SqueezeNet b8 inf1 failed to compile with them)."""
    from target.config import load_config

    rng = np.random.default_rng(1)
    xv = rng.standard_normal((8, 1000, 13, 13)).astype(np.float32)
    b = GraphBuilder()
    x = b.input("x", xv.shape)
    y = b.op("mean", [x], (8, 1000, 1, 1), axis=(2, 3), keepdims=True)
    cp = compile_graph(b.build(y), load_config("inf1"), dtype=dtype)
    outs, _ = cp.run({"x": xv})
    assert rel_err(outs[y], xv.astype(np.float64).mean(axis=(2, 3), keepdims=True)) <= TOL[dtype]
