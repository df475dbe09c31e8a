"""The learned roundings a method can name (``Method.rounding``): each builds the per-layer rounding module from
``w / s``. A rounding module is an ``nn.Module`` whose parameters are what Adam trains, with ``regularizer(beta)``,
``undecided()``, a ``hard`` switch and ``WITHIN_ONE_STEP`` (whether its hard result stays within one grid step of
the float weight, which the engine then checks)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .adaround import AdaRoundRounding
from .attention_round import AttentionRounding
from .settings import ReconSettings

Factory = Callable[[torch.Tensor, torch.Tensor, ReconSettings, torch.Generator | None], nn.Module]


def _adaround(w_over_s: torch.Tensor, scale: torch.Tensor, st: ReconSettings, gen) -> nn.Module:
    """AdaRound (BRECQ Eq. 28): a soft offset h(V) in [0, 1] on top of floor(w / s)."""
    return AdaRoundRounding(w_over_s).to(w_over_s.device)


def _attention(w_over_s: torch.Tensor, scale: torch.Tensor, st: ReconSettings, gen) -> nn.Module:
    """Attention Round (Eq. 3, 6): a perturbation alpha that may reach any grid point."""
    return AttentionRounding(w_over_s, scale, st.attn_tau, st.attn_tau_unit, gen)


ROUNDINGS: dict[str, Factory] = {
    "soft-offset": _adaround,  # AdaRound h(V): up or down from floor(w / s)
    "any-grid-point": _attention,  # Attention Round: any grid point within the perturbation
}
