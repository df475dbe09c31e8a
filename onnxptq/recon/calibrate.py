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
from ..importer.graph import Layer
from ..quant import QParams, activation_grid, fake_quantize, weight_grid
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
def observe_activations(sim: SimModel, data: Dataset, cfg: QuantConfig) -> tuple[dict[str, Observer], dict[str, torch.Tensor]]:
    """Run the float model over the calibration set: an observer at every quant point, and the
    per-channel mean of every layer's input (for bias correction)."""
    sim.set_quant(weights=False, acts=False)
    observers = {}
    for k, (t, fq) in enumerate(sim.act_quantizers()):
        fq.observer = observers[t] = Observer(seed=cfg.seed + k)
    device = next(iter(sim.weights.values())).device if len(sim.weights) else torch.device("cpu")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def input_mean(layer, x: torch.Tensor) -> None:
        """Per-input-channel sums of each layer's input (channel axis 1, or last for Gemm/MatMul)."""
        dims = [d for d in range(x.dim()) if d != (1 if layer.op_type == "Conv" else x.dim() - 1)]
        sums[layer.name] = sums.get(layer.name, 0) + x.double().sum(dim=dims)
        counts[layer.name] = counts.get(layer.name, 0) + x.numel() // x.shape[1 if layer.op_type == "Conv" else -1]

    sim.layer_input_hook = input_mean
    try:
        n_batches = (len(data) + cfg.batch_size - 1) // cfg.batch_size
        for feeds in tqdm(data.batches(cfg.batch_size), total=n_batches, desc="calibrating activations",
                          disable=not cfg.progress, leave=False):
            sim({k: torch.from_numpy(v).to(device) for k, v in feeds.items()})
    finally:
        sim.layer_input_hook = None
        for _, fq in sim.act_quantizers():
            fq.observer = None
    return observers, {k: (v / counts[k]).float() for k, v in sums.items()}


@torch.no_grad()
def calibrate_activations(sim: SimModel, observers: dict[str, Observer], plan: BitPlan, cfg: QuantConfig) -> None:
    for t, fq in sim.act_quantizers():
        obs = observers[t]
        if obs.count == 0:
            raise RuntimeError(f"quant point {t!r} saw no data during calibration")
        grid = activation_grid(plan.a_bits[t], obs.nonnegative)
        params = choose_scale(obs.sample(), grid, cfg.a_symmetric or not grid.signed, None, cfg, cfg.a_scale_method)
        if params.po2 and not params.symmetric:
            zp = S.even_zero_point(torch.tensor(params.zero_point)).numpy()
            params = QParams(grid, params.scale, zp, None, po2=True)
        fq.bits = grid.bits
        fq.set_params(params)


def bias_shift(layer: Layer, w: torch.Tensor, w_q: torch.Tensor, input_mean: torch.Tensor) -> torch.Tensor:
    """E[(W_q - W) x] per output channel from the per-channel input mean (Nagel et al. 2019, Eq. 13)."""
    dw = (w_q - w).double()
    mean = input_mean.double()
    if layer.op_type == "Conv":
        dw = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(-1)  # (Cout, Cin/groups)
        cout, cin_g = dw.shape
        per_out = mean.reshape(layer.groups, cin_g)[torch.arange(cout) // (cout // layer.groups)]
        return (dw * per_out).sum(1).float()
    return (dw @ mean if layer.weight_axis == 0 else mean @ dw).float()


@torch.no_grad()
def calibrate_weights(sim: SimModel, plan: BitPlan, cfg: QuantConfig,
                      input_means: dict[str, torch.Tensor] | None = None) -> None:
    """Per-channel weight scales; optional bias correction; int32-safe bias scales."""
    sim.bias_delta.clear()
    for layer in sim.qg.layers:
        fq = sim.weight_quantizer(layer.name)
        w = sim.weight(layer.weight).detach()
        grid = weight_grid(plan.w_bits[layer.name])
        params = choose_scale(w, grid, cfg.w_symmetric, layer.weight_axis, cfg, cfg.w_scale_method)
        if layer.bias and input_means is not None and layer.name in input_means:
            scale, zp = params.shaped_for(w.dim())
            w_q = fake_quantize(w, torch.tensor(np.array(scale), device=w.device), torch.tensor(np.array(zp), device=w.device).float(),
                                grid)
            sim.bias_delta[layer.name] = bias_shift(layer, w, w_q, input_means[layer.name].to(w.device))
        if layer.bias:
            s_x = float(sim.act_quantizer(sim.qg.source[layer.input]).params.scale)
            bias = sim.weight(layer.bias).detach() - sim.bias_delta.get(layer.name, 0)
            safe = S.bias_safe_weight_scale(torch.from_numpy(params.scale), bias.cpu(), s_x, params.po2)
            if not torch.equal(safe, torch.from_numpy(params.scale)):
                params = QParams(grid, safe.numpy(), params.zero_point, params.axis, params.po2)
        fq.bits = grid.bits
        fq.set_params(params, w.dim())


def calibrate(sim: SimModel, data: Dataset, plan: BitPlan, cfg: QuantConfig) -> None:
    """RTN: activation scales from float statistics, then weight scales per channel (which need the
    input scale to keep the int32 bias in range); quantization on."""
    observers, input_means = observe_activations(sim, data, cfg)
    calibrate_activations(sim, observers, plan, cfg)
    calibrate_weights(sim, plan, cfg, input_means if cfg.bias_correction else None)
    sim.set_quant(weights=True, acts=True)


def integer_weights(sim: SimModel, layer_name: str) -> np.ndarray:
    """The weight tensor on its integer grid (what the exporters store)."""
    from ..quant import quantize

    layer = sim.qg.layer(layer_name)
    fq = sim.weight_quantizer(layer_name)
    w = sim.weight(layer.weight).detach().cpu().numpy().astype(np.float32)
    scale, zp = fq.params.shaped_for(w.ndim)
    return quantize(w, scale, zp.astype(np.float32), fq.params.grid).astype(np.int64)
