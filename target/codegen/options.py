"""Lowering options: the codegen choices whose best value depends on the whole program.

Most schedule choices are local (a kernel's tiles follow from its shapes and the free SBUF).  A
few trade one engine's time against another's, and which side is scarce depends on everything
around the kernel: e.g. the stem's im2col layout costs DMA or Tensor-engine time, and which one
the program can spare decides whether the next layers' weight prefetch keeps up.  Those choices
are fields here; :func:`tvm_poly.driver.compile_graph` lowers the program with each alternative
(one field at a time) and keeps the one whose estimated end is earliest -- the emitter's clock
follows the simulator's cost model instruction by instruction, so that is a measurement of the
candidate, not a guess.

=================  ==========================================================================
``stem``           packed convs (few input channels, e.g. the 3-channel stem) from HBM:
                   ``"phase"`` -- the image staged split by row parity, taps (c, r, s0) on
                   partitions (fewest matmuls, short 1-row DMA runs into the stage);
                   ``"rows"`` -- the image staged split by row parity, unpadded; taps (c, r) on
                   partitions, each holding only the rows it reads as one run, and every s a
                   clipped moving-AP column offset (full-rate DMA, half the im2col bytes of
                   "phase"; S matmuls per pixel block instead of ceil(S/2) for a stride-2 stem)
``prefetch_piece`` the least bytes per DMA piece of a weight load the plan issues ahead of its
                   kernel (fewer, larger pieces: fewer per-transfer latencies on the queues;
                   smaller: a kernel's weights spread over more queues and arrive sooner)
``weight_pack``    0, or the row length (bytes per partition) up to which consecutive kernels'
                   short weight rows are loaded together as one transfer
                   (:mod:`target.codegen.weight_pack`; longer rows run at full DMA efficiency,
                   but a pack's SBUF is held from its first kernel to its last)
``depthwise``      depthwise convs (groups = channels): ``"diag"`` -- HBM holds the weights'
                   diagonals only and the stationary blocks are built on chip (GpSimd, one op
                   per block: ~Mk-fold fewer weight bytes, engine time in program order); ``"dense"`` -- the block-diagonal blocks are loaded whole (DMA time,
                   issued ahead of the kernel)
``copy_piece``     the least bytes per DMA piece of a concat's on-chip copies (relayouts,
                   slices the engines cannot write in place; 32, 8, 16 or 4 KiB): smaller
                   pieces spread a copy on its readers' critical path over more queues, each
                   piece costs a trigger latency of queue time
=================  ==========================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class LowerOptions:
    stem: str = "phase"
    prefetch_piece: int = 256 * 1024
    weight_pack: int = 0
    copy_piece: int = 32 * 1024
    depthwise: str = "diag"

    def __post_init__(self):
        if self.stem not in STEM_LAYOUTS:
            raise ValueError(f"LowerOptions.stem {self.stem!r}: expected one of {STEM_LAYOUTS}")
        if self.prefetch_piece < 4096:
            raise ValueError(f"LowerOptions.prefetch_piece {self.prefetch_piece}: at least 4096 bytes")
        if self.copy_piece < 512:
            raise ValueError(f"LowerOptions.copy_piece {self.copy_piece}: at least 512 bytes")
        if self.depthwise not in DEPTHWISE:
            raise ValueError(f"LowerOptions.depthwise {self.depthwise!r}: expected one of {DEPTHWISE}")
        if self.weight_pack < 0:
            raise ValueError(f"LowerOptions.weight_pack {self.weight_pack}: 0 (off) or a row length in bytes")

    def neighbours(self, only=None) -> list:
        """The options that differ from this one in exactly one field (the search's moves);
        ``only``: just those fields (the ones a lowering consulted, ``Emitter.consulted``)."""
        out = []
        for f in fields(self):
            if only is not None and f.name not in only:
                continue
            for v in ALTERNATIVES[f.name]:
                if v != getattr(self, f.name):
                    out.append(replace(self, **{f.name: v}))
        return out

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


STEM_LAYOUTS = ("phase", "rows")
DEPTHWISE = ("diag", "dense")
ALTERNATIVES = {"stem": STEM_LAYOUTS, "prefetch_piece": (256 * 1024, 512 * 1024, 1024 * 1024),
                "weight_pack": (0, 4096), "copy_piece": (32 * 1024, 8 * 1024, 16 * 1024, 4 * 1024), "depthwise": DEPTHWISE}
WEIGHT_PIECE_BYTES = 384 * 1024  # weight loads: bandwidth-bound, fewer rounds of per-DMA latency


def weight_split(em, prefetch: bool) -> dict:
    """``Emitter.dma_split`` arguments of a weight load (``prefetch``: issued ahead of its kernel,
    off the critical path, so cut in pieces of at least ``options.prefetch_piece``)."""
    if not prefetch:
        return {"piece_bytes": WEIGHT_PIECE_BYTES}
    em.consulted.add("prefetch_piece")
    p = em.options.prefetch_piece
    return {"piece_bytes": max(WEIGHT_PIECE_BYTES, p), "min_piece": p}
