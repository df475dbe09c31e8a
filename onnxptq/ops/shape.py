"""Tensor shape and data-movement ops in torch (shape arithmetic runs on int64 tensors)."""

from __future__ import annotations

import math

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
]


@op("Flatten")
def _flatten(i, a):
    x = i[0]
    axis = a.get("axis", 1) % max(x.dim(), 1) if x.dim() else 0
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
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise NotImplementedError("Slice with negative steps")
        dim = x.shape[ax]
        s = max(0, min(dim, s + dim if s < 0 else s))
        e = max(0, min(dim, e + dim if e < 0 else e))
        idx[ax] = slice(s, e, st)
    return [x[tuple(idx)]]


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


@op("Pad")
def _pad(i, a):
    x = i[0]
    pads = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("pads")
    value = float(i[2]) if len(i) > 2 and i[2] is not None and i[2].numel() else a.get("value", 0.0)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
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


@op("Resize", "Upsample")
def _resize(i, a):
    x = i[0]
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    sizes = _ints(i[3]) if len(i) > 3 and i[3] is not None and i[3].numel() else None
    scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else (i[1] if len(i) == 2 else None)
    if mode != "nearest":
        raise NotImplementedError(f"Resize mode {mode}")
    if sizes is not None:
        return [F.interpolate(x, size=sizes[2:], mode="nearest")]
    return [F.interpolate(x, scale_factor=[float(s) for s in scales[2:]], mode="nearest")]
