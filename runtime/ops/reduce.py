"""Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd; ArgMax, ArgMin; CumSum (a running sum).

``axes`` is an attribute before ReduceSum-13 / the others' opset 18 and an optional input after;
with the input form, empty axes mean "all axes" unless ``noop_with_empty_axes=1`` (identity).
Integer sums wrap in the input dtype (ReduceSum output type = input type). Integer ReduceMean is the
exact sum divided by the count, truncated toward zero (onnxruntime and ``onnx.reference`` agree).
"""

from __future__ import annotations

import numpy as np

from ..dtypes import is_integer
from .registry import Node, register
from .elementwise import trunc_div

_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _axes(node: Node, x: np.ndarray, axes: np.ndarray | None) -> tuple[int, ...] | None:
    """Normalised axes, or None for 'identity' (noop_with_empty_axes with no axes)."""
    if node.opset >= _AXES_INPUT_SINCE.get(node.op_type, 18):
        ax = None if axes is None else [int(a) for a in axes.reshape(-1)]
    else:
        ax = node.attr("axes")
    if not ax:
        if node.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(x.ndim))
    return tuple(sorted({a + x.ndim if a < 0 else a for a in ax}))


def _reducer(kind: str):
    def fn(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        ax = _axes(node, x, axes)
        if ax is None:
            return x
        keep = bool(node.attr("keepdims", 1))
        if kind == "sum":
            return np.sum(x, axis=ax, dtype=x.dtype, keepdims=keep)
        if kind == "prod":
            return np.prod(x, axis=ax, dtype=x.dtype, keepdims=keep)
        if kind == "mean":
            if is_integer(x.dtype):
                n = int(np.prod([x.shape[a] for a in ax], dtype=np.int64))
                s = np.sum(x, axis=ax, dtype=np.int64, keepdims=keep)
                return trunc_div(s, np.int64(n)).astype(x.dtype)
            return np.mean(x, axis=ax, dtype=x.dtype, keepdims=keep)
        # max / min: the empty reduction gives the identity (-inf / +inf or dtype min / max)
        if x.dtype == np.bool_:
            init = kind == "min"
        elif is_integer(x.dtype):
            info = np.iinfo(x.dtype)
            init = info.min if kind == "max" else info.max
        else:
            init = -np.inf if kind == "max" else np.inf
        f = np.max if kind == "max" else np.min
        return f(x, axis=ax, keepdims=keep, initial=init)

    return fn


register("ReduceSum")(_reducer("sum"))
register("ReduceMean")(_reducer("mean"))
register("ReduceMax")(_reducer("max"))
register("ReduceMin")(_reducer("min"))
register("ReduceProd")(_reducer("prod"))


def _arg(largest: bool):
    def fn(node: Node, x: np.ndarray) -> np.ndarray:
        """int64 index of the first (``select_last_index=1``: the last) largest / smallest element along ``axis``
        (default 0); ``keepdims`` (default 1) keeps the axis with length 1. NaN counts as the extreme, as in
        numpy (a float model's container is never NaN)."""
        ax = int(node.attr("axis", 0))
        ax = ax + x.ndim if ax < 0 else ax
        last = bool(node.attr("select_last_index", 0))
        v = np.flip(x, ax) if last else x
        idx = (np.argmax if largest else np.argmin)(v, axis=ax).astype(np.int64)
        if last:
            idx = x.shape[ax] - 1 - idx
        return np.expand_dims(idx, ax) if node.attr("keepdims", 1) else idx

    return fn


register("ArgMax")(_arg(True))
register("ArgMin")(_arg(False))


@register("CumSum")
def cumsum(node: Node, x: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Running sum along ``axis`` (a scalar input), in the input dtype (integers wrap); ``exclusive=1`` leaves
    each element out of its own sum, ``reverse=1`` sums from the end (a padding mask's position ids in RoBERTa)."""
    ax = int(np.asarray(axis).reshape(-1)[0])
    ax = ax + x.ndim if ax < 0 else ax
    v = np.flip(x, ax) if node.attr("reverse", 0) else x
    out = np.cumsum(v, axis=ax, dtype=x.dtype)
    if node.attr("exclusive", 0):
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=ax)),
                              np.take(out, np.arange(out.shape[ax] - 1), axis=ax)], axis=ax)
    return np.flip(out, ax) if node.attr("reverse", 0) else out
