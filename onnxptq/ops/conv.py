"""Weighted layers in torch: Conv, ConvTranspose, Gemm, MatMul."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import op, torch_pad

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    # ConvTranspose: weights per output channel on axis 1; lowered as a Conv over its dilated input (intplan)
    ("layers", "layer", "layer", ("Conv", "ConvTranspose", "Gemm", "MatMul")),
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


def conv_transpose_pads(in_sizes: list[int], kernel: list[int], a: dict) -> tuple[list[int], list[int], list[int],
                                                                                list[int]]:
    """(strides, dilations, output_padding, pads begin+end) of an ONNX ConvTranspose, with ``output_shape`` and
    SAME_* auto_pad turned into explicit pads (ONNX ConvTranspose: total_padding = stride (in - 1) + output_padding
    + (k - 1) dilation + 1 - out; SAME_UPPER puts the smaller half first, otherwise the larger)."""
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    opad = list(a.get("output_padding", [0] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    out = a.get("output_shape")
    if out is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        out = list(out)[-nd:] if out is not None else [in_sizes[i] * strides[i] for i in range(nd)]
        for i in range(nd):
            total = strides[i] * (in_sizes[i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - out[i]
            small, large = total // 2, total - total // 2
            pads[i], pads[nd + i] = (small, large) if auto == "SAME_UPPER" else (large, small)
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    return strides, dil, opad, pads


def conv_transpose(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict) -> torch.Tensor:
    """ONNX ConvTranspose: torch's transposed convolution (with output_padding) without padding, then the
    (possibly asymmetric) pads cropped from each end."""
    nd = w.dim() - 2
    strides, dil, opad, pads = conv_transpose_pads(list(x.shape[2:]), list(w.shape[2:]), a)
    if any(p < 0 for p in pads):
        raise ValueError(f"ConvTranspose output_shape {a.get('output_shape')} is larger than the transposed "
                         "convolution's output (negative pads)")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    y = fn(x, w, b, stride=strides, padding=0, output_padding=opad, groups=a.get("group", 1), dilation=dil)
    sl = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[nd + i]) for i in range(nd)]
    return y[tuple(sl)]


@op("ConvTranspose")
def _conv_transpose(i, a):
    return [conv_transpose(i[0], i[1], i[2] if len(i) > 2 else None, a)]


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
