"""Scale initialization (DESIGN.md section 2): minmax, percentile, L_p (MSE) search, power-of-two rules.

All functions take torch tensors and reduce over every axis but ``axis`` (per-channel when ``axis`` is
given). They return float scales and integer zero-points as torch tensors; ``QParams`` stores them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .grid import Grid
from .rapq import po2_base_exponent
from .rounding import fake_quantize

if TYPE_CHECKING:
    from .params import QParams

EPS = 1e-12


def _reduce_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    return [d for d in range(x.dim()) if d != axis] if axis is not None else list(range(x.dim()))


def range_to_qparams(lo: torch.Tensor, hi: torch.Tensor, grid: Grid, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering [lo, hi] (lo <= 0 <= hi is enforced).

    Symmetric signed: s = max(|lo|, hi) / qmax, z = 0. Unsigned with lo >= 0: s = hi / qmax, z = 0.
    Asymmetric: s = (hi - lo) / (qmax - qmin), z = clip(RNE(qmin - lo / s)) (RAPQ Eq. 1-2).
    """
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if symmetric or not grid.signed and bool((lo >= 0).all()):
        amax = torch.maximum(-lo, hi) if grid.signed else hi
        scale = torch.clamp(amax / grid.qmax, min=EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int64)
    scale = torch.clamp((hi - lo) / (grid.qmax - grid.qmin), min=EPS)
    zp = (grid.qmin - lo / scale).round().clamp(grid.qmin, grid.qmax).to(torch.int64)
    return scale, zp


def minmax(x: torch.Tensor, grid: Grid, symmetric: bool, axis: int | None = None):
    dims = _reduce_dims(x, axis)
    return range_to_qparams(x.amin(dim=dims), x.amax(dim=dims), grid, symmetric)


def percentile(x: torch.Tensor, grid: Grid, symmetric: bool, axis: int | None = None, q: float = 99.99):
    """Clip range at the q-th percentile of each side (per channel when ``axis`` is given)."""
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1) if axis is not None else x.reshape(1, -1)
    flat = flat.float()
    hi = torch.quantile(flat, q / 100.0, dim=1) if flat.shape[1] <= 16_000_000 else flat.amax(dim=1)
    lo = torch.quantile(flat, 1 - q / 100.0, dim=1) if flat.shape[1] <= 16_000_000 else flat.amin(dim=1)
    if axis is None:
        hi, lo = hi[0], lo[0]
    return range_to_qparams(lo, hi, grid, symmetric)


LP_NORM = 2.4  # BRECQ Appendix B.1: the p of the L_p clipping criterion


def lp_error(x: torch.Tensor, xq: torch.Tensor, p: float, axis: int | None) -> torch.Tensor:
    """Mean |x - xq|^p per channel (or scalar): the clipping criterion of BRECQ's L_p search (p = 2.4)."""
    return _abs_pow_mean(x - xq, p, _reduce_dims(x, axis))


def _abs_pow_mean(d: torch.Tensor, p: float, dim) -> torch.Tensor:
    d = d.abs()
    return (d * d if p == 2.0 else d.pow(p)).mean(dim=dim)


CHUNK_ELEMENTS = 1 << 24  # candidate evaluations are batched up to this many elements at a time


def candidate_lp_errors(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, grid: Grid, p: float,
                        axis: int | None) -> torch.Tensor:
    """L_p error (``lp_error``) of many candidate (scale, zero point) pairs at once.

    ``scale`` and ``zp`` have shape (n,) for a per-tensor ``x`` or (n, C) for per-channel ``x`` (C along
    ``axis``); returns the (n,) or (n, C) mean |x - fake_quantize(x)|^p. One broadcast ``fake_quantize``
    per chunk of candidates replaces a Python loop of small tensor ops.
    """
    xc = x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)
    xc = xc.unsqueeze(0)  # (1, C, M)
    sc = scale.reshape(scale.shape[0], -1, 1).to(x.dtype)
    zc = zp.reshape(zp.shape[0], -1, 1).to(x.dtype)
    step = max(1, CHUNK_ELEMENTS // max(1, xc.numel()))
    out = []
    for i in range(0, sc.shape[0], step):
        s_, z_ = sc[i:i + step], zc[i:i + step]
        out.append(_abs_pow_mean(fake_quantize(xc, s_, z_, grid) - xc, p, -1))
    err = torch.cat(out)
    return err[:, 0] if axis is None else err


def _pick(err: torch.Tensor, *cands: torch.Tensor) -> list[torch.Tensor]:
    """Per channel, the candidate with the lowest error (the first one on ties)."""
    idx = err.argmin(dim=0, keepdim=True)
    return [c.gather(0, idx.expand(1, *c.shape[1:]))[0] for c in cands]


def lp_search(x: torch.Tensor, grid: Grid, symmetric: bool, axis: int | None = None, p: float = LP_NORM,
              candidates: int = 80, min_ratio: float = 0.2):
    """Shrink the min/max range by a ratio in [min_ratio, 1]; keep the ratio minimizing the L_p error.

    BRECQ (Appendix B.1) searches 80 clipping ratios with p = 2.4. Done for all channels at once and
    coarse-to-fine: ``sqrt(candidates)`` evenly spaced ratios, then as many around each channel's
    best one, which resolves the ratio finer than an 80-point grid with a quarter of the evaluations.
    Each stage's candidates are evaluated in one batched call (``candidate_lp_errors``).
    """
    dims = _reduce_dims(x, axis)
    lo0, hi0 = x.amin(dim=dims), x.amax(dim=dims)
    n = max(2, int(round(candidates ** 0.5)))
    step = (1.0 - min_ratio) / (n - 1)
    j = torch.arange(n, dtype=hi0.dtype, device=hi0.device).reshape(-1, *([1] * hi0.dim()))
    r = (min_ratio + j * step).expand(n, *hi0.shape)
    scale, zp = range_to_qparams(lo0 * r, hi0 * r, grid, symmetric)
    err = candidate_lp_errors(x, scale, zp, grid, p, axis)
    best_err, best_r = _pick(err, err, r)
    r = (best_r + (j - (n - 1) / 2) * (2 * step / (n - 1))).clamp(min_ratio / 2, 1.0)
    scale, zp = range_to_qparams(lo0 * r, hi0 * r, grid, symmetric)
    err = torch.cat([best_err[None], candidate_lp_errors(x, scale, zp, grid, p, axis)])
    (best_r,) = _pick(err, torch.cat([best_r[None], r]))
    return range_to_qparams(lo0 * best_r, hi0 * best_r, grid, symmetric)


# ---------------------------------------------------------------- power-of-two scales

def po2_floor(scale: torch.Tensor) -> torch.Tensor:
    """Naive Po2 scale 2^floor(log2 s) (RAPQ Eq. 4): finer grid, more clipping."""
    return torch.exp2(po2_base_exponent(scale)).to(scale.dtype)


def po2_round(scale: torch.Tensor) -> torch.Tensor:
    """2^round(log2 s): the nearest power of two in the log domain."""
    return torch.exp2(torch.round(torch.log2(scale.double()))).to(scale.dtype)


def po2_ceil(scale: torch.Tensor) -> torch.Tensor:
    """2^ceil(log2 s): the smallest power of two that clips nothing the scale s covers."""
    return torch.exp2(torch.ceil(torch.log2(scale.double()))).to(scale.dtype)


def po2_zero_point(scale: torch.Tensor, zp: torch.Tensor, new_scale: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Zero point after a scale change keeping x_min fixed: z' = s z / s' (RAPQ Eq. 5), rounded and clipped."""
    return (scale * zp / new_scale).round().clamp(grid.qmin, grid.qmax).to(torch.int64)


def po2_candidates(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, grid: Grid, axis: int | None = None,
                   span: int = 2, even_zp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The Po2 (scale, zero point) candidates ``po2_search`` ranks: shapes (m,) or (m, C).

    Exponents k in [ceil(log2 s) - span, ceil(log2 s)] (ceil: the smallest exponent with no more
    clipping than the float scale). With a zero point (asymmetric grid) a smaller range must be clipped
    somewhere: RAPQ Eq. 5 (keep x_min), keep x_max, and centre the range. With ``even_zp``
    each zero point is replaced by its two even neighbours (onnxruntime QLinearAdd parity, see
    ``even_zero_point``), so the search ranks exactly the points the exported model can use.
    """
    k0 = torch.ceil(torch.log2(scale.double()))
    asymmetric = bool((zp != 0).any())
    dims = _reduce_dims(x, axis)
    hi = x.amax(dim=dims) if asymmetric else None
    lo = x.amin(dim=dims) if asymmetric else None
    scales, zps = [], []
    for k in range(-span, 1):
        s = torch.exp2(k0 + k).to(scale.dtype)
        zs = [po2_zero_point(scale, zp, s, grid)]
        if asymmetric:
            zs.append((grid.qmax - hi / s).round().clamp(grid.qmin, grid.qmax).to(torch.int64))
            zs.append(((grid.qmin + grid.qmax) / 2 - (lo + hi) / (2 * s)).round().clamp(grid.qmin, grid.qmax).to(torch.int64))
        if even_zp and asymmetric:
            zs = [e for z in zs for e in (even_zero_point(z), (even_zero_point(z) + 2).clamp(max=grid.qmax - 1))]
        for z in zs:
            scales.append(s)
            zps.append(z)
    return torch.stack(scales), torch.stack(zps)


def po2_search(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, grid: Grid, axis: int | None = None,
               p: float = LP_NORM, span: int = 2, even_zp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponent search (Quark-style MinMSE): the ``po2_candidates`` pair with the lowest L_p error."""
    scales, zps = po2_candidates(x, scale, zp, grid, axis, span, even_zp)
    err = candidate_lp_errors(x, scales, zps, grid, p, axis)
    best_scale, best_zp = _pick(err, scales, zps)
    return best_scale, best_zp


def po2_clip_candidates(lo: float, hi: float, scale: float, zero_point: int, grid: Grid,
                        n_zp: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Po2 (scale, zero point) candidates spanning the clipping trade-off of one per-tensor range [lo, hi].

    First the given (scale, zero point) (so ranking ties keep it); then, at the next finer exponent
    scale / 2, where [lo, hi] no longer fits an asymmetric grid, ``n_zp`` even zero points evenly spaced
    from 'keep x_max' (clip the low side) to 'keep x_min' (clip the high side, RAPQ Eq. 5), i.e. where
    the clipping goes. Unsigned or symmetric grids (zero point 0) get the finer exponent only.
    Zero points are even (``even_zero_point``). Returns float32 scales and int64 zero points, shape (m,).
    """
    cands = [(float(scale), int(zero_point))]
    s = float(scale) / 2
    if grid.signed and zero_point != 0:
        z_max = grid.qmax - hi / s  # keep x_max: x_max lands on qmax
        z_min = grid.qmin - lo / s  # keep x_min: x_min lands on qmin
        for j in range(n_zp):
            z = z_max + (z_min - z_max) * j / max(n_zp - 1, 1)
            z = int(min(max(round(z), grid.qmin), grid.qmax))
            cands.append((s, z - z % 2))
    else:
        cands.append((s, 0))
    cands = list(dict.fromkeys(cands))
    return (torch.tensor([c[0] for c in cands], dtype=torch.float32),
            torch.tensor([c[1] for c in cands], dtype=torch.int64))


FLOAT32_MARGIN = 2.0 ** -20  # relative slack: a float64 scale at the bound stays within it once stored as float32


def bias_limit(bias_bits: int = 32) -> float:
    """Largest |bias| / (s_x s_w) a bias may reach: 2^(bits-2), half the int32 range (margin for the float32
    rounding of s_x * s_w)."""
    return float(2 ** (bias_bits - 2))


def bias_in_range(bias: torch.Tensor, x_scale: float, w_scale: torch.Tensor, bias_bits: int = 32,
                  margin: float = 0.0) -> torch.Tensor:
    """Per channel: |bias| / (s_x s_w) <= ``bias_limit`` (times 1 + ``margin``), in float64."""
    return bias.double().abs() / (float(x_scale) * w_scale.double()) <= bias_limit(bias_bits) * (1.0 + margin)


def bias_safe_weight_scale(w_scale: torch.Tensor, bias: torch.Tensor, x_scale: float, po2: bool,
                           bias_bits: int = 32, margin: float = 0.0) -> torch.Tensor:
    """Smallest change to per-channel weight scales so the bias fits its int32 grid at s_x * s_w.

    A channel whose weights are (nearly) all zero gets a tiny s_w; its bias / (s_x s_w) would then
    saturate int32 and change the output. Raising s_w until |b| / (s_x s_w) <= ``bias_limit`` (next power
    of two for Po2 scales) keeps the bias exact; the weights of such channels are ~0 and still quantize to
    ~0. ``margin`` raises the bound on s_w by that relative amount (``FLOAT32_MARGIN`` for float64 scales
    that are stored as float32). Computed in float64.
    """
    need = bias.double().abs() / (float(x_scale) * bias_limit(bias_bits))
    if margin:
        need = need * (1.0 + margin)
    if po2:
        need = po2_ceil(need.clamp(min=1e-300))
    return torch.maximum(w_scale.double(), need).to(w_scale.dtype)


def bias_safe_act_scale(x_scale: float, bias: torch.Tensor, w_scale: torch.Tensor, po2: bool,
                        bias_bits: int = 32, margin: float = 0.0) -> float:
    """Smallest activation scale >= ``x_scale`` at which every channel's |b| / (s_x s_w) is within
    ``bias_limit`` (next power of two for Po2 scales): the mirror of ``bias_safe_weight_scale`` for a reader
    whose weights are already fixed. ``margin`` as there. Computed in float64."""
    need = float((bias.double().abs() / (w_scale.double() * bias_limit(bias_bits))).max()) if bias.numel() else 0.0
    if margin:
        need *= 1.0 + margin
    if po2 and need > 0.0:
        need = float(po2_ceil(torch.tensor(need, dtype=torch.float64)))
    return max(float(x_scale), need)


def holds_values(params: QParams, values: list[float]) -> bool:
    """Every value in ``values`` is a level of the (per-tensor) grid of ``params``: within its range and, for
    power-of-two scales, exactly on it (what the integer format needs to write it)."""
    scale, zp = float(np.asarray(params.scale).reshape(())), float(np.asarray(params.zero_point).reshape(()))
    for v in values:
        q = v / scale + zp
        if not params.grid.qmin <= q <= params.grid.qmax or (params.po2 and q != round(q)):
            return False
    return True


def even_zero_point(zp: torch.Tensor) -> torch.Tensor:
    """Odd zero points moved down to the even neighbour (still on any signed grid: qmin is even).

    onnxruntime's fused QLinearAdd adds the output zero point before rounding, so with an odd zero
    point exact ties (frequent with Po2 scales) round differently from QuantizeLinear; even zero
    points make both agree (measured on onnxruntime 1.32, tests/test_qdq_parity.py).
    """
    return zp - torch.remainder(zp, 2)


CLIP_FRACTIONS = (1 / 3, 2 / 3, 1.0)  # see clip_range_candidates


def clip_range_candidates(lo: float, hi: float, scale: float, zero_point: int, grid: Grid, symmetric: bool,
                          fractions: tuple[float, ...] = CLIP_FRACTIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Float (scale, zero point) candidates between a searched clipping range and the full range [lo, hi].

    First the given (scale, zero point) (the L_p choice, so ranking ties keep it). Its range is
    R_0 = [(qmin - z) s, (qmax - z) s]; with the observed range R_1 = [min(lo, 0), max(hi, 0)], fraction
    t gives R_0 + t (R_1 - R_0) (t = 1: minmax); each range becomes a (scale, zero point) by ``range_to_qparams``. Duplicates are dropped. Returns float32 scales and int64
    zero points, shape (m,).
    """
    lo0, hi0 = (grid.qmin - zero_point) * scale, (grid.qmax - zero_point) * scale
    lo1, hi1 = min(lo, 0.0), max(hi, 0.0)
    f32 = lambda v: float(torch.tensor(float(v), dtype=torch.float32))  # noqa: E731  (duplicates as stored)
    cands = [(f32(scale), int(zero_point))]
    for t in fractions:
        s, z = range_to_qparams(torch.tensor(lo0 + t * (lo1 - lo0), dtype=torch.float64),
                                torch.tensor(hi0 + t * (hi1 - hi0), dtype=torch.float64), grid, symmetric)
        cands.append((f32(s), int(z)))
    cands = list(dict.fromkeys(cands))
    return (torch.tensor([c[0] for c in cands], dtype=torch.float32),
            torch.tensor([c[1] for c in cands], dtype=torch.int64))
