"""The questions the planner asks the polyhedral model, answered exactly with isl.

Every function takes the :class:`PolyModel` and isl sets of statement instances ("iterations",
"tiles"): an ``isl.Set`` of one statement, an ``isl.UnionSet`` over several, a list of those, or a
statement name (its whole domain). Build tiles with ``model.iterations(stmt, "yy < 4 and ...")``.

* :func:`footprint` — elements of a tensor accessed by the iterations, count and bytes;
* :func:`reuse` — the part of a tile's footprint that earlier tiles already accessed;
* :func:`needs` — the producer instances that write what the tile reads (e.g. a conv's halo);
* :func:`last_use` — first write / last read of a tensor region (see :mod:`tvm_poly.dataflow`);
* :func:`compulsory_traffic` — model inputs + weights + outputs once, in bytes.

Counts are exact (:func:`tvm_poly.counting.card`). Access maps are cached on the model, so
repeated queries only pay for the ``apply`` and the count. Each call runs under the model's isl
``max_operations`` bound and raises :class:`IslBudgetExceeded` when it is hit: the planner then
falls back to the whole tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

import islpy as isl

from tvm_poly.counting import card, set_list
from tvm_poly.dataflow import Live, liveness
from tvm_poly.polymodel import IslBudgetExceeded, PolyError, PolyModel, dtype_bytes  # noqa: F401

Iterations = Union[isl.Set, isl.BasicSet, isl.UnionSet, str, Iterable]


@dataclass(frozen=True, eq=False)
class Footprint:
    tensor: str
    elements: isl.Set  # in the tensor's space
    count: int
    bytes: int

    def __repr__(self) -> str:
        return f"Footprint({self.tensor}: {self.count} elements, {self.bytes} B)"


@dataclass(frozen=True, eq=False)
class Reuse:
    tensor: str
    needed: Footprint  # the tile's footprint
    reused: Footprint  # already accessed by the earlier tiles
    new: Footprint  # needed - reused: what must be brought in

    def __repr__(self) -> str:
        return (f"Reuse({self.tensor}: needed {self.needed.count}, reused {self.reused.count}, "
                f"new {self.new.count} elements)")


@dataclass(frozen=True)
class Traffic:
    """Compulsory HBM traffic: every model input, weight and output moved once."""

    inputs: int  # bytes
    weights: int
    outputs: int
    elem_bytes: int | None  # None: each tensor at its own dtype
    detail: tuple  # ((array name, role, bytes), ...)

    @property
    def total(self) -> int:
        return self.inputs + self.weights + self.outputs


def _guard(model: PolyModel, what: str, fn):
    return model.guard(what, fn)


def as_union_set(model: PolyModel, iterations: Iterations) -> isl.UnionSet:
    """Normalise the accepted forms of an iteration set into one isl.UnionSet."""
    if isinstance(iterations, isl.UnionSet):
        return iterations
    if isinstance(iterations, isl.BasicSet):
        return isl.UnionSet.from_set(isl.Set.from_basic_set(iterations))
    if isinstance(iterations, isl.Set):
        return isl.UnionSet.from_set(iterations)
    if isinstance(iterations, str):
        return isl.UnionSet.from_set(model.statement(iterations).domain)
    u = isl.UnionSet.empty(isl.Space.params_alloc(model.ctx, 0))
    for x in iterations:
        u = u.union(as_union_set(model, x))
    return u


def tile(model: PolyModel, statement: str, **ranges) -> isl.Set:
    """Instances of ``statement`` with some dims restricted to half-open ranges or fixed,
    e.g. ``tile(m, "lv16.conv2d_nchw", ff=5, yy=(8, 16), xx=(0, 8))``."""
    st = model.statement(statement)
    cons = []
    for d, r in ranges.items():
        if d not in st.dims:
            raise PolyError(f"{statement} has no dimension {d!r} (dims: {', '.join(st.dims)})")
        if isinstance(r, tuple):
            cons.append(f"{int(r[0])} <= {d} < {int(r[1])}")
        else:
            cons.append(f"{d} = {int(r)}")
    return model.iterations(statement, " and ".join(cons))


def _image(model: PolyModel, its: isl.UnionSet, access: str, tensor: str | None) -> dict:
    """{tensor: isl.Set of elements} accessed by the instances ``its``; applies only the
    access relations of the statements present in ``its`` (no whole-model union map)."""
    out: dict[str, isl.Set] = {}
    for s in set_list(its):
        st = model.statement(model.name_of(s.get_tuple_name()))
        accs = ()
        if access in ("read", "all"):
            accs += st.reads
        if access in ("write", "all"):
            accs += st.writes
        for a in accs:
            if tensor is not None and a.array != tensor:
                continue
            e = s.apply(a.relation)
            out[a.array] = e if a.array not in out else out[a.array].union(e)
    return out


def _elements(model: PolyModel, its: isl.UnionSet, access: str, tensor: str) -> isl.Set:
    e = _image(model, its, access, tensor).get(tensor)
    if e is None:
        return isl.Set.empty(model.array(tensor).box.get_space())
    return e.coalesce()


def _fp(model: PolyModel, tensor: str, elems: isl.Set, elem_bytes: int | None) -> Footprint:
    n = card(elems)
    eb = model.array(tensor).elem_bytes if elem_bytes is None else elem_bytes
    return Footprint(tensor, elems, n, n * eb)


def footprint(model: PolyModel, iterations: Iterations, tensor: str, access: str = "read",
              elem_bytes: int | None = None) -> Footprint:
    """The elements of ``tensor`` that ``iterations`` access (``access`` = "read", "write" or
    "all"), with their exact count and bytes (at the tensor's dtype unless ``elem_bytes``)."""
    def compute():
        its = as_union_set(model, iterations)
        return _fp(model, tensor, _elements(model, its, access, tensor), elem_bytes)
    return _guard(model, f"footprint on {tensor}", compute)


def footprints(model: PolyModel, iterations: Iterations, access: str = "read") -> dict:
    """Footprint of ``iterations`` on every tensor it accesses: {tensor: Footprint}."""
    def compute():
        its = as_union_set(model, iterations)
        return {name: _fp(model, name, e.coalesce(), None)
                for name, e in _image(model, its, access, None).items()}
    return _guard(model, "footprints", compute)


def reuse(model: PolyModel, tile: Iterations, earlier: Iterations, tensor: str,
          access: str = "read", elem_bytes: int | None = None) -> Reuse:
    """How much of ``tile``'s footprint on ``tensor`` the ``earlier`` tiles already accessed."""
    def compute():
        need = _elements(model, as_union_set(model, tile), access, tensor)
        before = _elements(model, as_union_set(model, earlier), access, tensor)
        got = need.intersect(before).coalesce()
        new = need.subtract(before).coalesce()
        return Reuse(tensor, _fp(model, tensor, need, elem_bytes),
                     _fp(model, tensor, got, elem_bytes), _fp(model, tensor, new, elem_bytes))
    return _guard(model, f"reuse on {tensor}", compute)


def needs(model: PolyModel, tile: Iterations, tensor: str | None = None) -> isl.UnionSet:
    """Producer instances that write the elements ``tile`` reads.

    With ``tensor`` given, only that tensor's producers; otherwise every tensor the tile reads
    except those the tile's own statements write (a reduction's accumulator). All writers of
    an element are returned (init and every reduction step), i.e. everything that must run
    before the tile can — e.g. for a 3x3 conv tile, the pad statement instances of its halo."""
    def compute():
        its = as_union_set(model, tile)
        if tensor is not None:
            tensors = [tensor]
        else:
            own = set()
            for s in set_list(its):
                st = model.statement(model.name_of(s.get_tuple_name()))
                own |= {a.array for a in st.writes}
            reads = set()
            for s in set_list(its):
                st = model.statement(model.name_of(s.get_tuple_name()))
                reads |= {a.array for a in st.reads}
            tensors = sorted(reads - own)
        out = isl.UnionSet.empty(isl.Space.params_alloc(model.ctx, 0))
        read = _image(model, its, "read", tensor)
        for t in tensors:
            elems = read.get(t)
            if elems is None or elems.is_empty():
                continue
            out = out.union(isl.UnionSet.from_set(elems).apply(
                model.accesses("write", t).reverse()))
        return out.coalesce()
    return _guard(model, "needs", compute)


def needs_by_statement(model: PolyModel, tile: Iterations, tensor: str | None = None) -> dict:
    """:func:`needs` split per producer statement: {statement name: isl.Set}."""
    u = needs(model, tile, tensor)
    return {model.name_of(s.get_tuple_name()): s for s in set_list(u)}


def last_use(model: PolyModel, tensor: str, region: isl.Set | None = None) -> Live:
    """First write and last read of ``tensor`` (or of the elements in ``region``)."""
    return liveness(model, tensor, region)


def weights(model: PolyModel) -> list[str]:
    """Arrays that come from HBM as weights: constants and const-folded operator outputs that
    an operator which is not itself const-folded reads."""
    folded = {o.name for o in model.ops if o.const_folded}
    used = set()
    for s in model.statements:
        if s.op in folded:
            continue
        for a in s.reads:
            used.add(a.array)
    return [n for n, a in model.arrays.items() if a.kind in ("const", "weight") and n in used]


def compulsory_traffic(model: PolyModel, dtype: str | None = None) -> Traffic:
    """Bytes of every model input, weight (see :func:`weights`) and output moved once.
    ``dtype`` (e.g. "bfloat16") sets the element size of every tensor; default: their own."""
    eb = None if dtype is None else dtype_bytes(dtype)
    detail = []

    def nb(name):
        a = model.array(name)
        return a.size * (a.elem_bytes if eb is None else eb)
    ins = sum(nb(n) for n in model.inputs)
    detail += [(n, "input", nb(n)) for n in model.inputs]
    ws = weights(model)
    wb = sum(nb(n) for n in ws)
    detail += [(n, "weight", nb(n)) for n in ws]
    outs = sum(nb(n) for n in model.outputs)
    detail += [(n, "output", nb(n)) for n in model.outputs]
    return Traffic(ins, wb, outs, eb, tuple(detail))
