"""tools/bench_runtime.py builds its demo ConvInteger model and benchmarks it end to end."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "bench_runtime.py")


def test_bench_tool_on_demo_convinteger_model(tmp_path):
    model = str(tmp_path / "demo_conv.onnx")
    env = dict(os.environ, PYTHONPATH=ROOT)
    mk = subprocess.run([sys.executable, TOOL, model, "--make-demo", "conv"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert mk.returncode == 0, mk.stderr
    res = subprocess.run([sys.executable, TOOL, model, "--iters", "2", "--warmup", "1", "--threads", "1"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "runtime/" in out and "onnxruntime" in out and "ratio runtime/onnxruntime" in out
    assert "max |diff| 0" in out, out  # int8 ConvInteger pipeline: identical logits
