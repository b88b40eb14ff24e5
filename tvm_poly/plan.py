"""Plans: frozen, printable data a planner hands to codegen.

A :class:`Plan` says, per tensor, where it lives (``hbm`` or resident in ``sbuf`` at an
allocation) and, per kernel, which graph nodes are fused into one group and with which
tile parameters.  Codegen (``target.codegen``) reads nothing else, so two planners differ
only in their Plan.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorPlacement:
    name: str  # graph tensor name
    placement: str = "hbm"  # hbm | sbuf | alias
    alias_of: str = ""  # placement == "alias": shares the buffer of this tensor (reshape/identity);
    # with num_partitions > 0 a *slice* of it: partitions [start_partition, + num_partitions) of
    # the resident buffer hold this tensor (a concat input written in place)
    # placement == "sbuf": resident allocation (row-split layout, see target.codegen.values)
    start_partition: int = 0
    num_partitions: int = 0
    offset: int = 0
    nbytes: int = 0
    images: int = 1  # placement == "sbuf": > 1 = per-image row-split layout (see target.codegen.values)
    band_rows: int = 0  # placement == "sbuf": > 0 = a band buffer of that many rows (spatial tiling)
    cyclic: bool = False  # placement == "sbuf": the cyclic channel layout of a concat chain
    # (channel c on partition c % 128 of plane c // 128, see target.codegen.values); an alias
    # slice of a cyclic buffer: ``plane`` is its plane, or the slice is a cyclic prefix
    plane: int = 0

    def __str__(self):
        if self.placement == "sbuf":
            return (f"{self.name}: sbuf p[{self.start_partition}:{self.start_partition + self.num_partitions}]"
                    f" @{self.offset} +{self.nbytes}B" + (f" band of {self.band_rows} rows" if self.band_rows else "")
                    + (" cyclic" if self.cyclic else ""))
        if self.placement == "alias":
            if self.num_partitions:
                return (f"{self.name}: slice p[{self.start_partition}:{self.start_partition + self.num_partitions}]"
                        + (f" plane {self.plane}" if self.plane else "") + (" cyclic" if self.cyclic else "")
                        + f" of {self.alias_of}")
            return f"{self.name}: alias of {self.alias_of}"
        return f"{self.name}: hbm"


@dataclass(frozen=True)
class GroupPlan:
    name: str  # the anchor node name; instructions are tagged f"{name}:{kind}"
    kind: str  # conv2d | matmul | elementwise | batch_norm | pool | softmax | alias | ...
    ops: tuple  # node names fused into this kernel, in order
    inputs: tuple  # graph tensor names read
    output: str  # graph tensor name written
    params: tuple = ()  # sorted (key, value) pairs: fused epilogue, tile sizes ...

    def param(self, key, default=None):
        for k, v in self.params:
            if k == key:
                return v
        return default

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.kind}"

    def __str__(self):
        ps = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.tag:<24} {'+'.join(self.ops):<28} ({', '.join(self.inputs)}) -> {self.output}" + \
            (f"  [{ps}]" if ps else "")


@dataclass(frozen=True)
class Plan:
    planner: str
    dtype: str  # float32 | bfloat16
    tensors: tuple  # TensorPlacement
    groups: tuple  # GroupPlan, in execution order

    def placement(self, name) -> TensorPlacement:
        for t in self.tensors:
            if t.name == name:
                return t
        return TensorPlacement(name)

    def alias_root(self):
        """A function name -> the tensor whose buffer ``name`` shares (itself if not an alias)."""
        alias = {t.name: t.alias_of for t in self.tensors if t.placement == "alias"}

        def root(n):
            seen = set()
            while n in alias and n not in seen:
                seen.add(n)
                n = alias[n]
            return n

        return root

    def __str__(self):
        lines = [f"Plan (planner={self.planner}, dtype={self.dtype}): {len(self.groups)} kernels"]
        lines += ["  " + str(g) for g in self.groups]
        res = [t for t in self.tensors if t.placement != "hbm"]
        if res:
            lines.append("  placements:")
            lines += ["    " + str(t) for t in res]
        return "\n".join(lines)
