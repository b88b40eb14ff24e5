"""Typed errors raised by the NeuronCore simulator and its configs.

Every error about a program names the offending instruction as
``stream[index]: <instruction text>`` and the rule it broke, so a person can
find it in the printed program (``target.program_text``).
"""
from __future__ import annotations


class SimulationError(Exception):
    """Base class of every error the simulator raises."""


class ConfigError(SimulationError):
    """A hardware config file is missing, has a missing field or a nonsensical value."""


class ProgramError(SimulationError):
    """An illegal program, detected before or while it runs.

    ``rule`` is a short machine-readable rule name (e.g. ``"partition-start"``),
    ``where`` the ``stream[index]`` location (empty for whole-program errors).
    """

    rule = "program"

    def __init__(self, message: str, *, where: str = "", text: str = "", rule: str | None = None):
        if rule is not None:
            self.rule = rule
        self.where = where
        self.text = text
        loc = f"{where}: {text}: " if where else ""
        super().__init__(f"{loc}[{self.rule}] {message}")


class WrongEngineError(ProgramError):
    rule = "wrong-engine"


class AddressError(ProgramError):
    rule = "address-out-of-range"


class PartitionStartError(ProgramError):
    rule = "partition-start"


class MatmulLimitError(ProgramError):
    rule = "matmul-limit"


class PsumBankError(ProgramError):
    rule = "psum-bank-overflow"


class ShapeError(ProgramError):
    rule = "shape-mismatch"


class DtypeError(ProgramError):
    rule = "dtype-mismatch"


class MemoryKindError(ProgramError):
    """An operand lives in a memory its engine cannot access (e.g. MatMul dst in SBUF)."""
    rule = "memory-kind"


class UninitializedReadError(ProgramError):
    rule = "read-before-write"


class AccumulationGroupError(ProgramError):
    """PSUM accumulation-group misuse: accumulating (start=False) outside an open group, starting a
    group over another open one, or another instruction touching an open group's bytes."""
    rule = "accumulation-group"


class RaceError(ProgramError):
    rule = "data-race"


class DeadlockError(ProgramError):
    rule = "deadlock"


class SemaphoreError(ProgramError):
    rule = "semaphore"


class BindingError(SimulationError):
    """The tensors passed to ``simulate`` do not match the program's inputs/weights."""


class ParseError(SimulationError):
    """A program text file does not parse; the message names the line."""
