"""Initial quantization parameters: activation statistics from calibration data, weight scales per channel.

This is round-to-nearest (RTN) calibration; learned methods start from its parameters.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..config import QuantConfig
from ..data import Dataset
from ..plan import BitPlan
from ..quant import QParams, activation_grid, weight_grid
from ..quant import scales as S
from ..quant.grid import Grid
from ..quant.observer import Observer
from ..sim.model import SimModel


def choose_scale(x: torch.Tensor, grid: Grid, symmetric: bool, axis: int | None, cfg: QuantConfig,
                 method: str) -> QParams:
    """Float scale by ``method``; then, for Po2 configs, a power of two by ``cfg.po2_method``."""
    if method == "minmax":
        scale, zp = S.minmax(x, grid, symmetric, axis)
    elif method == "percentile":
        scale, zp = S.percentile(x, grid, symmetric, axis, cfg.percentile)
    else:
        scale, zp = S.lp_search(x, grid, symmetric, axis)
    po2 = cfg.scale == "po2"
    if po2:
        if cfg.po2_method == "floor":
            new = S.po2_floor(scale)
            zp = S.po2_zero_point(scale, zp, new, grid)
            scale = new
        elif cfg.po2_method == "round":
            new = S.po2_round(scale)
            zp = S.po2_zero_point(scale, zp, new, grid)
            scale = new
        else:
            scale, zp = S.po2_search(x, scale, zp, grid, axis)
    return QParams(grid, scale.detach().cpu().numpy(), zp.detach().cpu().numpy(), axis, po2)


@torch.no_grad()
def observe_activations(sim: SimModel, data: Dataset, cfg: QuantConfig) -> dict[str, Observer]:
    """Run the float model over the calibration set with an observer at every quant point."""
    sim.set_quant(weights=False, acts=False)
    observers = {}
    for k, (t, fq) in enumerate(sim.act_quantizers()):
        fq.observer = observers[t] = Observer(seed=cfg.seed + k)
    device = next(iter(sim.weights.values())).device if len(sim.weights) else torch.device("cpu")
    try:
        n_batches = (len(data) + cfg.batch_size - 1) // cfg.batch_size
        for feeds in tqdm(data.batches(cfg.batch_size), total=n_batches, desc="calibrating activations",
                          disable=not cfg.progress, leave=False):
            sim({k: torch.from_numpy(v).to(device) for k, v in feeds.items()})
    finally:
        for _, fq in sim.act_quantizers():
            fq.observer = None
    return observers


def calibrate_activations(sim: SimModel, observers: dict[str, Observer], plan: BitPlan, cfg: QuantConfig) -> None:
    for t, fq in sim.act_quantizers():
        obs = observers[t]
        if obs.count == 0:
            raise RuntimeError(f"quant point {t!r} saw no data during calibration")
        grid = activation_grid(plan.a_bits[t], obs.nonnegative)
        params = choose_scale(obs.sample(), grid, cfg.a_symmetric or not grid.signed, None, cfg, cfg.a_scale_method)
        fq.bits = grid.bits
        fq.set_params(params)


@torch.no_grad()
def calibrate_weights(sim: SimModel, plan: BitPlan, cfg: QuantConfig) -> None:
    for layer in sim.qg.layers:
        fq = sim.weight_quantizer(layer.name)
        w = sim.weight(layer.weight).detach()
        grid = weight_grid(plan.w_bits[layer.name])
        params = choose_scale(w, grid, cfg.w_symmetric, layer.weight_axis, cfg, cfg.w_scale_method)
        fq.bits = grid.bits
        fq.set_params(params, w.dim())


def calibrate(sim: SimModel, data: Dataset, plan: BitPlan, cfg: QuantConfig) -> None:
    """RTN: activation scales from float statistics, weight scales per channel; quantization on."""
    observers = observe_activations(sim, data, cfg)
    calibrate_activations(sim, observers, plan, cfg)
    calibrate_weights(sim, plan, cfg)
    sim.set_quant(weights=True, acts=True)


def integer_weights(sim: SimModel, layer_name: str) -> np.ndarray:
    """The weight tensor on its integer grid (what the exporters store)."""
    from ..quant import quantize

    layer = sim.qg.layer(layer_name)
    fq = sim.weight_quantizer(layer_name)
    w = sim.weight(layer.weight).detach().cpu().numpy().astype(np.float32)
    scale, zp = fq.params.shaped_for(w.ndim)
    return quantize(w, scale, zp.astype(np.float32), fq.params.grid).astype(np.int64)
