"""Value-based dataflow and liveness of a PolyModel.

* :func:`flow` — exact value-based flow dependences, computed array by array (lazily) over the
  whole network with the original schedule: for every read instance, the write instance that
  last wrote the value before it. Exact writes are must sources, over-approximated writes may
  sources. Reads with no source (model inputs, constants) are in ``Flow.no_source(array)``.
  Three exact ways, all checked equal to plain ``compute_flow`` over the full schedule in the
  tests: (1) reads by statements that run wholly after every writer: the *last-writer map*
  ``{element -> last write}`` composed with the read; (2) a reduction update reading its own
  accumulator: the closed form (lexicographic predecessor in the reduction box, or the init);
  (3) anything else: isl ``UnionAccessInfo.compute_flow`` with the schedule compacted to the
  statements involved (constant time dims dropped). ``Flow.stats`` counts each.
* :func:`liveness` — for every tensor (or one region of it) the first write and the last read
  in the schedule, as statement instances and time points; :func:`last_use_map` gives, element
  by element, the time of the last read (the per-region liveness the planner frees SBUF with).

All results are cached on the model. Each isl call runs under the model's ``max_operations``
bound; hitting it raises :class:`IslBudgetExceeded` (the caller falls back to whole-tensor views).
"""

from __future__ import annotations

from dataclasses import dataclass

import islpy as isl

from tvm_poly.counting import map_list, set_list
from tvm_poly.polymodel import PolyModel, schedule_map


def _guard(model: PolyModel, what: str, fn):
    return model.guard(what, fn)


def _empty_umap(model):
    return isl.UnionMap.empty(isl.Space.params_alloc(model.ctx, 0))


def compact_schedule(model: PolyModel, stmts) -> isl.UnionMap:
    """The original schedule of ``stmts`` with the time dimensions that are the same constant
    for all of them dropped (same order, far fewer dimensions for isl to compare)."""
    stmts = list(stmts)
    n = model.time_dims
    keep = []
    for k in range(n):
        vals = {s.time_vector[k] for s in stmts}
        if len(vals) == 1 and isinstance(next(iter(vals)), int):
            continue
        keep.append(k)
    u = _empty_umap(model)
    for s in stmts:
        m = schedule_map(model.ctx, s.domain.get_space(), [s.time_vector[k] for k in keep])
        u = u.union(isl.UnionMap.from_map(m.intersect_domain(s.domain)))
    return u


def _const(pa: isl.PwAff) -> int | None:
    pieces = pa.get_pieces()
    if len(pieces) != 1 or not pieces[0][1].is_cst():
        return None
    v = pieces[0][1].get_constant_val()
    return int(v.to_python()) if v.is_int() else None


def _same_spatial(st, first_r: int) -> isl.Map:
    """{ S[s, k] -> S[s, k'] } over the statement's domain (same spatial dims)."""
    dims = list(st.dims)
    out = [d if i < first_r else f"{d}_" for i, d in enumerate(dims)]
    m = isl.Map(f"{{ {st.isl_id}[{', '.join(dims)}] -> {st.isl_id}[{', '.join(out)}] }}",
                context=st.domain.get_ctx())
    return m.intersect_domain(st.domain).intersect_range(st.domain)


def _strictly_after(r, w) -> bool:
    """True when every instance of statement r runs after every instance of statement w
    (their time vectors differ first at a constant position, in r's favour)."""
    for a, b in zip(r.time_vector, w.time_vector):
        if isinstance(a, int) and isinstance(b, int):
            if a != b:
                return a > b
            continue
        return False
    return False


class Flow:
    """Flow dependences, per array: ``{ source_instance -> sink_instance }``, computed array by
    array on first use (``dep(array)``) or all at once (``all()``)."""

    def __init__(self, model: PolyModel):
        self.model = model
        self._dep: dict = {}
        self._nosrc: dict = {}
        self._cache: dict = {}
        self.stats = {"last-writer": 0, "reduction": 0, "compute_flow": 0}
        self._readers: dict[str, list] = {}
        self._writers: dict[str, list] = {}
        for st in model.statements:
            for a in st.reads:
                self._readers.setdefault(a.array, []).append((st, a))
            for a in st.writes:
                self._writers.setdefault(a.array, []).append((st, a))

    def _compute(self, arr: str):
        """Flow dependences of one array.

        Reads by statements that run wholly after every writing statement (the usual
        producer -> consumer case, also inside a PrimFunc) are served by the *last-writer map* ``{ element -> last write instance }``
        (lexmax per writing statement, then lexmax over their schedule times): every such read
        sees the final value, so this is exactly the value-based flow. All other reads (inside
        the producing operator, e.g. a reduction reading its accumulator) go through isl's
        ``compute_flow`` with the schedule compacted to the statements involved."""
        model = self.model
        reads = self._readers.get(arr, [])
        writes = self._writers.get(arr, [])
        empty = _empty_umap(model)
        if not reads:
            self._dep[arr] = empty
            return
        if not writes:
            sink = empty
            for _, a in reads:
                sink = sink.union(isl.UnionMap.from_map(a.relation))
            self._dep[arr] = empty
            self._nosrc[arr] = sink
            return
        all_exact = all(a.exact for _, a in writes)
        later, inner = [], []
        for st, a in reads:
            if all_exact and all(_strictly_after(st, w) for w, _ in writes):
                later.append((st, a))
            else:
                inner.append((st, a))

        def compute():
            dep, nosrc = empty, empty
            if later:
                last = self._last_writer(arr, writes)
                self.stats["last-writer"] += len(later)
                written = last.domain()
                for _, a in later:
                    r = isl.UnionMap.from_map(a.relation)
                    dep = dep.union(r.apply_range(last).reverse())
                    ns = r.subtract_range(written)
                    if not ns.is_empty():
                        nosrc = nosrc.union(ns)
            rest = []
            for st, a in inner:
                d = self._reduction_self_flow(st, a, writes) if all_exact else None
                if d is None:
                    rest.append((st, a))
                else:
                    dep = dep.union(d)
                    self.stats["reduction"] += 1
            if rest:
                inner_ = rest
                sink, must, may = empty, empty, empty
                for _, a in inner_:
                    sink = sink.union(isl.UnionMap.from_map(a.relation))
                for _, a in writes:
                    if a.exact:
                        must = must.union(isl.UnionMap.from_map(a.relation))
                    else:
                        may = may.union(isl.UnionMap.from_map(a.relation))
                stmts = {st.name: st for st, _ in inner_ + writes}.values()
                sched = compact_schedule(model, stmts)
                info = isl.UnionAccessInfo.from_sink(sink).set_must_source(must)
                if not may.is_empty():
                    info = info.set_may_source(may)
                res = info.set_schedule_map(sched).compute_flow()
                self.stats["compute_flow"] += 1
                d = res.get_may_dependence() if not may.is_empty() else res.get_must_dependence()
                dep = dep.union(d)
                ns = res.get_may_no_source()
                if not ns.is_empty():
                    nosrc = nosrc.union(ns)
            return dep.coalesce(), nosrc.coalesce()
        dep, ns = _guard(model, f"flow of {arr}", compute)
        self._dep[arr] = dep
        if not ns.is_empty():
            self._nosrc[arr] = ns

    def _reduction_self_flow(self, st, read, writes) -> isl.UnionMap | None:
        """Closed form of a reduction update reading its own accumulator, as TVM defines it:
        the update instance (s, k) reads the value written by the lexicographic predecessor of
        k in the reduction box (same spatial point s), or by the init at k = min. Used only
        when it is provably the exact flow (else None -> compute_flow):
        writers = {init, update} of one block, the update reads what it writes, the write
        depends only on the spatial dims (injective there), the domain is a box whose
        reduction dims are innermost."""
        if st.role != "update" or len(writes) != 2:
            return None
        names = {w.name for w, _ in writes}
        init_name = st.name + ".init"
        if names != {st.name, init_name}:
            return None
        (w_upd,) = [a for w, a in writes if w.name == st.name]
        (w_init,) = [a for w, a in writes if w.name == init_name]
        init = self.model.statement(init_name)
        kinds = st.dim_kinds
        if "?" in kinds or "R" not in kinds:
            return None
        first_r = kinds.index("R")
        if any(k != "R" for k in kinds[first_r:]):
            return None  # reduction dims are not innermost
        if not read.relation.is_equal(w_upd.relation) or not w_init.relation.is_injective():
            return None
        dom = st.domain
        bounds = []
        for i in range(dom.dim(isl.dim_type.set)):
            lo, hi = _const(dom.dim_min(i)), _const(dom.dim_max(i))
            if lo is None or hi is None:
                return None
            bounds.append((lo, hi))
        box = isl.Set.universe(dom.get_space())
        for i, (lo, hi) in enumerate(bounds):
            box = box.lower_bound_val(isl.dim_type.set, i, isl.Val.int_from_si(dom.get_ctx(), lo))
            box = box.upper_bound_val(isl.dim_type.set, i, isl.Val.int_from_si(dom.get_ctx(), hi))
        if not box.is_equal(dom):
            return None
        # the write must not depend on the reduction dims: W(s, k) == W(s, k_min)
        at_min = dom
        for i in range(first_r, len(kinds)):
            at_min = at_min.fix_val(isl.dim_type.set, i, isl.Val.int_from_si(dom.get_ctx(),
                                                                              bounds[i][0]))
        if not w_upd.relation.range().is_equal(w_upd.relation.intersect_domain(at_min).range()):
            return None
        if not w_upd.relation.intersect_domain(at_min).is_injective():
            return None
        if not isl.UnionMap.from_map(w_upd.relation).apply_range(
                isl.UnionMap.from_map(w_upd.relation).reverse()).is_subset(
                isl.UnionMap.from_map(_same_spatial(st, first_r))):
            return None
        dims = list(st.dims)
        src_ids, dst = st.isl_id, st.isl_id
        pieces = []
        red = list(range(first_r, len(dims)))
        for j in reversed(red):  # k_j > lo_j, k_{j+1..} = lo: predecessor decrements k_j
            cons = [f"{dims[j]} > {bounds[j][0]}"] + [f"{dims[i]} = {bounds[i][0]}"
                                                       for i in red if i > j]
            out = [dims[i] if i < j else (f"{dims[i]} - 1" if i == j else str(bounds[i][1]))
                   for i in range(len(dims))]
            pieces.append(f"{dst}[{', '.join(dims)}] -> {src_ids}[{', '.join(out)}] : "
                          + " and ".join(cons))
        prev = isl.UnionMap(f"{{ {'; '.join(pieces)} }}", context=dom.get_ctx()).reverse()
        prev = prev.intersect_range(isl.UnionSet.from_set(dom)).intersect_domain(
            isl.UnionSet.from_set(dom))
        first = [f"{dims[i]} = {bounds[i][0]}" for i in red]
        from_init = isl.UnionMap(
            f"{{ {init.isl_id}[{', '.join(dims)}] -> {dst}[{', '.join(dims)}] : "
            f"{' and '.join(first)} }}", context=dom.get_ctx())
        from_init = from_init.intersect_range(isl.UnionSet.from_set(dom)).intersect_domain(
            isl.UnionSet.from_set(init.domain))
        return prev.union(from_init)

    def _last_writer(self, arr: str, writes) -> isl.UnionMap:
        """``{ element -> the instance that writes it last }`` over all writes of ``arr``."""
        key = ("last_writer", arr)
        if key in self._cache:
            return self._cache[key]
        model = self.model
        per_stmt = []
        for st, a in writes:
            w = a.relation.reverse()
            per_stmt.append((st, w if a.relation.is_injective() else w.lexmax()))
        if len(per_stmt) == 1:
            res = isl.UnionMap.from_map(per_stmt[0][1])
        else:
            stmts = {st.name: st for st, _ in per_stmt}.values()
            sched = compact_schedule(model, stmts)
            t = _empty_umap(model)
            for st, lw in per_stmt:
                t = t.union(isl.UnionMap.from_map(lw).apply_range(sched))
            tmax = t.lexmax()
            res = tmax.apply_range(sched.reverse())
        self._cache[key] = res
        return res

    def dep(self, array: str) -> isl.UnionMap:
        """Flow dependences carried by one array."""
        if array not in self._dep:
            self._compute(array)
        return self._dep[array]

    def no_source(self, array: str) -> isl.UnionMap:
        """Reads of ``array`` that no write reaches (model inputs, constants): sink -> element."""
        self.dep(array)
        return self._nosrc.get(array, _empty_umap(self.model))

    @property
    def per_array(self) -> dict:
        for a in self.model.arrays:
            self.dep(a)
        return self._dep

    def all(self) -> isl.UnionMap:
        if "all" not in self._cache:
            u = _empty_umap(self.model)
            for m in self.per_array.values():
                u = u.union(m)
            self._cache["all"] = u
        return self._cache["all"]

    def by_statement_pair(self) -> dict:
        """{array: {(source statement, sink statement): isl.Map}} with model names."""
        if "pairs" not in self._cache:
            out = {}
            for arr, um in self.per_array.items():
                pairs = {}
                for m in map_list(um):
                    src = self.model.name_of(m.get_tuple_name(isl.dim_type.in_))
                    dst = self.model.name_of(m.get_tuple_name(isl.dim_type.out))
                    pairs[(src, dst)] = m
                if pairs:
                    out[arr] = pairs
            self._cache["pairs"] = out
        return self._cache["pairs"]

    def between(self, source: str, sink: str, array: str | None = None) -> isl.Map | None:
        """Flow dependence relation from one statement to another (None if there is none)."""
        src, dst = self.model.statement(source), self.model.statement(sink)
        arrays = [array] if array is not None else \
            sorted({a.array for a in src.writes} & {a.array for a in dst.reads})
        res = None
        for arr in arrays:
            for m in map_list(self.dep(arr)):
                if m.get_tuple_name(isl.dim_type.in_) == src.isl_id and \
                        m.get_tuple_name(isl.dim_type.out) == dst.isl_id:
                    res = m if res is None else res.union(m)
        return res

    def statement_graph(self) -> set:
        """{(source statement, sink statement, array)} for every non-empty dependence."""
        return {(s, d, a) for a, pairs in self.by_statement_pair().items() for (s, d) in pairs}


def flow(model: PolyModel) -> Flow:
    """The (lazily computed, cached) value-based flow dependences of the whole model."""
    if "flow" not in model._cache:
        model._cache["flow"] = Flow(model)
    return model._cache["flow"]


# ------------------------------------------------------------------------------------------
# liveness
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One statement instance at one point of the schedule."""

    statement: str
    op: str
    op_index: int
    instance: tuple  # the statement's iteration vector
    time: tuple  # the point in the common time space


@dataclass(frozen=True)
class Live:
    """Live range of a tensor (or of one region of it): from its first write to its last read.
    ``first_write`` is None for inputs and constants (live from the start), ``last_read`` None
    for a tensor nobody reads (e.g. an unused batch-norm statistic, or a model output)."""

    array: str
    first_write: Event | None
    last_read: Event | None

    @property
    def first_op(self) -> int | None:
        return None if self.first_write is None else self.first_write.op_index

    @property
    def last_op(self) -> int | None:
        return None if self.last_read is None else self.last_read.op_index


def _point_coords(p: isl.Point, n: int) -> tuple:
    return tuple(int(p.get_coordinate_val(isl.dim_type.set, i).to_python()) for i in range(n))


def time_of(stmt, instance: tuple) -> tuple:
    """The schedule time of one statement instance (the time vector evaluated at it)."""
    pos = {d: i for i, d in enumerate(stmt.dims)}
    return tuple(v if isinstance(v, int) else instance[pos[v]] for v in stmt.time_vector)


def _extreme(model: PolyModel, accesses, region, lex: str) -> Event | None:
    """Earliest (lex="min") or latest ("max") instance over (statement, access) pairs.
    Within a statement the 2d+1 schedule is monotone in the iteration vector, so the lexmin /
    lexmax of the accessing instances in the statement's own space is the extreme in time."""
    best = None
    for st, a in accesses:
        rel = a.relation if region is None else a.relation.intersect_range(region)
        inst = rel.domain()
        if inst.is_empty():
            continue
        pt = (inst.lexmin() if lex == "min" else inst.lexmax()).sample_point()
        ip = _point_coords(pt, len(st.dims))
        tp = time_of(st, ip)
        if best is None or (tp < best.time if lex == "min" else tp > best.time):
            best = Event(st.name, st.op, st.op_index, ip, tp)
    return best


def liveness(model: PolyModel, array: str, region: isl.Set | None = None) -> Live:
    """First write and last read of ``array`` (restricted to the elements of ``region``)."""
    key = ("live", array, None if region is None else str(region))
    if key in model._cache:
        return model._cache[key]
    arr = model.array(array)
    fl = flow(model)
    reg = None if region is None else region.intersect(arr.box)

    def compute():
        return Live(array, _extreme(model, fl._writers.get(array, []), reg, "min"),
                    _extreme(model, fl._readers.get(array, []), reg, "max"))
    live = _guard(model, f"liveness of {array}", compute)
    model._cache[key] = live
    return live


def liveness_table(model: PolyModel) -> dict:
    """Live range of every array of the model (cached)."""
    if "live_table" not in model._cache:
        model._cache["live_table"] = {n: liveness(model, n) for n in model.arrays}
    return model._cache["live_table"]


def last_use_map(model: PolyModel, array: str) -> isl.Map:
    """``{ array[i] -> time }``: for every element read, the schedule time of its last read."""
    key = ("last_use", array)
    if key not in model._cache:
        r = model.accesses("read", array)

        def compute():
            m = r.reverse().apply_range(model.schedule())
            maps = map_list(m)
            if not maps:
                return isl.Map.empty(isl.Space.map_from_domain_and_range(
                    model.array(array).box.get_space(),
                    isl.Space.set_alloc(model.ctx, 0, model.time_dims)))
            return maps[0].lexmax().coalesce()
        model._cache[key] = _guard(model, f"last use of {array}", compute)
    return model._cache[key]
