"""Quantize / dequantize with ONNX QuantizeLinear semantics (round half to even, saturate).

Every function here works unchanged on numpy arrays and torch tensors (both provide ``/``,
``.round()`` (half to even) and ``.clip()``), so the simulation, the exporters and the tests share
one definition. The NumPy runtime mirrors these rules without importing this package.
``round_fn`` lets the torch simulation substitute a straight-through rounding for gradients.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np

from .grid import Grid

T = TypeVar("T")  # numpy.ndarray or torch.Tensor


def rne(x: T) -> T:
    """Round half to even (numpy and torch both round ties to even)."""
    return x.round()


def floor_round(x: T) -> T:
    """Floor Round: the grid point below (Attention Round Sec. 3.2; a baseline of its Table 5)."""
    return np.floor(x) if isinstance(x, np.ndarray) else x.floor()


def ceil_round(x: T) -> T:
    """Ceil Round: the grid point above (Attention Round Sec. 3.2; a baseline of its Table 5)."""
    return np.ceil(x) if isinstance(x, np.ndarray) else x.ceil()


def stochastic_round(x: T, u: T) -> T:
    """Stochastic Round: floor(x + u) with u ~ U[0, 1): up with probability frac(x), so E[result] = x."""
    return floor_round(x + u)


WEIGHT_ROUNDINGS = ("nearest", "floor", "ceil", "stochastic")  # the rounding-function baselines (--rounding)


def _like(v, x):
    """numpy parameters in x's float dtype, so float32 math stays float32 (as in ONNX and torch)."""
    if isinstance(v, (np.ndarray, np.generic)):
        if isinstance(x, np.ndarray):
            return np.asarray(v).astype(x.dtype, copy=False) if x.dtype.kind == "f" else v
        if hasattr(x, "new_tensor"):  # torch: a tensor operand (a NumPy one would go through __array_wrap__)
            return x.new_tensor(np.asarray(v, dtype=np.float32)) if x.is_floating_point() else x.new_tensor(np.asarray(v))
    return v


def quantize(x: T, scale, zero_point, grid: Grid, round_fn: Callable[[T], T] = rne) -> T:
    """q = clip(RNE(x / s) + z, qmin, qmax): ONNX QuantizeLinear (divides, as onnxruntime does)."""
    return (round_fn(x / _like(scale, x)) + _like(zero_point, x)).clip(grid.qmin, grid.qmax)


def dequantize(q: T, scale, zero_point) -> T:
    """x = (q - z) * s: ONNX DequantizeLinear."""
    return (q - _like(zero_point, q)) * _like(scale, q)


def fake_quantize(x: T, scale, zero_point, grid: Grid, round_fn: Callable[[T], T] = rne) -> T:
    """dequantize(quantize(x)): the value the deployed model sees."""
    return dequantize(quantize(x, scale, zero_point, grid, round_fn), scale, zero_point)


def fake_quantize_rne_inplace(x: T, scale, zero_point, grid: Grid) -> T:
    """``fake_quantize(x, scale, zero_point, grid)`` (round half to even) for a torch tensor outside autograd
    (torch only: the in-place methods are torch's): the same float operations in the same order, so the same
    values, but every step after x / s works in that one new buffer. On large activations this is 3-4x faster
    than the chain, which allocates (and page-faults) a tensor per step; x itself is not written."""
    t = x / _like(scale, x)
    z = _like(zero_point, t)
    return t.round_().add_(z).clamp_(grid.qmin, grid.qmax).sub_(z).mul_(_like(scale, t))
