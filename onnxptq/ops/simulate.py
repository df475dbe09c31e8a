"""ONNX operators in torch (float32 NCHW), used by the simulation to run a (folded) ONNX graph.

The implementations live in one module per op family (conv, elementwise, normalization, indexing, pooling,
recurrent, shape), each next to its registry declaration (FAMILIES); importing this module registers them all in OPS.

Each entry maps an op type to ``fn(inputs, attrs) -> list of outputs``; ``inputs`` holds torch
tensors (``None`` for omitted optional inputs). Shape arithmetic runs on int64 tensors.
"""
from __future__ import annotations

from .base import ONNX_TO_TORCH_DTYPE, OPS, OpFn, op, torch_pad
from .conv import _conv_padding, conv, conv_transpose, gemm  # the families register their ops in OPS on import (this order)
from . import elementwise, indexing, normalization, pooling, recurrent, shape  # noqa: E402,F401,I001

__all__ = ["ONNX_TO_TORCH_DTYPE", "OPS", "OpFn", "op", "torch_pad", "_conv_padding", "conv", "conv_transpose", "gemm"]
