"""Integer requantization: the exact shift/division rules of the integer model (DESIGN.md section 4).

Every function works on NumPy integer arrays and on torch integer tensors alike (``//`` and ``%`` are
floor division and floor modulo in both), and mirrors step for step the ONNX ops the integer
exporter writes, so the integer simulation, the exported graph and ``runtime/`` compute the same
integers. Values are plain integers; a tensor with ``f`` fractional bits means ``q * 2^-f``.
"""
from __future__ import annotations

import numpy as np

from .params import is_power_of_two
from .rounding import rne

ROUNDING_MODES = ("rne", "half_up")
F32_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32


def po2_frac(scale: float | np.ndarray) -> np.ndarray:
    """Fractional bits f of an exact power-of-two scale s = 2^-f (raises if a scale is not Po2)."""
    s = np.asarray(scale, dtype=np.float64)
    ok = (s > 0) & np.isfinite(s) & is_power_of_two(s)
    if not np.all(ok):
        raise ValueError(f"scale {s.reshape(-1)[np.flatnonzero(~ok.reshape(-1))[0]]} is not a power of two")
    return (-np.log2(s)).astype(np.int64)


def rne_shift(a, n, mode: str = "rne"):
    """R(a, n) = round(a / 2^n) for integer a and shift n >= 1 (per element or broadcast per channel).

    ``rne`` rounds ties to even with the integer-only recipe of DESIGN.md section 4: D = 2^n,
    odd = floor(a / D) mod 2, t = a + D/2 - 1 + odd, result floor(t / D). ``half_up`` rounds ties
    towards +inf: floor((a + D/2) / D). Exact for any integers (no float).
    """
    d = 2 ** n if isinstance(n, int) else _pow2(n)
    if mode == "half_up":
        return (a + d // 2) // d
    odd = (a // d) % 2
    return (a + (d // 2 - 1) + odd) // d


def shift_float(a, n, mode: str = "rne"):
    """round(a / 2^n) computed as round(a * 2^-n) in float64: the same integers as ``rne_shift`` /
    ``requant_shift`` (any integer n) for integer-valued float64 ``a`` with |a| < 2^52, since the
    product by a power of two is exact and both roundings are exact there. The integer simulation's
    fast path; ``rne_shift`` is the recipe the exporter writes."""
    scaled = a * _exp2_neg(n)
    if mode == "half_up":
        return (scaled + 0.5).floor()
    return rne(scaled)


def _exp2_neg(n):
    if isinstance(n, (int, np.integer)):
        return 2.0 ** -int(n)
    if isinstance(n, np.ndarray):
        return np.exp2(-n.astype(np.float64))
    return 2.0 ** (-n.double())  # torch


def rne_div(a, d, mode: str = "rne"):
    """round(a / d) for integer a and positive integer divisor d (per element or broadcast).

    q = floor(a / d), r = a - q d in [0, d); ``rne`` rounds up iff 2r + (q mod 2) >= d + 1 (more than
    half, or exactly half with q odd), computed as floor((2r + (q mod 2)) / (d + 1)) in {0, 1}.
    ``half_up`` rounds up iff 2r >= d: floor(2r / d) in {0, 1}.
    """
    q = a // d
    r = a - q * d
    if mode == "half_up":
        return q + (2 * r) // d
    return q + (2 * r + q % 2) // (d + 1)


MULT_MAX = 2**15 - 1  # a constant factor is an int16 multiplier M (value M * 2^-f, one f per tensor)


def int16_multiplier(g: np.ndarray) -> tuple[np.ndarray, int]:
    """Constant factors ``g`` (any shape, one shared exponent) as int16 multipliers: (M, f) with
    M = RNE(g 2^f) and f the largest exponent for which max |g| 2^f <= MULT_MAX (f = 0 for g = 0)."""
    from .rounding import rne

    g = np.asarray(g, dtype=np.float64)
    g_max = float(np.abs(g).max()) if g.size else 0.0
    f = int(np.floor(np.log2(MULT_MAX / g_max))) if g_max > 0 else 0
    return rne(g * 2.0 ** f).astype(np.int64), f


def floor_sqrt(m):
    """floor(sqrt(m)) for integer m in [0, 2^52) (NumPy or torch int64), as the integer model computes it:
    Cast to float64, Sqrt, Floor, Cast. Exact: float64(m) = m, IEEE Sqrt is correctly rounded, and for
    k = ceil(sqrt(m)) <= 2^26 a non-square m is at least 1/(2k) below k, more than half an ulp of k, so
    rounding never reaches the next integer."""
    if isinstance(m, (np.ndarray, np.generic, int)):
        return np.floor(np.sqrt(np.asarray(m).astype(np.float64))).astype(np.int64)
    return m.double().sqrt().floor().long()  # torch


def round_sqrt(s, k: int, mode: str = "rne"):
    """round(sqrt(s) 2^k) for integer s in [0, 2^52 / 4^max(k, 0)) and any integer k: the integer ReduceL2.

    k >= 0: m = s 4^k, r = floor_sqrt(m). sqrt(m) is an integer or irrational, never r + 1/2, so it rounds
    up iff m >= (r + 1/2)^2 = r^2 + r + 1/4, i.e. m > r^2 + r (no tie, any ``mode``).
    k < 0, j = -k: round(sqrt(s) / 2^j) = floor((sqrt(s) + 2^(j-1)) / 2^j) = floor((r + 2^(j-1)) / 2^j) with
    r = floor_sqrt(s) (floor(y / D) = floor(floor(y) / D) for a positive integer D); a tie needs sqrt(s)
    rational, s = r^2, and is then rounded by ``mode`` (``rne_shift``).
    """
    if k >= 0:
        m = s * 4 ** k
        r = floor_sqrt(m)
        return r + (m > r * r + r) * 1
    r = floor_sqrt(s)
    half_up = (r + 2 ** (-k - 1)) // 2 ** -k
    return half_up + (rne_shift(r, -k, mode) - half_up) * (r * r == s)


def _sign(v):
    return (v > 0) * 1 - (v < 0) * 1


def div_round(num, den, mode: str = "rne", saturate: int = 2**40):
    """round(num / den) for integers of any sign (``rne_div`` on num sign(den) and |den|): the integer Div of
    two activations. den = 0 gives sign(num) * ``saturate``, which the output Clip turns into the grid's end,
    as the float x / 0 = +-inf (or x divided by a tiny clipped norm) saturates; 0 / 0 gives 0."""
    d = den * _sign(den)
    zero = (d == 0) * 1
    return rne_div(num * _sign(den), d + zero, mode) + _sign(num) * saturate * zero


def requant_shift(a, n, pre: int = 0, mode: str = "rne"):
    """a * 2^pre, then R(., n + pre): the per-channel requantization of an accumulator by 2^-n.

    The exporter picks ``pre = max(0, 1 - min(n))`` so every channel's right shift is at least 1;
    the left shift is exact, so the result is round(a / 2^n) for every channel, including n <= 0.
    """
    if pre:
        a = a * (2 ** pre)
    return rne_shift(a, n + pre, mode)


def _pow2(n):
    """2^n elementwise for a non-negative integer array/tensor n (keeps the array type)."""
    if isinstance(n, np.ndarray):
        return np.left_shift(np.int64(1), n.astype(np.int64))
    return 2 ** n  # torch tensors support ** with an int base


def shift_bound(max_abs_acc: int, n_plus_pre: int, pre: int, mode: str = "rne") -> int:
    """Largest magnitude any intermediate of ``requant_shift`` reaches (for the int32/int64 choice)."""
    shifted = max_abs_acc * 2 ** pre
    half = 2 ** (n_plus_pre - 1)
    return shifted + half + (1 if mode == "rne" else 0)


def exact_in_float32(v_min: int, v_max: int, n: int, zp: int, lo: int, hi: int) -> str:
    """"" when clip(RNE(float32(v) * 2^-n) + zp, lo, hi) == clip(R(v, n) + zp, lo, hi) for every integer
    v in [v_min, v_max] (onnxruntime's int32 bias add and float32 conversion included), else why not."""
    if max(-v_min, v_max) >= 2**31:
        return f"accumulator can reach {max(-v_min, v_max)} >= 2^31 (int32 bias add)"
    if max(-v_min, v_max) * 2.0 ** -n >= 2**30:
        return "the scaled accumulator can pass 2^30 (float -> int32 conversion)"
    pre = max(0, 1 - n)

    def sat(v: int) -> int:
        return min(max(int(requant_shift(v, n, pre)) + zp, lo), hi)

    if v_max > F32_EXACT and sat(F32_EXACT) != hi:
        return f"accumulator can reach {v_max} > 2^24 below saturation (float32 not exact)"
    if v_min < -F32_EXACT and sat(-F32_EXACT) != lo:
        return f"accumulator can reach {v_min} < -2^24 above saturation (float32 not exact)"
    return ""
