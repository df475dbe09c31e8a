"""Power-of-two activation scales through rescaling (``graph/rescale.py``, ``calib/po2_rescale.py``): which quant
points can carry a factor, that the rewrite keeps the float model's function, and that each rescaled point then
gets the power of two nearest its best float scale, so it quantizes as the float scale did."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import onnxptq
from onnxptq.calib.calibrate import float_scale
from onnxptq.calib.po2_rescale import MARGIN, channel_factors, factor, po2_equalize_factors
from onnxptq.config import QuantConfig
from onnxptq.eval import run_onnxruntime
from onnxptq.graph import import_model
from onnxptq.graph.rescale import channel_rescalable_points, rescalable_points, rescale
from onnxptq.plan import make_plan
from onnxptq.quant import weight_grid
from onnxptq.sim.model import SimModel

from helpers import MODELS, export_torch_model


class Net(nn.Module):
    """Every case of the rule: conv->relu6->conv (yes), conv->relu->maxpool->conv (yes, through a value-moving op),
    conv->relu read by a conv and an Add (no), conv->relu->Pad(value 1)->conv (no), the last Gemm (a graph output)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.c4, self.c5, self.c6 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        a = torch.clamp(self.c1(x), 0, 6)  # read by c2 only: rescalable
        b = torch.relu(self.c2(a))
        b = nn.functional.max_pool2d(b, 2)  # b (and the pooled b) read by c3 only: rescalable
        c = torch.relu(self.c3(b))  # read by c4 and by the Add: not rescalable
        d = self.c4(c) + c
        e = torch.relu(self.c5(d))
        e = nn.functional.pad(e, (1, 1, 1, 1), value=1.0)  # a non-zero pad value: not rescalable
        f = self.c6(e).mean((2, 3))
        return self.fc(f)


def _exported(tmp_path_factory, module: nn.Module, n: int, seed: int):
    """(model path, calibration .npz, the calibration array) of ``module`` exported to ONNX."""
    d = tmp_path_factory.mktemp(type(module).__name__)
    path = export_torch_model(module, torch.randn(1, 3, 16, 16), d / "net.onnx", keep_bn=False)
    x = np.random.default_rng(seed).normal(size=(n, 3, 16, 16)).astype(np.float32)
    np.savez(d / "calib.npz", input=x)
    return path, d / "calib.npz", x


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return _exported(tmp_path_factory, Net(), 64, 0)


def _producer(qg, tensor):
    return next(x for x in qg.layers if x.output == tensor)


def test_factor_puts_the_scale_just_above_the_nearest_power_of_two():
    assert factor(3.0) == pytest.approx(4 / 3 * MARGIN)  # log2 3 = 1.58: rounds up to 4
    assert factor(2.5) == pytest.approx(2 / 2.5 * MARGIN)  # log2 2.5 = 1.32: rounds down to 2
    assert factor(0.125) == pytest.approx(MARGIN)
    for s in (0.0013, 0.7, 1.4142, 37.0):
        c = factor(s)
        k = math.log2(c * s)
        assert 1 / math.sqrt(2) <= c * (1 + 1e-9) and c <= math.sqrt(2) * MARGIN
        assert k - round(k) > 0 and k - round(k) < 1e-3  # just above a power of two
    assert factor(0.0) == 1.0 and factor(float("nan")) == 1.0


def test_rescalable_points_follow_the_rule(net):
    path, _, _ = net
    qg = import_model(path)
    found = rescalable_points(qg)
    names = {_producer(qg, t).name: r for t, r in found.items()}
    by_weight = {x.weight: x.name for x in qg.layers}
    assert len(names) == 2, names  # c1 (Clip) and c2 (Relu, then MaxPool)
    for t, r in found.items():
        assert _producer(qg, t).name == r.producer and len(r.consumers) == 1
        assert all(qg.source[qg.layer(c).input] == t for c in r.consumers)
    assert set(by_weight.values()) - set(names) - {c for r in found.values() for c in r.consumers}


def test_rescale_keeps_the_float_function(net):
    path, _, x = net
    qg = import_model(path)
    found = rescalable_points(qg)
    factors = {t: c for t, c in zip(found, (0.71, 1.37))}
    new = rescale(qg, factors)
    qg.check_unchanged()  # the original graph is not written to
    assert set(rescalable_points(new)) == set(found)
    inputs = {"input": x}
    ref = run_onnxruntime(str(path), inputs)
    got = run_onnxruntime(new.model.SerializeToString(), inputs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    feeds = {"input": torch.from_numpy(x)}
    with torch.no_grad():
        env_a, env_b = SimModel(qg).eval()(feeds, keep=True), SimModel(new).eval()(feeds, keep=True)
    for t, c in factors.items():  # the point itself is c times larger
        np.testing.assert_allclose(env_b[t].numpy(), c * env_a[t].numpy(), rtol=1e-4, atol=1e-5)
    p = _producer(new, next(iter(factors)))
    assert p.act_bounds == pytest.approx((0.0, 6.0 * factors[next(iter(factors))]))
    with pytest.raises(ValueError, match="cannot be rescaled"):
        rescale(qg, {qg.inputs[0]: 2.0})
    with pytest.raises(ValueError, match="positive"):
        rescale(qg, {next(iter(found)): -1.0})


def test_rescaled_points_get_the_power_of_two_of_their_float_scale(net):
    path, calib, x = net
    kw = dict(num_calib=64, progress=False, check_kernels=False, w_bits=4, a_bits=4)
    flt = onnxptq.quantize(path, calib, scale="float", **kw)
    po2 = onnxptq.quantize(path, calib, scale="po2", po2_rescale=True, **kw)
    off = onnxptq.quantize(path, calib, scale="po2", **kw)  # the default: off
    rescaled = po2.qgraph.import_info["rescaled_points"]
    assert len(rescaled) == 2 and po2.summary()["po2_rescaled_points"] == 2
    assert "rescaled_points" not in off.qgraph.import_info
    for t in rescaled:
        s_float = float(flt.sim.act_quantizer(t).params.scale)
        s_po2 = float(po2.sim.act_quantizer(t).params.scale)
        assert s_po2 == 2.0 ** round(math.log2(s_float))  # the nearest power of two, in log2
        # the same integers as the float scale gave the original tensor (same clipping, same resolution)
        assert po2.sim.act_quantizer(t).params.zero_point == pytest.approx(flt.sim.act_quantizer(t).params.zero_point)
    # the exported model computes the same function as the user's (quantization aside): close to the float model
    ref = run_onnxruntime(str(path), {"input": x})
    for res in (po2, off):
        out = run_onnxruntime(res.model.SerializeToString(), {"input": x})
        assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9


class DwNet(nn.Module):
    """Per-channel factors: conv->relu->depthwise->relu->grouped conv (2 groups)->relu->maxpool->conv: three points
    whose producer and readers are Convs with Relus between (each can take one factor per channel); the last
    conv feeds a mean (not a Conv): not one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.dw = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g2, self.c4 = nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 6, 3)
        with torch.no_grad():  # channels of very different sizes, as after BatchNorm folding
            for m in (self.c1, self.dw, self.g2):
                m.weight.mul_(torch.logspace(-1, 1, m.out_channels).reshape(-1, 1, 1, 1))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.dw(a))
        c = nn.functional.max_pool2d(torch.relu(self.g2(b)), 2)
        return self.fc(self.c4(c).mean((2, 3)))


@pytest.fixture(scope="module")
def dwnet(tmp_path_factory):
    return _exported(tmp_path_factory, DwNet(), 32, 1)


def test_channel_rescalable_points_need_relus_and_conv_readers(net, dwnet):
    qg = import_model(net[0])
    found = channel_rescalable_points(qg)  # c1 ends in a Clip (one bound for all channels): only c2
    assert [_producer(qg, t).name for t in found] == [next(r.producer for r in rescalable_points(qg).values()
                                                           if r.path_ops == ("MaxPool",))]
    qg = import_model(dwnet[0])
    found = channel_rescalable_points(qg)
    assert len(found) == 3 and set(found) <= set(rescalable_points(qg))
    assert {qg.layer(c).groups for r in found.values() for c in r.consumers} == {8, 2, 1}


def test_channel_rescale_keeps_the_float_function(dwnet):
    path, _, x = dwnet
    qg = import_model(path)
    found = channel_rescalable_points(qg)
    rng = np.random.default_rng(0)
    factors = {t: rng.uniform(0.5, 2.0, qg.layer(r.producer).out_channels) for t, r in found.items()}
    new = rescale(qg, factors, record="equalized_points")
    qg.check_unchanged()
    assert new.import_info["equalized_points"] == sorted(factors) and "rescaled_points" not in new.import_info
    ref = run_onnxruntime(str(path), {"input": x})
    np.testing.assert_allclose(run_onnxruntime(new.model.SerializeToString(), {"input": x}), ref, rtol=1e-4,
                               atol=1e-5)
    feeds = {"input": torch.from_numpy(x)}
    with torch.no_grad():
        env_a, env_b = SimModel(qg).eval()(feeds, keep=True), SimModel(new).eval()(feeds, keep=True)
    for t, c in factors.items():  # channel k of the point is c_k times larger
        np.testing.assert_allclose(env_b[t].numpy(), c.reshape(1, -1, 1, 1) * env_a[t].numpy(), rtol=1e-4, atol=1e-5)
    t = next(iter(found))
    with pytest.raises(ValueError, match="channels"):
        rescale(qg, {t: np.ones(3)})
    assert set(rescalable_points(qg)) == set(found)  # every rescalable point of DwNet takes a factor per channel


def test_a_clip_point_takes_no_factor_per_channel(net):
    qg = import_model(net[0])
    t = next(t for t in rescalable_points(qg) if t not in channel_rescalable_points(qg))
    with pytest.raises(ValueError, match="per channel"):
        rescale(qg, {t: np.ones(_producer(qg, t).out_channels)})


def test_channel_factors_put_each_channel_just_above_its_nearest_power_of_two():
    s = np.array([3.0, 2.5, 0.125, 0.0, 0.0013])
    c = channel_factors(s)
    assert c == pytest.approx([4 / 3 * MARGIN, 2 / 2.5 * MARGIN, MARGIN, 1.0, factor(0.0013)])


def test_equalized_weight_channels_get_the_power_of_two_of_their_float_scale(dwnet):
    path, calib, x = dwnet
    qg = import_model(path)
    cfg = QuantConfig(w_bits=4, a_bits=8, scale="po2", po2_equalize=True)
    plan = make_plan(qg, cfg)
    factors = po2_equalize_factors(qg, plan, cfg)
    assert set(factors) == set(channel_rescalable_points(qg))
    new = rescale(qg, factors, record="equalized_points")
    for t, r in channel_rescalable_points(new).items():
        layer = new.layer(r.producer)
        w = torch.from_numpy(np.array(new.initializer(layer.weight)))
        s, _ = float_scale(w, weight_grid(plan.w_bits[layer.name]), True, layer.weight_axis, cfg, cfg.w_scale_method)
        k = np.log2(s.numpy().astype(np.float64))
        # every producer channel's best scale (on its weights after the readers' 1/c of earlier points) sits just
        # above a power of two: what the po2 search then picks quantizes it as the float scale did
        assert np.all(np.abs(k - np.round(k) - math.log2(MARGIN)) < 1e-4), (layer.name, k - np.round(k))
    kw = dict(num_calib=32, progress=False, check_kernels=False, w_bits=4, a_bits=8, scale="po2")
    on = onnxptq.quantize(path, calib, po2_equalize=True, **kw)
    both = onnxptq.quantize(path, calib, po2_equalize=True, po2_rescale=True, **kw)
    assert on.summary()["po2_equalized_points"] == 3 and "po2_rescaled_points" not in on.summary()
    # the activation rescale leaves the equalized points alone (a factor there would undo the equalization)
    assert not set(both.qgraph.import_info.get("rescaled_points") or ()) & set(factors)
    for res in (on, both):  # the run's power-of-two weight scales are those best float scales, nothing lost
        for t in factors:
            layer = res.qgraph.layer(channel_rescalable_points(res.qgraph)[t].producer)
            w = torch.from_numpy(np.array(res.qgraph.initializer(layer.weight)))
            bits = res.sim.weight_quantizer(layer.name).bits
            best, _ = float_scale(w, weight_grid(bits), True, layer.weight_axis, cfg, cfg.w_scale_method)
            s_po2 = np.asarray(res.sim.weight_quantizer(layer.name).params.scale, np.float64).reshape(-1)
            np.testing.assert_allclose(s_po2, best.numpy().reshape(-1) / MARGIN, rtol=1e-5)
    ref = run_onnxruntime(str(path), {"input": x})
    out = run_onnxruntime(on.model.SerializeToString(), {"input": x})
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9
