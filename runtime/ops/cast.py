"""Cast and CastLike.

Cast spec (Cast-21..28): float -> integer is "undefined if OOR"; integer -> narrower integer
discards high bits (two's complement wrap, e.g. 200:int16 -> -56:int8); anything -> bool is
``x != 0``; -> float rounds to nearest even.

float -> integer here is *defined* to be exactly what onnxruntime 1.32, ``onnx.reference`` and
NumPy do on x86-64 (measured, and re-checked against onnxruntime in tests/runtime/test_ops.py), so
the reference gives those answers on every platform:

* in range: truncation toward zero (2.7 -> 2, -2.7 -> -2; there is no rounding in Cast);
* int8/int16/uint8/uint16 targets: truncate to int32 first, then keep the low bits
  (128.0 -> int8 -128, 300.7 -> int8 44, -1.7 -> uint8 255);
* a value outside int32 (or NaN/inf) gives the int32 "indefinite" 0x80000000, so 1e10 -> int8 0,
  int32 -2147483648;
* uint32: truncate to int64 first, then keep the low 32 bits (-1.7 -> 4294967295,
  5e9 -> 705032704; outside int64 or NaN -> 0). onnxruntime's own answer for out-of-range uint32
  casts depends on the element's position (its vectorised loop differs from the scalar tail);
  this is its scalar-path answer;
* int64: outside int64 or NaN -> -2^63;
* uint64: values >= 2^63 are converted as (x - 2^63) with the top bit then flipped, smaller values
  as the int64 conversion (so -1.7 -> 2^64 - 1, NaN -> 2^63).

Never rely on any of the out-of-range cases: always Clip before a float -> int Cast (the integer
exporter does). The ``saturate`` attribute only concerns float8 targets (handled by onnx's
``saturate_cast``); it has no effect on integer targets.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from ..dtypes import FLOAT8_SATURATING, SUBBYTE_RANGES, np_dtype, onnx_type
from .registry import Node, register


def _cvtt(t: np.ndarray, bits: int) -> np.ndarray:
    """x86 cvtt to a signed ``bits``-bit integer of already-truncated floats (returns int64)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1)
    ok = (t >= lo) & (t < hi)  # False for NaN
    return np.where(ok, t, lo).astype(np.int64)


def float_to_int(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float -> integer conversion with the x86-64 semantics documented in the module docstring."""
    dtype = np.dtype(dtype)
    if x.size:
        lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
        # Python compares float with int exactly (NumPy would round hi to the float type);
        # NaN propagates through min/max and fails the test.
        mn, mx = float(x.min()), float(x.max())
        if mn >= lo and mx <= hi:  # every value in range: C truncation is well defined
            return x.astype(dtype)
    t = np.trunc(x.astype(np.float64))
    bits = dtype.itemsize * 8
    if dtype.kind == "i" or bits <= 16:
        via = 64 if bits == 64 else 32
        return _cvtt(t, via).astype(dtype)
    if bits == 32:  # uint32: through int64, low 32 bits
        return _cvtt(t, 64).astype(dtype)
    # uint64
    big = t >= float(2**63)
    small_v = _cvtt(t, 64).view(np.uint64)
    big_v = _cvtt(t - float(2**63), 64).view(np.uint64) ^ np.uint64(2**63)
    return np.where(big, big_v, small_v)


def cast_array(x: np.ndarray, to: int, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """Cast ``x`` to ONNX type ``to`` (see the module docstring for the semantics)."""
    if to == TensorProto.STRING or x.dtype == object:
        raise NotImplementedError("string casts")
    dst = np_dtype(to)
    src_t = onnx_type(x.dtype)
    if src_t in SUBBYTE_RANGES:
        lo, _ = SUBBYTE_RANGES[src_t]
        x = x.astype(np.int8 if lo < 0 else np.uint8)
    if dst == x.dtype:
        return x
    if to in FLOAT8_SATURATING:
        if saturate:
            return numpy_helper.saturate_cast(x.astype(np.float32), dst)
        return x.astype(np.float32).astype(dst)
    if to == getattr(TensorProto, "FLOAT8E8M0", -1):
        return numpy_helper.to_float8e8m0(x, saturate, round_mode).astype(dst)
    src_float = np.issubdtype(x.dtype, np.floating) or x.dtype.kind == "V"
    if src_float and (np.issubdtype(dst, np.integer)):
        if x.dtype.kind == "V":  # bfloat16 / float8 sources: widen exactly first
            x = x.astype(np.float32)
        return float_to_int(x, dst)
    if src_float and to in SUBBYTE_RANGES:
        # Same rule as above, then the sub-byte container wraps to its low bits.
        lo, _ = SUBBYTE_RANGES[to]
        wide = float_to_int(x.astype(np.float32) if x.dtype.kind == "V" else x, np.int8)
        bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.INT2: 2, TensorProto.UINT2: 2}[to]
        m = wide.astype(np.int64) & ((1 << bits) - 1)
        if lo < 0:
            m = np.where(m >= (1 << (bits - 1)), m - (1 << bits), m)
        return m.astype(dst)
    if to in SUBBYTE_RANGES:
        bits = 4 if to in (TensorProto.INT4, TensorProto.UINT4) else 2
        lo, _ = SUBBYTE_RANGES[to]
        m = x.astype(np.int64) & ((1 << bits) - 1)
        if lo < 0:
            m = np.where(m >= (1 << (bits - 1)), m - (1 << bits), m)
        return m.astype(dst)
    return x.astype(dst)


def _check_cast(node: Node) -> None:
    to = node.attr("to")
    if to is None:
        raise node.unsupported("missing 'to' attribute")
    if to == TensorProto.STRING:
        raise node.unsupported("casting to string")


@register("Cast", check=_check_cast)
def cast(node: Node, x: np.ndarray) -> np.ndarray:
    try:
        return cast_array(
            x, node.attr("to"), bool(node.attr("saturate", 1)), node.attr("round_mode", "up")
        )
    except NotImplementedError as e:
        raise node.unsupported(str(e)) from e


@register("CastLike")
def cast_like(node: Node, x: np.ndarray, like: np.ndarray) -> np.ndarray:
    try:
        return cast_array(
            x, onnx_type(like.dtype), bool(node.attr("saturate", 1)), node.attr("round_mode", "up")
        )
    except NotImplementedError as e:
        raise node.unsupported(str(e)) from e
