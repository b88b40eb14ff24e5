"""Programs as readable text, one instruction a line; ``parse_program(format_program(p)) == p``.

Syntax (``#`` starts a comment; blank lines are ignored; indentation is optional)::

    program "resnet50"
    hbm "x" offset=0 shape=1,3,224,224 dtype=fp32 kind=input
    hbm "y" offset=602112 shape=1,1000 dtype=fp32 kind=output
    stream dma0
      dma_copy dst=sbuf[0:3]@0[50176:1]bf16 src=hbm[0:3;ps=50176]@0[50176:1]fp32 signal=x_in
    stream tensor
      matmul dst=psum[0:64]@0[512:1]fp32 stationary=sbuf[0:27]@0[64:1]bf16 moving=sbuf[0:27]@128[512:1]bf16 start=1 stop=1 tag="conv1" wait=x_in>=1 signal=mm0

* One ``stream NAME`` line opens each stream (in program order; a stream may be empty).
* An instruction line is ``OPNAME field=value ...``; fields equal to their default are omitted.
  OPNAME is matmul, transpose, activation, tensor_tensor, tensor_scalar, tensor_reduce,
  tensor_copy, memset, iota, dma_copy.
* Access pattern: ``MEM[START:COUNT]@OFFSET[SIZE:STRIDE,...]DTYPE`` for SBUF/PSUM and
  ``hbm[0:COUNT;ps=PARTITION_STRIDE]@OFFSET[SIZE:STRIDE,...]DTYPE`` for HBM (``;ps=`` omitted when
  0).  Sizes and strides in elements, offset in bytes, strides may be negative.
* Numbers: floats in Python ``repr`` form (exact), ints decimal, booleans ``1``/``0``; scalar
  operands are a float or an access pattern; strings (tag, names) are JSON-quoted; optional
  strings may be ``none``; int tuples comma-separated (``pattern=1,0``).
* ``wait=SEM>=V,SEM2>=V2`` and ``signal=SEM,SEM2``; semaphore names are ``[A-Za-z0-9_.:/-]+``.
"""
from __future__ import annotations

import json
import re
import typing
from dataclasses import fields, MISSING

from .errors import ParseError
from .isa import AP, HbmTensor, INSTRUCTIONS, Mem, Program, Wait

_OPNAME = {}
for _c in INSTRUCTIONS:
    _OPNAME[_c] = re.sub(r"(?<!^)(?=[A-Z])", "_", _c.__name__).lower()
_OPNAME = {**_OPNAME}
_OPNAME[next(c for c in INSTRUCTIONS if c.__name__ == "MatMul")] = "matmul"
_OPNAME[next(c for c in INSTRUCTIONS if c.__name__ == "DmaCopy")] = "dma_copy"
_BY_NAME = {v: k for k, v in _OPNAME.items()}
_FIELD_KEY = {"waits": "wait", "signals": "signal"}
_KEY_FIELD = {v: k for k, v in _FIELD_KEY.items()}
_SEM_RE = re.compile(r"^[A-Za-z0-9_.:/\-]+$")
_AP_RE = re.compile(r"^(hbm|sbuf|psum)\[(-?\d+):(\d+)(?:;ps=(-?\d+))?\]@(-?\d+)\[([^\]]*)\]([a-z0-9]+)$")
_TOKEN_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)')

_HINTS = {c: typing.get_type_hints(c) for c in INSTRUCTIONS}


def format_ap(ap: AP) -> str:
    ps = f";ps={ap.partition_stride}" if ap.partition_stride else ""
    dims = ",".join(f"{n}:{s}" for n, s in zip(ap.sizes, ap.strides))
    return f"{ap.mem.value}[{ap.start_partition}:{ap.num_partitions}{ps}]@{ap.offset}[{dims}]{ap.dtype}"


def parse_ap(s: str) -> AP:
    m = _AP_RE.match(s)
    if not m:
        raise ValueError(f"not an access pattern: {s!r} (expected MEM[START:COUNT]@OFFSET[SIZE:STRIDE,...]DTYPE)")
    mem, sp, np_, ps, off, dims, dt = m.groups()
    sizes, strides = [], []
    for part in dims.split(","):
        a, _, b = part.partition(":")
        sizes.append(int(a))
        strides.append(int(b))
    return AP(Mem(mem), int(sp), int(np_), int(off), tuple(sizes), tuple(strides), dt, int(ps) if ps else 0)


def _fmt_value(v, hint) -> str:
    if isinstance(v, AP):
        return format_ap(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if v is None:
        return "none"
    if isinstance(v, tuple):
        if v and isinstance(v[0], Wait):
            for w in v:
                if not _SEM_RE.match(w.sem):
                    raise ValueError(f"semaphore name {w.sem!r} cannot be printed")
            return ",".join(f"{w.sem}>={w.value}" for w in v)
        if v and isinstance(v[0], str):
            for x in v:
                if not _SEM_RE.match(x):
                    raise ValueError(f"semaphore name {x!r} cannot be printed")
            return ",".join(v)
        return ",".join(str(int(x)) for x in v)
    raise ValueError(f"cannot print value {v!r}")


def format_instr(ins) -> str:
    parts = [_OPNAME[type(ins)]]
    hints = _HINTS[type(ins)]
    for f in fields(ins):
        v = getattr(ins, f.name)
        if f.default is not MISSING and v == f.default and type(v) is type(f.default):
            continue
        if f.default_factory is not MISSING and v == f.default_factory():
            continue
        parts.append(f"{_FIELD_KEY.get(f.name, f.name)}={_fmt_value(v, hints[f.name])}")
    return " ".join(parts)


def format_program(p: Program) -> str:
    out = [f"program {json.dumps(p.name)}"]
    for t in p.hbm:
        out.append(f"hbm {json.dumps(t.name)} offset={t.offset} shape={','.join(str(x) for x in t.shape)} "
                   f"dtype={t.dtype} kind={t.kind}")
    for name, instrs in p.streams:
        out.append(f"stream {name}")
        for ins in instrs:
            out.append("  " + format_instr(ins))
    return "\n".join(out) + "\n"


def _parse_value(text: str, hint):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is AP:
        return parse_ap(text)
    if hint is bool:
        if text in ("1", "true", "True"):
            return True
        if text in ("0", "false", "False"):
            return False
        raise ValueError(f"expected 1/0, got {text!r}")
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    if hint is str:
        return _parse_str(text)
    if origin is typing.Union:
        if type(None) in args:
            if text == "none":
                return None
            rest = [a for a in args if a is not type(None)]
            return _parse_value(text, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)])
        if AP in args:
            if _AP_RE.match(text):
                return parse_ap(text)
            return float(text)
    if origin is tuple:
        elem = args[0]
        if text == "":
            return ()
        items = text.split(",")
        if elem is Wait:
            out = []
            for it in items:
                sem, sep, val = it.partition(">=")
                if not sep:
                    raise ValueError(f"expected SEM>=VALUE, got {it!r}")
                out.append(Wait(sem, int(val)))
            return tuple(out)
        if elem is str:
            return tuple(items)
        return tuple(int(x) for x in items)
    raise ValueError(f"cannot parse field of type {hint}")


def _parse_str(text: str) -> str:
    if text.startswith('"'):
        return json.loads(text)
    return text


def parse_instr(line: str):
    line = line.strip()
    op, _, rest = line.partition(" ")
    cls = _BY_NAME.get(op)
    if cls is None:
        raise ValueError(f"unknown instruction {op!r}; known: {sorted(_BY_NAME)}")
    hints = _HINTS[cls]
    kw = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _TOKEN_RE.match(rest, pos)
        if not m:
            raise ValueError(f"cannot read field at {rest[pos:pos + 40]!r}")
        key, val = m.group(1), m.group(2)
        fname = _KEY_FIELD.get(key, key)
        if fname not in hints:
            raise ValueError(f"{op} has no field {key!r}")
        if fname in kw:
            raise ValueError(f"field {key!r} given twice")
        kw[fname] = _parse_value(val, hints[fname])
        pos = m.end()
        while pos < len(rest) and rest[pos] == " ":
            pos += 1
    return cls(**kw)


def parse_program(text: str) -> Program:
    name = "program"
    hbm = []
    streams: list[tuple[str, list]] = []
    for ln, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            head, _, rest = line.partition(" ")
            if head == "program":
                name = _parse_str(rest.strip())
            elif head == "hbm":
                m = re.match(r'^("(?:[^"\\]|\\.)*"|\S+)\s+(.*)$', rest.strip())
                if not m:
                    raise ValueError("expected: hbm NAME offset=.. shape=.. dtype=.. kind=..")
                tname = _parse_str(m.group(1))
                kv = dict(t.split("=", 1) for t in m.group(2).split())
                sh = kv.pop("shape", "")
                shape = tuple(int(x) for x in sh.split(",")) if sh else ()
                t = HbmTensor(tname, int(kv.pop("offset")), shape, kv.pop("dtype", "fp32"), kv.pop("kind", "scratch"))
                if kv:
                    raise ValueError(f"unknown hbm fields {sorted(kv)}")
                hbm.append(t)
            elif head == "stream":
                streams.append((rest.strip(), []))
            else:
                if not streams:
                    raise ValueError("instruction before any 'stream NAME' line")
                streams[-1][1].append(parse_instr(line))
        except (ValueError, KeyError, TypeError) as e:
            raise ParseError(f"line {ln}: {e}: {line[:120]}") from None
    return Program(hbm=tuple(hbm), streams=tuple((n, tuple(i)) for n, i in streams), name=name)
