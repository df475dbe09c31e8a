"""Learned weight-step gains (recon/weight_gain.py): folded by hand, neutral at the start, and after a
reconstruction the integers stay within one step of w / s on the calibrated grid while the steps move; the QDQ
export still computes what the simulation computed; power-of-two steps and methods that do not read the option
keep theirs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onnxptq import api
from onnxptq.calib.calibrate import integer_weights
from onnxptq.errors import ConfigError
from onnxptq.recon.adaround import within_one_step
from onnxptq.recon.weight_gain import WeightGain, folded_scale
from onnxptq.verify.qdq import qdq_output_parity

from helpers import export_torch_model


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(x + self.conv2(x))
        return self.fc(F.relu(self.conv3(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = export_torch_model(_Net().eval(), torch.zeros(1, 1, 8, 8), tmp_path_factory.mktemp("g") / "n.onnx",
                              keep_bn=False)
    return path, np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype(np.float32)


KW = dict(method="brecq", w_bits=3, a_bits=8, iters=40, act_iters=10, recon_batch_size=16, lr=0.1, recon_guard=False,
          bias_correction=False, progress=False)


def test_folded_scale_by_hand():
    s = np.array([0.1, 0.2, 0.4], np.float32)
    assert np.array_equal(folded_scale(s, np.array([2.0, 0.5, 1.0])), np.array([0.2, 0.1, 0.4], np.float32))
    assert folded_scale(s, np.ones(3)).dtype == np.float32


def test_a_new_gain_is_one():
    g = WeightGain((4, 1, 1, 1))
    assert torch.equal(g(), torch.ones(4, 1, 1, 1)) and np.array_equal(g.gain(), np.ones(4))


def test_gains_move_the_steps_and_keep_the_integers_on_the_calibrated_grid(net, tmp_path):
    path, x = net
    plain = api.quantize(path, x, w_scale_lr=0.0, **KW)
    out = tmp_path / "q.onnx"
    gained = api.quantize(path, x, output=out, w_scale_lr=0.05, **KW)
    moved = 0
    for layer in gained.qgraph.layers:
        fq0, fq1 = plain.sim.weight_quantizer(layer.name), gained.sim.weight_quantizer(layer.name)
        q = integer_weights(gained.sim, layer.name)
        s0, zp = fq0.params.shaped_for(q.ndim)  # the calibrated step: gains do not touch the grid the rounding uses
        s1, _ = fq1.params.shaped_for(q.ndim)
        w = gained.qgraph.initializer(layer.weight)
        assert within_one_step(q, w, s0, zp, fq1.params.grid.qmin, fq1.params.grid.qmax), layer.name
        stored = gained.sim.weight(layer.weight).detach().numpy()
        assert np.array_equal(stored, ((q - zp) * s1).astype(np.float32)), layer.name
        ratio = s1 / s0
        assert np.all((ratio > 0.5) & (ratio < 2.0)), (layer.name, ratio.ravel())
        moved += int(np.sum(ratio != 1.0))
    assert moved > 0
    rep = qdq_output_parity(gained.sim, str(out), {"input": x[:16]})
    assert rep.bit_exact, rep.histogram


def test_power_of_two_steps_keep_theirs(net):
    path, x = net
    res = api.quantize(path, x, scale="po2", w_scale_lr=0.05, **KW)
    for layer in res.qgraph.layers:
        s = res.sim.weight_quantizer(layer.name).params.scale
        assert np.array_equal(s, np.exp2(np.round(np.log2(s)))), layer.name


@pytest.mark.parametrize("method,extra", [("rtn", {}), ("rapq", {"scale": "po2"})])
def test_methods_that_do_not_learn_float_steps_refuse_the_option(net, method, extra):
    path, x = net
    with pytest.raises(ConfigError, match="--w-scale-lr"):
        api.quantize(path, x, method=method, w_scale_lr=0.01, progress=False, **extra)
    with pytest.raises(ConfigError, match="w_scale_lr"):
        api.quantize(path, x, method="brecq", w_scale_lr=-1.0, progress=False)
