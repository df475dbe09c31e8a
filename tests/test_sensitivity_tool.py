"""tools/sensitivity.py: each layer's weights quantized alone, the model's output SQNR (the diagonal terms of the
mixed-precision search, printed per layer)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sens = pytest.importorskip("tools.sensitivity")
MODEL = ROOT / "models" / "digits_resnet.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"


def test_sqnr_of_a_noise_to_signal_ratio():
    assert sens.sqnr_db(0.01) == pytest.approx(20.0)
    assert sens.sqnr_db(1.0) == pytest.approx(0.0)
    assert sens.sqnr_db(0.0) == math.inf


@pytest.fixture(scope="module")
def rows():
    return sens.layer_sensitivities(str(MODEL), str(CALIB), (8, 2), samples=16)


def test_every_layer_worst_first_with_shares(rows):
    names = {n.name for n in onnx.load(str(MODEL)).graph.node if n.op_type in ("Conv", "Gemm")}
    assert {r["name"] for r in rows} == names
    assert [r["noise"][2] for r in rows] == sorted((r["noise"][2] for r in rows), reverse=True)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    for r in rows:  # fewer bits, more output noise
        assert r["sqnr_db"][8] > r["sqnr_db"][2] + 10, r
    table = sens.table(rows, (8, 2), top=3)
    assert rows[0]["name"] in table and f"{len(rows) - 3} more layers" in table


def test_the_last_layer_alone_matches_a_hand_quantized_model(rows):
    """The Gemm (no BN to fold) with its weights rounded per output channel at 8 bits, run in onnxruntime: the
    same output SQNR as the tool's within 1 dB (the tool's L_p scale and this min/max scale differ slightly)."""
    ort = pytest.importorskip("onnxruntime")
    m = onnx.load(str(MODEL))
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    init = next(i for i in m.graph.initializer if i.name == gemm.input[1])
    w = numpy_helper.to_array(init)
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    axis = 0 if trans_b else 1
    s = np.abs(w).max(axis=1 - axis, keepdims=True) / 127
    wq = (np.clip(np.round(w / s), -127, 127) * s).astype(np.float32)
    x = dict(np.load(CALIB))
    name = m.graph.input[0].name
    feed = {name: x[name][:16] if name in x else next(v for k, v in x.items() if k != "labels")[:16]}
    ref = ort.InferenceSession(m.SerializeToString()).run(None, feed)[0]
    init.CopyFrom(numpy_helper.from_array(wq, init.name))
    out = ort.InferenceSession(m.SerializeToString()).run(None, feed)[0]
    hand = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - out) ** 2))
    tool = next(r for r in rows if r["name"] == gemm.name)["sqnr_db"][8]
    assert abs(tool - hand) < 1.0, (tool, hand)
