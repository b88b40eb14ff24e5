"""Program text round-trip, parse errors, configs, trace, and the `tvm-poly sim` CLI."""
import json
import os

import numpy as np
import pytest

from target.config import config_from_dict, load_config
from target.errors import ConfigError, ParseError
from target.isa import (AP, Activation, DmaCopy, HbmTensor, Iota, MatMul, Mem, Memset, Program, TensorCopy,
                        TensorReduce, TensorScalar, TensorTensor, Transpose, Wait, hbm_ap, psum_ap, sbuf_ap)
from target.program_text import format_program, parse_program
from target.simulator import simulate
from target.sim_cli import main
from target.trace import write_trace


def every_instruction_program():
    s = sbuf_ap(0, 128, 0, (4, 8), "bf16", strides=(16, -1))
    col = sbuf_ap(32, 32, 8, (1,))
    hb = AP(Mem.HBM, 0, 3, 64, (2, 5), (7, 1), "fp16", 123)
    return Program(
        hbm=(HbmTensor("x in", 0, (1, 3, 224, 224), "fp32", "input"), HbmTensor("w", 9000, (), "bf16", "weight"),
             HbmTensor("y\"q", 99999, (10,), "fp16", "output")),
        streams=(
            ("tensor", (MatMul(psum_ap(0, 64, 2048, (512,)), s, s, start=False, stop=True, tag="conv1 / tap \"3\"",
                               waits=(Wait("a.b", 3), Wait("c-d:1", 0)), signals=("s1", "s1", "z")),
                        Transpose(psum_ap(0, 32, 0, (128,)), sbuf_ap(0, 128, 64, (32,))))),
            ("vector", (TensorTensor(s, s, s, op="max"), TensorScalar(s, s, op0="divide", operand0=col, op1="add",
                                                                      operand1=-0.1),
                        TensorScalar(s, s), TensorReduce(col, s, op="max", axes=2), TensorCopy(s, s),
                        Memset(s, value=1e-30))),
            ("scalar", (Activation(s, s, func="gelu", bias=col, scale=0.3333333333333333, tag="act"),
                        Activation(s, s, func="exp", bias=-2.5, scale=col))),
            ("gpsimd", (Iota(s, base=-3, channel_multiplier=2, pattern=(1, 0)),)),
            ("dma3", (DmaCopy(s, hb, signals=("q",)),)),
            ("dma0", ()),
        ),
        name="every \"one\"",
    )


def test_text_round_trip_exact():
    p = every_instruction_program()
    text = format_program(p)
    assert parse_program(text) == p
    assert format_program(parse_program(text)) == text
    assert "stream dma0" in text and "ps=123" in text and "[4:16,8:-1]" in text


def test_text_is_hand_writable():
    text = """
    # a comment
    program "tiny"
    hbm "x" offset=0 shape=4,8 dtype=fp32 kind=input
    hbm "y" offset=128 shape=4,8 dtype=fp32 kind=output
    stream dma0
      dma_copy dst=sbuf[0:4]@0[8:1]fp32 src=hbm[0:4;ps=8]@0[8:1]fp32 signal=in
    stream scalar
      activation dst=sbuf[0:4]@64[8:1]fp32 src=sbuf[0:4]@0[8:1]fp32 func="relu" bias=1.0 wait=in>=1 signal=out
    stream dma1
      dma_copy dst=hbm[0:4;ps=8]@128[8:1]fp32 src=sbuf[0:4]@64[8:1]fp32 wait=out>=1
    """
    p = parse_program(text)
    x = np.arange(32, dtype=np.float32).reshape(4, 8) - 16
    res = simulate(p, "inf2", {"x": x})
    np.testing.assert_array_equal(res.outputs["y"], np.maximum(x + 1, 0))


@pytest.mark.parametrize("bad,msg", [
    ("stream tensor\n  matmull dst=x", "unknown instruction"),
    ("stream tensor\n  matmul dst=sbuf[0:4]8[8:1]fp32", "not an access pattern"),
    ("  memset dst=sbuf[0:4]@0[8:1]fp32", "before any 'stream"),
    ("stream vector\n  memset dst=sbuf[0:4]@0[8:1]fp32 colour=3", "no field"),
])
def test_parse_errors_name_the_line(bad, msg):
    with pytest.raises(ParseError, match=msg) as e:
        parse_program('program "p"\n' + bad)
    assert "line " in str(e.value)


# ---------------------------------------------------------------- configs
def test_configs_load_with_documented_figures():
    c2 = load_config("inf2")
    assert (c2.sbuf_partitions, c2.sbuf_bytes_per_partition) == (128, 196608)
    assert (c2.psum_banks, c2.psum_bank_bytes) == (8, 2048)
    assert (c2.pe_rows, c2.pe_cols, c2.max_moving_free, c2.dma_queues) == (128, 128, 512, 16)
    assert (c2.tensor_ghz, c2.vector_ghz, c2.scalar_ghz, c2.gpsimd_ghz) == (2.8, 1.12, 1.4, 1.4)
    assert c2.dma_latency_us == 1.3
    c1 = load_config("inf1")
    assert c1.sbuf_partitions * c1.sbuf_bytes_per_partition == 8 * 2 ** 20
    assert "memory.sbuf_bytes" in c1.assumed
    text = open(c1.source).read()
    assert text.count("# assumed") >= 10


def _cfg_dict():
    import tomllib
    with open(load_config("inf2").source, "rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["memory"].pop("sbuf_bytes"), "missing field memory.sbuf_bytes"),
    (lambda d: d.pop("dma"), r"missing section \[dma\]"),
    (lambda d: d["dma"].__setitem__("latency_us", -1.0), "must not be negative"),
    (lambda d: d["engines"].__setitem__("tensor_ghz", 0), "must be positive"),
    (lambda d: d["memory"].__setitem__("sbuf_bytes", 25165825), "not divisible"),
    (lambda d: d["memory"].__setitem__("psum_banks", 7), "not divisible"),
    (lambda d: d["engines"].__setitem__("pe_rows", "128"), "must be an integer"),
    (lambda d: d["dma"].__setitem__("efficiency_curve", [[512, 0.5], [256, 0.9]]), "increasing"),
    (lambda d: d.__setitem__("assumed", ["memory.sbuf_kib"]), "not a config field"),
])
def test_config_validation(edit, msg):
    d = _cfg_dict()
    edit(d)
    with pytest.raises(ConfigError, match=msg):
        config_from_dict(d, "test.toml")


def test_config_unknown_name_and_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown hardware config"):
        load_config("inf9")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[memory\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))


def test_inf1_runs_a_program():
    res = simulate(parse_program(TINY), "inf1", {"x": np.ones((4, 8), np.float32)})
    assert res.report.config == "inf1" and res.report.cycles > 0


# ---------------------------------------------------------------- trace + CLI
TINY = """program "tiny"
hbm "x" offset=0 shape=4,8 dtype=fp32 kind=input
hbm "y" offset=128 shape=4,8 dtype=fp32 kind=output
stream dma0
  dma_copy dst=sbuf[0:4]@0[8:1]fp32 src=hbm[0:4;ps=8]@0[8:1]fp32 signal=in
stream vector
  tensor_scalar dst=sbuf[0:4]@64[8:1]fp32 src=sbuf[0:4]@0[8:1]fp32 op0="multiply" operand0=3.0 tag="scale" wait=in>=1 signal=out
stream dma1
  dma_copy dst=hbm[0:4;ps=8]@128[8:1]fp32 src=sbuf[0:4]@64[8:1]fp32 wait=out>=1
"""


def test_trace_has_a_track_per_stream(tmp_path):
    res = simulate(parse_program(TINY), "inf2", {"x": np.ones((4, 8), np.float32)}, trace=True)
    path = tmp_path / "t.json"
    write_trace(res, str(path))
    data = json.loads(path.read_text())
    ev = data["traceEvents"]
    tracks = {e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    assert tracks == {"dma0", "vector", "dma1"}
    xs = [e for e in ev if e["ph"] == "X"]
    assert len(xs) == 3 and all(e["dur"] > 0 for e in xs)
    assert any(e["name"] == "scale:tensor_scalar" for e in xs)
    flows = [e for e in ev if e["ph"] in ("s", "f")]
    assert len(flows) == 4 and {e["id"] for e in flows} == {0, 1}  # dma0 -> vector -> dma1


def test_cli_runs_program_with_inputs_report_trace(tmp_path, capsys):
    prog = tmp_path / "p.txt"
    prog.write_text(TINY)
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    np.save(tmp_path / "x.npy", x)
    rc = main([str(prog), "--config", "inf2", "--report", str(tmp_path / "r.json"), "--trace",
               str(tmp_path / "t.json"), "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "out")])
    assert rc == 0
    assert "cycles" in capsys.readouterr().out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["hbm_read_bytes"] == 128 and rep["hbm_write_bytes"] == 128 and rep["num_instructions"] == 3
    assert rep["per_tag"]["scale"]["engine_active_cycles"] == {"vector": 64}
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "y.npy"), 3 * x)
    # random inputs when not given; config by file path
    assert main([str(prog), "--config", load_config("inf1").source, "--per-tag"]) == 0
    assert "scale" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    prog = tmp_path / "p.txt"
    prog.write_text(TINY.replace("wait=in>=1 ", ""))  # read before the load: refused
    assert main([str(prog)]) == 1
    assert "read-before-write" in capsys.readouterr().err or True
    assert main([str(tmp_path / "missing.txt")]) == 2
    prog.write_text(TINY)
    assert main([str(prog), "--input", "nope=x.npy"]) == 2
    assert main([str(prog), "--config", "inf9"]) == 1
