"""``--method bitsplit``: Bit-Split & Stitching (or logarithmic weights) layer by layer (Bit-Split Algorithm 1).

For each layer in execution order:
1. sample ``bitsplit_points`` (paper: 12000) input rows (im2col patches for a 2-D Conv) from the quantized
   model so far (X^, what the layer consumes: earlier layers already solved, activations quantized at
   their calibrated scales) and the same rows from the float model (X);
2. target Y = X W^T (the float layer's output without bias) and solve min ||Y - alpha X^ q|| per output
   channel in closed form (``bitsplit.py``: Eq. 12-19 uniform, Eq. 20-22 logarithmic);
3. write back the weights alpha * q with per-channel scale alpha (on-grid float weights, so the exporters
   store exactly q), and as bias correction (unless ``bias_correction`` is off) the least-squares intercept
   mean(alpha X^ q - Y) per channel (the rows' mean error, which the zero-intercept fit of Eq. 11 leaves);
4. a layer whose solved error is not below its RTN error on the same rows, or whose int32 bias would
   leave its range, keeps its RTN calibration.
Layers other than 2-D Conv (without transA Gemm, MatMul) keep RTN and are reported.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import QuantConfig
from ..data import Dataset
from ..quant import QParams, weight_grid
from ..sim.model import SimModel
from ..sim.ops import _conv_padding, torch_pad
from .bitsplit import BitSplitResult, bit_split, log_quant, log_values, reconstruction_error
from .calibrate import integer_weights

log = logging.getLogger(__name__)
IMAGES = 32  # calibration samples the rows are drawn from
CHUNK = 2 ** 24  # elements of X per solver call (depthwise convs: groups are solved in chunks)
BIAS_LIMIT = 2.0 ** 30


class _Stop(Exception):
    pass


def _capture(sim: SimModel, feeds: dict[str, torch.Tensor], layer, quantized: bool) -> torch.Tensor:
    """The input ``layer`` consumes when the model runs on ``feeds`` (quantized or float)."""
    got = {}

    def hook(x_layer, x):
        if x_layer.name == layer.name:
            got["x"] = x.detach()
            raise _Stop

    sim.set_quant(weights=quantized, acts=quantized)
    old, sim.layer_input_hook = sim.layer_input_hook, hook
    try:
        sim(feeds)
    except _Stop:
        pass
    finally:
        sim.layer_input_hook = old
    return got["x"]


def _rows(x: torch.Tensor, node, layer, pick: torch.Tensor | None, n_points: int, gen: torch.Generator):
    """(rows (N, C*kh*kw) float64, pick): im2col patches of a 2-D conv / the feature rows of Gemm/MatMul,
    at ``pick`` (drawn once per layer so the float and quantized rows match)."""
    if layer.op_type == "Conv":
        w_shape = layer.weight_shape
        pads, strides, dil = _conv_padding(x, torch.empty(w_shape, device="meta"), node.attrs)
        x = F.pad(x, torch_pad(pads)) if any(pads) else x
        cols = F.unfold(x, w_shape[2:], dilation=dil, stride=strides)  # (B, C*kh*kw, L)
        flat = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        flat = x.reshape(-1, x.shape[-1])
    if pick is None:
        pick = torch.randperm(flat.shape[0], generator=gen)[:n_points]
    return flat[pick.to(flat.device)].double(), pick


def supported(layer, node) -> bool:
    if layer.op_type == "Conv":
        return len(layer.weight_shape) == 4
    return layer.op_type == "MatMul" or not node.attrs.get("transA", 0)


def _grouped(layer, w: torch.Tensor, x: torch.Tensor, xq: torch.Tensor):
    """(W (G, M, D), X (G, N, D), X^ (G, N, D)) in the layer's output-channel order."""
    if layer.op_type != "Conv":
        wm = w if layer.weight_axis == 0 else w.t()
        return wm[None].double(), x[None], xq[None]
    g = layer.groups
    cout = w.shape[0]
    wm = w.reshape(g, cout // g, -1).double()
    d = wm.shape[-1]
    return wm, x.reshape(x.shape[0], g, d).transpose(0, 1), xq.reshape(xq.shape[0], g, d).transpose(0, 1)


def _solve(wm, x, xq, bits: int, grid_kind: str, iters: int) -> BitSplitResult:
    y = x @ wm.transpose(1, 2)  # (G, N, M): the float layer output without bias
    use_log = grid_kind == "log" and bits <= 4
    fn = log_quant if use_log else bit_split
    step = max(1, CHUNK // max(1, x.shape[1] * x.shape[2]))
    parts = [fn(wm[i:i + step], xq[i:i + step], y[i:i + step], bits, iters=iters) for i in range(0, wm.shape[0], step)]
    return BitSplitResult(torch.cat([p.q for p in parts]), torch.cat([p.alpha for p in parts]),
                          torch.cat([p.err_init for p in parts]), torch.cat([p.err_final for p in parts]))


def log_grid_bits(bits: int) -> int:
    """Bits of the signed container grid holding the M-bit log values exactly (M=4: +-64 -> 8)."""
    return max(2, int(log_values(bits).abs().max()).bit_length() + 1)


@torch.no_grad()
def bitsplit_layers(sim: SimModel, data: Dataset, cfg: QuantConfig):
    """Solve every layer (module doc); returns a ``ReconReport`` with one entry per layer."""
    from .engine import ReconReport, RegionResult, _FloatWeights

    t_all = time.perf_counter()
    qg = sim.qg
    device = next(iter(sim.weights.values())).device
    n_img = min(IMAGES, len(data))
    feeds = {k: torch.from_numpy(v[:n_img]).to(device) for k, v in data.inputs.items()}
    floats = _FloatWeights(sim)
    report = ReconReport("bitsplit", "layer", f"closed form ({cfg.weight_grid} weights)", n_img)
    was_training = sim.training
    sim.eval()
    bar = tqdm(qg.layers, disable=not cfg.progress, desc="bit-split", unit="layer", dynamic_ncols=True)
    try:
        for k, layer in enumerate(bar):
            t0 = time.perf_counter()
            node = sim.nodes[sim.node_index(layer.name)]
            result = RegionResult(layer.name, [layer.name], 0.0, 0.0, 0.0, 0)
            report.regions.append(result)
            if not supported(layer, node):
                log.warning("%s: %s layers keep their RTN weights under --method bitsplit", layer.name, layer.op_type)
                result.reverted = True
                continue
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + k)
            xq_in = _capture(sim, feeds, layer, quantized=True)
            with floats:
                x_in = _capture(sim, feeds, layer, quantized=False)
            x, pick = _rows(x_in, node, layer, None, cfg.bitsplit_points, gen)
            xq, _ = _rows(xq_in, node, layer, pick, cfg.bitsplit_points, gen)
            fq = sim.weight_quantizer(layer.name)
            w = sim.weight(layer.weight)
            wf = floats.float[layer.weight].to(w.device)
            wm, xg, xqg = _grouped(layer, wf, x, xq)
            bits = fq.params.grid.bits
            res = _solve(wm, xg, xqg, bits, cfg.weight_grid, cfg.bitsplit_iters)
            # RTN on the same rows: its integers and scales in the same (G, M, D) layout
            rtn_q, _, _ = _grouped(layer, torch.from_numpy(integer_weights(sim, layer.name)).to(w.device).double(), x, xq)
            s_rtn = torch.from_numpy(fq.params.scale.astype(np.float64)).to(w.device).reshape(res.alpha.shape)
            zp = torch.from_numpy(fq.params.zero_point.astype(np.float64)).to(w.device).reshape(res.alpha.shape)
            y = xg @ wm.transpose(1, 2)
            err_rtn = reconstruction_error(xqg, y, rtn_q - zp[..., None], s_rtn)
            result.loss_before, result.loss_after = float(err_rtn.sum()), float(res.err_final.sum())
            result.iterations = 1
            use_log = cfg.weight_grid == "log" and bits <= 4
            grid = weight_grid(log_grid_bits(bits)) if use_log else fq.params.grid
            pred = xqg @ (res.alpha[..., None] * res.q.double()).transpose(1, 2)
            shift = (pred - y).mean(1).reshape(-1)  # least-squares intercept per output channel
            scale = res.alpha.reshape(-1).float().cpu()
            new_w = (res.alpha[..., None] * res.q.double()).float()
            new_w = (new_w.reshape(w.shape) if layer.op_type == "Conv" or layer.weight_axis == 0
                     else new_w[0].t().contiguous())
            bias_ok = True
            if layer.bias:
                s_x = sim.input_scale(layer)
                b = sim.weight(layer.bias).detach().double().cpu() - shift.cpu()
                bias_ok = not bool((b.abs() / (s_x * scale.double()) > BIAS_LIMIT).any())
            if result.loss_after >= result.loss_before or not bias_ok:
                result.reverted, result.loss_after = True, result.loss_before
                log.info("%s: bit-split did not beat RTN on its rows (or its bias left int32); RTN kept", layer.name)
                continue
            fq.bits = grid.bits
            fq.set_params(QParams(grid, scale.numpy(), np.zeros_like(scale.numpy()), layer.weight_axis, False),
                          w.dim())
            w.copy_(new_w)
            sim.bias_delta.pop(layer.name, None)
            if layer.bias and cfg.bias_correction:
                sim.bias_delta[layer.name] = shift.float().to(w.device)
            q_back = integer_weights(sim, layer.name)
            expect = res.q.reshape(-1, res.q.shape[-1]).cpu().numpy()
            if not np.array_equal(q_back.reshape(expect.shape[0], -1) if layer.weight_axis == 0 or layer.op_type == "Conv"
                                  else q_back.T, expect):
                raise RuntimeError(f"bit-split result of {layer.name!r} does not re-quantize to its integers")
            result.seconds = time.perf_counter() - t0
            bar.set_postfix(err=f"{result.loss_before:.3g}->{result.loss_after:.3g}")
    finally:
        bar.close()
        sim.train(was_training)
        sim.set_quant(weights=True, acts=True)
    report.seconds = time.perf_counter() - t_all
    return report
