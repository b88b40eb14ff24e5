"""Hardware configs: TOML files read with ``tomllib`` into a frozen :class:`HardwareConfig`.

``load_config("inf2")`` / ``load_config("inf1")`` read ``target/configs/<name>.toml``;
any other argument is a path to a TOML file.  Every figure the simulator uses comes
from here; none is hard-coded in the simulator.  Validation raises
:class:`target.errors.ConfigError` naming the file and the ``section.field``.

TOML layout (all sections and fields required unless marked optional)::

    name = "inf2"                 # free text
    description = "..."           # optional
    assumed = ["engines.x", ...]  # optional: dotted names of undocumented figures

    [memory]
    sbuf_partitions = 128
    sbuf_bytes = 25165824         # total; must divide evenly by sbuf_partitions
    psum_bytes = 2097152          # total over all partitions
    psum_banks = 8                # per-partition PSUM bytes must divide evenly into banks
    hbm_bytes = 17179869184       # HBM (DRAM) visible to this core

    [engines]
    tensor_ghz, vector_ghz, scalar_ghz, gpsimd_ghz   # clocks
    report_clock_ghz              # clock at which Report.cycles is counted
    pe_rows, pe_cols              # systolic array: K <= pe_rows, M <= pe_cols
    max_moving_free = 512         # N <= this (one PSUM bank of fp32)
    gpsimd_psum_access = false    # whether GpSimd may read/write PSUM

    [cost]                        # NKI "estimated instruction cost" parameters
    min_ii = 64                   # minimum initiation interval, engine cycles
    matmul_min_stationary = 64    # the 64 in max(min(64, N_stat), N_moving)
    matmul_fp32_factor = 4
    access_overhead_cycles = 60   # fixed SBUF/PSUM access latency, see target/cost.py
    strided_stride_bytes = 16     # innermost stride above this halves the access rate
    strided_factor = 2.0
    iota_fixed_cycles = 150
    vector_transpose_max = 32

    [dma]
    queues = 16
    queue_bandwidth_gbps = 17.0   # GB/s (1e9 B/s) per queue at full efficiency
    hbm_bandwidth_gbps = 410.0    # informational (aggregate of queues stays below it)
    latency_us = 1.3              # fixed trigger latency per transfer
    efficiency_curve = [[bytes, eff], ...]  # see target/cost.py: dma_efficiency
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, fields
from functools import reduce

from .errors import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")

# (section, field, python type, constraint) ; constraint in {"pos", "nonneg", "any"}
_SCHEMA = (
    ("memory", "sbuf_partitions", int, "pos"),
    ("memory", "sbuf_bytes", int, "pos"),
    ("memory", "psum_bytes", int, "pos"),
    ("memory", "psum_banks", int, "pos"),
    ("memory", "hbm_bytes", int, "pos"),
    ("engines", "tensor_ghz", float, "pos"),
    ("engines", "vector_ghz", float, "pos"),
    ("engines", "scalar_ghz", float, "pos"),
    ("engines", "gpsimd_ghz", float, "pos"),
    ("engines", "report_clock_ghz", float, "pos"),
    ("engines", "pe_rows", int, "pos"),
    ("engines", "pe_cols", int, "pos"),
    ("engines", "max_moving_free", int, "pos"),
    ("engines", "gpsimd_psum_access", bool, "any"),
    ("cost", "min_ii", int, "nonneg"),
    ("cost", "matmul_min_stationary", int, "nonneg"),
    ("cost", "matmul_fp32_factor", float, "pos"),
    ("cost", "access_overhead_cycles", int, "nonneg"),
    ("cost", "strided_stride_bytes", int, "pos"),
    ("cost", "strided_factor", float, "pos"),
    ("cost", "iota_fixed_cycles", int, "nonneg"),
    ("cost", "vector_transpose_max", int, "pos"),
    ("dma", "queues", int, "pos"),
    ("dma", "queue_bandwidth_gbps", float, "pos"),
    ("dma", "hbm_bandwidth_gbps", float, "pos"),
    ("dma", "latency_us", float, "nonneg"),
)


@dataclass(frozen=True)
class HardwareConfig:
    name: str
    description: str
    assumed: tuple[str, ...]
    source: str
    # memory
    sbuf_partitions: int
    sbuf_bytes_per_partition: int
    psum_partitions: int
    psum_banks: int
    psum_bank_bytes: int  # per partition
    hbm_bytes: int
    # engines
    tensor_ghz: float
    vector_ghz: float
    scalar_ghz: float
    gpsimd_ghz: float
    report_clock_ghz: float
    pe_rows: int
    pe_cols: int
    max_moving_free: int
    gpsimd_psum_access: bool
    # cost
    min_ii: int
    matmul_min_stationary: int
    matmul_fp32_factor: float
    access_overhead_cycles: int
    strided_stride_bytes: int
    strided_factor: float
    iota_fixed_cycles: int
    vector_transpose_max: int
    # dma
    dma_queues: int
    dma_queue_bandwidth_gbps: float
    hbm_bandwidth_gbps: float
    dma_latency_us: float
    dma_efficiency_curve: tuple[tuple[int, float], ...]

    # ------------------------------------------------------------ derived
    @property
    def sbuf_bytes(self) -> int:
        return self.sbuf_partitions * self.sbuf_bytes_per_partition

    @property
    def psum_bytes_per_partition(self) -> int:
        return self.psum_banks * self.psum_bank_bytes

    @property
    def psum_bytes(self) -> int:
        return self.psum_partitions * self.psum_bytes_per_partition

    def engine_ghz(self, stream: str) -> float:
        if stream.startswith("dma"):
            return self.report_clock_ghz
        return getattr(self, f"{stream}_ghz")

    @property
    def tick_khz(self) -> int:
        """Simulator time unit: 1 tick = 1 / tick_khz ms.  The least common multiple of all
        clocks (in kHz), so that every engine cycle is a whole number of ticks and time is
        exact integer arithmetic."""
        khz = [_khz(g) for g in (self.tensor_ghz, self.vector_ghz, self.scalar_ghz,
                                 self.gpsimd_ghz, self.report_clock_ghz)]
        return reduce(lambda a, b: a * b // math.gcd(a, b), khz)

    def ticks_per_cycle(self, stream: str) -> int:
        return self.tick_khz // _khz(self.engine_ghz(stream))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _khz(ghz: float) -> int:
    return int(round(ghz * 1_000_000))


def _fail(src: str, msg: str):
    raise ConfigError(f"config {src}: {msg}")


def load_config(name_or_path) -> HardwareConfig:
    """Load ``"inf2"``, ``"inf1"`` (files in target/configs) or a path to a TOML file."""
    if isinstance(name_or_path, HardwareConfig):
        return name_or_path
    s = str(name_or_path)
    if os.sep not in s and not s.endswith(".toml"):
        path = os.path.join(CONFIG_DIR, s + ".toml")
        if not os.path.exists(path):
            known = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".toml"))
            raise ConfigError(f"unknown hardware config {s!r}; known: {known} (or give a .toml path)")
    else:
        path = s
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: not valid TOML: {e}") from e
    return config_from_dict(data, source=path)


def config_from_dict(data: dict, source: str = "<dict>") -> HardwareConfig:
    vals: dict = {}
    for sec, key, typ, cons in _SCHEMA:
        section = data.get(sec)
        if not isinstance(section, dict):
            _fail(source, f"missing section [{sec}]")
        if key not in section:
            _fail(source, f"missing field {sec}.{key}")
        v = section[key]
        if typ is bool:
            if not isinstance(v, bool):
                _fail(source, f"{sec}.{key} must be true or false, got {v!r}")
        elif typ is int:
            if isinstance(v, bool) or not isinstance(v, int):
                _fail(source, f"{sec}.{key} must be an integer, got {v!r}")
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                _fail(source, f"{sec}.{key} must be a number, got {v!r}")
            v = float(v)
        if cons == "pos" and v <= 0:
            _fail(source, f"{sec}.{key} must be positive, got {v!r}")
        if cons == "nonneg" and v < 0:
            _fail(source, f"{sec}.{key} must not be negative, got {v!r}")
        vals[(sec, key)] = v
    name = data.get("name")
    if not isinstance(name, str) or not name:
        _fail(source, "missing field name (a string)")
    assumed = data.get("assumed", [])
    if not isinstance(assumed, list) or not all(isinstance(a, str) for a in assumed):
        _fail(source, "assumed must be a list of strings")
    known = {f"{sec}.{key}" for sec, key, _, _ in _SCHEMA} | {"dma.efficiency_curve"}
    for a in assumed:
        if a not in known:
            _fail(source, f"assumed lists {a!r}, which is not a config field (expected section.field)")
    parts = vals[("memory", "sbuf_partitions")]
    sbuf = vals[("memory", "sbuf_bytes")]
    if sbuf % parts:
        _fail(source, f"memory.sbuf_bytes={sbuf} is not divisible by memory.sbuf_partitions={parts}")
    psum = vals[("memory", "psum_bytes")]
    if psum % parts:
        _fail(source, f"memory.psum_bytes={psum} is not divisible by memory.sbuf_partitions={parts}")
    banks = vals[("memory", "psum_banks")]
    if (psum // parts) % banks:
        _fail(source, f"PSUM bytes per partition {psum // parts} not divisible by memory.psum_banks={banks}")
    for k in ("tensor_ghz", "vector_ghz", "scalar_ghz", "gpsimd_ghz", "report_clock_ghz"):
        g = vals[("engines", k)]
        if abs(_khz(g) - g * 1e6) > 1e-6 * g * 1e6 or _khz(g) == 0:
            _fail(source, f"engines.{k}={g} must be a whole number of kHz")
    if vals[("engines", "pe_rows")] > parts:
        _fail(source, "engines.pe_rows exceeds memory.sbuf_partitions")
    if vals[("engines", "max_moving_free")] * 4 > (psum // parts) // banks:
        _fail(source, "engines.max_moving_free fp32 elements do not fit in one PSUM bank")
    dma = data.get("dma", {})
    curve = dma.get("efficiency_curve")
    if curve is None:
        _fail(source, "missing field dma.efficiency_curve")
    try:
        pts = tuple((int(b), float(e)) for b, e in curve)
    except (TypeError, ValueError):
        _fail(source, "dma.efficiency_curve must be a list of [bytes_per_partition, efficiency] pairs")
    if not pts:
        _fail(source, "dma.efficiency_curve is empty")
    for i, (b, e) in enumerate(pts):
        if b <= 0 or not 0 < e <= 1:
            _fail(source, f"dma.efficiency_curve[{i}] = [{b}, {e}]: bytes must be > 0 and 0 < efficiency <= 1")
        if i and (b <= pts[i - 1][0] or e < pts[i - 1][1]):
            _fail(source, "dma.efficiency_curve must have increasing bytes and non-decreasing efficiency")
    g = lambda s, k: vals[(s, k)]
    return HardwareConfig(
        name=name, description=str(data.get("description", "")), assumed=tuple(assumed), source=source,
        sbuf_partitions=parts, sbuf_bytes_per_partition=sbuf // parts, psum_partitions=parts,
        psum_banks=banks, psum_bank_bytes=(psum // parts) // banks, hbm_bytes=g("memory", "hbm_bytes"),
        tensor_ghz=g("engines", "tensor_ghz"), vector_ghz=g("engines", "vector_ghz"),
        scalar_ghz=g("engines", "scalar_ghz"), gpsimd_ghz=g("engines", "gpsimd_ghz"),
        report_clock_ghz=g("engines", "report_clock_ghz"), pe_rows=g("engines", "pe_rows"),
        pe_cols=g("engines", "pe_cols"), max_moving_free=g("engines", "max_moving_free"),
        gpsimd_psum_access=g("engines", "gpsimd_psum_access"),
        min_ii=g("cost", "min_ii"), matmul_min_stationary=g("cost", "matmul_min_stationary"),
        matmul_fp32_factor=g("cost", "matmul_fp32_factor"),
        access_overhead_cycles=g("cost", "access_overhead_cycles"),
        strided_stride_bytes=g("cost", "strided_stride_bytes"), strided_factor=g("cost", "strided_factor"),
        iota_fixed_cycles=g("cost", "iota_fixed_cycles"), vector_transpose_max=g("cost", "vector_transpose_max"),
        dma_queues=g("dma", "queues"), dma_queue_bandwidth_gbps=g("dma", "queue_bandwidth_gbps"),
        hbm_bandwidth_gbps=g("dma", "hbm_bandwidth_gbps"), dma_latency_us=g("dma", "latency_us"),
        dma_efficiency_curve=pts,
    )
