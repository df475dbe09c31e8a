"""Learned activation steps against the int32 bias range: a reader with a dead output channel (weights 0, bias
non-zero) gets a tiny weight scale at calibration, so a smaller learned input step would push its bias out of
int32. Readers in later regions get a wider weight scale; readers in the same region get headroom before
their rounding (``recon.region.STEP_HEADROOM``), and a step that still does not fit is raised only as far as
needed (``quant.scales.bias_safe_act_scale``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from onnxptq.calib.calibrate import calibrate
from onnxptq.config import QuantConfig
from onnxptq.data import Dataset
from onnxptq.graph import import_model, partition
from onnxptq.plan import make_plan
from onnxptq.quant import scales as S
from onnxptq.recon.region import STEP_HEADROOM, Region
from onnxptq.recon.settings import resolve
from onnxptq.recon.streams import region_spans
from onnxptq.sim.model import SimModel

from helpers import export_torch_model


def test_bias_safe_act_scale_hand_values():
    w_scale = torch.tensor([1.0, 2.0 ** -20])
    bias = torch.tensor([0.1, 1.0])
    limit = S.bias_limit()  # 2^30
    # channel 1 binds: 1 / (2^-20 * 2^30) = 2^-10
    assert S.bias_safe_act_scale(1e-4, bias, w_scale, po2=False) == pytest.approx(2.0 ** -10, rel=1e-12)
    assert S.bias_safe_act_scale(0.01, bias, w_scale, po2=False) == 0.01  # already fits: unchanged
    assert S.bias_safe_act_scale(1e-4, bias * 1.5, w_scale, po2=True) == 2.0 ** -9  # 1.5 * 2^-10 -> next Po2
    assert S.bias_safe_act_scale(1e-4, bias, w_scale, po2=False, margin=2.0 ** -20) == pytest.approx(
        2.0 ** -10 * (1 + 2.0 ** -20), rel=1e-12)
    s = S.bias_safe_act_scale(1e-4, bias, w_scale, po2=False)
    assert bool(S.bias_in_range(bias, s, w_scale).all())
    assert not bool(S.bias_in_range(bias, s * (1 - 1e-6), w_scale).all())
    assert limit == 2.0 ** 30


class _DeadChannel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            self.c2.weight[2].zero_()
            self.c2.bias[2] = 1.0

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


@pytest.fixture(scope="module")
def dead(tmp_path_factory):
    path = export_torch_model(_DeadChannel(), torch.randn(1, 3, 8, 8), tmp_path_factory.mktemp("dead") / "m.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    return path, Dataset({"input": x})


def _region(path, data, granularity: str, span_index: int):
    cfg = QuantConfig(method="brecq", granularity=granularity, w_bits=4, a_bits=4, progress=False,
                      bias_correction=False)
    qg = import_model(path)
    sim = SimModel(qg)
    calibrate(sim, data, make_plan(qg, cfg), cfg)
    spans = region_spans(sim, partition(qg, granularity))
    return sim, Region(sim, spans[span_index], resolve(cfg), None)


def _point(sim) -> tuple[str, object]:
    """The quant point between the convs (c1's ReLU output) and c2, its reader."""
    c2 = sim.qg.layers[1]
    return sim.qg.source[c2.input], c2


def _learn(region, t: str, factor: float) -> float:
    """Pretend LSQ moved the step of ``t`` to ``factor`` times its calibrated value; the calibrated value."""
    region.install_steps(learn=True, drop_prob=0.0)
    ls = region.steps[t]
    cal = float(np.asarray(ls.params.scale).reshape(()))
    with torch.no_grad():
        ls.step.fill_(cal * factor)
    return cal


def _fits(sim, layer, s_x: float) -> bool:
    s_w = torch.from_numpy(sim.weight_quantizer(layer.name).params.scale)
    return bool(S.bias_in_range(sim.effective_bias(layer, quantized_weights=True).detach(), s_x, s_w).all())


def test_dead_channel_binds_at_calibration(dead):
    path, data = dead
    sim, _ = _region(path, data, "block", 0)
    t, c2 = _point(sim)
    s_x = float(np.asarray(sim.act_quantizer(t).params.scale).reshape(()))
    # the dead channel's s_w sits at the bound (up to its float32 rounding)
    assert _fits(sim, c2, s_x * (1 + 1e-6)) and not _fits(sim, c2, s_x * 0.9)


def test_reader_in_a_later_region_gets_a_wider_weight_scale(dead):
    path, data = dead
    sim, region = _region(path, data, "layer", 0)  # region = c1 alone; c2 reads its output later
    t, c2 = _point(sim)
    w_before = sim.weight_quantizer(c2.name).params.scale.copy()
    cal = _learn(region, t, 0.01)
    kept, clamped = region.finish_steps()
    assert kept == [] and clamped == []
    s_x = float(np.asarray(sim.act_quantizer(t).params.scale).reshape(()))
    assert s_x == pytest.approx(cal * 0.01, rel=1e-6)  # the learned step as it is
    w_after = sim.weight_quantizer(c2.name).params.scale
    assert _fits(sim, c2, s_x)
    assert w_after[2] > w_before[2] and np.array_equal(w_after[:2], w_before[:2])  # only the dead channel


@pytest.mark.parametrize("factor", [0.5, 0.01])
def test_reader_in_the_same_region_has_headroom_then_is_clamped(dead, factor):
    path, data = dead
    sim, region = _region(path, data, "block", 0)
    assert region.span.start == 0 and len(region.layers) == 2  # both convs in one region
    t, c2 = _point(sim)
    region.start_rounding()
    region.finish_rounding()
    cal = _learn(region, t, factor)
    kept, clamped = region.finish_steps()
    s_x = float(np.asarray(sim.act_quantizer(t).params.scale).reshape(()))
    assert kept == [] and _fits(sim, c2, s_x)
    if factor >= 1 / STEP_HEADROOM:
        assert clamped == [] and s_x == pytest.approx(cal * factor, rel=1e-6)
    else:  # raised to the headroom's bound: just above cal / STEP_HEADROOM, far below the calibrated step
        assert clamped == [t] and cal * factor < s_x <= cal / STEP_HEADROOM * (1 + 1e-5)
