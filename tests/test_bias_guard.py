"""The held-out check of the RTN bias correction (calib/calibrate.py bias_correction_pays)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import MODELS, digits_path, export_torch_model

import onnxptq


def _dropped(res) -> list:
    return [f for f in res.diagnostics.items if f.kind == "bias-correction-dropped" and f.where == ""]


class _Wide(torch.nn.Module):
    """One 1x1 conv with a bias: its 4-bit rounding error has a large mean output shift wherever the input's
    mean is far from zero (bias correction's case)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.conv(x)


def _model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "wide.onnx"
    export_torch_model(_Wide().eval(), torch.randn(1, 16, 6, 6), path)
    return path, onnx.load(str(path)).graph.input[0].name


def test_a_correction_that_does_not_carry_over_is_dropped(tmp_path):
    """Calibration halves whose inputs have opposite means: the correction estimated on one half has the wrong
    sign on the other, so the held-out check drops it, says so, and the exported model has the plain biases;
    with the check off the correction stays."""
    path, name = _model(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16, 6, 6)).astype(np.float32)
    x[:32] += 3.0
    x[32:] -= 3.0
    res = onnxptq.quantize(str(path), {name: x}, output=tmp_path / "q.onnx", w_bits=4, progress=False)
    assert len(_dropped(res)) == 1 and "held-out" in _dropped(res)[0].detail
    assert not res.sim.state.bias_delta
    kept = onnxptq.quantize(str(path), {name: x}, output=tmp_path / "k.onnx", w_bits=4, progress=False,
                            bias_correction_guard=False)
    assert not _dropped(kept) and kept.sim.state.bias_delta


def test_a_correction_that_carries_over_is_kept(tmp_path):
    """Both halves share the input mean: the correction lowers the held-out error and stays."""
    path, name = _model(tmp_path)
    x = (np.random.default_rng(1).normal(size=(64, 16, 6, 6)) + 3.0).astype(np.float32)
    res = onnxptq.quantize(str(path), {name: x}, output=tmp_path / "q.onnx", w_bits=4, progress=False)
    assert not _dropped(res) and res.sim.state.bias_delta


def test_the_check_on_a_real_model_matches_its_errors():
    """digits_resnet W4A8: the correction pays there, and the check's uncorrected error is the model-output
    error of the uncorrected weights on the two held-out halves."""
    from onnxptq.calib import calibrate as C
    from onnxptq.config import QuantConfig
    from onnxptq.data import load_dataset
    from onnxptq.graph import import_model
    from onnxptq.plan import make_plan
    from onnxptq.sim.model import SimModel

    qg = import_model(digits_path("digits_resnet"))
    data = load_dataset(MODELS / "digits_calib.npz", {n: qg.shapes.get(n, ()) for n in qg.inputs}, 64)
    cfg = QuantConfig(w_bits=4, progress=False, num_calib=64)
    sim = SimModel(qg)
    plan = make_plan(qg, cfg)
    obs, _ = C.observe_activations(sim, data, cfg)
    C.calibrate_activations(sim, obs, plan, cfg)
    pays, on, off = C.bias_correction_pays(sim, data, plan, cfg)
    assert pays and 0 < on < off
    # the "without" error does not depend on the fold: the mean over both held-out halves, recomputed here
    C.calibrate_weights(sim, plan, cfg)
    by_hand = []
    for held in (data.rows(32, 64), data.rows(0, 32)):
        ref = C._outputs(sim, held, cfg, quant=False)
        by_hand.append(C._relative_error(ref, C._outputs(sim, held, cfg, quant=True)))
    assert off == pytest.approx(sum(by_hand) / 2, rel=1e-9)
