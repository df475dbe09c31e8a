"""RAPQ's Po2 scale group for weights (Eq. 11-12): a learned choice, per output channel, between the two
powers of two around the float scale, optimized jointly for every layer of a region against the region
loss, then snapped to exact exponents and frozen before the rounding is learned (Algorithm 1).

``Po2ScaleGroup`` is a ``scale_fn`` for the weight ``FakeQuant``: while it is installed the weights are
quantized (round-to-nearest with STE) at s~ = 2^(floor(log2 s0) + h2(V)), with h2 the rectified
sigmoid of AdaRound and V initialized so that s~ = s0 (the float L_p scale).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant import rapq
from .adaround import init_v, rectified_sigmoid, rounding_regularizer


class Po2ScaleGroup(nn.Module):
    """Per-channel soft exponents of one weight tensor (RAPQ Eq. 11)."""

    def __init__(self, float_scale: np.ndarray, shape: tuple[int, ...]) -> None:
        super().__init__()
        s0 = torch.as_tensor(np.asarray(float_scale, dtype=np.float64)).reshape(shape)
        base = rapq.po2_base_exponent(s0)
        self.register_buffer("base", base.float())
        frac = (torch.log2(s0) - base).float()
        self.v = nn.Parameter(init_v(frac))  # h2(V) = log2 s0 - floor(log2 s0)

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.v)

    def forward(self) -> torch.Tensor:
        return rapq.po2_group_scale(self.base, self.h())

    def regularizer(self, beta: float) -> torch.Tensor:
        """mu's term f_reg(V) of Eq. 12 (the same binarizing regularizer as the rounding's, Eq. 15)."""
        return rounding_regularizer(self.h(), beta)

    @torch.no_grad()
    def snapped(self) -> np.ndarray:
        """The exact Po2 scales 2^(floor(log2 s0) + [h >= 0.5]) (float32, the quantizer's shape)."""
        e = rapq.snap_exponent(self.base.cpu().numpy(), self.h().cpu().numpy())
        return np.ldexp(np.float32(1.0), e).astype(np.float32)
