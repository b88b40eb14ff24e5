"""Weight packs: several kernels' short weight rows loaded as ONE transfer.

A DMA's efficiency follows the contiguous bytes it moves per SBUF partition row (the config's
``efficiency_curve``: 0.25 at 256 B, 0.65 at 1 KiB, 1.0 from 4 KiB).  A 1x1 convolution's
weights are ``C/128`` planes x ``K`` columns per partition: 256 B for ResNet-50's 256 -> 64, 1 KiB
for 512 -> 128 -- every such load runs at a quarter to two thirds of the queue's bandwidth, and
each pays its own trigger latency.  Nothing inside one kernel can lengthen those rows.  Across
kernels it can: the weights of consecutive kernels that use the same partitions are laid side by
side per partition, ``[p][kernel 1 columns | kernel 2 columns | ...]``, in one HBM constant and
one SBUF tile, and one split DMA brings them all in (rows of the pack's summed width).

:func:`plan_packs` decides the packs from the weight layouts a previous lowering of the same
program recorded (``Emitter.weight_layouts``: partitions, columns and dtype of every kernel whose
weights are one array loaded once into a fresh tile), so the pack is built from what the kernels
actually lay out, not from a second copy of their layout rules; :class:`Pack` issues the load
before its first member's kernel (where that kernel's own load would have been) and each member
checks on lowering that it lays out exactly what the pack reserved for it
(:meth:`Member.take`), else the lowering fails (the lowering search then keeps an unpacked one).
The pack's tile is freed after its last member.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .emitter import CodegenError


SPAN = 6  # weight-loading kernels a pack may reach over (see plan_packs)


def plan_packs(groups, layouts: dict, row_bytes: int, span: int = SPAN) -> list:
    """Packs (tuples of group names, in program order) of weight-loading kernels.

    A kernel can join when its recorded layout exists, its row (columns x itemsize) is shorter
    than ``row_bytes``, it runs once (not per row band or image block) and it is issued ahead
    (``prefetch``).  It joins the open pack of its partition count, if that pack's first member
    is at most ``span`` weight-loading kernels back (a pack's SBUF is held from its first
    member to its last, and its later members' weights arrive earlier than their own loads
    would: the span bounds both); a pack closes when its row reaches ``row_bytes``.  Packs of
    one kernel are dropped."""
    from target import isa

    if row_bytes <= 0:
        return []
    count = {}
    for g in groups:
        count[g.name] = count.get(g.name, 0) + 1
    packs, open_ = [], {}  # partitions -> [first weight-loader index, names, row bytes]

    def close(parts):
        first, names, _ = open_.pop(parts)
        if len(names) > 1:
            packs.append((first, tuple(names)))

    wi = -1
    for g in groups:
        if g.kind not in ("conv2d", "matmul"):
            continue
        wi += 1
        for parts in [p for p, o in open_.items() if wi - o[0] > span]:
            close(parts)
        lay = layouts.get(g.name.split(":")[0]) if g.kind == "conv2d" else None
        if not (lay is not None and count[g.name] == 1 and bool(g.param("prefetch")) and not g.param("weight_slot")
                and lay[1] * isa.DTYPES[lay[2]] < row_bytes):
            continue
        o = open_.setdefault(lay[0], [wi, [], 0])
        o[1].append(g.name)
        o[2] += lay[1] * isa.DTYPES[lay[2]]
        if o[2] >= row_bytes:
            close(lay[0])
    for parts in list(open_):
        close(parts)
    return [names for _, names in sorted(packs)]


@dataclass(frozen=True)
class Member:
    """One kernel's columns [col0, col0 + layout columns) of a pack."""
    pack: "Pack"
    name: str
    layout: tuple  # (partitions, columns, dtype) the pack reserved
    col0: int

    def take(self, layout, arr: np.ndarray):
        """The kernel lays out ``arr`` ([partitions, columns]) with ``layout``: store it in the
        pack's HBM constant and return the SBUF tile view holding it."""
        if layout != self.layout or tuple(arr.shape) != tuple(self.layout[:2]):
            raise CodegenError(f"{self.name}: weight pack reserved {self.layout}, the kernel lays out "
                               f"{layout} {tuple(arr.shape)}")
        p = self.pack
        p.array[:, self.col0:self.col0 + arr.shape[1]] = np.asarray(arr, np.float32).astype(p.array.dtype)
        it = p.tile.itemsize
        return dataclasses.replace(p.tile, offset=p.tile.offset + self.col0 * it, nbytes=arr.shape[1] * it,
                                   name=f"{p.tile.name}/{self.name}")


class Pack:
    """The HBM constant, SBUF tile and load of one pack (see the module docstring)."""

    def __init__(self, em, const, constants: dict, names: tuple, layouts: dict, index: int):
        from target import isa
        from .options import weight_split

        lays = [layouts[n.split(":")[0]] for n in names]
        parts, dtype = lays[0][0], lays[0][2]
        width = sum(l[1] for l in lays)
        value = const(f"weight_pack{index}", np.zeros((parts, width), np.float32), dtype)
        self.array = constants[value.name]  # filled in by Member.take as the kernels are lowered
        self.tile = em.sbuf_tile(parts, width * isa.DTYPES[dtype], dtype, f"weight_pack{index}")
        self.members, c = {}, 0
        for n, lay in zip(names, lays):
            self.members[n] = Member(self, n, lay, c)
            c += lay[1]
        self.last = names[-1]
        em.dma_split(self.tile.ap((width,)), value.flat_ap(0, parts, width, (width,), (1,)),
                     **weight_split(em, True))
        em.note(weight_pack=f"weight_pack{index}: {len(names)} kernels, {width * isa.DTYPES[dtype]} B rows")
