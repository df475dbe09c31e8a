"""Integer grids (DESIGN.md section 2): the one definition of which integers a b-bit tensor may hold."""
from __future__ import annotations

from dataclasses import dataclass

MIN_BITS, MAX_BITS = 2, 32


@dataclass(frozen=True)
class Grid:
    """A b-bit integer grid: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1].

    ``full_range`` (signed only): the symmetric grid [-2^(b-1), 2^(b-1)], one level more than b bits hold.
    onnxruntime's ``reduce_range`` weights are this grid at 7 bits, [-64, 64] in an int8 container: every
    u8 x s8 pair sum stays within int16 (255 * 64 * 2 = 32640), and a symmetric scale max|w| / 64 is 63/64
    of max|w| / 63 (docs/design-notes.md section 2).
    """

    bits: int
    signed: bool
    full_range: bool = False

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bit width must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        if self.full_range and not self.signed:
            raise ValueError("a full-range grid is signed")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        if not self.signed:
            return (1 << self.bits) - 1
        return (1 << (self.bits - 1)) - (0 if self.full_range else 1)

    @property
    def levels(self) -> int:
        return (1 << self.bits) + (1 if self.full_range else 0)

    def __str__(self) -> str:
        name = f"{'int' if self.signed else 'uint'}{self.bits}"
        return f"{name}[{self.qmin},{self.qmax}]" if self.full_range else name


def weight_grid(bits: int, full_range: bool = False) -> Grid:
    """Weights are signed per-channel integers (DESIGN.md section 2); ``full_range``: [-2^(b-1), 2^(b-1)]."""
    return Grid(bits, signed=True, full_range=full_range)


def activation_grid(bits: int, nonnegative: bool) -> Grid:
    """Activations use the unsigned grid when non-negative on calibration data, else the signed one."""
    return Grid(bits, signed=not nonnegative)


BIAS_GRID = Grid(32, signed=True)  # int32 bias with scale s_x * s_w (DESIGN.md section 2)
