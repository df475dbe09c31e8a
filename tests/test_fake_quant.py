"""The fused straight-through fake-quantizer (``sim.fake_quant.fake_quantize_ste``): the values of
``quant.rounding.fake_quantize`` bit for bit, the gradients autograd derives through that chain (x and a learned
step, per tensor and per channel, at and beyond the grid ends), and hand-computed LSQ gradients (BRECQ Eq. 29);
Clip's simulation keeps clamp's values and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxptq.ops.registry import REGISTRY
from onnxptq.quant import fake_quantize
from onnxptq.quant.rounding import fake_quantize_rne_inplace, rne
from onnxptq.quant.grid import activation_grid, weight_grid
from onnxptq.sim.fake_quant import fake_quantize_ste, round_ste


def _chain_and_fused(x, s, z, grid, learn_x=True, learn_s=True):
    out = []
    for fn in (lambda a, b: fake_quantize(a, b, z, grid, round_ste), lambda a, b: fake_quantize_ste(a, b, z, grid)):
        a = x.clone().requires_grad_(learn_x)
        b = s.clone().requires_grad_(learn_s)
        y = fn(a, b)
        g = torch.linspace(-1.0, 2.0, y.numel()).reshape(y.shape)  # an uneven upstream gradient
        (y * g).sum().backward()
        out.append((y.detach(), a.grad, b.grad))
    return out


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("grid,zp", [(activation_grid(4, nonnegative=True), 3.0), (weight_grid(4), 0.0),
                                     (activation_grid(8, nonnegative=False), -5.0)])
def test_fused_equals_the_autograd_chain(per_channel, grid, zp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g) * 3.0
    x[0, 0, 0, :3] = torch.tensor([0.0, 100.0, -100.0])  # grid ends and beyond
    s = torch.tensor([0.2, 0.35, 0.05]).reshape(1, 3, 1, 1) if per_channel else torch.tensor(0.3)
    z = torch.full(s.shape, zp)
    (y0, gx0, gs0), (y1, gx1, gs1) = _chain_and_fused(x, s, z, grid)
    assert torch.equal(y0, y1)
    assert torch.allclose(gx0, gx1, rtol=1e-6, atol=0)  # the mask times g (the chain: g * s / s)
    assert gs1.shape == s.shape and torch.allclose(gs0, gs1, rtol=1e-5, atol=1e-5)
    (_, gx, gs), (_, fx, fs) = _chain_and_fused(x, s, z, grid, learn_x=False)
    assert gx is None and fx is None and torch.allclose(gs, fs, rtol=1e-5, atol=1e-5)
    (_, gx, gs), (_, fx, fs) = _chain_and_fused(x, s, z, grid, learn_s=False)
    assert gs is None and fs is None and torch.allclose(gx, fx, rtol=1e-6, atol=0)


def test_lsq_gradient_hand_values():
    """d out / d s = RNE(x/s) - x/s strictly inside the grid, (q - z) at and beyond its ends (Eq. 29)."""
    grid = activation_grid(4, nonnegative=True)  # 0..15
    s = torch.tensor(0.5, requires_grad=True)
    x = torch.tensor([0.3, 1.1, 7.5, 100.0, -3.0], requires_grad=True)
    y = fake_quantize_ste(x, s, torch.tensor(0.0), grid)
    assert y.tolist() == [0.5, 1.0, 7.5, 7.5, 0.0]
    grads = [torch.autograd.grad(v, s, retain_graph=True)[0].item() for v in y]
    assert grads == pytest.approx([1 - 0.6, 2 - 2.2, 15.0, 15.0, 0.0], abs=1e-6)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]  # 7.5 / 0.5 = 15: the grid end, like clamp


def test_no_grad_gives_the_chain_values():
    grid = weight_grid(8)
    x, s, z = torch.randn(10), torch.tensor(0.1), torch.tensor(0.0)
    with torch.no_grad():
        assert torch.equal(fake_quantize_ste(x, s, z, grid), fake_quantize(x, s, z, grid, round_ste))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("grid,zp", [(activation_grid(4, nonnegative=True), 3.0), (weight_grid(4), 0.0),
                                     (activation_grid(8, nonnegative=False), -5.0)])
def test_inplace_rne_equals_the_chain(per_channel, grid, zp):
    """``fake_quantize_rne_inplace``: bit for bit ``fake_quantize`` with round half to even, at ties (x / s
    exactly k + 0.5, rounding down for even k and up for odd), at and beyond the grid ends, per channel, with
    NumPy or torch parameters, in the channels-last layout; x is not written."""
    g = torch.Generator().manual_seed(1)
    s_list = [0.25, 0.5, 0.125]  # powers of two: the ties below are exact in float32
    x = torch.randn(2, 3, 6, 6, generator=g) * 2.0
    x[0, :, 0, :4] = torch.tensor([0.5, 1.5, 2.5, -2.5]).reshape(1, 4) * torch.tensor(s_list).reshape(3, 1)
    x[1, 0, 0, :2] = torch.tensor([1e3, -1e3])
    s_np = np.array(s_list, np.float32).reshape(1, 3, 1, 1) if per_channel else np.float32(0.25)
    z_np = np.full(np.shape(s_np), zp, np.float32)
    ref = fake_quantize(x, torch.as_tensor(s_np), torch.as_tensor(z_np), grid, rne)
    kept = x.clone()
    for s_, z_ in ((s_np, z_np), (torch.as_tensor(s_np), torch.as_tensor(z_np))):
        assert torch.equal(fake_quantize_rne_inplace(x, s_, z_, grid), ref)
        assert torch.equal(x, kept)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(fake_quantize_rne_inplace(cl, s_np, z_np, grid), ref)
    if not per_channel and zp == 0.0:  # hand values: 0.5/0.25 = 2 ... ties 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2
        assert ref[0, 0, 0, :4].tolist() == [0.0, 0.5, 0.5, -0.5]


@pytest.mark.parametrize("bounds", [(0.0, 6.0), (-1.0, 1.0)])
def test_clip_keeps_clamp_values_and_gradients(bounds):
    x = torch.tensor([bounds[0], bounds[1], 0.5, -7.0, 7.0, float("nan")])
    lo, hi = (torch.tensor(b) for b in bounds)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = REGISTRY["Clip"].simulate([a, lo, hi], {})[0]
    ref = torch.clamp(b, *bounds)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y[:-1], ref[:-1])
    y[:-1].sum().backward()
    ref[:-1].sum().backward()
    assert torch.equal(a.grad, b.grad)
