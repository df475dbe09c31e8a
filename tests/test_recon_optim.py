"""The soft rounding's shared h(V) (recon/adaround.py): the regularizer of a training step reuses the forward's h,
with the gradient autograd gives when each term computes its own."""
from __future__ import annotations

import pytest
import torch

from onnxptq.recon.adaround import AdaRoundRounding, rounding_regularizer


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
