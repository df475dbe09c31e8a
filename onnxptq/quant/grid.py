"""Integer grids (DESIGN.md section 2): the one definition of which integers a b-bit tensor may hold."""
from __future__ import annotations

from dataclasses import dataclass

MIN_BITS, MAX_BITS = 2, 32


@dataclass(frozen=True)
class Grid:
    """A b-bit integer grid: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""

    bits: int
    signed: bool

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bit width must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def levels(self) -> int:
        return 1 << self.bits

    def __str__(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"


def weight_grid(bits: int) -> Grid:
    """Weights are signed per-channel integers (DESIGN.md section 2)."""
    return Grid(bits, signed=True)


def activation_grid(bits: int, nonnegative: bool) -> Grid:
    """Activations use the unsigned grid when non-negative on calibration data, else the signed one."""
    return Grid(bits, signed=not nonnegative)


BIAS_GRID = Grid(32, signed=True)  # int32 bias with scale s_x * s_w (DESIGN.md section 2)
