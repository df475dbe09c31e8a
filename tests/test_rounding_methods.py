"""Rounding functions (issue 6): Attention Round's forward (Eq. 3), its erf surrogate gradient (Eq. 6)
checked on hand-picked values, its alpha initialization, and the nearest / floor / ceil / stochastic
baselines of Attention Round Table 5; then both end to end on the tiny net."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from onnxptq import api
from helpers import method_kw
from onnxptq.settings import resolve as resolve_config
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.graph import import_model
from onnxptq.quant import weight_grid
from onnxptq.quant.rounding import ceil_round, floor_round, quantize, stochastic_round
from onnxptq.recon.attention_round import (AttentionRounding, beyond_neighbors, init_alpha, surrogate, tau_in_steps)
from onnxptq.calib.calibrate import integer_weights
from onnxptq.recon.settings import resolve
from onnxptq.verify.qdq import qdq_output_parity

from test_recon import FAST, tiny  # noqa: F401  (fixture)


def test_surrogate_is_eq6_on_hand_values():
    """0.5 +/- 0.5 erf(alpha / (sqrt(2) tau/s)) by the sign of dL/dz."""
    tau = torch.tensor([0.5, 0.5, 0.5, 1.0, 0.25])
    alpha = torch.tensor([0.0, 0.5, -0.5, 1.0, 0.25 * math.sqrt(2.0) * 0.5])
    up = torch.tensor([1.0, 1.0, 1.0, -2.0, -1.0])
    erf = [0.0, math.erf(0.5 / (math.sqrt(2) * 0.5)), math.erf(-0.5 / (math.sqrt(2) * 0.5)),
           math.erf(1.0 / math.sqrt(2)), math.erf(0.5)]
    expected = torch.tensor([0.5 + 0.5 * erf[0], 0.5 + 0.5 * erf[1], 0.5 + 0.5 * erf[2], 0.5 - 0.5 * erf[3],
                             0.5 - 0.5 * erf[4]])
    got = surrogate(alpha, up, tau)
    assert torch.allclose(got, expected, atol=1e-7)
    # the numbers: erf(1/sqrt 2) = 0.682689..., so 0.841345 (one sigma, pushing back) and 0.158655
    assert abs(float(got[1]) - 0.8413447) < 1e-6 and abs(float(got[2]) - 0.1586553) < 1e-6
    assert abs(float(got[3]) - 0.1586553) < 1e-6


def test_backward_is_upstream_times_surrogate_and_forward_is_eq3():
    w_over_s = torch.tensor([[0.2, 1.7, -2.4, 3.49]])
    scale = torch.tensor([[0.1]])
    r = AttentionRounding(w_over_s, scale, tau=0.5, unit="step", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        r.alpha.copy_(torch.tensor([[0.0, 0.9, -1.2, 0.02]]))
    grid = weight_grid(3)  # -4..3
    q = quantize(w_over_s * 0.1, 0.1, 0.0, grid, r)
    # Eq. 3: clip(round(w/s + alpha)): 0.2 -> 0, 2.6 -> 3, -3.6 -> -4, 3.51 -> 4 clipped to 3
    assert q.tolist() == [[0.0, 3.0, -4.0, 3.0]]
    z = r(w_over_s)
    g = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    z.backward(g)
    assert torch.allclose(r.alpha.grad, g * surrogate(r.alpha.detach(), g, torch.full_like(g, 0.5)))
    assert r.regularizer(2.0) == 0 and r.undecided() == 0.0


def test_alpha_init_and_tau_units():
    scale = torch.tensor([[0.05], [0.2]])
    steps = tau_in_steps(0.5, scale, "step")
    assert torch.equal(steps, torch.full_like(scale, 0.5))
    assert torch.allclose(tau_in_steps(0.5, scale, "weight"), torch.tensor([[10.0], [2.5]]))
    with pytest.raises(ValueError):
        tau_in_steps(0.5, scale, "bogus")
    a = init_alpha(torch.full((200, 500), 0.5), torch.Generator().manual_seed(1))
    assert abs(float(a.mean())) < 0.01 and abs(float(a.std()) - 0.5) < 0.01  # N(0, (tau/s)^2)
    b = init_alpha(torch.full((200, 500), 0.5), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_beyond_neighbors_counts_far_grid_points():
    t = np.array([0.3, 0.3, 0.3, -1.5, 9.0])
    q = np.array([0, 1, 2, -3, 7])  # 2 and -3 are beyond floor/ceil; 9.0 clips to 7
    assert beyond_neighbors(q, t, -8, 7) == pytest.approx(2 / 5)


def test_rounding_baselines_hand_values():
    x = np.array([-1.5, -0.2, 0.5, 1.7])
    assert floor_round(x).tolist() == [-2.0, -1.0, 0.0, 1.0]
    assert ceil_round(torch.tensor(x)).tolist() == [-1.0, -0.0, 1.0, 2.0]
    assert stochastic_round(x, np.array([0.49, 0.79, 0.5, 0.31])).tolist() == [-2.0, 0.0, 1.0, 2.0]
    g = torch.Generator().manual_seed(0)
    xs = torch.full((100000,), 0.3)
    assert abs(float(stochastic_round(xs, torch.rand(xs.shape, generator=g)).mean()) - 0.3) < 0.01  # unbiased


@pytest.mark.parametrize("rounding,op", [("floor", np.floor), ("ceil", np.ceil)])
def test_rtn_rounding_option_sets_the_integers(tiny, rounding, op):
    _, path, calib, _ = tiny
    qg = import_model(path)
    floats = {layer.name: qg.initializer(layer.weight) for layer in qg.layers}
    res = api.quantize(path, calib, w_bits=4, a_bits=8, rounding=rounding, progress=False)
    for layer in res.qgraph.layers:
        fq = res.sim.weight_quantizer(layer.name)
        scale, zp = fq.params.shaped_for(len(layer.weight_shape))
        expected = np.clip(op(floats[layer.name].astype(np.float32) / scale.astype(np.float32)) + zp,
                           fq.params.grid.qmin, fq.params.grid.qmax)
        assert np.array_equal(integer_weights(res.sim, layer.name), expected.astype(np.int64)), layer.name


def test_stochastic_rounding_is_seeded(tiny):
    _, path, calib, _ = tiny
    runs = [api.quantize(path, calib, w_bits=4, rounding="stochastic", seed=s, progress=False) for s in (3, 3, 4)]
    ints = [{x.name: integer_weights(r.sim, x.name) for x in r.qgraph.layers} for r in runs]
    assert all(np.array_equal(ints[0][k], ints[1][k]) for k in ints[0])
    assert any(not np.array_equal(ints[0][k], ints[2][k]) for k in ints[0])


def test_attention_round_end_to_end(tiny, tmp_path):
    """On the grid, may leave the two nearest points, lowers the region losses, exports bit-exactly."""
    _, path, calib, val = tiny
    out = tmp_path / "attn.onnx"
    res = api.quantize(path, calib, output=out, method="attention", w_bits=3, a_bits=8, recon_guard=False,
                       granularity="layer", attn_tau=0.25, **method_kw("attention", **{**FAST, "iters": 60, "lr": 1e-2}))
    regions = res.recon.regions
    assert sum(r.loss_after for r in regions) < sum(r.loss_before for r in regions)
    assert any(r.beyond_neighbors > 0 for r in regions)  # some weights land past their two nearest points
    for layer in res.qgraph.layers:
        fq = res.sim.weight_quantizer(layer.name)
        q = integer_weights(res.sim, layer.name)
        scale, zp = fq.params.shaped_for(q.ndim)
        assert np.array_equal(res.sim.weight(layer.weight).detach().numpy(), ((q - zp) * scale).astype(np.float32))
    assert qdq_output_parity(res.sim, str(out), {"input": val}).bit_exact


def test_attention_settings_and_validation():
    st = resolve(QuantConfig(method="attention"))
    assert st.round_lambda == 0.0 and st.learn_steps == "after" and not st.acts_during_rounding
    full = resolve(QuantConfig(method="attention", preset="full"))
    assert (full.iters, full.batch_size, full.lr) == (2000, 64, 4e-4)  # Attention Round Sec. 4.1
    assert resolve(QuantConfig(method="attention", preset="full", iters=10)).iters == 10
    with pytest.raises(ConfigError, match="--method rtn"):
        resolve_config(QuantConfig(method="brecq", rounding="floor"))
    with pytest.raises(ConfigError):
        resolve_config(QuantConfig(method="attention", attn_tau=0.0))
    with pytest.raises(ConfigError):
        QuantConfig(rounding="up")
