"""Error Compensated Activation Quantization (Bit-Split Sec. 3.4, Eq. 23-27).

An activation X gets one scale per channel, X[c] ~ beta[c] X^[c] (Eq. 23), beta from the per-channel
MSE problem of Eq. 24; beta then moves into the consumers' weights, W_beta[:, c] = beta[c] W[:, c]
(Eq. 26), so W * X = W_beta * (X / beta) exactly and each consumer still runs one GEMM on the
per-layer integer codes X^ (Eq. 25). The consumers' weights are then quantized (RTN, or Bit-Split on
X^ -> Y, Eq. 27) as W_beta.

In this package an ECAQ quant point's ``FakeQuant`` carries ``beta``: enabled, it outputs the integer
codes X^ = clip(round(x / beta)) (dequantized with scale 1); disabled, the exact rescaling x / beta, so
the float model is unchanged. The consumers' weights in the simulation (``sim.weights``, and the float
weights of its ``QuantState``; the imported graph keeps W) hold W_beta, and their int32 biases have scale 1 * s_w;
beta itself is ``sim.state.ecaq_scales``. Exported as
QuantizeLinear with a per-axis scale beta followed by DequantizeLinear with scale 1 (QDQ).

Where ECAQ applies (``candidates``): a quant point produced by a layer unit, non-negative on the
calibration data (unsigned grid, zero point 0: post-ReLU/ReLU6 tensors), 4-D (channel axis 1) and
consumed only by Conv layers reading it directly (the inner activations of residual and inverted
residual blocks). Tensors that also feed an Add, a pool or the graph output keep per-layer scales.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import QuantConfig
from ..data import Dataset
from ..quant import QParams
from ..quant import scales as S
from ..sim.capture import layer_inputs
from ..sim.model import SimModel

SAMPLES = 16  # calibration samples beta is fitted on
POSITIONS = 4096  # spatial positions per sample kept for the fit (random, seeded)
MSE_P = 2.0  # Eq. 24 is a squared error


def candidates(sim: SimModel) -> list[str]:
    """Quant points where per-channel scales can be folded into every consumer (module doc)."""
    qg = sim.qg
    layer_of = {x.name: x for x in qg.layers}
    out = []
    for t, qp in qg.quant_points.items():
        p = sim.act_quantizer(t).params
        if qp.kind != "layer" or p is None or p.grid.signed or t in qg.outputs or len(qg.shapes.get(t, ())) != 4:
            continue
        consumers = [layer_of.get(c) for c in qp.consumers]
        if consumers and all(c is not None and c.op_type == "Conv" and c.input == t for c in consumers):
            out.append(t)
    return out


def channel_scales(x: torch.Tensor, p: QParams, po2: bool) -> np.ndarray:
    """beta per channel (axis 1 of ``x`` (S, C)) minimizing ||X - beta X^||^2 (Eq. 24) over clipping ratios;
    channels that never left zero keep the per-layer scale. Po2 configs round to the best power of two."""
    scale, zp = S.lp_search(x, p.grid, True, axis=1, p=MSE_P)
    if po2:
        scale, zp = S.po2_search(x, scale, zp, p.grid, axis=1)
    scale = scale.double()
    dead = x.amax(0) <= 0
    scale[dead] = float(p.scale)
    return scale.cpu().numpy().astype(np.float32)


def in_channel_view(layer, beta: torch.Tensor, ndim: int) -> torch.Tensor:
    """beta[c] of the consumer's input channels, shaped to multiply its weight (O, C/g, kh, kw)."""
    g = layer.groups
    cout = layer.weight_shape[0]
    cin_g = layer.weight_shape[1]
    # output channel o of group o // (cout/g) reads input channels (o // (cout/g)) * cin_g + i
    grp = torch.arange(cout) // (cout // g)
    idx = grp[:, None] * cin_g + torch.arange(cin_g)[None, :]
    return beta[idx].reshape(cout, cin_g, *([1] * (ndim - 2)))


@torch.no_grad()
def apply_ecaq(sim: SimModel, data: Dataset, cfg: QuantConfig) -> dict[str, np.ndarray]:
    """Per-channel scales at every candidate point, folded into the consumers' simulated weights (module
    doc); recorded in ``sim.state.ecaq_scales``. Call after the activations are calibrated and before the
    weights are. Returns {tensor: beta}."""
    qg = sim.qg
    points = candidates(sim)
    if not points:
        return {}
    layer_of = {x.name: x for x in qg.layers}
    want = {layer_of[c].name: t for t in points for c in qg.quant_points[t].consumers}
    samples: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(cfg.seed)

    def grab(layer, x: torch.Tensor) -> None:
        t = want.get(layer.name)
        if t is not None and t not in samples:
            flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
            pick = torch.randperm(flat.shape[1], generator=gen)[:POSITIONS * x.shape[0]]
            samples[t] = flat[:, pick.to(flat.device)].t().float().cpu()

    device = sim.device
    feeds = {k: torch.from_numpy(v[:SAMPLES]).to(device) for k, v in data.inputs.items()}
    sim.set_quant(weights=False, acts=False)
    with layer_inputs(sim, grab):
        sim(feeds)
    betas = {}
    state = sim.state
    for t in points:
        fq = sim.act_quantizer(t)
        beta = channel_scales(samples.pop(t), fq.params, cfg.scale == "po2")
        betas[t] = beta
        fq.set_params(QParams(fq.params.grid, beta, np.zeros_like(beta, dtype=np.int64), 1, cfg.scale == "po2"), 4)
        state.ecaq_scales[t] = beta  # makes fq an ECAQ quantizer
        b = torch.from_numpy(beta)
        for c in qg.quant_points[t].consumers:
            layer = layer_of[c]
            w = sim.weight(layer.weight)
            w.mul_(in_channel_view(layer, b, w.dim()).to(w.device))
            state.float_weights[layer.weight] = w.detach().cpu().clone()  # the float model's W_beta
            mean = state.input_means.get(layer.name)
            if mean is not None:
                state.input_means[layer.name] = mean / b.to(mean.device)
    return betas
