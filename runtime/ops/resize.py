"""Resize with ``mode="nearest"`` (any dtype; it only moves values). Other modes are unsupported.

Resize-11/13/18/19: each output coordinate is mapped back with ``coordinate_transformation_mode``
(half_pixel default, asymmetric, align_corners, pytorch_half_pixel, tf_half_pixel_for_nn,
half_pixel_symmetric, tf_crop_and_resize), rounded with ``nearest_mode`` (round_prefer_floor
default, round_prefer_ceil, floor, ceil) and clamped to the input. Output size is
floor(in * scale), or ``sizes`` (with ``keep_aspect_ratio_policy`` and ``axes``, opset 18).
Coordinates are computed in float64, as ``onnx.reference`` does.
Resize-10 follows onnxruntime: asymmetric coordinates, truncation when upsampling and ceil when
downsampling.
"""

from __future__ import annotations

import numpy as np

from .registry import Node, register

_MODES = {
    "half_pixel",
    "asymmetric",
    "align_corners",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "half_pixel_symmetric",
    "tf_crop_and_resize",
}


def _check_resize(node: Node) -> None:
    mode = node.attr("mode", "nearest")
    if mode != "nearest":
        raise node.unsupported(f"mode={mode!r} (only 'nearest' is implemented)")
    ct = node.attr("coordinate_transformation_mode", "half_pixel")
    if ct not in _MODES:
        raise node.unsupported(f"coordinate_transformation_mode={ct!r}")
    nm = node.attr("nearest_mode", "round_prefer_floor")
    if nm not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        raise node.unsupported(f"nearest_mode={nm!r}")
    if node.attr("keep_aspect_ratio_policy", "stretch") not in ("stretch", "not_larger", "not_smaller"):
        raise node.unsupported("keep_aspect_ratio_policy")


def _round(x: np.ndarray, mode: str) -> np.ndarray:
    fl = np.floor(x)
    frac = x - fl
    if mode == "round_prefer_floor":
        up = frac > 0.5
    elif mode == "round_prefer_ceil":
        up = frac >= 0.5
    elif mode == "floor":
        up = np.zeros(x.shape, bool)
    else:
        up = frac > 0
    return (fl + up).astype(np.int64)


def _source_index(
    node: Node, n_in: int, n_out: int, scale: float, roi: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.arange(n_out, dtype=np.float64)
    ct = node.attr("coordinate_transformation_mode", "half_pixel")
    out_w = scale * n_in
    extrap = None
    if ct == "asymmetric":
        x = y / scale
    elif ct == "align_corners":
        x = np.zeros(n_out) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    elif ct == "pytorch_half_pixel":
        x = np.full(n_out, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ct == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    elif ct == "half_pixel_symmetric":
        adj = n_out / out_w
        x = (n_in / 2) * (1 - adj) + (y + 0.5) / scale - 0.5
    elif ct == "tf_crop_and_resize":
        r0, r1 = roi if roi is not None else (0.0, 1.0)
        if out_w == 1:
            x = np.full(n_out, (r1 - r0) * (n_in - 1) / 2)
        else:
            x = y * (r1 - r0) * (n_in - 1) / (out_w - 1)
        x = x + r0 * (n_in - 1)
        extrap = (x < 0) | (x > n_in - 1)
    else:  # half_pixel
        x = (y + 0.5) / scale - 0.5
    idx = _round(x, node.attr("nearest_mode", "round_prefer_floor"))
    return np.clip(idx, 0, n_in - 1), extrap


@register("Resize", check=_check_resize)
def resize(
    node: Node,
    x: np.ndarray,
    roi: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    r = x.ndim
    if node.opset < 11:  # Resize-10: (X, scales)
        sc = [float(s) for s in roi.reshape(-1)]
        out = [int(np.floor(n * s)) for n, s in zip(x.shape, sc)]
        y = x
        for a in range(r):
            if out[a] == x.shape[a] and sc[a] == 1:
                continue
            pos = np.arange(out[a], dtype=np.float64) / sc[a]
            idx = np.ceil(pos) if sc[a] < 1 else np.floor(pos)
            y = np.take(y, np.clip(idx.astype(np.int64), 0, x.shape[a] - 1), axis=a)
        return y
    axes = node.attr("axes")
    axes = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    roi_v = None if roi is None or roi.size == 0 else [float(v) for v in roi.reshape(-1)]
    if scales is not None and scales.size:
        sc = [float(s) for s in scales.reshape(-1)]
        if len(sc) != len(axes):
            raise ValueError(f"{len(sc)} scales for {len(axes)} axes")
        scale = dict(zip(axes, sc))
        out = {a: int(np.floor(x.shape[a] * scale[a])) for a in axes}
    elif sizes is not None and sizes.size:
        sz = [int(s) for s in sizes.reshape(-1)]
        if len(sz) != len(axes):
            raise ValueError(f"{len(sz)} sizes for {len(axes)} axes")
        scale = {a: s / x.shape[a] for a, s in zip(axes, sz)}
        out = dict(zip(axes, sz))
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = (min if policy == "not_larger" else max)(scale.values())
            scale = {a: s for a in axes}
            out = {a: int(s * x.shape[a] + 0.5) for a in axes}
    else:
        raise ValueError("Resize needs scales or sizes")
    naxes = len(axes)
    y = x
    for i, a in enumerate(axes):
        a_roi = None
        if roi_v is not None:
            if len(roi_v) == 2 * naxes:
                a_roi = (roi_v[i], roi_v[naxes + i])
            elif len(roi_v) == 2 * r:
                a_roi = (roi_v[a], roi_v[r + a])
        ident = out[a] == x.shape[a] and scale[a] == 1.0
        ct = node.attr("coordinate_transformation_mode", "half_pixel")
        if ident and (ct != "tf_crop_and_resize" or a_roi in (None, (0.0, 1.0))):
            continue
        idx, extrap = _source_index(node, x.shape[a], out[a], scale[a], a_roi)
        y = np.take(y, idx, axis=a)
        if extrap is not None and extrap.any():
            shape = [1] * r
            shape[a] = out[a]
            ev = np.asarray(node.attr("extrapolation_value", 0.0)).astype(x.dtype)
            y = np.where(extrap.reshape(shape), ev, y)
    return y
