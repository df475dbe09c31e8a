"""RAPQ's quantization math (Yao et al. 2022): the Po2 scale group, the TQT-style log2 step, and the
BN-based L-P exponent. Pure functions; the torch modules of ``recon/`` wrap them.

- Po2 scale group (Eq. 11): a per-channel scale s = 2^(floor(log2 s0) + h), h in [0, 1] soft while
  it is learned, then snapped to 0 or 1 so that every scale is an exact power of two.
- Po2 activation step (Eq. 16): the step is 2^floor(t) forward, and t = log2 s is learned with the
  gradient of the TQT approximation (s ~ 2^floor(t), floor(x/s + z) ~ x/s + z).
- BN-based L-P loss (Eq. 17-19): the exponent P of a region from the mean BN gamma of its last layer.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def po2_base_exponent(scale: np.ndarray | torch.Tensor):
    """floor(log2 s0): the lower of the two powers of two a scale group chooses between (Eq. 11)."""
    if isinstance(scale, torch.Tensor):
        return torch.floor(torch.log2(scale.double()))
    return np.floor(np.log2(np.asarray(scale, dtype=np.float64)))


def po2_group_scale(base_exponent: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """s~ = 2^(floor(log2 s0) + h2(V)) (Eq. 11); a power of two exactly when h is 0 or 1."""
    return torch.exp2(base_exponent + h)


def snap_exponent(base_exponent: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The integer exponents after the scale-group phase: floor(log2 s0) + [h >= 0.5].

    (The public RAPQ code's snap leaves h as it is; the exported scales must be exact powers of two.)"""
    return (np.asarray(base_exponent, dtype=np.float64) + (np.asarray(h) >= 0.5)).astype(np.int64)


def floor_ste(t: torch.Tensor) -> torch.Tensor:
    """floor(t) forward, identity backward."""
    return t + (torch.floor(t) - t).detach()


def po2_step(log2_step: torch.Tensor) -> torch.Tensor:
    """The Po2 step 2^floor(t) of a learned log2 step t, differentiable as 2^t.

    With ``quant.rounding.fake_quantize`` and STE rounding, autograd then gives RAPQ Eq. 16 (TQT):
    dx^/dt = s ln2 (round(x/s + z) - (x/s + z)) inside the grid and s ln2 (q_end - z) at a clipped end.
    """
    return torch.exp2(floor_ste(log2_step))


def lp_exponent(gamma_mean: float, alpha: float = 0.9, beta: float = 1.0, decimals: int = 2) -> float:
    """P = 1 + alpha sigmoid(mean(gamma) - beta) (Eq. 19), in [1, 2) for alpha in (0, 1]; rounded to
    ``decimals`` places as the paper does."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"RAPQ alpha must be in (0, 1]; got {alpha}")
    return round(1.0 + alpha / (1.0 + math.exp(-(float(gamma_mean) - beta))), decimals)
