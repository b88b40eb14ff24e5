"""The ``poly`` planner: cross-operator SBUF residency decided from the polyhedral model.

Same kernels as ``per-op`` (the same epilogue fusion, :func:`plan_per_op`), so the two plans
differ only in where tensors live: codegen and simulator are shared and the comparison is honest.

1. **Model.**  The PolyModel of the graph (``tvm_poly.extract`` over the Relax form of the
   OpGraph; or one given with :func:`attach_model`).  From it: liveness (first write / last
   read of every tensor, :func:`tvm_poly.dataflow.liveness_table`) mapped to kernel indices,
   exact read footprints of every consumer kernel (:func:`tvm_poly.queries.footprint`: the bytes
   a consumer would reload from HBM if the tensor is spilled - e.g. a stride-2 1x1 conv reads a
   quarter of its input) and the compulsory traffic floor.  When extraction or an isl query
   fails (or hits its budget) the planner falls back to the whole-tensor view of the OpGraph
   (same numbers for whole tensors) and records why in ``Plan.notes``.
2. **Eligibility.**  A tensor can stay in SBUF when it is an intermediate (not a graph input or
   output), its producer and all its consumers are kernels that read/write resident operands in
   place (conv2d, pool, elementwise, batch_norm, concat along channels), and its (per-image)
   row-split layout (``target.codegen.values``) matches the channel mapping those kernels use
   (``ChanMap``: C <= 128, or blocked C = parts x T); with N > 1 images every partition holds its
   row of every image (``TensorPlacement.images``).
3. **Capacity.**  Per kernel, SBUF bytes per partition minus the scratch that kernel needs (its
   weights loaded once: the conv kernel keeps them when they take at most a third of the free
   range; its padded band; the packed stem's staged input; streamed operand tiles).
4. **Allocation.**  :func:`tvm_poly.allocation.allocate`: interval colouring by lifetime,
   first fit from the top of SBUF, spill choice by reload bytes (exact isl read footprints of the
   consumers, computed when something must spill) and distance to the next use.  Spilled tensors
   stay in HBM for their whole life (``spill_save_bytes`` / ``spill_reload_bytes``).
5. **Batch tiling.**  When the whole-batch allocation spills, kernels [0, s) (a prefix of
   batch-separable kernels) run per sub-batch of k images: their intermediates get k-image
   buffers reused by every sub-batch, their weights load N/k times; tensors crossing into the
   whole-batch part are live through all sub-batches.  (k, s) minimises spill bytes + extra
   weight bytes.  Plan groups of a sub-batch carry ``images=(n0, k)``; the driver hands the
   lowering sub-batch views (``tvm_poly.allocation.batch_views``).  When no segment pays by itself
   (a single image still spills), prefixes per sub-batch are tried with spatial tiling inside.
6. **Spatial tiling.**  While tensors still spill, a segment of consecutive spatial kernels
   around the costliest spilled one runs in B row bands (:mod:`tvm_poly.row_bands`): isl gives
   every kernel's {output row -> input rows} map, the band schedule computes each row once and
   keeps halo rows on chip; intermediates read only inside the segment become band buffers of a
   few rows.  (segment, B) minimises spill + weights reloaded per band + halo rows re-read from
   HBM + a DMA latency's worth of bytes per extra kernel call; a wider segment may absorb one
   chosen before.  Plan groups of a band carry ``rows``, ``origin`` and ``in_rows``; the driver
   hands the lowering row-window views (``tvm_poly.allocation.band_views``).  A spilled input that
   several kernels of a segment read is *staged*: its rows load once into a stage buffer they
   share (``stage`` / ``unstage`` params, ``tvm_poly.allocation.stage_rows``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from tvm_poly.allocation import Buffer, _first_fit, allocate
from tvm_poly.graph import OpGraph
from tvm_poly.plan import GroupPlan, Plan, TensorPlacement
from tvm_poly.polymodel import dtype_bytes
from tvm_poly.planners.per_op import plan_per_op

RESIDENT_KINDS = {"conv2d", "elementwise", "batch_norm", "pool", "concat"}
# kernels that may read (never write) a resident tensor: matmul, when it is the single row of
# the left operand (a global pool's output feeding the classifier): that row already is A^T
READ_KINDS = {"matmul"}
# trailing-axis reductions (ONNX GlobalAveragePool = mean over H, W) read a resident input in
# place: each partition's run of the row-split layout is whole planes, one TensorReduce
REDUCE_KINDS = {"mean", "sum", "max", "min"}


def resident_kinds_problem(producer, readers, name, tm, root) -> str:
    """Why the kernels around tensor ``name`` cannot keep it in SBUF ("" = they can):
    ``producer`` writes it, ``readers`` (kernel plans) read it."""
    # LRN reads and writes a resident tensor in place: one channel per partition (<= 128
    # channels) or the blocked layout (its band matrix is cut per plane pair), i.e. whenever the
    # tensor has a resident layout at all (``resident_rows``)
    shape = tm[name].shape
    lrn_ok = len(shape) >= 2
    bad = ({producer.kind} - RESIDENT_KINDS) | ({u.kind for u in readers} - RESIDENT_KINDS - READ_KINDS - REDUCE_KINDS)
    if lrn_ok:
        bad -= {"lrn"}
    if bad:
        return f"kernel kinds {sorted(bad)} read/write HBM only"
    for u in readers:
        if u.kind in REDUCE_KINDS:
            ax = u.param("axis")
            rank = len(shape)
            axes = sorted({(int(a) + rank) % rank for a in ax}) if ax is not None and len(ax) else list(range(rank))
            if rank != 4 or axes != [2, 3]:
                return f"{u.kind} over axes {axes} of {tuple(shape)} is not a plane reduction"
        if u.kind == "matmul":
            a = u.inputs[0]
            if root(a) != name or any(root(i) == name for i in u.inputs[1:]) or \
                    int(np.prod(tm[a].shape[:-1])) != 1:
                return "matmul reads it as more than one row of its left operand"
    return ""
_MODELS: dict = {}  # id(graph) -> (graph, PolyModel)


def _model_floor(traffic, graph: OpGraph, pm) -> int:
    """The compulsory bytes of ``traffic`` (``queries.compulsory_traffic`` of the graph's PolyModel
    ``pm``) that are the graph's own inputs, weights and outputs.  A node the Relax form cannot
    express (``fused._relax_of``: dropout, identity) is a fresh parameter there, so its output
    counts as a model input and its input as a model output; those are intermediates of the
    graph, not compulsory traffic (they made SqueezeNet's floor 3.5 MB where its inputs, weights
    and outputs are 2.8 MB, and the poly plan "beat" it)."""
    arrays = model_names(graph, pm)[0]
    own = set(graph.inputs) | set(graph.outputs) | {t.name for t in graph.tensors if t.kind == "weight"}
    real = {arrays[n] for n in own if n in arrays}
    return int(sum(b for name, kind, b in traffic.detail if kind == "weight" or name in real))


@dataclass(frozen=True)
class PolyPlan(Plan):
    """A :class:`Plan` plus what the planner decided and why (for ``tvm-poly plan``)."""
    info: tuple = field(default=(), compare=False)  # sorted (key, value) pairs, see plan_poly
    notes: tuple = field(default=(), compare=False)
    # the graph the plan was made for when the planner rewrote the caller's (graph_subsample);
    # None: the caller's graph.  Lower the plan with ``plan.graph or graph``.
    graph: object = field(default=None, compare=False, repr=False)
    # the final allocation (tvm_poly.allocation) and the kernel tags its times index, for the
    # tests and ``tvm-poly plan``'s SBUF map; fields, so that ``dataclasses.replace`` keeps them
    _allocation: object = field(default=None, compare=False, repr=False)
    _kernels: tuple = field(default=(), compare=False, repr=False)

    def get(self, key, default=None):
        for k, v in self.info:
            if k == key:
                return v
        return default


def attach_model(graph: OpGraph, model):
    """Use ``model`` (a PolyModel of ``graph``) instead of extracting one."""
    _MODELS[id(graph)] = (graph, model)


def _model_of(graph: OpGraph, notes: list):
    got = _MODELS.get(id(graph))
    if got is not None and got[0] is graph:
        return got[1]
    try:
        from tvm_poly.extract import extract, legalize
        from tvm_poly.planners.fused import _relax_of

        mod, opaque = _relax_of(graph)
        pm = extract(legalize(mod))
        if opaque:
            notes.append(f"nodes outside the polyhedral model: {', '.join(sorted(opaque))}")
        while len(_MODELS) >= 4:  # a few recent models (a pipeline plans each segment twice)
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[id(graph)] = (graph, pm)
        return pm
    except Exception as e:  # noqa: BLE001 - any failure: whole-tensor view
        notes.append(f"no polyhedral model ({type(e).__name__}: {e}); whole-tensor view of the OpGraph")
        return None


def resident_rows(shape) -> int:
    """Partitions of the row-split layout that matches the kernels' channel mapping, or 0."""
    s = tuple(int(x) for x in shape)
    if len(s) < 2:
        return 0
    from target.codegen.conv import ChanMap
    cm = ChanMap(s[1], 128)
    return cm.parts if cm.blocked or cm.T == 1 else 0


def _readers(groups, root) -> dict:
    """Root tensor -> the groups that read it."""
    readers: dict = {}
    for g in groups:
        for i in g.inputs:
            readers.setdefault(root(i), []).append(g)
    return readers


def cyclic_chains(groups, tm, root) -> set:
    """Tensors that take the cyclic channel layout (target/codegen/values.py): the concat chains
    -- a concat whose first input is the previous concat's output, DenseNet's dense blocks -- and
    the batch norms that read them.  In the row-split layout a growing buffer changes its plane
    count (160 = 80 x 2, 288 = 96 x 3 ...) and each change copies the whole buffer; 32 new
    channels land on 16 or 10.7 partitions, often at a start the engines refuse (copied too).  In
    the cyclic layout every concat of the chain is a prefix of the next and a 32-channel input
    lands on one plane at a legal start (``_concat_slices`` places them): only the chain's first
    input is copied in.  The chain runs from its head to its last concat whose other readers are
    all batch norms read only by convs (the kernels that read the layout); a concat after that
    copies the chain's buffer into its own row-split layout."""
    readers = _readers(groups, root)
    concats = {root(g.output): g for g in groups if g.kind == "concat" and len(tm[g.output].shape) == 4
               and _axis(g, tm) == 1 and int(tm[g.output].shape[0]) == 1}

    def next_of(c):
        nxt = [u for u in readers.get(root(c.output), ()) if root(u.output) in concats
               and root(u.inputs[0]) == root(c.output)]
        return nxt[0] if len(nxt) == 1 else None

    out = set()
    for r, g in concats.items():
        if root(g.inputs[0]) in concats:
            continue  # not the head of a chain
        names, members, c = set(), 0, g
        while c is not None:
            mine, ok, nxt = {root(c.output)}, True, next_of(c)
            for u in readers.get(root(c.output), ()):
                if u is nxt:
                    continue
                ok &= u.kind == "batch_norm" and tuple(tm[u.output].shape) == tuple(tm[c.output].shape) and \
                    all(v.kind == "conv2d" for v in readers.get(root(u.output), ()))
                mine.add(root(u.output))
            if not ok:
                break
            names |= mine
            members += 1
            c = nxt
        if members >= 2:
            out |= names
    return out


LANE_KINDS = ("pool", "batch_norm", "elementwise")  # one input's channel c -> output channel c, lane to lane


def aligned_concat_rows(groups, tm, root, cyclic=frozenset()) -> dict:
    """Root -> partitions of the row-split layout, where the kernels' default blocked map would
    cut a concat's inputs at fractional rows: Inception v1's 528 channels are 88 x 6 by default
    (the fewest planes), which puts its 112-channel input on 18.67 partitions, so the concat's
    copies are per-row pieces (159 DMAs, 14.5 us of queue time each).  The concat gets the fewest
    planes T that divide every input's channel count (528 = 66 x 8: inputs on 14, 36, 8 and 8
    rows: whole rows, cut over the queues), and the lane-to-lane kernels that read it (pools, batch
    norms, unary elementwise) give their outputs the same layout.  Kept only if every reader of
    those tensors is a conv (which contracts over any blocked map), one of those lane-to-lane
    kernels or a concat (which copies)."""
    from target.codegen.conv import ChanMap

    readers = _readers(groups, root)
    out = {}
    for g in groups:
        r = root(g.output)
        shp = tuple(tm[g.output].shape)
        if g.kind != "concat" or r in cyclic or len(shp) != 4 or shp[0] != 1 or _axis(g, tm) != 1:
            continue
        C = int(shp[1])
        cm = ChanMap(C, 128)
        ns = [int(tm[i].shape[1]) for i in g.inputs]
        if not cm.blocked or all(n % cm.T == 0 for n in ns):
            continue
        T = next((t for t in range(cm.T + 1, 65) if C % t == 0 and C // t <= 128 and all(n % t == 0 for n in ns)),
                 None)
        if T is None:
            continue
        group, todo = {r}, [r]
        while todo:  # the lane-to-lane readers' outputs take the layout too
            t = todo.pop()
            for u in readers.get(t, ()):
                o = root(u.output)
                if u.kind in LANE_KINDS and len([i for i in u.inputs if not tm[i].is_constant]) == 1 and \
                        tuple(tm[u.output].shape[:2]) == tuple(tm[t].shape[:2]) and o not in group and o not in cyclic:
                    group.add(o)
                    todo.append(o)
        ok = all(u.kind in ("conv2d", "concat") or (u.kind in LANE_KINDS and root(u.output) in group)
                 for t in group for u in readers.get(t, ()))
        if ok:
            out.update({t: C // T for t in group})
    return out


def _sbuf_size(config) -> int:
    return int(getattr(config, "sbuf_bytes_per_partition", 196608))


def _scratch_need(graph, g, it, size, in_rows=None, slotted: bool = False, lean: bool = True) -> int:
    """SBUF bytes per partition kernel ``g`` wants for itself (weights once, bands, streams);
    ``in_rows``: the input rows one step reads when the kernel runs in row bands; ``slotted``: its
    weights sit in a planner slot (row bands), which the conv uses instead of a tile of its own;
    ``lean``: pools, LRNs and concats ask what their codegen allocates at least (their bands follow
    the free range); else the generous 64 KiB of sessions 1-8 (bigger bands, fewer residents)."""
    tm = graph.tensor_map
    if g.kind == "conv2d":
        node = graph.node(g.ops[0])
        N, C, H, W = tm[node.inputs[0]].shape
        H = in_rows or H
        K, Cg, R, S = tm[node.inputs[1]].shape
        groups = int(node.attr("groups", 1))
        CT, KT = -(-C // 128), -(-K // 128)
        Mk = min(K, 128)
        blocks = CT * KT if groups == 1 else max(CT, KT)
        w = blocks * R * S * Mk * it
        pad = tuple(node.attr("padding", (0, 0, 0, 0)))
        p2 = 2 * max(pad or (0,))  # both borders, at the widest padding
        packed = groups == 1 and C < 16 and R * S > 1
        # (a resident input is read in place with clipped taps: no padded copy)
        padb = CT * (H + p2) * (W + p2) * it if any(pad) and not packed and node.inputs[0] in graph.inputs else 0
        # the conv keeps its weights once when they take <= 1/3 of the free range, or when they
        # and two one-row bands fit in 80% of it (target/codegen/conv.py): the smaller need
        OW = (W + p2 - S) // int(tuple(node.attr("strides", (1, 1)))[1]) + 1
        row_band = CT * R * W * it + (CT * R * (W + p2) * it if any(pad) else 0) + KT * OW * it
        # (a packed stem's image stage is not reserved here: ``variant`` costs the HBM re-reads
        # of a stem without room to stage, ``_stem_stage``)
        wband = int(1.25 * 2 * row_band) + 4096 if slotted else min(3 * w, int(1.25 * (w + 2 * row_band)) + 4096)
        need = wband + padb + (32768 if packed else 16384)
    elif g.kind == "elementwise":
        need = 3 * 16384 * 2  # one streamed operand + output tiles (resident operands need none)
    elif not lean:
        need = 65536
    elif g.kind == "pool" and g.param("pool_size") and len(tm[g.inputs[0]].shape) == 4:
        # pool2d halves its row band until the band's tiles fit the free range (input rows, the
        # column pass, the output rows): a band of 4 output rows (or the step's rows), at least
        # 1/10 of SBUF so that the bands stay few
        N, C, H, W = (int(v) for v in tm[g.inputs[0]].shape)
        OH, OW = (int(v) for v in tm[g.output].shape[2:])
        R = int(tuple(g.param("pool_size"))[0])
        sh = int(tuple(g.param("strides", (1, 1)))[0])
        bo = max(1, (in_rows - R) // sh + 1) if in_rows else min(OH, 4)
        rp = (bo - 1) * sh + R
        need = max(int(0.1 * size), -(-C // 128) * it * (rp * W + rp * OW + bo * OW) + 4096)
    elif g.kind == "concat":
        need = 4096  # target/codegen/movement.py: DMAs between the inputs' and the output's places
    elif g.kind == "lrn" and len(tm[g.output].shape) == 4:
        # target/codegen/lrn.py: the band matrix (T x C, in a planner slot when banded) and x / x^2
        # / out chunks per channel tile, double-buffered, sized to half the free range (8 KiB each
        # at most, 512 elements at least): 2 KiB chunks here; PSUM evacuation tiles
        C = int(tm[g.output].shape[1])
        T = -(-C // 128)
        band = 0 if in_rows else T * C * it
        need = max(int(0.1 * size), band + T * 3 * 2 * 2048 + 3 * 512 * 4 + 4096)
    else:
        need = 65536
    return int(min(need, 0.85 * size))


def _stem_stage(graph, g, it):
    """For a packed conv (few input channels, e.g. the stem) reading a graph input: (bytes per
    partition of its staged image for ``rows`` input rows, HBM bytes per image its im2col reads
    when there is no room to stage -- conv2d's phase layout straight from HBM, each element read
    ~R*S/(sh*sw) times), as functions of the rows per step; None for other kernels."""
    if g.kind != "conv2d":
        return None
    node = graph.node(g.ops[0])
    x = node.inputs[0]
    if x not in graph.inputs:
        return None
    N, C, H, W = graph.tensor_map[x].shape
    K, Cg, R, S = graph.tensor_map[node.inputs[1]].shape
    if int(node.attr("groups", 1)) != 1 or C >= 16 or R * S <= 1:
        return None
    sh, sw = (int(v) for v in tuple(node.attr("strides", (1, 1))))
    pad = tuple(node.attr("padding", (0, 0, 0, 0)))
    pad = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else pad
    OW = (W + pad[1] + pad[3] - S) // sw + 1
    OH = (H + pad[0] + pad[2] - R) // sh + 1
    nph = sw if 1 < sw < S else S
    S1 = -(-S // nph)
    Wu2 = (OW - 1) * sw + 1 + nph * (S1 - 1) if nph < S else (OW - 1) * sw + 1

    def stage(rows):
        return (rows + pad[0] + pad[2] + sh) * (W + pad[1] + pad[3]) * it
    reread = max(0, C * R * nph * OH * Wu2 - C * H * W) * 4  # graph inputs are fp32 in HBM
    return stage, reread


def _weight_pp(graph, g, it) -> int:
    """SBUF bytes per partition of a conv kernel's laid-out weights (dense channel blocks x taps x
    output-channel tile); the codegen's layout never needs more."""
    tm = graph.tensor_map
    node = graph.node(g.ops[0])
    C = tm[node.inputs[0]].shape[1]
    K, _, R, S = tm[node.inputs[1]].shape
    return -(-C // 128) * -(-K // 128) * R * S * min(K, 128) * it


def _band_pp(graph, g, it) -> int:
    """SBUF bytes per partition of an LRN kernel's band matrix (one C-column block per channel
    tile, :func:`target.codegen.lrn.channel_window`)."""
    from target.codegen.conv import ChanMap
    C = int(graph.tensor_map[g.output].shape[1])
    return ChanMap(C, 128).T * C * it


def _capacity(graph, kernels, it, size, in_rows=None, pinned=None, memo=None, slotted=frozenset(),
              lean: bool = True) -> list:
    """Resident bytes per partition allowed at each kernel: SBUF minus the program's constant
    block (bottom of SBUF, target/codegen/const_block.py) minus the kernel's own scratch
    (``in_rows``: {kernel index: input rows per step} of row-banded kernels; ``memo``: a dict
    that keeps the scratch figures between calls on the same kernels; ``slotted``: kernels whose
    weights have a slot of their own in the allocation, not in their scratch)."""
    from target.codegen.const_block import block_bytes

    if pinned is None:
        pinned = block_bytes(kernels, graph.tensor_map)
    in_rows = in_rows or {}
    memo = {} if memo is None else memo
    out = []
    for i, k in enumerate(kernels):
        key = (i, in_rows.get(i), i in slotted, lean)
        if key not in memo:
            memo[key] = _scratch_need(graph, k, it, size, key[1], key[2], lean)
        out.append(max(0, size - pinned - memo[key]))
    return out


BATCH_KINDS = {"conv2d", "elementwise", "batch_norm", "pool", "concat", "lrn"}


def _weight_bytes(graph, g, it) -> int:
    """HBM bytes of the weights kernel ``g`` loads (constants it reads, at the compute dtype)."""
    tm = graph.tensor_map
    n = 0
    for op in g.ops:
        for i in graph.node(op).inputs:
            t = tm[i]
            if t.is_constant and len(t.shape) >= 2:
                n += int(np.prod(t.shape)) * it
    return n


def _axis(g, tm):
    a = int(g.param("axis", 0))
    return a + len(tm[g.output].shape) if a < 0 else a


def model_names(graph, pm):
    """(graph tensor -> model array, graph node -> model op names).  The Relax form of an OpGraph
    (``fused._relax_of``) names a node's binding ``tvmpoly_<output>`` (batch_norm ``..__bn``,
    add_n's partial sums ``..__accK``) and keeps parameter names (``/`` -> ``_``); a model
    extracted from a Relax module of the graph's own names matches them as they are."""
    from tvm_poly.planners.fused import _PFX

    arrays = {}
    for t in graph.tensors:
        for cand in (t.name, _PFX + t.name, t.name.replace("/", "_")):
            if cand in pm.arrays:
                arrays[t.name] = cand
                break
    by_name = {o.name for o in pm.ops}
    stem = {}
    for o in by_name:
        stem.setdefault(o.split("__")[0], set()).add(o)
    node_ops = {}
    for n in graph.nodes:
        got = set()
        for key in (n.name, _PFX + n.output):
            got |= {o for o in stem.get(key, ()) if o == key or o.startswith(key + "__")}
        node_ops[n.name] = got
    return arrays, node_ops


def group_statements(pm, g, node_ops: dict) -> list:
    """The model statements of kernel ``g`` (its nodes' ops, through ``model_names``'s node_ops)."""
    names = set().union(*(node_ops.get(o, {o}) for o in g.ops))
    return [s for s in pm.statements if s.op in names]


ROW_BANDS = (2, 4, 8, 16, 32, 64)  # band counts tried per segment
ROW_REACH = 8  # kernels a segment may extend past a spilled tensor's producer / last reader


_ROW_MAPS: dict = {}  # (model, kernels) -> row maps of the last plan (a plan may search twice)


def _loaded_bytes(elems, shape, it: int) -> int:
    """Bytes a kernel loads from HBM for the read footprint ``elems`` of an NCHW tensor: the
    codegen moves whole rows, and the row range between the first and last row it reads per
    (image, channel) as one run (a stride-2 reader of every other row or column still loads all
    of them).  Footprints of other ranks count exactly."""
    import islpy as isl

    from tvm_poly.counting import card

    if len(shape) != 4 or elems.dim(isl.dim_type.set) != 4:
        return card(elems) * it
    rows = elems.project_out(isl.dim_type.set, 3, 1).remove_divs().coalesce()
    hull = isl.Set.from_basic_set(rows.simple_hull()) if rows.n_basic_set() > 1 else rows
    return card(hull) * int(shape[3]) * it


def _spatial_tiling(best, variant, graph, groups, buffers, pm, arrays, node_ops, members, readers, root,
                    outputs, notes, short_pass: bool = False):
    """Spatial tiling: while tensors spill, try running a segment of consecutive kernels around the
    largest spilled one in B row bands (``tvm_poly.row_bands``): its intermediates read only
    inside the segment shrink to band buffers, every kernel's weights load B times and HBM inputs
    re-read their halo rows.  Keep the (segment, B) that lowers spill + extra bytes the most.
    ``short_pass``: the second pass (plan_poly's ``short_segments``), run on what the first left:
    segments that END BEFORE a spilled tensor's last reader (the tensor still spills, but the
    readers inside take its rows from SBUF: ResNet-50's lattice subsample beside the 1x1 conv
    reading the same tensor)."""
    from tvm_poly.row_bands import SPATIAL_KINDS, band_schedule, row_maps

    tm = graph.tensor_map
    key = (id(pm), tuple((g.tag, g.output, g.inputs, tuple(tm[g.output].shape)) for g in groups))
    if key not in _ROW_MAPS:
        try:
            maps = row_maps(pm, graph, groups, arrays, node_ops)
        except Exception as e:  # noqa: BLE001
            notes.append(f"row maps from the model failed ({type(e).__name__}: {e}); no spatial tiling")
            return best
        _ROW_MAPS.clear()
        _ROW_MAPS[key] = maps
    maps = _ROW_MAPS[key]
    cands = {b.name for b in buffers}
    by_name = {b.name: b for b in buffers}
    out_of = {g.output: j for j, g in enumerate(groups)}

    def bandable(j):
        g = groups[j]
        acts = [i for i in g.inputs if not tm[i].is_constant and tm[i].kind != "weight"]
        return g.kind in SPATIAL_KINDS and acts and all((j, i) in maps for i in acts)

    ok = [bool(bandable(j)) for j in range(len(groups))]
    bsegs = best[3]  # batch segments: a row segment lies inside one of them or outside all

    def schedule(lo, hi, B):
        inside = range(lo, hi)
        for c in inside:  # a kernel reading a segment tensor through an alias sees it unfinished
            for i in groups[c].inputs:
                if root(i) != i and out_of.get(root(i), -1) in inside:
                    return None
        internal = set()
        for j in inside:
            t = groups[j].output
            if t in cands and t not in outputs and members.get(t, [t]) == [t] and \
                    all(lo <= u < hi for u in readers.get(t, [])):
                internal.add(t)
        # spilled inputs that several kernels of the segment read: loaded once per row into a
        # stage buffer the readers share (else every reader loads them)
        staged = set()
        for t in {i for j in inside for i in groups[j].inputs} - {groups[j].output for j in inside}:
            if t in cands and t in best[1].spilled and members.get(t, [t]) == [t] and root(t) == t and \
                    sum(1 for j in inside if t in groups[j].inputs and (j, t) in maps) >= 2:
                staged.add(t)
        H = int(tm[groups[hi - 1].output].shape[2])
        if B > H:
            return None
        edges = [round(k * H / B) for k in range(B + 1)]
        heights = {groups[j].output: int(tm[groups[j].output].shape[2]) for j in inside}
        heights.update({t: int(tm[t].shape[2]) for t in staged})
        return band_schedule(lo, hi, list(zip(edges[:-1], edges[1:])), groups, maps, heights, internal,
                             frozenset(staged))

    rsegs = list(best[4])
    tried = set()
    for _ in range(16):
        al = best[1]
        left = [n for n in al.spilled if n not in tried and n in by_name]
        if not left:
            break
        tgt = max(left, key=lambda n: by_name[n].save_bytes + by_name[n].reload_bytes)
        tried.add(tgt)
        b = by_name[tgt]
        if not all(ok[j] for j in range(b.start, b.end + 1)):
            continue
        cand = None
        lo = b.start
        top = b.end if short_pass else b.end + 1 + ROW_REACH
        while lo >= 0 and lo >= b.start - ROW_REACH and ok[lo]:
            hi = b.start + 2 if short_pass else b.end + 1
            while hi <= len(groups) and hi <= top and ok[hi - 1]:
                # a segment already chosen is either outside [lo, hi) or merged into it
                if all(r[1] <= lo or r[0] >= hi or (lo <= r[0] and r[1] <= hi) for r in rsegs) and \
                        all(hi <= s0 or lo >= s1 or (s0 <= lo and hi <= s1) for s0, s1, _ in bsegs):
                    keep = [r for r in rsegs if r[1] <= lo or r[0] >= hi]
                    for B in ROW_BANDS:
                        sch = schedule(lo, hi, B)
                        if sch is None:
                            continue
                        rs = sorted(keep + [(lo, hi, B, sch)], key=lambda r: r[0])
                        c, al2, bs = variant(best[3], rs)
                        if c < best[0] and (cand is None or c < cand[0]):
                            cand = (c, al2, bs, best[3], rs)
                hi += 1
            lo -= 1
        if cand is not None:
            best = cand
            rsegs = cand[4]
    return best


def _copy_allocation(al):
    """An allocation that can be edited without touching ``al`` (plans of several search results
    may share one)."""
    return dataclasses.replace(al, slots=dict(al.slots), buffers=dict(al.buffers), spilled=dict(al.spilled),
                               order=list(al.order))


def _with_param(g, kv):
    return GroupPlan(g.name, g.kind, g.ops, g.inputs, g.output, tuple(sorted(g.params + (kv,))))


def _pad4(pad) -> tuple:
    """(top, left, bottom, right) from a 2- or 4-element padding attribute."""
    pad = tuple(int(p) for p in pad)
    return (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else pad


def _lane_pairs(steps, resident, graph, root, max_moving_free: int, notes) -> list:
    """A conv whose SBUF-resident 32/64-channel output only a stride-2 max pool reads (ResNet's,
    DenseNet's, Inception's stem): the conv also writes the pool's lower row band onto the idle
    lanes 64..127 of the output's byte range (``conv2d(lane_dup)``: a second copy of the weights in
    the stationary, free on the Tensor engine) and the pool runs both bands side by side on 128
    lanes straight from that buffer (``pool2d(lane_split)``), instead of copying the input onto 128
    lanes by SBUF->SBUF DMA.  Both kernels get the param ``lane_pair = (shift, halo)``."""
    from target.codegen.pool import lane_split_geometry, lane_split_ok

    tm = graph.tensor_map
    readers = {}
    for i, g in enumerate(steps):
        for t in g.inputs:
            readers.setdefault(root(t), set()).add(i)
    out = list(steps)
    for i, g in enumerate(steps):
        if g.kind != "conv2d" or g.output not in resident or any(g.param(k) for k in ("rows", "images", "residual")):
            continue
        rd = readers.get(g.output, set())
        if len(rd) != 1:
            continue
        (j,) = rd
        p = steps[j]
        if p.kind != "pool" or p.inputs[0] != g.output or p.output not in resident or \
                any(p.param(k) for k in ("rows", "images")) or p.param("layout", "NCHW") != "NCHW":
            continue
        xs, os_ = tm[g.output].shape, tm[p.output].shape
        pad = _pad4(p.param("padding", (0, 0, 0, 0)))
        strides = tuple(p.param("strides", (1, 1)))
        if int(xs[3]) > max_moving_free or tuple(p.param("dilation", (1, 1))) != (1, 1) or \
                not lane_split_ok(xs, os_, tuple(p.param("pool_size")), strides, pad, p.param("mode")):
            continue
        geo = lane_split_geometry(os_, strides, pad)
        out[i], out[j] = _with_param(g, ("lane_pair", geo)), _with_param(p, ("lane_pair", geo))
        notes.append(f"lane pair: {g.tag} writes {p.tag}'s lower band on lanes {int(xs[1])}.."
                     f"{2 * int(xs[1])} (rows from {geo[0]}, {geo[1]} halo rows); the pool runs both bands at once")
    return out


def _row_pairs(steps, resident, graph, root, max_moving_free: int, notes) -> list:
    """A padded conv (R >= 2 row taps) on an SBUF-resident 32/64-channel tensor that another conv
    writes: the producer also writes the tensor shifted up by one row onto the idle lanes 32/64..
    of its byte range (``conv2d(lane_dup=(1, 0, 1))``, free on the Tensor engine) and the consumer
    contracts taps (r, r+1) in ONE matmul with K = 2C rows (``conv2d(pair_rows)``): a 3x3 conv
    on 64 channels makes 6 matmuls per pixel block instead of 9 (ResNet's stage-1 3x3 convs
    ran at a quarter of the PE array).  Producer param ``row_dup``, consumer ``pair_rows``."""
    tm = graph.tensor_map
    prod = {root(g.output): i for i, g in enumerate(steps)}
    from target.codegen.conv import full_taps

    out = list(steps)

    def plain(g):
        return not any(g.param(k) for k in ("rows", "images", "lane_pair", "weight_slot"))
    for i, c in enumerate(steps):
        if c.kind != "conv2d" or not plain(c) or root(c.inputs[0]) != c.inputs[0] or c.inputs[0] not in resident:
            continue
        x = c.inputs[0]
        j = prod.get(x)
        if j is None or j >= i:
            continue
        p = steps[j]
        N, C, H, W = (int(v) for v in tm[x].shape)
        node = graph.node(c.ops[0])
        R, S = (int(v) for v in tm[node.inputs[1]].shape[2:])
        pad = _pad4(node.attr("padding", (0, 0, 0, 0)))
        OH, OW = (int(v) for v in tm[c.output].shape[2:])
        full_r, full_s = full_taps(H, W, OH, OW, R, S, tuple(int(v) for v in node.attr("strides", (1, 1))), pad)
        if N != 1 or C not in (32, 64) or int(node.attr("groups", 1)) != 1 or not any(pad) or \
                not full_r or not full_s or full_r[0] + 1 >= R or tuple(node.attr("dilation", (1, 1))) != (1, 1):
            continue
        if p.kind != "conv2d" or not plain(p) or p.param("residual") or p.output != x or W > max_moving_free \
                or p.param("row_dup") is not None and p.param("row_dup") != (1, 0, 1):
            continue
        if out[j].param("row_dup") is None:
            out[j] = _with_param(out[j], ("row_dup", (1, 0, 1)))
        out[i] = _with_param(c, ("pair_rows", True))
        notes.append(f"row pairs: {p.tag} also writes {x} one row up on lanes {C}..{2 * C}; "
                     f"{c.tag} contracts row taps in pairs (K = {2 * C})")
    return out


def _concat_slices(groups, alloc, resident, graph, root, segs, rsegs, steps, notes, cyclic=frozenset()) -> dict:
    """Channel concats computed in place: a resident concat input produced by a plain conv (read
    only by the concat, or by others in its own layout) becomes a *slice* of the concat's buffer -- the
    partitions [p0, p0 + rows) that its flat range occupies in the output's row-split layout --
    so the conv writes its output straight there (``conv2d`` with a partition offset: the
    stationary also reads the p0 columns before each weight block, which puts its output on PSUM
    lanes p0.., evacuated lane to lane; lanes 0..p0 are never read) and the concat moves
    nothing (it was one SBUF->SBUF DMA per input on the critical path, with short rows).
    Legal when the output's byte range is free of every other resident buffer from the first
    such producer on and stays inside the resident capacity there (checked on the final
    allocation).  Chains too (DenseNet: each layer's concat extends the previous one): a
    resident concat output read by the next concat at a partition-aligned offset in the same
    layout (same rows) becomes its slice as well, with everything nested in it, so a dense
    block's concats share one buffer and nothing is copied.  A concat in the cyclic layout
    (``cyclic_chains``): its previous concat is the prefix of its channels (a cyclic slice) and
    a conv's input is the 32-partition range of one plane at its channel offset.  Returns input
    name -> (concat output, p0, rows, plane, cyclic prefix); a chained slice's p0 and plane are
    relative to its parent."""
    from target.codegen.conv import ChanMap, _start_ok

    tm = graph.tensor_map
    readers: dict = {}
    for gi, g in enumerate(groups):
        for t in g.inputs:
            readers.setdefault(root(t), set()).add(gi)
    producer = {root(g.output): gi for gi, g in enumerate(groups)}
    tiled = set()
    for lo_, hi_, *_ in list(segs) + list(rsegs):
        tiled.update(range(lo_, hi_))
    step_of = {}
    for g in steps:
        step_of.setdefault(g.name, []).append(g)
    out: dict = {}
    for gi, g in enumerate(groups):
        r = root(g.output)
        if g.kind != "concat" or gi in tiled or r not in resident or r not in alloc.slots or \
                _axis(g, tm) != 1 or int(tm[r].shape[0]) != 1 or len(step_of.get(g.name, ())) != 1:
            continue
        rows_out = alloc.buffers[r].partitions
        elems_out = int(np.prod(tm[r].shape))
        if elems_out % rows_out and r not in cyclic:
            continue
        F = int(np.prod(tm[r].shape[2:]))
        L = F if r in cyclic else elems_out // rows_out  # cyclic: one channel per row
        a_r, n_r = alloc.slots[r]
        take, off = [], 0  # (input, first kernel it needs the buffer, p0, rows, plane, cyclic prefix)
        for k, i in enumerate(g.inputs):
            n = int(np.prod(tm[i].shape))
            pi = producer.get(root(i))
            aligned, p0, rows = off % L == 0 and n % L == 0, off // L, n // L
            plane = 0
            if r in cyclic:  # channels [p0, p0 + rows): plane p0 // 128 from partition p0 % 128
                plane, p0 = divmod(p0, 128)
                aligned = aligned and (p0 + rows <= 128 or (k == 0 and p0 == 0))
            off += n
            # a resident tensor of its own (not sliced yet), on whole partitions of the output at
            # a start the engines accept, produced once by an untiled kernel
            if not (aligned and root(i) == i and i in alloc.slots and pi is not None and pi not in tiled and
                    _start_ok(p0, min(rows, 128)) and len(step_of.get(groups[pi].name, ())) == 1):
                continue
            if r in cyclic:
                if k == 0 and groups[pi].kind == "concat" and i in cyclic:
                    take.append((i, alloc.buffers[i].start, 0, min(rows, 128), 0, True))  # the chain's prefix
                    continue
                rows = min(rows, 128)
            own_rows = alloc.buffers[i].partitions == rows  # other readers see it in its own layout
            if r in cyclic and groups[pi].kind != "conv2d":
                continue
            if groups[pi].kind == "concat" and own_rows:
                take.append((i, alloc.buffers[i].start, p0, rows, plane, False))  # a chained concat
            elif groups[pi].kind == "conv2d" and (readers.get(i) == {gi} or own_rows):
                ps = step_of[groups[pi].name][0]
                cm = ChanMap(int(tm[i].shape[1]), rows)
                if not any(ps.param(k) for k in ("residual", "lane_pair", "row_dup", "images", "rows")) and \
                        cm.parts == rows and (cm.blocked or cm.T == 1):
                    take.append((i, pi, p0, rows, plane, False))
        if not take:
            continue
        t0 = min(t[1] for t in take)
        taken = {t[0] for t in take}

        def chain_root(x):
            while x in out:
                x = out[x][0]
            return x
        names = taken | {r} | {x for x in out if chain_root(x) in taken}
        b_r = alloc.buffers[r]
        end = max([b_r.end] + [alloc.buffers[i].end for i in taken if i in alloc.buffers])
        b_r = dataclasses.replace(b_r, end=end)
        # the output's buffer now lives from t0: keep its range if nothing else uses it over
        # [t0, end], else the lowest range that is free then (first fit, inside the capacity)
        busy = [alloc.slots[n_] for n_, b in alloc.buffers.items()
                if n_ in alloc.slots and n_ not in names and b.start <= b_r.end and b.end >= t0]
        limit = min(alloc.capacity[t0:b_r.end + 1])
        if any(x < a_r + n_r and a_r < x + m for x, m in busy) or a_r + n_r > limit:
            a_new = _first_fit(busy, n_r, limit)
            if a_new is None:
                continue
            alloc.slots[r] = (a_new, n_r)
        alloc.buffers[r] = dataclasses.replace(b_r, start=t0, end=end)
        for i, pi, p0, rows, plane, cyc in take:
            out[i] = (r, p0, rows, plane, cyc)
            alloc.slots.pop(i, None)
        notes.append(f"concat in place: {g.tag} inputs " + ", ".join(
            f"{i} (p[{p0}:{p0 + rows}]" + (f" plane {plane}" if plane else "") + (" cyclic" if cyc else "") + ")"
            for i, _, p0, rows, plane, cyc in take) + f" are slices of {r}: their convs write there, the concat moves nothing")
    return out


def plan_poly(graph: OpGraph, config=None, dtype: str = "float32", model=None, cyclic_layouts: bool = True,
              aligned_layouts: bool = True, subsample: bool = True, short_segments=False):
    """``cyclic_layouts``: concat chains may take the cyclic channel layout (``cyclic_chains``);
    a plan that would read one per row band or sub-batch is made again without.
    ``aligned_layouts``: concats whose inputs the default blocked map cuts at fractional rows
    take a layout on whole rows (``aligned_concat_rows``: cheaper copies, but their readers'
    contractions run over fewer partitions; the driver lowers both plans and keeps the faster).
    ``subsample``: readers that need only a stride lattice of a tensor may read a subsampled copy
    of it (``tvm_poly.graph_subsample``); the graph is planned with and without that rewrite and
    the plan of lower planned cost (spill + extra bytes) wins by at least 1% of the floor, else
    the plan of the graph as given.  The winner's ``graph`` is the rewritten graph.
    ``short_segments``: spatial tiling also tries, after its first pass, row segments that end
    before a spilled tensor's last reader (``_spatial_tiling``); they lower the planned cost but
    not always the run's (a greedy search given them lands elsewhere), so the driver plans with
    them as an alternative and keeps the better lowering (``driver._better``).  ``"both"``: the
    pair (plan without them, plan with them) from one planning -- each the plan the separate
    calls give, the short passes starting from the first passes' results; ``"auto"``: the same
    pair, but (plan, None) when concats take aligned layouts (the driver's concat alternative
    decides which plan the short segments would start from)."""
    t0 = time.perf_counter()
    if config is None or not hasattr(config, "sbuf_partitions"):
        from target.config import load_config
        config = load_config(config or "inf2")
    both = short_segments in ("both", "auto")

    def planned(g, m):
        """The plan of ``g`` with lean scratch estimates, or with the generous ones when they plan
        cheaper (a kernel's bands follow the free range: more room for residents or bigger bands);
        per flavour (a pair with ``short_segments="both"``)."""
        ps = _plan_graph(g, config, dtype, m, cyclic_layouts, aligned_layouts, t0, short_segs=short_segments)
        ps = ps if both else (ps,)
        if any(p is not None and p.get("planned_cost_bytes", 0) > 0 for p in ps):
            qs = _plan_graph(g, config, dtype, m, cyclic_layouts, aligned_layouts, t0, lean=False,
                             short_segs=short_segments)
            qs = qs if both else (qs,)
            ps = tuple(None if p is None or q is None else dataclasses.replace(q, notes=q.notes + (
                f"scratch: the generous per-kernel estimates plan cheaper ({q.get('planned_cost_bytes') / 1e6:.1f}"
                f" vs {p.get('planned_cost_bytes') / 1e6:.1f} MB planned extra)",))
                if p.get("planned_cost_bytes", 0) > 0 and q.get("planned_cost_bytes") < p.get("planned_cost_bytes")
                else p for p, q in zip(ps, qs))
        return ps

    def result(ps):
        ps = tuple(None if p is None else _restamp(p, t0) for p in ps)
        return ps if both else ps[0]

    plans = planned(graph, model)
    if not subsample or all(p is None or p.get("planned_cost_bytes", 0) <= 0 for p in plans):
        return result(plans)
    from tvm_poly.graph_subsample import subsample_lattice_reads

    pm = model if model is not None else _model_of(graph, [])
    arrays, node_ops = model_names(graph, pm) if pm is not None else ({}, {})
    try:
        sub = subsample_lattice_reads(graph, pm, arrays, node_ops)
    except Exception:  # noqa: BLE001 - the rewrite is an option: without it the plan stands
        return result(plans)
    if sub is graph:
        return result(plans)
    alts = planned(sub, None)
    new = [n.name for n in sub.nodes if n.name not in {m.name for m in graph.nodes}]
    out = []
    for plan, alt in zip(plans, alts):
        if plan is None or alt is None:  # ("auto": no short-segment plan of one of the graphs)
            out.append(None)
        elif plan.get("planned_cost_bytes", 0) > 0 and \
                alt.get("planned_cost_bytes") < plan.get("planned_cost_bytes") - 0.01 * plan.get("compulsory_bytes"):
            note = (f"lattice reads: {', '.join(new)} subsample for the stride-s 1x1 convs that read only "
                    f"them (planned extra bytes {plan.get('planned_cost_bytes') / 1e6:.1f} -> "
                    f"{alt.get('planned_cost_bytes') / 1e6:.1f} MB)")
            out.append(dataclasses.replace(alt, graph=sub, notes=alt.notes + (note,)))
        else:
            out.append(plan)
    return result(out)


def _restamp(plan: PolyPlan, t0: float) -> PolyPlan:
    """``plan`` with ``planner_seconds`` counting every graph planned since ``t0``."""
    info = tuple((k, round(time.perf_counter() - t0, 3) if k == "planner_seconds" else v) for k, v in plan.info)
    return dataclasses.replace(plan, info=info)


def _plan_graph(graph: OpGraph, config, dtype: str, model, cyclic_layouts: bool, aligned_layouts: bool,
                t0: float, lean: bool = True, short_segs=False):
    """One planning (plan_poly's steps); ``short_segs``: False, True or "both" (a pair of plans)."""
    notes: list = []
    base = plan_per_op(graph, config, dtype)
    # weight loads run ahead of their kernels (next-fit SBUF rotation, in-order DMA queues), so the
    # codegen cuts them in bandwidth-sized pieces rather than one latency-critical piece per queue
    groups = [_with_param(g, ("prefetch", True))
              if g.kind in ("conv2d", "matmul") else g for g in base.groups]
    tm = graph.tensor_map
    it = dtype_bytes(dtype)
    size = _sbuf_size(config)
    root = base.alias_root()

    members: dict = {}
    for t in graph.tensors:
        members.setdefault(root(t.name), []).append(t.name)
    producer, readers = {}, {}
    for gi, g in enumerate(groups):
        producer[root(g.output)] = gi
        for i in g.inputs:
            readers.setdefault(root(i), []).append(gi)
    outputs = set(graph.outputs)

    pm = model if model is not None else _model_of(graph, notes)
    live_ops = {}
    arrays, node_ops = model_names(graph, pm) if pm is not None else ({}, {})
    if pm is not None:
        try:
            from tvm_poly.dataflow import liveness_table
            op_group = {m: gi for gi, g in enumerate(groups) for op in g.ops for m in node_ops.get(op, (op,))}
            tensor_of = {a: t for t, a in arrays.items()}
            for name, lv in liveness_table(pm).items():
                if lv.first_write is not None and lv.last_read is not None and \
                        lv.first_write.op in op_group and lv.last_read.op in op_group and name in tensor_of:
                    live_ops[tensor_of[name]] = (op_group[lv.first_write.op], op_group[lv.last_read.op])
        except Exception as e:  # noqa: BLE001
            notes.append(f"liveness from the model failed ({type(e).__name__}: {e}); graph order used")

    cyclic = cyclic_chains(groups, tm, root) if cyclic_layouts else set()
    if cyclic:
        notes.append(f"cyclic layout (concat chains and their batch norms): {len(cyclic)} tensors")
    aligned = aligned_concat_rows(groups, tm, root, cyclic) if aligned_layouts else {}
    if aligned:
        notes.append("concat layouts on whole rows of every input: " +
                     ", ".join(f"{t} {aligned[t]} x {int(tm[t].shape[1]) // aligned[t]}" for t in sorted(aligned)))
    # ---- candidates
    buffers, why_not = [], {}
    for r, gi in producer.items():
        info = tm[r]
        ms = members.get(r, [r])
        uses = sorted(set(readers.get(r, [])))
        if any(m in outputs for m in ms) or info.kind in ("input", "weight") or not uses:
            continue
        problem = resident_kinds_problem(groups[gi], [groups[u] for u in uses], r, tm, root)
        if problem:
            why_not[r] = problem
            continue
        rows = {min(128, int(tm[m].shape[1])) if r in cyclic else aligned.get(r) or resident_rows(tm[m].shape)
                for m in ms}
        if len(rows) != 1 or 0 in rows or len({int(tm[m].shape[0]) for m in ms}) != 1:
            why_not[r] = f"layout of shape {tuple(info.shape)} does not match the kernels' channel mapping"
            continue
        bad = False
        for u in uses + [gi]:
            g = groups[u]
            if g.kind == "concat" and _axis(g, tm) != 1 and int(np.prod(tm[g.output].shape[:_axis(g, tm)])) != 1:
                bad = True
            if g.kind == "elementwise":
                oshape = tuple(tm[g.output].shape)
                for i in g.inputs:
                    s = tuple(tm[i].shape)
                    if s != oshape and not (int(np.prod(s)) == 1 and tm[i].is_constant):
                        bad = True
        if bad:
            why_not[r] = "a consumer broadcasts it or reads it by channel tiles"
            continue
        (rows,) = rows
        elems = int(np.prod(info.shape))
        nbytes = -(-elems // rows) * it
        if r in cyclic:  # ceil(C / 128) planes of H*W
            nbytes = -(-int(info.shape[1]) // rows) * int(np.prod(info.shape[2:])) * it
        start, end = gi, max(uses)
        if r in live_ops:
            ls, le = live_ops[r]
            if (ls, le) != (start, end):
                notes.append(f"{r}: model liveness {ls}..{le} vs graph {start}..{end}; model used")
                start, end = min(ls, start), max(le, end)
        # spill cost: producer stores it once, every consumer reloads its read footprint (whole
        # tensor here; exact isl footprints replace it below as soon as anything must spill)
        buffers.append(Buffer(r, start, end, rows, nbytes, tuple(uses), elems * it, elems * it * len(uses)))

    def exact_reload(b):
        """Bytes the consumers of ``b`` would reload from HBM: their exact read footprints."""
        reload = 0
        for u in b.uses:
            fp = None
            if pm is not None and b.name in arrays:
                try:
                    from tvm_poly.queries import footprint
                    doms = [st.domain for st in group_statements(pm, groups[u], node_ops)]
                    if doms:
                        fp = _loaded_bytes(footprint(pm, doms, arrays[b.name], "read", elem_bytes=it).elements,
                                           tm[b.name].shape, it)
                except Exception:  # noqa: BLE001
                    fp = None
            use_fp[(b.name, u)] = fp if fp is not None else b.save_bytes
            reload += use_fp[(b.name, u)]
        return Buffer(b.name, b.start, b.end, b.partitions, b.nbytes, b.uses, b.save_bytes, reload)

    use_fp: dict = {}  # (tensor, reader) -> bytes the reader loads when the tensor is in HBM
    by_name: dict = {}  # candidate buffers by name (the exact-reload ones once computed)

    from target.codegen.const_block import block_bytes
    pinned = block_bytes(groups, tm)  # the program's constant block sits at the bottom of SBUF
    scratch_memo: dict = {}
    capacity = _capacity(graph, groups, it, size, None, pinned, scratch_memo, lean=lean)
    # ---- batch tiling: kernels [0, s) run per sub-batch of k images (their intermediates hold
    # k images and are reused by the next sub-batch; their weights load N/k times), kernels
    # [s, m) over the whole batch.  (k, s) minimises spill + extra weight traffic.
    N = int(tm[graph.inputs[0]].shape[0]) if graph.inputs and len(tm[graph.inputs[0]].shape) else 1
    wbytes = [_weight_bytes(graph, g, it) for g in groups]
    sep = 0
    while sep < len(groups) and groups[sep].kind in BATCH_KINDS and \
            all(int(tm[i].shape[0]) == N for i in (groups[sep].output,) + tuple(
                x for x in groups[sep].inputs if not tm[x].is_constant) if len(tm[i].shape)):
        sep += 1

    def seg_of(t, segs):
        for sg in segs:
            if sg[0] <= t < sg[1]:
                return sg
        return None

    def passes_of(lo_, segs):
        """Runs of a row segment starting at kernel lo_: once per sub-batch inside a batch segment."""
        sg = seg_of(lo_, segs)
        return N // sg[2] if sg is not None else 1

    def variant(segs, rsegs=()):
        """segs: [(lo, hi, k)]: kernels [lo, hi) run per sub-batch of k images, in order;
        rsegs: [(lo, hi, B, BandSchedule)]: kernels [lo, hi) run in B row bands."""
        bs = []
        cap_, band_of, extra = capacity, {}, 0
        wbufs, slotted = [], {}  # slotted: banded conv -> its weight slot's buffer name
        if rsegs:
            win = {}
            for lo_, hi_, B, sch in rsegs:
                sg = seg_of(lo_, segs)
                passes = passes_of(lo_, segs)
                band_of.update({t: (lo_, hi_, r, sg) for t, r in sch.cap_rows})
                for st in sch.steps:
                    if st.inputs:
                        win[st.group] = max(win.get(st.group, 0), st.inputs[0][2] - st.inputs[0][1])
                extra += passes * (len(sch.steps) - (hi_ - lo_)) * step_bytes
                for j in range(lo_, hi_):
                    # a conv's weights stay in SBUF across the bands when a slot fits (else every
                    # band reloads them: the slot's "reload" cost when it spills)
                    # (an LRN's band matrix likewise)
                    kind = groups[j].kind
                    wpp = _weight_pp(graph, groups[j], it) if kind == "conv2d" else \
                        _band_pp(graph, groups[j], it) if kind == "lrn" else 0
                    if wpp:
                        full = wbytes[j] if kind == "conv2d" else int(tm[groups[j].output].shape[1]) ** 2 * it
                        wbufs.append(Buffer(f"{groups[j].name}/weights", lo_, hi_ - 1, 128, wpp, (j,), 0,
                                            passes * (B - 1) * full))
                        if kind == "conv2d":
                            slotted[j] = wbufs[-1].name
                    else:
                        extra += passes * (B - 1) * wbytes[j]
            cap_ = _capacity(graph, groups, it, size, win, pinned, scratch_memo, frozenset(slotted), lean)
        stage_of = {}  # staged input -> its row segment (saves every reader but one its load)
        for lo_, hi_, B, sch in rsegs:
            sg = seg_of(lo_, segs)
            for t, r in sch.stage_rows:
                b = by_name[t]
                nb = b.nbytes * sg[2] // N if sg is not None else b.nbytes
                bs.append(Buffer(f"{t}@stage", lo_, hi_ - 1, b.partitions, -(-nb * r // int(tm[t].shape[2])),
                                 (lo_,), 0, 1 << 50))
                stage_of[t] = (lo_, hi_)
        for b in buffers:
            if b.name in band_of:  # band buffer: its rows of the current band, live through the segment
                lo_, hi_, r, sg = band_of[b.name]
                H = int(tm[b.name].shape[2])
                nb = b.nbytes * sg[2] // N if sg is not None else b.nbytes
                bs.append(Buffer(b.name, lo_, hi_ - 1, b.partitions, -(-nb * r // H), b.uses,
                                 b.save_bytes, b.reload_bytes))
                continue
            sg = seg_of(b.start, segs)
            if sg is not None and b.end < sg[1]:  # internal to the segment: k images, reused per sub-batch
                lo_, hi_ = b.start, b.end
                for s0, s1, *_ in rsegs:  # ... and live through a row segment it touches
                    if s0 <= hi_ and lo_ < s1:
                        lo_, hi_ = min(lo_, s0), max(hi_, s1 - 1)
                bs.append(Buffer(b.name, lo_, hi_, b.partitions, b.nbytes * sg[2] // N, b.uses,
                                 b.save_bytes, b.reload_bytes))
                continue
            # whole batch: live through every sub-batch of each segment its life touches (a
            # segment's kernels repeat per sub-batch, so its first kernel runs again after its
            # last one: a buffer produced before a segment and read inside it, or produced inside
            # and read after it, must survive the whole segment)
            lo_, hi_ = b.start, b.end
            for s0, s1, *_ in list(segs) + list(rsegs):
                if s0 <= hi_ and lo_ < s1:
                    lo_, hi_ = min(lo_, s0), max(hi_, s1 - 1)
            bs.append(b if (lo_, hi_) == (b.start, b.end) else
                      Buffer(b.name, lo_, hi_, b.partitions, b.nbytes, b.uses, b.save_bytes, b.reload_bytes))
        def priced(al, extra):
            """(plan cost of allocation ``al``, [(stem kernel, its stage bytes) without room])."""
            for lo_, hi_, B, sch in rsegs:  # halo rows that banded kernels re-read from HBM
                for (t, _), nrows in sch.reads:
                    if t not in al.slots:
                        sh = tm[t].shape  # (per sub-batch x sub-batches = the whole batch)
                        extra += max(0, nrows - int(sh[2])) * int(sh[0]) * int(sh[1]) * int(sh[3]) * \
                            (4 if t in graph.inputs else it)
            short = []
            for j, (stage_fn, reread) in stems.items():
                # a packed stem without room to stage its image (resident bytes live there + the
                # constant block) im2cols it straight from HBM; banded, it stages a window of rows
                rows_j = win.get(j) if rsegs and any(lo_ <= j < hi_ for lo_, hi_, *_ in rsegs) else \
                    int(tm[groups[j].inputs[0]].shape[2])
                if stage_fn(rows_j) > 0.7 * (size - pinned - al.used_at(j)):
                    extra += N * reread
                    short.append((j, stage_fn(rows_j)))
            for t, (lo_, hi_) in stage_of.items():
                if f"{t}@stage" in al.spilled:
                    return float("inf"), short
                if t not in al.slots:  # one load of every row instead of one per reader
                    u_in = [u for u in by_name[t].uses if lo_ <= u < hi_]
                    extra -= sum(use_fp.get((t, u), by_name[t].save_bytes) for u in u_in) - by_name[t].save_bytes
            return al.spill_save_bytes + al.spill_reload_bytes + extra + \
                sum((N // k - 1) * sum(wbytes[lo:hi]) for lo, hi, k in segs), short

        al = allocate(bs + wbufs, cap_, size)
        lost = {j for j, nm in slotted.items() if nm in al.spilled}
        if lost:  # a conv whose slot spilled loads its weights into a tile of its own per band
            cap_ = _capacity(graph, groups, it, size, win, pinned, scratch_memo, frozenset(set(slotted) - lost), lean)
            al = allocate(bs + wbufs, cap_, size)
        cost, short = priced(al, extra)
        if short:
            # or make room for those stems' stages: resident bytes at the stem at most what
            # leaves the stage 70% of the free range (the codegen's test), if that costs less
            cap_r = list(cap_)
            for j, st in short:
                cap_r[j] = min(cap_r[j], max(0, int(size - pinned - st / 0.7)))
            al_r = allocate(bs + wbufs, cap_r, size)
            cost_r, _ = priced(al_r, extra)
            if cost_r < cost:
                cost, al = cost_r, al_r
        return cost, al, bs

    stems = {j: st for j, g in enumerate(groups) if (st := _stem_stage(graph, g, it)) is not None}
    # a kernel call's fixed cost in bytes: one DMA latency at the aggregate bandwidth (a band step
    # waits for its weights and inputs before it computes, and its consumer for its output)
    step_bytes = int(float(getattr(config, "dma_latency_us", 2.0)) * 1e3 * int(getattr(config, "dma_queues", 4)) *
                     float(getattr(config, "dma_queue_bandwidth_gbps", 3.355)))
    best = (*variant([]), [], [])
    if best[1].spilled:  # spills are chosen by reload cost: make it exact (isl footprints)
        buffers = [exact_reload(b) for b in buffers]
        best = (*variant([]), [], [])
    untiled = best  # no batch and no spatial tiling
    by_name.update({b.name: b for b in buffers})
    # greedy: add segments left to right while the total (spill + extra weight bytes) drops
    lo = 0
    divisors = [d for d in range(1, N) if N % d == 0]
    while N > 1 and best[0] > 0 and lo < sep:
        cand = None
        for k in divisors:
            for hi in range(lo + 1, sep + 1):
                segs = best[3] + [(lo, hi, k)]
                c, al, bs = variant(segs)
                if c < best[0] and (cand is None or c < cand[0]):
                    cand = (c, al, bs, segs, [])
        if cand is None:
            break
        best = cand
        lo = best[3][-1][1]
    def finish(best, notes):
        """The PolyPlan of search result ``best`` (its own copy of the allocation: the concat
        slices edit it), or None when a cyclic tensor would be read per row band or sub-batch."""
        best = (best[0], _copy_allocation(best[1])) + tuple(best[2:])
        cut = best[3][-1][1] if best[3] else 0
        _, alloc, buffers, segs, rsegs = best
        alloc.check()
        sub_k = min((k for _, _, k in segs), default=N)
        rs_at = {r[0]: r for r in rsegs}
        band_rows = {}
        for lo_, hi_, B, sch in rsegs:
            band_rows.update(dict(sch.cap_rows))
            notes.append(f"spatial tiling: kernels {lo_}..{hi_ - 1} run in {B} row bands of "
                         f"{groups[hi_ - 1].output} ({len(sch.steps)} steps; band buffers: "
                         + (", ".join(f"{t} {r} rows" for t, r in sch.cap_rows) or "none") + ")")

        def emit(lo_, hi_, img=None):
            """Plan steps of kernels [lo_, hi_) (``img``: the sub-batch (n0, k) they run on)."""
            out, gi = [], lo_
            sub = (("images", img),) if img else ()
            while gi < hi_:
                if gi not in rs_at:
                    g = groups[gi]
                    out.append(g if img is None else GroupPlan(g.name, g.kind, g.ops, g.inputs, g.output,
                                                               tuple(sorted(g.params + sub))))
                    gi += 1
                    continue
                _, rhi, B, sch = rs_at[gi]
                last = {st.group: k for k, st in enumerate(sch.steps)}
                srows = dict(sch.stage_rows)
                last_read = {t: k for k, st in enumerate(sch.steps) for t, *_ in st.inputs if t in srows}
                for k, st in enumerate(sch.steps):
                    g = groups[st.group]
                    extra_p = (("rows", st.rows), ("origin", st.origin), ("in_rows", st.inputs)) + sub
                    if st.loads:  # (tensor, rows r0..r1, origin, stage offset, bytes, partitions, rows)
                        extra_p += (("stage", tuple((t, r0, r1, org, alloc.offset(f"{t}@stage"),
                                                     alloc.slots[f"{t}@stage"][1], by_name[t].partitions, srows[t])
                                                    for t, r0, r1, org in st.loads)),)
                    done_t = tuple(t for t, kk in last_read.items() if kk == k)
                    if done_t:
                        extra_p += (("unstage", done_t),)
                    wn = f"{g.name}/weights"
                    if wn in alloc.slots:  # (freed after the segment's last band of each sub-batch)
                        extra_p += (("weight_slot", (alloc.offset(wn), alloc.slots[wn][1], 128, last[st.group] == k)),)
                    out.append(GroupPlan(g.name, g.kind, g.ops, g.inputs, g.output, tuple(sorted(g.params + extra_p))))
                gi = rhi
            return out

        steps = []
        for lo_, hi_, k in segs:
            notes.append(f"batch tiling: kernels {lo_}..{hi_ - 1} run per {k} of {N} images "
                         f"(weights of that segment load {N // k}x)")
            for n0 in range(0, N, k):
                steps += emit(lo_, hi_, (n0, k))
        steps += emit(cut, len(groups))

        placements = [t for t in base.tensors if t.placement == "alias"]
        resident = set()
        kept_weights = sorted(n for n in alloc.slots if n not in tm)  # spatial tiling's weight slots
        for b in buffers:
            if b.name in alloc.slots and b.name in tm:
                resident.add(b.name)
                sg = seg_of(b.start, segs)
                imgs = sg[2] if sg is not None and b.end < sg[1] else int(tm[b.name].shape[0])
                placements.append(TensorPlacement(b.name, "sbuf", start_partition=0, num_partitions=b.partitions,
                                                  offset=alloc.offset(b.name), nbytes=alloc.slots[b.name][1],
                                                  images=imgs, band_rows=band_rows.get(b.name, 0),
                                                  cyclic=b.name in cyclic))
        aliased = {p.name for p in placements}
        for t in graph.tensors:
            if t.name not in aliased and not t.is_constant:
                placements.append(TensorPlacement(t.name, "hbm"))
        steps = _lane_pairs(steps, resident, graph, root, int(getattr(config, "max_moving_free", 512)), notes)
        steps = _row_pairs(steps, resident, graph, root, int(getattr(config, "max_moving_free", 512)), notes)
        slices = _concat_slices(groups, alloc, resident, graph, root, segs, rsegs, steps, notes, cyclic)
        if slices:
            outs_ = {v[0] for v in slices.values()}
            placements = [TensorPlacement(t.name, "alias", alias_of=slices[t.name][0], start_partition=slices[t.name][1],
                                          num_partitions=slices[t.name][2], plane=slices[t.name][3],
                                          cyclic=slices[t.name][4]) if t.name in slices else
                          dataclasses.replace(t, offset=alloc.offset(t.name)) if t.name in outs_ else t
                          for t in placements]
            resident -= set(slices)

        floor = None
        if pm is not None:
            try:
                from tvm_poly.queries import compulsory_traffic
                floor = _model_floor(compulsory_traffic(pm, dtype), graph, pm)
            except Exception as e:  # noqa: BLE001
                notes.append(f"compulsory traffic from the model failed: {e}")
        if floor is None:
            floor = sum(int(np.prod(t.shape)) * it for t in graph.tensors
                        if t.kind in ("input", "weight", "output") or t.name in outputs)
        inter = [t for t in graph.tensors if t.kind not in ("input", "weight") and t.name not in outputs]
        info = {
            "resident": tuple(sorted(resident)),
            "spilled": tuple(sorted((n, why) for n, why in alloc.spilled.items() if n in tm)),
            "not_resident": tuple(sorted(why_not.items())),
            "spill_save_bytes": sum(alloc.buffers[n].save_bytes for n in alloc.spilled if n in tm and n in alloc.buffers),
            "spill_reload_bytes": sum(alloc.buffers[n].reload_bytes for n in alloc.spilled if n in tm and n in alloc.buffers),
            "sbuf_peak_bytes": alloc.peak,
            "sbuf_peak_kernel": alloc.peak_time,
            "fragmentation": round(alloc.fragmentation, 4),
            "compulsory_bytes": int(floor),
            "resident_bytes": sum(b.save_bytes for b in buffers if b.name in resident),
            "intermediate_bytes": sum(int(np.prod(t.shape)) * it for t in inter if root(t.name) == t.name),
            "polyhedral_model": pm is not None,
            "planner_seconds": round(time.perf_counter() - t0, 3),
        }
        info["planned_cost_bytes"] = int(min(best[0], 1 << 62))  # spill + extra bytes (+ kernel-call cost)
        info["batch_tiling"] = (sub_k, cut)
        info["batch_segments"] = tuple(segs)
        info["extra_weight_bytes"] = sum((N // k - 1) * sum(wbytes[lo_:hi_]) for lo_, hi_, k in segs) + \
            sum(passes_of(lo_, segs) * (B - 1) * wbytes[j] for lo_, hi_, B, _ in rsegs
                for j in range(lo_, hi_) if f"{groups[j].name}/weights" not in alloc.slots)
        info["row_segments"] = tuple((lo_, hi_, B) for lo_, hi_, B, _ in rsegs)
        info["band_weights_kept"] = tuple(kept_weights)
        info["aligned_rows"] = tuple(sorted(aligned.items()))
        if cyclic and any((g.param("rows") is not None or g.param("images")) and
                          any(root(t) in cyclic for t in tuple(g.inputs) + (g.output,)) for g in steps):
            return None  # (the caller plans again without the cyclic layout)
        return PolyPlan("poly", dtype, tuple(placements), tuple(steps), info=tuple(sorted(info.items())),
                        notes=tuple(notes), _allocation=alloc, _kernels=tuple(g.tag for g in groups))

    # spatial tiling, per flavour: "first" (one pass) and/or "short" (then the short-segment pass,
    # plan_poly's ``short_segments``): both come from one planning (the short pass starts from the
    # first pass's result, so "both" costs the short passes only); "auto": both unless concats take
    # aligned layouts (the driver then lowers the plan without them too, and a short-segment
    # alternative comes from the plan it keeps: the short passes here could be wasted)
    pair = short_segs in ("both", "auto")
    want = ("first", "short") if short_segs == "both" or (short_segs == "auto" and not aligned) else \
        ("first",) if short_segs == "auto" else ("short",) if short_segs else ("first",)

    def tiled(start, flavours):
        f1 = _spatial_tiling(start, variant, graph, groups, buffers, pm, arrays, node_ops, members, readers,
                             root, outputs, notes)
        out = {"first": f1}
        if "short" in flavours:
            out["short"] = _spatial_tiling(f1, variant, graph, groups, buffers, pm, arrays, node_ops, members,
                                           readers, root, outputs, notes, short_pass=True)
        return out
    bests = {f: best for f in want}
    if best[1].spilled and pm is not None:
        bests = {f: b for f, b in tiled(best, want).items() if f in want}
    if best[3] and untiled[1].spilled and pm is not None:
        # spatial tiling instead of batch tiling (whole batch per band: weights per band, not per
        # sub-batch); the cheaper of the two wins
        alt = tiled(untiled, want)
        bests = {f: alt[f] if alt[f][0] < b[0] else b for f, b in bests.items()}
    more = [f for f, b in bests.items() if N > 1 and not b[3] and sep and b[1].spilled and pm is not None]
    if more:
        # batch tiling that pays only with spatial tiling inside it (a sub-batch's activations
        # still spill, e.g. VGG's 224 x 224 layers): a prefix per sub-batch, then row bands; the
        # prefix ends where a kernel shrinks the rows (later layers: small activations, large
        # weights, better over the whole batch) or at the end of the batch-separable kernels
        def shrinks(j):
            sh_in = [tm[i].shape for i in groups[j].inputs if not tm[i].is_constant and len(tm[i].shape) == 4]
            so = tm[groups[j].output].shape
            return len(so) == 4 and any(int(s[2]) > int(so[2]) for s in sh_in)
        cuts = sorted({sep} | {j + 1 for j in range(sep) if shrinks(j)})
        for k in divisors:
            for hi in cuts:
                c, al, bs = variant([(0, hi, k)])
                alt = tiled((c, al, bs, [(0, hi, k)], []), more)
                for f in more:
                    if alt[f][0] < bests[f][0]:
                        bests[f] = alt[f]
    plans = {f: finish(bests[f], list(notes)) for f in want}
    need = [f for f in want if plans[f] is None]
    # the cyclic layout is not read per row band or sub-batch: plan without it (once for both
    # flavours when both need it)
    if pair and len(need) == len(want):
        return _plan_graph(graph, config, dtype, model, False, aligned_layouts, t0, lean, short_segs)
    for f in need:
        plans[f] = _plan_graph(graph, config, dtype, model, False, aligned_layouts, t0, lean, f == "short")
    return (plans["first"], plans.get("short")) if pair else plans[want[0]]

