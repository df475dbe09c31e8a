"""Torch fake-quantizers: modules holding one tensor's QParams, applying quant.rounding with STE."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant import QParams, fake_quantize, quantize
from ..quant.rounding import fake_quantize_rne_inplace
from ..quant.observer import Observer


class _RoundSTE(torch.autograd.Function):
    """Round half to even forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.round()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


class _FakeQuantSTE(torch.autograd.Function):
    """``fake_quantize(x, s, z, grid, round_ste)`` in one node: the same operations forward (the same values),
    and the gradients autograd derives through that chain, computed directly: for x, the incoming gradient
    where clip's input lies strictly inside (qmin, qmax) (0 at and beyond the grid ends, as torch's clamp);
    for s, Eq. 29 of BRECQ (LSQ): sum of g * (RNE(x/s) - x/s) inside, g * (q - z) at the ends. Two saved
    tensors (a mask and, when s is learned, the Eq. 29 factor) instead of the chain's six."""

    @staticmethod
    def forward(ctx, x, s, z, qmin: int, qmax: int):  # noqa: D102
        t = x / s
        q = t.round().add_(z)
        inside = (q > qmin) & (q < qmax)
        q = q.clamp_(qmin, qmax).sub_(z)  # q - z
        out = q * s
        learn = ctx.needs_input_grad[1]
        ctx.save_for_backward(inside, torch.where(inside, q - t, q) if learn else None)
        ctx.s_shape = s.shape
        return out

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        inside, factor = ctx.saved_tensors
        gx = g * inside if ctx.needs_input_grad[0] else None
        gs = (g * factor).sum_to_size(ctx.s_shape) if factor is not None else None
        return gx, gs, None, None, None


def fake_quantize_ste(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, grid) -> torch.Tensor:
    """``quant.rounding.fake_quantize`` with straight-through rounding (the activation quantizers and LSQ
    steps): the same values, the gradients of that chain (``_FakeQuantSTE``) at a fraction of its memory and
    time. Scale and zero point broadcast against ``x``; the scale may carry a gradient (learned steps)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or scale.requires_grad):
        return fake_quantize_rne_inplace(x, scale, zero_point, grid)
    return _FakeQuantSTE.apply(x, scale, zero_point, grid.qmin, grid.qmax)


class FakeQuant(nn.Module):
    """Applies ``QParams`` to a tensor; observes it instead while calibrating; passes it when off."""

    def __init__(self, name: str, bits: int, axis: int | None = None) -> None:
        super().__init__()
        self.name, self.bits, self.axis = name, bits, axis
        self._store: dict[str, QParams] = {}  # where ``params`` lives (a QuantState dict once bound)
        self._key = name
        self._ecaq_scales: dict[str, np.ndarray] = {}
        self.observer: Observer | None = None
        self.enabled = False
        self.round_fn = None  # replaces STE rounding of x / s when set (AdaRound: recon/adaround.py)
        self.scale_fn = None  # returns the scale instead of the fixed one when set (RAPQ: recon/po2_group.py)
        self.gain_fn = None  # per-channel factor on the dequantized output when set (recon/weight_gain.py)
        self.register_buffer("scale", torch.ones(()), persistent=False)
        self.register_buffer("zero_point", torch.zeros(()), persistent=False)

    def bind(self, store: dict[str, QParams], key: str, ecaq_scales: dict[str, np.ndarray] | None = None) -> None:
        """Keep ``params`` in ``store[key]`` (a ``QuantState`` dict); ``ecaq_scales``: the state's ECAQ
        scales, which make this an ECAQ quantizer when they hold ``key``."""
        if self._key in self._store:
            store[key] = self._store.pop(self._key)
        self._store, self._key = store, key
        self._ecaq_scales = {} if ecaq_scales is None else ecaq_scales

    @property
    def params(self) -> QParams | None:
        return self._store.get(self._key)

    @params.setter
    def params(self, params: QParams | None) -> None:
        if params is None:
            self._store.pop(self._key, None)
        else:
            self._store[self._key] = params

    @property
    def ecaq(self) -> bool:
        """Per-channel activation scales folded into the consumers (calib/ecaq.py): outputs the integer codes
        (q - z) when enabled, the exact rescaling x / s when disabled."""
        return self._key in self._ecaq_scales

    def set_params(self, params: QParams, ndim: int | None = None) -> None:
        self.params = params
        scale, zp = params.scale, params.zero_point
        if params.axis is not None and ndim is not None:
            shape = [1] * ndim
            shape[params.axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        device = self.scale.device
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float32), device=device)
        self.zero_point = torch.as_tensor(np.asarray(zp, dtype=np.float32), device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            return x
        if self.ecaq:
            if not self.enabled:
                return x / self.scale
            return quantize(x, self.scale, self.zero_point, self.params.grid, round_ste) - self.zero_point
        if not self.enabled or self.params is None:
            return x
        scale = self.scale if self.scale_fn is None else self.scale_fn()
        if self.round_fn is None:
            out = fake_quantize_ste(x, scale, self.zero_point, self.params.grid)
        else:
            out = fake_quantize(x, scale, self.zero_point, self.params.grid, self.round_fn)
        return out if self.gain_fn is None else out * self.gain_fn()
