"""Hardware measures H(c) for mixed precision (BRECQ Eq. 12 constraint ``H(c) <= delta``) and budget parsing.

Model size counts quantized weights only, at ``bits/8`` bytes per weight with ideal bit packing (the convention of
BRECQ Sec. 4.5 and Attention Round Table 4, which count only the quantized layers' parameters). Not counted: scales,
zero points, biases, unquantized tensors and packing/alignment overhead; pass those as ``fixed_bytes``.
BOPs (bit operations) are ``sum_l MACs_l * b_w,l * b_a,l``.
"""
from __future__ import annotations

import math
import re

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_SIZE_UNITS = {
    "": 1.0, "b": 1.0,
    "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
    "ki": 2.0 ** 10, "kib": 2.0 ** 10, "mi": 2.0 ** 20, "mib": 2.0 ** 20,
    "gi": 2.0 ** 30, "gib": 2.0 ** 30, "ti": 2.0 ** 40, "tib": 2.0 ** 40,
}
_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_COUNT_SUFFIX = r"(?:bops|ops|macs)?"  # optional unit word after a count, ignored


def layer_size_bytes(num_weights: int, bits: int) -> float:
    """Bytes of ``num_weights`` weights at ``bits`` bits each: ``num_weights * bits / 8`` (ideal packing)."""
    if num_weights < 0 or bits <= 0:
        raise ValueError(f"need num_weights >= 0 and bits > 0, got {num_weights}, {bits}")
    return num_weights * bits / 8.0


def _check_keys(what: str, ref: dict[str, int], other: dict[str, int]) -> None:
    missing = [k for k in ref if k not in other]
    extra = [k for k in other if k not in ref]
    if missing or extra:
        raise ValueError(f"{what}: layers missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unknown {extra[:5]}{'...' if len(extra) > 5 else ''}")


def model_size_bytes(layer_weights: dict[str, int], bits: dict[str, int], fixed_bytes: float = 0) -> float:
    """Quantized-weight bytes ``fixed_bytes + sum_l n_l * b_l / 8``; ``bits`` must name exactly the same layers."""
    _check_keys("model_size_bytes bits", layer_weights, bits)
    return float(fixed_bytes) + sum(layer_size_bytes(n, bits[name]) for name, n in layer_weights.items())


def bops(macs: dict[str, int], w_bits: dict[str, int], a_bits: dict[str, int]) -> float:
    """Bit operations ``sum_l MACs_l * b_w,l * b_a,l``; both bit dicts must name exactly the layers of ``macs``."""
    _check_keys("bops w_bits", macs, w_bits)
    _check_keys("bops a_bits", macs, a_bits)
    return float(sum(n * w_bits[name] * a_bits[name] for name, n in macs.items()))


def _parse(text: str, units: dict[str, float], what: str, example: str, suffix: str = "") -> float:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    match = re.fullmatch(rf"\s*({_NUMBER})\s*([A-Za-z]*?)\s*{suffix}\s*", text, re.IGNORECASE)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in units:
        raise ValueError(f"cannot parse {what} {text!r}; expected a number with an optional unit "
                         f"({', '.join(u for u in units if u)}), e.g. {example}")
    value = float(match.group(1)) * units[unit]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite non-negative number, got {text!r}")
    return value


def parse_size(text: str) -> float:
    """Bytes from text such as ``"1.5MB"``, ``"800kB"``, ``"1200000"``, ``"1.2MiB"`` (case-insensitive units).

    Decimal prefixes k/M/G/T are powers of 1000, binary Ki/Mi/Gi/Ti powers of 1024; the ``B`` is optional.
    """
    return _parse(text, _SIZE_UNITS, "size", "'1.5MB', '800kB', '1.2MiB' or '1200000'")


def parse_count(text: str) -> float:
    """A count (e.g. BOPs) from ``"3.2G"``, ``"500M"``, ``"12k"``, ``"1e9"``; decimal prefixes k/M/G/T.

    A trailing ``BOPs``/``OPs``/``MACs`` word is allowed and ignored (``"3.2GBOPs"``).
    """
    return _parse(text, _COUNT_UNITS, "count", "'3.2G', '500M' or '1e9'", suffix=_COUNT_SUFFIX)
