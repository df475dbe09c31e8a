"""Weighted layers in torch: Conv, Gemm, MatMul."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import op, torch_pad

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    ("layers", "layer", "layer", ("Conv", "Gemm", "MatMul")),
]


def _conv_padding(x: torch.Tensor, w: torch.Tensor, a: dict) -> tuple[torch.Tensor, list[int]]:
    nd = w.dim() - 2
    strides = a.get("strides", [1] * nd)
    dil = a.get("dilations", [1] * nd)
    pads = a.get("pads", [0] * (2 * nd))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max(0, (out - 1) * strides[i] + (w.shape[2 + i] - 1) * dil[i] + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[nd + i] = lo, total - lo
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    return pads, strides, dil


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict) -> torch.Tensor:
    pads, strides, dil = _conv_padding(x, w, a)
    nd = w.dim() - 2
    group = a.get("group", 1)
    if all(pads[i] == pads[nd + i] for i in range(nd)):
        padding = pads[:nd]
    else:
        x = F.pad(x, torch_pad(pads))
        padding = [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=strides, padding=padding, dilation=dil, groups=group)


@op("Conv")
def _conv(i, a):
    return [conv(i[0], i[1], i[2] if len(i) > 2 else None, a)]


def gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict) -> torch.Tensor:
    if a.get("transA", 0):
        x = x.t()
    y = a.get("alpha", 1.0) * (x @ (w.t() if a.get("transB", 0) else w))
    if b is not None:
        y = y + a.get("beta", 1.0) * b
    return y


@op("Gemm")
def _gemm(i, a):
    return [gemm(i[0], i[1], i[2] if len(i) > 2 else None, a)]


@op("MatMul")
def _matmul(i, a):
    return [torch.matmul(i[0], i[1])]
