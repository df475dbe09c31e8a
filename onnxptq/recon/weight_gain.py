"""A learned per-channel gain on the weight step, fitted together with the learned rounding (float scales only).

While a region's rounding is learned, each weight channel c is dequantized as (q_c - z_c) s_c g_c with
g_c = exp(t_c): the integers q = clip(floor(w / s) + h(V) + z) stay on the calibrated grid of step s (so
AdaRound's variables keep their meaning, BRECQ Eq. 27), while the step s_c g_c is fitted to the region loss by
the same optimizer, as LSQ fits a step (Esser et al. 2020) but with the grid of the rounding held fixed (a
simpler relative of FlexRound, Lee et al. 2023, which learns the step jointly with the rounding). When the rounding
becomes hard the gain folds into the scale: s' = s g. ``t`` starts at 0, so before the first step the region
computes exactly what it computed without the gain."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def folded_scale(scale: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """s' = s g per channel (float32): the weight step after the gain is folded in."""
    return (np.asarray(scale, np.float64) * np.asarray(gain, np.float64).reshape(np.shape(scale))).astype(np.float32)


class WeightGain(nn.Module):
    """g = exp(t) per output channel, in the weight quantizer's scale shape; a ``gain_fn`` for ``FakeQuant``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.zeros(shape))

    def forward(self) -> torch.Tensor:
        return torch.exp(self.t)

    @torch.no_grad()
    def gain(self) -> np.ndarray:
        return self().cpu().double().numpy().reshape(-1)
