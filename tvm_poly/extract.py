"""Extract the polyhedral model of a whole Relax network from its legalized TIR.

Entry point: :func:`extract` (``extract(mod) -> PolyModel``).

How the TIR is read (TVM 0.27):
* ``main``'s bindings are walked in program order. Every ``R.call_tir(f, args, out)`` is one
  operator (:class:`PolyOp`) named after its binding var. Tuple outputs take the names of the
  ``TupleGetItem`` bindings that unpack them (``lv3 = lv2[0]``), else ``"<binding>[i]"``.
  Var-to-var bindings are aliases. Any other call (not legalized, packed) becomes an *opaque*
  operator: one statement with a 0-d domain that reads every input and writes every output
  wholly (over-approximation, listed in the diagnostics).
* Inside a PrimFunc every leaf ``SBlock`` gives a statement whose domain has one dimension per
  enclosing loop: loop bounds, block iter-var domains and the block predicate are its
  constraints. Block vars are replaced by their ``iter_values``.
* Accesses are read from the block *body* (not from ``T.reads``, which TVM over-approximates):
  every ``TensorLoad`` is a read, every ``BufferStore`` a write. Indices are simplified with
  ``tvm.sym.Analyzer`` (block vars bound to their ranges) and matched with
  ``tvm.sym.detect_linear_equation``; quasi-affine forms (floordiv/floormod by constants,
  min/max) are translated to isl directly. A load under ``T.if_then_else(c, a, b)`` is accessed
  only where ``c`` (for ``a``) or ``not c`` (for ``b``) holds, so padding reads and concat
  selections count no out-of-range element.
* A block with ``T.init()`` gives two statements as TVM defines them: the init, executed where
  every reduction var is at its minimum (``LowerInitBlock``), and the update.
* Non-affine index dimensions are over-approximated by the full extent of that dimension
  (so a fully data-dependent gather reads the whole tensor); non-affine guards are dropped
  (the access covers both branches). Both are listed in ``PolyModel.diagnostics``.

Weights: an operator all of whose tensor inputs are constants (or weights) is *const-folded*:
its outputs are arrays of kind ``"weight"``. This covers the light ONNX models, whose weights
are ``ConstantOfShape`` nodes that ``from_onnx`` turns into ``broadcast_to`` of a scalar
constant, and the ``transpose`` of an FC weight. Such operators stay in the model (their
statements exist), but ``queries.compulsory_traffic`` counts their outputs as the weights that
come from HBM, not the scalar constants they read.

isl budget: the model has its own ``isl.Context`` with ``max_operations`` set (default
2,000,000, ``extract(mod, max_operations=N)``, 0 = unbounded); the counter is reset before every
top-level isl call, so the bound is per call, not cumulative. Trivial constructions (boxes,
schedule maps) run unbounded. When the bound hits during extraction:
* an access relation -> the whole tensor (``exact=False``), diagnostic ``"isl-budget"``;
* a non-box domain -> its loop-bound box (instances counted on that box), diagnostic.
Extraction never fails because of the bound. Queries and dataflow raise
:class:`IslBudgetExceeded` (a :class:`PolyError`, itself a ``TvmPolyError``) so that the planner
falls back to a whole-tensor view and records why. Beware: isl reports a hit bound inside its
parser as a *syntax error* when the bound is tiny; with the default it never hits on the nine
light models.

Speed: a PrimFunc is walked once (a template) and instantiated for every call of it; box
domains and schedules are built with the isl API rather than parsed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import islpy as isl
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir.prim import expr as E
from tvm import s_tir

from tvm_poly.counting import card
from tvm_poly.polymodel import (
    Diagnostic, PolyAccess, PolyArray, PolyError, PolyModel, PolyOp, PolyStatement,
    UnsupportedModelError, isl_ident, schedule_map, unbounded,
)

DEFAULT_MAX_OPERATIONS = 2_000_000

_ISL_KEYWORDS = {"and", "or", "not", "mod", "floor", "ceil", "min", "max", "exists", "implies",
                 "xor", "infty", "NaN", "true", "false", "cst", "rat", "lexmin", "lexmax"}

_IF_THEN_ELSE = {"tirx.if_then_else", "prim.if_then_else", "tir.if_then_else"}
_CALL_TIR = {"relax.call_tir", "relax.call_tir_inplace", "relax.call_tir_with_grad"}


class NonAffine(Exception):
    """An expression that is not (quasi-)affine in the loop variables."""


# ------------------------------------------------------------------------------------------
# timing of the extraction steps (read by scripts/bench_poly_build.py)
# ------------------------------------------------------------------------------------------
@dataclass
class StepTimes:
    steps: dict = field(default_factory=dict)

    def add(self, name: str, dt: float):
        self.steps[name] = self.steps.get(name, 0.0) + dt


LAST_TIMES = StepTimes()


# ------------------------------------------------------------------------------------------
# PrimExpr -> isl text
# ------------------------------------------------------------------------------------------
def _int(e) -> int | None:
    if isinstance(e, E.IntImm):
        return int(e.value)
    if isinstance(e, int):
        return e
    return None


class _Conv:
    """Translate TIR index expressions and conditions over loop vars into isl text."""

    def __init__(self, env: dict, analyzer: tvm.sym.Analyzer):
        self.env = env  # tvm Var -> isl text (for loop vars: the dim name)
        self.an = analyzer

    def aff(self, e) -> str:
        v = _int(e)
        if v is not None:
            return str(v)
        if isinstance(e, tvm.ir.Var):
            if e in self.env:
                return self.env[e]
            raise NonAffine(f"free variable {e}")
        if isinstance(e, E.Add):
            return f"({self.aff(e.a)} + {self.aff(e.b)})"
        if isinstance(e, E.Sub):
            return f"({self.aff(e.a)} - {self.aff(e.b)})"
        if isinstance(e, E.Mul):
            ca, cb = _int(e.a), _int(e.b)
            if ca is not None:
                return f"({ca} * {self.aff(e.b)})"
            if cb is not None:
                return f"({cb} * {self.aff(e.a)})"
            raise NonAffine(f"product of variables {e}")
        if isinstance(e, (E.FloorDiv, E.Div)):
            c = _int(e.b)
            if c is None or c <= 0:
                raise NonAffine(f"division by non-constant {e}")
            if isinstance(e, E.Div) and not self.an.can_prove(e.a >= 0):
                raise NonAffine(f"truncating division of a possibly negative value {e}")
            return f"floor({self.aff(e.a)} / {c})"
        if isinstance(e, (E.FloorMod, E.Mod)):
            c = _int(e.b)
            if c is None or c <= 0:
                raise NonAffine(f"modulo by non-constant {e}")
            if isinstance(e, E.Mod) and not self.an.can_prove(e.a >= 0):
                raise NonAffine(f"truncating modulo of a possibly negative value {e}")
            return f"(({self.aff(e.a)}) mod {c})"
        if isinstance(e, E.Min):
            return f"min({self.aff(e.a)}, {self.aff(e.b)})"
        if isinstance(e, E.Max):
            return f"max({self.aff(e.a)}, {self.aff(e.b)})"
        if isinstance(e, E.Cast):
            if str(e.dtype).startswith(("int", "uint")):
                return self.aff(e.value)
            raise NonAffine(f"cast to {e.dtype}")
        raise NonAffine(f"{type(e).__name__} {e}")

    def cond(self, e) -> str:
        """A condition as isl constraint text ('true'/'false' allowed)."""
        if isinstance(e, E.IntImm):
            return "true" if int(e.value) else "false"
        if isinstance(e, E.And):
            return f"(({self.cond(e.a)}) and ({self.cond(e.b)}))"
        if isinstance(e, E.Or):
            return f"(({self.cond(e.a)}) or ({self.cond(e.b)}))"
        if isinstance(e, E.Not):
            return f"(not ({self.cond(e.a)}))"
        ops = {E.LT: "<", E.LE: "<=", E.GT: ">", E.GE: ">=", E.EQ: "="}
        for cls, sym in ops.items():
            if isinstance(e, cls):
                return f"({self.aff(e.a)} {sym} {self.aff(e.b)})"
        if isinstance(e, E.NE):
            a, b = self.aff(e.a), self.aff(e.b)
            return f"(({a} < {b}) or ({a} > {b}))"
        if isinstance(e, tvm.ir.Call) and e.op.name in ("tirx.likely", "prim.likely", "tir.likely"):
            return self.cond(e.args[0])
        raise NonAffine(f"condition {type(e).__name__} {e}")

    def index(self, e, block_vars) -> str:
        """An access index: simplified, matched linearly in the block vars if possible."""
        e = self.an.simplify(e)
        if block_vars:
            try:
                coeffs = [_int(c) for c in tvm.sym.detect_linear_equation(e, block_vars)]
            except Exception:  # pragma: no cover - TVM refuses some forms
                coeffs = []
            if len(coeffs) == len(block_vars) + 1 and None not in coeffs:
                terms = [f"{c} * {self.env[v]}" for c, v in zip(coeffs, block_vars) if c != 0]
                terms.append(str(coeffs[-1]))
                return "(" + " + ".join(terms) + ")"
        return self.aff(e)


# ------------------------------------------------------------------------------------------
# the extractor
# ------------------------------------------------------------------------------------------
# PrimFunc templates: one walk per PrimFunc, instantiated for every call
# ------------------------------------------------------------------------------------------
@dataclass
class _TAccess:
    buf: object  # the TIR buffer var (param or alloc)
    shape: tuple
    kind: str  # "read" | "write"
    idx: list  # isl text per dim, or None for a non-affine dim
    guard: str
    exact: bool
    text: str


@dataclass
class _TStmt:
    suffix: str  # "<block>" or "<block>.init"
    block: str
    role: str
    dims: list
    dim_kinds: list
    dom_cons: list  # isl constraint texts (used when box is None)
    box: list | None  # [(lo, extent)] per dim when the domain is a plain box
    betas: list
    phase: int
    accesses: list
    macs_per_instance: int = 0
    # TVM's own T.reads / T.writes regions: [(buf, kind, [(lo text, extent text)] | None)]
    regions: list = field(default_factory=list)
    # isl objects with placeholder tuple names, built on first use
    domain: object = None
    instances: int | None = None
    rels: list | None = None  # [(Map, exact, clipped)]


@dataclass
class _Template:
    fname: str
    allocs: list  # buffer vars
    stmts: list
    diags: list  # (kind, suffix or None, message)


class _FuncWalker:
    """Walk one PrimFunc once: loop nests, leaf blocks, accesses (independent of the call)."""

    def __init__(self, func: tirx.PrimFunc, fname: str):
        self.func = func
        self.fname = fname
        self.t = _Template(fname, [], [], [])
        self._shapes: dict = {}

    def walk(self) -> _Template:
        self._stmt(self.func.body, [], [], 0)
        return self.t

    def diag(self, kind, suffix, msg):
        self.t.diags.append((kind, suffix, msg))

    def shape(self, bvar) -> tuple:
        sh = self._shapes.get(bvar)
        if sh is None:
            sh = self._shapes[bvar] = tuple(_int(x) for x in bvar.shape)
        return sh

    def _stmt(self, s, loops, betas, pos) -> int:
        """loops: enclosing For nodes; betas: positions at enclosing levels. Returns next pos."""
        if isinstance(s, tirx.SeqStmt):
            for c in s.seq:
                pos = self._stmt(c, loops, betas, pos)
            return pos
        if isinstance(s, tirx.For):
            self._stmt(s.body, loops + [s], betas + [pos], 0)
            return pos + 1
        if isinstance(s, s_tir.SBlockRealize):
            blk = s.block
            for ab in blk.alloc_buffers:
                self.t.allocs.append(ab)
            if _contains_block(blk.body):
                if blk.iter_vars:
                    self.diag("nested-block", None,
                              f"{self.fname}: non-leaf block {blk.name_hint} with iter vars; its "
                              "children are modelled over the loops only")
                return self._stmt(blk.body, loops, betas, pos)
            self._leaf(s, loops, betas + [pos])
            return pos + 1
        if isinstance(s, tirx.AttrStmt):
            return self._stmt(s.body, loops, betas, pos)
        if isinstance(s, tirx.Evaluate):
            return pos
        body = getattr(s, "body", None)
        buf = getattr(s, "buffer", None)
        if buf is not None and type(s).__name__ in ("AllocBuffer", "DeclBuffer"):
            self.t.allocs.append(buf)
            return self._stmt(body, loops, betas, pos) if body is not None else pos
        self.diag("unsupported-stmt", None,
                  f"{self.fname}: {type(s).__name__} outside blocks ignored")
        return pos

    @staticmethod
    def _dim_names(loops):
        names, used = [], set()
        for f in loops:
            base = isl_ident(f.loop_var.name) or "d"
            n, k = base, 1
            while n in used or n in _ISL_KEYWORDS:
                n = f"{base}_{k}"
                k += 1
            used.add(n)
            names.append(n)
        return names

    def _leaf(self, realize, loops, betas):
        blk = realize.block
        sfx = blk.name_hint
        dims = self._dim_names(loops)
        an = tvm.sym.Analyzer()
        env = {}
        loop_cons = []
        box = []  # None once the domain is not a plain box
        loop_range = {}
        for f, d in zip(loops, dims):
            conv = _Conv(env, an)
            lo_i, ext_i = _int(an.simplify(f.min)), _int(an.simplify(f.extent))
            step = _int(f.step) if getattr(f, "step", None) is not None else 1
            try:
                lo = conv.aff(f.min)
                hi = f"{lo} + {ext_i}" if ext_i is not None else f"{lo} + {conv.aff(f.extent)}"
                c = f"{lo} <= {d} < {hi}"
                if step is None or step != 1:
                    if step is None:
                        raise NonAffine(f"non-constant step {f.step}")
                    c += f" and ({d} - {lo}) mod {step} = 0"
                loop_cons.append(c)
            except NonAffine as e:
                b = an.const_int_bound(f.loop_var)
                loop_cons.append(f"{b.min_value} <= {d} <= {b.max_value}")
                self.diag("non-affine-loop", sfx,
                          f"loop {f.loop_var.name}: {e}; bounded by its range")
                step = None
            if box is not None and lo_i is not None and ext_i is not None and step == 1:
                box.append((lo_i, ext_i))
                loop_range[f.loop_var] = (lo_i, ext_i)
            else:
                box = None
            an.bind(f.loop_var, tvm.ir.Range.from_min_extent(f.min, f.extent))
            env[f.loop_var] = d
        dom_cons = [" and ".join(loop_cons) if loop_cons else "true"]
        conv = _Conv(env, an)
        bvars = []
        kinds = {}
        reduce_min = {}  # dim index -> min (for the init domain of a box)
        for iv, raw_val in zip(blk.iter_vars, realize.iter_values):
            val = an.simplify(raw_val)
            try:
                txt = conv.aff(val)
                lo = conv.aff(iv.dom.min)
                ext = conv.aff(iv.dom.extent)
            except NonAffine as e:
                self.diag("non-affine-binding", sfx, f"block var {iv.var.name} = {val}: {e}")
                box = None
                continue
            env[iv.var] = f"({txt})"
            an.bind(iv.var, iv.dom)
            bvars.append(iv.var)
            same_range = False
            cval, dmin, dext = _int(val), _int(iv.dom.min), _int(iv.dom.extent)
            if cval is not None and dmin is not None and dext is not None:
                same_range = dmin <= cval < dmin + dext  # constant within its range
            if isinstance(raw_val, tvm.ir.Var):
                for k, (f, d) in enumerate(zip(loops, dims)):
                    if f.loop_var.same_as(raw_val):
                        is_red = int(iv.iter_type) == tirx.IterVar.CommReduce
                        kinds[d] = "R" if is_red else "S"
                        rng = loop_range.get(f.loop_var)
                        if rng is not None and rng == (dmin, dext):
                            same_range = True
                        if is_red and dmin is not None:
                            reduce_min[k] = dmin
            if not same_range:
                dom_cons.append(f"{lo} <= {txt} < {lo} + {ext}")
                box = None
        dim_kinds = [kinds.get(d, "?") for d in dims]
        pred = realize.predicate
        if not (isinstance(pred, E.IntImm) and int(pred.value) == 1):
            box = None
            try:
                dom_cons.append(conv.cond(an.simplify(pred)))
            except NonAffine as e:
                self.diag("non-affine-guard", sfx,
                          f"block predicate {pred}: {e}; ignored (over-approximated)")
        coll = _AccessCollector(self, conv, bvars, sfx)
        regions = []
        for kind, lst in (("read", blk.reads), ("write", blk.writes)):
            for tr in lst:
                try:
                    rng = [(conv.index(r.min, bvars), conv.aff(an.simplify(r.extent)))
                           for r in tr.region]
                except NonAffine:
                    rng = None
                regions.append((tr.source, kind, rng))
        if blk.init is not None:
            init_cons = list(dom_cons)
            init_box = list(box) if box is not None else None
            n_red = 0
            for iv in blk.iter_vars:
                if int(iv.iter_type) == tirx.IterVar.CommReduce and iv.var in env:
                    init_cons.append(f"{env[iv.var]} = {conv.aff(iv.dom.min)}")
                    n_red += 1
            if init_box is not None:
                if len(reduce_min) != n_red:
                    init_box = None
                else:
                    for k, m in reduce_min.items():
                        init_box[k] = (m, 1)
            self.t.stmts.append(_TStmt(sfx + ".init", blk.name_hint, "init", dims, dim_kinds,
                                       init_cons, init_box, betas, 0,
                                       coll.collect_stmt(blk.init, sfx + ".init"), 0,
                                       [r for r in regions if r[1] == "write"]))
            self.t.stmts.append(_TStmt(sfx, blk.name_hint, "update", dims, dim_kinds, dom_cons,
                                       box, betas, 1, coll.collect_stmt(blk.body, sfx),
                                       _macs_per_instance(blk.body), regions))
        else:
            self.t.stmts.append(_TStmt(sfx, blk.name_hint, "compute", dims, dim_kinds, dom_cons,
                                       box, betas, 0, coll.collect_stmt(blk.body, sfx),
                                       _macs_per_instance(blk.body), regions))


def _contains_block(s) -> bool:
    if s is None:
        return False
    if isinstance(s, s_tir.SBlockRealize):
        return True
    if isinstance(s, tirx.SeqStmt):
        return any(_contains_block(c) for c in s.seq)
    if isinstance(s, tirx.IfThenElse):
        return _contains_block(s.then_case) or _contains_block(s.else_case)
    body = getattr(s, "body", None)
    if body is not None and isinstance(s, tirx.Stmt if hasattr(tirx, "Stmt") else object):
        return _contains_block(body)
    return False


def _macs_per_instance(body) -> int:
    """1 when the block body is ``out[i] = out[i] + a * b`` (either operand order), else 0."""
    if not isinstance(body, tirx.BufferStore):
        return 0
    v = body.value
    if not isinstance(v, E.Add):
        return 0

    def is_self(x):
        return isinstance(x, tvm.ir.TensorLoad) and x.source.same_as(body.buffer) and \
            len(x.indices) == len(body.indices) and \
            all(tvm_ffi.structural_equal(a, b) for a, b in zip(x.indices, body.indices))

    def strip(x):
        while isinstance(x, E.Cast):
            x = x.value
        return x

    for acc, prod in ((v.a, v.b), (v.b, v.a)):
        if is_self(acc):
            prod = strip(prod)
            if isinstance(prod, E.Mul):
                a, b = strip(prod.a), strip(prod.b)
                if not isinstance(a, (E.IntImm, E.FloatImm)) and \
                        not isinstance(b, (E.IntImm, E.FloatImm)):
                    return 1
    return 0


class _AccessCollector:
    """Reads (TensorLoad) and writes (BufferStore) of a block body, with their guards."""

    def __init__(self, fw: _FuncWalker, conv: _Conv, bvars, sfx):
        self.fw = fw
        self.conv = conv
        self.bvars = bvars
        self.sfx = sfx

    def collect_stmt(self, s, sfx) -> list:
        self.sfx = sfx
        out = []
        self._s(s, "true", True, out)
        return out

    def _diag(self, kind, msg):
        self.fw.diag(kind, self.sfx, msg)

    def _cond(self, c, negate=False):
        try:
            t = self.conv.cond(self.conv.an.simplify(c))
            return (f"(not {t})" if negate else t), True
        except NonAffine as e:
            if not negate:
                self._diag("non-affine-guard",
                           f"guard {c}: {e}; both branches accessed (over-approximated)")
            return "true", False

    def _s(self, s, guard, exact, out):
        if isinstance(s, tirx.BufferStore):
            self._access(s.buffer, s.indices, "write", guard, exact, out, s)
            self._e(s.value, guard, exact, out)
            for i in s.indices:
                self._e(i, guard, exact, out)
        elif isinstance(s, tirx.SeqStmt):
            for c in s.seq:
                self._s(c, guard, exact, out)
        elif isinstance(s, tirx.IfThenElse):
            self._e(s.condition, guard, exact, out)
            c, ok = self._cond(s.condition)
            self._s(s.then_case, f"({guard}) and ({c})", exact and ok, out)
            if s.else_case is not None:
                nc, ok2 = self._cond(s.condition, negate=True)
                self._s(s.else_case, f"({guard}) and ({nc})", exact and ok2, out)
        elif isinstance(s, tirx.Evaluate):
            self._e(s.value, guard, exact, out)
        elif isinstance(s, tirx.AttrStmt):
            self._s(s.body, guard, exact, out)
        elif hasattr(s, "var") and hasattr(s, "value"):  # Bind / LetStmt
            self._e(s.value, guard, exact, out)
            try:
                self.conv.env[s.var] = f"({self.conv.aff(self.conv.an.simplify(s.value))})"
            except NonAffine:
                pass
            body = getattr(s, "body", None)
            if body is not None:
                self._s(body, guard, exact, out)
        else:
            self._diag("unsupported-stmt", f"{type(s).__name__} in block body ignored")

    def _e(self, e, guard, exact, out):
        if isinstance(e, tvm.ir.TensorLoad):
            self._access(e.source, e.indices, "read", guard, exact, out, e)
            for i in e.indices:
                self._e(i, guard, exact, out)
            return
        if isinstance(e, (E.IntImm, E.FloatImm, tvm.ir.Var)):
            return
        if isinstance(e, tvm.ir.Call):
            name = getattr(e.op, "name", "")
            if name in _IF_THEN_ELSE:
                c = e.args[0]
                self._e(c, guard, exact, out)
                ct, ok = self._cond(c)
                self._e(e.args[1], f"({guard}) and ({ct})", exact and ok, out)
                nt, ok2 = self._cond(c, negate=True)
                self._e(e.args[2], f"({guard}) and ({nt})", exact and ok2, out)
                return
            for a in e.args:
                self._e(a, guard, exact, out)
            return
        if isinstance(e, E.Let):
            self._e(e.value, guard, exact, out)
            try:
                self.conv.env[e.var] = f"({self.conv.aff(self.conv.an.simplify(e.value))})"
            except NonAffine:
                pass
            self._e(e.body, guard, exact, out)
            return
        for attr in ("a", "b", "value", "condition", "true_value", "false_value", "base",
                     "stride"):
            c = getattr(e, attr, None)
            if c is not None and not isinstance(c, (int, float, str)):
                self._e(c, guard, exact, out)
        for attr in ("vectors", "args"):
            cs = getattr(e, attr, None)
            if cs is not None:
                for c in cs:
                    self._e(c, guard, exact, out)

    def _access(self, bvar, indices, kind, guard, exact, out, node):
        idx = []
        ex = exact
        for i in indices:
            try:
                idx.append(self.conv.index(i, self.bvars))
            except NonAffine as e:
                idx.append(None)
                ex = False
                self._diag("non-affine-access",
                           f"{kind} {bvar.name}[...] index {i}: {e}; dimension over-approximated "
                           "by its full extent")
        text = f"{bvar.name}[{', '.join('?' if i is None else i for i in idx)}]"
        out.append(_TAccess(bvar, self.fw.shape(bvar), kind, idx, guard, ex, text[:200]))


# ------------------------------------------------------------------------------------------
# the extractor
# ------------------------------------------------------------------------------------------
@dataclass
class _Arr:
    name: str
    isl_id: str
    shape: tuple
    dtype: str
    kind: str
    producer: str | None = None
    is_output: bool = False


@dataclass
class _Inst:
    """One statement instance of a template (or an opaque statement)."""

    name: str
    op: str
    op_index: int
    func: str
    tmpl: _TStmt | None
    arrays: list  # array name per access (template order) or, for opaque, [(name, kind)]
    opaque_why: str = ""
    binding: dict = field(default_factory=dict)  # buffer var -> array name


def _is_buffer(p) -> bool:
    return type(getattr(p, "ty", None)).__name__ == "BufferType"


class _Extractor:
    def __init__(self, mod: tvm.IRModule, max_operations: int):
        self.mod = mod
        self.ctx = isl.Context()
        self.max_ops = max_operations
        self.ctx.set_max_operations(max_operations)
        self.arrays: dict[str, _Arr] = {}
        self.isl_ids: set[str] = set()
        self.ops: list[PolyOp] = []
        self.insts: list[_Inst] = []
        self.diags: list[Diagnostic] = []
        self.const_names: dict = {}  # constant object -> name
        self.alias: dict = {}
        self.tgi: dict = {}  # (tuple var, index) -> var
        self.tuples: dict = {}  # var -> Tuple expr
        self.var_array: dict = {}  # relax var -> array name
        self.templates: dict[str, _Template] = {}
        self._boxes: dict = {}  # shape -> placeholder box set "A[...]"
        self.times = StepTimes()

    # ---- naming ------------------------------------------------------------------------
    def _unique_id(self, name: str) -> str:
        base = isl_ident(name)
        ident, k = base, 1
        while ident in self.isl_ids or ident in _ISL_KEYWORDS:
            ident = f"{base}_{k}"
            k += 1
        self.isl_ids.add(ident)
        return ident

    def _new_array(self, name, shape, dtype, kind, producer=None) -> str:
        if name in self.arrays:
            base, k = name, 1
            while f"{base}#{k}" in self.arrays:
                k += 1
            name = f"{base}#{k}"
        self.arrays[name] = _Arr(name, self._unique_id(name), tuple(shape), str(dtype), kind,
                                 producer)
        return name

    @staticmethod
    def _static_shape(ty, what) -> tuple:
        shape = getattr(ty, "shape", None)
        if shape is None:
            raise UnsupportedModelError(f"{what}: tensor without a known shape ({ty})")
        vals = shape.values if hasattr(shape, "values") else shape
        out = []
        for v in vals:
            iv = _int(v)
            if iv is None:
                raise UnsupportedModelError(f"{what}: symbolic shape {ty} (fix the batch first)")
            out.append(iv)
        return tuple(out)

    def _resolve(self, v):
        while isinstance(v, tvm.ir.Var) and v in self.alias:
            v = self.alias[v]
        return v

    def _array_of(self, expr) -> str | None:
        """Array name for a Relax argument (var, param, constant)."""
        expr = self._resolve(expr)
        if isinstance(expr, tvm.ir.GenericConst):
            n = self.const_names.get(expr)  # keyed by the object (same_as)
            if n is None:
                n = self._new_array(f"const_{len(self.const_names)}",
                                    self._static_shape(expr.ty, "constant"), expr.ty.dtype,
                                    "const")
                self.const_names[expr] = n
            return n
        if isinstance(expr, tvm.ir.Var):
            if expr in self.var_array:
                return self.var_array[expr]
            if isinstance(expr.ty, relax.TensorType):
                n = self._new_array(expr.name, self._static_shape(expr.ty, expr.name),
                                    expr.ty.dtype, "activation")
                self.var_array[expr] = n
                return n
        return None

    # ---- main walk ---------------------------------------------------------------------
    def run(self) -> PolyModel:
        mod = self.mod
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            raise UnsupportedModelError("module has no 'main' function")
        main = mod["main"]
        if not isinstance(main, relax.Function):
            raise UnsupportedModelError("'main' is not a Relax function")
        inputs = []
        for p in main.params:
            if not isinstance(p.ty, relax.TensorType):
                raise UnsupportedModelError(f"parameter {p.name} is not a tensor ({p.ty})")
            n = self._new_array(p.name, self._static_shape(p.ty, p.name), p.ty.dtype, "input")
            self.var_array[p] = n
            inputs.append(n)
        bindings = [b for blk in main.body.blocks for b in blk.bindings]
        for b in bindings:
            v = b.value
            if isinstance(v, tvm.ir.TupleGetItem):
                key = (self._resolve(v.tuple_value), int(v.index))
                self.tgi.setdefault(key, b.var)
            elif isinstance(v, tvm.ir.Var):
                self.alias[b.var] = v
            elif isinstance(v, tvm.ir.Tuple):
                self.tuples[b.var] = v
        op_index = 0
        for b in bindings:
            v = b.value
            if isinstance(v, tvm.ir.Call):
                opname = getattr(v.op, "name", "")
                if opname in _CALL_TIR:
                    self._call_tir(b, v, op_index)
                else:
                    self._opaque(b, v, op_index, opname or str(v.op))
                op_index += 1
            elif isinstance(v, tvm.ir.TupleGetItem):
                tv = self._resolve(v.tuple_value)
                src = self.tuples.get(tv)
                if src is not None:  # unpacking a literal tuple: alias of the field
                    f = src.fields[int(v.index)]
                    n = self._array_of(f)
                    if n is not None:
                        self.var_array[b.var] = n
            elif isinstance(v, (tvm.ir.Var, tvm.ir.Tuple)):
                pass
            elif isinstance(v, tvm.ir.GenericConst):
                self.var_array[b.var] = self._array_of(v)
            else:
                self.diags.append(Diagnostic("unsupported-binding", b.var.name, None,
                                             f"{type(v).__name__} binding ignored"))
        outputs = self._outputs(main.body.body)
        for n in outputs:
            self.arrays[n].is_output = True
        return self._build(inputs, outputs)

    def _outputs(self, body) -> list[str]:
        body = self._resolve(body)
        if isinstance(body, tvm.ir.Tuple):
            out = []
            for f in body.fields:
                out += self._outputs(f)
            return out
        if isinstance(body, tvm.ir.Var) and body in self.tuples:
            return self._outputs(self.tuples[body])
        n = self._array_of(body)
        return [] if n is None else [n]

    def _out_arrays(self, b, tys, kind) -> list[str]:
        op = b.var.name
        names = []
        single = len(tys) == 1 and not isinstance(b.var.ty, tvm.ir.TupleType)
        for i, t in enumerate(tys):
            if single:
                name = op
            else:
                gvar = self.tgi.get((b.var, i))
                name = gvar.name if gvar is not None else f"{op}[{i}]"
            if not isinstance(t, relax.TensorType):
                names.append(None)
                continue
            n = self._new_array(name, self._static_shape(t, name), t.dtype, kind, producer=op)
            if single:
                self.var_array[b.var] = n
            elif (b.var, i) in self.tgi:
                self.var_array[self.tgi[(b.var, i)]] = n
            names.append(n)
        return names

    def _call_tir(self, b, call, op_index):
        gv = call.args[0]
        op = b.var.name
        args = call.args[1]
        if isinstance(args, tvm.ir.Var):
            args = self.tuples.get(self._resolve(args), args)
        fields = list(args.fields) if isinstance(args, tvm.ir.Tuple) else [args]
        in_names = []
        for a in fields:
            n = self._array_of(a)
            if n is None:
                self.diags.append(Diagnostic("unsupported-argument", op, None,
                                             f"argument {a} of {gv.name_hint} is not a tensor"))
            in_names.append(n)
        tensor_ins = [n for n in in_names if n is not None]
        folded = bool(tensor_ins) and all(self.arrays[n].kind in ("const", "weight")
                                          for n in tensor_ins)
        out_ty = call.ty_args[0] if call.ty_args else b.var.ty
        tys = list(out_ty.fields) if isinstance(out_ty, tvm.ir.TupleType) else [out_ty]
        out_names = self._out_arrays(b, tys, "weight" if folded else "activation")
        func = self.mod[gv]
        fname = gv.name_hint
        if not isinstance(func, tirx.PrimFunc):
            self._opaque_stmt(op, op_index, fname, tensor_ins,
                              [n for n in out_names if n], f"call_tir of non-PrimFunc {fname}")
            self.ops.append(PolyOp(op, op_index, fname, tuple(tensor_ins),
                                   tuple(n for n in out_names if n), (f"{op}.opaque",), folded))
            return
        t0 = time.perf_counter()
        tmpl = self.templates.get(fname)
        if tmpl is None:
            tmpl = self.templates[fname] = _FuncWalker(func, fname).walk()
        self.times.add("tir walk", time.perf_counter() - t0)
        buf_params = [p for p in func.params if _is_buffer(p)]
        expected = len(fields) + len(out_names)
        if len(buf_params) != expected:
            self.diags.append(Diagnostic("signature-mismatch", op, None,
                                         f"{fname} has {len(buf_params)} buffer params, the "
                                         f"call passes {expected}"))
        binding = {}
        for p, n in zip(buf_params, in_names + out_names):
            if n is not None:
                binding[p] = n
        for ab in tmpl.allocs:
            binding[ab] = self._new_array(f"{op}.{ab.name}", tuple(_int(x) for x in ab.shape),
                                          ab.dtype, "internal", producer=op)
        for kind, sfx, msg in tmpl.diags:
            self.diags.append(Diagnostic(kind, op, f"{op}.{sfx}" if sfx else None, msg))
        names = []
        for ts in tmpl.stmts:
            arrs = []
            for a in ts.accesses:
                n = binding.get(a.buf)
                if n is None:
                    n = binding[a.buf] = self._new_array(
                        f"{op}.{a.buf.name}", a.shape, a.buf.dtype,
                        "internal", producer=op)
                    self.diags.append(Diagnostic("unbound-buffer", op, f"{op}.{ts.suffix}",
                                                 f"buffer {a.buf.name} not bound by the call"))
                arrs.append(n)
            name = f"{op}.{ts.suffix}"
            self.insts.append(_Inst(name, op, op_index, fname, ts, arrs, "", binding))
            names.append(name)
        self.ops.append(PolyOp(op, op_index, fname, tuple(tensor_ins),
                               tuple(n for n in out_names if n), tuple(names), folded))

    def _opaque(self, b, call, op_index, opname):
        op = b.var.name
        ins = []
        for a in call.args:
            for f in (a.fields if isinstance(a, tvm.ir.Tuple) else [a]):
                if isinstance(f, (tvm.ir.Var, tvm.ir.GenericConst)):
                    n = self._array_of(f)
                    if n:
                        ins.append(n)
        ty = b.var.ty
        tys = list(ty.fields) if isinstance(ty, tvm.ir.TupleType) else [ty]
        try:
            outs = [n for n in self._out_arrays(b, tys, "activation") if n]
        except UnsupportedModelError as e:
            outs = []
            self.diags.append(Diagnostic("opaque-op", op, None, f"{opname}: {e}"))
        self._opaque_stmt(op, op_index, opname, ins, outs,
                          f"opaque call {opname}: reads its inputs and writes its outputs wholly")
        self.ops.append(PolyOp(op, op_index, f"opaque {opname}", tuple(ins), tuple(outs),
                               (f"{op}.opaque",)))

    def _opaque_stmt(self, op, op_index, func, ins, outs, why):
        name = f"{op}.opaque"
        arrs = [(n, "read") for n in ins] + [(n, "write") for n in outs]
        self.insts.append(_Inst(name, op, op_index, func, None, arrs, why))
        self.diags.append(Diagnostic("opaque-op", op, name, why))

    # ---- isl construction ----------------------------------------------------------------
    def _build(self, inputs, outputs) -> PolyModel:
        t0 = time.perf_counter()
        ctx = self.ctx
        arrays = {}
        with unbounded(ctx):
            for a in self.arrays.values():
                box = _box_set(ctx, a.isl_id, [f"i{k}" for k in range(len(a.shape))],
                               [(0, s) for s in a.shape])
                arrays[a.name] = PolyArray(a.name, a.isl_id, a.shape, a.dtype, a.kind, box,
                                           a.is_output, a.producer)
        depth = max((len(i.tmpl.dims) for i in self.insts if i.tmpl), default=0)
        time_dims = 2 * depth + 3  # [op, b0, l0, ..., b_depth, phase]
        stmts = [self._build_stmt(inst, arrays, depth) for inst in self.insts]
        ctx.reset_operations()
        self.times.add("isl build", time.perf_counter() - t0)
        return PolyModel(arrays=arrays, ops=tuple(self.ops), statements=tuple(stmts),
                         inputs=tuple(inputs), outputs=tuple(outputs),
                         diagnostics=tuple(self.diags), ctx=ctx, time_dims=time_dims,
                         max_operations=self.max_ops)

    def _isl_fail(self, op, stmt, what, e):
        kind = "isl-budget" if "maximal number of operations" in str(e) else "isl-error"
        self.diags.append(Diagnostic(kind, op, stmt, f"{what}: {e}; over-approximated"))

    def _template_isl(self, inst: _Inst):
        """Domain, count and access relations of a template statement, with placeholder
        tuple names "S" (statement) and "A" (array); built once per PrimFunc statement.

        Set math runs under the max_operations bound; when it is hit the domain falls back to
        its loop-bound box and an access to the whole tensor, with an "isl-budget" diagnostic.
        Trivial constructions (boxes) run unbounded."""
        ts = inst.tmpl
        if ts.rels is not None:
            return
        ctx = self.ctx
        space = f"S[{', '.join(ts.dims)}]"
        if ts.box is not None:
            with unbounded(ctx):
                domain = _box_set(ctx, "S", ts.dims, ts.box)
            n = 1
            for _, e in ts.box:
                n *= e
        else:
            cons = " and ".join(f"({c})" for c in ts.dom_cons) or "true"
            try:
                ctx.reset_operations()
                domain = isl.Set(f"{{ {space} : {cons} }}", context=ctx).coalesce()
                ctx.reset_operations()
                n = card(domain)
            except (isl.Error, PolyError) as e:
                self._isl_fail(inst.op, inst.name, "domain", e)
                with unbounded(ctx):
                    domain = isl.Set(f"{{ {space} : {ts.dom_cons[0]} }}", context=ctx)
                    n = card(domain)
        ts.domain, ts.instances = domain, n
        rels = []
        for a in ts.accesses:
            shape = a.shape
            out_dims, extra = [], []
            for k, e in enumerate(a.idx):
                if e is None:
                    out_dims.append(f"o{k}")
                    extra.append(f"0 <= o{k} < {shape[k]}")
                else:
                    out_dims.append(e)
            cons = " and ".join([f"({a.guard})"] + [f"({x})" for x in extra])
            exact, clipped = a.exact, False
            box = self._boxes.get(shape)
            if box is None:
                with unbounded(ctx):
                    box = self._boxes[shape] = _box_set(
                        ctx, "A", [f"i{k}" for k in range(len(shape))], [(0, s) for s in shape])
            try:
                ctx.reset_operations()
                rel = isl.Map(f"{{ {space} -> A[{', '.join(out_dims)}] : {cons} }}",
                              context=ctx).intersect_domain(domain).coalesce()
                inside = rel.intersect_range(box)
                if not inside.is_equal(rel):
                    rel, clipped = inside, True
            except isl.Error as e:
                self._isl_fail(inst.op, inst.name, f"access {a.text}", e)
                with unbounded(ctx):
                    rel = isl.Map.from_domain_and_range(domain, box)
                exact = False
            rels.append((rel, exact, clipped))
        ts.rels = rels

    def _build_stmt(self, inst: _Inst, arrays, depth) -> PolyStatement:
        if inst.tmpl is not None:
            self._template_isl(inst)
        with unbounded(self.ctx):
            return self._build_stmt_unbounded(inst, arrays, depth)

    def _build_stmt_unbounded(self, inst: _Inst, arrays, depth) -> PolyStatement:
        ctx = self.ctx
        sid = self._unique_id("S_" + inst.name)
        ts = inst.tmpl
        if ts is None:  # opaque: 0-d domain, whole-tensor accesses
            domain = isl.Set.universe(isl.Space.set_alloc(ctx, 0, 0).set_tuple_name(
                isl.dim_type.set, sid))
            reads, writes = [], []
            for n, kind in inst.arrays:
                rel = isl.Map.from_domain_and_range(domain, arrays[n].box)
                (reads if kind == "read" else writes).append(PolyAccess(n, kind, rel, False, n))
            tv = [inst.op_index] + [0] * (2 * depth + 2)
            return PolyStatement(inst.name, sid, inst.op, inst.op_index, inst.func, "opaque",
                                 "opaque", (), (), domain, tuple(reads), tuple(writes),
                                 tuple(tv), 1, 0, False)
        domain = ts.domain.set_tuple_name(sid)
        reads, writes = [], []
        exact_all = True
        for a, (rel, exact, clipped), n in zip(ts.accesses, ts.rels, inst.arrays):
            arr = arrays[n]
            if a.shape != arr.shape:
                # the PrimFunc buffer disagrees with the Relax tensor: stay safe
                self.diags.append(Diagnostic("shape-mismatch", inst.op, inst.name,
                                             f"buffer {a.buf.name} vs {arr.name}{list(arr.shape)}"))
                rel = isl.Map.from_domain_and_range(ts.domain, arr.box.set_tuple_name("A"))
                exact = False
            if clipped:
                self.diags.append(Diagnostic(
                    "out-of-bounds", inst.op, inst.name,
                    f"{a.kind} {a.text} leaves {arr.name}{list(arr.shape)}; clipped"))
            m = rel.set_tuple_name(isl.dim_type.in_, sid).set_tuple_name(isl.dim_type.out,
                                                                         arr.isl_id)
            exact_all &= exact
            (reads if a.kind == "read" else writes).append(PolyAccess(n, a.kind, m, exact, a.text))
        # schedule [op, b0, l0, ..., b_depth, phase]
        betas = list(ts.betas) + [0] * (depth + 1 - len(ts.betas))
        tv = [inst.op_index]
        for k in range(depth):
            tv += [betas[k], ts.dims[k] if k < len(ts.dims) else 0]
        tv += [betas[depth], ts.phase]
        regions = []
        for buf, kind, rng in ts.regions:
            n = inst.binding.get(buf)
            if n is None:
                continue
            if rng is None:
                regions.append((n, kind, None))
                continue
            outs = [f"o{k}" for k in range(len(rng))]
            cons = " and ".join(f"{lo} <= o{k} < {lo} + {ext}" for k, (lo, ext) in enumerate(rng))
            regions.append((n, kind, f"{{ {sid}[{', '.join(ts.dims)}] -> "
                                     f"{arrays[n].isl_id}[{', '.join(outs)}] : {cons or 'true'} }}"))
        return PolyStatement(inst.name, sid, inst.op, inst.op_index, inst.func, ts.block, ts.role,
                             tuple(ts.dims), tuple(ts.dim_kinds), domain, tuple(reads),
                             tuple(writes), tuple(tv), ts.instances,
                             ts.macs_per_instance, exact_all, tuple(regions))


def _box_set(ctx, name, dims, box) -> isl.Set:
    sp = isl.Space.create_from_names(ctx, set=list(dims)) if dims else \
        isl.Space.set_alloc(ctx, 0, 0)
    s = isl.Set.universe(sp.set_tuple_name(isl.dim_type.set, name))
    for i, (lo, ext) in enumerate(box):
        s = s.lower_bound_val(isl.dim_type.set, i, isl.Val.int_from_si(ctx, lo))
        s = s.upper_bound_val(isl.dim_type.set, i, isl.Val.int_from_si(ctx, lo + ext - 1))
    return s



# ------------------------------------------------------------------------------------------
def check_tvm_regions(model: PolyModel) -> list[str]:
    """Cross-check the model against TVM's own block regions (``T.reads`` / ``T.writes``,
    TVM's over-approximation): every exact access relation must lie inside the region TVM
    declares for the same buffer, instance by instance. Returns the violations (empty = ok)."""
    bad = []
    for st in model.statements:
        if not st.tvm_regions:
            continue
        for acc in st.reads + st.writes:
            if not acc.exact:
                continue
            regs = [t for n, k, t in st.tvm_regions if n == acc.array and k == acc.kind]
            if not regs and acc.kind == "read" and st.role == "update":
                # TVM leaves a reduction's accumulator read out of T.reads (it is the write)
                regs = [t for n, k, t in st.tvm_regions if n == acc.array and k == "write"]
            if not regs or any(t is None for t in regs):
                if not regs:
                    bad.append(f"{st.name}: {acc.kind} {acc.text} not declared by TVM")
                continue

            def inside(regs=regs, acc=acc, st=st):
                u = isl.UnionMap.empty(isl.Space.params_alloc(model.ctx, 0))
                for t in regs:
                    u = u.union(isl.UnionMap(t, context=model.ctx))
                u = u.intersect_domain(isl.UnionSet.from_set(st.domain))
                return isl.UnionMap.from_map(acc.relation).is_subset(u)
            if not model.guard(f"region check of {st.name}", inside):
                bad.append(f"{st.name}: {acc.kind} {acc.text} outside TVM's region")
    return bad


def _needs_legalize(mod: tvm.IRModule) -> bool:
    main = mod["main"]
    keep = _CALL_TIR | {"relax.call_dps_packed", "relax.call_pure_packed", "relax.call_packed"}
    for blk in main.body.blocks:
        for b in blk.bindings:
            v = b.value
            if isinstance(v, tvm.ir.Call):
                name = getattr(v.op, "name", "")
                if name.startswith("relax.") and name not in keep:
                    return True
    return False


def legalize(mod: tvm.IRModule) -> tvm.IRModule:
    """Run ``relax.transform.LegalizeOps`` when main still has high-level Relax operators."""
    if _needs_legalize(mod):
        mod = relax.transform.LegalizeOps()(mod)
    return mod


def extract(mod: tvm.IRModule, max_operations: int = DEFAULT_MAX_OPERATIONS) -> PolyModel:
    """The polyhedral model of ``mod``'s ``main`` (a Relax module, legalized here if needed).

    ``max_operations`` bounds every isl call (0 = unbounded); see the module docstring.
    """
    t0 = time.perf_counter()
    mod = legalize(mod)
    t1 = time.perf_counter()
    ex = _Extractor(mod, max_operations)
    ex.times.add("legalize", t1 - t0)
    t2 = time.perf_counter()
    model = ex.run()
    rest = time.perf_counter() - t2 - sum(ex.times.steps.get(k, 0.0)
                                          for k in ("isl build", "tir walk"))
    ex.times.add("relax walk", rest)
    LAST_TIMES.steps = dict(ex.times.steps)
    return model
