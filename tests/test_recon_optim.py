"""The reconstruction's Adam (recon/optim.py) against ``torch.optim.Adam``, fused kernel and op-by-op alike; and the
soft rounding's shared h(V) (recon/adaround.py): the regularizer of a training step reuses the forward's h, with the
gradient autograd gives when each term computes its own."""
from __future__ import annotations

import pytest
import torch

from onnxptq.recon.adaround import AdaRoundRounding, rounding_regularizer
from onnxptq.recon.optim import Adam


@pytest.mark.parametrize("fused", [True, False])
def test_adam_matches_torch_adam(fused):
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (7,), (2, 5)]
    mine = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    start = [p.detach().clone() for p in mine]
    lrs = (3e-2, 1e-3)
    opt = Adam([{"params": mine[:2], "lr": lrs[0]}, {"params": mine[2:], "lr": lrs[1]}], fused=fused)
    topt = torch.optim.Adam([{"params": ref[:2], "lr": lrs[0]}, {"params": ref[2:], "lr": lrs[1]}])
    for it in range(12):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for k, (a, b, gr) in enumerate(zip(mine, ref, grads)):
            skip = k == 1 and it % 3 == 2  # a parameter without a gradient in some steps keeps its own step count
            a.grad = None if skip else gr.clone()
            b.grad = None if skip else gr.clone()
        opt.step()
        topt.step()
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a.detach(), a0) for a, a0 in zip(mine, start))


def test_regularizer_reuses_the_forward_h_with_the_same_gradient():
    w_over_s = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * 3
    shared, separate = AdaRoundRounding(w_over_s), AdaRoundRounding(w_over_s)
    target = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    losses = []
    for r, reuse in ((shared, True), (separate, False)):
        out = r(w_over_s)
        h = r._h
        assert h is not None
        reg = r.regularizer(8.0) if reuse else rounding_regularizer(r.h(), 8.0)
        assert r._h is None or not reuse  # used once
        loss = ((out - target) ** 2).sum() + 0.5 * reg
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.testing.assert_close(shared.v.grad, separate.v.grad, rtol=1e-5, atol=1e-7)
    # without a forward in grad mode (evaluation, hard rounding) the regularizer computes h afresh
    with torch.no_grad():
        shared(w_over_s)
    assert shared._h is None
    fresh = float(rounding_regularizer(shared.h(), 8.0).detach())
    assert float(shared.regularizer(8.0).detach()) == pytest.approx(fresh)
    shared.hard = True
    shared(w_over_s)
    assert shared._h is None
