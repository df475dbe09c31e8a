"""Tensor shape and data-movement ops in torch (shape arithmetic runs on int64 tensors)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import OPS, _ints, op, torch_pad

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    ("concat", "merge", "concat", ("Concat",)),
    ("data movement", "carry", "carry",
     ("Reshape", "Flatten", "Transpose", "Pad", "Slice", "Split", "Squeeze", "Unsqueeze", "Resize", "Expand", "Tile",
      "Gather")),
    ("data movement without integer form", "carry", None, ("Upsample",)),
    ("shape arithmetic", "island", None, ("Shape", "Size", "ConstantOfShape", "Range")),
    # samples at computed coordinates (deformable attention: RT-DETR, Deformable DETR): new values, no integer form
    ("sampling", "island", None, ("GridSample",)),
]


def _resize_mode(attrs: dict) -> str:
    mode = attrs.get("mode", b"nearest")
    return mode.decode() if isinstance(mode, bytes) else mode


def _resize_role(attrs: dict) -> str:
    """Nearest resizing moves values (carry: the input's quant point); linear and cubic make new values, cubic
    beyond the input's range (island: their own quant point)."""
    return "carry" if _resize_mode(attrs) == "nearest" else "island"


def _resize_lowering(attrs: dict) -> str | None:
    """Nearest: moves integers (carry); linear: a weighted average of its inputs (``avgpool``: export/intplan.py
    ``resize_linear``); cubic: no exact integer form."""
    return {"nearest": "carry", "linear": "avgpool"}.get(_resize_mode(attrs))


NODE_ROLES = {"Resize": _resize_role, "Upsample": _resize_role}
NODE_LOWERINGS = {"Resize": _resize_lowering}


@op("Flatten")
def _flatten(i, a):
    x = i[0]
    axis = int(a.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis  # in [-rank, rank]: axis = rank gives (numel, 1)
    lead = math.prod(x.shape[:axis]) if axis else 1
    return [x.reshape(lead, -1)]


@op("Reshape")
def _reshape(i, a):
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Transpose")
def _transpose(i, a):
    perm = a.get("perm") or list(reversed(range(i[0].dim())))
    return [i[0].permute(*perm)]


@op("Squeeze")
def _squeeze(i, a):
    axes = a.get("axes") or (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    x = i[0]
    if axes is None:
        return [x.squeeze()]
    for d in sorted((d % x.dim() for d in axes), reverse=True):
        x = x.squeeze(d)
    return [x]


@op("Unsqueeze")
def _unsqueeze(i, a):
    axes = a.get("axes") or _ints(i[1])
    x = i[0]
    rank = x.dim() + len(axes)
    for d in sorted(d % rank for d in axes):
        x = x.unsqueeze(d)
    return [x]


@op("Concat")
def _concat(i, a):
    return [torch.cat([t for t in i if t is not None], dim=a["axis"])]


@op("Split")
def _split(i, a):
    x = i[0]
    axis = a.get("axis", 0)
    split = a.get("split") or (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    if split is None:
        n = a.get("num_outputs") or a["_num_outputs"]
        size = math.ceil(x.shape[axis] / n)
        split = [size] * (n - 1) + [x.shape[axis] - size * (n - 1)]
    return list(torch.split(x, split, dim=axis))


@op("Slice")
def _slice(i, a):
    x = i[0]
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        dim = x.shape[ax]
        s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
        if st > 0:
            idx[ax] = slice(max(0, min(dim, s)), max(0, min(dim, e)), st)
        else:  # ONNX clamps starts to [0, dim - 1] and ends to [-1, dim - 1] for negative steps
            rng = range(max(0, min(dim - 1, s)), max(-1, min(dim - 1, e)), st)
            flips.append((ax, torch.tensor(list(rng), dtype=torch.long, device=x.device)))
    x = x[tuple(idx)]
    for ax, ind in flips:
        x = torch.index_select(x, ax, ind)
    return [x]


@op("Gather")
def _gather(i, a):
    x, ind = i
    axis = a.get("axis", 0) % x.dim()
    ind = ind.long()
    ind = torch.where(ind < 0, ind + x.shape[axis], ind)
    out = torch.index_select(x, axis, ind.reshape(-1))
    return [out.reshape(tuple(x.shape[:axis]) + tuple(ind.shape) + tuple(x.shape[axis + 1:]))]


@op("Shape")
def _shape(i, a):
    shape = torch.tensor(list(i[0].shape), dtype=torch.int64)
    start, end = a.get("start", 0), a.get("end")
    return [shape[start:end]]


OPS["Size"] = lambda i, a: [torch.tensor(i[0].numel(), dtype=torch.int64)]
OPS["ConstantOfShape"] = lambda i, a: [torch.full(_ints(i[0]), float(a["value"].reshape(-1)[0]) if "value" in a else 0.0,
                                                  dtype=torch.as_tensor(a["value"]).dtype if "value" in a else torch.float32)]


@op("Expand")
def _expand(i, a):
    shape = _ints(i[1])
    x = i[0]
    out_shape = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return [x.expand(out_shape)]


@op("Tile")
def _tile(i, a):
    return [i[0].repeat(*_ints(i[1]))]


@op("Range")
def _range(i, a):
    return [torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype)]


def pad_mode(attrs: dict) -> str:
    mode = attrs.get("mode", b"constant")
    return mode.decode() if isinstance(mode, bytes) else mode


def pad_constant(attrs: dict, value=None) -> float | None:
    """The value a constant-mode Pad writes: its input 2 (opset >= 11; a tensor or array, may be empty) or its
    ``value`` attribute (earlier opsets), default 0; None for the reflect and edge modes."""
    if pad_mode(attrs) != "constant":
        return None
    if value is not None and len(value.reshape(-1)):
        return float(value.reshape(-1)[0])
    return float(attrs.get("value", 0.0))


@op("Pad")
def _pad(i, a):
    x = i[0]
    pads = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("pads")
    value = pad_constant(a, i[2] if len(i) > 2 else None)
    mode = pad_mode(a)
    n = x.dim()
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(n))
    full = [0] * (2 * n)
    for k, ax in enumerate(axes):
        full[ax % n], full[n + ax % n] = pads[k], pads[len(axes) + k]
    pad_arg = torch_pad(full)
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    if torch_mode == "constant":
        return [F.pad(x, pad_arg, value=value)]
    while pad_arg and pad_arg[-1] == 0 and pad_arg[-2] == 0:
        pad_arg = pad_arg[:-2]
    return [F.pad(x, pad_arg, mode=torch_mode)]


def _s(a, key: str, default: str) -> str:
    v = a.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _source_coords(mode: str, n_out: int, n_in: int, scale, roi_lo, roi_hi) -> np.ndarray:
    """Source coordinate of each output index along one axis, float32 as onnxruntime computes it."""
    f = np.float32
    xr, sc, lo, li = np.arange(n_out, dtype=f), f(scale), f(n_out), f(n_in)
    if mode == "half_pixel":
        return (xr + f(0.5)) / sc - f(0.5)
    if mode == "asymmetric":
        return xr / sc
    if mode == "pytorch_half_pixel":
        return (xr + f(0.5)) / sc - f(0.5) if n_out > 1 else np.zeros(n_out, f)
    if mode == "tf_half_pixel_for_nn":
        return (xr + f(0.5)) / sc
    if mode == "align_corners":
        return xr * (li - f(1)) / (lo - f(1)) if n_out > 1 else np.zeros(n_out, f)
    if mode == "half_pixel_symmetric":  # the offset in float32, the rest in double (as onnxruntime)
        offset = li / f(2) * (f(1) - lo / (sc * li))
        return (np.float64(offset) + (xr.astype(np.float64) + 0.5) / np.float64(sc) - 0.5).astype(f)
    if mode == "tf_crop_and_resize":
        lo_, hi_ = f(roi_lo), f(roi_hi)
        if n_out > 1:
            return lo_ * (li - f(1)) + (xr * (hi_ - lo_) * (li - f(1))) / (lo - f(1))
        return np.full(n_out, f(0.5 * (lo_ + hi_) * (li - 1)), f)
    raise NotImplementedError(f"Resize coordinate_transformation_mode {mode}")


def _round_away(c: np.ndarray) -> np.ndarray:
    """std::round: to nearest, halves away from zero."""
    t = np.trunc(c)
    return t + np.sign(c) * (np.abs(c - t) >= 0.5)


def _nearest_index(c: np.ndarray, mode: str, downsampling: bool) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.where(c == np.trunc(c) + np.float32(0.5), np.floor(c), _round_away(c))
    if mode == "round_prefer_ceil":
        return _round_away(c)
    if mode == "floor":
        return np.floor(c)
    if mode == "ceil":
        return np.ceil(c)
    if mode == "simple":  # Upsample and Resize-10
        return np.ceil(c) if downsampling else np.trunc(c)
    raise NotImplementedError(f"Resize nearest_mode {mode}")


def _cubic_coeffs(s: np.ndarray, A: float) -> np.ndarray:
    """Keys cubic weights of the taps at floor - 1 .. floor + 2 for fraction s, (n, 4) float32."""
    f = np.float32
    A, s = f(A), np.abs(s).astype(f)
    t0, t2, t3 = s + f(1), f(1) - s, f(2) - s
    return np.stack([((A * t0 - f(5) * A) * t0 + f(8) * A) * t0 - f(4) * A,
                     ((A + f(2)) * s - (A + f(3))) * s * s + f(1),
                     ((A + f(2)) * t2 - (A + f(3))) * t2 * t2 + f(1),
                     ((A * t3 - f(5) * A) * t3 + f(8) * A) * t3 - f(4) * A], axis=1)


def _take(x: torch.Tensor, d: int, idx: np.ndarray) -> torch.Tensor:
    return torch.index_select(x, d, torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(x.device))


def _along(w: np.ndarray, x: torch.Tensor, d: int) -> torch.Tensor:
    """Per-index weights w (float32) shaped to broadcast along axis d of x."""
    shape = [1] * x.dim()
    shape[d] = -1
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(x.device, x.dtype).reshape(shape)


def _antialias_weights(c: np.ndarray, n_in: int, scale, mode: str, A: float, exclude: bool) -> np.ndarray:
    """(n_out, n_in) float32 weights of onnxruntime's antialiased (Pillow-style) linear or cubic filter, whose
    support widens by 1 / scale when downsampling; taps outside the input fold onto the edges, or are dropped
    with exclude_outside, and each row is normalized to sum 1."""
    f = np.float32
    A = f(A)

    def filt(t):
        t = abs(t)
        if mode == "linear":
            return f(1) - t if t < 1 else f(0)
        if t < 1:
            return ((A + f(2)) * t - (A + f(3))) * t * t + f(1)
        return (((t - f(5)) * t + f(8)) * t - f(4)) * A if t < 2 else f(0)

    sc = f(1) / f(scale)
    support = f(1 if mode == "linear" else 2) * (sc if sc >= 1 else f(1))
    inv = f(1) / sc if sc >= 1 else f(1)
    w = np.zeros((len(c), n_in), f)
    for i, ci in enumerate(c):
        center = f(0.5) + f(ci)
        lo, hi = int(np.floor(center - support + f(0.5))), int(np.floor(center + support + f(0.5)))
        if exclude:
            lo, hi = max(lo, 0), min(hi, n_in)
        total = f(0)
        for k in range(lo, hi):
            v = filt((f(k) - center + f(0.5)) * inv)
            w[i, min(max(k, 0), n_in - 1)] += v
            total += v
        w[i] *= f(1) / total if total != 0 else f(1)
    return w


def _resize_axis(x: torch.Tensor, d: int, n_out: int, scale, roi_lo, roi_hi, a: dict, mode: str,
                 ctm: str, nearest: str) -> tuple[torch.Tensor, np.ndarray | None]:
    """x resized along axis d, and the mask of output indices outside the input (tf_crop_and_resize) or None."""
    n_in = x.shape[d]
    antialias = bool(a.get("antialias", 0)) and mode in ("linear", "cubic")
    if np.float32(scale) == 1 or (antialias and n_out == n_in):  # onnxruntime copies such an axis
        return x, None
    c = _source_coords(ctm, n_out, n_in, scale, roi_lo, roi_hi)
    outside = ((c < 0) | (c > n_in - 1)) if ctm == "tf_crop_and_resize" else None
    if antialias:
        w = _antialias_weights(c, n_in, scale, mode, a.get("cubic_coeff_a", -0.75), bool(a.get("exclude_outside", 0)))
        y = torch.movedim(x, d, -1) @ torch.from_numpy(w.T.copy()).to(x.device, x.dtype)
        return torch.movedim(y, -1, d), outside
    if mode == "nearest":
        return _take(x, d, np.clip(_nearest_index(c, nearest, np.float32(scale) < 1), 0, n_in - 1)), outside
    if mode == "linear":
        cc = np.clip(c, 0, n_in - 1).astype(np.float32)
        i1 = np.minimum(cc.astype(np.int64), n_in - 1)
        i2 = np.minimum(i1 + 1, n_in - 1)
        w1, w2 = np.abs(cc - i2.astype(np.float32)), np.abs(cc - i1.astype(np.float32))
        w1[i1 == i2], w2[i1 == i2] = 0.5, 0.5
        return _take(x, d, i1) * _along(w1, x, d) + _take(x, d, i2) * _along(w2, x, d), outside
    if mode == "cubic":
        base = np.floor(c).astype(np.int64)
        coeffs = _cubic_coeffs(c - np.floor(c).astype(np.float32), a.get("cubic_coeff_a", -0.75))
        taps = base[:, None] + np.arange(-1, 3)
        if a.get("exclude_outside", 0):
            coeffs = np.where((taps < 0) | (taps >= n_in), np.float32(0), coeffs)
            coeffs = coeffs / coeffs.sum(axis=1, keepdims=True, dtype=np.float32)
        taps = np.clip(taps, 0, n_in - 1)
        y = None
        for k in range(4):
            t = _take(x, d, taps[:, k]) * _along(coeffs[:, k], x, d)
            y = t if y is None else y + t
        return y, outside
    raise NotImplementedError(f"Resize mode {mode}")


def _resize_run(x: torch.Tensor, scales: list, sizes: list[int], roi: list, a: dict, legacy: bool) -> torch.Tensor:
    """Separable resize with per-axis scales (float32) and output sizes over all axes of x."""
    mode = _s(a, "mode", "nearest")
    ctm = "asymmetric" if legacy else _s(a, "coordinate_transformation_mode", "half_pixel")
    nearest = "simple" if legacy else _s(a, "nearest_mode", "round_prefer_floor")
    nd = x.dim()
    if list(sizes) == list(x.shape):  # onnxruntime copies the input when the shape is unchanged, whatever the scales
        return x
    masks = []
    # onnxruntime's cubic runs along the last axis first; the order matters only in the last bit
    for d in reversed(range(nd)):
        x, m = _resize_axis(x, d, sizes[d], scales[d], roi[d], roi[nd + d], a, mode, ctm, nearest)
        if m is not None:
            shape = [1] * nd
            shape[d] = -1
            masks.append(torch.from_numpy(m).to(x.device).reshape(shape))
    if masks:
        out = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        for m in masks:
            out = out | m
        x = torch.where(out, torch.tensor(a.get("extrapolation_value", 0.0), dtype=x.dtype, device=x.device), x)
    return x


def _present(i, k):
    return len(i) > k and i[k] is not None and i[k].numel() > 0


@op("Resize")
def _resize(i, a):
    """ONNX Resize (opsets 10-19) as onnxruntime computes it: nearest, linear and cubic (antialias too), every
    coordinate transformation mode, scales or sizes, axes and keep_aspect_ratio_policy. Two inputs: Resize-10."""
    x = i[0]
    nd = x.dim()
    if len(i) == 2:
        return _upsample([x, i[1]], a)
    axes = [d % nd for d in a.get("axes", range(nd))]
    scales = [1.0] * nd
    roi = [0.0] * nd + [1.0] * nd
    if _present(i, 1):
        r = i[1].double().tolist()
        for k, d in enumerate(axes):
            roi[d], roi[nd + d] = r[k], r[len(axes) + k]
    sizes = list(x.shape)
    if _present(i, 3):
        want = _ints(i[3])
        policy = _s(a, "keep_aspect_ratio_policy", "stretch")
        f = np.float32
        ratios = [f(want[k]) / f(x.shape[d]) for k, d in enumerate(axes)]
        if policy != "stretch":
            r = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [r] * len(axes)
            want = [int(np.floor(f(r) * f(x.shape[d]) + f(0.5))) for d in axes]
        for k, d in enumerate(axes):
            scales[d], sizes[d] = ratios[k], want[k]
    else:
        s = i[2].float().tolist()
        for k, d in enumerate(axes):
            scales[d] = np.float32(s[k])
            sizes[d] = int(np.float32(x.shape[d]) * np.float32(s[k]))
    return [_resize_run(x, scales, sizes, roi, a, legacy=False)]


@op("Upsample")
def _upsample(i, a):
    """Upsample (opsets 7-9) and Resize-10: asymmetric coordinates, nearest truncates (ceil when downsampling)."""
    x = i[0]
    s = [np.float32(v) for v in (i[1].float().tolist() if len(i) > 1 and i[1] is not None else a["scales"])]
    sizes = [int(np.float32(n) * v) for n, v in zip(x.shape, s)]
    return [_resize_run(x, s, sizes, [0.0] * x.dim() + [1.0] * x.dim(), a, legacy=True)]


_GRID_MODES = {"linear": "bilinear", "cubic": "bicubic"}  # opset 20 names -> torch's (opset 16 uses torch's)


@op("GridSample")
def _grid_sample(i, a):
    """GridSample-16/20 on 4-D input as torch's ``grid_sample`` computes it (ONNX took its definition from it):
    mode bilinear / linear, nearest (halves to even, as torch and onnxruntime round), bicubic / cubic;
    padding_mode zeros / border / reflection; align_corners. 5-D input (opset 20) is refused: torch has no
    5-D bicubic, and no model seen uses it."""
    x, grid = i
    if x.dim() != 4:
        raise NotImplementedError(f"GridSample of a {x.dim()}-D input (4-D only)")
    mode = _s(a, "mode", "bilinear")
    return [F.grid_sample(x, grid.to(x.dtype), mode=_GRID_MODES.get(mode, mode),
                          padding_mode=_s(a, "padding_mode", "zeros"), align_corners=bool(a.get("align_corners", 0)))]
