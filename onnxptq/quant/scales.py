"""Scale initialization (DESIGN.md section 2): minmax, percentile, L_p (MSE) search, power-of-two rules.

All functions take torch tensors and reduce over every axis but ``axis`` (per-channel when ``axis`` is
given). They return float scales and integer zero-points as torch tensors; ``QParams`` stores them.
"""
from __future__ import annotations

import torch

from .grid import Grid
from .rounding import fake_quantize

EPS = 1e-12


def _reduce_dims(x: torch.Tensor, axis: int | None) -> list[int]:
    return [d for d in range(x.dim()) if d != axis] if axis is not None else list(range(x.dim()))


def _view(v: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None:
        return v
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)


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


def lp_error(x: torch.Tensor, xq: torch.Tensor, p: float, axis: int | None) -> torch.Tensor:
    """Mean |x - xq|^p per channel (or scalar): the clipping criterion of BRECQ's L_p search (p = 2.4)."""
    d = (x - xq).abs()
    return (d * d if p == 2.0 else d.pow(p)).mean(dim=_reduce_dims(x, axis))


def lp_search(x: torch.Tensor, grid: Grid, symmetric: bool, axis: int | None = None, p: float = 2.4,
              candidates: int = 80, min_ratio: float = 0.2):
    """Shrink the min/max range by a ratio in [min_ratio, 1]; keep the ratio minimizing the L_p error.

    BRECQ (Appendix B.1) searches 80 clipping ratios with p = 2.4. Done for all channels at once and
    coarse-to-fine: ``sqrt(candidates)`` evenly spaced ratios, then as many around each channel's
    best one, which resolves the ratio finer than an 80-point grid with a quarter of the evaluations.
    """
    dims = _reduce_dims(x, axis)
    lo0, hi0 = x.amin(dim=dims), x.amax(dim=dims)
    n = max(2, int(round(candidates ** 0.5)))
    step = (1.0 - min_ratio) / (n - 1)
    best_r = torch.ones_like(hi0)
    best_err = None
    for stage in range(2):
        for j in range(n):
            if stage == 0:
                r = torch.full_like(hi0, min_ratio + j * step)
            else:
                r = (best_r + (j - (n - 1) / 2) * (2 * step / (n - 1))).clamp(min_ratio / 2, 1.0)
            scale, zp = range_to_qparams(lo0 * r, hi0 * r, grid, symmetric)
            err = lp_error(x, fake_quantize(x, _view(scale, x, axis), _view(zp, x, axis), grid), p, axis)
            if best_err is None:
                best_err, best_r = err, r
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_r = torch.where(better, r, best_r)
    return range_to_qparams(lo0 * best_r, hi0 * best_r, grid, symmetric)


# ---------------------------------------------------------------- power-of-two scales

def po2_floor(scale: torch.Tensor) -> torch.Tensor:
    """Naive Po2 scale 2^floor(log2 s) (RAPQ Eq. 4): finer grid, more clipping."""
    return torch.exp2(torch.floor(torch.log2(scale.double()))).to(scale.dtype)


def po2_round(scale: torch.Tensor) -> torch.Tensor:
    """2^round(log2 s): the nearest power of two in the log domain."""
    return torch.exp2(torch.round(torch.log2(scale.double()))).to(scale.dtype)


def po2_zero_point(scale: torch.Tensor, zp: torch.Tensor, new_scale: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Zero point after a scale change keeping x_min fixed: z' = s z / s' (RAPQ Eq. 5), rounded and clipped."""
    return (scale * zp / new_scale).round().clamp(grid.qmin, grid.qmax).to(torch.int64)


def po2_search(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, grid: Grid, axis: int | None = None,
               p: float = 2.4, span: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponent search (Quark-style MinMSE): try 2^k for k in [ceil(log2 s) - span, ceil(log2 s)].

    ceil(log2 s) is the smallest exponent with no more clipping than the float scale; smaller
    exponents trade clipping for rounding error. With a zero point (asymmetric grids) a smaller
    range must be clipped somewhere: besides RAPQ Eq. 5 (keep x_min), keeping x_max and centring the
    range are tried. Keeps the (exponent, zero point) with the lowest L_p error.
    """
    k0 = torch.ceil(torch.log2(scale.double()))
    asymmetric = bool((zp != 0).any())
    dims = _reduce_dims(x, axis)
    hi = x.amax(dim=dims) if asymmetric else None
    lo = x.amin(dim=dims) if asymmetric else None
    best_scale = best_zp = best_err = None
    for k in range(-span, 1):
        s = torch.exp2(k0 + k).to(scale.dtype)
        candidates = [po2_zero_point(scale, zp, s, grid)]
        if asymmetric:
            keep_max = (grid.qmax - hi / s).round().clamp(grid.qmin, grid.qmax).to(torch.int64)
            centre = ((grid.qmin + grid.qmax) / 2 - (lo + hi) / (2 * s)).round().clamp(grid.qmin, grid.qmax).to(torch.int64)
            candidates += [keep_max, centre]
        for z in candidates:
            err = lp_error(x, fake_quantize(x, _view(s, x, axis), _view(z, x, axis), grid), p, axis)
            if best_err is None:
                best_scale, best_zp, best_err = s, z, err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, s, best_scale)
            best_zp = torch.where(better, z, best_zp)
    return best_scale, best_zp


def bias_safe_weight_scale(w_scale: torch.Tensor, bias: torch.Tensor, x_scale: float, po2: bool,
                           bias_bits: int = 32) -> torch.Tensor:
    """Smallest change to per-channel weight scales so the bias fits its int32 grid at s_x * s_w.

    A channel whose weights are (nearly) all zero gets a tiny s_w; its bias / (s_x s_w) would then
    saturate int32 and change the output. Raising s_w until |b| / (s_x s_w) <= 2^(bits-2) (half the
    int32 range: margin for float32 rounding of s_x * s_w; next power of two for Po2 scales) keeps the
    bias exact; the weights of such channels are ~0 and still quantize to ~0. Computed in float64.
    """
    need = bias.double().abs() / (float(x_scale) * float(2 ** (bias_bits - 2)))
    if po2:
        need = torch.exp2(torch.ceil(torch.log2(need.clamp(min=1e-300))))
    return torch.maximum(w_scale.double(), need).to(w_scale.dtype)


def even_zero_point(zp: torch.Tensor) -> torch.Tensor:
    """Odd zero points moved down to the even neighbour (still on any signed grid: qmin is even).

    onnxruntime's fused QLinearAdd adds the output zero point before rounding, so with an odd zero
    point exact ties (frequent with Po2 scales) round differently from QuantizeLinear; even zero
    points make both agree (measured on onnxruntime 1.32, tests/test_qdq_parity.py).
    """
    return zp - torch.remainder(zp, 2)
