"""Po2 RTN calibration: batched candidate errors, even zero points in the search, clipping candidates,
model-output search of the input quant point, and the input-error term of bias correction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import MODELS, digits_path

from onnxptq.graph.qgraph import Layer
from onnxptq.quant import fake_quantize
from onnxptq.quant import scales as S
from onnxptq.quant.grid import Grid


def _loop_errors(x, scales, zps, grid, p, axis):
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    return torch.stack([S.lp_error(x, fake_quantize(x, s.reshape(shape), z.reshape(shape).float(), grid), p, axis)
                        for s, z in zip(scales, zps)])


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("p", [2.0, 2.4])
def test_candidate_lp_errors_match_lp_error(axis, p, monkeypatch):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((6, 50)) * torch.linspace(0.1, 2.0, 6).reshape(6, 1)
    grid = Grid(4, True)
    n = 5
    c = 1 if axis is None else x.shape[axis]
    scales = torch.rand(n, c) * 0.5 + 0.05
    zps = torch.randint(-3, 4, (n, c))
    if axis is None:
        scales, zps = scales[:, 0], zps[:, 0]
    want = _loop_errors(x, scales, zps, grid, p, axis)
    got = S.candidate_lp_errors(x, scales, zps, grid, p, axis)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    monkeypatch.setattr(S, "CHUNK_ELEMENTS", x.numel())  # one candidate per chunk: same result
    torch.testing.assert_close(S.candidate_lp_errors(x, scales, zps, grid, p, axis), want, rtol=1e-5, atol=1e-9)


def test_po2_search_even_zero_points_no_worse_than_evened_afterwards():
    torch.manual_seed(1)
    x = torch.randn(4000) * 0.7 + 0.9  # signed, off-centre: asymmetric grid with a zero point
    grid = Grid(8, True)
    scale, zp = S.lp_search(x, grid, False)
    s0, z0 = S.po2_search(x, scale, zp, grid)
    s1, z1 = S.po2_search(x, scale, zp, grid, even_zp=True)
    assert int(z1) % 2 == 0
    z0e = S.even_zero_point(z0)
    e_after = S.lp_error(x, fake_quantize(x, s0, z0e.float(), grid), 2.4, None)
    e_search = S.lp_error(x, fake_quantize(x, s1, z1.float(), grid), 2.4, None)
    assert float(e_search) <= float(e_after) * (1 + 1e-6)


def test_po2_clip_candidates_hand_computed():
    # EfficientNet-Lite0's input range; s = 2^-6: keep x_max -> z = 127 - 2.64 * 64 = -41.96 -> -42,
    # keep x_min -> z = -128 + 2.1179 * 64 = 7.55 -> 8; 7 points between, moved down to even.
    s, z = S.po2_clip_candidates(-2.1179039478302, 2.640000104904175, 2.0 ** -5, -8, Grid(8, True))
    assert s.tolist() == [2.0 ** -5] + [2.0 ** -6] * 7
    assert z.tolist() == [-8, -42, -34, -26, -18, -10, -2, 8]
    assert all(v % 2 == 0 for v in z.tolist())
    # unsigned grid: zero point 0, the finer exponent only
    s, z = S.po2_clip_candidates(0.0, 6.0, 2.0 ** -5, 0, Grid(8, False))
    assert s.tolist() == [2.0 ** -5, 2.0 ** -6] and z.tolist() == [0, 0]
    # zero points saturate at the grid ends and duplicates are dropped
    s, z = S.po2_clip_candidates(-100.0, 0.5, 1.0, 126, Grid(8, True), n_zp=3)
    assert z.tolist()[0] == 126 and max(z.tolist()) <= 127 and min(z.tolist()) >= -128
    assert len(set(zip(s.tolist(), z.tolist()))) == len(s)


def test_bias_shift_with_input_error_is_mean_output_error():
    """1x1 conv: E[conv(Q(x), W_q) - conv(x, W)] per output channel == (W_q - W) E[x] + W_q E[Q(x) - x]."""
    from onnxptq.calib.calibrate import bias_shift

    torch.manual_seed(2)
    x = torch.randn(8, 3, 5, 5) * 1.5 + 0.3
    w = torch.randn(4, 3, 1, 1)
    w_q = (w * 8).round() / 8
    xq = fake_quantize(x, torch.tensor(0.25), torch.tensor(0.0), Grid(4, True))  # clips: biased error
    layer = Layer("c", "Conv", "x", "w", None, "y", "y", weight_shape=(4, 3, 1, 1))
    mean = x.mean(dim=(0, 2, 3))
    err = (xq - x).mean(dim=(0, 2, 3))
    want = (torch.nn.functional.conv2d(xq, w_q) - torch.nn.functional.conv2d(x, w)).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bias_shift(layer, w, w_q, mean, err), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bias_shift(layer, w, w_q, mean),
                               (torch.nn.functional.conv2d(x, w_q - w)).mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_output_search_picks_lowest_output_error_on_digits():
    """The input quant point's Po2 choice is the candidate with the lowest model-output error; with it,
    calibration still gives Po2 params with even zero points and the config option turns it off."""
    from onnxptq.config import QuantConfig
    from onnxptq.data import load_dataset
    from onnxptq.graph import import_model
    from onnxptq.plan import make_plan
    from onnxptq.calib import calibrate as C
    from onnxptq.calib.output_search import po2_output_search
    from onnxptq.sim.model import SimModel

    qg = import_model(digits_path("digits_resnet"))
    data = load_dataset(MODELS / "digits_calib.npz", {n: qg.shapes.get(n, ()) for n in qg.inputs}, 64)
    cfg = QuantConfig(scale="po2", progress=False, num_calib=64)
    sim = SimModel(qg)
    obs, _ = C.observe_activations(sim, data, cfg)
    C.calibrate_activations(sim, obs, make_plan(qg, cfg), cfg)
    inp = qg.inputs[0]
    before = sim.act_quantizer(inp).params
    chosen = po2_output_search(sim, data, obs, 1, n_samples=16)
    after = sim.act_quantizer(inp).params
    assert list(chosen) == [inp]
    assert after.po2 and int(after.zero_point) % 2 == 0
    # recompute every candidate's output error: the chosen one is the minimum
    scales, zps = S.po2_clip_candidates(obs[inp].min, obs[inp].max, float(before.scale), int(before.zero_point),
                                        before.grid)
    from onnxptq.quant import QParams

    feeds = {inp: torch.from_numpy(data.inputs[inp][:16])}
    with torch.no_grad():
        sim.set_quant(False, False)
        ref = sim(feeds)[qg.outputs[0]]
        fq = sim.act_quantizer(inp)
        errs = []
        for s, z in zip(scales, zps):
            fq.set_params(QParams(before.grid, s.numpy(), z.numpy(), None, po2=True))
            fq.enabled = True
            errs.append(float(((sim(feeds)[qg.outputs[0]] - ref).double() ** 2).sum() / (ref.double() ** 2).sum()))
            fq.enabled = False
    assert chosen[inp] == pytest.approx(min(errs), rel=1e-6)
    b = int(np.argmin(errs))
    assert (float(after.scale), int(after.zero_point)) == (float(scales[b]), int(zps[b]))


def test_po2_output_points_option():
    from onnxptq.config import QuantConfig
    from onnxptq.errors import ConfigError

    assert QuantConfig().po2_output_points == 1
    assert QuantConfig(po2_output_points=0).po2_output_points == 0
    with pytest.raises(ConfigError):
        QuantConfig(po2_output_points=-1)
