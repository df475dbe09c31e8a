"""AdaRound (Nagel et al. 2020) as used by BRECQ (Appendix B.4.1, Eq. 27-28).

Pure math first (rectified sigmoid, its inverse for initialization, rounding regularizer, beta
schedule), then ``AdaRoundRounding``: a ``round_fn`` for ``quant.rounding.quantize`` that replaces
round-to-nearest of ``w / s`` by ``floor(w / s) + h(V)`` (soft) or ``floor(w / s) + [V >= 0]``
(hard). The grid, zero point and clipping stay those of ``quant.rounding``: the weight fake-quantizer
simply uses this round_fn instead of its STE rounding.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

ZETA = 1.1  # stretch of the rectified sigmoid (BRECQ Eq. 27 / AdaRound Eq. 23)
GAMMA = -0.1


def rectified_sigmoid(v: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1): the soft rounding offset in [0, 1]
    (the sigma(v) of BRECQ Eq. 27, stretched as in AdaRound so that 0 and 1 are reached exactly)."""
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """V with h(V) = h for h in [0, 1): V = -log((zeta - gamma) / (h - gamma) - 1).

    Used to initialize V so that the soft-rounded weight equals the float weight (h = frac(w / s)).
    """
    return -torch.log((zeta - gamma) / (h - gamma) - 1.0)


def init_v(w_over_s: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """Initial V for scaled weights ``w / s``: h(V) = w/s - floor(w/s), the fractional part."""
    frac = w_over_s - torch.floor(w_over_s)
    return inverse_rectified_sigmoid(frac, zeta, gamma)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """sum_i (1 - |2 h_i - 1|^beta) (BRECQ Eq. 28): 0 when every h_i is 0 or 1, largest at h = 0.5."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def beta_at(step: int, total: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0) -> float | None:
    """Annealed exponent of the regularizer at ``step`` of ``total`` (AdaRound's schedule, kept by BRECQ).

    None during the first ``warmup`` fraction of the iterations (the regularizer is off then); after
    it, beta decreases linearly from ``start`` (at the end of warm-up) to ``end`` (at the last step):
    a large beta only penalizes h near 0.5, a small one pushes every h towards 0 or 1.
    """
    begin = warmup * total
    if step < begin:
        return None
    span = max(total - begin, 1.0)
    rel = min(max((step - begin) / span, 0.0), 1.0)
    return end + (start - end) * (1.0 - rel)


class AdaRoundRounding(nn.Module):
    """Learned rounding of one weight tensor: a ``round_fn`` for ``quant.rounding.quantize``.

    ``quantize(w, s, z, grid, round_fn=self)`` then computes clip(floor(w/s) + h(V) + z, qmin, qmax)
    (BRECQ Eq. 27). ``hard`` switches to the final binary choice floor(w/s) + [h(V) >= 0.5].
    """

    WITHIN_ONE_STEP = True  # the hard result stays within one grid step of w / s (checked by the engine)

    def __init__(self, w_over_s: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(init_v(w_over_s.detach()).float())
        self.hard = False
        self._h: torch.Tensor | None = None  # h(V) of the last soft forward, for ``regularizer`` to reuse

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.v)

    def offsets(self) -> torch.Tensor:
        """The rounding offsets added to floor(w / s): soft h(V), or 0/1 once hard. A soft forward keeps its h(V)
        for the ``regularizer`` of the same training step, so that the rectified sigmoid and its backward run once
        per step instead of twice (autograd sums both terms' gradients in h, as it would in V)."""
        if self.hard:
            self._h = None
            return (self.v >= 0).to(self.v.dtype)
        h = self.h()
        self._h = h if torch.is_grad_enabled() else None
        return h

    def forward(self, w_over_s: torch.Tensor) -> torch.Tensor:
        if w_over_s.shape != self.v.shape:
            raise ValueError(f"AdaRound variables have shape {tuple(self.v.shape)}, weights {tuple(w_over_s.shape)}")
        return torch.floor(w_over_s.detach()) + self.offsets()

    def regularizer(self, beta: float) -> torch.Tensor:
        """Eq. 28 on h(V): the h of this step's forward when there was one (used once), else computed afresh."""
        h, self._h = self._h, None
        return rounding_regularizer(h if h is not None else self.h(), beta)

    @torch.no_grad()
    def undecided(self, tol: float = 1e-3) -> float:
        """Fraction of soft offsets not yet within ``tol`` of 0 or 1 (1.0 at start, ~0 when converged)."""
        h = self.h()
        return float(((h > tol) & (h < 1 - tol)).float().mean())


def within_one_step(q: np.ndarray, w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int,
                    qmax: int) -> bool:
    """True when every integer is floor or ceil of the clipped w/s + z (one grid step of the float weight)."""
    t = np.clip(w.astype(np.float64) / scale.astype(np.float64) + zero_point, qmin, qmax)
    return bool(np.all(q >= np.floor(t) - 1e-9) and np.all(q <= np.ceil(t) + 1e-9))

