"""The one definition of grids, rounding, scales and quantization state (DESIGN.md section 2)."""
from .grid import Grid, activation_grid, weight_grid
from .params import QParams, is_power_of_two
from .rounding import dequantize, fake_quantize, quantize

__all__ = ["Grid", "QParams", "activation_grid", "weight_grid", "quantize", "dequantize", "fake_quantize",
           "is_power_of_two"]
