"""Exact integer GEMM / convolution kernels on top of float BLAS, plus sliding-window helpers.

Why floats, and why the result is exact
---------------------------------------
NumPy's integer ``matmul`` does not use BLAS and is ~25x slower than float64 BLAS. We therefore
convert the zero-point-centred integer operands to a float type, multiply with BLAS and convert the
result back. This is exact, not approximate, under one condition checked *before* computing:

    K * max|a - a_zp| * max|b - b_zp|  <  2^p      (p = 24 for float32, 53 for float64)

where K is the reduction length. Every operand is then an integer of magnitude < 2^p and so exactly
representable; every product a_i * b_i is an integer of magnitude < 2^p, hence exact; and every
partial sum of any subset of the K products, in any order, with or without FMA, is an integer of
magnitude <= K * max|a| * max|b| < 2^p, hence exact too. Whatever blocking or summation order the
BLAS library uses, no rounding ever happens, so the float result equals the integer result and
``np.rint(...).astype(int)`` recovers it (the ``rint`` only guards the conversion).

The bound is first taken from the operand dtypes and zero points (free). If that bound fails, the
bound is recomputed from the actual data (one min/max pass; for constant weights it is cached). If
that also fails, we fall back to exact int64 NumPy arithmetic, which wraps modulo 2^64 -- still the
exact result modulo 2^32 when the op's output is int32, i.e. exactly ONNX's wrap-around semantics.

float32 BLAS is about twice as fast as float64, so float32 is used whenever its bound holds
(e.g. int8 x int8 with K <= 1024).

Depthwise convolutions (one input channel per group) have tiny K; they are computed directly as K
vectorised multiply-accumulates in int32 (int64 if the same kind of bound exceeds 2^31), which is
exact integer arithmetic and needs no BLAS at all.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import numpy as np

from .dtypes import int_range, widen

F32_EXACT = 2**24
F64_EXACT = 2**53
I32_SAFE = 2**31


# --------------------------------------------------------------------------------------------
# bounds
# --------------------------------------------------------------------------------------------


def _zp_minmax(zp: np.ndarray | None) -> tuple[int, int]:
    if zp is None or np.size(zp) == 0:
        return 0, 0
    z = widen(np.asarray(zp))
    return int(z.min()), int(z.max())


def dtype_bound(dtype: np.dtype, zp: np.ndarray | None = None) -> int:
    """Upper bound of |v - zp| over every value v of ``dtype`` and every zero point in ``zp``."""
    lo, hi = int_range(dtype)
    zlo, zhi = _zp_minmax(zp)
    return max(abs(hi - zlo), abs(zhi - lo), abs(hi - zhi), abs(lo - zlo))


def data_bound(a: np.ndarray, zp: np.ndarray | None = None) -> int:
    """Upper bound of |a - zp| from the data (exact max when ``zp`` is a scalar)."""
    if a.size == 0:
        return 0
    a = widen(a)
    lo, hi = int(a.min()), int(a.max())
    zlo, zhi = _zp_minmax(zp)
    return max(abs(hi - zlo), abs(lo - zhi), abs(hi - zhi), abs(lo - zlo))


def acc_dtype(k: int, bound_a: int, bound_b: int, *, allow_f32: bool = True) -> np.dtype:
    """Cheapest dtype in which a K-term dot product of such operands is exact (see module doc)."""
    worst = k * bound_a * bound_b
    if allow_f32 and worst < F32_EXACT and bound_a < F32_EXACT and bound_b < F32_EXACT:
        return np.dtype(np.float32)
    if worst < F64_EXACT and bound_a < F64_EXACT and bound_b < F64_EXACT:
        return np.dtype(np.float64)
    return np.dtype(np.int64)


def plan_dtype(
    k: int,
    a: np.ndarray,
    a_zp: np.ndarray | None,
    b: np.ndarray,
    b_zp: np.ndarray | None,
    *,
    b_bound: int | None = None,
) -> tuple[np.dtype, int]:
    """Pick the accumulation dtype for ``(a - a_zp) @ (b - b_zp)`` with reduction length ``k``.

    Dtype bounds first; data bounds when those fail (``b_bound`` may pass a cached data bound of a
    constant ``b``). Returns the dtype and the worst-case |result| bound used.
    """
    ba = dtype_bound(a.dtype, a_zp)
    bb = dtype_bound(b.dtype, b_zp) if b_bound is None else b_bound
    dt = acc_dtype(k, ba, bb)
    if dt != np.float32:
        ba = min(ba, data_bound(a, a_zp))
        if b_bound is None:
            bb = min(bb, data_bound(b, b_zp))
        dt = acc_dtype(k, ba, bb)
    return dt, k * ba * bb


def to_int(acc: np.ndarray, out_dtype: np.dtype, bound: int) -> np.ndarray:
    """Convert an exact accumulator (float holding integers, or int64) to ``out_dtype``.

    Integer results outside ``out_dtype`` wrap modulo 2^bits (ONNX integer overflow semantics, and
    what onnxruntime's int32 accumulators do).
    """
    out_dtype = np.dtype(out_dtype)
    if acc.dtype.kind == "f":
        acc = np.rint(acc, out=acc) if acc.flags.writeable else np.rint(acc)
        lo, hi = int_range(out_dtype)
        if -bound >= lo and bound <= hi:
            return acc.astype(out_dtype)
        return acc.astype(np.int64).astype(out_dtype)
    return acc.astype(out_dtype, copy=False)


def centered(a: np.ndarray, zp: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """``a - zp`` computed in ``dtype`` (a fresh array); ``zp`` must broadcast against ``a``."""
    out = widen(a).astype(dtype)
    if zp is not None and np.any(zp):
        out -= widen(np.asarray(zp)).astype(dtype)
    return out


def int_matmul(
    a: np.ndarray,
    b: np.ndarray,
    a_zp: np.ndarray | None = None,
    b_zp: np.ndarray | None = None,
    *,
    out_dtype: np.dtype = np.dtype(np.int32),
    b_bound: int | None = None,
    b_prepared: dict | None = None,
) -> np.ndarray:
    """Exact ``(a - a_zp) @ (b - b_zp)`` with NumPy ``matmul`` broadcasting, as ``out_dtype``.

    ``a_zp`` / ``b_zp`` must already be shaped to broadcast against ``a`` / ``b``. ``b_prepared``
    is an optional dict (kept by the caller for a constant ``b``) caching ``b`` converted to each
    accumulation dtype.
    """
    k = a.shape[-1]
    dt, bound = plan_dtype(k, a, a_zp, b, b_zp, b_bound=b_bound)
    ac = centered(a, a_zp, dt)
    if b_prepared is not None:
        bc = b_prepared.get(dt.str)
        if bc is None:
            bc = b_prepared[dt.str] = centered(b, b_zp, dt)
    else:
        bc = centered(b, b_zp, dt)
    return to_int(np.matmul(ac, bc), out_dtype, bound)


# --------------------------------------------------------------------------------------------
# sliding windows (conv / pool geometry)
# --------------------------------------------------------------------------------------------


def window_geometry(
    in_shape: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
    ceil_mode: bool = False,
) -> tuple[list[int], list[int], list[int]]:
    """(pads_begin, pads_end, output_shape) per the Conv / MaxPool / AveragePool specs.

    ``pads_end`` here is the spec's end padding; a ceil-mode window may extend beyond it, which
    :func:`pad_spatial` callers handle by padding ``extra_end`` (see :func:`extra_end`).
    """
    nd = len(in_shape)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [
            (-(-n // s) if ceil_mode else (n - 1) // s + 1) for n, s in zip(in_shape, strides)
        ]
        total = [max(0, (o - 1) * s + e - n) for o, s, e, n in zip(out, strides, eff, in_shape)]
        if auto_pad == "SAME_UPPER":
            pb = [t // 2 for t in total]
        else:
            pb = [t - t // 2 for t in total]
        pe = [t - b for t, b in zip(total, pb)]
        return pb, pe, out
    if auto_pad == "VALID":
        pb, pe = [0] * nd, [0] * nd
    else:
        p = list(pads) if pads else [0] * (2 * nd)
        pb, pe = p[:nd], p[nd:]
    out = []
    for i in range(nd):
        span = in_shape[i] + pb[i] + pe[i] - eff[i]
        if ceil_mode:
            o = -(-span // strides[i]) + 1
            # the last window must start inside the input or the left padding
            if (o - 1) * strides[i] >= in_shape[i] + pb[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out.append(max(o, 0))
    return pb, pe, out


def extra_end(
    in_shape: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pb: Sequence[int],
    pe: Sequence[int],
    out: Sequence[int],
) -> list[int]:
    """End padding beyond ``pe`` that the last (ceil-mode) windows need so slicing stays in bounds."""
    res = []
    for n, k, s, d, b, e, o in zip(in_shape, kernel, strides, dilations, pb, pe, out):
        need = (o - 1) * s + (k - 1) * d + 1 if o > 0 else 0
        res.append(max(0, need - (n + b + e)))
    return res


def pad_spatial(
    x: np.ndarray,
    pb: Sequence[int],
    pe: Sequence[int],
    value: float | int = 0,
    dtype: np.dtype | None = None,
) -> np.ndarray:
    """Pad the trailing ``len(pb)`` axes of ``x`` with a constant, casting to ``dtype`` on the way.

    ``pb``/``pe`` must be non-negative. Returns ``x`` itself when there is nothing to do.
    """
    dtype = np.dtype(dtype) if dtype is not None else x.dtype
    nd = len(pb)
    if not any(pb) and not any(pe):
        return x if x.dtype == dtype else x.astype(dtype)
    lead = x.shape[: x.ndim - nd]
    sp = x.shape[x.ndim - nd :]
    shape = lead + tuple(n + b + e for n, b, e in zip(sp, pb, pe))
    out = np.full(shape, value, dtype=dtype)
    inner = (Ellipsis,) + tuple(slice(b, b + n) for b, n in zip(pb, sp))
    out[inner] = x
    return out


def windows(
    xp: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out: Sequence[int],
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(kernel_offset, view)`` for each kernel position; view has the output's spatial shape.

    ``xp`` is the padded input; its trailing ``len(kernel)`` axes are spatial. The loop is over
    kernel positions only (e.g. 9 for 3x3), each yielding a strided view over all output pixels.
    """
    nd = len(kernel)
    lead = (slice(None),) * (xp.ndim - nd)
    for offs in itertools.product(*(range(k) for k in kernel)):
        sl = tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offs, dilations, strides, out)
        )
        yield offs, xp[lead + sl]


# --------------------------------------------------------------------------------------------
# convolution core
# --------------------------------------------------------------------------------------------


def conv_core(
    xp: np.ndarray,
    wmat: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out: Sequence[int],
) -> np.ndarray:
    """Grouped N-D convolution of a padded, centred input.

    Args:
        xp: (N, C, *padded_spatial) in the accumulation dtype, zero-point already subtracted and
            zero-padded (so padding contributes nothing, as the specs require).
        wmat: (G, Mg, Cg * prod(kernel)), same dtype, rows in (c, k_0, k_1, ...) order.
    Returns:
        (N, G * Mg, *out) in the accumulation dtype.

    Depthwise-like convs (Cg == 1) use direct multiply-accumulate over the kernel positions; every
    other case uses im2col (one strided copy per kernel position) + one ``matmul`` batched over
    the groups (the batch is folded into the GEMM's columns), so groups are vectorised as well.
    """
    n, c = xp.shape[:2]
    g, mg, kk = wmat.shape
    cg = c // g
    nk = math.prod(kernel)
    out = tuple(int(o) for o in out)
    p = math.prod(out)
    if n == 0 or p == 0 or g * mg == 0:
        return np.zeros((n, g * mg) + out, dtype=xp.dtype)
    if kk == 0:
        return np.zeros((n, g * mg) + out, dtype=xp.dtype)
    if cg == 1:
        acc = np.zeros((n, g, mg) + out, dtype=xp.dtype)
        tmp = np.empty_like(acc)
        wshape = (1, g, mg) + (1,) * len(out)
        for i, (_, view) in enumerate(windows(xp, kernel, strides, dilations, out)):
            np.multiply(view[:, :, None], wmat[:, :, i].reshape(wshape), out=tmp)
            acc += tmp
        return acc.reshape((n, g * mg) + out)
    if n == 1:
        # (G, Mg, K) @ (1, G, K, P) -> (1, G, Mg, P): already the output layout
        if nk == 1 and all(s == 1 for s in strides) and tuple(xp.shape[2:]) == out:
            cols = xp.reshape(1, g, cg, p)
        else:
            cols = np.empty((1, c, nk) + out, dtype=xp.dtype)
            for i, (_, view) in enumerate(windows(xp, kernel, strides, dilations, out)):
                cols[:, :, i] = view
            cols = cols.reshape(1, g, cg * nk, p)
        return np.matmul(wmat, cols).reshape((n, g * mg) + out)
    # batch > 1: fold the batch into the GEMM's column dimension (one large GEMM per group
    # instead of N small ones), then move the batch axis back to the front.
    cols = np.empty((c, nk, n) + out, dtype=xp.dtype)
    for i, (_, view) in enumerate(windows(xp, kernel, strides, dilations, out)):
        cols[:, i] = view.swapaxes(0, 1)
    res = np.matmul(wmat, cols.reshape(g, cg * nk, n * p))  # (G, Mg, N*P)
    res = res.reshape((g * mg, n) + out)
    return np.ascontiguousarray(res.swapaxes(0, 1))


def conv_weight_matrix(wc: np.ndarray, group: int) -> np.ndarray:
    """(M, Cg, *kernel) -> (G, M/G, Cg*prod(kernel)), contiguous."""
    m = wc.shape[0]
    return np.ascontiguousarray(wc.reshape(group, m // group, -1))
