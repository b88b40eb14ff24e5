"""Relax ``main`` -> :class:`OpGraph`: the operator graph the planners and codegen work on.

``graph_from_relax(func_or_mod)`` walks the dataflow bindings of a Relax function (TVM
0.27 API) and produces frozen :class:`OpNode` / :class:`TensorInfo` records:

* constants (``GenericConst``) become ``weight`` tensors with their value;
  ``broadcast_to``/``permute_dims``/``reshape`` of constants are folded at compile time
  (this is how from_onnx expresses ConstantOfShape weights and Gemm's transposed B);
* ``broadcast_to(x, x.shape)`` is an alias (no node);
* ``batch_norm`` + ``TupleGetItem(0)`` is one node ``batch_norm`` whose output is the
  item-0 var (the mean/var outputs are only supported when unused);
* ``sum(stack(xs, axis=0), axis=[0])`` (ONNX Sum) is one node ``add_n``;
* every node records ``supported`` and, if not, the ``reason``.

Node names are the binding var names (``lv16``); tensor names are Relax var names
(parameters keep their ONNX names, e.g. ``gpu_0/data_0``).
"""
from __future__ import annotations

from functools import cached_property
from types import MappingProxyType
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

SUPPORTED_OPS = {
    "conv2d", "batch_norm", "relu", "add", "subtract", "multiply", "divide", "maximum", "minimum",
    "add_n", "max_pool2d", "avg_pool2d", "reshape", "matmul", "permute_dims", "softmax",
    "sigmoid", "tanh", "exp", "sqrt", "identity", "dropout", "concat", "lrn",
    "expand_dims", "squeeze", "avg_pool3d", "power", "log_softmax", "mean", "sum", "max", "min",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    dtype: str
    kind: str  # input | weight | intermediate | output
    value: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    @property
    def is_constant(self) -> bool:
        return self.value is not None

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


@dataclass(frozen=True)
class OpNode:
    name: str
    op: str
    inputs: tuple
    output: str
    attrs: tuple = ()  # sorted (key, value) pairs; use .attr(key)
    shapes: tuple = ()  # input shapes
    dtypes: tuple = ()
    supported: bool = True
    reason: str = ""

    def attr(self, key, default=None):
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.op}"


@dataclass(frozen=True)
class OpGraph:
    nodes: tuple
    tensors: tuple  # TensorInfo
    inputs: tuple  # names of graph inputs (in order)
    outputs: tuple  # names of graph outputs
    name: str = "main"

    def tensor(self, name) -> TensorInfo:
        return self._tensors_by_name[name]

    @property
    def tensor_map(self):
        """name -> TensorInfo (a read-only view of a map built once per graph)."""
        return MappingProxyType(self._tensors_by_name)

    def node(self, name) -> OpNode:
        return self._nodes_by_name[name]

    @cached_property
    def _tensors_by_name(self) -> dict:
        return {t.name: t for t in self.tensors}

    @cached_property
    def _nodes_by_name(self) -> dict:
        out = {}
        for n in self.nodes:
            out.setdefault(n.name, n)  # the first node of a name, as the linear scan found it
        return out

    def producer(self, tensor) -> Optional[OpNode]:
        for n in self.nodes:
            if n.output == tensor:
                return n
        return None

    def consumers(self, tensor) -> list:
        return [n for n in self.nodes if tensor in n.inputs]

    def subgraph(self, names) -> "OpGraph":
        """The nodes named in ``names`` (in graph order); tensors they read that are produced
        outside become inputs (constants stay weights), tensors used outside or graph
        outputs become outputs."""
        names = set(names)
        nodes = tuple(n for n in self.nodes if n.name in names)
        produced = {n.output for n in nodes}
        tmap = self.tensor_map
        used_outside = set(self.outputs)
        for n in self.nodes:
            if n.name not in names:
                used_outside.update(n.inputs)
        ins, outs, tensors = [], [], {}
        for n in nodes:
            for i in n.inputs:
                t = tmap[i]
                if i not in produced and i not in tensors:
                    kind = "weight" if t.kind == "weight" else "input"
                    tensors[i] = TensorInfo(t.name, t.shape, t.dtype, kind, t.value)
                    if kind == "input":
                        ins.append(i)
        for n in nodes:
            t = tmap[n.output]
            kind = "output" if n.output in used_outside else "intermediate"
            tensors[n.output] = TensorInfo(t.name, t.shape, t.dtype, kind, None)
            if kind == "output":
                outs.append(n.output)
        return OpGraph(nodes, tuple(tensors.values()), tuple(ins), tuple(outs), self.name)

    def __str__(self):
        lines = [f"OpGraph {self.name}: inputs {list(self.inputs)} outputs {list(self.outputs)}"]
        tm = self.tensor_map
        for n in self.nodes:
            flag = "" if n.supported else f"   [host: {n.reason}]"
            attrs = ", ".join(f"{k}={v}" for k, v in n.attrs)
            lines.append(f"  {n.output}{list(tm[n.output].shape)} = {n.op}({', '.join(n.inputs)}"
                         f"{'; ' + attrs if attrs else ''}){flag}")
        return "\n".join(lines)


# ------------------------------------------------------------------ relax walking
def _conv(v):
    """Convert TVM attr values to plain Python."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if hasattr(v, "value") and not hasattr(v, "__len__"):
        return v.value
    try:
        return tuple(_conv(x) for x in v)
    except TypeError:
        pass
    try:
        return int(v)
    except Exception:
        return str(v)


_ATTR_KEYS = {
    "conv2d": ("strides", "padding", "dilation", "groups", "data_layout", "kernel_layout", "out_layout"),
    "batch_norm": ("axis", "epsilon", "center", "scale"),
    "max_pool2d": ("pool_size", "strides", "dilation", "padding", "ceil_mode", "count_include_pad", "layout"),
    "avg_pool2d": ("pool_size", "strides", "dilation", "padding", "ceil_mode", "count_include_pad", "layout"),
    "softmax": ("axis",),
    "permute_dims": ("axes",),
    "concat": ("axis",),
    "sum": ("axis", "keepdims"),
    "stack": ("axis",),
    "lrn": ("size", "axis", "alpha", "beta", "bias"),
    "dropout": ("rate",),
    "avg_pool3d": ("pool_size", "strides", "dilation", "padding", "ceil_mode", "count_include_pad", "layout"),
    "expand_dims": ("axis",),
    "squeeze": ("axis",),
    "log_softmax": ("axis",),
    "mean": ("axis", "keepdims"),
    "max": ("axis", "keepdims"),
    "min": ("axis", "keepdims"),
}

_RENAME = {"nn.conv2d": "conv2d", "nn.batch_norm": "batch_norm", "nn.relu": "relu",
           "nn.max_pool2d": "max_pool2d", "nn.avg_pool2d": "avg_pool2d", "nn.softmax": "softmax",
           "nn.dropout": "dropout", "nn.lrn": "lrn", "nn.local_response_norm": "lrn",
           "nn.avg_pool3d": "avg_pool3d", "nn.log_softmax": "log_softmax"}


def _tinfo(ty):
    if hasattr(ty, "fields"):
        return [_tinfo(f) for f in ty.fields]
    shape = tuple(int(x) for x in ty.shape.values) if hasattr(ty.shape, "values") else None
    return shape, str(ty.dtype)


def _vname(v):
    return str(v.name)


def _is_const(e):
    return hasattr(e, "value") and hasattr(e.value, "numpy")


def graph_from_relax(func_or_mod, name: str = "main") -> OpGraph:
    import tvm

    func = func_or_mod[name] if hasattr(func_or_mod, "functions") or hasattr(func_or_mod, "get_global_var") else func_or_mod
    tensors: dict[str, TensorInfo] = {}
    consts: dict[str, np.ndarray] = {}
    alias: dict[str, str] = {}
    nodes: list[OpNode] = []
    tuple_src: dict[str, tuple] = {}  # var -> ("bn", node index) for batch_norm tuples
    stack_src: dict[str, tuple] = {}
    cidx = [0]

    num_input = None
    try:
        num_input = int(func.attrs["num_input"]) if func.attrs is not None and "num_input" in func.attrs else None
    except Exception:
        num_input = None
    inputs = []
    for i, p in enumerate(func.params):
        shp, dt = _tinfo(p.ty)
        kind = "input" if num_input is None or i < num_input else "weight"
        tensors[_vname(p)] = TensorInfo(_vname(p), shp, dt, kind)
        if kind == "input":
            inputs.append(_vname(p))

    def const_name(val):
        cidx[0] += 1
        return f"const{cidx[0] - 1}"

    def arg(e):
        """Name of the tensor an argument refers to (registering constants)."""
        if _is_const(e):
            val = e.value.numpy()
            nm = const_name(val)
            tensors[nm] = TensorInfo(nm, tuple(val.shape), str(val.dtype), "weight", val)
            consts[nm] = val
            return nm
        if isinstance(e, tvm.ir.expr.Var) or hasattr(e, "name"):
            nm = _vname(e)
            return alias.get(nm, nm)
        raise NotImplementedError(f"argument {type(e).__name__}")

    body = func.body
    for block in body.blocks:
        for b in block.bindings:
            out = _vname(b.var)
            val = b.value
            tyi = _tinfo(b.var.ty)
            if type(val).__name__ == "TupleGetItem":
                src = _vname(val.tuple_value)
                if src in tuple_src and val.index == 0:
                    ni = tuple_src[src]
                    n = nodes[ni]
                    nodes[ni] = OpNode(n.name, n.op, n.inputs, out, n.attrs, n.shapes, n.dtypes,
                                       n.supported, n.reason)
                    tensors[out] = TensorInfo(out, tyi[0], tyi[1], "intermediate")
                elif src in tuple_src:
                    tensors[out] = TensorInfo(out, tyi[0], tyi[1], "intermediate")
                    tuple_src.setdefault("__unused_items__", [])
                    tuple_src["__unused_items__"].append((out, src))
                else:
                    raise NotImplementedError(f"TupleGetItem of {src}")
                continue
            if type(val).__name__ == "Var" or (hasattr(val, "name") and not hasattr(val, "op")):
                alias[out] = arg(val)
                continue
            if not hasattr(val, "op"):
                raise NotImplementedError(f"binding {out}: {type(val).__name__}")
            opname = str(val.op.name)
            if opname.startswith("relax."):
                opname = opname[len("relax."):]
            op = _RENAME.get(opname, opname)
            args = list(val.args)
            attrs = {}
            if val.attrs is not None:
                for k in _ATTR_KEYS.get(op, ()):
                    try:
                        attrs[k] = _conv(getattr(val.attrs, k))
                    except Exception:
                        pass
            # ---- compile-time folding of constants
            if op in ("broadcast_to", "reshape", "permute_dims", "astype") and args and \
                    (_is_const(args[0]) or arg_is_const(args[0], alias, consts)):
                x = consts[arg(args[0])] if not _is_const(args[0]) else args[0].value.numpy()
                if op == "broadcast_to":
                    x = np.broadcast_to(x, tyi[0]).copy()
                elif op == "reshape":
                    x = x.reshape(tyi[0])
                elif op == "astype":
                    x = x.astype(tyi[1])
                else:
                    axes = attrs.get("axes")
                    x = np.transpose(x, axes if axes else None).copy()
                consts[out] = x
                tensors[out] = TensorInfo(out, tuple(x.shape), str(x.dtype), "weight", x)
                continue
            if op == "broadcast_to":
                src = arg(args[0])
                if tuple(tensors[src].shape) == tuple(tyi[0]):
                    alias[out] = src
                    continue
            if op == "stack":
                names = [arg(a) for a in args[0].fields]
                stack_src[out] = (names, attrs.get("axis", 0))
                tensors[out] = TensorInfo(out, tyi[0], tyi[1], "intermediate")
                continue
            if op == "sum" and args and _vname(args[0]) in stack_src:
                names, ax = stack_src[_vname(args[0])]
                if ax == 0 and tuple(attrs.get("axis") or ()) == (0,) and not attrs.get("keepdims"):
                    op, ins = "add_n", names
                    attrs = {}
                    stack_src[_vname(args[0])] = None
                    _add_node(nodes, tensors, out, op, ins, attrs, tyi)
                    continue
            if op == "dropout" or op == "astype" and False:
                pass
            ins = []
            for a in args:
                if type(a).__name__ in ("ShapeExpr",) or a.__class__.__name__ == "PrimValue":
                    continue
                if type(a).__name__ == "Tuple":
                    ins += [arg(x) for x in a.fields]
                else:
                    ins.append(arg(a))
            if op == "batch_norm":
                _add_node(nodes, tensors, out, op, ins, attrs, tyi[0] if isinstance(tyi, list) else tyi, tuple_out=True)
                tuple_src[out] = len(nodes) - 1
                continue
            if op == "dropout":
                _add_node(nodes, tensors, out, "identity", ins[:1], {}, tyi[0] if isinstance(tyi, list) else tyi, tuple_out=isinstance(tyi, list))
                if isinstance(tyi, list):
                    tuple_src[out] = len(nodes) - 1
                continue
            _add_node(nodes, tensors, out, op, ins, attrs, tyi)
    # function result
    res = body.body
    outs = []
    res_items = res.fields if type(res).__name__ == "Tuple" else [res]
    for r in res_items:
        nm = arg(r)
        outs.append(nm)
    # unsupported leftovers: stacks that were not folded
    for s, v in stack_src.items():
        if v is not None:
            raise NotImplementedError(f"stack {s} not followed by sum(axis=0)")
    for out_name, src in tuple_src.get("__unused_items__", []):
        for n in nodes:
            if out_name in n.inputs:
                raise NotImplementedError(f"{n.name} uses {out_name}, a statistics output of {src}")
    # kinds
    final = {}
    used = set()
    for n in nodes:
        used.update(n.inputs)
    live = set(outs) | used
    for nm, t in tensors.items():
        if nm not in live and t.kind in ("intermediate", "weight"):
            continue
        kind = t.kind
        if nm in outs and kind == "intermediate":
            kind = "output"
        final[nm] = TensorInfo(t.name, t.shape, t.dtype, kind, t.value)
    from .graph_fold import fold_constant_affine  # constant per-channel affine chains -> batch_norm
    from .graph_shuffle import fold_channel_shuffles  # channel shuffles -> permuted weights

    return fold_channel_shuffles(fold_constant_affine(
        OpGraph(tuple(nodes), tuple(final.values()), tuple(inputs), tuple(outs), name)))


def arg_is_const(e, alias, consts):
    if _is_const(e):
        return True
    if hasattr(e, "name"):
        nm = _vname(e)
        return alias.get(nm, nm) in consts
    return False


def _add_node(nodes, tensors, out, op, ins, attrs, tyi, tuple_out=False):
    shp, dt = tyi if not isinstance(tyi, list) else tyi[0]
    supported, reason = True, ""
    if op not in SUPPORTED_OPS:
        supported, reason = False, f"operator {op} has no NeuronCore lowering"
    if dt not in ("float32",):
        supported, reason = False, f"dtype {dt}"
    shapes = tuple(tuple(tensors[i].shape) for i in ins)
    dtypes = tuple(tensors[i].dtype for i in ins)
    if op == "conv2d":
        if attrs.get("data_layout", "NCHW") != "NCHW" or attrs.get("kernel_layout", "OIHW") != "OIHW":
            supported, reason = False, "conv2d layout other than NCHW/OIHW"
        elif tuple(attrs.get("dilation", (1, 1))) != (1, 1):
            supported, reason = False, "conv2d dilation != 1"
    if op == "batch_norm" and not all(tensors[i].is_constant for i in ins[1:]):
        pass  # handled at run time as a standalone op (scale/shift computed on device)
    node = OpNode(out, op, tuple(ins), out, tuple(sorted(attrs.items())), shapes, dtypes, supported, reason)
    nodes.append(node)
    if not tuple_out:
        tensors[out] = TensorInfo(out, shp, dt, "intermediate")
    else:
        tensors[out] = TensorInfo(out, shp, dt, "intermediate")
