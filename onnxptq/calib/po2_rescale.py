"""Power-of-two scales without their rounding loss: the factor each rescalable quant point gets
(``graph/rescale.py``) so that its best float scale becomes a power of two (``po2_rescale_factors``), and the
factor per channel that does the same for the weights of the layer producing it (``po2_equalize_factors``).

For a quant point ``t`` with best float scale ``s*`` (the run's ``a_scale_method`` on the float model's
calibration statistics, at ``t``'s bits), ``c = 2^round(log2 s*) / s* * (1 + 2^-12)`` (``factor``): after the
rewrite ``t``'s statistics are ``c`` times larger, the same method finds ``c s*`` (the L_p / min-max / percentile
scales are scale-equivariant), and every ``po2_method`` (floor, round, search) picks ``2^round(log2 s*)`` for it,
which quantizes the rescaled tensor exactly as ``s*`` quantized the original. (The ``1 + 2^-12`` keeps the
rescaled scale above its power of two through float rounding, so ``floor`` does not fall one power below.)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import QuantConfig
from ..data import Dataset
from ..graph.qgraph import QGraph
from ..graph.rescale import channel_rescalable_points, reader_multiplier, rescalable_points
from ..plan import BitPlan
from ..quant import scales as S
from ..sim.model import SimModel
from .calibrate import activation_choice, float_scale, observe_activations, threads, weight_grid

MARGIN = 1.0 + 2.0 ** -12


def factor(best_scale: float) -> float:
    """``c`` with ``c * best_scale`` just above the power of two nearest ``best_scale`` (in log2); 1 for a scale
    that is 0 or not finite."""
    return float(channel_factors(np.array([best_scale]))[0])


def channel_factors(best_scales: np.ndarray) -> np.ndarray:
    """``factor`` of each channel's best scale (1 where a channel's scale is 0, e.g. all-zero weights)."""
    s = np.asarray(best_scales, np.float64).reshape(-1)
    out = np.ones_like(s)
    ok = (s > 0) & np.isfinite(s)
    out[ok] = S.po2_round(torch.from_numpy(s[ok])).numpy() / s[ok] * MARGIN
    return out


@torch.no_grad()
def po2_equalize_factors(qg: QGraph, plan: BitPlan, cfg: QuantConfig) -> dict[str, np.ndarray]:
    """One factor per output channel of every Conv producing a ``channel_rescalable_points`` point: the
    ``factor`` of the channel's best float weight scale (``cfg.w_scale_method`` at the layer's bits, on its
    weights after the factors of the points it reads), so that after ``rescale`` every such channel's best scale
    is a power of two. Layers are taken in graph order, so a layer's own weights already carry the ``1 / c`` of
    the points it reads when its factors are chosen. Weights only: no data."""
    cands = channel_rescalable_points(qg)
    if not cands:
        return {}
    layers = {x.name: x for x in qg.layers}
    weights: dict[str, np.ndarray] = {}

    def weight(name: str) -> np.ndarray:
        if name not in weights:
            weights[name] = np.array(qg.initializer(layers[name].weight), np.float64)
        return weights[name]

    by_producer = {r.producer: r for r in cands.values()}
    out: dict[str, np.ndarray] = {}
    with threads(1):
        for layer in qg.layers:
            r = by_producer.get(layer.name)
            if r is None:
                continue
            w = weight(layer.name)
            scale, _ = float_scale(torch.from_numpy(w).float(), weight_grid(plan.w_bits[layer.name]),
                                   cfg.w_symmetric, layer.weight_axis, cfg, cfg.w_scale_method)
            c = channel_factors(scale.cpu().numpy())
            if np.all(np.abs(np.log2(c)) <= 2.0 ** -10):
                continue
            out[r.point] = c
            weights[layer.name] = w * c.reshape([-1 if i == layer.weight_axis else 1 for i in range(w.ndim)])
            for name in r.consumers:
                weights[name] = weight(name) * reader_multiplier(layers[name], weight(name).shape, 1.0 / c)
    return out


@torch.no_grad()
def po2_rescale_factors(qg: QGraph, data: Dataset, plan: BitPlan, cfg: QuantConfig,
                        skip: frozenset[str] = frozenset()) -> dict[str, float]:
    """The factor of every rescalable quant point of ``qg`` but ``skip`` (module doc), from one float pass over
    ``data``. Points whose factor is within 2^-10 of 1 are left out. (A point whose producer's weight channels
    were equalized belongs in ``skip``: a factor on it would move those channels off their powers of two.)"""
    cands = {t: r for t, r in rescalable_points(qg).items() if t not in skip}
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
