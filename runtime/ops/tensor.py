"""Shape and data-movement ops: Reshape, Flatten, Transpose, Concat, Split, Slice, Squeeze,
Unsqueeze, Gather, Pad, Shape, Size, Constant, ConstantOfShape, Expand, Tile, Range.

Ops whose arguments moved from attributes to inputs are implemented for both forms, switched on the
node's opset (Reshape-5, Slice-10, Pad-11, Split-13, Squeeze/Unsqueeze-13).
"""

from __future__ import annotations

import math

import numpy as np

from ..dtypes import np_dtype
from .registry import Node, register


def _ints(a: np.ndarray | list | None) -> list[int] | None:
    if a is None:
        return None
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


# ----------------------------------------------------------------------------------- shapes


@register("Reshape")
def reshape(node: Node, x: np.ndarray, shape: np.ndarray | None = None) -> np.ndarray:
    """Reshape-5+: 0 copies the input dim (unless allowzero=1), -1 is inferred."""
    target = _ints(shape) if node.opset >= 5 else list(node.attr("shape"))
    allowzero = node.attr("allowzero", 0)
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            out.append(x.shape[i])
        else:
            out.append(d)
    return x.reshape(out)


@register("Flatten")
def flatten(node: Node, x: np.ndarray) -> np.ndarray:
    axis = node.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Transpose")
def transpose(node: Node, x: np.ndarray) -> np.ndarray:
    perm = node.attr("perm")
    return np.transpose(x, perm if perm is not None else None)


@register("Squeeze")
def squeeze(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    ax = _ints(axes) if node.opset >= 13 else node.attr("axes")
    if ax is None or len(ax) == 0:
        return x.reshape([d for d in x.shape if d != 1])
    ax = sorted({_axis(a, x.ndim) for a in ax})
    for a in ax:
        if x.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of size {x.shape[a]}")
    return np.squeeze(x, axis=tuple(ax))


@register("Unsqueeze")
def unsqueeze(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    ax = _ints(axes) if node.opset >= 13 else node.attr("axes")
    rank = x.ndim + len(ax)
    ax = sorted(_axis(a, rank) for a in ax)
    if len(set(ax)) != len(ax):
        raise ValueError(f"duplicate axes {ax}")
    shape = list(x.shape)
    for a in ax:
        shape.insert(a, 1)
    return x.reshape(shape)


@register("Shape")
def shape_(node: Node, x: np.ndarray) -> np.ndarray:
    """Shape-15: optional start/end, clamped like Python slicing."""
    dims = list(x.shape)
    r = len(dims)
    start = node.attr("start", 0)
    end = node.attr("end", r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    return np.array(dims[start:end], dtype=np.int64)


@register("Size")
def size_(node: Node, x: np.ndarray) -> np.ndarray:
    return np.array(x.size, dtype=np.int64)


# ------------------------------------------------------------------------------- constants


def _check_constant(node: Node) -> None:
    keys = set(node.attrs)
    ok = {"value", "value_float", "value_floats", "value_int", "value_ints"}
    if not keys or not keys <= ok:
        raise node.unsupported(f"Constant with attributes {sorted(keys)} (strings/sparse unsupported)")


@register("Constant", check=_check_constant)
def constant(node: Node) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "value_float" in a:
        return np.array(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], dtype=np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], dtype=np.int64)
    return np.array(a["value_ints"], dtype=np.int64)


@register("ConstantOfShape")
def constant_of_shape(node: Node, shape: np.ndarray) -> np.ndarray:
    value = node.attr("value")
    if value is None:
        value = np.zeros(1, dtype=np.float32)
    value = np.asarray(value)
    return np.full(_ints(shape), value.reshape(-1)[0], dtype=value.dtype)


@register("Range")
def range_(node: Node, start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Range-11: n = max(ceil((limit - start) / delta), 0); out[i] = start + i * delta."""
    s, l_, d = start.reshape(()), limit.reshape(()), delta.reshape(())
    if np.issubdtype(s.dtype, np.integer):
        n = max(-((int(s) - int(l_)) // int(d)), 0)
    else:
        n = max(int(math.ceil((float(l_) - float(s)) / float(d))), 0)
    return (s + np.arange(n).astype(s.dtype) * d).astype(s.dtype)


# ------------------------------------------------------------------------------- data movement


@register("Concat")
def concat(node: Node, *xs: np.ndarray) -> np.ndarray:
    return np.concatenate(xs, axis=node.attr("axis"))


@register("Split")
def split(node: Node, x: np.ndarray, split_: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Split-2/11 (attribute), -13 (input), -18 (num_outputs: ceil-sized chunks, last smaller)."""
    axis = _axis(node.attr("axis", 0), x.ndim)
    sizes = _ints(split_) if node.opset >= 13 else node.attr("split")
    n_out = len(node.outputs)
    dim = x.shape[axis]
    if sizes is None or len(sizes) == 0:
        num = node.attr("num_outputs")
        if num is not None:
            chunk = -(-dim // num)
            sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(num)]
        else:
            if dim % n_out:
                raise ValueError(f"cannot split dim {dim} evenly into {n_out} outputs")
            sizes = [dim // n_out] * n_out
    if sum(sizes) != dim:
        raise ValueError(f"split sizes {sizes} do not sum to {dim}")
    idx = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, idx, axis=axis))


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """Slice-13 clamping rules turned into a Python slice."""
    if step == 0:
        raise ValueError("slice step cannot be 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
        return slice(start, end, step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)


@register("Slice")
def slice_(
    node: Node,
    x: np.ndarray,
    starts: np.ndarray | None = None,
    ends: np.ndarray | None = None,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    if node.opset < 10:
        st, en, ax, sp = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        st, en, ax, sp = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
    if ax is None:
        ax = list(range(len(st)))
    if sp is None:
        sp = [1] * len(st)
    index = [slice(None)] * x.ndim
    for s, e, a, p in zip(st, en, ax, sp):
        a = _axis(a, x.ndim)
        index[a] = slice_bounds(s, e, p, x.shape[a])
    return x[tuple(index)]


@register("Gather")
def gather(node: Node, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Gather-13: negative indices count from the end; out of range is an error."""
    axis = _axis(node.attr("axis", 0), data.ndim)
    n = data.shape[axis]
    idx = indices.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"Gather index out of range [-{n}, {n - 1}]")
    return np.take(data, idx, axis=axis)


@register("GatherElements")
def gather_elements(node: Node, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    axis = _axis(node.attr("axis", 0), data.ndim)
    idx = indices.astype(np.int64)
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    return np.take_along_axis(data, idx, axis=axis)


@register("Expand")
def expand(node: Node, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    return np.broadcast_to(x, out).copy()


@register("Tile")
def tile(node: Node, x: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    return np.tile(x, _ints(repeats))


# ------------------------------------------------------------------------------------- Pad


def _check_pad(node: Node) -> None:
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise node.unsupported(f"mode {mode!r}")


@register("Pad", check=_check_pad)
def pad(
    node: Node,
    x: np.ndarray,
    pads: np.ndarray | None = None,
    value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
) -> np.ndarray:
    """Pad-2/11/13/18/19: constant/reflect/edge/wrap; negative pads crop."""
    mode = node.attr("mode", "constant")
    r = x.ndim
    if node.opset < 11:
        p = list(node.attr("pads"))
        cval = node.attr("value", 0.0)
        ax = list(range(r))
    else:
        p = _ints(pads)
        cval = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
        ax = [_axis(a, r) for a in _ints(axes)] if axes is not None else list(range(r))
    n = len(ax)
    if len(p) != 2 * n:
        raise ValueError(f"pads has {len(p)} values, expected {2 * n}")
    begin = [0] * r
    end = [0] * r
    for i, a in enumerate(ax):
        begin[a] = p[i]
        end[a] = p[i + n]
    # negative pads crop first
    crop = tuple(
        slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begin, end))
    )
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if not any(b or e for b, e in width):
        return x.copy()
    if mode == "constant":
        out = np.full(tuple(d + b + e for d, (b, e) in zip(x.shape, width)), cval, dtype=x.dtype)
        out[tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, width))] = x
        return out
    np_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    return np.pad(x, width, mode=np_mode)


@register("EyeLike")
def eye_like(node: Node, x: np.ndarray) -> np.ndarray:
    dt = node.attr("dtype")
    dtype = np_dtype(dt) if dt is not None else x.dtype
    return np.eye(x.shape[0], x.shape[1], k=node.attr("k", 0), dtype=dtype)
