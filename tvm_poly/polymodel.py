"""The polyhedral model of a whole network: plain frozen data around isl objects.

Built by :func:`tvm_poly.extract.extract` from the legalized TIR of a Relax module.

Naming
------
* ``PolyArray.name`` is the Relax name of the tensor: a binding var (``"lv1"``), a function
  parameter (``"gpu_0_data_0"``), a constant (``"const_<i>"``, numbered in order of first use in
  ``main``) or a PrimFunc-internal buffer (``"<binding>.<buffer>"``, e.g. ``"lv16.pad_temp"``).
* ``PolyStatement.name`` is ``"<binding>.<sblock>"``; a reduction block gives two statements,
  ``"<binding>.<sblock>.init"`` and ``"<binding>.<sblock>"`` (the update).
* isl identifiers cannot hold ``.``, so every array and statement also has an ``isl_id``
  (``.`` replaced by ``__``); ``PolyModel.name_of(isl_id)`` maps back.

Spaces
------
* A statement's domain lives in ``{ <isl_id>[d0, ..., dn] }`` with one dimension per enclosing
  loop (named after the TIR loop vars, see ``PolyStatement.dims``); ``dim_kinds`` gives the
  block iter type bound to that loop (``"S"`` spatial, ``"R"`` reduction, ``"?"`` not 1:1).
* An array lives in ``{ <isl_id>[i0, ..., ik] }`` bounded by its shape.
* The schedule maps every statement instance into one common time space
  ``[op, b0, l0, b1, l1, ..., bD, phase]`` (2d+1 form: ``op`` = position of the operator in
  ``main``, ``b*`` = sequence positions inside the PrimFunc, ``l*`` = loop values,
  ``phase`` = 0 for an init, 1 for the update of a reduction, 0 otherwise).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import islpy as isl

try:  # the project's error base class (tvm_poly/errors.py, owned by the integration engineer)
    from tvm_poly.errors import TvmPolyError as _ErrorBase
except ImportError:  # pragma: no cover - only while errors.py does not exist yet
    _ErrorBase = Exception


class PolyError(_ErrorBase):
    """Base class of the polyhedral-model errors."""


class UnsupportedModelError(PolyError):
    """The Relax module cannot be modelled (e.g. symbolic shapes, no main function)."""


class CountingError(PolyError):
    """An exact point count was asked for a set that cannot be counted exactly."""


class IslBudgetExceeded(PolyError):
    """An isl operation hit the context's max_operations bound (see PolyModel.max_operations)."""


DTYPE_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2,
    "uint8": 1, "bool": 1, "fp8": 1, "bf16": 2, "fp16": 2, "fp32": 4,
}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name (``float32``, ``bfloat16``, ``int8`` ...)."""
    try:
        return DTYPE_BYTES[str(dtype)]
    except KeyError:
        raise PolyError(f"unknown dtype {dtype!r}") from None


@dataclass(frozen=True)
class Diagnostic:
    """Something the model could not represent exactly (it is over-approximated instead)."""

    kind: str  # "non-affine-access", "non-affine-guard", "opaque-op", "out-of-bounds", "isl-budget", ...
    op: str | None
    statement: str | None
    message: str

    def __str__(self) -> str:
        where = self.statement or self.op or "-"
        return f"[{self.kind}] {where}: {self.message}"


@dataclass(frozen=True)
class PolyArray:
    """One tensor of the network (or one PrimFunc-internal buffer)."""

    name: str
    isl_id: str
    shape: tuple[int, ...]
    dtype: str
    # "input" (main parameter), "const" (Relax constant), "weight" (output of an operator whose
    # inputs are all constants, e.g. broadcast_to of a scalar constant: folded at compile time),
    # "activation" (output of an operator), "internal" (PrimFunc alloc_buffer, e.g. pad_temp)
    kind: str
    box: isl.Set = field(repr=False, compare=False)
    is_output: bool = False
    producer: str | None = None  # op name that writes it (None for inputs / consts)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def elem_bytes(self) -> int:
        return dtype_bytes(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.size * self.elem_bytes


@dataclass(frozen=True)
class PolyAccess:
    """One read or write access relation ``{ S[d] -> A[i] }`` (already restricted to the
    statement's domain and to the if_then_else guard under which it is evaluated)."""

    array: str
    kind: str  # "read" | "write"
    relation: isl.Map = field(compare=False)
    exact: bool = True  # False: over-approximated (non-affine index or guard)
    text: str = ""  # the TIR access, e.g. "pad_temp[v_nn, v_rc, v_yy + v_ry, v_xx + v_rx]"


@dataclass(frozen=True)
class PolyStatement:
    name: str
    isl_id: str
    op: str  # binding name of the operator ("lv16")
    op_index: int
    func: str  # PrimFunc name ("conv2d2")
    block: str  # SBlock name ("conv2d_nchw")
    role: str  # "compute" | "init" | "update" | "opaque"
    dims: tuple[str, ...]
    dim_kinds: tuple[str, ...]
    domain: isl.Set = field(compare=False)
    reads: tuple[PolyAccess, ...]
    writes: tuple[PolyAccess, ...]
    # the schedule as a vector: ints (operator / sequence positions, phase) and dim names;
    # ``schedule`` is the same as an isl map (built on first use)
    time_vector: tuple = ()
    instances: int = 0  # exact card(domain)
    macs_per_instance: int = 0  # 1 when the update is acc + a * b
    exact: bool = True
    # TVM's declared block regions: ((array, "read"/"write", isl map text or None), ...)
    tvm_regions: tuple = field(default=(), compare=False, repr=False)
    _lazy: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def schedule(self) -> isl.Map:
        """``{ S[d] -> [op, b0, l0, ..., phase] }`` into the common time space."""
        if "schedule" not in self._lazy:
            ctx = self.domain.get_ctx()
            with unbounded(ctx):
                self._lazy["schedule"] = schedule_map(ctx, self.domain.get_space(),
                                                      self.time_vector)
        return self._lazy["schedule"]

    @property
    def macs(self) -> int:
        return self.instances * self.macs_per_instance

    def space_str(self) -> str:
        return f"{self.isl_id}[{', '.join(self.dims)}]"


@dataclass(frozen=True)
class PolyOp:
    """One binding of ``main`` that calls a PrimFunc (or an opaque call)."""

    name: str  # binding var name
    index: int  # program order
    func: str  # PrimFunc global name ("" for opaque calls)
    inputs: tuple[str, ...]  # array names, in call order
    outputs: tuple[str, ...]
    statements: tuple[str, ...]
    const_folded: bool = False  # all inputs constant -> outputs are weights

    @property
    def kind(self) -> str:
        """PrimFunc name without its numeric suffix ("conv2d2" -> "conv2d")."""
        return self.func.rstrip("0123456789") or self.func


@dataclass(frozen=True, eq=False)
class PolyModel:
    arrays: Mapping[str, PolyArray]
    ops: tuple[PolyOp, ...]
    statements: tuple[PolyStatement, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    diagnostics: tuple[Diagnostic, ...]
    ctx: isl.Context = field(repr=False)
    time_dims: int
    max_operations: int
    _index: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        idx = self._index
        idx["stmt"] = {s.name: s for s in self.statements}
        idx["op"] = {o.name: o for o in self.ops}
        names = {s.isl_id: s.name for s in self.statements}
        names.update({a.isl_id: a.name for a in self.arrays.values()})
        idx["isl"] = names

    # ---- lookup --------------------------------------------------------------------------
    def statement(self, name: str) -> PolyStatement:
        return self._index["stmt"][name]

    def op(self, name: str) -> PolyOp:
        return self._index["op"][name]

    def array(self, name: str) -> PolyArray:
        return self.arrays[name]

    def name_of(self, isl_id: str) -> str:
        """Model name (statement or array) of an isl tuple id."""
        return self._index["isl"][isl_id]

    def statements_of(self, op: str) -> tuple[PolyStatement, ...]:
        return tuple(self.statement(n) for n in self.op(op).statements)

    def find_statements(self, func_kind: str | None = None, block: str | None = None,
                        role: str | None = None) -> list[PolyStatement]:
        out = []
        for s in self.statements:
            if func_kind is not None and s.func.rstrip("0123456789") != func_kind:
                continue
            if block is not None and s.block != block:
                continue
            if role is not None and s.role != role:
                continue
            out.append(s)
        return out

    # ---- isl views (cached) ----------------------------------------------------------------
    def _cached(self, key, fn):
        c = self._cache
        if key not in c:
            c[key] = fn()
        return c[key]

    def domains(self) -> isl.UnionSet:
        def build():
            u = isl.UnionSet.empty(isl.Space.params_alloc(self.ctx, 0))
            for s in self.statements:
                u = u.union(isl.UnionSet.from_set(s.domain))
            return u
        return self._cached("domains", build)

    def schedule(self) -> isl.UnionMap:
        """The original schedule as one union map into the common time space."""
        def build():
            u = isl.UnionMap.empty(isl.Space.params_alloc(self.ctx, 0))
            for s in self.statements:
                u = u.union(isl.UnionMap.from_map(s.schedule))
            return u
        return self._cached("schedule", build)

    def schedule_tree(self) -> isl.Schedule:
        """The original schedule as an isl schedule tree (one band over the time space)."""
        def build():
            with unbounded(self.ctx):
                sched = isl.Schedule.from_domain(self.domains())
                return sched.insert_partial_schedule(
                    isl.MultiUnionPwAff.from_union_map(self.schedule()))
        return self._cached("schedule_tree", build)

    def accesses(self, kind: str = "read", array: str | None = None,
                 exact_only: bool = False) -> isl.UnionMap:
        """Union of access relations; kind in {"read", "write", "all"}; optionally one array."""
        if kind not in ("read", "write", "all"):
            raise ValueError(kind)
        key = ("acc", kind, array, exact_only)

        def build():
            u = isl.UnionMap.empty(isl.Space.params_alloc(self.ctx, 0))
            for s in self.statements:
                accs = ()
                if kind in ("read", "all"):
                    accs += s.reads
                if kind in ("write", "all"):
                    accs += s.writes
                for a in accs:
                    if array is not None and a.array != array:
                        continue
                    if exact_only and not a.exact:
                        continue
                    u = u.union(isl.UnionMap.from_map(a.relation))
            return u.coalesce()
        return self._cached(key, build)

    def readers(self, array: str) -> list[PolyStatement]:
        return [s for s in self.statements if any(a.array == array for a in s.reads)]

    def writers(self, array: str) -> list[PolyStatement]:
        return [s for s in self.statements if any(a.array == array for a in s.writes)]

    def iterations(self, statement: str, constraints: str = "") -> isl.Set:
        """Instances of one statement, optionally restricted by isl constraints over its dims,
        e.g. ``model.iterations("lv16.conv2d_nchw", "yy < 4 and xx < 4")``."""
        s = self.statement(statement)
        if not constraints:
            return s.domain
        return self.guard(f"iterations of {statement}", lambda: s.domain.intersect(
            isl.Set(f"{{ {s.space_str()} : {constraints} }}", context=self.ctx)))

    def guard(self, what: str, fn):
        """Run ``fn`` (isl work) under a fresh max_operations budget; a hit becomes
        :class:`IslBudgetExceeded`, any other isl failure :class:`PolyError`."""
        self.ctx.reset_operations()
        try:
            return fn()
        except isl.Error as e:
            if "maximal number of operations" in str(e):
                raise IslBudgetExceeded(f"{what}: isl max_operations ({self.max_operations}) "
                                        "exceeded") from e
            raise PolyError(f"{what}: isl error: {e}") from e

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def macs(self) -> int:
        """Multiply-accumulates of the whole model (updates of the form acc + a * b)."""
        return sum(s.macs for s in self.statements)

    def macs_by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.statements:
            if s.macs:
                out[s.op] = out.get(s.op, 0) + s.macs
        return out

    # ---- inspection --------------------------------------------------------------------------
    def summary(self) -> str:
        n_acc = sum(len(s.reads) + len(s.writes) for s in self.statements)
        n_exact = sum(a.exact for s in self.statements for a in s.reads + s.writes)
        return (f"PolyModel: {len(self.ops)} ops, {len(self.statements)} statements, "
                f"{len(self.arrays)} arrays, {n_acc} accesses ({n_exact} exact), "
                f"{self.macs():,} MACs, {len(self.diagnostics)} diagnostics")

    def dump(self, deps: bool = False, max_deps_chars: int = 400,
             ops: Iterable[str] | None = None) -> str:
        """Readable text: arrays, operators with their statements (domain, accesses, schedule),
        diagnostics and (deps=True) the value-based flow dependences between statements.
        ``ops``: only these operators (binding names), their arrays and dependences."""
        if ops is not None:
            return self._dump_ops(set(ops), deps, max_deps_chars)
        lines = [self.summary(), ""]
        lines.append(f"inputs: {', '.join(self.inputs)}")
        lines.append(f"outputs: {', '.join(self.outputs)}")
        lines.append("")
        lines.append("arrays:")
        for a in self.arrays.values():
            extra = f" <- {a.producer}" if a.producer else ""
            out = " (output)" if a.is_output else ""
            lines.append(f"  {a.name:<24} {a.kind:<10} {a.dtype:<8} {list(a.shape)}{out}{extra}")
        lines.append("")
        for o in self.ops:
            folded = "  [const-folded: outputs are weights]" if o.const_folded else ""
            outs = ", ".join(o.outputs) or o.name
            lines.append(f"op #{o.index} {outs} = {o.func or 'opaque'}"
                         f"({', '.join(o.inputs)}){folded}")
            for sn in o.statements:
                s = self.statement(sn)
                mac = f", {s.macs:,} MACs" if s.macs else ""
                lines.append(f"  stmt {s.name} [{s.role}] {s.instances:,} instances{mac}")
                lines.append(f"    domain   {s.domain}")
                for a in s.reads:
                    tag = "" if a.exact else "  (over-approximated)"
                    lines.append(f"    read     {a.relation}{tag}")
                for a in s.writes:
                    tag = "" if a.exact else "  (over-approximated)"
                    lines.append(f"    write    {a.relation}{tag}")
                lines.append(f"    schedule {s.schedule}")
        if self.diagnostics:
            lines.append("")
            lines.append("diagnostics:")
            for d in self.diagnostics:
                lines.append(f"  {d}")
        if deps:
            from tvm_poly.dataflow import flow

            info = flow(self)
            lines.append("")
            lines.append("flow dependences (per array, source statement -> sink statement):")
            for arr, pairs in info.by_statement_pair().items():
                for (src, dst), m in pairs.items():
                    txt = str(m)
                    if len(txt) > max_deps_chars:
                        txt = txt[:max_deps_chars] + " ..."
                    lines.append(f"  {arr}: {src} -> {dst}  {txt}")
        return "\n".join(lines)

    def _dump_ops(self, names: set, deps: bool, max_deps_chars: int) -> str:
        unknown = names - set(self._index["op"])
        if unknown:
            raise PolyError(f"unknown operator(s) {', '.join(sorted(unknown))}")
        full = self.dump(deps=False).split("\n")
        keep, on = [], False
        for ln in full:
            if ln.startswith("op #"):
                name = next(o.name for o in self.ops if ln.startswith(f"op #{o.index} "))
                on = name in names
            elif not ln.startswith("  ") or ln.startswith("  ["):
                on = False
            if on:
                keep.append(ln)
        lines = [self.summary(), ""] + keep
        if deps:
            from tvm_poly.dataflow import flow

            fl = flow(self)
            lines.append("")
            lines.append("flow dependences into and out of these operators:")
            arrays = {a.array for n in names for s in self.statements_of(n)
                      for a in s.reads + s.writes}
            for arr in sorted(arrays):
                for m in map_list_of(fl.dep(arr)):
                    src = self.name_of(m.get_tuple_name(isl.dim_type.in_))
                    dst = self.name_of(m.get_tuple_name(isl.dim_type.out))
                    if self.statement(src).op in names or self.statement(dst).op in names:
                        txt = str(m)
                        if len(txt) > max_deps_chars:
                            txt = txt[:max_deps_chars] + " ..."
                        lines.append(f"  {arr}: {src} -> {dst}  {txt}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """A JSON-serialisable view (isl objects as strings)."""
        return {
            "summary": self.summary(),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "macs": self.macs(),
            "arrays": [
                {"name": a.name, "kind": a.kind, "dtype": a.dtype, "shape": list(a.shape),
                 "is_output": a.is_output, "producer": a.producer}
                for a in self.arrays.values()
            ],
            "ops": [dataclasses.asdict(o) for o in self.ops],
            "statements": [
                {"name": s.name, "op": s.op, "func": s.func, "block": s.block, "role": s.role,
                 "dims": list(s.dims), "dim_kinds": list(s.dim_kinds), "domain": str(s.domain),
                 "instances": s.instances, "macs": s.macs, "exact": s.exact,
                 "reads": [{"array": a.array, "relation": str(a.relation), "exact": a.exact}
                           for a in s.reads],
                 "writes": [{"array": a.array, "relation": str(a.relation), "exact": a.exact}
                            for a in s.writes],
                 "schedule": str(s.schedule)}
                for s in self.statements
            ],
            "diagnostics": [dataclasses.asdict(d) for d in self.diagnostics],
        }


@contextmanager
def unbounded(ctx: isl.Context):
    """Lift the context's max_operations bound for trivial constructions."""
    old = ctx.get_max_operations()
    ctx.set_max_operations(0)
    try:
        yield
    finally:
        ctx.set_max_operations(old)
        ctx.reset_operations()


def schedule_map(ctx: isl.Context, dom_space: isl.Space, vals) -> isl.Map:
    """``{ S[d] -> [vals] }`` where a value is an int or the name of a domain dim."""
    ls = isl.LocalSpace.from_space(dom_space)
    zero = isl.Aff.zero_on_domain(ls)
    lst = isl.AffList.alloc(ctx, len(vals))
    names = [dom_space.get_dim_name(isl.dim_type.set, i)
             for i in range(dom_space.dim(isl.dim_type.set))]
    for v in vals:
        if isinstance(v, str):
            lst = lst.add(isl.Aff.var_on_domain(ls, isl.dim_type.set, names.index(v)))
        else:
            lst = lst.add(zero.set_constant_val(isl.Val.int_from_si(ctx, v)))
    msp = isl.Space.map_from_domain_and_range(dom_space, isl.Space.set_alloc(ctx, 0, len(vals)))
    return isl.Map.from_multi_aff(isl.MultiAff.from_aff_list(msp, lst))


def map_list_of(u: isl.UnionMap) -> list:
    lst = u.get_map_list()
    return [lst.get_at(i) for i in range(lst.n_map())]


def isl_ident(name: str) -> str:
    """A valid isl identifier for a model name ("lv16.pad_temp" -> "lv16__pad_temp")."""
    out = []
    for ch in name:
        if ch.isalnum() or ch == "_":
            out.append(ch)
        elif ch == ".":
            out.append("__")
        else:
            out.append("_")
    s = "".join(out)
    if not s or s[0].isdigit():
        s = "t_" + s
    return s


def union_of(items: Iterable, ctx: isl.Context) -> isl.UnionSet:
    u = isl.UnionSet.empty(isl.Space.params_alloc(ctx, 0))
    for x in items:
        u = u.union(x if isinstance(x, isl.UnionSet) else isl.UnionSet.from_set(x))
    return u
