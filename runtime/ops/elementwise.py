"""Element-wise arithmetic, comparison, logic and selection ops (NumPy broadcasting).

Integer arithmetic wraps modulo 2^bits (two's complement), as onnxruntime does; ONNX leaves
overflow unspecified. Session-level type checking guarantees operands share a dtype where the spec
requires it, so these functions do not promote.

Integer ``Div`` (spec, Div-14: "For integer inputs, the result is computed using truncating division
(rounding toward zero)"): C semantics, 7 / -2 = -3, *not* NumPy's floor division (-4).
``onnx.reference`` (floor_divide + correction) and onnxruntime agree; both verified in
tests/runtime/test_ops.py. Division by zero is undefined in ONNX; here it yields 0.
INT_MIN / -1 wraps to INT_MIN.

``Mod`` (spec, Mod-13/28): ``fmod=0`` gives ``a - floor(a/b)*b``, the sign of the divisor (Python
``%`` / ``np.mod``); ``fmod=1`` gives ``a - trunc(a/b)*b``, the sign of the dividend (C ``fmod`` /
``np.fmod``). Integer modulo by zero yields 0.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from ..dtypes import is_integer
from .registry import Node, const_cached, register


def _binary(ufunc):
    def fn(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ufunc(a, b)

    return fn


def _unary(ufunc):
    def fn(node: Node, x: np.ndarray) -> np.ndarray:
        return ufunc(x)

    return fn


BINARY = {  # ONNX op -> NumPy ufunc
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Less": np.less,
    "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor, "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
}
UNARY = {  # ONNX op -> NumPy ufunc
    "Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil, "Not": np.logical_not,
    "BitwiseNot": np.invert, "Sign": np.sign, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "IsNaN": np.isnan,
}
for _op, _f in BINARY.items():
    register(_op)(_binary(_f))
for _op, _f in UNARY.items():
    register(_op)(_unary(_f))


@register("Reciprocal")
def reciprocal(node: Node, x: np.ndarray) -> np.ndarray:
    return np.divide(x.dtype.type(1), x)


@register("Round")
def round_(node: Node, x: np.ndarray) -> np.ndarray:
    """Round-11/22: nearest integer, ties to even (np.rint), as QuantizeLinear does."""
    return np.rint(x)


@register("Identity")
def identity(node: Node, x: np.ndarray) -> np.ndarray:
    return x


def _pow2(node: Node, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(log2(b), b - 1) if the divisor is a session constant of positive powers of two."""

    def make():
        if b.size == 0 or not np.issubdtype(b.dtype, np.integer):
            return None
        bi = b.astype(np.int64)
        if np.any(bi <= 0) or np.any(bi & (bi - 1)):
            return None
        shifts = np.log2(bi.astype(np.float64)).round().astype(b.dtype)
        return shifts, (bi - 1).astype(b.dtype)

    return const_cached(node, "pow2", (1,), make) if 1 in node.const_inputs else None


def trunc_div(a: np.ndarray, b: np.ndarray, node: Node | None = None) -> np.ndarray:
    """Integer division rounding toward zero (C semantics); x / 0 -> 0; INT_MIN / -1 wraps.

    Built on ``np.floor_divide`` (vectorised in NumPy, unlike ``np.remainder``), corrected by one
    where the floor remainder is non-zero and the operands' signs differ. Divisors that are
    constant positive powers of two use shifts: (a + ((a >> bits-1) & (D-1))) >> n.
    Temporaries are reused in place (large allocations are slow on small VMs).
    """
    p2 = _pow2(node, b) if node is not None else None
    full = np.broadcast_shapes(a.shape, b.shape) == a.shape
    if p2 is not None and full:
        shift, mask = p2
        if a.dtype.kind == "u":
            return np.right_shift(a, shift)
        out = np.right_shift(a, a.dtype.type(a.dtype.itemsize * 8 - 1))
        np.bitwise_and(out, mask, out=out)
        np.add(out, a, out=out)
        np.right_shift(out, shift, out=out)
        return out
    q = np.floor_divide(a, b)
    if a.dtype.kind != "u":
        r = np.multiply(q, b)
        np.subtract(a, r, out=r)  # floor remainder (wrapping is harmless: it fits)
        fix = r != 0
        sign = np.bitwise_xor(a, b, out=r)
        np.logical_and(fix, sign < 0, out=fix)
        np.add(q, fix, out=q)
    if not np.all(b):
        q = np.where(b == 0, a.dtype.type(0), q)
    return q


def int_mod(a: np.ndarray, b: np.ndarray, fmod: bool, node: Node | None = None) -> np.ndarray:
    """Integer Mod: sign of the divisor (fmod=0) or of the dividend (fmod=1); x mod 0 -> 0.

    ``a - q * b`` with q the floor (fmod=0) or truncated (fmod=1) quotient; a constant positive
    power-of-two divisor with fmod=0 is a bit mask (two's complement: a mod 2^n in [0, 2^n)).
    """
    p2 = _pow2(node, b) if node is not None and not fmod else None
    if p2 is not None:
        return np.bitwise_and(a, p2[1])
    q = trunc_div(a, b) if fmod else np.floor_divide(a, b)
    np.multiply(q, b, out=q)
    np.subtract(a, q, out=q)
    if not np.all(b):
        q = np.where(b == 0, a.dtype.type(0), q)
    return q


@register("Div")
def div(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if is_integer(a.dtype):
        return trunc_div(a, b, node)
    return np.divide(a, b)


@register("Mod")
def mod(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fmod = bool(node.attr("fmod", 0))
    if is_integer(a.dtype):
        return int_mod(a, b, fmod, node)
    if fmod:
        return np.fmod(a, b)
    return _float_mod(a, b)


def _float_mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mod-28 ``fmod=0`` for floats: sign of the divisor, with the spec's special cases.

    ``np.mod`` already gives NaN for x=+-inf or y=0 and keeps the sign of y for a zero result; the
    remaining special case is y=+-inf with finite x: x if x and y have the same sign, else y.
    """
    r = np.mod(a, b)
    yinf = np.isinf(b) & np.isfinite(a) & (a != 0)
    if np.any(yinf):
        same = np.signbit(a) == np.signbit(b)
        r = np.where(yinf, np.where(same, a, b), r).astype(r.dtype)
    return r


def _check_bitshift(node: Node) -> None:
    if node.attr("direction") not in ("LEFT", "RIGHT"):
        raise node.unsupported(f"direction must be LEFT or RIGHT, got {node.attr('direction')!r}")


@register("BitShift", check=_check_bitshift)
def bitshift(node: Node, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """BitShift-11 (unsigned) and -28 (signed: arithmetic right shift, left shift wraps).

    Shift amounts that are negative or >= the bit width give what the sign fill alone gives:
    -1 for a right shift of a negative value, 0 otherwise (BitShift-28; for unsigned types this is
    the same as shifting every bit out).
    """
    bits = x.dtype.itemsize * 8
    yi = y.astype(np.int64)
    ok = (yi >= 0) & (yi < bits)
    ys = np.where(ok, yi, 0).astype(x.dtype)
    if node.attr("direction") == "LEFT":
        res = np.left_shift(x, ys)
        fill = np.zeros((), x.dtype)
    else:
        res = np.right_shift(x, ys)
        fill = np.where(x < 0, x.dtype.type(-1), x.dtype.type(0)) if x.dtype.kind == "i" else 0
    if np.all(ok):
        return res
    return np.where(ok, res, fill).astype(x.dtype)


@register("Clip")
def clip(node: Node, x: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None):
    """Clip-6 (float attributes) and Clip-11+ (optional scalar inputs of x's dtype).

    Computed as min(max(x, lo), hi) (``np.clip``), so min > max yields max everywhere (Clip-13
    spec) and NaN propagates.
    """
    if node.opset < 11:
        lo = node.attr("min")
        hi = node.attr("max")
        lo = None if lo is None else np.asarray(lo, dtype=x.dtype)
        hi = None if hi is None else np.asarray(hi, dtype=x.dtype)
    if lo is not None and hi is not None:
        return np.clip(x, lo.astype(x.dtype, copy=False), hi.astype(x.dtype, copy=False))
    if lo is not None:
        return np.maximum(x, lo.astype(x.dtype, copy=False))
    if hi is not None:
        return np.minimum(x, hi.astype(x.dtype, copy=False))
    return x


@register("Where")
def where(node: Node, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(cond, a, b).astype(a.dtype, copy=False)


def _variadic(ufunc):
    def fn(node: Node, *xs: np.ndarray) -> np.ndarray:
        if len(xs) == 1:
            return xs[0]
        return reduce(ufunc, xs)

    return fn


register("Max")(_variadic(np.maximum))
register("Min")(_variadic(np.minimum))
register("Sum")(_variadic(np.add))


@register("Mean")
def mean(node: Node, *xs: np.ndarray) -> np.ndarray:
    s = reduce(np.add, xs)
    return (s / s.dtype.type(len(xs))).astype(xs[0].dtype, copy=False)


@register("Pow")
def pow_(node: Node, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pow-15: output has x's type; integer exponents on integer bases stay exact."""
    if is_integer(x.dtype) and is_integer(y.dtype):
        return np.power(x.astype(np.int64), y.astype(np.int64)).astype(x.dtype)
    if is_integer(x.dtype):
        return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
    return np.power(x, y.astype(x.dtype, copy=False))
