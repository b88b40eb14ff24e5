"""The polyinf Relax pipeline: how ``tvm.compile(mod, target="polyinf")`` offloads.

Hook
----
TVM 0.27 builds Relax with ``relax.get_pipeline("default")``, i.e.
``relax.pipeline.PIPELINE_MAP["default"]()``, and runs the returned pass inside
``with target:``.  :func:`install_hook` (called at ``import tvm`` by the entry point)
wraps the ``"default"`` and ``"default_build"`` factories: the wrapped pass looks at
``Target.current()`` when it runs and, for a target whose keys contain ``polyinf``,
first applies :class:`PolyinfPartition`, then the original pipeline.  Other targets
are untouched.  An explicit ``relax_pipeline=<Pass>`` bypasses the hook; add
``PolyinfPartition()`` to your own pipeline in that case.

Partition
---------
:class:`PolyinfPartition` is a module pass.  It turns ``main``'s dataflow block into an
:class:`OpGraph` (``tvm_poly.graph.graph_from_relax``), orders the bindings so that
supported operators form maximal runs (a topological order that stays on the device
while it can), compiles each run with ``tvm_poly.driver.compile_graph`` and replaces
it by one ``relax.call_dps_packed("polyinf.run", [key, program, *inputs, *constants])``.
The program (text from ``target.program_text.format_program``, plus a JSON header:
HBM bindings, planner, dtype, hardware config source, host operators) travels as a
zlib-compressed ``uint8`` Relax constant, the weights as Relax constants, so
``export_library`` round-trips.  Unsupported operators stay on the host (llvm) and
are listed in the report's ``host_ops``.

Options
-------
Planner and dtype are compile options, not target fields (TVM refuses custom target
attributes and PassContext keys cannot be registered from Python)::

    with tvm_poly.options(planner="per-op", dtype="bfloat16"):
        ex = tvm.compile(mod, target="polyinf")
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import time
import zlib

from .errors import CapacityError, OptionError, PlannerError, TvmPolyError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
DEFAULT_OPTIONS = {"planner": "poly", "dtype": "float32"}
RUN_FUNC = "polyinf.run"
BEGIN_FUNC = "polyinf.begin"
PARTITIONED_ATTR = "polyinf.partitioned"
FORMAT_VERSION = 1

_OPTIONS = contextvars.ContextVar("tvm_poly_options", default=dict(DEFAULT_OPTIONS))


def known_planners() -> tuple[str, ...]:
    try:
        from .planners import PLANNERS
    except ImportError:
        return ("per-op",)
    return tuple(PLANNERS)


def check_planner(planner: str) -> str:
    names = known_planners()
    if planner not in names:
        raise PlannerError(f"unknown planner {planner!r}; known: {', '.join(names)}")
    return planner


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise OptionError(f"unknown dtype {dtype!r}; expected float32 or bfloat16")
    return DTYPES[dtype]


@contextlib.contextmanager
def options(planner: str | None = None, dtype: str | None = None):
    """Compile options for polyinf builds inside the ``with`` block (nestable)."""
    new = dict(_OPTIONS.get())
    if planner is not None:
        new["planner"] = check_planner(planner)
    if dtype is not None:
        new["dtype"] = check_dtype(dtype)
    token = _OPTIONS.set(new)
    try:
        yield dict(new)
    finally:
        _OPTIONS.reset(token)


def current_options() -> dict:
    return dict(_OPTIONS.get())


# ---------------------------------------------------------------------------- hook
def _wrap_factory(orig_factory):
    import tvm

    def factory(*args, **kwargs):
        orig_pass = orig_factory(*args, **kwargs)

        @tvm.transform.module_pass(opt_level=0, name="PolyinfDispatch")
        def _dispatch(mod, _ctx):
            from .targets import is_polyinf

            target = tvm.target.Target.current(allow_none=True)
            if is_polyinf(target):
                mod = _pass_class()(target=target)(mod)
            return orig_pass(mod)

        return _dispatch

    factory.__polyinf_orig__ = orig_factory
    factory.__doc__ = getattr(orig_factory, "__doc__", None)
    return factory


def install_hook() -> None:
    """Wrap relax PIPELINE_MAP["default"] / ["default_build"] (idempotent)."""
    from tvm.relax import pipeline as rp

    for name in ("default", "default_build"):
        f = rp.PIPELINE_MAP.get(name)
        if f is not None and not hasattr(f, "__polyinf_orig__"):
            rp.PIPELINE_MAP[name] = _wrap_factory(f)


def uninstall_hook() -> None:
    from tvm.relax import pipeline as rp

    for name, f in list(rp.PIPELINE_MAP.items()):
        if hasattr(f, "__polyinf_orig__"):
            rp.PIPELINE_MAP[name] = f.__polyinf_orig__


# ---------------------------------------------------------------------------- serialise
def pack_blob(header: dict, program_text: str) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return zlib.compress(len(head).to_bytes(8, "little") + head + program_text.encode(), 6)


def unpack_blob(blob: bytes) -> tuple[dict, str]:
    raw = zlib.decompress(bytes(blob))
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n].decode()), raw[8 + n:].decode()


# ---------------------------------------------------------------------------- compile info
_LAST_COMPILE: dict = {}


def last_compile() -> dict:
    """Summary of the most recent polyinf partition (segments, host_ops, timing)."""
    return dict(_LAST_COMPILE)


# ---------------------------------------------------------------------------- the pass
def _order_bindings(bindings, is_dev):
    """Topological order of a dataflow block's bindings that keeps device runs maximal.

    Kahn's algorithm that stays in its current mode (device or host) while a binding of
    that mode is ready, original order as tie-break: an unrelated host op that is ready
    early does not split a device run, and host work is finished before switching back."""
    import heapq

    from tvm import relax

    index = {b.var: i for i, b in enumerate(bindings)}
    succs = [set() for _ in bindings]
    indeg = [0] * len(bindings)
    for i, b in enumerate(bindings):
        for j in {index[v] for v in relax.analysis.free_vars(b.value) if v in index} - {i}:
            succs[j].add(i)
            indeg[i] += 1
    ready = {True: [], False: []}
    for i, d in enumerate(indeg):
        if d == 0:
            heapq.heappush(ready[is_dev[i]], i)
    order, mode = [], True
    while ready[True] or ready[False]:
        if not ready[mode]:
            mode = not mode
        i = heapq.heappop(ready[mode])
        order.append(i)
        for j in succs[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready[is_dev[j]], j)
    return order


def _runs(order, is_dev):
    """Split an order into [(is_device, [indices])] maximal runs."""
    runs = []
    for i in order:
        if runs and runs[-1][0] == is_dev[i]:
            runs[-1][1].append(i)
        else:
            runs.append((is_dev[i], [i]))
    return runs


def _import_backend():
    try:
        from . import driver, graph
    except ImportError as e:  # codegen not installed: nothing can be offloaded
        raise TvmPolyError(f"polyinf code generator unavailable: {e}") from e
    return graph, driver


def _const_expr(array):
    import numpy as np
    from tvm import relax

    a = np.ascontiguousarray(array)
    if a.dtype.name == "bfloat16":
        a = a.view(np.uint16)
    return relax.const(a)


def _dtype_tag(array) -> str:
    return "bfloat16" if array.dtype.name == "bfloat16" else str(array.dtype)


def _device_flags(bindings, node_by_name, result=None):
    """Which bindings of a dataflow block go to the device.

    A binding is on the device if it is a supported graph node, or if it only exists to
    feed/unpack one: ``TupleGetItem`` of a device node (batch_norm's item 0) and the
    ``stack`` feeding an ``add_n`` node (ONNX Sum)."""
    from tvm import relax

    is_dev = []
    for b in bindings:
        node = node_by_name.get(b.var.name)
        dev = bool(node is not None and node.supported and isinstance(b, relax.VarBinding))
        if node is None and isinstance(b, relax.VarBinding) and \
                isinstance(b.value, relax.TupleGetItem):
            src = node_by_name.get(getattr(b.value.tuple_value, "name", None))
            dev = bool(src is not None and src.supported)
        is_dev.append(dev)
    # Bindings the graph has no node for (aliases such as broadcast_to(x, x.shape), the
    # stack of an ONNX Sum, constants folded at compile time) follow their users: on the
    # device when every user is, so they never split a device run.
    index = {b.var: i for i, b in enumerate(bindings)}
    users = [[] for _ in bindings]
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            j = index.get(v)
            if j is not None:
                users[j].append(i)
    external = set(relax.analysis.free_vars(result)) if result is not None else set()
    for i in reversed(range(len(bindings))):
        b = bindings[i]
        if is_dev[i] or b.var.name in node_by_name or b.var in external or not users[i]:
            continue
        if not isinstance(b, relax.VarBinding):
            continue
        if all(is_dev[u] for u in users[i]):
            is_dev[i] = True
    return is_dev


def _block_external_uses(body, block):
    """An expression whose free vars are everything used outside ``block``."""
    from tvm import relax

    exprs = [body.body]
    for other in body.blocks:
        if other.same_as(block):
            continue
        exprs.extend(b.value for b in other.bindings)
    return relax.Tuple(exprs) if len(exprs) > 1 else exprs[0]


def _lowering_gaps(graph, config, dtype) -> dict:
    """Supported nodes whose kernel kind has no lowering in ``target.codegen.LOWERINGS``:
    node name -> reason.  They stay on the host instead of failing the whole device
    segment.  The kinds come from the (cheap) per-op grouping whatever the planner: a
    planner's own fused kinds are its business, and planning twice with an expensive
    planner would double the compile time."""
    try:
        from target.codegen import LOWERINGS

        from .planners import get_planner

        names = [n.name for n in graph.nodes if n.supported]
        if not names:
            return {}
        plan = get_planner("per-op")(graph.subgraph(names), config, dtype)
    except Exception:  # the planner itself fails: compile_graph will report it
        return {}
    gaps = {}
    for g in plan.groups:
        if g.kind != "alias" and g.kind not in LOWERINGS:
            for op in g.ops:
                gaps[op] = f"no NeuronCore lowering for kernel kind {g.kind!r} yet"
    return gaps


def _failing_kernels(graph, names, config, planner, dtype, driver, err) -> dict:
    """Node name -> reason for the kernels of a failed segment that cannot be built.

    Each planner group of the segment is compiled alone.  A group that fails for lack of
    SBUF/PSUM on the user's config but builds on the standard inf2 core means the config
    is too small: :class:`CapacityError`.  Otherwise its nodes stay on the host."""
    from .planners import get_planner
    from .targets import load_hardware_config

    try:
        groups = [g.ops for g in get_planner(planner)(graph.subgraph(names), config, dtype).groups
                  if g.kind != "alias"]
    except Exception:  # noqa: BLE001
        groups = [(n,) for n in names]
    failed = {}
    for ops in groups:
        try:
            driver.compile_graph(graph.subgraph(ops), config, planner=planner, dtype=dtype)
            continue
        except TvmPolyError:
            raise
        except Exception as e:  # noqa: BLE001
            reason = f"codegen: {type(e).__name__}: {' '.join(str(e).split())}"
            if type(e).__name__ == "AllocationError" and getattr(config, "name", "") != "inf2":
                try:
                    driver.compile_graph(graph.subgraph(ops), load_hardware_config("inf2"),
                                         planner=planner, dtype=dtype)
                except Exception:  # noqa: BLE001 - the standard core cannot either
                    pass
                else:
                    raise CapacityError(
                        f"hardware config {getattr(config, 'name', '?')!r} is too small for "
                        f"kernel {ops[0]} ({graph.node(ops[0]).op}): {e}") from e
            for op in ops:
                failed[op] = reason
    if not failed:  # only the combination failed: keep the whole segment on the host
        reason = f"codegen: {type(err).__name__}: {' '.join(str(err).split())}"
        failed = {n: reason for n in names}
    return failed


def partition_module(mod, target, planner: str, dtype: str, backend=None):
    """The work of :class:`PolyinfPartition` (see the module docstring)."""
    import warnings

    from tvm import relax

    from .targets import config_spec, load_hardware_config

    t0 = time.perf_counter()
    check_planner(planner)
    dtype = check_dtype(dtype)
    spec = config_spec(target)
    config = load_hardware_config(spec)
    info = {"planner": planner, "dtype": dtype, "config": getattr(config, "name", spec),
            "segments": [], "host_ops": [], "device_ops": 0}

    def done(result):
        info["compile_s"] = time.perf_counter() - t0
        _LAST_COMPILE.clear()
        _LAST_COMPILE.update(info)
        return result

    gv = next((g for g in mod.get_global_vars() if g.name_hint == "main"), None)
    if gv is None or not isinstance(mod[gv], relax.Function):
        return done(mod)
    func = mod[gv]
    if func.attrs is not None and PARTITIONED_ATTR in func.attrs:
        return mod  # already partitioned (e.g. an explicit pipeline that ran the pass)
    graph_mod, driver = backend or _import_backend()
    body = func.body
    graph, why = None, _dynamic_params(func)
    if why is None:
        try:
            graph = graph_mod.graph_from_relax(func)
        except TvmPolyError:
            raise
        except Exception as e:  # noqa: BLE001 - a construct the graph does not model
            why = f"graph extraction failed: {type(e).__name__}: {e}"
    if graph is None:  # everything on the host (still correct), with the reason
        warnings.warn(f"polyinf: {why}; running the whole model on the host")
        host_ops = [{"name": b.var.name, "op": str(getattr(b.value.op, "name", "?")),
                     "reason": why}
                    for blk in body.blocks for b in blk.bindings if isinstance(b.value, relax.Call)]
    if graph is not None:
        plans, host_ops = _plan_blocks(body, graph, config, planner, dtype, driver)
    else:
        plans = [None] * len(body.blocks)
    return done(_rewrite(mod, gv, func, plans, host_ops, info, spec, planner, dtype))


def _dynamic_params(func):
    """Why ``func`` cannot be offloaded for its symbolic input shapes (None if static)."""
    import tvm

    for p in func.params:
        shape = getattr(p.ty, "shape", None)
        values = getattr(shape, "values", None)
        if values is None:
            continue
        if not all(isinstance(v, tvm.tirx.IntImm) for v in values):
            return (f"dynamic shape: input {p.name} has shape ({', '.join(str(v) for v in values)}); "
                    "give static shapes (e.g. tvm_poly.load_onnx(..., batch=N)) to offload")
    return None


def _plan_blocks(body, graph, config, planner, dtype, driver):
    """Per block: None (not a dataflow block) or (bindings, [(on_device, ids, names, cp)]),
    plus the host operator list."""
    import warnings

    from tvm import relax

    nodes = list(graph.nodes)
    gaps = _lowering_gaps(graph, config, dtype)
    if gaps:
        nodes = [dataclasses.replace(n, supported=False, reason=gaps[n.name])
                 if n.name in gaps else n for n in nodes]
        graph = dataclasses.replace(graph, nodes=tuple(nodes))
    node_by_name = {n.name: n for n in nodes}
    host_ops = [{"name": n.name, "op": n.op, "reason": n.reason} for n in nodes if not n.supported]

    plans = []
    for block in body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            plans.append(None)
            continue
        bindings = list(block.bindings)
        external = _block_external_uses(body, block)
        compiled = {}  # node names of a run -> CompiledProgram (re-partitioning reuses them)
        while True:  # a kernel the code generator cannot build leaves the run; re-partition
            is_dev = _device_flags(bindings, node_by_name, external)
            runs, failed = [], {}
            for dev, ids in _runs(_order_bindings(bindings, is_dev), is_dev):
                names = [bindings[i].var.name for i in ids if bindings[i].var.name in node_by_name]
                cp = None
                if dev and names:
                    key = tuple(names)
                    if key not in compiled:
                        try:
                            compiled[key] = driver.compile_graph(
                                graph.subgraph(names), config, planner=planner, dtype=dtype)
                        except TvmPolyError:
                            raise
                        except Exception as e:  # noqa: BLE001 - find the kernels that failed
                            failed.update(_failing_kernels(graph, names, config, planner, dtype,
                                                           driver, e))
                            continue
                    cp = compiled[key]
                runs.append((cp is not None, ids, names, cp))
            if not failed:
                break
            for name, reason in failed.items():
                warnings.warn(f"polyinf: {name} ({node_by_name[name].op}) stays on the host: "
                              f"{reason}")
                node_by_name[name] = dataclasses.replace(node_by_name[name], supported=False,
                                                         reason=reason)
                host_ops.append({"name": name, "op": node_by_name[name].op, "reason": reason})
            graph = dataclasses.replace(graph, nodes=tuple(
                node_by_name.get(n.name, n) for n in graph.nodes))
        plans.append((bindings, runs))
    return plans, host_ops


def _rewrite(mod, gv, func, plans, host_ops, info, spec, planner, dtype):
    """``mod`` with main's device runs replaced by polyinf.run calls, and polyinf.begin."""
    import tvm
    from tvm import relax

    body = func.body
    info["host_ops"] = host_ops
    info["device_ops"] = sum(len(r[2]) for p in plans if p for r in p[1] if r[0])
    seg_count = sum(1 for p in plans if p for r in p[1] if r[0])

    config_text = None
    if spec not in ("inf1", "inf2"):
        with open(spec, encoding="utf-8") as f:
            config_text = f.read()

    seg_index = 0
    new_blocks = []
    for block, plan in zip(body.blocks, plans):
        if plan is None:
            new_blocks.append(block)
            continue
        bindings, runs = plan
        new_bindings = []
        for dev, ids, names, cp in runs:
            if not dev:
                new_bindings.extend(bindings[i] for i in ids)
                continue
            new_bindings.extend(_emit_segment(
                cp, seg_index, seg_count, bindings, ids, func, host_ops, spec, config_text,
                planner, dtype))
            info["segments"].append({"index": seg_index, "ops": names,
                                     "instructions": cp.program.num_instructions,
                                     "lowering": cp.options.describe() if getattr(cp, "options", None) else None})
            seg_index += 1
        new_blocks.append(relax.DataflowBlock(new_bindings))

    # Every inference starts with polyinf.begin: it opens the report of this run (so a
    # model with no offloaded operator still reports its host_ops, and no stale report
    # of an earlier model survives).
    meta = {"planner": planner, "dtype": dtype, "config": info["config"],
            "host_ops": host_ops, "num_segments": seg_count}
    begin = relax.Call(relax.ExternFunc(BEGIN_FUNC), [tvm.ir.StringImm(json.dumps(meta))],
                       None, [relax.ObjectType()])
    begin_block = relax.BindingBlock([relax.VarBinding(relax.Var("_polyinf_begin",
                                                                 relax.ObjectType()), begin)])
    new_func = relax.Function(func.params, relax.SeqExpr([begin_block] + new_blocks, body.body),
                              func.ret_ty, func.is_pure, func.attrs)
    new_func = new_func.with_attr("relax.force_pure", True).with_attr(PARTITIONED_ATTR, 1)
    out = mod.clone()
    out[gv] = new_func
    out = relax.transform.Normalize()(out)
    # host bindings whose only users moved to the device (e.g. folded weight transposes)
    return relax.transform.DeadCodeElimination(["main"])(out)


def _emit_segment(cp, seg_index, seg_count, bindings, ids, func, host_ops, spec, config_text,
                  planner, dtype):
    """Bindings that replace one device segment."""
    import numpy as np
    import tvm
    from tvm import relax

    from target.program_text import format_program

    # map graph tensor names -> relax expressions visible before the segment
    name_to_expr = {p.name: p for p in func.params}
    for b in bindings:
        name_to_expr.setdefault(b.var.name, b.var)
    seg_vars = {bindings[i].var.name: bindings[i].var for i in ids}

    in_exprs = []
    inputs = tuple(cp.inputs) + tuple(getattr(cp, "runtime_weights", ()))
    for hbm_name, tname in inputs:
        expr = name_to_expr.get(tname)
        if expr is None:
            raise TvmPolyError(f"polyinf segment input {tname!r} not found in main")
        in_exprs.append(expr)
    const_names = sorted(cp.constants)
    const_exprs = [_const_expr(cp.constants[k]) for k in const_names]
    out_vars = []
    for hbm_name, tname in cp.outputs:
        v = seg_vars.get(tname)
        if v is None:
            raise TvmPolyError(f"polyinf segment output {tname!r} is not a segment binding")
        out_vars.append(v)

    header = {
        "version": FORMAT_VERSION,
        "segment": seg_index, "num_segments": seg_count,
        "inputs": [list(x) for x in inputs],
        "constants": [[k, _dtype_tag(cp.constants[k])] for k in const_names],
        "outputs": [list(x) for x in cp.outputs],
        "planner": planner, "dtype": dtype,
        "config": spec,
        "config_text": config_text,
        "host_ops": host_ops,
    }
    text = format_program(cp.program)
    blob = pack_blob(header, text)
    key = hashlib.sha256(blob).hexdigest()[:24]
    blob_const = relax.const(np.frombuffer(blob, dtype=np.uint8).copy())
    out_types = [v.ty for v in out_vars]
    args = [tvm.ir.StringImm(key), blob_const, *in_exprs, *const_exprs]
    call = relax.call_dps_packed(RUN_FUNC, args, out_types if len(out_types) > 1 else out_types[0])
    new = []
    if len(out_vars) == 1:
        new.append(relax.VarBinding(out_vars[0], call))
    else:
        tup = relax.DataflowVar(f"polyinf_seg{seg_index}", relax.TupleType(out_types))
        new.append(relax.VarBinding(tup, call))
        for k, v in enumerate(out_vars):
            new.append(relax.VarBinding(v, relax.TupleGetItem(tup, k)))
    return new


def _make_pass_class():
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="PolyinfPartition")
    class PolyinfPartition:
        """Offload maximal supported segments of ``main`` to the simulated NeuronCore.

        ``target`` defaults to ``Target.current()``; ``planner``/``dtype`` default to
        :func:`options`."""

        def __init__(self, target=None, planner=None, dtype=None, backend=None):
            self.target = target
            self.planner = planner
            self.dtype = dtype
            self.backend = backend

        def transform_module(self, mod, _ctx):
            from .targets import make_target

            target = self.target
            if target is None:
                target = tvm.target.Target.current(allow_none=True)
            target = make_target(target if target is not None else "polyinf")
            opts = current_options()
            return partition_module(mod, target, self.planner or opts["planner"],
                                    self.dtype or opts["dtype"], backend=self.backend)

    return PolyinfPartition


_PASS_CLASS = None


def _pass_class():
    global _PASS_CLASS
    if _PASS_CLASS is None:
        _PASS_CLASS = _make_pass_class()
    return _PASS_CLASS


def __getattr__(name):
    if name == "PolyinfPartition":  # created lazily: importing tvm here would be circular
        return _pass_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
