"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear and the QLinear requantization step.

QuantizeLinear (-10..-25): ``y = saturate(round(x / y_scale) + y_zero_point)``; the division is done
in the precision of ``y_scale`` (or of the ``precision`` attribute, opset 23+), rounding is half to
even (``np.rint``), saturation to the output type's range. Granularity from the scale's shape:
scalar (or one element) = per tensor, 1-D = per ``axis``, same rank as x = blocked (``block_size``).
Output type: ``y_zero_point``'s type, else ``output_dtype`` (21+), else uint8. Integer outputs
include int4/uint4/int2/uint2 (held as onnx's sub-byte dtypes). NaN maps to the type's minimum
(what onnxruntime's MLAS kernel gives; the spec leaves it undefined). Float8 outputs go through
``onnx.numpy_helper.saturate_cast`` when ``saturate=1``.

DequantizeLinear: ``y = (x - x_zero_point) * x_scale``; the subtraction is exact integer
arithmetic, its result is converted to the output type (``output_dtype``, else the scale's type)
and multiplied in that precision -- as onnxruntime computes it.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from ..dtypes import (
    FLOAT8_SATURATING,
    SUBBYTE_RANGES,
    int_range,
    is_integer,
    np_dtype,
    onnx_type,
    widen,
)
from .registry import Node, register

_INT_TYPES = {
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
    *SUBBYTE_RANGES,
}


def broadcast_param(
    p: np.ndarray, x_shape: tuple[int, ...], axis: int, block_size: int
) -> np.ndarray:
    """Shape a scale / zero point so that it broadcasts against ``x`` (Q/DQ granularity rules)."""
    p = np.asarray(p)
    if p.ndim == 0:
        return p
    if block_size:
        if p.ndim != len(x_shape):
            raise ValueError(f"blocked quantization needs rank-{len(x_shape)} scale, got {p.shape}")
        axis = axis + len(x_shape) if axis < 0 else axis
        rep = np.repeat(p, block_size, axis=axis)
        rep = np.take(rep, np.arange(x_shape[axis]), axis=axis)
        if rep.shape != tuple(x_shape):
            raise ValueError(f"scale shape {p.shape} does not block x shape {x_shape}")
        return rep
    if p.size == 1:
        return p.reshape(())
    if p.ndim != 1:
        raise ValueError(f"per-axis scale must be 1-D, got shape {p.shape}")
    axis = axis + len(x_shape) if axis < 0 else axis
    if p.shape[0] != x_shape[axis]:
        raise ValueError(f"scale has {p.shape[0]} values, axis {axis} of x has {x_shape[axis]}")
    shape = [1] * len(x_shape)
    shape[axis] = p.shape[0]
    return p.reshape(shape)


def saturate_int(q: np.ndarray, zp: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """``clip(q + zp)`` to ``dtype``'s range for already-rounded float ``q``; NaN -> minimum."""
    lo, hi = int_range(dtype)
    z = 0 if zp is None else widen(np.asarray(zp)).astype(np.float64)
    v = np.clip(q.astype(np.float64, copy=False) + z, lo, hi)
    v = np.where(np.isnan(v), lo, v)
    return v.astype(np.int64).astype(dtype)


def _axis_block(node: Node) -> tuple[int, int]:
    """A Q/DQ node's quantization axis (default 1) and block size (0: per tensor or per axis)."""
    return node.attr("axis", 1), node.attr("block_size", 0)


@register("QuantizeLinear")
def quantize_linear(
    node: Node, x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None = None
) -> np.ndarray:
    axis, block = _axis_block(node)
    if zp is not None:
        out_t = onnx_type(zp.dtype)
    else:
        out_t = node.attr("output_dtype", 0) or TensorProto.UINT8
    out_dtype = np_dtype(out_t)
    s = broadcast_param(scale, x.shape, axis, block)
    prec = np_dtype(node.attr("precision")) if node.attr("precision") else s.dtype
    if not np.issubdtype(prec, np.floating):  # e.g. float8e8m0 / bfloat16 scales
        prec = np.dtype(np.float32)
    q = np.divide(x.astype(prec, copy=False), s.astype(prec, copy=False))
    z = None if zp is None else broadcast_param(zp, x.shape, axis, block)
    if out_t in _INT_TYPES:
        return saturate_int(np.rint(q), z, out_dtype)
    if out_t in FLOAT8_SATURATING:
        if node.attr("saturate", 1):
            return numpy_helper.saturate_cast(q.astype(np.float32), out_dtype)
        return q.astype(np.float32).astype(out_dtype)
    # float4e2m1 / float6: onnx adds the (float) zero point and casts (saturating by design)
    if z is not None:
        q = q + z.astype(np.float32)
    return q.astype(np.float32).astype(out_dtype)


@register("DequantizeLinear")
def dequantize_linear(
    node: Node, x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None = None
) -> np.ndarray:
    axis, block = _axis_block(node)
    out_t = node.attr("output_dtype", 0)
    out_dtype = np_dtype(out_t) if out_t else scale.dtype
    calc = out_dtype if np.issubdtype(out_dtype, np.floating) else np.dtype(np.float32)
    s = broadcast_param(scale, x.shape, axis, block).astype(calc, copy=False)
    if is_integer(x.dtype):
        xi = widen(x).astype(np.int64)
        if zp is not None:
            xi = xi - widen(broadcast_param(zp, x.shape, axis, block)).astype(np.int64)
        d = xi.astype(calc)
    else:  # float8 / float4: zero point must be 0 and is ignored, as in the spec
        d = x.astype(np.float32).astype(calc)
    return (d * s).astype(out_dtype, copy=False)


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(node: Node, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """DynamicQuantizeLinear-11 (uint8), float32 throughout as onnxruntime computes it.

    scale = (max(0, max x) - min(0, min x)) / 255 (1/255 when that range is 0);
    zero_point = rint(clip(0 - min / scale, 0, 255)); y = saturate(rint(x / scale) + zero_point).
    """
    f32 = np.float32
    xmax = f32(max(f32(0), f32(x.max()))) if x.size else f32(0)
    xmin = f32(min(f32(0), f32(x.min()))) if x.size else f32(0)
    rng = f32(1) if xmax == xmin else f32(xmax - xmin)
    scale = f32(rng / f32(255))
    zp = np.rint(f32(np.clip(f32(0) - xmin / scale, 0, 255)))
    y = saturate_int(np.rint(x / scale), np.asarray(zp), np.dtype(np.uint8))
    return y, np.array(scale, dtype=f32), np.array(zp, dtype=np.uint8)


def requantize(
    acc: np.ndarray, multiplier: np.ndarray, y_zp: np.ndarray | None, out_dtype: np.dtype
) -> np.ndarray:
    """``saturate(round(acc * multiplier) + y_zp)`` the way onnxruntime's MLAS does it.

    QLinearConv/QLinearMatMul leave the requantization precision open; onnxruntime converts the
    int32 accumulator to float32, multiplies by the float32 multiplier
    ``x_scale * w_scale / y_scale`` (computed in float32 in that order), rounds half to even,
    adds the zero point and saturates. We do exactly that so results match bit for bit.
    """
    v = acc.astype(np.float32) * multiplier.astype(np.float32, copy=False)
    return saturate_int(np.rint(v), y_zp, out_dtype)


def qlinear_multiplier(a_scale: np.ndarray, b_scale: np.ndarray, y_scale: np.ndarray) -> np.ndarray:
    """``(a_scale * b_scale) / y_scale`` in the scales' own precision, then float32."""
    m = (a_scale * b_scale) / y_scale
    return m.astype(np.float32)
