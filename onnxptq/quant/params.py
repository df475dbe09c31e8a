"""The calibrated state of one quantized tensor: what the exporters write and the simulation applies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import Grid


@dataclass
class QParams:
    """Scale / zero-point of one tensor on one grid; per-tensor (axis None) or per-channel (axis k)."""

    grid: Grid
    scale: np.ndarray  # float32, shape () or (C,)
    zero_point: np.ndarray  # int64, same shape as scale
    axis: int | None = None
    po2: bool = False

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.zero_point = np.asarray(np.broadcast_to(self.zero_point, self.scale.shape), dtype=np.int64)
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ValueError("quantization scales must be finite and positive")
        if np.any(self.zero_point < self.grid.qmin) or np.any(self.zero_point > self.grid.qmax):
            raise ValueError(f"zero point outside the {self.grid} grid")
        if self.po2 and not np.all(is_power_of_two(self.scale)):
            raise ValueError("po2 scale that is not an exact power of two")

    @property
    def symmetric(self) -> bool:
        return bool(np.all(self.zero_point == 0))

    @property
    def top(self) -> float:
        """The largest value of a per-tensor grid, (qmax - z) s."""
        return float((self.grid.qmax - self.zero_point.reshape(())) * self.scale.reshape(()))

    @property
    def exponents(self) -> np.ndarray:
        """Integer k with scale == 2^k (Po2 scales only)."""
        if not self.po2:
            raise ValueError("exponents exist only for power-of-two scales")
        return np.log2(self.scale.astype(np.float64)).astype(np.int64)

    def shaped_for(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero-point reshaped to broadcast against a tensor of rank ``ndim``."""
        if self.axis is None:
            return self.scale, self.zero_point
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)


def is_power_of_two(scale: np.ndarray) -> np.ndarray:
    """True where a positive float is exactly 2^k (mantissa 0.5 in frexp terms)."""
    mant, _ = np.frexp(np.asarray(scale, dtype=np.float64))
    return mant == 0.5
