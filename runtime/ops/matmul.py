"""MatMul, MatMulInteger, QLinearMatMul, Gemm (NumPy ``matmul`` broadcasting semantics) and Einsum.

Integer products are exact (see :mod:`runtime.kernels`): float32/float64 BLAS when the bound allows,
int64 otherwise; results wrap to the output type (MatMul on int32 gives the low 32 bits, the same as
int32 accumulation would).

MatMulInteger-10: ``(A - a_zero_point) @ (B - b_zero_point)`` as int32; a_zero_point is a scalar or
per row of A (M values, or shape [..., M, 1]); b_zero_point a scalar or per column of B (N values,
or shape [..., 1, N]).
QLinearMatMul-10/21: the same product requantized with ``a_scale * b_scale / y_scale``
(``quant.requantize``); scales may be per row of A (a_scale, y_scale) / per column of B (b_scale).
"""

from __future__ import annotations

import numpy as np

from .. import kernels as K
from ..dtypes import compute_float, is_integer, widen
from .registry import Node, const_cached, register
from .quant import qlinear_multiplier, requantize


def _a_param(p: np.ndarray | None, a: np.ndarray) -> np.ndarray | None:
    """Per-tensor or per-row (of A) parameter shaped to broadcast against A / the output."""
    if p is None:
        return None
    p = widen(np.asarray(p))
    if p.size == 1:
        return p.reshape(())
    if p.ndim == 1:
        return p.reshape(-1, 1)
    return p if p.shape[-1] == 1 else p[..., None]


def _b_param(p: np.ndarray | None, b: np.ndarray) -> np.ndarray | None:
    """Per-tensor or per-column (of B) parameter shaped to broadcast against B / the output."""
    if p is None:
        return None
    p = widen(np.asarray(p))
    if p.size == 1:
        return p.reshape(())
    return p


def _exact(
    node: Node,
    a: np.ndarray,
    b: np.ndarray,
    a_zp: np.ndarray | None,
    b_zp: np.ndarray | None,
    b_inputs: tuple[int, ...],
    out_dtype: np.dtype,
) -> np.ndarray:
    bb = const_cached(node, "bbound", b_inputs, lambda: K.data_bound(b, b_zp))
    prepared = const_cached(node, "bprep", b_inputs, dict)
    return K.int_matmul(
        a, b, a_zp, b_zp, out_dtype=out_dtype, b_bound=bb, b_prepared=prepared
    )


@register("MatMul")
def matmul(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if is_integer(a.dtype):
        return _exact(node, a, b, None, None, (1,), a.dtype)
    dt = compute_float(a.dtype)
    if dt != a.dtype:
        return np.matmul(a.astype(dt), b.astype(dt)).astype(a.dtype)
    return np.matmul(a, b)


@register("MatMulInteger")
def matmul_integer(
    node: Node,
    a: np.ndarray,
    b: np.ndarray,
    a_zp: np.ndarray | None = None,
    b_zp: np.ndarray | None = None,
) -> np.ndarray:
    return _exact(
        node, a, b, _a_param(a_zp, a), _b_param(b_zp, b), (1, 3), np.dtype(np.int32)
    )


@register("QLinearMatMul")
def qlinear_matmul(
    node: Node,
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zp: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zp: np.ndarray,
    y_scale: np.ndarray,
    y_zp: np.ndarray,
) -> np.ndarray:
    acc = _exact(
        node, a, b, _a_param(a_zp, a), _b_param(b_zp, b), (3, 5), np.dtype(np.int32)
    )
    mult = qlinear_multiplier(
        _a_param(a_scale, a), _b_param(b_scale, b), _a_param(y_scale, a)
    )
    return requantize(acc, mult, _a_param(y_zp, a), y_zp.dtype)


@register("Gemm")
def gemm(node: Node, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """Gemm: alpha * A' @ B' + beta * C (C unidirectionally broadcast)."""
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    if is_integer(a.dtype):
        if not (alpha.is_integer() and beta.is_integer()):
            raise node.unsupported("integer Gemm with non-integer alpha/beta")
        y = _exact(node, a, b, None, None, (1,), np.dtype(np.int64))
        if alpha != 1:
            y = y * np.int64(alpha)
        if c is not None and beta != 0:
            y = y + c.astype(np.int64) * np.int64(beta)
        return y.astype(a.dtype)
    dt = compute_float(a.dtype)
    y = np.matmul(a.astype(dt, copy=False), b.astype(dt, copy=False))
    if alpha != 1:
        y *= dt.type(alpha)
    if c is not None and beta != 0:
        cc = c.astype(dt, copy=False)
        y = y + (cc if beta == 1 else cc * dt.type(beta))
    return y.astype(a.dtype, copy=False)


@register("Einsum")
def einsum(node: Node, *xs: np.ndarray) -> np.ndarray:
    """Einsum-12: NumPy's ``einsum`` of the equation (spaces dropped; ellipsis and implicit output as NumPy reads
    them, which is ONNX's definition). Integer operands are summed in int64 and wrap to the input type, as an
    int32 accumulator would; half-precision floats are summed in float32 and rounded once."""
    eq = node.attr("equation")
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    dt = xs[0].dtype
    work = np.int64 if is_integer(dt) else compute_float(dt)
    return np.asarray(np.einsum(eq, *(x.astype(work) for x in xs))).astype(dt)
