"""Initial quantization parameters: activation statistics from calibration data, weight scales per channel.

This is round-to-nearest (RTN) calibration; learned methods start from its parameters.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..config import QuantConfig
from ..data import Dataset
from ..diagnostics import Diagnostics
from ..plan import BitPlan
from ..graph.qgraph import Layer, attrs_of
from ..memory import trim_heap
from ..ops.shape import pad_constant
from ..quant import QParams, activation_grid, fake_quantize, weight_grid
from ..quant import scales as S
from ..quant.grid import Grid
from ..quant.observer import SATURATING, Observer
from ..quant.rounding import WEIGHT_ROUNDINGS, ceil_round, floor_round, rne, stochastic_round
from ..run_context import RunContext
from ..sim.capture import layer_inputs
from ..sim.layout import channels_last
from ..sim.model import SimModel, simulate_outputs
from .join_grids import align_join_grids
from .output_search import float_range_search, po2_output_search
from ..targets import get_target


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the enclosed torch CPU work on at most ``n`` threads (restored on exit).

    Scale searches run thousands of small tensor ops; with two OpenMP threads on a shared 2-core
    machine each op waits for the busy core (measured: 1000 quantize calls on 65k values take 0.05 s on
    one thread, 24 s on two under load), so the searches run single-threaded.
    """
    old = torch.get_num_threads()
    if old > n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def float_scale(x: torch.Tensor, grid: Grid, symmetric: bool, axis: int | None, cfg: QuantConfig,
                method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) by ``method`` (minmax | percentile | mse: L_p search), before any Po2 rounding."""
    if method == "minmax":
        return S.minmax(x, grid, symmetric, axis)
    if method == "percentile":
        return S.percentile(x, grid, symmetric, axis, cfg.percentile)
    return S.lp_search(x, grid, symmetric, axis)


def choose_scale(x: torch.Tensor, grid: Grid, symmetric: bool, axis: int | None, cfg: QuantConfig,
                 method: str, even_zp: bool = False) -> QParams:
    """``float_scale``; then, for Po2 configs, a power of two by ``cfg.po2_method``."""
    scale, zp = float_scale(x, grid, symmetric, axis, cfg, method)
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
            scale, zp = S.po2_search(x, scale, zp, grid, axis, even_zp=even_zp)
    return QParams(grid, scale.detach().cpu().numpy(), zp.detach().cpu().numpy(), axis, po2)


@torch.no_grad()
def observe_activations(sim: SimModel, data: Dataset, cfg: QuantConfig, points: set[str] | None = None
                        ) -> tuple[dict[str, Observer], dict[str, torch.Tensor]]:
    """Run the float model over the calibration set: an observer at every quant point (or at ``points``; each
    seeded by its place among all points, so it samples what calibration's observer samples), and the
    per-channel mean of every layer's input (for bias correction)."""
    sim.set_quant(weights=False, acts=False)
    observers = {}
    rows = softmax_inputs(sim)
    for k, (t, fq) in enumerate(sim.act_quantizers()):
        if points is None or t in points:
            fq.observer = observers[t] = Observer(seed=cfg.seed + k, row_axis=rows.get(t))
    device = sim.device
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    input_mean = _input_sums(sums, counts)
    try:
        n_batches = (len(data) + cfg.batch_size - 1) // cfg.batch_size
        with layer_inputs(sim, input_mean):
            for feeds in tqdm(data.batches(cfg.batch_size), total=n_batches, desc="calibrating activations",
                              disable=not cfg.progress, leave=False):
                sim({k: channels_last(torch.from_numpy(v).to(device)) for k, v in feeds.items()})
                trim_heap()  # each batch's activations: back to the OS (the resident set stays flat)
    finally:
        for _, fq in sim.act_quantizers():
            fq.observer = None
    return observers, {k: (v / counts[k]).float() for k, v in sums.items()}


def _input_sums(sums: dict[str, torch.Tensor], counts: dict[str, int]) -> Callable[[Layer, torch.Tensor], None]:
    """A ``layer_inputs`` callback adding up each layer's input per input channel (channel axis 1, or last for
    Gemm/MatMul) into ``sums`` and the values per channel into ``counts``."""
    def input_sum(layer: Layer, x: torch.Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != (1 if layer.spatial else x.dim() - 1)]
        # float32 per batch (a float64 reduction runs about 10x slower on CPU), float64 across batches
        sums[layer.name] = sums.get(layer.name, 0) + x.sum(dim=dims, dtype=torch.float32).double()
        counts[layer.name] = counts.get(layer.name, 0) + x.numel() // x.shape[1 if layer.spatial else -1]
    return input_sum


@torch.no_grad()
def layer_input_means(sim: SimModel, data: Dataset, cfg: QuantConfig, n_out: int = 0
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One float pass over ``data``: the per-input-channel mean of every layer's input (what bias correction
    uses) and the model's float outputs (``_outputs``) on its first ``n_out`` samples."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    with layer_inputs(sim, _input_sums(sums, counts)):
        outs = _outputs(sim, data.take(n_out), cfg, quant=False) if n_out else {}
        if n_out < len(data):
            _outputs(sim, data.rows(n_out, len(data)), cfg, quant=False)
    return {k: (v / counts[k]).float() for k, v in sums.items()}, outs


@torch.no_grad()
def calibrate_activations(sim: SimModel, observers: dict[str, Observer], plan: BitPlan, cfg: QuantConfig
                          ) -> list[str]:
    """Every activation quant point's parameters from its observer; returns the mask terms that held one value
    over the calibration data and were widened to still mask (``unvaried_mask_terms``)."""
    with threads(1):
        return _calibrate_activations(sim, observers, plan, cfg)


SOFTMAX_MASK_SPAN = 17 * math.log(2)  # exp(-span) = 2^-17: below half a step of a 16-bit softmax output


ROW_KEEPING_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")  # keep each last-axis row whole


def softmax_inputs(sim: SimModel) -> dict[str, int | None]:
    """Quant points that a Softmax reads (directly or through value-moving ops) -> the axis of the quant point
    along which it holds the rows the Softmax normalizes, or None. An axis is given where the Softmax reads the
    point itself, or through reshapes that keep the last axis (Swin's shifted windows) with the Softmax on the
    last axis, and where those Softmax nodes and reshapes are the point's only readers and it is no graph output."""
    producer = {o: n for n in sim.qg.nodes for o in n.output}
    out: dict[str, int | None] = {}
    on_path: dict[str, set[str]] = {}  # quant point -> the Softmax nodes and reshapes that lead to them
    for n in sim.qg.nodes:
        if n.op_type != "Softmax":
            continue
        t = sim.qg.source.get(n.input[0])
        if t is None:
            continue
        axis, path = _softmax_rows(sim, n, t, producer)
        on_path.setdefault(t, set()).update(path)
        out[t] = axis if out.get(t, axis) == axis else None
    for t, axis in out.items():
        qp = sim.qg.quant_points.get(t)
        if axis is not None and (qp is None or not set(qp.consumers) <= on_path[t] or read_out(sim, t)):
            out[t] = None
    return out


def _softmax_rows(sim: SimModel, n, t: str, producer: dict) -> tuple[int | None, set[str]]:
    """(the axis of quant point ``t`` that holds Softmax ``n``'s rows or None, the nodes from ``t`` to ``n``)."""
    axis = int(attrs_of(n).get("axis", -1))
    x, path = n.input[0], {n.name}
    if x == t:
        return axis, path
    shape_in, shape_t = sim.qg.shapes.get(x), sim.qg.shapes.get(t)
    if (not shape_in or not shape_t or axis not in (-1, len(shape_in) - 1) or shape_in[-1] <= 0
            or shape_in[-1] != shape_t[-1]):
        return None, path
    while x != t:
        p = producer.get(x)
        if p is None or p.op_type not in ROW_KEEPING_OPS:
            return None, path
        path.add(p.name)
        x = p.input[0]
    return -1, path


def softmax_floor(obs: Observer, unseen_mask: bool = False) -> float | None:
    """For a Softmax input: the lowest value its grid must reach, or None when the observed values need no
    floor (``unseen_mask``: reach it anyway, a mask term that never masked in calibration may mask later).
    Values below it clip to it; an attention mask's -inf, float minimum or finite fill (-1e4) must still act as
    -inf there.
    - With row statistics (``Observer.row_axis``): ``SOFTMAX_MASK_SPAN`` + ln(row length) below the smallest
      row maximum, where some value lies below that. A row's clipped values then weigh at most
      exp(-SOFTMAX_MASK_SPAN) = 2^-17 of its largest value together, after the Softmax; every value within
      the span of its row's maximum stays on the grid.
    - Without them (the Softmax reads the point through other ops): where the observer left out saturating
      values (``quant/observer.py``), ``SOFTMAX_MASK_SPAN`` below the largest finite value."""
    if math.isfinite(obs.row_max_min):
        floor = obs.row_max_min - SOFTMAX_MASK_SPAN - math.log(max(obs.row_length, 1))
        return floor if obs.min < floor or unseen_mask else None
    if not obs.saturating or obs.min > -SATURATING:
        return None
    return obs.finite_max - SOFTMAX_MASK_SPAN


def pad_values(sim: SimModel) -> dict[str, list[float]]:
    """Non-zero constants that a constant-mode Pad writes into a carried quant point (EfficientViT's linear
    attention appends a row of ones to V): quant point -> values its grid must hold exactly."""
    out: dict[str, list[float]] = {}
    for n in sim.qg.nodes:
        if n.op_type != "Pad" or not n.input:
            continue
        v = pad_constant(attrs_of(n), sim.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None)
        t = sim.qg.source.get(n.input[0])
        if v and t is not None and sim.qg.source.get(n.output[0]) == t:
            out.setdefault(t, []).append(float(v))
    return out


def covering_params(x: torch.Tensor, bits: int, nonnegative: bool, cfg: QuantConfig) -> QParams:
    """The grid that covers all of ``x`` (min/max; for Po2 scales the next power of two up, zero point by RAPQ
    Eq. 5): for a quant point whose grid must hold a Pad constant (``pad_values``)."""
    grid = activation_grid(bits, nonnegative and get_target(cfg.target).unsigned_activations)
    scale, zp = float_scale(x, grid, cfg.a_symmetric or not grid.signed, None, cfg, "minmax")
    if cfg.scale == "po2":
        new = S.po2_ceil(scale)
        zp, scale = S.po2_zero_point(scale, zp, new, grid), new
    return QParams(grid, scale.detach().cpu().numpy(), zp.detach().cpu().numpy(), None, cfg.scale == "po2")


def activation_choice(obs: Observer, bits: int, cfg: QuantConfig, floor: float | None = None
                      ) -> tuple[torch.Tensor, Grid, bool, str]:
    """What an activation quant point's scale is chosen from: (values, grid, symmetric, method). The grid is
    unsigned for a non-negative tensor where the target allows it; with a ``floor`` (``softmax_floor``,
    ``mask_term_floors``) it covers [floor, max] by min/max, the values below clipping to the floor."""
    nonnegative = obs.nonnegative and (floor is None or floor >= 0)
    grid = activation_grid(bits, nonnegative and get_target(cfg.target).unsigned_activations)
    x = obs.sample() if floor is None else torch.cat([obs.sample().clamp(min=floor), torch.tensor([floor])])
    return x, grid, cfg.a_symmetric or not grid.signed, cfg.a_scale_method if floor is None else "minmax"


def softmax_adds(sim: SimModel, softmax_in: dict[str, int | None]) -> dict[str, list[str | None]]:
    """Softmax inputs that an Add / Sum makes -> the quant points its inputs carry (None for an input that is
    none): where an attention mask meets the scores."""
    return {n.output[0]: [sim.qg.source.get(i) for i in n.input] for n in sim.qg.nodes
            if n.op_type in ("Add", "Sum") and len(n.output) == 1 and n.output[0] in softmax_in}


def mask_term_floors(sim: SimModel, observers: dict[str, Observer], floors: dict[str, float],
                     adds: dict[str, list[str | None]]) -> dict[str, float]:
    """Floors for the inputs of an Add / Sum (``softmax_adds``) whose output has a floor F (``softmax_floor``):
    where input u is below F minus the other inputs' grid tops, the sum is below F, and its grid clips it to F
    whatever u is, so u's grid needs to reach only that far down. An additive attention mask (-1e4, -1e9)
    otherwise gets a step that dwarfs the scores' (onnxruntime's fused QLinearAdd then loses the scores at
    -1e9). A quant point gets a floor only where every reader is such an Add (the lowest of their floors). An
    input that held one value over the calibration data (a padding mask with no padding in it) gets the floor
    too, so that it can still mask (``unvaried_mask_terms``)."""
    out: dict[str, float] = {}
    readers: dict[str, set[str]] = {}
    for s, srcs in adds.items():
        if s not in floors or any(u is None or u not in observers or sim.act_quantizer(u).params is None
                                  or sim.act_quantizer(u).params.axis is not None for u in srcs):
            continue
        tops = [sim.act_quantizer(u).params.top for u in srcs]
        for k, u in enumerate(srcs):
            f = floors[s] - (sum(tops) - tops[k])
            if observers[u].min < f or _unvaried(observers[u]):
                out[u] = min(out.get(u, f), f)
                readers.setdefault(u, set()).add(sim.qg.quant_points[s].producer)
    return {u: f for u, f in out.items()
            if set(sim.qg.quant_points[u].consumers) <= readers[u] and not read_out(sim, u)}


def _unvaried(obs: Observer) -> bool:
    return obs.count > 0 and obs.min == obs.max


def unvaried_mask_terms(observers: dict[str, Observer], softmax_in: dict[str, int | None],
                        adds: dict[str, list[str | None]]) -> dict[str, list[str]]:
    """Softmax inputs (read along rows) made by an Add / Sum (``softmax_adds``) with an input that held one value
    over the calibration data -> those inputs: an attention mask with no padding in the calibration samples adds
    0 everywhere there, and its grid and the sum's must still reach down to where it masks."""
    out: dict[str, list[str]] = {}
    for s, srcs in adds.items():
        idle = [u for u in srcs if u in observers and _unvaried(observers[u])]
        if idle and softmax_in[s] is not None:
            out[s] = idle
    return out


def read_out(sim: SimModel, t: str) -> bool:
    """Whether quant point ``t`` or a tensor carrying it is a graph output (the user reads its values)."""
    return any(sim.qg.source.get(o, o) == t for o in sim.qg.outputs)


def _point_params(obs: Observer, bits: int, cfg: QuantConfig, floor: float | None, need: list[float] | None
                  ) -> QParams:
    """One activation quant point's parameters: ``activation_choice``'s grid, widened to hold ``need`` (Pad
    constants, ``pad_values``), and an even zero point for asymmetric Po2 grids."""
    x, grid, symmetric, method = activation_choice(obs, bits, cfg, floor)
    params = choose_scale(x, grid, symmetric, None, cfg, method, even_zp=True)
    if need and not S.holds_values(params, need):
        params = covering_params(torch.cat([x, torch.tensor(need, dtype=x.dtype)]), bits,
                                 obs.nonnegative and min(need) >= 0, cfg)
    if params.po2 and not params.symmetric:
        zp = S.even_zero_point(torch.tensor(params.zero_point)).numpy()
        params = QParams(grid, params.scale, zp, None, po2=True)
    return params


def _calibrate_activations(sim: SimModel, observers: dict[str, Observer], plan: BitPlan, cfg: QuantConfig
                           ) -> list[str]:
    softmax_in = softmax_inputs(sim)
    padded = pad_values(sim)
    adds = softmax_adds(sim, softmax_in)
    unvaried = unvaried_mask_terms(observers, softmax_in, adds)
    floors: dict[str, float] = {}
    for t, fq in sim.act_quantizers():
        obs = observers[t]
        if obs.count == 0:
            raise RuntimeError(f"quant point {t!r} saw no data during calibration")
        floor = softmax_floor(obs, t in unvaried) if t in softmax_in else None
        if floor is not None:
            floors[t] = floor
        fq.bits = plan.a_bits[t]
        fq.set_params(_point_params(obs, plan.a_bits[t], cfg, floor, padded.get(t)))
    widened = mask_term_floors(sim, observers, floors, adds)
    for t, floor in widened.items():
        sim.act_quantizer(t).set_params(_point_params(observers[t], plan.a_bits[t], cfg, floor, padded.get(t)))
    return sorted({u for terms in unvaried.values() for u in terms if u in widened})


@torch.no_grad()
def input_quant_error(sim: SimModel, data: Dataset, cfg: QuantConfig) -> dict[str, torch.Tensor]:
    """Per-channel mean quantization error E[Q(x) - x] (channel axis 1) of every quantized graph input
    over the calibration data, keyed by the layers that read that input directly.

    Po2 input scales that clip (``output_search_activations``) make this error biased (e.g. -0.007 on
    one EfficientNet-Lite0 input channel); ``bias_shift`` folds W_q E[Q(x) - x] into those layers' bias
    correction, the activation analogue of Nagel et al. 2019, Eq. 13.
    """
    out: dict[str, torch.Tensor] = {}
    for t in sim.qg.inputs:
        if t not in sim.qg.quant_points or t not in data.inputs:
            continue
        q = sim.act_quantizer(t)
        x = data.inputs[t]
        if x.ndim < 2 or q.params is None:
            continue
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        for i in range(0, len(x), cfg.batch_size):
            xb = torch.from_numpy(x[i:i + cfg.batch_size]).float()
            err = fake_quantize(xb, q.params.scale, q.params.zero_point.astype(np.float32), q.params.grid) - xb
            total += err.double().sum(dim=[d for d in range(err.dim()) if d != 1]).cpu()
        mean = (total / (x.size // x.shape[1])).float()
        for layer in sim.qg.layers:
            if layer.input == t and (layer.spatial or x.ndim == 2):
                out[layer.name] = mean
    return out


def bias_shift(layer: Layer, w: torch.Tensor, w_q: torch.Tensor, input_mean: torch.Tensor,
               input_error: torch.Tensor | None = None) -> torch.Tensor:
    """E[W_q Q(x) - W x] per output channel, from per-input-channel means: (W_q - W) E[x] (Nagel et al.
    2019, Eq. 13) plus, when ``input_error`` = E[Q(x) - x] is given, W_q E[Q(x) - x]."""
    if input_error is not None:
        return bias_shift(layer, w, w_q, input_mean) + bias_shift(layer, torch.zeros_like(w_q), w_q, input_error)
    dw = (w_q - w).double()
    mean = input_mean.double()
    if layer.op_type == "ConvTranspose":  # (Cin, Cout, k...), no groups: each output position meets
        # prod(k) / prod(strides) taps per input channel on average (exact inside when strides divide k)
        dw = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(-1) / layer.stride_area
        return (mean @ dw).float()
    if layer.op_type == "Conv":
        dw = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(-1)  # (Cout, Cin/groups)
        cout, cin_g = dw.shape
        per_out = mean.reshape(layer.groups, cin_g)[torch.arange(cout) // (cout // layer.groups)]
        return (dw * per_out).sum(1).float()
    return (dw @ mean if layer.weight_axis == 0 else mean @ dw).float()


@torch.no_grad()
def calibrate_weights(sim: SimModel, plan: BitPlan, cfg: QuantConfig,
                      input_means: dict[str, torch.Tensor] | None = None,
                      input_errors: dict[str, torch.Tensor] | None = None) -> None:
    """Per-channel weight scales; optional bias correction (with ``input_errors``: also the graph input's
    mean quantization error, see ``input_quant_error``); int32-safe bias scales."""
    with threads(1):
        _calibrate_weights(sim, plan, cfg, input_means, input_errors)


def _calibrate_weights(sim: SimModel, plan: BitPlan, cfg: QuantConfig,
                       input_means: dict[str, torch.Tensor] | None = None,
                       input_errors: dict[str, torch.Tensor] | None = None) -> None:
    bias_delta = sim.state.bias_delta
    bias_delta.clear()
    for i, layer in enumerate(sim.qg.layers):
        fq = sim.weight_quantizer(layer.name)
        w = sim.weight(layer.weight).detach()
        grid = weight_grid(plan.w_bits[layer.name])
        round_fn = weight_round_fn(cfg.rounding, w, cfg.seed, i)
        mean = input_means.get(layer.name) if input_means is not None else None
        err = input_errors.get(layer.name) if input_errors else None
        bias = sim.weight(layer.bias).detach() if layer.bias else None
        s_x = sim.input_scale(layer) if layer.bias else 1.0
        params, delta = layer_weight_params(layer, w, bias, grid, cfg, s_x, mean, err, round_fn)
        if delta is not None:
            bias_delta[layer.name] = delta
        fq.bits = grid.bits
        fq.set_params(params, w.dim())
        if cfg.rounding != "nearest":  # on-grid float weights: the exporters re-quantize them exactly (RNE)
            w.copy_(fake_quantize(w, fq.scale, fq.zero_point, grid, round_fn))


def layer_weight_params(layer: Layer, w: torch.Tensor, bias: torch.Tensor | None, grid: Grid, cfg: QuantConfig,
                        s_x: float, input_mean: torch.Tensor | None = None, input_error: torch.Tensor | None = None,
                        round_fn: Callable[[torch.Tensor], torch.Tensor] = rne) -> tuple[QParams, torch.Tensor | None]:
    """One layer's per-channel weight parameters at ``grid`` (``choose_scale``) and, for a layer with a ``bias``:
    its bias correction when ``input_mean`` is given (``bias_shift`` of the weights rounded by ``round_fn``), and
    a weight scale that keeps the corrected int32 bias in range at input scale ``s_x``
    (``scales.bias_safe_weight_scale``). Returns (params, the correction or None)."""
    params = choose_scale(w, grid, cfg.w_symmetric, layer.weight_axis, cfg, cfg.w_scale_method)
    if bias is None:
        return params, None
    delta = None
    if input_mean is not None:
        scale, zp = params.shaped_for(w.dim())
        w_q = fake_quantize(w, torch.tensor(np.array(scale), device=w.device),
                            torch.tensor(np.array(zp), device=w.device).float(), grid, round_fn)
        delta = bias_shift(layer, w, w_q, input_mean.to(w.device),
                           None if input_error is None else input_error.to(w.device))
    corrected = bias - (delta if delta is not None else 0)
    safe = S.bias_safe_weight_scale(torch.from_numpy(params.scale), corrected.cpu(), s_x, params.po2)
    if not torch.equal(safe, torch.from_numpy(params.scale)):
        params = QParams(grid, safe.numpy(), params.zero_point, params.axis, params.po2)
    return params, delta


BIAS_GUARD_MIN_HALF = 4  # samples per half below which the held-out check is skipped (the correction stays)
BIAS_GUARD_EVAL = 64  # held-out samples per fold at most


def _outputs(sim: SimModel, data: Dataset, cfg: QuantConfig, quant: bool) -> dict[str, torch.Tensor]:
    """The float graph outputs over ``data`` (float64), quantized or float (``sim.model.simulate_outputs``)."""
    sim.set_quant(weights=quant, acts=quant)
    outs = simulate_outputs(sim, data.inputs, cfg.batch_size)
    return {o: torch.from_numpy(v).double() for o, v in outs.items() if np.issubdtype(v.dtype, np.floating)}


def _relative_error(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> float:
    """Sum over the float outputs of ||out - ref||^2 / ||ref||^2."""
    return sum(float(((out[o] - ref[o]) ** 2).sum()) / max(float((ref[o] ** 2).sum()), 1e-30) for o in ref)


@torch.no_grad()
def bias_correction_pays(sim: SimModel, data: Dataset, plan: BitPlan, cfg: QuantConfig,
                         input_errors: dict[str, torch.Tensor] | None = None) -> tuple[bool, float, float] | None:
    """Two-fold held-out check of the bias correction (Nagel et al. 2019, Eq. 13) on round-to-nearest weights.

    The correction is a mean estimated from the calibration samples; on the same samples it always lowers each
    layer's output error (it subtracts that error's mean), so only held-out samples can say whether the
    estimate carries over. The calibration data is split in halves (one float pass each, ``layer_input_means``:
    the means the correction is estimated from and the reference outputs); for each, the correction estimated
    on it is applied and the relative model-output error is measured on (up to
    ``BIAS_GUARD_EVAL`` samples of) the other half, with and without it. Returns (pays: corrected error <
    uncorrected, corrected error, uncorrected error), the errors averaged over the two folds; None when a half
    has fewer than ``BIAS_GUARD_MIN_HALF`` samples. Leaves the weights calibrated without correction."""
    step = sim.chunk or 1
    half = len(data) // 2 // step * step
    n_eval = min(half, BIAS_GUARD_EVAL) // step * step
    if half < BIAS_GUARD_MIN_HALF or n_eval == 0:
        return None
    folds = (data.rows(0, half), data.rows(half, 2 * half))
    means, refs = zip(*(layer_input_means(sim, f, cfg, n_eval) for f in folds))  # one float pass per half
    on = off = 0.0
    for k in (0, 1):
        held, ref = folds[1 - k].take(n_eval), refs[1 - k]
        calibrate_weights(sim, plan, cfg, means[k], input_errors)
        on += _relative_error(ref, _outputs(sim, held, cfg, quant=True))
        calibrate_weights(sim, plan, cfg)
        off += _relative_error(ref, _outputs(sim, held, cfg, quant=True))
    return on < off, on / 2, off / 2


def weight_round_fn(rounding: str, w: torch.Tensor, seed: int, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rounding function of ``--rounding`` for one weight tensor (Attention Round Table 5 baselines);
    stochastic draws its uniforms from (seed, layer index), so a seed gives the same weights."""
    if rounding == "nearest":
        return rne
    if rounding == "floor":
        return floor_round
    if rounding == "ceil":
        return ceil_round
    if rounding == "stochastic":
        u = torch.rand(tuple(w.shape), generator=torch.Generator().manual_seed(seed * 1_000_003 + index))
        return lambda x: stochastic_round(x, u.to(x.device, x.dtype))
    raise ValueError(f"unknown weight rounding {rounding!r}; one of {', '.join(WEIGHT_ROUNDINGS)}")


def calibrate(sim: SimModel, data: Dataset, plan: BitPlan, cfg: QuantConfig, ctx: RunContext | None = None) -> None:
    """RTN: activation scales from float statistics, then weight scales per channel (which need the
    input scale to keep the int32 bias in range); quantization on. Writes ``sim.state``; what could not be
    done as asked goes into ``ctx.diagnostics``."""
    diagnostics = ctx.diagnostics if ctx is not None else Diagnostics()
    observers, input_means = observe_activations(sim, data, cfg)
    state = sim.state
    state.input_means.clear()
    state.input_means.update(input_means)  # also used after learned rounding (recon/engine.py)
    for t in calibrate_activations(sim, observers, plan, cfg):
        diagnostics.add("other", t, "held one value in every calibration sample (an attention mask with no padding "
                        "in them?): its grid and the attention sum's were widened so that it can still mask; "
                        "calibrate with padded samples for the sum's finer grid")
    if cfg.join_grids:
        align_join_grids(sim, data, set(softmax_inputs(sim)) | set(pad_values(sim)))
    if cfg.scale == "po2" and cfg.po2_output_points > 0:
        po2_output_search(sim, data, observers, cfg.po2_output_points)
    elif cfg.scale == "float" and cfg.a_output_search:
        float_range_search(sim, data, observers, progress=cfg.progress)
    if cfg.ecaq:
        from .ecaq import apply_ecaq

        if not apply_ecaq(sim, data, cfg):
            diagnostics.add("other", "", "--ecaq: no quant point qualifies (a non-negative 4-D tensor read only by "
                            "convs, e.g. inside a residual block), so no activation has per-channel scales")
    correct = cfg.bias_correction
    errors = input_quant_error(sim, data, cfg) if correct else None
    check = None
    if correct and cfg.bias_correction_guard and cfg.method == "rtn" and cfg.rounding == "nearest":
        check = bias_correction_pays(sim, data, plan, cfg, errors)
    if check is not None and not check[0]:  # the check left the weights calibrated without the correction
        correct = False
        diagnostics.add("bias-correction-dropped", "", f"the bias correction raised the model-output error on "
                        f"held-out calibration samples ({check[1]:.4g} with it, {check[2]:.4g} without, relative "
                        "squared error, 2 folds), so no layer's bias is corrected (--no-bias-correction-guard "
                        "keeps it)")
    else:
        calibrate_weights(sim, plan, cfg, state.input_means if correct else None, errors)
    if correct:
        for layer in sim.qg.layers:
            if not layer.bias:
                diagnostics.add("no-bias-input", layer.name, "no bias input to hold the correction "
                                "(Nagel et al. 2019, Eq. 13); its mean output shift stays", quiet=True)
    sim.set_quant(weights=True, acts=True)


def integer_weights(sim: SimModel, layer_name: str) -> np.ndarray:
    """The weight tensor on its integer grid (what the exporters store)."""
    from ..quant import quantize

    layer = sim.qg.layer(layer_name)
    fq = sim.weight_quantizer(layer_name)
    w = sim.weight(layer.weight).detach().cpu().numpy().astype(np.float32)
    scale, zp = fq.params.shaped_for(w.ndim)
    return quantize(w, scale, zp.astype(np.float32), fq.params.grid).astype(np.int64)


def integer_bias(sim: SimModel, layer_name: str) -> np.ndarray:
    """The int32-grid bias with scale s_x * s_w[c] (what the exporters store), as int64.

    float32 division and RNE as in the simulation's bias fake-quant; the clip to the int32 grid is
    done in float64 (2^31 - 1 is not a float32)."""
    from ..quant.grid import BIAS_GRID

    layer = sim.qg.layer(layer_name)
    b = sim.effective_bias(layer, quantized_weights=True).detach().cpu().numpy().astype(np.float32)
    s_b = sim.bias_scale(layer).reshape(-1)
    return np.clip(rne(b / s_b).astype(np.float64), BIAS_GRID.qmin, BIAS_GRID.qmax).astype(np.int64)
