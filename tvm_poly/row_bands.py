"""Spatial (row-band) tiling: which input rows a kernel reads for a band of its output rows, from
the polyhedral model, and the band-by-band schedule of a segment of kernels with halo reuse.

* :func:`row_maps` asks isl, once per (kernel, activation input), for the relation
  ``{output row -> input rows}`` of the kernel's statements (through its internal buffers, e.g. a
  conv's ``pad_temp``, whose guarded reads clip the halo at the borders) and tabulates it per
  output row (:class:`RowMap`).
* :func:`band_schedule` (pure) runs a segment of consecutive kernels band by band: band ``i``
  asks the segment's last kernel for its next output rows; every other kernel of the segment
  computes just the rows its consumers in the segment need and have not got yet (each row once:
  halo rows stay on chip from the band before).  An intermediate read only inside the segment
  lives in a *band buffer* holding rows ``[origin, hi)``: before a kernel writes new rows the
  buffer drops the rows no consumer needs any more and moves the kept (halo) rows to its front
  (the driver emits that copy, :func:`tvm_poly.allocation.band_views`).
"""
from __future__ import annotations

from dataclasses import dataclass

SPATIAL_KINDS = {"conv2d", "pool", "elementwise", "batch_norm", "concat", "lrn"}


@dataclass(frozen=True)
class RowMap:
    """Input rows ``[lo[o], hi[o])`` that output row ``o`` reads (exact, from isl)."""
    lo: tuple
    hi: tuple

    def window(self, o0: int, o1: int):
        if o1 <= o0:
            return None
        return min(self.lo[o0:o1]), max(self.hi[o0:o1])


def _rows_relation(pm, stmts, out: str, inp: str):
    """isl map ``{[h_out] -> [h_in]}``: rows of ``inp`` the statements read to write row h_out of
    ``out``, following reads of the statements' own (internal) buffers back to their writers."""
    import islpy as isl

    from tvm_poly.polymodel import map_list_of

    ids = {pm.array(a.array).isl_id: a.array for s in stmts for a in s.reads + s.writes}
    writes, reads = {}, isl.UnionMap.empty(isl.Space.params_alloc(pm.ctx, 0))
    for s in stmts:
        for a in s.writes:
            w = isl.UnionMap.from_map(a.relation)
            writes[a.array] = w if a.array not in writes else writes[a.array].union(w)
        for a in s.reads:
            reads = reads.union(isl.UnionMap.from_map(a.relation))
    if out not in writes:
        return None
    frontier = writes[out].reverse()  # out elements -> instances writing them
    acc, seen = None, {out}
    for _ in range(8):
        got = frontier.apply_range(reads)  # out elements -> elements read
        nxt = None
        for m in map_list_of(got):
            arr = ids.get(m.get_tuple_name(isl.dim_type.out))
            if arr == inp:
                acc = m if acc is None else acc.union(m)
            elif arr in writes and arr not in seen:
                step = isl.UnionMap.from_map(m).apply_range(writes[arr].reverse())
                nxt = step if nxt is None else nxt.union(step)
                seen.add(arr)
        if nxt is None:
            break
        frontier = nxt
    if acc is None:
        return None
    # keep dim 2 (rows) of both sides
    m = acc.project_out(isl.dim_type.in_, 3, acc.dim(isl.dim_type.in_) - 3).project_out(isl.dim_type.in_, 0, 2)
    m = m.project_out(isl.dim_type.out, 3, m.dim(isl.dim_type.out) - 3).project_out(isl.dim_type.out, 0, 2)
    return m.coalesce()


def row_map(pm, stmts, out: str, inp: str, out_rows: int):
    """:class:`RowMap` of ``inp`` for the kernel whose statements are ``stmts``, or None."""
    import islpy as isl

    m = _rows_relation(pm, stmts, out, inp)
    if m is None:
        return None
    lo, hi = [None] * out_rows, [None] * out_rows

    def point(p):
        o = p.get_coordinate_val(isl.dim_type.set, 0).to_python()
        i = p.get_coordinate_val(isl.dim_type.set, 1).to_python()
        if 0 <= o < out_rows:
            lo[o] = i if lo[o] is None else min(lo[o], i)
            hi[o] = i + 1 if hi[o] is None else max(hi[o], i + 1)

    m.wrap().foreach_point(point)
    if any(x is None for x in lo):
        return None  # an output row that reads nothing of the input: not a row-local kernel
    return RowMap(tuple(lo), tuple(hi))


def row_maps(pm, graph, groups, arrays: dict, node_ops: dict) -> dict:
    """{(group index, input tensor): RowMap} for the spatial kernels whose output and activation
    inputs are 4-D NCHW tensors with the same batch; kernels missing here cannot be banded.
    ``arrays`` / ``node_ops``: graph names -> model names (``planners.poly.model_names``)."""
    from tvm_poly.planners.poly import group_statements

    tm = graph.tensor_map
    out = {}
    for gi, g in enumerate(groups):
        if g.kind not in SPATIAL_KINDS or len(tm[g.output].shape) != 4:
            continue
        if g.kind == "concat" and int(g.param("axis", 1)) not in (1, -3):
            continue
        stmts = group_statements(pm, g, node_ops)
        acts = [i for i in dict.fromkeys(g.inputs) if not tm[i].is_constant and tm[i].kind != "weight"]
        if not stmts or not acts:
            continue
        maps = {}
        for i in acts:
            if len(tm[i].shape) != 4 or tm[i].shape[0] != tm[g.output].shape[0] or i not in arrays \
                    or g.output not in arrays:
                maps = None
                break
            rm = row_map(pm, stmts, arrays[g.output], arrays[i], int(tm[g.output].shape[2]))
            if rm is not None and g.kind not in ("conv2d", "pool") and \
                    (rm.lo != tuple(range(len(rm.lo))) or rm.hi != tuple(range(1, len(rm.lo) + 1))):
                rm = None  # a pointwise kernel whose rows are not row-local (codegen: same shapes)
            if rm is None:
                maps = None
                break
            maps[i] = rm
        if maps:
            for i, rm in maps.items():
                out[(gi, i)] = rm
    return out


@dataclass(frozen=True)
class BandStep:
    group: int  # kernel index (into the plan's groups before expansion)
    rows: tuple  # (r0, r1): output rows this step computes
    origin: int  # band buffer output: global row at buffer row 0 after the shift; -1 = whole tensor
    inputs: tuple  # ((tensor, i0, i1), ...): input rows the step reads
    # ((tensor, r0, r1, origin), ...): rows of staged inputs to load (from HBM) into their stage
    # buffer before this step, the buffer's row 0 being global row ``origin`` after the load
    loads: tuple = ()


@dataclass(frozen=True)
class BandSchedule:
    steps: tuple  # BandStep, in execution order
    cap_rows: tuple  # ((tensor, rows), ...): band buffer capacities (rows)
    reads: tuple  # (((tensor, kernel), rows read in all), ...): the segment's inputs from outside
    stage_rows: tuple = ()  # ((tensor, rows), ...): stage buffer capacities of the staged inputs


def band_schedule(lo: int, hi: int, bands, groups, maps: dict, heights: dict, internal: set,
                  staged=frozenset()):
    """Steps of kernels [lo, hi) run band by band.  ``bands``: [(0, e0), (e0, e1), ...] rows of the
    output of kernel hi-1; ``maps``: :func:`row_maps`; ``heights``: tensor -> rows; ``internal``:
    tensors produced in the segment and read only inside it (band buffers).  Every other output of
    the segment is complete after the last band.  ``staged``: inputs from outside the segment (in
    HBM) that several of its kernels read: each band loads the rows its readers need and have not
    been loaded yet into a *stage buffer* (halo rows stay, like a band buffer's), so the readers
    share one load of every row.  Returns None when a kernel cannot be banded."""
    idx = range(lo, hi)
    out_of = {groups[j].output: j for j in idx}
    if any((c, t) not in maps for c in idx for t in groups[c].inputs if t in out_of):
        return None  # a kernel reads a segment tensor without a row map
    # kernels the last one depends on are driven backwards from its bands; the others (side
    # exits: e.g. a lattice subsample of a tensor the segment also convolves) go forward, each
    # band computing the rows its inputs' rows so far allow
    driven, todo = set(), [hi - 1]
    while todo:
        j = todo.pop()
        if j not in driven:
            driven.add(j)
            todo += [out_of[i] for i in groups[j].inputs if i in out_of and (j, i) in maps]
    done = {j: 0 for j in idx}  # rows computed so far
    origin = {j: 0 for j in idx}
    cap = {groups[j].output: 0 for j in idx if groups[j].output in internal}
    reads = {}
    steps = []
    s_done = {t: 0 for t in staged}  # rows of each staged input loaded so far
    s_org = {t: 0 for t in staged}
    s_cap = {t: 0 for t in staged}
    for bi, (_, e) in enumerate(bands):
        last = bi == len(bands) - 1
        want = {hi - 1: e}
        lo_need = {}
        for j in reversed(idx):  # consumers come after their producers: settle them first
            t = groups[j].output
            H = heights[t]
            w = want.get(j, done[j])
            if last and t not in internal:
                w = H
            w = max(w, done[j])
            want[j] = min(w, H)
            r0, r1 = done[j], want[j]
            if r1 > r0:
                for i in dict.fromkeys(groups[j].inputs):
                    rm = maps.get((j, i))
                    if rm is None:
                        continue
                    a, b = rm.window(r0, r1)
                    if i in out_of:
                        p = out_of[i]
                        want[p] = max(want.get(p, done[p]), b)
                        lo_need[p] = min(lo_need.get(p, a), a)
        for j in idx:
            if j in driven or last:
                continue
            H = heights[groups[j].output]
            ins = [(maps[(j, i)], out_of[i]) for i in dict.fromkeys(groups[j].inputs)
                   if i in out_of and (j, i) in maps]
            r = done[j]
            while r < H and all(rm.window(done[j], r + 1)[1] <= want.get(p, done[p]) for rm, p in ins):
                r += 1
            if r > done[j]:
                want[j] = r
                for rm, p in ins:
                    a, _ = rm.window(done[j], r)
                    lo_need[p] = min(lo_need.get(p, a), a)
        s_need = {}  # staged input -> rows [a, b) this band's steps read
        for j in idx:
            if want[j] > done[j]:
                for i in dict.fromkeys(groups[j].inputs):
                    if i in staged and (j, i) in maps:
                        a, b = maps[(j, i)].window(done[j], want[j])
                        pa, pb = s_need.get(i, (a, b))
                        s_need[i] = (min(a, pa), max(b, pb))
        for j in idx:
            t = groups[j].output
            r0, r1 = done[j], want[j]
            if r1 <= r0:
                continue
            loads = []
            for i in dict.fromkeys(groups[j].inputs):
                if i in s_need:  # the band's first reader loads what the band needs
                    a, b = s_need.pop(i)
                    if a < s_org[i]:
                        return None  # a reader needs rows already dropped
                    r_from = max(s_done[i], a)
                    if b > r_from:
                        loads.append((i, r_from, b, a))
                        reads[(i, lo)] = reads.get((i, lo), 0) + (b - r_from)
                        s_done[i] = b
                    s_org[i] = a
                    s_cap[i] = max(s_cap[i], s_done[i] - a)
            org = -1
            if t in internal:
                org = min(lo_need.get(j, r0), r0)
                if org < origin[j]:  # a consumer needs rows already dropped (e.g. a global pool)
                    return None
                origin[j] = org
                cap[t] = max(cap[t], r1 - org)
            ins = []
            for i in dict.fromkeys(groups[j].inputs):
                rm = maps.get((j, i))
                if rm is None:
                    continue
                a, b = rm.window(r0, r1)
                ins.append((i, a, b))
                if i not in out_of and i not in staged:
                    reads[(i, j)] = reads.get((i, j), 0) + (b - a)
            steps.append(BandStep(j, (r0, r1), org, tuple(ins), tuple(loads)))
            done[j] = r1
    for j in idx:
        t = groups[j].output
        if t not in internal and done[j] != heights[t]:
            return None
    return BandSchedule(tuple(steps), tuple(sorted(cap.items())), tuple(sorted(reads.items())),
                        tuple(sorted((t, r) for t, r in s_cap.items() if r)))
