"""runtime/ must import only the standard library, NumPy and onnx."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNTIME = os.path.join(ROOT, "runtime")
FORBIDDEN = ("torch", "onnxruntime", "onnxptq")
ALLOWED_THIRD_PARTY = {"numpy", "onnx"}

_PROBE = r"""
import sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import runtime
w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.int8), "w")
n1 = helper.make_node("QuantizeLinear", ["x", "s"], ["q"])
n2 = helper.make_node("ConvInteger", ["q", "w"], ["y"], pads=[1, 1, 1, 1])
s = numpy_helper.from_array(np.array(0.5, np.float32), "s")
g = helper.make_graph([n1, n2], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.INT32, None)], initializer=[w, s])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
y = runtime.run(m, {"x": np.ones((1, 3, 4, 4), np.float32)})["y"]
assert y.dtype == np.int32 and y.shape == (1, 2, 4, 4), y.shape
bad = sorted(k for k in sys.modules if k.split(".")[0] in {"torch", "onnxruntime", "onnxptq"})
print("LOADED:" + ",".join(bad))
"""


def test_import_and_run_loads_no_forbidden_module():
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    line = [l for l in res.stdout.splitlines() if l.startswith("LOADED:")][-1]
    assert line == "LOADED:", f"forbidden modules imported: {line}"


def _imports(path: str) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found.append(("<dynamic __import__>", node.lineno))
    return found


def test_runtime_sources_import_only_stdlib_numpy_onnx():
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"__future__"}
    problems = []
    n_files = 0
    for dirpath, _, files in os.walk(RUNTIME):
        for fn in files:
            if not fn.endswith(".py"):
                continue
            n_files += 1
            path = os.path.join(dirpath, fn)
            for mod, line in _imports(path):
                if mod not in allowed or mod in FORBIDDEN:
                    problems.append(f"{os.path.relpath(path, ROOT)}:{line}: imports {mod}")
            with open(path, encoding="utf-8") as f:
                src = f.read()
            if "importlib" in src:
                problems.append(f"{os.path.relpath(path, ROOT)}: uses importlib")
    assert n_files >= 5
    assert not problems, "\n".join(problems)
