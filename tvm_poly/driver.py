"""graph + planner -> Program: ``compile_graph(graph, config, planner, dtype) -> CompiledProgram``.

HBM naming: graph inputs and outputs keep their graph names (fp32 in HBM, whatever the
compute dtype); intermediates are scratch tensors named after the graph tensor (compute
dtype); compile-time constants (laid out / folded weights) are ``weight`` tensors named
``<group>/<what>`` whose values travel in ``CompiledProgram.constants``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from target import isa
from target.codegen import LOWERINGS, Emitter, Value
from target.codegen.emitter import CodegenError
from target.memory import NP_DTYPES

from .graph import OpGraph
from .plan import Plan
from .planners import get_planner

DTYPES = {"float32": "fp32", "bfloat16": "bf16"}


@dataclass(frozen=True, eq=False)
class CompiledProgram:
    program: isa.Program
    constants: dict  # hbm name -> np.ndarray (already in the HBM dtype)
    inputs: tuple  # (hbm name, graph tensor name)
    outputs: tuple  # (hbm name, graph tensor name)
    plan: Plan
    config: object = None
    dtype: str = "float32"
    compile_seconds: float = 0.0
    runtime_weights: tuple = ()  # (hbm name, graph tensor name) of weights given at run time
    schedule: tuple = ()  # (kernel tag, ((choice, value), ...)): tiling chosen by the codegen
    options: object = None  # the LowerOptions the program was lowered with
    search: tuple = ()  # (LowerOptions, estimated end in us) of every lowering tried, in order
    # (name, estimated end in us, HBM bytes, kept) of each alternative plan the driver lowered
    # beside the planner's first plan ("first plan" itself comes first)
    alternatives: tuple = ()

    def schedule_text(self) -> str:
        """The codegen's per-kernel schedule choices, one line per kernel."""
        return "\n".join(f"{tag:24} " + ", ".join(f"{k}={v}" for k, v in kv if v is not None)
                         for tag, kv in self.schedule)

    def run(self, values: dict, check: bool = True, trace: bool = False):
        """values: graph tensor name -> array.  Returns (outputs by graph name, report)."""
        from target.simulator import simulate

        tensors = dict(self.constants)
        for hbm, gname in self.inputs + self.runtime_weights:
            if gname not in values:
                from .errors import InputShapeError
                raise InputShapeError(f"missing input {gname!r}")
            t = self.program.tensor(hbm)
            arr = np.asarray(values[gname])
            if tuple(arr.shape) != tuple(t.shape):
                from .errors import InputShapeError
                raise InputShapeError(f"input {gname!r} expects shape {tuple(t.shape)}, got {tuple(arr.shape)}")
            tensors[hbm] = arr.astype(NP_DTYPES[t.dtype])
        res = simulate(self.program, self.config, tensors, check=check, trace=trace)
        outs = {g: np.asarray(res.outputs[h], dtype=np.float32) for h, g in self.outputs}
        object.__setattr__(self, '_last', res)
        return outs, res.report


class LowerCtx:
    """What a lowering function sees: the emitter, compute dtype, graph, plan and values."""

    def __init__(self, em: Emitter, graph: OpGraph, plan: Plan, cdt: str):
        self.em, self.graph, self.plan, self.cdt = em, graph, plan, cdt
        self.tm = graph.tensor_map
        self.values: dict[str, Value] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.inputs, self.outputs, self.runtime_weights = [], [], []
        self._alias = {t.name: t.alias_of for t in plan.tensors if t.placement == "alias"}
        # concat inputs written in place: name -> (first partition, partitions) of the root's tile
        # (plane: of a cyclic root; cyclic: the slice is a cyclic prefix of the root's channels)
        self._slices = {t.name: (t.start_partition, t.num_partitions, t.plane, t.cyclic) for t in plan.tensors
                        if t.placement == "alias" and t.num_partitions}
        self._const_values: dict[str, Value] = {}
        # spatial tiling (poly row bands): band buffers (allocation.band_views) and the weight
        # slots that keep a banded conv's weights across its bands (lowerings.lower_conv2d)
        self.bands: dict = {}
        self.weight_slots: dict = {}
        self.weight_packs: dict = {}  # kernel -> weight_pack.Member (its weights are part of a pack)

    def root(self, name):
        seen = set()
        while name in self._alias and name not in seen:
            seen.add(name)
            name = self._alias[name]
        return name

    def node(self, name):
        return self.graph.node(name)

    def info(self, name):
        return self.tm[name]

    # ------------------------------------------------------------ values
    def value(self, name: str) -> Value:
        """The Value of a graph tensor that is read (input, weight, or produced earlier)."""
        if name in self.values:
            return self.values[name]
        r = self.root(name)
        t = self.tm[name]
        if name in self._slices:
            return self._slice(name)
        if r != name:
            base = self.value(r)
            v = Value(name, tuple(t.shape), base.dtype, hbm=base.hbm, sbuf=base.sbuf, images=base.images)
            self.values[name] = v
            return v
        if t.is_constant:
            return self.const_value(name)
        if t.kind == "weight":  # weight without a value: bound at run time
            ref = self.em.hbm_tensor(name, t.shape, "fp32", "input")
            self.runtime_weights.append((name, name))
            v = Value(name, tuple(t.shape), "fp32", hbm=ref)
            self.values[name] = v
            return v
        raise CodegenError(f"tensor {name} is read before it is produced")

    def const_value(self, name: str, dtype: Optional[str] = None) -> Value:
        t = self.tm[name]
        dt = dtype or self.cdt
        key = (name, dt)
        if key not in self._const_values:
            self._const_values[key] = self.const(f"{name}", np.asarray(t.value), dt)
        return self._const_values[key]

    def const(self, hbm_name: str, array: np.ndarray, dtype: Optional[str] = None) -> Value:
        """A compile-time constant tensor in HBM (weights laid out for the kernel, folded BN...)."""
        dt = dtype or self.cdt
        base, k = hbm_name, 1
        while hbm_name in self.constants:
            hbm_name = f"{base}#{k}"
            k += 1
        arr = np.ascontiguousarray(np.asarray(array, dtype=np.float32).astype(NP_DTYPES[dt]))
        ref = self.em.hbm_tensor(hbm_name, arr.shape, dt, "weight")
        self.constants[hbm_name] = arr
        return Value(hbm_name, tuple(arr.shape), dt, hbm=ref)

    def _slice(self, name: str) -> Value:
        """A concat input that lives in partitions [p0, p0 + rows) of the concat's resident buffer."""
        if name not in self.values:
            p0, rows, plane, cyc = self._slices[name]
            parent = self._alias[name]
            while parent in self._slices:  # a chained slice (a concat inside a concat)
                p0 += self._slices[parent][0]
                plane += self._slices[parent][2]
                parent = self._alias[parent]
            base = self.out(self.root(name))
            F = int(np.prod(self.tm[name].shape[2:]))
            it = isa.DTYPES[base.dtype]
            tile = replace(base.sbuf, partitions=rows, start_partition=base.sbuf.start_partition + p0,
                           offset=base.sbuf.offset + plane * F * it,
                           nbytes=base.sbuf.nbytes - plane * F * it if cyc else F * it if base.cyclic else base.sbuf.nbytes,
                           name=f"{base.sbuf.name}[p{p0}:{p0 + rows}" + (f" plane {plane}]" if plane else "]"))
            self.values[name] = Value(name, tuple(self.tm[name].shape), base.dtype, sbuf=tile, images=base.images,
                                      cyclic=cyc)
        return self.values[name]

    def out(self, name: str) -> Value:
        """The Value a kernel writes for graph tensor ``name`` (allocated on first use)."""
        if name in self.values:
            return self.values[name]
        if name in self._slices:
            return self._slice(name)
        t = self.tm[name]
        pl = self.plan.placement(name)
        if pl.placement == "sbuf":
            if name in self.graph.outputs:
                raise CodegenError(f"graph output {name} cannot be SBUF-resident")
            size = int(np.prod(t.shape))
            need = -(-size // pl.num_partitions) * isa.DTYPES[self.cdt]
            if pl.cyclic:
                need = -(-int(t.shape[1]) // pl.num_partitions) * int(np.prod(t.shape[2:])) * isa.DTYPES[self.cdt]
            tile = self.em.sbuf_resident(pl.start_partition, pl.num_partitions, pl.offset,
                                         max(pl.nbytes, need), self.cdt, name)
            v = Value(name, tuple(t.shape), self.cdt, sbuf=tile, images=max(1, int(getattr(pl, "images", 1))),
                      cyclic=pl.cyclic)
            self.values[name] = v
            return v
        members = [m for m in list(self._alias) + [name] if self.root(m) == name]
        outs = [m for m in members if m in self.graph.outputs]
        if outs:
            hname = outs[0]
            ref = self.em.hbm_tensor(hname, self.tm[hname].shape, "fp32", "output")
            for o in outs:
                self.outputs.append((hname, o))
            dt = "fp32"
        else:
            ref = self.em.hbm_tensor(name, t.shape, self.cdt, "scratch")
            dt = self.cdt
        v = Value(name, tuple(t.shape), dt, hbm=ref)
        self.values[name] = v
        return v


def compile_graph(graph: OpGraph, config="inf2", planner: str = "per-op", dtype: str = "float32",
                  plan: Optional[Plan] = None, name: str = None, options=None,
                  search: Optional[bool] = None) -> CompiledProgram:
    """Plan (unless ``plan`` is given) and lower ``graph`` for ``config``.

    ``options`` (:class:`target.codegen.options.LowerOptions`) fixes the lowering options;
    otherwise, with ``search`` (default: on for the ``poly`` planner), the program is lowered
    from the default options and then with each option that differs in one field, moving to the
    better one while it improves (coordinate descent: :func:`_better`, by the estimated end -- the
    emitter's clock, see ``Emitter.estimated_end_us`` -- and the HBM bytes moved).
    ``CompiledProgram.search`` lists every lowering tried."""
    from target.config import load_config
    from target.codegen.options import LowerOptions

    t0 = time.perf_counter()
    if dtype not in DTYPES:
        from .errors import OptionError
        raise OptionError(f"unknown dtype {dtype!r}; expected float32 or bfloat16")
    cfg = load_config(config) if not hasattr(config, "sbuf_partitions") else config
    given = plan is not None
    if search is None:
        search = options is None and planner == "poly"
    short_alt = None  # the plan with short row segments, planned with the first (plan_poly "auto")
    if plan is None and search and planner == "poly" and get_planner(planner) is _plan_poly():
        plan, short_alt = _plan_poly()(graph, cfg, dtype, short_segments="auto")
    elif plan is None:
        plan = get_planner(planner)(graph, cfg, dtype)
    graph0 = graph
    graph = getattr(plan, "graph", None) or graph  # the graph the planner rewrote, if it did
    cdt = DTYPES[dtype]
    options = options or LowerOptions()
    layouts = None
    if options.weight_pack:  # packs are built from the layouts of a lowering without them
        layouts = _lower(graph, plan, cfg, cdt, name, replace(options, weight_pack=0)).layouts
    best = _lower(graph, plan, cfg, cdt, name, options, layouts)
    alternatives = [["first plan", best.end_us, best.hbm_bytes, True]]

    def keep(label, cand, won):
        if won:
            for a in alternatives:
                a[3] = False
        alternatives.append([label, cand.end_us, cand.hbm_bytes, won])
        return won

    if search and not given and planner == "poly" and dict(plan.info).get("aligned_rows"):
        # the concat layouts on whole rows trade cheaper copies for contractions over fewer
        # partitions (and their spills may differ): the plan without them is lowered too, and it
        # wins with an earlier end or with 1% fewer HBM bytes (the planner's first measure)
        # (with its short-segment variant when that is the one the short alternative below would
        # plan: the graph as given, not rewritten by the first plan)
        if graph is graph0:
            alt, alt_short = _plan_poly()(graph, cfg, dtype, aligned_layouts=False, short_segments="both")
        else:
            alt, alt_short = _plan_poly()(graph, cfg, dtype, aligned_layouts=False), None
        alt_graph = alt.graph or graph  # (its own choice of lattice copies)
        cand = _lower(alt_graph, alt, cfg, cdt, name, options, layouts)
        if keep("concat layouts not on whole rows", cand,
                cand.end_us < best.end_us - 1e-6 or cand.hbm_bytes < 0.99 * best.hbm_bytes):
            plan, best, graph, short_alt = alt, cand, alt_graph, alt_short
    if search and not given and planner == "poly" and dict(plan.info).get("row_segments"):
        # row segments that end before a spilled tensor's last reader lower the planned cost but
        # not always the run's: the plan with them is an alternative, kept by the search's rule
        alt = short_alt if short_alt is not None else _plan_poly()(
            graph0, cfg, dtype, aligned_layouts=bool(dict(plan.info).get("aligned_rows")), short_segments=True)
        if alt.groups != plan.groups:
            alt_graph = alt.graph or graph0
            cand = _lower(alt_graph, alt, cfg, cdt, name, options, layouts)
            if keep("short row segments", cand, _better(cand, best)):
                plan, best, graph = alt, cand, alt_graph
    tried = [(best.options, best.end_us)]
    if search:
        seen = {best.options}
        improved = True
        while improved:
            improved = False
            for opt in best.options.neighbours(only=best.consulted):  # the others change nothing
                if opt in seen:
                    continue
                seen.add(opt)
                try:
                    cand = _lower(graph, plan, cfg, cdt, name, opt, best.layouts)
                except CodegenError:  # an option this program cannot take (e.g. SBUF too small)
                    continue
                tried.append((cand.options, cand.end_us))
                if _better(cand, best):
                    best, improved = cand, True
                    break
    ctx = best.ctx
    return CompiledProgram(best.program, ctx.constants, tuple(ctx.inputs), tuple(ctx.outputs), plan, cfg,
                           dtype, time.perf_counter() - t0, tuple(ctx.runtime_weights), best.schedule,
                           best.options, tuple(tried), tuple(tuple(a) for a in alternatives))


@dataclass(frozen=True, eq=False)
class _Lowering:
    """One lowering of a plan with fixed options."""
    options: object
    end_us: float  # estimated end (Emitter.estimated_end_us)
    program: isa.Program
    ctx: "LowerCtx"
    schedule: tuple
    consulted: frozenset  # LowerOptions fields its kernels depended on
    layouts: dict  # Emitter.weight_layouts: what weight packs could hold (target/codegen/weight_pack.py)
    hbm_bytes: int  # HBM bytes the program moves (_hbm_bytes)


def _lower(graph: OpGraph, plan: Plan, cfg, cdt: str, name, options, layouts=None) -> _Lowering:
    """Lower ``plan`` with ``options``; ``layouts``: the weight layouts an earlier lowering of the
    plan recorded, from which ``options.weight_pack`` packs are built (none without them)."""
    from target.codegen.weight_pack import Pack, plan_packs

    em = Emitter(cfg, name or graph.name, options=options)
    ctx = LowerCtx(em, graph, plan, cdt)
    for nm in graph.inputs:
        t = graph.tensor(nm)
        ref = em.hbm_tensor(nm, t.shape, "fp32", "input")
        ctx.values[nm] = Value(nm, tuple(t.shape), "fp32", hbm=ref)
        ctx.inputs.append((nm, nm))
    from target.codegen.const_block import ConstBlock, columns
    ctx.const_block = ConstBlock(em, ctx.const, ctx.constants, columns(plan.groups, graph.tensor_map, em.partitions),
                                 em.partitions)
    from .allocation import band_views, batch_views, release_dead, resident_deaths, restore_views, stage_rows, unstage
    deaths = resident_deaths(plan, ctx.root)  # group index -> resident tensors read last there
    last_weighted = max((gi for gi, g in enumerate(plan.groups) if g.kind in ("conv2d", "matmul")), default=-1)
    packs = {p[0]: p for p in plan_packs(plan.groups, layouts or {}, options.weight_pack)}
    open_packs, npacks = {}, 0  # last member -> Pack
    for gi, g in enumerate(plan.groups):
        fn = LOWERINGS.get(g.kind)
        if fn is None:
            raise CodegenError(f"{g.tag}: no NeuronCore lowering for kernel kind {g.kind!r}")
        em.tag = g.tag
        em.tail = gi == last_weighted
        sub = g.param("images")  # poly batch tiling: this kernel runs on images [n0, n0 + k)
        saved = batch_views(ctx, g, *sub) if sub else None
        # poly spatial tiling: this kernel computes a band of rows (of the sub-batch's views)
        if g.param("stage"):  # rows of inputs several banded kernels share, loaded once
            stage_rows(ctx, g)
        banded = band_views(ctx, g) if g.param("rows") is not None else None
        if g.name in packs:  # load the pack where its first member's own load would be
            pk = Pack(em, ctx.const, ctx.constants, packs[g.name], layouts, npacks)
            npacks += 1
            ctx.weight_packs.update(pk.members)
            open_packs[pk.last] = pk
        fn(ctx, g)
        if g.name in open_packs:
            em.free(open_packs.pop(g.name).tile)
        if banded is not None:
            restore_views(ctx, banded)
        unstage(ctx, g)
        if saved is not None:
            restore_views(ctx, saved)
        release_dead(ctx, deaths.get(gi, ()))  # free resident buffers after their last reader
    # graph outputs that are graph inputs / constants / aliases of inputs need a copy kernel
    produced = {o for _, o in ctx.outputs}
    for o in graph.outputs:
        if o not in produced:
            raise CodegenError(f"graph output {o} is not produced by any NeuronCore kernel")
    program = em.finish()
    schedule = tuple((g.tag, tuple(em.notes.get(g.tag, {}).items())) for g in plan.groups)
    from target.codegen.options import ALTERNATIVES
    if packs or plan_packs(plan.groups, em.weight_layouts, max(ALTERNATIVES["weight_pack"])):
        em.consulted.add("weight_pack")  # some kernels could share a pack
    return _Lowering(options, em.estimated_end_us(), program, ctx, schedule, frozenset(em.consulted),
                     dict(em.weight_layouts), _hbm_bytes(program))


def _plan_poly():
    from .planners.poly import plan_poly
    return plan_poly


def _better(cand: "_Lowering", best: "_Lowering") -> bool:
    """The lowering search's rule: ``cand`` replaces ``best`` when it ends earlier without moving
    more than 1% more HBM bytes, or moves at least 1% fewer HBM bytes and ends at most 2% later
    (memory traffic is what the planner is for: e.g. a stem layout 1% faster that reads the image
    seven times over from HBM does not win)."""
    cb, bb = cand.hbm_bytes, best.hbm_bytes
    if cand.end_us < best.end_us - 1e-6 and cb <= 1.01 * bb:
        return True
    return cb < 0.99 * bb and cand.end_us <= 1.02 * best.end_us


def _hbm_bytes(program: isa.Program) -> int:
    """HBM bytes a program reads and writes (its DMAs; nothing is data-dependent): the report's
    hbm_read_bytes + hbm_write_bytes."""
    return sum((i.src.nbytes if i.src.mem == isa.Mem.HBM else 0) + (i.dst.nbytes if i.dst.mem == isa.Mem.HBM else 0)
               for _, st in program.streams for i in st if isinstance(i, isa.DmaCopy))

