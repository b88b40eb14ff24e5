"""Event-driven NeuronCore simulator: real numbers (NumPy on whole tiles) and exact timing.

``simulate(program, config, tensors, *, check=True, trace=False) -> SimResult``

* Engines (Tensor, Vector, Scalar, GpSimd) and DMA queues each run their stream in order,
  concurrently.  An instruction starts at the earliest time when its engine is free, every
  ``Wait(sem, v)`` is met (the v-th signal of ``sem`` has completed) and, for the documented port
  conflicts, the shared port is free (Vector and GpSimd share the SBUF port, Vector and Scalar the
  PSUM port).  Costs come from :mod:`target.cost`; time is integer ticks (the least common
  multiple of the config's clocks), so every engine cycle is exact.
* Instructions take effect (read and write the NumPy memories) at their start, in start-time
  order, which is a linearisation of the happens-before order; with ``check=True`` the
  happens-before race detector (:mod:`target.hazards`) guarantees the result does not depend on
  the order chosen among concurrent instructions.
* Strictness: addresses, partition-start rule, engine/instruction match, operand memories,
  matmul limits, PSUM banks, shapes and dtypes are always checked (before anything runs); with
  ``check=True`` reads of never-written bytes (shadow "written" bitmaps, also for outputs that are
  not fully written), PSUM accumulation-group misuse and data races are refused as well.
* Memories an engine may use: Tensor reads SBUF and writes PSUM; Vector/Scalar read and write
  SBUF or PSUM (GpSimd SBUF only unless ``gpsimd_psum_access``); DMA moves HBM<->SBUF,
  SBUF<->SBUF and HBM<->HBM (not PSUM), converting fp32/bf16/fp16 when the dtypes differ.
  Elementwise operands must agree in partitions and elements per partition (free dims are
  flattened row-major, so a [P, 4, 8] source may feed a [P, 32] destination).
* Time: engine cycles are exact integer ticks; a DMA's duration is rounded up to a whole tick
  (1/5.6 ns = 179 ps on inf2).  Deadlocks (a wait that can never be met, statically or because
  of a cycle of waits) are refused naming the stuck instructions.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from . import cost as _cost
from .config import HardwareConfig, load_config
from .errors import (AccumulationGroupError, AddressError, BindingError, DeadlockError, DtypeError, MatmulLimitError,
                     MemoryKindError, PartitionStartError, ProgramError, PsumBankError, ShapeError,
                     UninitializedReadError, WrongEngineError, SemaphoreError)
from .isa import (ACT_FUNCS, ALLOWED, ALU_OPS, AP, ENGINES, Activation, DmaCopy, Iota, MatMul, Mem,
                  Memset, Program, TensorCopy, TensorReduce, TensorScalar, TensorTensor, Transpose,
                  is_dma_stream)
from .memory import NP_DTYPES, LiveBytes, Memory
from .report import Report, TagReport

F32 = np.float32


@dataclass
class SimResult:
    """``outputs``: output HbmTensor name -> array (tensor shape and dtype); ``report``;
    ``trace``: Chrome trace events (``trace=True``); ``timeline``: one tuple per instruction in
    commit order, ``(stream index into program.streams, instruction index, start tick, busy-end
    tick, done tick)`` -- busy-end is when the engine/queue is free again, done when results and
    signals are visible (busy-end + fixed access latency on compute engines).  A tick is
    ``tick_us`` microseconds."""
    outputs: dict
    report: Report
    trace: list | None = None
    config: HardwareConfig | None = None
    program: Program | None = None
    timeline: list = field(default_factory=list)  # (stream, index, start_tick, end_tick, done_tick)

    @property
    def tick_us(self) -> float:
        return 1e3 / self.config.tick_khz


def _text(ins) -> str:
    try:
        from .program_text import format_instr
        return format_instr(ins)
    except Exception:  # pragma: no cover - never let error formatting hide the error
        return repr(ins)


# ------------------------------------------------------------------ numerics
def _act(func: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if func in ("identity", "copy"):
            return x
        if func == "relu":
            return np.maximum(x, F32(0))
        if func == "exp":
            return np.exp(x)
        if func == "tanh":
            return np.tanh(x)
        if func == "sigmoid":
            return F32(1) / (F32(1) + np.exp(-x))
        if func == "gelu":  # tanh approximation (as the hardware's gelu_apprx_tanh)
            return F32(0.5) * x * (F32(1) + np.tanh(F32(0.7978845608028654) * (x + F32(0.044715) * x * x * x)))
        if func == "sqrt":
            return np.sqrt(x)
        if func == "rsqrt":
            return F32(1) / np.sqrt(x)
        if func == "reciprocal":
            return F32(1) / x
        if func == "square":
            return x * x
        if func == "log":
            return np.log(x)
    raise ValueError(func)


def _alu(op: str, a, b):
    with np.errstate(all="ignore"):
        if op == "add":
            return a + b
        if op == "subtract":
            return a - b
        if op == "multiply":
            return a * b
        if op == "divide":
            return a / b
        if op == "max":
            return np.maximum(a, b)
        if op == "min":
            return np.minimum(a, b)
        if op == "bypass":
            return a + np.zeros_like(b) if isinstance(b, np.ndarray) else a
        if op == "is_equal":
            return np.equal(a, b).astype(np.float32)
    raise ValueError(op)


_REDUCE = {"add": np.sum, "max": np.max, "min": np.min}


# ------------------------------------------------------------------ decoded instruction
class _Dec:
    __slots__ = ("s", "i", "ins", "stream", "busy", "done", "ports", "waits", "signals", "reads",
                 "writes", "tag", "cycles", "where")


class Simulator:
    def __init__(self, program: Program, config, *, check: bool = True, trace: bool = False):
        self.p = program
        self.cfg = load_config(config) if not isinstance(config, HardwareConfig) else config
        self.check = check
        self.want_trace = trace
        cfg = self.cfg
        self.sbuf = Memory(Mem.SBUF, cfg.sbuf_partitions, cfg.sbuf_bytes_per_partition)
        self.psum = Memory(Mem.PSUM, cfg.psum_partitions, cfg.psum_banks * cfg.psum_bank_bytes)
        extent = 0
        for t in program.hbm:
            if t.dtype not in NP_DTYPES:
                raise ProgramError(f"HBM tensor {t.name!r} has unknown dtype {t.dtype!r}", rule="hbm-tensor")
            if t.offset < 0:
                raise AddressError(f"HBM tensor {t.name!r} has negative offset {t.offset}")
            extent = max(extent, t.offset + t.nbytes)
        if extent > cfg.hbm_bytes:
            raise AddressError(f"program's HBM tensors end at byte {extent}, beyond the config's HBM size "
                               f"{cfg.hbm_bytes}")
        names = set()
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in program.hbm)
        for t in program.hbm:
            if t.name in names:
                raise ProgramError(f"HBM tensor name {t.name!r} declared twice", rule="hbm-tensor")
            names.add(t.name)
            if t.kind not in ("input", "output", "weight", "scratch"):
                raise ProgramError(f"HBM tensor {t.name!r} has unknown kind {t.kind!r}", rule="hbm-tensor")
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1 and a1 > a0 and b1 > b0:
                raise AddressError(f"HBM tensors {an!r} [{a0}, {a1}) and {bn!r} [{b0}, {b1}) overlap")
        self.hbm = Memory(Mem.HBM, 1, max(extent, 1), limit=cfg.hbm_bytes)
        self.mems = {Mem.SBUF: self.sbuf, Mem.PSUM: self.psum, Mem.HBM: self.hbm}
        self.tps = {}  # ticks per cycle per stream
        self.decoded: list[list[_Dec]] = []
        self.stream_names = [n for n, _ in program.streams]
        self.open_groups: list = []  # (p0, p1, lo, hi, where) of open PSUM accumulation groups
        self.flows: list = []  # trace only: (signaller stream, index, waiter stream, index) binding waits
        self._decode()

    # ------------------------------------------------------------------ static checks
    def _err(self, cls, d: _Dec, msg: str):
        raise cls(msg, where=d.where, text=_text(d.ins))

    def _check_ap(self, d: _Dec, ap, role: str, allowed_mems):
        if not isinstance(ap, AP):
            self._err(ShapeError, d, f"{role} is not an access pattern: {ap!r}")
        if ap.mem not in allowed_mems:
            self._err(MemoryKindError, d, f"{role} is in {ap.mem.value}; {d.stream} {type(d.ins).__name__} "
                                          f"allows {'/'.join(m.value for m in allowed_mems)}")
        msg = self.mems[ap.mem].check(ap)
        if msg:
            self._err(AddressError, d, f"{role}: {msg}")
        if ap.mem != Mem.HBM and not is_dma_stream(d.stream):
            n, s = ap.num_partitions, ap.start_partition
            ok = (s == 0) if n > 64 else (s in (0, 64)) if n > 32 else (s in (0, 32, 64, 96))
            if not ok:
                self._err(PartitionStartError, d,
                          f"{role} covers {n} partitions starting at {s}; rule: >64 partitions start at 0, "
                          f"33-64 at 0 or 64, <=32 at 0/32/64/96")

    def _same_shape(self, d, a: AP, b: AP, ra: str, rb: str):
        if a.num_partitions != b.num_partitions or a.free_elems != b.free_elems:
            self._err(ShapeError, d, f"{ra} is [{a.num_partitions}, {a.free_elems}] but {rb} is "
                                     f"[{b.num_partitions}, {b.free_elems}] (partitions, elements per partition)")

    def _scalar_ap(self, d, x, role: str, parts: int, mems):
        if isinstance(x, AP):
            self._check_ap(d, x, role, mems)
            if x.num_partitions != parts or x.free_elems != 1:
                self._err(ShapeError, d, f"{role} must be a per-partition column [{parts}, 1], got "
                                         f"[{x.num_partitions}, {x.free_elems}]")
            return [x]
        if not isinstance(x, (int, float)):
            self._err(ShapeError, d, f"{role} must be a number or an AP, got {x!r}")
        return []

    def _decode(self):
        cfg = self.cfg
        seen = set()
        SP = (Mem.SBUF, Mem.PSUM)
        self.sem_signals: dict[str, list[tuple[int, int]]] = {}  # sem -> [(stream, instr)] program order per stream
        for s, (name, instrs) in enumerate(self.p.streams):
            if name in seen:
                raise ProgramError(f"stream {name!r} appears twice", rule="stream")
            seen.add(name)
            if is_dma_stream(name):
                if int(name[3:]) >= cfg.dma_queues:
                    raise ProgramError(f"stream {name!r}: config {cfg.name} has {cfg.dma_queues} DMA queues "
                                       f"(dma0..dma{cfg.dma_queues - 1})", rule="stream")
                engine = "dma"
            elif name in ENGINES:
                engine = name
            else:
                raise ProgramError(f"unknown stream {name!r}; streams are {ENGINES} and dma0..dma{cfg.dma_queues - 1}",
                                   rule="stream")
            tpc = cfg.ticks_per_cycle(name)
            self.tps[name] = tpc
            lat = cfg.access_overhead_cycles * tpc
            out = []
            for i, ins in enumerate(instrs):
                d = _Dec()
                d.s, d.i, d.ins, d.stream, d.where = s, i, ins, name, f"{name}[{i}]"
                t = type(ins)
                if t not in ALLOWED:
                    raise ProgramError(f"not an instruction: {ins!r}", where=d.where, text=repr(ins), rule="stream")
                if engine not in ALLOWED[t]:
                    self._err(WrongEngineError, d, f"{t.__name__} cannot run on the {name} stream "
                                                   f"(allowed: {', '.join(ALLOWED[t])})")
                d.tag = ins.tag
                d.waits = tuple((w.sem, w.value) for w in ins.waits)
                d.signals = tuple(ins.signals)
                for sem in d.signals:
                    self.sem_signals.setdefault(sem, []).append((s, i))
                reads, writes = [], []
                pm = SP if (engine != "gpsimd" or cfg.gpsimd_psum_access) else (Mem.SBUF,)
                if t is MatMul:
                    self._check_ap(d, ins.dst, "dst", (Mem.PSUM,))
                    self._check_ap(d, ins.stationary, "stationary", (Mem.SBUF,))
                    self._check_ap(d, ins.moving, "moving", (Mem.SBUF,))
                    k, m, n = ins.stationary.num_partitions, ins.stationary.free_elems, ins.moving.free_elems
                    if ins.moving.num_partitions != k:
                        self._err(ShapeError, d, f"stationary has {k} partitions but moving has "
                                                 f"{ins.moving.num_partitions} (contraction K must match)")
                    if k > cfg.pe_rows:
                        self._err(MatmulLimitError, d, f"K={k} partitions exceeds the {cfg.pe_rows} PE rows")
                    if m > cfg.pe_cols:
                        self._err(MatmulLimitError, d, f"M={m} stationary free size exceeds the {cfg.pe_cols} PE columns")
                    if n > cfg.max_moving_free:
                        self._err(MatmulLimitError, d, f"N={n} moving free size exceeds {cfg.max_moving_free}")
                    if ins.dst.num_partitions != m or ins.dst.free_elems != n:
                        self._err(ShapeError, d, f"dst is [{ins.dst.num_partitions}, {ins.dst.free_elems}] but "
                                                 f"the product is [M={m}, N={n}]")
                    if ins.dst.dtype != "fp32":
                        self._err(DtypeError, d, f"matmul accumulates in fp32; dst dtype is {ins.dst.dtype}")
                    for r, a in (("stationary", ins.stationary), ("moving", ins.moving)):
                        if a.dtype == "int32":
                            self._err(DtypeError, d, f"{r} dtype int32 is not a matmul input type")
                    lo, hi = _psum_range(ins.dst)
                    bb = cfg.psum_bank_bytes
                    if lo // bb != (hi - 1) // bb:
                        self._err(PsumBankError, d, f"dst bytes [{lo}, {hi}) per partition cross a PSUM bank "
                                                    f"boundary (banks of {bb} B)")
                    reads += [ins.stationary, ins.moving]
                    if not ins.start:
                        reads.append(ins.dst)
                    writes.append(ins.dst)
                elif t is Transpose:
                    self._check_ap(d, ins.dst, "dst", (Mem.PSUM,))
                    self._check_ap(d, ins.src, "src", (Mem.SBUF,))
                    p, f = ins.src.num_partitions, ins.src.free_elems
                    if p > cfg.pe_rows or f > cfg.pe_cols:
                        self._err(MatmulLimitError, d, f"transpose of [{p}, {f}] exceeds {cfg.pe_rows}x{cfg.pe_cols}")
                    if ins.dst.num_partitions != f or ins.dst.free_elems != p:
                        self._err(ShapeError, d, f"dst is [{ins.dst.num_partitions}, {ins.dst.free_elems}] but "
                                                 f"the transpose of src [{p}, {f}] is [{f}, {p}]")
                    lo, hi = _psum_range(ins.dst)
                    bb = cfg.psum_bank_bytes
                    if lo // bb != (hi - 1) // bb:
                        self._err(PsumBankError, d, f"dst bytes [{lo}, {hi}) per partition cross a PSUM bank boundary")
                    reads.append(ins.src)
                    writes.append(ins.dst)
                elif t is DmaCopy:
                    dm = (Mem.HBM, Mem.SBUF)
                    self._check_ap(d, ins.dst, "dst", dm)
                    self._check_ap(d, ins.src, "src", dm)
                    if ins.src.num_partitions * ins.src.free_elems != ins.dst.num_partitions * ins.dst.free_elems:
                        self._err(ShapeError, d, f"src has {ins.src.num_partitions * ins.src.free_elems} elements, "
                                                 f"dst {ins.dst.num_partitions * ins.dst.free_elems}")
                    if (ins.src.dtype == "int32") != (ins.dst.dtype == "int32"):
                        self._err(DtypeError, d, f"DMA converts between float types only ({ins.src.dtype} -> "
                                                 f"{ins.dst.dtype})")
                    reads.append(ins.src)
                    writes.append(ins.dst)
                else:
                    self._check_ap(d, ins.dst, "dst", pm)
                    writes.append(ins.dst)
                    P = ins.dst.num_partitions
                    if t is Activation:
                        self._check_ap(d, ins.src, "src", pm)
                        self._same_shape(d, ins.dst, ins.src, "dst", "src")
                        if ins.func not in ACT_FUNCS:
                            self._err(ProgramError, d, f"unknown activation function {ins.func!r}; known: {ACT_FUNCS}")
                        reads.append(ins.src)
                        reads += self._scalar_ap(d, ins.bias, "bias", P, pm)
                        reads += self._scalar_ap(d, ins.scale, "scale", P, pm)
                    elif t is TensorTensor:
                        self._check_ap(d, ins.a, "a", pm)
                        self._check_ap(d, ins.b, "b", pm)
                        self._same_shape(d, ins.dst, ins.a, "dst", "a")
                        self._same_shape(d, ins.dst, ins.b, "dst", "b")
                        if ins.a.mem == Mem.PSUM and ins.b.mem == Mem.PSUM:
                            self._err(MemoryKindError, d, "tensor_tensor inputs may not both be in PSUM")
                        if ins.op not in ALU_OPS:
                            self._err(ProgramError, d, f"unknown ALU op {ins.op!r}; known: {ALU_OPS}")
                        reads += [ins.a, ins.b]
                    elif t is TensorScalar:
                        self._check_ap(d, ins.src, "src", pm)
                        self._same_shape(d, ins.dst, ins.src, "dst", "src")
                        for op in (ins.op0, ins.op1):
                            if op is not None and op not in ALU_OPS:
                                self._err(ProgramError, d, f"unknown ALU op {op!r}; known: {ALU_OPS}")
                        reads.append(ins.src)
                        reads += self._scalar_ap(d, ins.operand0, "operand0", P, pm)
                        if ins.op1 is not None:
                            reads += self._scalar_ap(d, ins.operand1, "operand1", P, pm)
                    elif t is TensorReduce:
                        self._check_ap(d, ins.src, "src", pm)
                        if ins.op not in _REDUCE:
                            self._err(ProgramError, d, f"unknown reduce op {ins.op!r}; known: {sorted(_REDUCE)}")
                        if not 1 <= ins.axes <= len(ins.src.sizes):
                            self._err(ShapeError, d, f"axes={ins.axes} but src has {len(ins.src.sizes)} free dims")
                        kept = 1
                        for x in ins.src.sizes[:len(ins.src.sizes) - ins.axes]:
                            kept *= x
                        if ins.dst.num_partitions != ins.src.num_partitions or ins.dst.free_elems != kept:
                            self._err(ShapeError, d, f"dst is [{ins.dst.num_partitions}, {ins.dst.free_elems}] but "
                                                     f"reducing src {ins.src.shape} over {ins.axes} axes gives "
                                                     f"[{ins.src.num_partitions}, {kept}]")
                        reads.append(ins.src)
                    elif t is TensorCopy:
                        self._check_ap(d, ins.src, "src", pm)
                        self._same_shape(d, ins.dst, ins.src, "dst", "src")
                        reads.append(ins.src)
                    elif t is Memset:
                        if not isinstance(ins.value, (int, float)):
                            self._err(ShapeError, d, f"memset value must be a number, got {ins.value!r}")
                    elif t is Iota:
                        if len(ins.pattern) != len(ins.dst.sizes):
                            self._err(ShapeError, d, f"pattern has {len(ins.pattern)} entries but dst has "
                                                     f"{len(ins.dst.sizes)} free dims")
                d.reads, d.writes = reads, writes
                if t is DmaCopy:
                    d.busy = _cost.dma_ticks(ins, cfg)
                    d.done = d.busy
                    d.cycles = 0
                    d.ports = ()
                else:
                    c = _cost.engine_cycles(ins, cfg)
                    d.cycles = c
                    d.busy = c * tpc
                    d.done = d.busy + lat
                    ports = []
                    mems = {a.mem for a in reads + writes}
                    if engine in ("vector", "gpsimd") and Mem.SBUF in mems:
                        ports.append("sbuf:vector+gpsimd")
                    if engine in ("vector", "scalar") and Mem.PSUM in mems:
                        ports.append("psum:vector+scalar")
                    d.ports = tuple(ports)
                out.append(d)
            self.decoded.append(out)
        # a wait that can never be met
        totals: dict[str, int] = {}
        for sem, lst in self.sem_signals.items():
            totals[sem] = len(lst)
        self.sem_totals = totals
        for dl in self.decoded:
            for d in dl:
                for sem, v in d.waits:
                    if v > totals.get(sem, 0):
                        raise DeadlockError(f"waits for semaphore {sem!r} >= {v} but the whole program signals it "
                                            f"only {totals.get(sem, 0)} times", where=d.where, text=_text(d.ins))

    # ------------------------------------------------------------------ binding
    def bind(self, tensors: dict):
        tensors = tensors or {}
        for t in self.p.hbm:
            if t.kind not in ("input", "weight"):
                continue
            if t.name not in tensors:
                raise BindingError(f"no value given for {t.kind} tensor {t.name!r} (shape {t.shape}, {t.dtype})")
            arr = np.asarray(tensors[t.name])
            if tuple(arr.shape) != tuple(t.shape):
                raise BindingError(f"{t.kind} tensor {t.name!r} expects shape {tuple(t.shape)}, got {tuple(arr.shape)}")
            want = NP_DTYPES[t.dtype]
            if arr.dtype != want:
                arr = arr.astype(want)
            self.hbm.data[0, t.offset:t.offset + t.nbytes] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            self.hbm.written[0, t.offset:t.offset + t.nbytes] = 1

    # ------------------------------------------------------------------ execution
    def _read(self, ap: AP) -> np.ndarray:
        return self.mems[ap.mem].read_f32(ap)

    def _write(self, ap: AP, val) -> None:
        v = self.mems[ap.mem].view(ap)
        v[...] = np.asarray(val).reshape(v.shape).astype(v.dtype, copy=False)

    def _scalar(self, x):
        if isinstance(x, AP):
            return self._read(x).reshape(x.num_partitions, 1)
        return F32(x)

    def _groups(self, d: _Dec):
        """Accumulation-group discipline (check=True).  A MatMul with start=True opens a group on its
        dst (closed again by stop=True); start=False must land inside an open group; a new group
        may not overlap an open one; no other instruction may touch an open group's bytes."""
        from .memory import ap_extent
        ins = d.ins
        og = self.open_groups
        if type(ins) is MatMul:
            dst = ins.dst
            lo, hi = ap_extent(dst)
            p0, p1 = dst.start_partition, dst.start_partition + dst.num_partitions
            hit = [g for g in og if g[0] < p1 and p0 < g[1] and g[2] < hi and lo < g[3]]
            if ins.start:
                if hit:
                    self._err(AccumulationGroupError, d, f"starts an accumulation group over the open group "
                                                         f"started by {hit[0][4]} (no stop=True in between)")
                if not ins.stop:
                    og.append((p0, p1, lo, hi, d.where))
            else:
                inside = [g for g in hit if g[0] <= p0 and p1 <= g[1] and g[2] <= lo and hi <= g[3]]
                if not inside:
                    self._err(AccumulationGroupError, d, "accumulates (start=False) into PSUM bytes outside any open "
                                                         "accumulation group (no start=True before it)")
                if ins.stop:
                    og.remove(inside[0])
            return
        for ap in d.reads + d.writes:
            if ap.mem != Mem.PSUM:
                continue
            lo, hi = ap_extent(ap)
            p0, p1 = ap.start_partition, ap.start_partition + ap.num_partitions
            for g in og:
                if g[0] < p1 and p0 < g[1] and g[2] < hi and lo < g[3]:
                    self._err(AccumulationGroupError, d, f"{_role(ins, ap)} touches PSUM bytes of the accumulation "
                                                         f"group opened by {g[4]}, which has not been closed (stop=True)")

    def _exec(self, d: _Dec):
        ins = d.ins
        t = type(ins)
        if self.check:
            for ap in d.reads:
                if not self.mems[ap.mem].all_written(ap):
                    role = _role(ins, ap)
                    self._err(UninitializedReadError, d, f"{role} reads {ap.mem.value} bytes never written")
            if t is MatMul or self.open_groups:
                self._groups(d)
        if t is MatMul:
            k = ins.stationary.num_partitions
            st = self._read(ins.stationary).reshape(k, -1)
            mv = self._read(ins.moving).reshape(k, -1)
            res = st.T @ mv
            if not ins.start:
                res = self._read(ins.dst).reshape(res.shape) + res
            self._write(ins.dst, res)
        elif t is Transpose:
            x = self._read(ins.src).reshape(ins.src.num_partitions, -1)
            self._write(ins.dst, x.T)
        elif t is Activation:
            P = ins.src.num_partitions
            x = self._read(ins.src).reshape(P, -1)
            x = x * self._scalar(ins.scale) + self._scalar(ins.bias)
            self._write(ins.dst, _act(ins.func, x.astype(F32, copy=False)))
        elif t is TensorTensor:
            P = ins.dst.num_partitions
            a = self._read(ins.a).reshape(P, -1)
            b = self._read(ins.b).reshape(P, -1)
            self._write(ins.dst, _alu(ins.op, a, b))
        elif t is TensorScalar:
            P = ins.src.num_partitions
            x = _alu(ins.op0, self._read(ins.src).reshape(P, -1), self._scalar(ins.operand0))
            if ins.op1 is not None:
                x = _alu(ins.op1, x, self._scalar(ins.operand1))
            self._write(ins.dst, x)
        elif t is TensorReduce:
            x = self._read(ins.src)
            nd = len(ins.src.sizes)
            axes = tuple(range(1 + nd - ins.axes, 1 + nd))
            self._write(ins.dst, _REDUCE[ins.op](x, axis=axes))
        elif t is TensorCopy:
            src = self.mems[ins.src.mem].view(ins.src)
            if ins.src.dtype == ins.dst.dtype:
                self._write(ins.dst, np.array(src))
            else:
                self._write(ins.dst, src.astype(F32))
        elif t is Memset:
            v = self.mems[ins.dst.mem].view(ins.dst)
            v[...] = np.asarray(ins.value, dtype=F32).astype(v.dtype)
        elif t is Iota:
            dst = ins.dst
            val = np.full((dst.num_partitions,) + (1,) * len(dst.sizes), ins.base, dtype=np.int64)
            val = val + (np.arange(dst.num_partitions, dtype=np.int64) * ins.channel_multiplier).reshape(
                (-1,) + (1,) * len(dst.sizes))
            for j, (n, pat) in enumerate(zip(dst.sizes, ins.pattern)):
                shp = [1] * (1 + len(dst.sizes))
                shp[1 + j] = n
                val = val + (np.arange(n, dtype=np.int64) * pat).reshape(shp)
            v = self.mems[dst.mem].view(dst)
            v[...] = np.broadcast_to(val, v.shape).astype(v.dtype)
        elif t is DmaCopy:
            src = self.mems[ins.src.mem].view(ins.src)
            dst = self.mems[ins.dst.mem].view(ins.dst)
            if ins.src.dtype == ins.dst.dtype:
                dst[...] = (src if ins.src.mem != ins.dst.mem else np.array(src)).reshape(dst.shape)
            else:
                dst[...] = src.astype(F32).reshape(dst.shape).astype(dst.dtype)
        for ap in d.writes:
            self.mems[ap.mem].mark_written(ap)

    # ------------------------------------------------------------------ the event loop
    def run(self) -> SimResult:
        from .hazards import HazardChecker
        cfg = self.cfg
        S = len(self.decoded)
        names = self.stream_names
        is_dma = [is_dma_stream(n) for n in names]
        hz = HazardChecker(self) if self.check else None
        pos = [0] * S
        free = [0] * S  # engine free time (ticks)
        sem_times: dict[str, list] = {}  # sem -> sorted [(tick, seq, stream, index)]
        port_free: dict[str, int] = {}
        waiting_on: dict[str, set] = {}
        port_users: dict[str, set] = {}
        cand = [None] * S  # (start, binding_wait_src) or None if blocked
        dirty = set(range(S))
        remaining = sum(len(x) for x in self.decoded)
        seq = 0
        timeline = []
        end_tick = 0
        stats = _Stats(cfg, names)
        live = {Mem.SBUF: LiveBytes(self.sbuf.rows, self.sbuf.row_bytes),
                Mem.PSUM: LiveBytes(self.psum.rows, self.psum.row_bytes)}
        self.live = live
        tensor_s = names.index("tensor") if "tensor" in names else -1

        def compute(s):
            d = self.decoded[s][pos[s]]
            t = free[s]
            bind_src = None
            bind_t = -1
            for sem, v in d.waits:
                if v <= 0:
                    continue
                lst = sem_times.get(sem)
                if lst is None or len(lst) < v:
                    return None
                e = lst[v - 1]
                tt = e[0]
                if tt > bind_t:
                    bind_t, bind_src = tt, e
                if tt > t:
                    t = tt
            for p in d.ports:
                pf = port_free.get(p, 0)
                if pf > t:
                    t = pf
            return (t, bind_t, bind_src)

        def register(s):
            d = self.decoded[s][pos[s]]
            for sem, _ in d.waits:
                waiting_on.setdefault(sem, set()).add(s)
            for p in d.ports:
                port_users.setdefault(p, set()).add(s)

        def unregister(s):
            d = self.decoded[s][pos[s]]
            for sem, _ in d.waits:
                waiting_on[sem].discard(s)
            for p in d.ports:
                port_users[p].discard(s)

        for s in range(S):
            if self.decoded[s]:
                register(s)
        while remaining:
            for s in dirty:
                if pos[s] < len(self.decoded[s]):
                    cand[s] = compute(s)
                else:
                    cand[s] = None
            dirty = set()
            best = -1
            bt = None
            for s in range(S):
                c = cand[s]
                if c is not None and (bt is None or c[0] < bt):
                    bt, best = c[0], s
            if best < 0:
                self._deadlock(pos, sem_times)
            s = best
            start, bind_t, bind_src = cand[s]
            d = self.decoded[s][pos[s]]
            # effects
            if hz is not None:
                hz.commit(d)
            self._exec(d)
            busy_end = start + d.busy
            done = start + d.done
            free_before = free[s]
            gap = start - free_before
            if gap > 0 and not is_dma[s]:
                if bind_src is not None and bind_t >= start:
                    stats.sem_wait[names[s]] += gap // self.tps[names[s]]
                    if s == tensor_s and is_dma[bind_src[2]]:
                        stats.stall(d, gap // self.tps["tensor"])
                else:
                    stats.port_wait[names[s]] += gap // self.tps[names[s]]
            free[s] = busy_end
            for p in d.ports:
                port_free[p] = busy_end
                dirty |= port_users.get(p, set())
            for sem in d.signals:
                seq += 1
                bisect.insort(sem_times.setdefault(sem, []), (done, seq, s, d.i))
                dirty |= waiting_on.get(sem, set())
            stats.add(d, start, busy_end, done)
            for ap in d.reads:
                lv = live.get(ap.mem)
                if lv is not None:
                    lv.read(ap, done)
            for ap in d.writes:
                lv = live.get(ap.mem)
                if lv is not None:
                    lv.write(ap, start)
            timeline.append((s, d.i, start, busy_end, done))
            if self.want_trace and bind_src is not None and bind_t >= free_before:
                self.flows.append((bind_src[2], bind_src[3], s, d.i))
            end_tick = max(end_tick, done)
            unregister(s)
            pos[s] += 1
            remaining -= 1
            if pos[s] < len(self.decoded[s]):
                register(s)
            dirty.add(s)
        outputs = {}
        for t in self.p.hbm:
            if t.kind != "output":
                continue
            raw = self.hbm.data[0, t.offset:t.offset + t.nbytes]
            if self.check and not self.hbm.written[0, t.offset:t.offset + t.nbytes].all():
                n = int((self.hbm.written[0, t.offset:t.offset + t.nbytes] == 0).sum())
                raise UninitializedReadError(f"output tensor {t.name!r}: {n} of its {t.nbytes} bytes were never written")
            outputs[t.name] = raw.copy().view(NP_DTYPES[t.dtype]).reshape(t.shape)
        report = stats.report(self, end_tick)
        res = SimResult(outputs=outputs, report=report, config=cfg, program=self.p, timeline=timeline)
        if self.want_trace:
            from .trace import build_trace
            res.trace = build_trace(self, timeline)
        return res

    def _deadlock(self, pos, sem_times):
        stuck = []
        for s, dl in enumerate(self.decoded):
            if pos[s] >= len(dl):
                continue
            d = dl[pos[s]]
            unmet = [f"{sem}>={v} (reached {len(sem_times.get(sem, []))})" for sem, v in d.waits
                     if len(sem_times.get(sem, [])) < v]
            stuck.append(f"{d.where}: {_text(d.ins)} waits {', '.join(unmet)}")
        raise DeadlockError("no stream can proceed; stuck instructions:\n  " + "\n  ".join(stuck))


def _role(ins, ap) -> str:
    for name in ("stationary", "moving", "src", "a", "b", "bias", "scale", "operand0", "operand1", "dst"):
        if getattr(ins, name, None) is ap:
            return name
    return "operand"


def _psum_range(ap: AP) -> tuple[int, int]:
    from .memory import ap_extent
    return ap_extent(ap)


class _Stats:
    def __init__(self, cfg, names):
        self.cfg = cfg
        self.names = names
        self.tags: dict[str, dict] = {}
        self.eng = {e: 0 for e in ENGINES}
        self.sem_wait = {e: 0 for e in ENGINES}
        self.port_wait = {e: 0 for e in ENGINES}
        self.dma_intervals: dict[str, list] = {}
        self.tot = {k: 0 for k in ("hbm_read_bytes", "hbm_write_bytes", "dma_transfer_count",
                                   "dma_transfer_total_bytes", "sbuf_read_bytes", "sbuf_write_bytes",
                                   "dma_stall_cycles", "macs", "num_instructions")}

    def _tag(self, tag):
        t = self.tags.get(tag)
        if t is None:
            t = self.tags[tag] = {k: 0 for k in self.tot}
            t["engine_active_cycles"] = {}
        return t

    def stall(self, d, cycles):
        self.tot["dma_stall_cycles"] += cycles
        self._tag(d.tag)["dma_stall_cycles"] += cycles

    def add(self, d, start, busy_end, done):
        t = self._tag(d.tag)
        ins = d.ins
        inc = {"num_instructions": 1}
        if isinstance(ins, DmaCopy):
            nb = _cost.dma_bytes(ins)
            inc["dma_transfer_count"] = 1
            inc["dma_transfer_total_bytes"] = nb
            if ins.src.mem == Mem.HBM:
                inc["hbm_read_bytes"] = ins.src.nbytes
            if ins.dst.mem == Mem.HBM:
                inc["hbm_write_bytes"] = ins.dst.nbytes
            self.dma_intervals.setdefault(d.stream, []).append((start, busy_end))
        else:
            self.eng[d.stream] += d.cycles
            ea = t["engine_active_cycles"]
            ea[d.stream] = ea.get(d.stream, 0) + d.cycles
        if isinstance(ins, MatMul):
            inc["macs"] = ins.stationary.num_partitions * ins.stationary.free_elems * ins.moving.free_elems
        sr = sum(a.nbytes for a in d.reads if a.mem == Mem.SBUF)
        sw = sum(a.nbytes for a in d.writes if a.mem == Mem.SBUF)
        if sr:
            inc["sbuf_read_bytes"] = sr
        if sw:
            inc["sbuf_write_bytes"] = sw
        for k, v in inc.items():
            t[k] += v
            self.tot[k] += v

    def report(self, sim: Simulator, end_tick: int) -> Report:
        cfg = self.cfg
        tick_hz = cfg.tick_khz * 1000
        rc = cfg.ticks_per_cycle("dma0")  # report clock
        us = lambda ticks: ticks * 1e6 / tick_hz
        allint = []
        qus = {}
        for q, iv in self.dma_intervals.items():
            qus[q] = us(sum(b - a for a, b in iv))
            allint += iv
        allint.sort()
        union = 0
        cur_a = cur_b = None
        for a, b in allint:
            if cur_b is None or a > cur_b:
                if cur_b is not None:
                    union += cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        if cur_b is not None:
            union += cur_b - cur_a
        tensor_cycles = end_tick / cfg.ticks_per_cycle("tensor")
        tot = self.tot
        hbm_bytes = tot["hbm_read_bytes"] + tot["hbm_write_bytes"]
        per_tag = {k: TagReport(**v) for k, v in self.tags.items()}
        return Report(
            config=cfg.name, program=sim.p.name,
            cycles=-(-end_tick // rc), report_clock_ghz=cfg.report_clock_ghz, latency_us=us(end_tick),
            hbm_read_bytes=tot["hbm_read_bytes"], hbm_write_bytes=tot["hbm_write_bytes"],
            dma_transfer_count=tot["dma_transfer_count"], dma_transfer_total_bytes=tot["dma_transfer_total_bytes"],
            dma_transfer_average_bytes=(tot["dma_transfer_total_bytes"] / tot["dma_transfer_count"]
                                        if tot["dma_transfer_count"] else 0.0),
            dma_active_time=us(union), dma_queue_active_us=qus, engine_active_cycles=dict(self.eng),
            dma_stall_cycles=tot["dma_stall_cycles"], semaphore_wait_cycles=dict(self.sem_wait),
            port_wait_cycles=dict(self.port_wait), sbuf_peak_bytes=sim.live[Mem.SBUF].peak_bytes(),
            psum_peak_bytes=sim.live[Mem.PSUM].peak_bytes(), sbuf_footprint_bytes=sim.sbuf.written_bytes(),
            psum_footprint_bytes=sim.psum.written_bytes(), sbuf_read_bytes=tot["sbuf_read_bytes"],
            sbuf_write_bytes=tot["sbuf_write_bytes"], macs=tot["macs"],
            mfu=(tot["macs"] / (cfg.pe_rows * cfg.pe_cols * tensor_cycles) if tensor_cycles else 0.0),
            mbu=(hbm_bytes / (end_tick / tick_hz) / (cfg.hbm_bandwidth_gbps * 1e9) if end_tick else 0.0),
            mm_arithmetic_intensity=(2 * tot["macs"] / hbm_bytes if hbm_bytes else 0.0),
            engine_active_pct={e: (100.0 * c * cfg.ticks_per_cycle(e) / end_tick if end_tick else 0.0)
                               for e, c in self.eng.items()},
            num_instructions=tot["num_instructions"], per_tag=per_tag)


_BLAS_LOCAL = None


def _blas_set_local_threads(n: int):
    """Set OpenBLAS's thread count for the calling thread only (openblas_set_num_threads_local);
    returns the previous value, or None when unavailable.  Tile-sized matmuls (<= 128x128x512) run
    fastest single-threaded, and multi-threaded BLAS collapses on a loaded 2-core machine."""
    global _BLAS_LOCAL
    if _BLAS_LOCAL is None:
        _BLAS_LOCAL = False
        try:
            import ctypes
            import re
            with open("/proc/self/maps") as f:
                libs = set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read()))
            for lib in libs:
                fn = getattr(ctypes.CDLL(lib), "openblas_set_num_threads_local", None)
                if fn is not None:
                    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                    _BLAS_LOCAL = fn
                    break
        except Exception:  # pragma: no cover - any platform without it just keeps its threads
            _BLAS_LOCAL = False
    if not _BLAS_LOCAL:
        return None
    return _BLAS_LOCAL(n)


def simulate(program: Program, config, tensors: dict | None = None, *, check: bool = True,
             trace: bool = False) -> SimResult:
    """Run ``program`` on the hardware ``config`` (a HardwareConfig or a name/path for load_config)
    with HBM inputs/weights bound by name from ``tensors``.  Returns outputs, report and trace."""
    import os
    sim = Simulator(program, config, check=check, trace=trace)
    sim.bind(tensors)
    old = _blas_set_local_threads(int(os.environ.get("TVM_POLY_SIM_BLAS_THREADS", "1")))
    try:
        with np.errstate(all="ignore"):  # inf/nan are results, as on the hardware
            return sim.run()
    finally:
        if old is not None:
            _blas_set_local_threads(old)
