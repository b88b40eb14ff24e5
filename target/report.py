"""Simulation report with Neuron-profiler field names.

Definitions (all exact integers unless noted):

* ``cycles``: end-to-end latency (the last instruction's completion, including the DMA latency and
  the engines' fixed access latency) in cycles of the config's ``report_clock_ghz`` (1.4 GHz for
  inf2, the clock of the published peer figures), rounded up.  ``latency_us`` the same in us.
* ``hbm_read_bytes`` / ``hbm_write_bytes``: bytes DMA transfers read from / wrote to HBM.
* ``dma_transfer_count``, ``dma_transfer_total_bytes`` (max of a transfer's source and destination
  bytes), ``dma_transfer_average_bytes``.
* ``dma_active_time``: microseconds during which at least one DMA queue was busy (union of the
  queues' busy intervals).  ``dma_queue_active_us``: the same per queue.
* ``engine_active_cycles``: per compute engine, the cycles (that engine's own clock) it was busy:
  the sum of its instructions' formula costs.
* ``dma_stall_cycles``: Tensor-engine cycles (2.8 GHz on inf2) during which the Tensor engine sat
  idle waiting on a semaphore whose satisfying signal came from a DMA queue.
* ``semaphore_wait_cycles``: per compute engine, cycles (own clock) it sat idle between
  instructions because a semaphore wait was not yet met; ``port_wait_cycles``: idle because of a
  shared-port conflict (Vector/GpSimd on SBUF, Vector/Scalar on PSUM).  Idle time before an
  engine's first instruction counts too; idle time after its last does not.
* ``sbuf_peak_bytes`` / ``psum_peak_bytes``: peak *live* bytes over time, at 64-byte granularity
  per partition: a granule is live from the start of the instruction that writes it until the
  end of the last read of that value (operands by bounding box); see ``memory.LiveBytes``.  This
  is what a first-write-to-last-read allocator needs at least.
* ``sbuf_footprint_bytes`` / ``psum_footprint_bytes``: distinct bytes ever written (the address
  range the program's allocation touched; the ISA has no allocate/free).
* ``sbuf_read_bytes`` / ``sbuf_write_bytes``: bytes read/written in SBUF by all instructions.
* ``macs``: sum of K*M*N over matmuls; ``num_instructions``.
* ``mfu``: macs / (pe_rows * pe_cols * Tensor-engine cycles of the whole latency).
* ``mbu``: (hbm_read_bytes + hbm_write_bytes) / latency / the config's HBM bandwidth.
* ``mm_arithmetic_intensity``: 2 * macs / (hbm_read_bytes + hbm_write_bytes) (flops per HBM byte).
* ``engine_active_pct``: per compute engine, 100 * its active time / the latency.
* ``per_tag``: tag -> the traffic/cycle/macs fields above, for instructions with that tag
  (untagged instructions under "").
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict

TAG_FIELDS = ("hbm_read_bytes", "hbm_write_bytes", "dma_transfer_count", "dma_transfer_total_bytes",
              "sbuf_read_bytes", "sbuf_write_bytes", "dma_stall_cycles", "macs", "num_instructions")


@dataclass(frozen=True)
class TagReport:
    hbm_read_bytes: int = 0
    hbm_write_bytes: int = 0
    dma_transfer_count: int = 0
    dma_transfer_total_bytes: int = 0
    sbuf_read_bytes: int = 0
    sbuf_write_bytes: int = 0
    dma_stall_cycles: int = 0
    macs: int = 0
    num_instructions: int = 0
    engine_active_cycles: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    config: str
    program: str
    cycles: int
    report_clock_ghz: float
    latency_us: float
    hbm_read_bytes: int
    hbm_write_bytes: int
    dma_transfer_count: int
    dma_transfer_total_bytes: int
    dma_transfer_average_bytes: float
    dma_active_time: float
    dma_queue_active_us: dict
    engine_active_cycles: dict
    dma_stall_cycles: int
    semaphore_wait_cycles: dict
    port_wait_cycles: dict
    sbuf_peak_bytes: int
    psum_peak_bytes: int
    sbuf_footprint_bytes: int
    psum_footprint_bytes: int
    sbuf_read_bytes: int
    sbuf_write_bytes: int
    macs: int
    mfu: float
    mbu: float
    mm_arithmetic_intensity: float
    engine_active_pct: dict
    num_instructions: int
    per_tag: dict  # tag -> TagReport

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_tag"] = {k: (v.to_dict() if isinstance(v, TagReport) else v) for k, v in self.per_tag.items()}
        return d

    def summary(self) -> str:
        lines = [f"program {self.program} on {self.config}: {self.cycles} cycles @ {self.report_clock_ghz} GHz"
                 f" = {self.latency_us:.3f} us, {self.num_instructions} instructions",
                 f"  HBM read {self.hbm_read_bytes} B, write {self.hbm_write_bytes} B; "
                 f"{self.dma_transfer_count} DMAs, {self.dma_transfer_total_bytes} B, active {self.dma_active_time:.3f} us",
                 f"  MACs {self.macs}, MFU {self.mfu:.3f}, Tensor stall on DMA {self.dma_stall_cycles} cycles",
                 f"  engine active cycles: " + ", ".join(f"{k} {v}" for k, v in self.engine_active_cycles.items()),
                 f"  semaphore-wait cycles: " + ", ".join(f"{k} {v}" for k, v in self.semaphore_wait_cycles.items())
                 + "; port-wait: " + ", ".join(f"{k} {v}" for k, v in self.port_wait_cycles.items() if v),
                 f"  SBUF peak live {self.sbuf_peak_bytes} B (footprint {self.sbuf_footprint_bytes} B), "
                 f"PSUM peak live {self.psum_peak_bytes} B (footprint {self.psum_footprint_bytes} B)"]
        return "\n".join(lines)
