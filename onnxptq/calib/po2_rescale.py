"""Power-of-two activation scales without their rounding loss: the factor each rescalable quant point gets
(``graph/rescale.py``) so that its best float scale becomes a power of two.

For a quant point ``t`` with best float scale ``s*`` (the run's ``a_scale_method`` on the float model's
calibration statistics, at ``t``'s bits), ``c = 2^round(log2 s*) / s* * (1 + 2^-12)`` (``factor``): after the
rewrite ``t``'s statistics are ``c`` times larger, the same method finds ``c s*`` (the L_p / min-max / percentile
scales are scale-equivariant), and every ``po2_method`` (floor, round, search) picks ``2^round(log2 s*)`` for it,
which quantizes the rescaled tensor exactly as ``s*`` quantized the original. (The ``1 + 2^-12`` keeps the
rescaled scale above its power of two through float rounding, so ``floor`` does not fall one power below.)
"""
from __future__ import annotations

import math

import torch

from ..config import QuantConfig
from ..data import Dataset
from ..graph.qgraph import QGraph
from ..graph.rescale import rescalable_points
from ..plan import BitPlan
from ..sim.model import SimModel
from .calibrate import activation_choice, float_scale, observe_activations, threads

MARGIN = 1.0 + 2.0 ** -12


def factor(best_scale: float) -> float:
    """``c`` with ``c * best_scale`` just above the power of two nearest ``best_scale`` (in log2)."""
    if not best_scale > 0 or not math.isfinite(best_scale):
        return 1.0
    return 2.0 ** round(math.log2(best_scale)) / best_scale * MARGIN


@torch.no_grad()
def po2_rescale_factors(qg: QGraph, data: Dataset, plan: BitPlan, cfg: QuantConfig) -> dict[str, float]:
    """The factor of every rescalable quant point of ``qg`` (module doc), from one float pass over ``data``.
    Points whose factor is within 2^-10 of 1 are left out."""
    cands = rescalable_points(qg)
    if not cands:
        return {}
    sim = SimModel(qg).to(cfg.device).eval()
    observers, _ = observe_activations(sim, data, cfg, set(cands))
    out: dict[str, float] = {}
    with threads(1):
        for t in cands:
            obs = observers[t]
            if obs.count == 0:
                continue
            # the choice calibration makes (a rescalable point is read by layers only: no Softmax input)
            scale, _ = float_scale(*activation_choice(obs, plan.a_bits[t], cfg)[:3], None, cfg, cfg.a_scale_method)
            c = factor(float(scale.reshape(-1)[0]))
            if abs(math.log2(c)) > 2.0 ** -10:
                out[t] = c
    return out
