"""Conv (float), ConvInteger and QLinearConv, N-D (1-D, 2-D, 3-D, ...), any group.

Shared geometry: ``kernel_shape`` (default: W's spatial shape), ``strides``, ``dilations``,
``pads`` or ``auto_pad`` (NOTSET / SAME_UPPER / SAME_LOWER / VALID), ``group``.

ConvInteger-10: ``y = conv(x - x_zero_point, w - w_zero_point)`` as int32; x_zero_point is per
tensor, w_zero_point per tensor or per output channel (1-D of length M). Padding contributes zero
after the zero-point subtraction, i.e. the input is padded with x_zero_point (as onnxruntime does).

QLinearConv-10: the same integer convolution plus the optional int32 bias B, then
``y = saturate(round(acc * x_scale * w_scale / y_scale) + y_zero_point)`` (see ``quant.requantize``).

The integer convolutions are exact; see :mod:`runtime.kernels` for the float-BLAS argument.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels as K
from ..dtypes import compute_float, is_integer, widen
from .registry import Node, const_cached, register
from .quant import qlinear_multiplier, requantize


def _check_conv(node: Node) -> None:
    ap = node.attr("auto_pad", "NOTSET")
    if ap not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise node.unsupported(f"auto_pad={ap!r}")


def _geometry(node: Node, x: np.ndarray, w: np.ndarray):
    nd = x.ndim - 2
    if nd < 1:
        raise node.unsupported(f"input rank {x.ndim} (need N, C, spatial...)")
    kernel = list(node.attr("kernel_shape") or w.shape[2:])
    if list(w.shape[2:]) != kernel:
        raise ValueError(f"kernel_shape {kernel} does not match W shape {w.shape}")
    strides = list(node.attr("strides") or [1] * nd)
    dil = list(node.attr("dilations") or [1] * nd)
    group = int(node.attr("group", 1))
    c = x.shape[1]
    m = w.shape[0]
    if c != w.shape[1] * group or m % group:
        raise ValueError(f"channels: x has {c}, W {w.shape} with group={group}")
    pb, pe, out = K.window_geometry(
        x.shape[2:], kernel, strides, dil, node.attr("pads"), node.attr("auto_pad", "NOTSET")
    )
    if any(p < 0 for p in pb + pe):
        raise ValueError(f"negative pads {pb + pe}")
    ex = K.extra_end(x.shape[2:], kernel, strides, dil, pb, pe, out)
    pe = [e + x_ for e, x_ in zip(pe, ex)]
    return kernel, strides, dil, group, pb, pe, out


def _scalar(zp: np.ndarray | None, what: str) -> np.ndarray | None:
    if zp is None:
        return None
    if zp.size != 1:
        raise ValueError(f"{what} must be a scalar (per tensor), got shape {zp.shape}")
    return widen(zp).reshape(())


def _w_zp(zp: np.ndarray | None, m: int, nd: int) -> np.ndarray | None:
    if zp is None:
        return None
    if zp.size == 1:
        return widen(zp).reshape(())
    if zp.ndim != 1 or zp.shape[0] != m:
        raise ValueError(f"w_zero_point must be a scalar or have {m} values, got {zp.shape}")
    return widen(zp).reshape((m,) + (1,) * (nd + 1))


def int_conv(
    node: Node,
    x: np.ndarray,
    w: np.ndarray,
    x_zp: np.ndarray | None,
    w_zp: np.ndarray | None,
    w_inputs: tuple[int, int],
) -> np.ndarray:
    """Exact ``conv(x - x_zp, w - w_zp)`` as int32 (shared by ConvInteger and QLinearConv).

    ``w_inputs`` are the node input positions of w and w_zero_point (for per-session caching).
    """
    kernel, strides, dil, group, pb, pe, out = _geometry(node, x, w)
    xz = _scalar(x_zp, "x_zero_point")
    wz = _w_zp(w_zp, w.shape[0], x.ndim - 2)
    cg = w.shape[1]
    k = cg * math.prod(kernel)
    wb = const_cached(node, "wbound", w_inputs, lambda: K.data_bound(w, wz))
    xb = K.dtype_bound(x.dtype, xz)
    if cg == 1:
        # depthwise-like: direct multiply-accumulate in exact integer arithmetic
        bound = k * xb * wb
        if bound >= K.I32_SAFE:
            xb = min(xb, K.data_bound(x, xz))
            bound = k * xb * wb
        dt = np.dtype(np.int32 if bound < K.I32_SAFE else np.int64)
    else:
        dt = K.acc_dtype(k, xb, wb)
        if dt != np.float32:
            xb = min(xb, K.data_bound(x, xz))
            dt = K.acc_dtype(k, xb, wb)
        bound = k * xb * wb
    wmat = const_cached(
        node,
        "wmat:" + dt.str,
        w_inputs,
        lambda: K.conv_weight_matrix(K.centered(w, wz, dt), group),
    )
    xp = K.pad_spatial(widen(x), pb, pe, 0, dtype=dt)
    if xz is not None and xz != 0:
        if xp is x:  # never modify an input in place
            xp = xp.copy()
        inner = (Ellipsis,) + tuple(slice(b, b + n) for b, n in zip(pb, x.shape[2:]))
        xp[inner] -= xz.astype(dt)
    acc = K.conv_core(xp, wmat, kernel, strides, dil, out)
    return K.to_int(acc, np.dtype(np.int32), bound)


@register("ConvInteger", check=_check_conv)
def conv_integer(
    node: Node,
    x: np.ndarray,
    w: np.ndarray,
    x_zp: np.ndarray | None = None,
    w_zp: np.ndarray | None = None,
) -> np.ndarray:
    return int_conv(node, x, w, x_zp, w_zp, (1, 3))


@register("QLinearConv", check=_check_conv)
def qlinear_conv(
    node: Node,
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zp: np.ndarray,
    w: np.ndarray,
    w_scale: np.ndarray,
    w_zp: np.ndarray,
    y_scale: np.ndarray,
    y_zp: np.ndarray,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    acc = int_conv(node, x, w, x_zp, w_zp, (3, 5))
    if bias is not None:
        acc = acc + bias.astype(np.int32).reshape((-1,) + (1,) * (x.ndim - 2))
    m = w.shape[0]
    ws = w_scale.reshape(-1)
    if ws.size not in (1, m):
        raise ValueError(f"w_scale must be a scalar or have {m} values")
    mult = qlinear_multiplier(x_scale.reshape(()), ws, y_scale.reshape(()))
    mult = mult.reshape((1, -1) + (1,) * (x.ndim - 2)) if ws.size > 1 else mult.reshape(())
    return requantize(acc, mult, y_zp.reshape(()), y_zp.dtype)


@register("Conv", check=_check_conv)
def conv(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Float Conv (float16 computed in float32, float32/float64 natively)."""
    if is_integer(x.dtype):
        raise node.unsupported("integer Conv is not an ONNX type (use ConvInteger)")
    kernel, strides, dil, group, pb, pe, out = _geometry(node, x, w)
    dt = compute_float(x.dtype)
    wmat = const_cached(node, "wmat", (1,), lambda: K.conv_weight_matrix(w.astype(dt), group))
    xp = K.pad_spatial(x, pb, pe, 0, dtype=dt)
    y = K.conv_core(xp, wmat, kernel, strides, dil, out)
    if b is not None:
        y += b.astype(dt).reshape((-1,) + (1,) * (x.ndim - 2))
    return y.astype(x.dtype, copy=False)
