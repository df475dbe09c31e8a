"""MaxPool (any numeric type, optional Indices output), AveragePool, GlobalAveragePool,
GlobalMaxPool; N-D.

Geometry per MaxPool-22 / AveragePool-22: explicit ``pads`` or ``auto_pad``, ``dilations``,
``ceil_mode`` (a window that would start in the right padding is dropped). Padded positions never
win a max. AveragePool divides by the number of taps inside the input (``count_include_pad=0``) or
inside input + explicit pads (``count_include_pad=1``); taps in the extra ceil-mode region never
count. The loop is over kernel positions, each a strided view over every output pixel.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels as K
from ..dtypes import compute_float, is_integer
from .registry import Node, register


def _check_pool(node: Node) -> None:
    ap = node.attr("auto_pad", "NOTSET")
    if ap not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise node.unsupported(f"auto_pad={ap!r}")
    if node.attr("kernel_shape") is None:
        raise node.unsupported("missing kernel_shape")


def _geometry(node: Node, x: np.ndarray):
    nd = x.ndim - 2
    kernel = list(node.attr("kernel_shape"))
    if len(kernel) != nd:
        raise ValueError(f"kernel_shape {kernel} does not match input rank {x.ndim}")
    strides = list(node.attr("strides") or [1] * nd)
    dil = list(node.attr("dilations") or [1] * nd)
    pb, pe, out = K.window_geometry(
        x.shape[2:],
        kernel,
        strides,
        dil,
        node.attr("pads"),
        node.attr("auto_pad", "NOTSET"),
        bool(node.attr("ceil_mode", 0)),
    )
    ex = K.extra_end(x.shape[2:], kernel, strides, dil, pb, pe, out)
    return kernel, strides, dil, pb, pe, ex, out


def _lowest(dtype: np.dtype):
    if is_integer(dtype):
        return np.iinfo(dtype).min
    return -np.inf


@register("MaxPool", check=_check_pool)
def max_pool(node: Node, x: np.ndarray):
    kernel, strides, dil, pb, pe, ex, out = _geometry(node, x)
    fill = _lowest(x.dtype)
    xp = K.pad_spatial(x, pb, [e + a for e, a in zip(pe, ex)], fill)
    want_idx = node.n_outputs > 1
    if not want_idx:
        res = None
        for _, view in K.windows(xp, kernel, strides, dil, out):
            if res is None:
                res = view.copy()
            else:
                np.maximum(res, view, out=res)
        return res
    # with Indices: strict '>' keeps the first maximum in row-major kernel order (onnxruntime)
    sp = x.shape[2:]
    nd = len(sp)
    if node.attr("storage_order", 0):
        mult = [math.prod(sp[:i]) for i in range(nd)]  # column major
    else:
        mult = [math.prod(sp[i + 1 :]) for i in range(nd)]
    base = (np.arange(x.shape[0] * x.shape[1], dtype=np.int64) * math.prod(sp)).reshape(
        x.shape[:2] + (1,) * nd
    )
    res = np.full(x.shape[:2] + tuple(out), fill, dtype=x.dtype)
    idx = np.zeros(res.shape, dtype=np.int64)
    for offs, view in K.windows(xp, kernel, strides, dil, out):
        pos = 0
        for i in range(nd):
            coord = np.arange(out[i], dtype=np.int64) * strides[i] + offs[i] * dil[i] - pb[i]
            shape = [1] * nd
            shape[i] = out[i]
            pos = pos + (coord * mult[i]).reshape(shape)
        better = view > res
        res = np.where(better, view, res)
        idx = np.where(better, base + pos, idx)
    return res, idx


@register("AveragePool", check=_check_pool)
def average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    kernel, strides, dil, pb, pe, ex, out = _geometry(node, x)
    dt = compute_float(x.dtype)
    pe_all = [e + a for e, a in zip(pe, ex)]
    xp = K.pad_spatial(x, pb, pe_all, 0, dtype=dt)
    total = np.zeros(x.shape[:2] + tuple(out), dtype=dt)
    for _, view in K.windows(xp, kernel, strides, dil, out):
        total += view
    sp = x.shape[2:]
    if node.attr("count_include_pad", 0):
        inside = K.pad_spatial(np.ones(sp, dtype=dt), pb, pe, 1, dtype=dt)
        mask = K.pad_spatial(inside, [0] * len(sp), ex, 0, dtype=dt)
    else:
        mask = K.pad_spatial(np.ones(sp, dtype=dt), pb, pe_all, 0, dtype=dt)
    count = np.zeros(tuple(out), dtype=dt)
    for _, view in K.windows(mask, kernel, strides, dil, out):
        count += view
    return (total / count).astype(x.dtype, copy=False)


@register("GlobalAveragePool")
def global_average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    return np.mean(x, axis=axes, keepdims=True, dtype=x.dtype)


@register("GlobalMaxPool")
def global_max_pool(node: Node, x: np.ndarray) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    return np.max(x, axis=axes, keepdims=True)
