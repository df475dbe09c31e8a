"""Attention Round (Attention Round paper, Sec. 3.2-3.3, Eq. 1-7).

Each weight gets a trainable perturbation alpha (in grid steps) added before rounding,
ŵ = s * clip(round(w / s + alpha), l, h) (Eq. 3), so a weight may land on any grid point, not
only the two nearest ones. alpha starts from N(0, (tau/s)^2) (Eq. 1-2: a Gaussian perturbation of
the weight with standard deviation tau, expressed in grid steps). Rounding has no gradient; the
backward pass uses the erf-shaped surrogate of Eq. 6,

    dz/dalpha = 0.5 + 0.5 erf(alpha / (sqrt(2) tau/s))   if dL/dz > 0
                0.5 - 0.5 erf(alpha / (sqrt(2) tau/s))   otherwise,

the probability mass of the Gaussian attention on the side the update moves alpha away from:
a step towards alpha = 0 passes nearly the whole gradient, a step further out is damped, so far
grid points stay reachable but are chosen less often.

``tau_unit`` says how tau is measured. ``"weight"`` is Eq. 3's literal reading: tau in the weight's
units, divided by each channel's step s. ``"step"`` (the default) reads tau/s as tau grid steps:
with the paper's tau = 0.5 and typical 4-bit steps (s ~ 0.01-0.1) the literal reading gives
perturbations of 5-50 grid steps that scatter every weight over its whole grid before training
(measured in docs/benchmarks.md, ``rounding`` sections); tau = 0.5 steps matches the paper's
statement that weights prefer the nearby grid points.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

TAU = 0.5  # Sec. 4.5.2: accuracy is flat for tau in [0, 1], best near 0.5
TAU_UNITS = ("step", "weight")


def tau_in_steps(tau: float, scale: torch.Tensor, unit: str) -> torch.Tensor:
    """tau/s of Eq. 3/6 in grid steps, broadcastable to the weight: tau (``step``) or tau / s (``weight``)."""
    if unit not in TAU_UNITS:
        raise ValueError(f"tau unit must be one of {TAU_UNITS}; got {unit!r}")
    if tau <= 0:
        raise ValueError(f"tau must be positive; got {tau}")
    return torch.full_like(scale, float(tau)) if unit == "step" else float(tau) / scale


def surrogate(alpha: torch.Tensor, upstream: torch.Tensor, tau_steps: torch.Tensor) -> torch.Tensor:
    """dz/dalpha of Eq. 6: 0.5 + 0.5 erf(alpha / (sqrt(2) tau/s)) where dL/dz > 0, else 0.5 - 0.5 erf(...)."""
    e = torch.erf(alpha / (math.sqrt(2.0) * tau_steps))
    return torch.where(upstream > 0, 0.5 + 0.5 * e, 0.5 - 0.5 * e)


def init_alpha(tau_steps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """alpha ~ N(0, (tau/s)^2) (Sec. 3.3), one per weight (``tau_steps`` has the weight's shape); drawn on
    the CPU from ``generator`` so a seed gives the same alpha on every device."""
    z = torch.randn(tuple(tau_steps.shape), generator=generator, dtype=torch.float32)
    return z.to(tau_steps.device) * tau_steps


class _AttentionRoundFn(torch.autograd.Function):
    """z = round(w/s + alpha) (RNE, as QuantizeLinear); backward to alpha by Eq. 5-6, none to w/s."""

    @staticmethod
    def forward(ctx, w_over_s, alpha, tau_steps):  # noqa: D102
        ctx.save_for_backward(alpha, tau_steps)
        return (w_over_s + alpha).round()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        alpha, tau_steps = ctx.saved_tensors
        return None, g * surrogate(alpha, g, tau_steps), None


class AttentionRounding(nn.Module):
    """Learned rounding of one weight tensor to any grid point: a ``round_fn`` for ``quant.rounding.quantize``.

    ``quantize(w, s, z, grid, round_fn=self)`` computes clip(round(w/s + alpha) + z, qmin, qmax) (Eq. 3).
    The forward pass is already hard, so ``hard`` changes nothing (kept for the engine's interface).
    """

    WITHIN_ONE_STEP = False  # the hard result stays within one grid step of w / s (checked by the engine)

    def __init__(self, w_over_s: torch.Tensor, scale: torch.Tensor, tau: float = TAU, unit: str = "step",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        tau_steps = tau_in_steps(tau, scale.detach().float(), unit).expand_as(w_over_s).contiguous()
        self.register_buffer("tau_steps", tau_steps)
        self.alpha = nn.Parameter(init_alpha(tau_steps, generator))
        self.hard = False

    def forward(self, w_over_s: torch.Tensor) -> torch.Tensor:
        if w_over_s.shape != self.alpha.shape:
            raise ValueError(f"Attention Round variables have shape {tuple(self.alpha.shape)}, weights "
                             f"{tuple(w_over_s.shape)}")
        return _AttentionRoundFn.apply(w_over_s.detach(), self.alpha, self.tau_steps)

    def regularizer(self, beta: float) -> torch.Tensor:  # noqa: ARG002 - no rounding regularizer in Attention Round
        return self.alpha.new_zeros(())

    def undecided(self, tol: float = 1e-3) -> float:  # noqa: ARG002 - the forward pass is always hard
        return 0.0


def beyond_neighbors(q: np.ndarray, t: np.ndarray, qmin: int, qmax: int) -> float:
    """Fraction of integers ``q`` that are neither floor nor ceil of the clipped grid position t = w/s + z."""
    t = np.clip(t, qmin, qmax)
    return float(np.mean((q < np.floor(t) - 1e-6) | (q > np.ceil(t) + 1e-6))) if q.size else 0.0
