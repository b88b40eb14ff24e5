"""The polyinf target: entry-point autoload, tags, user configs, config resolution."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import tvm
import tvm_poly
from tvm_poly import targets
from tvm_poly.errors import TargetError

CONFIG_DIR = os.path.join(os.path.dirname(targets.__file__), "..", "target", "configs")


def test_plain_import_tvm_knows_polyinf():
    """A fresh process that only does `import tvm` (never tvm_poly) has the target, the
    pipeline hook and the packed functions: the tvm.backends entry point did it."""
    code = textwrap.dedent("""
        import json, sys, warnings
        warnings.simplefilter("error")
        import tvm
        from tvm.relax import pipeline as rp
        t = tvm.target.Target("polyinf")
        t1 = tvm.target.Target("polyinf/inf1")
        print(json.dumps({
            "keys": list(t.keys), "model": str(t.model), "kind": t.kind.name,
            "inf1": str(t1.model), "inf2": str(tvm.target.Target("polyinf/inf2").model),
            "hooked": hasattr(rp.PIPELINE_MAP["default"], "__polyinf_orig__"),
            "run": tvm.get_global_func("polyinf.run", allow_missing=True) is not None,
            "begin": tvm.get_global_func("polyinf.begin", allow_missing=True) is not None,
            "heavy": [m for m in ("onnx", "onnxruntime", "islpy", "target.simulator")
                      if m in sys.modules],
        }))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d["keys"] == ["polyinf", "cpu"] and d["kind"] == "llvm"
    assert (d["model"], d["inf2"], d["inf1"]) == ("inf2", "inf2", "inf1")
    assert d["hooked"] and d["run"] and d["begin"]
    assert d["heavy"] == [], "import tvm must stay light"


def test_autoload_can_be_disabled():
    code = ("import tvm\n"
            "try:\n    tvm.target.Target('polyinf'); print('known')\n"
            "except Exception:\n    print('unknown')\n")
    env = dict(os.environ, TVM_DEVICE_BACKEND_AUTOLOAD="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, cwd="/")
    assert out.stdout.strip() == "unknown"


def test_tags_dispatch_on_keys_and_model():
    t = tvm.target.Target("polyinf")
    assert targets.is_polyinf(t) and not targets.is_polyinf(tvm.target.Target("llvm"))
    assert not targets.is_polyinf(None)
    assert targets.config_spec(t) == "inf2"
    assert targets.config_spec(tvm.target.Target("polyinf/inf1")) == "inf1"
    assert targets.resolve_config(t).name == "inf2"
    with tvm.target.Target("polyinf/inf1"):
        assert targets.resolve_config().name == "inf1"
    # registering again is harmless
    targets._registered = False
    targets.register_tags()
    assert tvm.target.Target("polyinf").keys[0] == "polyinf"


def test_user_config_toml(tmp_path):
    src = open(os.path.join(CONFIG_DIR, "inf2.toml")).read()
    path = tmp_path / "my core.toml"
    path.write_text(src.replace('name = "inf2"', 'name = "mine"'))
    t = tvm_poly.target(str(path))
    assert targets.is_polyinf(t) and str(t.model) == str(path)
    assert targets.resolve_config(t).name == "mine"
    # the string form TVM prints round-trips
    assert targets.config_spec(tvm.target.Target(str(t))) == str(path)
    assert tvm_poly.target("inf1").model == "inf1"


@pytest.mark.parametrize("spec", ["polyinf/inf9", "polyinf/", "nosuchkind", "", "/no/such.toml",
                                  "llvm"])
def test_unknown_targets_are_typed_errors(spec):
    with pytest.raises(TargetError):
        tvm_poly.target(spec)


def test_invalid_config_file_is_target_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[memory]\nsbuf_partitions = -1\n")
    with pytest.raises(TargetError, match="bad.toml"):
        tvm_poly.target(str(bad))
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("this is [ not toml")
    with pytest.raises(TargetError):
        tvm_poly.target(str(garbage))


def test_parse_target_accepts_plain_tvm_targets():
    assert not targets.is_polyinf(targets.parse_target("llvm"))
    with pytest.raises(TargetError):
        targets.parse_target("definitely-not-a-target")
