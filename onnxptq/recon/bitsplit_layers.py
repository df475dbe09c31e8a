"""``--method bitsplit``: Bit-Split & Stitching (or logarithmic weights) layer by layer (Bit-Split Algorithm 1).

For each layer in execution order:
1. sample ``bitsplit_points`` (paper: 12000) input rows (im2col patches for a 2-D Conv) plus a held-out fifth
   on top, from the quantized model so far (X^, what the layer consumes: earlier layers already solved,
   activations quantized at their calibrated scales) and the same rows from the float model (X); rows are
   drawn from every calibration sample a layer needs (late layers and heads have few rows per sample);
2. target Y = X W^T (the float layer's output without bias) and solve min ||Y - alpha X^ q|| per output
   channel in closed form on the fitting rows (``bitsplit.py``: Eq. 12-19 uniform, Eq. 20-22 logarithmic);
   a layer with fewer fitting rows than weights per output channel (Eq. 11 underdetermined: a classifier
   head sees one row per sample) keeps RTN;
3. a channel whose alpha would put its bias outside the int32 range at s_x * alpha takes the smallest safe
   alpha, its weights rounded to the nearest grid point at that alpha (as RTN's ``bias_safe_weight_scale``);
4. on the held-out rows, each output channel keeps whichever of Bit-Split and its RTN calibration has the
   lower error (uniform grids; a logarithmic layer is chosen as a whole, its grid differs from RTN's), so
   a solution that only fits its own rows is not taken;
5. write back the weights alpha * q with per-channel scale alpha (on-grid float weights, so the exporters
   store exactly q), and as bias correction (unless ``bias_correction`` is off) the least-squares intercept
   mean(alpha X^ q - Y) per channel over all sampled rows (the mean error the zero-intercept Eq. 11 leaves);
   a layer whose corrected int32 bias would leave its range keeps its RTN calibration.
Layers other than 2-D Conv (without transA Gemm, MatMul) keep RTN and are reported.
"""
from __future__ import annotations

from dataclasses import asdict

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import QuantConfig
from ..data import Dataset
from ..diagnostics import Diagnostics
from ..quant import QParams, weight_grid
from ..quant import scales as S
from ..sim.capture import layer_inputs
from ..sim.model import SimModel
from ..ops.simulate import _conv_padding, torch_pad
from .bitsplit import BitSplitResult, bit_split, log_quant, log_values, nearest_q, reconstruction_error
from ..calib.calibrate import integer_weights
from .fallbacks import record
from . import checkpoint as ckpt
from .float_weights import FloatWeights
from .results import ReconReport, RegionResult

log = logging.getLogger(__name__)
IMAGES = 16  # calibration samples per captured forward pass
MIN_IMAGES = 32  # rows come from at least this many samples (all when fewer), more when a sample has few rows
HOLDOUT = 0.2  # fraction of the sampled rows left out of the fit to choose between Bit-Split and RTN
CHUNK = 2 ** 24  # elements of X per solver call (depthwise convs: groups are solved in chunks)


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
    try:
        with layer_inputs(sim, hook):
            sim(feeds)
    except _Stop:
        pass
    return got["x"]


def _unfold(x: torch.Tensor, node, layer) -> torch.Tensor:
    """Sample-major rows (B*L, C*kh*kw) of ``x``: the im2col patches of a 2-D conv, the feature rows of
    Gemm / MatMul."""
    if layer.op_type == "Conv":
        w_shape = layer.weight_shape
        pads, strides, dil = _conv_padding(x, torch.empty(w_shape, device="meta"), node.attrs)
        x = F.pad(x, torch_pad(pads)) if any(pads) else x
        cols = F.unfold(x, w_shape[2:], dilation=dil, stride=strides)  # (B, C*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _chunk_rows(sim: SimModel, data: Dataset, layer, node, i0: int, quantized: bool, device) -> torch.Tensor:
    """The layer-input rows (``_unfold``) of calibration samples i0 .. i0 + IMAGES."""
    feeds = {k: torch.from_numpy(v[i0:i0 + IMAGES]).to(device) for k, v in data.inputs.items()}
    return _unfold(_capture(sim, feeds, layer, quantized), node, layer)


def _take(rows: torch.Tensor, picked: torch.Tensor, lo: int) -> torch.Tensor:
    """float64 rows of one chunk whose global index (sorted ``picked``) falls in [lo, lo + len(rows))."""
    sel = picked[(picked >= lo) & (picked < lo + rows.shape[0])] - lo
    return rows[sel.to(rows.device)].double()


def _layer_rows(sim: SimModel, data: Dataset, floats, layer, node, n_rows: int, gen: torch.Generator,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, X^) float64 (N, C*kh*kw): the same ``n_rows`` rows (all when fewer) of the float and the quantized
    model's layer input, drawn uniformly without replacement from the rows of the first
    max(MIN_IMAGES, 4 n_rows / rows-per-sample) calibration samples, in random order. Captured IMAGES samples
    at a time, so memory holds one chunk's patches; the float weights go in once per layer."""
    n = len(data)
    first = _chunk_rows(sim, data, layer, node, 0, True, device)
    per = first.shape[0] // min(IMAGES, n)  # rows per sample
    used = min(n, max(MIN_IMAGES, -(-4 * n_rows // per)))
    pick = torch.randperm(per * used, generator=gen)[:n_rows]
    order = torch.argsort(pick)
    picked = pick[order]
    starts = range(0, used, IMAGES)
    qs = [_take(first if i0 == 0 else _chunk_rows(sim, data, layer, node, i0, True, device), picked, i0 * per)
          for i0 in starts]
    with floats:
        xs = [_take(_chunk_rows(sim, data, layer, node, i0, False, device), picked, i0 * per) for i0 in starts]
    back = torch.argsort(order)  # to the random order of ``pick``: any slice is a random subset
    return torch.cat(xs)[back.to(xs[0].device)], torch.cat(qs)[back.to(qs[0].device)]


def supported(layer, node) -> bool:
    if layer.op_type == "ConvTranspose":  # no im2col rows here: kept at RTN
        return False
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


def _solve(wm, xq, y, bits: int, use_log: bool, iters: int) -> BitSplitResult:
    """Eq. 11 for every (group, channel) row: X^ ``xq`` (G, N, D) against the float outputs ``y`` (G, N, M)."""
    fn = log_quant if use_log else bit_split
    step = max(1, CHUNK // max(1, xq.shape[1] * xq.shape[2]))
    parts = [fn(wm[i:i + step], xq[i:i + step], y[i:i + step], bits, iters=iters) for i in range(0, wm.shape[0], step)]
    return BitSplitResult(torch.cat([p.q for p in parts]), torch.cat([p.alpha for p in parts]),
                          torch.cat([p.err_init for p in parts]), torch.cat([p.err_final for p in parts]))


def log_grid_bits(bits: int) -> int:
    """Bits of the signed container grid holding the M-bit log values exactly (M=4: +-64 -> 8)."""
    return max(2, int(log_values(bits).abs().max()).bit_length() + 1)


def _bias_safe(res: BitSplitResult, wm: torch.Tensor, bias: torch.Tensor, s_x: float, bits: int,
               use_log: bool) -> int:
    """Step 3 of the module doc, in place: channels whose alpha is below RTN's bias-safe bound
    (``quant.scales.bias_safe_weight_scale`` for ``bias`` (G, M), with the float32 margin, as the exporters
    store alpha in float32) take that bound and the nearest grid point at it (``nearest_q``). Returns how many
    channels changed."""
    safe = S.bias_safe_weight_scale(res.alpha, bias, s_x, po2=False, margin=S.FLOAT32_MARGIN)
    low = safe > res.alpha
    if bool(low.any()):
        res.alpha = safe
        res.q = torch.where(low[..., None], nearest_q(wm, res.alpha, bits, use_log), res.q)
    return int(low.sum())


def choose_channels(err_split: torch.Tensor, err_rtn: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Step 4 of the module doc: True where Bit-Split's held-out error (G, M) is below RTN's, per channel, or
    for the whole layer when ``per_channel`` is False (its channels cannot mix with RTN's grid)."""
    if per_channel:
        return err_split < err_rtn
    return torch.full_like(err_split, float(err_split.sum() < err_rtn.sum()), dtype=torch.bool)


@torch.no_grad()
def bitsplit_layers(sim: SimModel, data: Dataset, cfg: QuantConfig, diag: Diagnostics | None = None,
                    checkpoint_dir: str | None = None):
    """Solve every layer (module doc); returns a ``ReconReport`` with one entry per layer: ``loss_before`` /
    ``loss_after`` are the held-out rows' errors of RTN and of the chosen weights. Layers kept at RTN and
    layers with RTN channels go into ``diag`` (``recon/fallbacks.py``). With ``checkpoint_dir`` the state is
    saved after every layer (``recon/checkpoint.py``); ``cfg.resume`` continues from it with the same result as
    an uninterrupted run (each layer's row sampling has its own seed)."""
    t_all = time.perf_counter()
    qg = sim.qg
    device = sim.device
    n_rows = cfg.bitsplit_points + max(1, round(cfg.bitsplit_points * HOLDOUT / (1 - HOLDOUT)))
    floats = FloatWeights(sim)
    report = ReconReport("bitsplit", "layer", f"closed form ({cfg.weight_grid} weights)", len(data))
    diag = diag if diag is not None else Diagnostics()
    diag.totals["region-rtn"] = len(qg.layers)
    was_training = sim.training
    sim.eval()
    done = 0
    fp = ckpt.fingerprint(sim, data.inputs, cfg) if checkpoint_dir else ""
    if checkpoint_dir and cfg.resume:
        state = ckpt.load(checkpoint_dir, fp)
        if state is not None:
            ckpt.restore(sim, state)
            done = state["done"]
            report.regions = [RegionResult(**r) for r in state["report"]]
            report.resumed_regions = done
            for r in report.regions:
                record(diag, r, why="RTN kept (restored from the checkpoint)" if r.reverted else "")
    bar = tqdm(qg.layers, disable=not cfg.progress, desc="bit-split", unit="layer", dynamic_ncols=True,
               initial=done)
    try:
        def solve(k: int, layer) -> None:
            t0 = time.perf_counter()
            node = sim.nodes[sim.node_index(layer.name)]
            result = RegionResult(layer.name, [layer.name], 0.0, 0.0, 0.0, 0)
            report.regions.append(result)
            if not supported(layer, node):
                log.warning("%s: %s layers keep their RTN weights under --method bitsplit", layer.name, layer.op_type)
                result.reverted = True
                record(diag, result, why=f"{layer.op_type} layers keep their RTN weights under --method bitsplit")
                return
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + k)
            x, xq = _layer_rows(sim, data, floats, layer, node, n_rows, gen, device)
            fq = sim.weight_quantizer(layer.name)
            w = sim.weight(layer.weight)
            wf = floats.float[layer.weight].to(w.device)
            wm, xg, xqg = _grouped(layer, wf, x, xq)
            n_hold = max(1, round(x.shape[0] * HOLDOUT))
            n_fit = x.shape[0] - n_hold
            if n_fit < wm.shape[-1]:
                log.warning("%s: %d sampled rows to fit %d weights per output channel (Bit-Split Eq. 11 would "
                            "be underdetermined); RTN kept. More calibration samples give more rows.",
                            layer.name, n_fit, wm.shape[-1])
                result.reverted = True
                record(diag, result, why=f"{n_fit} sampled rows for {wm.shape[-1]} weights per output channel: "
                       "RTN kept (more calibration samples give more rows)")
                return
            fit, hold = slice(0, n_fit), slice(n_fit, None)
            bits = fq.params.grid.bits
            use_log = cfg.weight_grid == "log" and bits <= 4
            y = xg @ wm.transpose(1, 2)  # (G, N, M): the float layer output without bias
            res = _solve(wm, xqg[:, fit], y[:, fit], bits, use_log, cfg.bitsplit_iters)
            s_x = sim.input_scale(layer)
            if layer.bias:
                bias = sim.weight(layer.bias).detach().double().to(res.alpha.device)
                _bias_safe(res, wm, bias.reshape(res.alpha.shape), s_x, bits, use_log)
            # RTN: its integers and scales in the same (G, M, D) layout
            rtn_q, _, _ = _grouped(layer, torch.from_numpy(integer_weights(sim, layer.name)).to(w.device).double(), x, xq)
            s_rtn = torch.from_numpy(fq.params.scale.astype(np.float64)).to(w.device).reshape(res.alpha.shape)
            zp = torch.from_numpy(fq.params.zero_point.astype(np.float64)).to(w.device).reshape(res.alpha.shape)
            rtn_q = rtn_q - zp[..., None]
            err_rtn = reconstruction_error(xqg[:, hold], y[:, hold], rtn_q, s_rtn)
            err_bs = reconstruction_error(xqg[:, hold], y[:, hold], res.q.double(), res.alpha)
            take = choose_channels(err_bs, err_rtn, per_channel=not use_log and not bool(zp.any()))
            result.loss_before = float(err_rtn.sum())
            result.loss_after = float(torch.where(take, err_bs, err_rtn).sum())
            result.iterations = 1
            result.rtn_channels = float((~take).double().mean())
            if not bool(take.any()):
                result.reverted, result.loss_after = True, result.loss_before
                log.info("%s: bit-split did not beat RTN on its held-out rows; RTN kept", layer.name)
                record(diag, result, why="bit-split did not beat RTN on its held-out rows: RTN kept")
                return
            q = torch.where(take[..., None], res.q.double(), rtn_q)
            alpha = torch.where(take, res.alpha, s_rtn)
            grid = weight_grid(log_grid_bits(bits)) if use_log else fq.params.grid
            pred = xqg @ (alpha[..., None] * q).transpose(1, 2)
            shift = (pred - y).mean(1).reshape(-1)  # least-squares intercept per output channel
            scale = alpha.reshape(-1).float().cpu()
            new_w = (alpha[..., None] * q).float()
            new_w = (new_w.reshape(w.shape) if layer.op_type == "Conv" or layer.weight_axis == 0
                     else new_w[0].t().contiguous())
            if layer.bias:
                b = bias.cpu() - (shift.cpu() if cfg.bias_correction else 0.0)
                if not bool(S.bias_in_range(b, s_x, scale, margin=S.FLOAT32_MARGIN).all()):
                    result.reverted, result.loss_after = True, result.loss_before
                    log.info("%s: the corrected bias would leave int32 at the solved scales; RTN kept", layer.name)
                    record(diag, result, why="the corrected bias would leave int32 at the solved scales: RTN kept")
                    return
            fq.bits = grid.bits
            fq.set_params(QParams(grid, scale.numpy(), np.zeros_like(scale.numpy()), layer.weight_axis, False),
                          w.dim())
            w.copy_(new_w)
            sim.bias_delta.pop(layer.name, None)
            if layer.bias and cfg.bias_correction:
                sim.bias_delta[layer.name] = shift.float().to(w.device)
            q_back = integer_weights(sim, layer.name)
            expect = q.round().to(torch.int64).reshape(-1, q.shape[-1]).cpu().numpy()
            if not np.array_equal(q_back.reshape(expect.shape[0], -1) if layer.weight_axis == 0 or layer.op_type == "Conv"
                                  else q_back.T, expect):
                raise RuntimeError(f"bit-split result of {layer.name!r} does not re-quantize to its integers")
            result.seconds = time.perf_counter() - t0
            record(diag, result)
            bar.set_postfix(err=f"{result.loss_before:.3g}->{result.loss_after:.3g}",
                            rtn_channels=f"{result.rtn_channels:.0%}")

        for k, layer in enumerate(bar):
            if k < done:
                continue
            solve(k, layer)
            if checkpoint_dir:
                ckpt.save(checkpoint_dir, fp, k + 1, sim, [r.name for r in report.regions if not r.reverted],
                          [asdict(r) for r in report.regions])
    finally:
        bar.close()
        sim.train(was_training)
        sim.set_quant(weights=True, acts=True)
    report.seconds = time.perf_counter() - t_all
    return report
