"""Learned activation step sizes (LSQ, BRECQ Eq. 29) and QDrop for the activation quantizers of a region.

``LearnedStep`` takes the place of one activation ``FakeQuant`` of the simulation while its region is
reconstructed. It applies the same ``quant.rounding.fake_quantize`` with the STE rounding of the
simulation (``sim.fake_quant.fake_quantize_ste``: the chain's gradients, computed in one node), but with the
step size as a trainable parameter: autograd through
``(clip(RNE_ste(x / s) + z) - z) * s`` gives exactly Eq. 29 (RNE(x/s) - x/s inside the grid, the
clipped grid end outside it; no gradient scale, as in BRECQ B.4.4). With ``drop_prob`` > 0 (QDrop),
each element keeps its float value with that probability during training.

Steps of grids wider than MAX_LEARNED_BITS (16-bit activations) are not learned: such a step is ~2^-16 of
the range, smaller than one Adam update of ``act_lr`` on the plain parameter, so LSQ diverges; their
quantization error is far below the weights' anyway.

Power-of-two steps are learned in the log2 domain (RAPQ Eq. 16, TQT): the parameter is t = log2 s,
the step is 2^floor(t) forward and differentiable as 2^t (``quant.rapq.po2_step``), so it stays an
exact power of two and its gradient is Eq. 16's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant import QParams
from ..quant.rapq import po2_step
from ..sim.fake_quant import FakeQuant, fake_quantize_ste

MAX_LEARNED_BITS = 8  # wider grids keep their calibrated step (module doc)


class LearnedStep(FakeQuant):
    """An activation fake-quantizer with a trainable step size (and optional QDrop); ``learn`` is ignored
    (the step is fixed) for grids wider than MAX_LEARNED_BITS."""

    def __init__(self, original: FakeQuant, learn: bool, drop_prob: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(original.name, original.bits, original.axis)
        if original.params is None:
            raise ValueError(f"quantizer {original.name!r} has no parameters to start from")
        self.original = [original]  # not a submodule: restored by ``finish``
        self.params = original.params
        self.enabled = original.enabled
        device = original.scale.device
        self.zero_point = original.zero_point.clone()
        self.learn = learn and original.params.grid.bits <= MAX_LEARNED_BITS
        self.po2 = bool(original.params.po2)
        init = original.scale.detach().clone().to(device)
        self.step = nn.Parameter(torch.log2(init) if self.po2 else init, requires_grad=self.learn)
        self.drop_prob = drop_prob
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        step = self._step()
        xq = fake_quantize_ste(x, step, self.zero_point, self.params.grid)
        if self.training and self.drop_prob > 0:
            keep_float = torch.rand(x.shape, generator=self.generator, device=x.device) < self.drop_prob
            return torch.where(keep_float, x, xq)
        return xq

    def _step(self) -> torch.Tensor:
        return po2_step(self.step) if self.po2 else self.step.clamp(min=1e-8)

    def learned_params(self) -> QParams:
        """The calibrated parameters with the learned step size (float32)."""
        p = self.params
        if not self.learn:
            return p
        scale = np.asarray(self._step().detach().cpu().numpy(), dtype=np.float32).reshape(p.scale.shape)
        return QParams(p.grid, scale, p.zero_point, p.axis, p.po2)
