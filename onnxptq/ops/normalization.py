"""Normalizations and Einsum in torch (LayerNormalization, GroupNormalization, InstanceNormalization)."""

from __future__ import annotations

import torch

from .base import op

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    # InstanceNormalization: a layer norm over the spatial axes with a scale per channel (same lowering)
    ("layernorm", "island", "layernorm", ("LayerNormalization", "InstanceNormalization")),
    ("normalizations", "island", None, ("GroupNormalization",)),
    ("einsum", "island", "einsum", ("Einsum",)),  # two activations: an integer Einsum (export/intplan.py einsum)
]


def _normalize(x: torch.Tensor, dims: list[int], eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - mean) * inv_std over ``dims`` (computed in float64), mean and inv_std (keepdim)."""
    xd = x.double()
    mean = xd.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(((xd - mean) ** 2).mean(dim=dims, keepdim=True) + eps)
    return (xd - mean) * inv_std, mean, inv_std


@op("LayerNormalization")
def _layer_norm(i, a):
    """Y = norm(x over axes [axis, rank)) * scale + bias; optional Mean and InvStdDev outputs (stash type float)."""
    x, scale = i[0], i[1]
    bias = i[2] if len(i) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    y, mean, inv_std = _normalize(x, list(range(axis, x.dim())), a.get("epsilon", 1e-5))
    y = y * scale.double()
    if bias is not None:
        y = y + bias.double()
    return [y.to(x.dtype), mean.float(), inv_std.float()]


@op("GroupNormalization")
def _group_norm(i, a):
    """Normalization over groups of channels; scale and bias per group (opset 18) or per channel (opset 21)."""
    x, scale, bias = i[0], i[1], i[2]
    g = a["num_groups"]
    n, c = x.shape[0], x.shape[1]
    y, _, _ = _normalize(x.reshape(n, g, -1), [2], a.get("epsilon", 1e-5))
    per = c // g if scale.numel() == g else 1
    shape = (1, c) + (1,) * (x.dim() - 2)
    s = scale.double().repeat_interleave(per).reshape(shape)
    b = bias.double().repeat_interleave(per).reshape(shape)
    return [(y.reshape(x.shape) * s + b).to(x.dtype)]


@op("InstanceNormalization")
def _instance_norm(i, a):
    x, scale, bias = i
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y, _, _ = _normalize(x, list(range(2, x.dim())), a.get("epsilon", 1e-5))
    return [(y * scale.double().reshape(shape) + bias.double().reshape(shape)).to(x.dtype)]


@op("Einsum")
def _einsum(i, a):
    eq = a["equation"]
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    return [torch.einsum(eq, *i)]
