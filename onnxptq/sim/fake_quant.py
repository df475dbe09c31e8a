"""Torch fake-quantizers: modules holding one tensor's QParams, applying quant.rounding with STE."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant import QParams, fake_quantize, quantize
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
        return fake_quantize(x, self.scale if self.scale_fn is None else self.scale_fn(), self.zero_point,
                             self.params.grid, round_ste if self.round_fn is None else self.round_fn)
