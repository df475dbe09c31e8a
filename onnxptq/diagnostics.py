"""Fallbacks and warnings of a run, collected by every stage and shown in the CLI summary.

A fallback is anything the run did other than what the user asked for: a region the guard sent back to
its round-to-nearest state, activation steps kept at their calibrated values, a bias correction dropped,
Bit-Split channels kept at RTN, a layer left in float, the simplifier skipped, a layer the target runtime
runs on float kernels, a node simulated by onnx2torch instead of the own op table, a layer the accuracy target
raised to 8 bits or left in float, an accuracy target missed. Each is logged at WARNING level when it is recorded
(the accuracy target's changes quietly: the CLI prints them) and counted in ``QuantResult.summary()``
(``"3/18 regions kept RTN"``), so none is visible only in ``--report``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

log = logging.getLogger("onnxptq")

# kind -> (what is counted, how the summary line reads it)
KINDS: dict[str, str] = {
    "region-rtn": "regions kept RTN (reconstruction did not lower the held-out loss)",
    "steps-kept": "activation steps kept at calibration (a learned step would overflow an int32 bias)",
    "steps-clamped": "learned activation steps raised until an int32 bias fits",
    "bias-correction-dropped": "bias corrections dropped (the held-out error was not lower with them)",
    "no-bias-input": "layers with no bias input to hold a bias correction (MatMul: its mean output shift stays)",
    "channels-rtn": "layers with Bit-Split channels kept at RTN",
    "float-layer": "layers left in float",
    "simplifier": "onnxsim skipped",
    "batch-chunks": "fixed batch kept: the graph runs in chunks of it (slower calibration)",
    "float-kernel": "layers on float kernels in the target runtime",
    "constant-operand": "MatMul / Einsum constant operands quantized like activations (per tensor, at the "
                        "activation bits)",
    "onnx2torch": "nodes simulated by onnx2torch (ops outside the own table; no integer form)",
    "target-bits": "layers raised to 8 bits for the accuracy target (weights and input)",
    "target-float": "layers left in float for the accuracy target",
    "target-point": "activation quant points raised to 8 bits for the accuracy target",
    "target-missed": "accuracy target missed",
    "lowering": "integer steps off the simulation by more than 1 LSB (verify/lowering.py)",
    "other": "other warnings",
}


_PLURALS = {"regions": "region", "steps": "step", "corrections": "correction", "layers": "layer", "nodes": "node",
            "points": "point", "warnings": "warning", "operands": "operand"}


def singular(what: str) -> str:
    """A ``KINDS`` phrase for a count of one: its first plural noun made singular and the pronouns that refer
    to it too ("bias corrections dropped (... with them)" -> "bias correction dropped (... with it)")."""
    words = what.split(" ")
    for k, w in enumerate(words):
        if w in _PLURALS:
            rest = re.sub(r"\b(them|they)\b", "it", " ".join(words[k + 1:]))
            return " ".join(words[:k] + [_PLURALS[w]] + ([rest] if rest else []))
    return what


@dataclass(frozen=True)
class Fallback:
    kind: str  # a key of KINDS
    where: str  # node, region or tensor name
    detail: str  # what happened and, where there is one, what to do

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}" if self.where else self.detail


@dataclass
class Diagnostics:
    """The fallbacks of one run, in the order they were recorded; ``totals`` holds the denominators
    (kind -> how many things could have fallen back, e.g. the number of regions)."""

    items: list[Fallback] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, where: str, detail: str, *, quiet: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown diagnostic kind {kind!r}; one of {', '.join(KINDS)}")
        item = Fallback(kind, where, detail)
        self.items.append(item)
        if not quiet:
            log.warning("%s", item)

    def mark(self) -> tuple[int, dict[str, int]]:
        """What ``rewind`` goes back to: the items and totals recorded so far."""
        return len(self.items), dict(self.totals)

    def rewind(self, mark: tuple[int, dict[str, int]]) -> None:
        """Forget what was recorded after ``mark`` (a stage that runs again records its fallbacks again)."""
        del self.items[mark[0]:]
        self.totals.clear()
        self.totals.update(mark[1])

    def of(self, kind: str) -> list[Fallback]:
        return [x for x in self.items if x.kind == kind]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for x in self.items:
            out[x.kind] = out.get(x.kind, 0) + 1
        return out

    def summary_lines(self, max_names: int = 5) -> list[str]:
        """One line per kind that occurred: ``"3/18 regions kept RTN (...): a, b, c"``."""
        lines = []
        for kind, n in self.counts().items():
            where = [x.where for x in self.of(kind) if x.where]
            names = ", ".join(where[:max_names]) + (f", ... ({len(where) - max_names} more)"
                                                     if len(where) > max_names else "")
            total = self.totals.get(kind)
            count = f"{n}/{total}" if total else f"{n}"
            what = KINDS[kind] if total or n != 1 else singular(KINDS[kind])
            lines.append(f"{count} {what}" + (f": {names}" if names else ""))
        return lines

    def to_dict(self) -> dict:
        return {"items": [asdict(x) for x in self.items], "totals": dict(self.totals)}
