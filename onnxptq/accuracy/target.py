"""The accuracy target and the evaluation samples it is measured on (pure helpers)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray | None], float]  # (first model output, labels) -> higher is better


@dataclass(frozen=True)
class Measure:
    """What the target reads from one model on the evaluation samples."""

    sqnr_db: float  # first output vs the float model's
    metric: float | None = None  # the user metric (None without one)


@dataclass(frozen=True)
class Target:
    """``min_sqnr`` dB and/or a metric at most ``max_drop`` below the float model's ``float_metric``."""

    min_sqnr: float | None = None
    max_drop: float | None = None
    float_metric: float | None = None

    def __post_init__(self) -> None:
        if self.min_sqnr is None and self.max_drop is None:
            raise ValueError("a target needs min_sqnr and/or max_drop")
        if self.max_drop is not None and self.float_metric is None:
            raise ValueError("max_drop needs the float model's metric")

    def holds(self, m: Measure) -> bool:
        ok = self.min_sqnr is None or m.sqnr_db >= self.min_sqnr
        if self.max_drop is not None:
            ok = ok and m.metric is not None and self.float_metric - m.metric <= self.max_drop + 1e-12
        return bool(ok)

    def key(self, m: Measure) -> tuple[float, ...]:
        """Larger is closer to the target: the metric first when there is one, then the SQNR."""
        sqnr = m.sqnr_db if math.isfinite(m.sqnr_db) else 1e9
        return (m.metric, sqnr) if self.max_drop is not None else (sqnr,)

    def describe(self) -> str:
        parts = []
        if self.min_sqnr is not None:
            parts.append(f"SQNR >= {_short(self.min_sqnr)} dB")
        if self.max_drop is not None:
            parts.append(f"metric >= {self.float_metric - self.max_drop:.4g} (float {self.float_metric:.4g} - "
                         f"{_short(self.max_drop, 4)})")
        return " and ".join(parts)


def _short(x: float, places: int = 2) -> str:
    """``x`` with at most ``places`` decimals and no trailing zeros: 12 -> "12", 22.2974 -> "22.3"."""
    return f"{x:.{places}f}".rstrip("0").rstrip(".")


def calibrated_goal(target: Target, calibrated: Measure, reconstructed: Measure) -> Target:
    """The target the calibrated (not yet reconstructed) model must meet so that the reconstructed one meets
    ``target`` if reconstruction gains again what it gained last time (``reconstructed`` - ``calibrated``): per
    part, the calibrated value plus the reconstructed model's shortfall (``accuracy/rounds.py``)."""
    sqnr = None
    if target.min_sqnr is not None:
        sqnr = calibrated.sqnr_db + (target.min_sqnr - reconstructed.sqnr_db)
    drop = None
    if target.max_drop is not None:
        if calibrated.metric is None or reconstructed.metric is None:
            raise ValueError("a metric target needs the metric of both models")
        needed = target.float_metric - target.max_drop  # the metric the reconstructed model must reach
        drop = target.float_metric - (calibrated.metric + needed - reconstructed.metric)
    return Target(sqnr, drop, target.float_metric)


def format_measure(m: Measure) -> str:
    return f"SQNR {m.sqnr_db:.2f} dB" + (f", metric {m.metric:.4g}" if m.metric is not None else "")


def top1_accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float:
    """The CLI's metric of ``--max-drop``: top-1 accuracy (0..1) of the first output's argmax."""
    if labels is None:
        raise ValueError("top-1 accuracy needs labels")
    return float(np.mean(outputs.reshape(len(outputs), -1).argmax(1) == np.asarray(labels).reshape(-1)))


def eval_split(n_total: int, n_calib: int, max_eval: int) -> tuple[int, int, int]:
    """(calibration samples kept, first and end index of the evaluation samples) of a calibration set of
    ``n_total``: the samples beyond the ``n_calib`` that calibration uses, at most ``max_eval``; when there are
    none to spare, the last quarter (at most ``max_eval``, at least 1) is held out and calibration keeps the rest."""
    if n_total < 2:
        raise ValueError(f"need at least 2 calibration samples to hold some out for the target; got {n_total}")
    n_calib = min(n_calib, n_total)
    if n_total > n_calib:
        return n_calib, n_calib, min(n_total, n_calib + max_eval)
    n_eval = max(1, min(max_eval, n_total // 4))
    return n_total - n_eval, n_total - n_eval, n_total
