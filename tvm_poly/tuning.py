"""MetaSchedule on polyinf: per-kernel schedules found by TVM's auto-tuner, measured on the simulator.

For every conv2d / matmul kernel of a plan (deduplicated by *workload*: shapes, attributes,
dtype, hardware config) the operator's legalized TIR PrimFunc is tuned with
``tvm.s_tir.meta_schedule.tune_tir`` and a :class:`ScheduleFn` design space whose random
decisions are the codegen's real tiling knobs:

=============  ==========================================  ===================================
knob           MetaSchedule decision                       what the codegen does with it
=============  ==========================================  ===================================
``rows``       ``sample_perfect_tile`` of the output-row   output-pixel tile: ``rows * OW``
               loop (``split`` applied, n=2)               pixels per PSUM block / matmul
``pix``        ``sample_categorical`` {128, 256, 512}      (matmul, and convs with OW > 512)
``dma_piece``  ``sample_categorical`` {32, 64, 96, 192}    bytes per DMA piece when a transfer
               KiB                                         is split over the DMA queues
``psum_bufs``  ``sample_categorical`` {2, 4}               PSUM banks rotated (buffering depth
                                                           of matmul accumulation/evacuation)
=============  ==========================================  ===================================

The decisions are written into the schedule as block annotations (``polyinf.<knob>``), so the
scheduled IRModule MetaSchedule hands the builder carries them.  :class:`SimBuilder` compiles the
kernel alone with those knobs (``tvm_poly.driver.compile_graph`` on the kernel's subgraph) and
simulates it; :class:`SimRunner` returns the simulated seconds.  Records go to a
``JSONDatabase`` (``work_dir``) and are reused: a workload with enough records is not tuned
again; its best record's trace is replayed to read its knobs back.

The default schedule (no knobs) is measured too and a tuned schedule is only used when it is
strictly faster in simulated cycles, so a tuned kernel is never slower than the per-op one.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

TUNABLE = ("conv2d", "matmul")
DMA_PIECES = (32768, 65536, 98304, 196608)
PIX = (128, 256, 512)
PSUM_BUFS = (2, 4)


# ------------------------------------------------------------------ knobs -> emitter
def apply_knobs(em, knobs: dict):
    """Set the emitter's tiling knobs; returns the previous values (for :func:`restore`)."""
    old = {"max_moving_free": em.max_moving_free, "dma_piece_bytes": em.dma_piece_bytes,
           "psum_banks": em.psum_banks}
    if knobs.get("pix"):
        em.max_moving_free = int(min(old["max_moving_free"], int(knobs["pix"])))
    if knobs.get("dma_piece"):
        em.dma_piece_bytes = int(knobs["dma_piece"])
    if knobs.get("psum_bufs"):
        em.psum_banks = int(min(old["psum_banks"], int(knobs["psum_bufs"])))
    return old


def restore(em, old):
    for k, v in old.items():
        setattr(em, k, v)


def knobs_of_group(g) -> dict:
    k = g.param("knobs")
    return dict(k) if k else {}


_INSTALLED = False


def install_lowerings():
    """Wrap the conv2d/matmul lowerings so a group's ``knobs`` param is honoured (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from target.codegen import LOWERINGS

    for kind in TUNABLE:
        base = LOWERINGS.get(kind)
        if base is None or getattr(base, "_polyinf_knobs", False):
            continue

        def wrapped(ctx, g, _base=base):
            knobs = knobs_of_group(g)
            if not knobs:
                return _base(ctx, g)
            old = apply_knobs(ctx.em, knobs)
            try:
                return _base(ctx, g)
            finally:
                restore(ctx.em, old)

        wrapped._polyinf_knobs = True
        LOWERINGS[kind] = wrapped
    _INSTALLED = True


# ------------------------------------------------------------------ workloads
@dataclass
class Workload:
    key: str
    kind: str
    graph: object  # OpGraph of the kernel alone
    group: object  # GroupPlan (per-op)
    out_hw: tuple = ()  # (OH, OW) for conv
    groups: list = field(default_factory=list)  # names of the plan groups sharing it


def workload_key(graph, g, dtype, config) -> str:
    tm = graph.tensor_map
    node = graph.node(g.ops[0])
    desc = {"kind": g.kind, "shapes": [list(tm[i].shape) for i in node.inputs],
            "out": list(tm[g.output].shape), "attrs": [[k, str(v)] for k, v in node.attrs],
            "epi": [k for k, _ in g.params], "dtype": dtype, "config": getattr(config, "name", str(config))}
    return f"{g.kind}_" + hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:12]


def workloads(graph, plan, dtype, config) -> dict:
    out = {}
    for g in plan.groups:
        if g.kind not in TUNABLE:
            continue
        key = workload_key(graph, g, dtype, config)
        if key not in out:
            sub = graph.subgraph(g.ops)
            oshape = tuple(graph.tensor_map[g.output].shape)
            hw = tuple(oshape[2:4]) if g.kind == "conv2d" and len(oshape) == 4 else ()
            out[key] = Workload(key, g.kind, sub, g, hw)
        out[key].groups.append(g.name)
    return out


def workload_primfunc(w: Workload):
    """The operator's legalized TIR (LegalizeOps of a one-op Relax function), tagged with the key."""
    import tvm
    from tvm import relax
    from tvm.relax import op as R

    tm = w.graph.tensor_map
    node = w.graph.node(w.group.ops[0])
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType([int(s) for s in tm[n].shape], "float32"))
          for i, n in enumerate(node.inputs[:2])]
    with bb.function("main", xs):
        with bb.dataflow():
            if w.kind == "conv2d":
                a = node.attr
                e = R.nn.conv2d(xs[0], xs[1], strides=a("strides", (1, 1)), padding=a("padding", (0, 0, 0, 0)),
                                dilation=a("dilation", (1, 1)), groups=int(a("groups", 1)))
            else:
                e = R.matmul(xs[0], xs[1])
            out = bb.emit_output(e)
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    pf = [f for gv, f in mod.functions.items() if gv.name_hint != "main"][0]
    pf = pf.with_attr("global_symbol", "main").with_attr("polyinf.workload", w.key)
    return tvm.IRModule({"main": pf})


# ------------------------------------------------------------------ design space
def _main_block(sch):
    """The compute block of the operator (the last block: after the pad block, if any)."""
    blocks = sch.get_child_blocks(sch.get_sblock("root", "main")) if _has_root(sch) else None
    if not blocks:
        raise RuntimeError("no blocks")
    return blocks[-1]


def _has_root(sch):
    try:
        sch.get_sblock("root", "main")
        return True
    except Exception:  # noqa: BLE001
        return False


def make_space(w: Workload, max_moving_free: int = 512):
    """ScheduleFn(sch) sampling the codegen's knobs and annotating them on the compute block."""

    def space(sch):
        blk = _main_block(sch)
        loops = sch.get_loops(blk)
        if w.kind == "conv2d" and w.out_hw:
            OH, OW = w.out_hw
            if OW <= max_moving_free:
                rows = sch.sample_perfect_tile(loops[2], n=2, max_innermost_factor=max(1, max_moving_free // OW))
                sch.split(loops[2], rows)
                sch.annotate(blk, "polyinf.rows", rows[1])
            else:
                pix = sch.sample_categorical(list(PIX), [1.0 / len(PIX)] * len(PIX))
                sch.annotate(blk, "polyinf.pix", pix)
        else:
            pix = sch.sample_categorical(list(PIX), [1.0 / len(PIX)] * len(PIX))
            sch.annotate(blk, "polyinf.pix", pix)
        piece = sch.sample_categorical(list(DMA_PIECES), [1.0 / len(DMA_PIECES)] * len(DMA_PIECES))
        sch.annotate(blk, "polyinf.dma_piece", piece)
        ps = sch.sample_categorical(list(PSUM_BUFS), [1.0 / len(PSUM_BUFS)] * len(PSUM_BUFS))
        sch.annotate(blk, "polyinf.psum_bufs", ps)
        return sch

    return space


def knobs_from_mod(mod, w: Workload) -> dict:
    """Read the ``polyinf.*`` annotations back from a scheduled IRModule."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    blk = sch.get(_main_block(sch))
    knobs = {}
    for k, v in blk.annotations.items():
        if str(k).startswith("polyinf."):
            knobs[str(k)[len("polyinf."):]] = int(v)
    if "rows" in knobs and w.out_hw:
        knobs["pix"] = int(knobs.pop("rows")) * int(w.out_hw[1])
    return knobs


# ------------------------------------------------------------------ measuring on the simulator
_RESULTS: dict = {}
_LOCK = threading.Lock()


def measure(w: Workload, knobs: dict, config, dtype: str) -> dict:
    """Compile the kernel alone with ``knobs`` and simulate it: {cycles, seconds, hbm_bytes}."""
    from tvm_poly.driver import compile_graph
    from tvm_poly.plan import GroupPlan, Plan

    install_lowerings()
    g = w.group
    ps = dict(g.params)
    if knobs:
        ps["knobs"] = tuple(sorted(knobs.items()))
    g2 = GroupPlan(g.name, g.kind, g.ops, g.inputs, g.output, tuple(sorted(ps.items())))
    from tvm_poly.planners.per_op import plan_per_op
    base = plan_per_op(w.graph, config, dtype)
    plan = Plan("tuned", dtype, base.tensors, tuple(g2 if x.name == g.name else x for x in base.groups))
    cp = compile_graph(w.graph, config, dtype=dtype, plan=plan)
    rng = np.random.default_rng(0)
    vals = {n: rng.standard_normal(w.graph.tensor(n).shape).astype(np.float32) for n in w.graph.inputs}
    _, rep = cp.run(vals, check=False)
    cycles = int(rep.cycles)
    return {"cycles": cycles, "seconds": float(rep.latency_us) * 1e-6,
            "hbm_bytes": int(rep.hbm_read_bytes + rep.hbm_write_bytes)}


def _ms():
    from tvm.s_tir import meta_schedule as ms

    return ms


def _make_builder_runner(workloads_by_key, config, dtype):
    ms = _ms()
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult
    from tvm.ir.utils import derived_object

    @derived_object
    class SimBuilder(PyBuilder):
        """'Builds' a candidate: our codegen with its knobs + one simulation (key = artifact)."""

        def build(self, build_inputs):
            out = []
            for bi in build_inputs:
                try:
                    pf = bi.mod["main"]
                    key = str(pf.attrs["polyinf.workload"])
                    w = workloads_by_key[key]
                    knobs = knobs_from_mod(bi.mod, w)
                    res = measure(w, knobs, config, dtype)
                    art = f"polyinf-sim:{key}:{len(_RESULTS)}"
                    with _LOCK:
                        _RESULTS[art] = (res, knobs)
                    out.append(BuilderResult(art, None))
                except Exception as e:  # noqa: BLE001 - a candidate the codegen cannot build
                    out.append(BuilderResult(None, f"{type(e).__name__}: {e}"))
            return out

    @derived_object
    class SimFuture(PyRunnerFuture):
        def __init__(self, secs):
            super().__init__()
            self.secs = secs

        def done(self):
            return True

        def result(self):
            return RunnerResult([float(self.secs)], None)

    @derived_object
    class SimRunner(PyRunner):
        """Returns the simulated seconds of a built candidate."""

        def run(self, runner_inputs):
            return [SimFuture(_RESULTS[str(ri.artifact_path)][0]["seconds"]) for ri in runner_inputs]

    return SimBuilder(), SimRunner()


# ------------------------------------------------------------------ tuning
@dataclass
class TuneOptions:
    trials: int = 8  # per workload
    strategy: str = "replay-trace"  # or "evolutionary"
    work_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "tvm-poly", "tuning_db")
    seed: int = 0


def _database(work_dir):
    ms = _ms()
    os.makedirs(work_dir, exist_ok=True)
    return ms.database.JSONDatabase(os.path.join(work_dir, "database_workload.json"),
                                    os.path.join(work_dir, "database_tuning_record.json"))


def _best_knobs(db, mod, w, target):
    """The best record's knobs (its trace replayed on the workload), or None."""
    from tvm import s_tir

    if not db.has_workload(mod):
        return None, 0
    wl = db.commit_workload(mod)
    recs = db.get_top_k(wl, 1 << 20)
    if not recs:
        return None, 0
    best = recs[0]
    sch = s_tir.Schedule(mod)
    best.trace.apply_to_schedule(sch, remove_postproc=True)
    return (knobs_from_mod(sch.mod, w), float(np.mean([float(x) for x in best.run_secs]))), len(recs)


def tune_plan(graph, plan, config, dtype: str, options: TuneOptions = None, log=None) -> dict:
    """{group name: knobs} for the plan's conv2d/matmul kernels (empty dict = default schedule)."""
    import tvm

    options = options or TuneOptions()
    ms = _ms()
    install_lowerings()
    wls = workloads(graph, plan, dtype, config)
    os.makedirs(options.work_dir, exist_ok=True)
    # one process at a time per database: JSONDatabase appends workloads by the index it counted
    # when it loaded the file, so two writers would cross their records' workload indices
    import fcntl

    import tempfile

    tag = hashlib.sha1(os.path.abspath(options.work_dir).encode()).hexdigest()[:16]
    lock = open(os.path.join(tempfile.gettempdir(), f"tvm-poly-tune-{tag}.lock"), "w")  # not in the DB dir
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        return _tune_locked(wls, config, dtype, options, log, ms)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _tune_locked(wls, config, dtype, options, log, ms):
    import tvm

    db = _database(options.work_dir)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    builder, runner = _make_builder_runner(wls, config, dtype)
    chosen, stats = {}, {}
    for key, w in wls.items():
        mod = workload_primfunc(w)
        best, nrec = _best_knobs(db, mod, w, target)
        if nrec < options.trials:
            t0 = time.perf_counter()
            kw = dict(max_trials_global=options.trials - nrec,
                      num_trials_per_iter=max(1, min(options.trials - nrec, 8)),
                      builder=builder, runner=runner, database=db,
                      cost_model="random" if options.strategy == "replay-trace" else "xgb",
                      measure_callbacks=[ms.measure_callback.AddToDatabase()] +
                      ([ms.measure_callback.UpdateCostModel()] if options.strategy != "replay-trace" else []),
                      task_scheduler="round-robin",
                      space=ms.space_generator.ScheduleFn(make_space(w), sch_rules=[], postprocs=[],
                                                          mutator_probs={}),
                      strategy=options.strategy, num_tuning_cores=1, seed=options.seed)
            if _accepts_task_name():
                kw["task_name"] = key
            import tempfile
            import contextlib
            import io

            # MetaSchedule logs per-task tables to stdout (its console handler binds sys.stdout
            # when tune_tir starts): keep them out of our output; its log files go to a temp dir
            # MetaSchedule's dictConfig re-lists the handlers on its logger by name: an unnamed one
            # (pytest's capture handler, for one) makes it fail ('NoneType' has no 'format')
            import logging

            mslog = logging.getLogger("tvm.s_tir.meta_schedule")
            for h in list(mslog.handlers):
                if h.get_name() is None:
                    mslog.removeHandler(h)
            with tempfile.TemporaryDirectory(prefix="polyinf-ms-") as logs, \
                    contextlib.redirect_stdout(io.StringIO()), _without_tensor_intrinsics():
                ms.tune_tir(mod, target, logs, **kw)
            if log:
                log(f"tuned {key} ({len(w.groups)} kernels) in {time.perf_counter() - t0:.1f} s")
            best, nrec = _best_knobs(db, mod, w, target)
        default = measure(w, {}, config, dtype)
        knobs = {}
        if best is not None:
            knobs_b = best[0]
            res_b = measure(w, knobs_b, config, dtype)
            if res_b["cycles"] < default["cycles"]:
                knobs = knobs_b
            stats[key] = {"default_cycles": default["cycles"], "tuned_cycles": min(res_b["cycles"], default["cycles"]),
                          "knobs": knobs, "records": nrec, "kernels": list(w.groups)}
        else:
            stats[key] = {"default_cycles": default["cycles"], "tuned_cycles": default["cycles"], "knobs": {},
                          "records": 0, "kernels": list(w.groups)}
        for gname in w.groups:
            chosen[gname] = knobs
    return {"knobs": chosen, "workloads": stats}


class _without_tensor_intrinsics:
    """TuneContext imports ``tvm.s_tir.tensor_intrin`` only to register tensorization intrinsics
    (CUDA, x86, ARM ... parsed from TVMScript: 20-50 s, most of MetaSchedule's start-up).  Our
    design space never tensorizes, so while we tune, that import resolves to an empty module; the
    placeholder is removed afterwards, so a later real import still gets the real package."""

    def __enter__(self):
        import sys
        import types

        self.placed = "tvm.s_tir.tensor_intrin" not in sys.modules
        if self.placed:
            sys.modules["tvm.s_tir.tensor_intrin"] = types.ModuleType("tvm.s_tir.tensor_intrin")
        return self

    def __exit__(self, *exc):
        import sys

        if self.placed:
            sys.modules.pop("tvm.s_tir.tensor_intrin", None)
            import tvm.s_tir as _s
            if isinstance(getattr(_s, "tensor_intrin", None), type(sys)) and \
                    not hasattr(_s.tensor_intrin, "__file__"):
                delattr(_s, "tensor_intrin")
        return False


def _accepts_task_name():
    import inspect

    return "task_name" in inspect.signature(_ms().tune_tir).parameters
