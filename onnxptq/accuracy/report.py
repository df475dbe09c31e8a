"""What the accuracy target changed: one ``Step`` per tried change, one ``Round`` per round before
reconstruction, and the ``AccuracyControlReport`` that ``QuantResult.accuracy_control`` holds (the CLI's table)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .target import Measure, format_measure


@dataclass
class Step:
    """One changed layer, in the order of the search."""

    layer: str
    action: str  # bits | float
    w_bits: str  # "4 -> 8", "8 -> float"
    in_bits: str  # the input quant point's bits, "4 -> 8" (or "8" unchanged)
    alone: Measure  # the target with only this layer changed (its rank)
    sensitivity: float | None  # BRECQ diagonal sensitivity (noise-to-signal of the output)
    measure: Measure  # the target with this change and every earlier kept one
    weight_bytes: float  # the same
    kept: bool  # False: it brought the target no closer and was undone
    kind: str = "layer"  # layer (weights and input) | point (an activation quant point alone: ``layer`` is its tensor)
    round: int = 0  # 0: measured on the method's model; k: round k on the calibrated model (``accuracy/rounds.py``)


@dataclass
class Round:
    """One round before reconstruction (``accuracy/rounds.py``): changes chosen on the calibrated model against
    ``goal``, then the method's reconstruction run again on it."""

    goal: str  # the target the calibrated model was searched for, e.g. "SQNR >= 5.31 dB"
    calibrated: Measure  # the calibrated model with every change kept so far
    reconstructed: Measure  # the same after reconstruction
    kept: int  # changes this round kept
    seconds: float  # wall time of its reconstruction


@dataclass
class AccuracyControlReport:
    """What the accuracy target changed (``QuantResult.accuracy_control``)."""

    target: str  # e.g. "SQNR >= 12 dB"
    eval_source: str  # where the evaluation samples come from
    eval_samples: int
    before: Measure  # the quantized model before any change
    after: Measure  # the exported model
    met: bool
    steps: list[Step] = field(default_factory=list)  # every tried change, in order
    weight_bytes_before: float = 0.0  # quantized weights, bits / 8 each (float: 4 bytes), no biases
    weight_bytes_after: float = 0.0
    latency_ms_before: float | None = None  # --target-latency: onnxruntime, batch 1, one thread, median
    latency_ms_after: float | None = None
    evaluations: int = 0  # states measured on the evaluation samples (a ranked one: from its layer on)
    seconds: float = 0.0  # wall time of the search
    notes: list[str] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)  # bits chosen before reconstruction (accuracy/rounds.py)
    rank_samples: int | None = None  # the first this many samples rank the changes (Step.alone); None: all

    def changed(self) -> dict[str, str]:
        """Layer -> its final change (``bits`` or ``float``) in the exported model."""
        return {s.layer: s.action for s in self.steps if s.kept}

    def lines(self) -> list[str]:
        """The CLI's table: one line per step, then the cost."""
        out = [f"target {self.target} on {self.eval_samples} samples ({self.eval_source}): "
               f"{'met' if self.met else 'MISSED'}; before {format_measure(self.before)}, "
               f"after {format_measure(self.after)}"]
        if self.steps:
            if self.rank_samples is not None and self.rank_samples < self.eval_samples:
                out.append(f"  ('alone': ranked on the first {self.rank_samples} samples)")
            out.append(f"  {'step':>4}  {'layer':<28} {'change':<7} {'weights':<12} {'input':<8} "
                       f"{'alone':>9} {'sensitivity':>11}  after")
        for k, s in enumerate(self.steps, 1):
            where = f"r{s.round} " if s.round else ""
            out.append(f"  {k:>4}  {where + s.layer[:28 - len(where)]:<28} {s.action:<7} {s.w_bits:<12} {s.in_bits:<8} "
                       f"{s.alone.sqnr_db:>6.2f} dB {_fmt(s.sensitivity):>11}  {format_measure(s.measure)}"
                       + ("" if s.kept else "  (no gain: undone)"))
        for k, r in enumerate(self.rounds, 1):
            out.append(f"  round {k} (rows r{k}: on the calibrated model): goal {r.goal}, {r.kept} change(s) kept, "
                       f"calibrated {format_measure(r.calibrated)} -> reconstructed {format_measure(r.reconstructed)} "
                       f"(reconstruction {r.seconds:.0f} s)")
        cost = (f"  cost: weights {self.weight_bytes_before / 1e3:.1f} kB -> {self.weight_bytes_after / 1e3:.1f} kB "
                f"({self.weight_bytes_after / max(self.weight_bytes_before, 1e-9):.2f}x)")
        if self.latency_ms_before is not None:
            cost += (f"; onnxruntime latency (batch 1, 1 thread, median) {self.latency_ms_before:.3f} -> "
                     f"{self.latency_ms_after:.3f} ms")
        out.append(cost + f"; {self.evaluations} evaluations in {self.seconds:.1f} s")
        out += [f"  note: {n}" for n in self.notes]
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "changed": self.changed()}


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3g}"
