"""NeuronCore instruction set as plain data (modelled on NKI's ``nki.isa``).

A :class:`Program` is a set of per-engine instruction streams.  Streams run
concurrently and are ordered against each other *only* through semaphores:
an instruction may wait for semaphores to reach a value before it starts and
may increment semaphores when it completes.

Operands are :class:`AP` access patterns:

* SBUF / PSUM: ``num_partitions`` consecutive partitions starting at
  ``start_partition``; inside each partition the element at free index
  ``(i0, .., ik)`` lives at byte ``offset + sum(i_j * strides[j]) * itemsize``.
* HBM (flat bytes): the leading "partition" dimension is an ordinary strided
  dimension: element ``(p, i0, .., ik)`` lives at byte
  ``offset + (p * partition_stride + sum(i_j * strides[j])) * itemsize``.

Sizes and strides are in elements of ``dtype``; ``offset`` is in bytes.
Everything here is frozen so programs can be printed, saved and diffed.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional, Union


class Mem(str, Enum):
    HBM = "hbm"
    SBUF = "sbuf"
    PSUM = "psum"


DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2, "int32": 4}

# Streams: compute engines and DMA queues ("dma0", "dma1", ...).
ENGINES = ("tensor", "vector", "scalar", "gpsimd")


def is_dma_stream(name: str) -> bool:
    return name.startswith("dma") and name[3:].isdigit()


@dataclass(frozen=True)
class AP:
    mem: Mem
    start_partition: int
    num_partitions: int
    offset: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str = "fp32"
    partition_stride: int = 0  # HBM only: elements between consecutive partition rows

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if len(self.sizes) != len(self.strides):
            raise ValueError("access pattern sizes and strides differ in length")
        if not 1 <= len(self.sizes) <= 4:
            raise ValueError(f"access pattern has {len(self.sizes)} free dims; 1 to 4 allowed")

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype]

    @property
    def free_elems(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_partitions, *self.sizes)

    @property
    def nbytes(self) -> int:
        return self.num_partitions * self.free_elems * self.itemsize


# ---------------------------------------------------------------- sync
@dataclass(frozen=True)
class Wait:
    sem: str
    value: int  # start only once semaphore `sem` >= value


# ---------------------------------------------------------------- instructions
@dataclass(frozen=True)
class Instr:
    """Common fields: ``tag`` names the operator (for per-operator reports),
    ``waits`` gate the start, ``signals`` are incremented (by 1 each) at completion."""


@dataclass(frozen=True)
class MatMul(Instr):
    """PSUM dst[M, N] (+)= stationary[K, M]^T @ moving[K, N] (Tensor engine).
    ``start`` zeroes the accumulator first; ``stop`` closes the accumulation group."""
    dst: AP
    stationary: AP
    moving: AP
    start: bool = True
    stop: bool = True
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Transpose(Instr):
    """dst[F, P] = src[P, F]^T (Tensor engine: SBUF -> PSUM, up to 128x128)."""
    dst: AP
    src: AP
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


ACT_FUNCS = ("identity", "relu", "exp", "tanh", "sigmoid", "gelu", "sqrt", "rsqrt",
             "reciprocal", "square", "copy")
# additive: natural log (the Scalar engine's activation table has it; LRN's x^-beta = exp(-beta*log x))
ACT_FUNCS = ACT_FUNCS + ("log",)

# A scalar operand is either an immediate float or a per-partition column AP [P, 1].
Scalar = Union[float, AP]


@dataclass(frozen=True)
class Activation(Instr):
    """dst = func(src * scale + bias) (Scalar engine). bias/scale: float or AP[P,1]."""
    dst: AP
    src: AP
    func: str = "identity"
    bias: Scalar = 0.0
    scale: Scalar = 1.0
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


ALU_OPS = ("add", "subtract", "multiply", "divide", "max", "min", "bypass", "is_equal")  # is_equal: 1.0 / 0.0 (NKI nl.equal)


@dataclass(frozen=True)
class TensorTensor(Instr):
    """dst = a <op> b elementwise (Vector or GpSimd engine)."""
    dst: AP
    a: AP
    b: AP
    op: str = "add"
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorScalar(Instr):
    """dst = (src <op0> operand0) <op1> operand1 (Vector/Scalar/GpSimd)."""
    dst: AP
    src: AP
    op0: str = "multiply"
    operand0: Scalar = 1.0
    op1: Optional[str] = None
    operand1: Scalar = 0.0
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorReduce(Instr):
    """dst[P, kept..] = reduce(op, src) over the last ``axes`` free dims (Vector)."""
    dst: AP
    src: AP
    op: str = "add"  # add | max
    axes: int = 1
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorCopy(Instr):
    dst: AP
    src: AP
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Memset(Instr):
    dst: AP
    value: float = 0.0
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Iota(Instr):
    """dst[p, i..] = base + p * channel_multiplier + sum(i_j * pattern[j]) (GpSimd)."""
    dst: AP
    base: int = 0
    channel_multiplier: int = 0
    pattern: tuple[int, ...] = (1,)
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class DmaCopy(Instr):
    """dst = src on a DMA queue (HBM<->SBUF, SBUF<->SBUF). Shapes must hold the same
    number of elements; dtype conversion (fp32 <-> bf16) is allowed, as on DMA engines."""
    dst: AP
    src: AP
    tag: str = ""
    waits: tuple[Wait, ...] = ()
    signals: tuple[str, ...] = ()


INSTRUCTIONS = (MatMul, Transpose, Activation, TensorTensor, TensorScalar, TensorReduce,
                TensorCopy, Memset, Iota, DmaCopy)

# Which streams may run which instruction.
ALLOWED = {
    MatMul: ("tensor",),
    Transpose: ("tensor",),
    Activation: ("scalar",),
    TensorTensor: ("vector", "gpsimd"),
    TensorScalar: ("vector", "scalar", "gpsimd"),
    TensorReduce: ("vector", "gpsimd"),
    TensorCopy: ("vector", "scalar", "gpsimd"),
    Memset: ("vector", "gpsimd", "scalar"),
    Iota: ("gpsimd",),
    DmaCopy: ("dma",),
}


# ---------------------------------------------------------------- program
@dataclass(frozen=True)
class HbmTensor:
    """A named region of HBM: model inputs, outputs, weights and scratch tensors."""
    name: str
    offset: int  # bytes
    shape: tuple[int, ...]
    dtype: str = "fp32"
    kind: str = "scratch"  # input | output | weight | scratch

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype]
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Program:
    """Per-stream instruction lists plus the HBM tensors they address.
    ``streams`` is a tuple of (stream name, instructions) in a fixed order."""
    hbm: tuple[HbmTensor, ...]
    streams: tuple[tuple[str, tuple[Instr, ...]], ...]
    name: str = "program"

    def stream(self, name: str) -> tuple[Instr, ...]:
        for n, ins in self.streams:
            if n == name:
                return ins
        return ()

    @property
    def num_instructions(self) -> int:
        return sum(len(i) for _, i in self.streams)

    def tensor(self, name: str) -> HbmTensor:
        for t in self.hbm:
            if t.name == name:
                return t
        raise KeyError(f"program has no HBM tensor {name!r}")


# ---------------------------------------------------------------- helpers (additive)
def _row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def sbuf_ap(start_partition: int, num_partitions: int, offset: int, sizes, dtype: str = "fp32",
            strides=None) -> AP:
    """SBUF access pattern; ``strides`` default to row-major over ``sizes`` (elements)."""
    sizes = tuple(sizes)
    return AP(Mem.SBUF, start_partition, num_partitions, offset, sizes,
              tuple(strides) if strides is not None else _row_major(sizes), dtype)


def psum_ap(start_partition: int, num_partitions: int, offset: int, sizes, dtype: str = "fp32",
            strides=None) -> AP:
    """PSUM access pattern; ``strides`` default to row-major over ``sizes`` (elements)."""
    sizes = tuple(sizes)
    return AP(Mem.PSUM, start_partition, num_partitions, offset, sizes,
              tuple(strides) if strides is not None else _row_major(sizes), dtype)


def hbm_ap(offset: int, num_rows: int, row_stride: int, sizes, dtype: str = "fp32", strides=None) -> AP:
    """HBM access pattern: ``num_rows`` rows ``row_stride`` elements apart (the leading,
    partition-like dimension), each with free dims ``sizes`` (row-major strides by default)."""
    sizes = tuple(sizes)
    return AP(Mem.HBM, 0, num_rows, offset, sizes,
              tuple(strides) if strides is not None else _row_major(sizes), dtype, row_stride)
