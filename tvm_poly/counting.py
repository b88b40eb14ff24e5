"""Exact point counts of isl sets.

With ``islpy-barvinok`` (pinned in pyproject.toml; it ships the same ``islpy`` module plus
barvinok) every parameter-free set is counted exactly with ``card()``. Without barvinok only
sets that are a union of disjoint boxes are counted (exact products); anything else raises
:class:`CountingError` instead of guessing. Parametric sets always raise (the model has no
parameters: shapes are static).
"""

from __future__ import annotations

import islpy as isl

from tvm_poly.polymodel import CountingError, IslBudgetExceeded

HAVE_BARVINOK = hasattr(isl.Set, "card")


def _check_budget(e: Exception):
    if "maximal number of operations" in str(e):
        raise IslBudgetExceeded(f"isl max_operations hit while counting: {e}") from e
    raise CountingError(f"isl failed while counting: {e}") from e


def _card_barvinok(s: isl.Set) -> int:
    if s.dim(isl.dim_type.param):
        raise CountingError(f"cannot count a parametric set exactly: {s}")
    try:
        c = s.card()
    except isl.Error as e:
        _check_budget(e)
    return _eval_const(c)


def set_list(u: isl.UnionSet) -> list[isl.Set]:
    """The sets of a union set, one per space."""
    lst = u.get_set_list()
    return [lst.get_at(i) for i in range(lst.n_set())]


def map_list(u: isl.UnionMap) -> list[isl.Map]:
    """The maps of a union map, one per pair of spaces."""
    lst = u.get_map_list()
    return [lst.get_at(i) for i in range(lst.n_map())]


def _eval_const(pw: isl.PwQPolynomial) -> int:
    sp = pw.get_domain_space()
    v = pw.eval(isl.Point.zero(sp))
    if not v.is_int():
        raise CountingError(f"non-integer count {v}")
    return int(v.to_python())


def _const_of(pa: isl.PwAff) -> int | None:
    pieces = pa.get_pieces()
    if len(pieces) != 1:
        return None
    aff = pieces[0][1]
    if not aff.is_cst():
        return None
    v = aff.get_constant_val()
    return int(v.to_python()) if v.is_int() else None


def _box_count(bs: isl.BasicSet) -> int:
    """Exact count of a basic set if it equals its bounding box (an exact product), else raise."""
    s = isl.Set.from_basic_set(bs)
    if s.is_empty():
        return 0
    n = s.dim(isl.dim_type.set)
    total = 1
    box = isl.Set.universe(s.get_space())
    for i in range(n):
        lo, hi = _const_of(s.dim_min(i)), _const_of(s.dim_max(i))
        if lo is None or hi is None:
            raise CountingError(f"not a box, cannot count exactly without barvinok: {s}")
        total *= hi - lo + 1
        box = box.lower_bound_val(isl.dim_type.set, i, isl.Val.int_from_si(s.get_ctx(), lo))
        box = box.upper_bound_val(isl.dim_type.set, i, isl.Val.int_from_si(s.get_ctx(), hi))
    if not box.is_equal(s):
        raise CountingError(f"not a box, cannot count exactly without barvinok: {s}")
    return total


def _card_boxes(s: isl.Set) -> int:
    if s.dim(isl.dim_type.param):
        raise CountingError(f"cannot count a parametric set exactly: {s}")
    s = s.make_disjoint() if hasattr(s, "make_disjoint") else s
    return sum(_box_count(bs) for bs in s.get_basic_sets())


def card(s) -> int:
    """Exact number of integer points of an isl Set, BasicSet or UnionSet."""
    if isinstance(s, isl.BasicSet):
        s = isl.Set.from_basic_set(s)
    if isinstance(s, isl.UnionSet):
        return sum(card(x) for x in set_list(s))
    if not isinstance(s, isl.Set):
        raise TypeError(f"card() expects an isl set, got {type(s).__name__}")
    if HAVE_BARVINOK:
        return _card_barvinok(s)
    return _card_boxes(s)


def card_map(m) -> int:
    """Number of pairs in an isl Map / UnionMap (its wrapped set)."""
    if isinstance(m, isl.UnionMap):
        return sum(card_map(x) for x in map_list(m))
    return card(m.wrap())
