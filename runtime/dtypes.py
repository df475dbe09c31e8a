"""ONNX <-> NumPy dtype helpers, including the sub-byte integer types.

int4/uint4 (opset 21+) and int2/uint2 (opset 25+) tensors are held as the one-element-per-byte
NumPy dtypes that ``onnx.helper.tensor_dtype_to_np_dtype`` returns (``onnx`` obtains them from its
own dependency, ml_dtypes; this module never imports it). Arithmetic on them always goes through
``widen`` first, which casts to int8/uint8 exactly.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from onnx import helper

#: Integer ranges of the sub-byte ONNX types, keyed by TensorProto data type.
SUBBYTE_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT2: (-2, 1),
    TensorProto.UINT2: (0, 3),
}

FLOAT8_SATURATING: frozenset[int] = frozenset(
    {
        TensorProto.FLOAT8E4M3FN,
        TensorProto.FLOAT8E4M3FNUZ,
        TensorProto.FLOAT8E5M2,
        TensorProto.FLOAT8E5M2FNUZ,
    }
)


def np_dtype(onnx_type: int) -> np.dtype:
    """NumPy dtype of an ONNX ``TensorProto.DataType`` (raises ``ValueError`` if unknown)."""
    if onnx_type == TensorProto.STRING:
        return np.dtype(object)
    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


def onnx_type(dtype: np.dtype) -> int:
    """ONNX ``TensorProto.DataType`` of a NumPy dtype."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def type_name(dtype: np.dtype) -> str:
    """Lower-case ONNX-ish name for messages (``int8``, ``float32``, ``int4``)."""
    return str(np.dtype(dtype))


def is_subbyte(dtype: np.dtype) -> bool:
    """True for int4/uint4/int2/uint2."""
    if np.dtype(dtype).kind != "V":  # native NumPy types are never sub-byte
        return False
    try:
        return onnx_type(dtype) in SUBBYTE_RANGES
    except (KeyError, ValueError, TypeError):
        return False


def is_integer(dtype: np.dtype) -> bool:
    """True for every signed/unsigned integer type, sub-byte ones included (not bool)."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.integer) or is_subbyte(dtype)


def int_range(dtype: np.dtype) -> tuple[int, int]:
    """(min, max) of an integer dtype, sub-byte types included."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    t = onnx_type(dtype)
    if t in SUBBYTE_RANGES:
        return SUBBYTE_RANGES[t]
    raise TypeError(f"{dtype} is not an integer type")


def widen(a: np.ndarray) -> np.ndarray:
    """Return sub-byte integer arrays as int8/uint8 (exact); other arrays unchanged."""
    if is_subbyte(a.dtype):
        lo, _ = int_range(a.dtype)
        return a.astype(np.int8 if lo < 0 else np.uint8)
    return a


def compute_float(dtype: np.dtype) -> np.dtype:
    """Dtype to compute a float op in: float16/bfloat16 (and smaller) -> float32, else unchanged.

    Used by the ops that accumulate (MatMul, Gemm, Conv, pools), so half-precision inputs are
    summed in float32 and rounded once at the end.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float16 or dtype.kind == "V":
        return np.dtype(np.float32)
    return dtype
