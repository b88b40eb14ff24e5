"""Polyhedral model of small ONNX graphs, checked against closed forms."""

from __future__ import annotations

import islpy as isl
import pytest

import poly_util as U
from tvm_poly import counting, dataflow, queries
from tvm_poly.extract import extract
from tvm_poly.polymodel import CountingError, IslBudgetExceeded


def model_of(onnx_model, **kw):
    return extract(U.relax_of(onnx_model), **kw)


@pytest.fixture(scope="module")
def conv():
    onnx_model, dims = U.conv_model(n=2, c=3, h=8, w=8, k=4, r=3, pad=1, stride=1)
    return model_of(onnx_model), dims


@pytest.mark.parametrize("cfg", [dict(n=2, c=3, h=8, w=8, k=4, r=3, pad=1, stride=1),
                                 dict(n=1, c=5, h=11, w=9, k=2, r=3, pad=0, stride=2),
                                 dict(n=1, c=2, h=7, w=7, k=3, r=1, pad=0, stride=1)])
def test_conv_domain_is_nkpqcrs(cfg):
    onnx_model, (n, k, p, q, c, r, s) = U.conv_model(**cfg)
    m = model_of(onnx_model)
    (upd,) = m.find_statements("conv2d", role="update")
    assert upd.instances == n * k * p * q * c * r * s
    assert counting.card(upd.domain) == n * k * p * q * c * r * s
    assert upd.macs == n * k * p * q * c * r * s
    assert m.macs() == n * k * p * q * c * r * s
    (init,) = m.find_statements("conv2d", role="init")
    assert init.instances == n * k * p * q  # TVM's init: reduction vars at their minimum
    assert upd.dim_kinds == ("S", "S", "S", "S", "R", "R", "R")
    assert all(a.exact for s_ in m.statements for a in s_.reads + s_.writes)
    assert not m.diagnostics


def test_names_follow_relax(conv):
    m, _ = conv
    assert m.inputs == ("x",)
    assert set(m.arrays) == {"x", "const_0", "gv", "gv.pad_temp"}
    assert m.array("const_0").kind == "const"
    assert m.array("gv.pad_temp").kind == "internal"
    assert m.array("gv").is_output and m.array("gv").producer == "gv"
    assert [s.name for s in m.statements] == ["gv.pad_temp", "gv.conv2d_nchw.init",
                                              "gv.conv2d_nchw"]


def test_padding_guard_counts_no_out_of_range_element(conv):
    m, (n, k, p, q, c, r, s) = conv
    pad = m.statement("gv.pad_temp")
    assert pad.instances == n * c * 10 * 10  # padded buffer
    fp = queries.footprint(m, pad.domain, "x")
    assert fp.count == n * c * 8 * 8  # the guard keeps the reads inside x
    assert fp.bytes == fp.count * 4
    assert fp.elements.is_equal(m.array("x").box)
    assert not any(d.kind == "out-of-bounds" for d in m.diagnostics)


def test_matmul_read_footprint_is_mk_plus_kn():
    M, K, N = 6, 5, 7
    m = model_of(U.matmul_model(M, K, N))
    (upd,) = m.find_statements("matmul", role="update")
    fa = queries.footprint(m, upd.domain, "a")
    fb = queries.footprint(m, upd.domain, "b")
    assert fa.count + fb.count == M * K + K * N
    assert m.macs() == M * K * N
    # a tile of rows i < 2 reads 2*K of a and all of b
    tile = m.iterations(upd.name, "i0 < 2")
    assert queries.footprint(m, tile, "a").count == 2 * K
    assert queries.footprint(m, tile, "b").count == K * N
    fps = queries.footprints(m, tile)
    assert fps["a"].count == 2 * K and fps["gv"].count == 2 * N


def test_reuse_between_row_tiles_of_matmul():
    M, K, N = 6, 5, 7
    m = model_of(U.matmul_model(M, K, N))
    (upd,) = m.find_statements("matmul", role="update")
    t0 = m.iterations(upd.name, "i0 < 3")
    t1 = m.iterations(upd.name, "i0 >= 3")
    rb = queries.reuse(m, t1, [t0], "b")
    assert (rb.needed.count, rb.reused.count, rb.new.count) == (K * N, K * N, 0)
    ra = queries.reuse(m, t1, t0, "a")
    assert (ra.needed.count, ra.reused.count, ra.new.count) == (3 * K, 0, 3 * K)


def test_elementwise_consumer_depends_on_producer_by_identity():
    shape = (2, 3, 4, 5)
    m = model_of(U.relu_chain_model(shape))
    prod, cons = m.statements
    dep = dataflow.flow(m).between(prod.name, cons.name)
    ident = isl.Map.identity(isl.Space.map_from_set(prod.domain.get_space())) \
        .intersect_domain(prod.domain).set_tuple_name(isl.dim_type.out, cons.isl_id)
    # both statements iterate the same box; the dependence is the identity between them
    assert dep.is_equal(ident.intersect_range(cons.domain))
    assert counting.card_map(dep) == 2 * 3 * 4 * 5
    assert dataflow.flow(m).no_source(prod.reads[0].array).is_equal(
        isl.UnionMap.from_map(prod.reads[0].relation))


@pytest.mark.parametrize("h,w,y0,x0", [(2, 3, 2, 3), (4, 4, 1, 2)])
def test_3x3_conv_tile_needs_halo(h, w, y0, x0):
    C, H, W = 3, 10, 12
    onnx_model, _ = U.conv_model(n=1, c=C, h=H, w=W, k=2, r=3, pad=1, stride=1)
    m = model_of(onnx_model)
    upd = m.statement("gv.conv2d_nchw")
    tile = m.iterations(upd.name, f"ff = 0 and {y0} <= yy < {y0 + h} and {x0} <= xx < {x0 + w}")
    assert tile.is_equal(queries.tile(m, upd.name, ff=0, yy=(y0, y0 + h), xx=(x0, x0 + w)))
    # on the padded buffer: exactly (h+2) x (w+2) per input channel
    fp = queries.footprint(m, tile, "gv.pad_temp")
    assert fp.count == C * (h + 2) * (w + 2)
    # the producer iterations of that halo are the pad statement's, (h+2) x (w+2) per channel
    need = queries.needs_by_statement(m, tile)
    assert set(need) == {"gv.pad_temp"}
    assert counting.card(need["gv.pad_temp"]) == C * (h + 2) * (w + 2)
    # on the unpadded input the same region, clipped to the tensor (interior tile: no clip)
    fx = queries.footprint(m, need["gv.pad_temp"], "x")
    assert fx.count == C * (h + 2) * (w + 2)


def test_3x3_conv_border_tile_is_clipped_on_unpadded_input():
    C, h, w = 3, 3, 4
    onnx_model, _ = U.conv_model(n=1, c=C, h=8, w=8, k=2, r=3, pad=1, stride=1)
    m = model_of(onnx_model)
    tile = m.iterations("gv.conv2d_nchw", f"ff = 0 and yy < {h} and xx < {w}")
    assert queries.footprint(m, tile, "gv.pad_temp").count == C * (h + 2) * (w + 2)
    pads = queries.needs(m, tile)
    assert queries.footprint(m, pads, "x").count == C * (h + 1) * (w + 1)


def test_residual_branch_liveness_ends_at_the_add():
    m = model_of(U.residual_model())
    add_op = [o for o in m.ops if o.kind == "add"][0]
    live = dataflow.liveness(m, "x")
    assert live.first_write is None  # a model input
    assert live.last_read.op == add_op.name
    assert live.last_read.statement == f"{add_op.name}.T_add"
    # the region x[:, :, 0, :] is also last read at the add; the first conv's output dies at relu
    reg = isl.Set(f"{{ {m.array('x').isl_id}[a, b, c, d] : c = 0 }}", context=m.ctx)
    assert dataflow.liveness(m, "x", reg).last_read.op == add_op.name
    first_conv = m.ops[0]
    assert dataflow.liveness(m, first_conv.outputs[0]).last_op == 1
    assert dataflow.liveness(m, first_conv.outputs[0]).first_write.statement.endswith(".init")
    # element-wise last use: every element of x is last read by the add
    lu = dataflow.last_use_map(m, "x")
    assert lu.domain().is_equal(m.array("x").box)
    assert lu.range().is_subset(isl.Set(f"{{ [t0, *] : t0 = {add_op.index} }}".replace(
        "*", ", ".join(f"t{i}" for i in range(1, m.time_dims))), context=m.ctx))


def test_concat_selection_guards():
    from tvm_poly.extract import check_tvm_regions

    m = model_of(U.concat_model(c1=2, c2=3, h=4, w=4))
    (st,) = m.statements
    assert check_tvm_regions(m) == []  # inside TVM's T.reads, which ignore the selection
    assert queries.footprint(m, st.domain, "a").count == 2 * 16
    assert queries.footprint(m, st.domain, "b").count == 3 * 16
    lo = m.iterations(st.name, "ax1 < 2")
    assert queries.footprint(m, lo, "b").count == 0


def test_gather_is_over_approximated_and_listed():
    rows, cols, nidx = 10, 4, 3
    m = model_of(U.gather_model(rows, cols, nidx))
    take = [s for s in m.statements if s.op == m.outputs[0]][0]
    acc = [a for a in take.reads if a.array == "data"][0]
    assert not acc.exact
    assert queries.footprint(m, take.domain, "data").count == rows * cols  # whole tensor
    kinds = {d.kind for d in m.diagnostics}
    assert "non-affine-access" in kinds
    assert any(d.statement == take.name for d in m.diagnostics)
    dataflow.flow(m).per_array  # flow still works on the over-approximation


def test_compulsory_traffic_counts_inputs_weights_outputs_once():
    m = model_of(U.residual_model(c=4, h=6, w=6))
    t = queries.compulsory_traffic(m)
    assert t.inputs == 4 * 36 * 4 and t.outputs == 4 * 36 * 4
    assert t.weights == 2 * 4 * 4 * 9 * 4
    assert t.total == t.inputs + t.weights + t.outputs
    t2 = queries.compulsory_traffic(m, "bfloat16")
    assert t2.total * 2 == t.total


def test_isl_budget_overapproximates_extraction_and_raises_in_queries():
    onnx_model, _ = U.conv_model()
    m = model_of(onnx_model, max_operations=1)
    assert m.diagnostics and all(d.kind == "isl-budget" for d in m.diagnostics)
    assert all(not a.exact for s in m.statements for a in s.reads + s.writes)
    assert m.macs() == 2 * 4 * 8 * 8 * 3 * 9  # box domains need no set math
    upd = m.statement("gv.conv2d_nchw")
    with pytest.raises(IslBudgetExceeded):
        queries.footprint(m, m.iterations(upd.name, "yy < 2"), "gv.pad_temp")


def test_counting_exact_or_explicit_error(monkeypatch):
    tri = isl.Set("{ [i, j] : 0 <= i < 10 and 0 <= j < i }")
    boxes = isl.UnionSet("{ A[i] : 0 <= i < 10 or 20 <= i < 25; B[i, j] : 0 <= i < 3 and 0 <= j < 4 }")
    assert counting.HAVE_BARVINOK  # islpy-barvinok is the pinned dependency
    assert counting.card(tri) == 45
    assert counting.card(boxes) == 15 + 12
    monkeypatch.setattr(counting, "HAVE_BARVINOK", False)
    assert counting.card(boxes) == 15 + 12  # exact products of boxes
    with pytest.raises(CountingError):
        counting.card(tri)
    with pytest.raises(CountingError):
        counting.card(isl.Set("[n] -> { [i] : 0 <= i < n }"))


def test_dump_is_readable(conv):
    m, _ = conv
    text = m.dump(deps=True)
    assert "op #0 gv = conv2d(x, const_0)" in text
    assert "stmt gv.conv2d_nchw [update] 13,824 instances, 13,824 MACs" in text
    assert "flow dependences" in text and "gv.pad_temp -> gv.conv2d_nchw" in text
    js = m.to_json()
    assert js["macs"] == 13824 and len(js["statements"]) == 3


@pytest.mark.parametrize("closed_form", [True, False])
def test_flow_fast_paths_equal_plain_compute_flow(closed_form, monkeypatch):
    """The last-writer shortcut, the closed form of reduction self-dependences and the
    compacted schedules give exactly isl's compute_flow over the full original schedule."""
    if not closed_form:
        monkeypatch.setattr(dataflow.Flow, "_reduction_self_flow", lambda *a: None)
    m = model_of(U.residual_model(c=2, h=5, w=5))
    fl = dataflow.flow(m)
    fl.per_array
    if closed_form:
        assert fl.stats["reduction"] == 2 and fl.stats["compute_flow"] == 0
    else:
        assert fl.stats["reduction"] == 0 and fl.stats["compute_flow"] == 2
    sched = m.schedule()
    for arr in m.arrays:
        sink = m.accesses("read", arr)
        src = m.accesses("write", arr)
        if sink.is_empty() or src.is_empty():
            continue
        ref = isl.UnionAccessInfo.from_sink(sink).set_must_source(src) \
            .set_schedule_map(sched).compute_flow().get_must_dependence()
        assert fl.dep(arr).is_equal(ref), arr
    assert fl.all().is_equal(fl.all().coalesce())


def test_schedule_is_the_original_order(conv):
    m, _ = conv
    pad, init, upd = m.statements

    def times(st):
        return st.domain.apply(st.schedule)

    def point(s):
        p = s.sample_point()
        return tuple(int(p.get_coordinate_val(isl.dim_type.set, i).to_python())
                     for i in range(m.time_dims))
    # every pad instance runs before every conv instance (operator, then loop order)
    assert point(times(pad).lexmax()) < point(times(init).lexmin())
    # the init at a point runs right before the update's first reduction step there
    at = (0, 1, 2, 3, 0, 0, 0)
    t_init, t_upd = dataflow.time_of(init, at), dataflow.time_of(upd, at)
    assert t_init < t_upd and t_init[:-1] == t_upd[:-1]
    assert dataflow.time_of(upd, (0, 1, 2, 3, 0, 0, 1)) > t_upd
    sched = m.schedule().intersect_domain(m.domains())
    assert sched.is_injective()
    assert m.schedule_tree().get_map().intersect_domain(m.domains()).is_equal(sched)


def test_symbolic_shapes_are_refused():
    from tvm_poly.polymodel import UnsupportedModelError

    model, _ = U.conv_model(n=1, c=3, h=8, w=8, k=4)
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(UnsupportedModelError):
        model_of(model)
