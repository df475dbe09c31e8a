"""Pooling and reductions in torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import OPS, _ints, op, torch_pad

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    ("average pools", "merge", "avgpool", ("GlobalAveragePool", "AveragePool", "ReduceMean")),
    ("max pools", "carry", "carry", ("MaxPool", "GlobalMaxPool")),
    # an integer sum of the zero-point-free inputs, requantized: an average pool whose divisor is 1
    ("sums", "merge", "avgpool", ("ReduceSum",)),
    # select one input value per output: the input's grid and quant point carry over (as MaxPool)
    ("max / min reductions", "carry", "carry", ("ReduceMax", "ReduceMin")),
    ("L2 norms", "island", "l2norm", ("ReduceL2",)),  # sqrt of an integer sum of squares (quant.requant.round_sqrt)
]


def _pool_pads(x, a, nd):
    pads = list(a.get("pads", [0] * (2 * nd)))
    kernel = a["kernel_shape"]
    strides = a.get("strides", [1] * nd)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for d in range(nd):
            size = x.shape[2 + d]
            out = math.ceil(size / strides[d])
            total = max(0, (out - 1) * strides[d] + kernel[d] - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[d], pads[nd + d] = lo, total - lo
    return pads, kernel, strides


@op("MaxPool")
def _maxpool(i, a):
    x = i[0]
    nd = x.dim() - 2
    pads, kernel, strides = _pool_pads(x, a, nd)
    dil = a.get("dilations", [1] * nd)
    if any(pads[d] != pads[nd + d] for d in range(nd)):
        x = F.pad(x, torch_pad(pads), value=float("-inf"))
        pads = [0] * (2 * nd)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    return [fn(x, kernel, strides, pads[:nd], dil, ceil_mode=bool(a.get("ceil_mode", 0)))]


@op("AveragePool")
def _avgpool(i, a):
    x = i[0]
    nd = x.dim() - 2
    pads, kernel, strides = _pool_pads(x, a, nd)
    include = bool(a.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    ceil = bool(a.get("ceil_mode", 0))
    if any(pads[d] != pads[nd + d] for d in range(nd)):
        xp = F.pad(x, torch_pad(pads))
        if include:
            return [fn(xp, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)]
        # count_include_pad=0: divide by the pooled count of non-pad elements (a ones-mask padded with zeros)
        mask = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device), torch_pad(pads))
        return [fn(xp, kernel, strides, 0, ceil_mode=ceil) / fn(mask, kernel, strides, 0, ceil_mode=ceil)]
    return [fn(x, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)]


OPS["GlobalAveragePool"] = lambda i, a: [i[0].mean(dim=list(range(2, i[0].dim())), keepdim=True)]
OPS["GlobalMaxPool"] = lambda i, a: [i[0].amax(dim=list(range(2, i[0].dim())), keepdim=True)]


def _reduce(fn):
    def run(i, a):
        x = i[0]
        axes = a.get("axes")
        if axes is None and len(i) > 1 and i[1] is not None:
            axes = _ints(i[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, dim=[int(d) for d in axes], keepdim=keep)]
    return run


OPS["ReduceMean"] = _reduce(torch.mean)
OPS["ReduceSum"] = _reduce(torch.sum)
OPS["ReduceMax"] = _reduce(torch.amax)
OPS["ReduceMin"] = _reduce(torch.amin)
OPS["ReduceL2"] = _reduce(lambda x, dim, keepdim: torch.sum(x * x, dim=dim, keepdim=keepdim).sqrt())
