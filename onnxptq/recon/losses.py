"""Region reconstruction losses (BRECQ Eq. 11 and its MSE special case), registered as data.

A loss is ``fn(pred, target, weight) -> scalar``: ``pred`` the quantized region output, ``target``
the float model's output, ``weight`` a per-element weight of the same shape (the Fisher diagonal)
or None. As in BRECQ's code, the squared error is summed over the channel axis (axis 1) and
averaged over samples and positions, so a loss value is "per position" and the AdaRound
regularizer weight lambda has the same meaning for every region.

``LOSSES`` lists what ``QuantConfig.loss`` accepts; a new objective is one entry there (plus its name in
``NEEDS_GRADIENTS`` / ``NEEDS_EXPONENT`` if it needs Fisher weights or a per-region exponent). The tables are
read-only at run time: no run can change what another accepts. RAPQ's BN-based L-P loss (``lp``) takes the
region's exponent P (``quant.rapq.lp_exponent``) as ``p=``.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import torch

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _channel_sum_mean(e: torch.Tensor) -> torch.Tensor:
    """Sum over axis 1 (channels), mean over the rest; plain mean for rank <= 1."""
    return e.sum(1).mean() if e.dim() >= 2 else e.mean()


def mse_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """||z - z_hat||^2: the Hessian approximated by c * I (BRECQ Sec. 3.3, Nagel et al. 2020)."""
    return _channel_sum_mean((pred - target).pow(2))


def fisher_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Delta z^T diag((dL/dz)^2) Delta z (BRECQ Eq. 11); ``weight`` holds the squared gradients."""
    if weight is None:
        raise ValueError("the Fisher loss needs the squared output gradients (weight)")
    return _channel_sum_mean((pred - target).pow(2) * weight)


def lp_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
            p: float = 2.0) -> torch.Tensor:
    """sum |z - z_hat|^P (RAPQ Eq. 17) with the region's BN-based P (Eq. 19), reduced like the MSE:
    P < 2 makes the reconstruction less sensitive to outliers; P = 2 is ``mse_loss``."""
    e = (pred - target).abs().pow(p)
    return _channel_sum_mean(e if weight is None else e * weight)


LOSSES: Mapping[str, LossFn] = MappingProxyType({"mse": mse_loss, "fisher": fisher_loss, "lp": lp_loss})
NEEDS_GRADIENTS = frozenset({"fisher"})  # losses whose weight is the Fisher diagonal of the region output
NEEDS_EXPONENT = frozenset({"lp"})  # losses called with the region's exponent p= (RAPQ Eq. 19)


def fisher_weights(grad: torch.Tensor, mean_sq: float, damping: float = 0.0) -> torch.Tensor:
    """Per-element weights of the Fisher loss from the output gradients g (BRECQ Eq. 10-11).

    (|g| / rms + damping)^2 normalized by the value it takes at |g| = rms, where ``mean_sq`` is
    E[g^2] over the region's whole cache: damping 0 gives g^2 / E[g^2], the diagonal Fisher of
    Eq. 11 scaled to mean 1 (so lambda keeps its meaning); damping > 0 mixes in the identity (MSE),
    as BRECQ's code does with |g| + 1.
    """
    rms = max(float(mean_sq), 1e-30) ** 0.5
    return ((grad.abs() / rms + damping) ** 2) / (1.0 + damping) ** 2


def region_loss(name: str, bn_gamma, float_output: Callable[[], torch.Tensor], alpha: float, beta: float
                ) -> tuple[LossFn, float | None, str | None]:
    """The loss ``name`` for one region: (fn, p, source). A loss in NEEDS_EXPONENT (RAPQ's L-P, Eq. 19) gets
    its exponent p from the mean BN gamma of the region's last layer (``bn_gamma``), or, when that layer has
    none (BN folded before import, classifier), from the mean per-channel standard deviation of the region's
    float output (|gamma| of a BN output is its standard deviation), read lazily from ``float_output()``;
    source is "bn" or "std". Other losses: (fn, None, None)."""
    from functools import partial

    from ..quant.rapq import lp_exponent

    base = LOSSES[name]
    if name not in NEEDS_EXPONENT:
        return base, None, None
    if bn_gamma is not None:
        gamma, source = float(np.mean(bn_gamma)), "bn"
    else:
        x = float_output().double()
        dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 1 else [0]
        gamma, source = float(x.std(dim=dims).mean()), "std"
    p = lp_exponent(gamma, alpha, beta)
    return partial(base, p=p), p, source

