"""Parity of an integer program with the simulation it was lowered from (the QDQ model's semantics).

Level-1 parity (``verify/integer.py``) proves that every engine computes the program the file records; it
cannot see a program that computes the wrong thing. This check compares the program with the torch
fake-quant simulation, which is what the QDQ export of the same state computes, at every activation quant
point, in LSB of the point's step:

- ``end_to_end``: both run freely on the same inputs (deltas accumulate downstream);
- ``local`` (teacher forcing): the simulation is fed the program's integers at every quant point, so the
  delta at a point is what the one integer step that produced it adds.

Integer steps round where the simulation rounds once in float (``--int-rounding``, requantization shifts,
exact division of averages, lookup tables), so a local delta of 1 LSB is rounding. A local delta above
1 LSB means the integer step computes another function than the simulated node: a lowering bug, or an
integer algorithm (Softmax, LayerNorm) departing from the float op by more than a step; the report names
the quant point and the step (node, kind) so that the user can see which.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..eval import padded_rows, sqnr_db
from ..export.intplan import IntProgram
from ..sim.model import SimModel
from .int_sim import IntSim
from .qdq import ParityReport, _qp, _report, simulate_quant_points

DEFECT_LSB = 1  # local deltas above this are not rounding


@dataclass
class LoweringParity:
    """Per quant point, the program's integers against the simulation's (module docstring)."""

    samples: int
    end_to_end: dict[str, ParityReport]
    local: dict[str, ParityReport]
    steps: dict[str, tuple[str, str]]  # quant point -> (node, step kind) of the program step producing it
    output_sqnr: float  # dB, the program's first quantized output against the simulation's (NaN: none)
    scale_problems: list[tuple[str, str]] = field(default_factory=list)  # (quant point, why): step is not the sim's
    skipped: list[str] = field(default_factory=list)  # quant points not compared (per-channel steps)

    def defect_items(self) -> list[tuple[str, str]]:
        """(quant point, what) for each point whose local delta is above ``DEFECT_LSB``, in graph order."""
        out = [(t, f"node {self.steps[t][0]!r} ({self.steps[t][1]} step) is off by up to {r.max_lsb:g} LSB on "
                   f"{1 - r.exact_rate:.2%} of the elements") for t, r in self.local.items() if r.max_lsb > DEFECT_LSB]
        return self.scale_problems + out

    def defects(self) -> list[str]:
        return [f"{t}: {what}" for t, what in self.defect_items()]

    @property
    def ok(self) -> bool:
        return not self.defects()

    def by_kind(self) -> dict[str, dict]:
        """Local deltas aggregated per step kind: elements, exact rate, max LSB."""
        agg: dict[str, list[ParityReport]] = {}
        for t, r in self.local.items():
            agg.setdefault(self.steps[t][1], []).append(r)
        out = {}
        for kind, reps in sorted(agg.items()):
            n = sum(r.elements for r in reps)
            out[kind] = {"points": len(reps), "elements": n, "max_lsb": max(r.max_lsb for r in reps),
                         "exact_rate": sum(r.exact_rate * r.elements for r in reps) / n if n else 1.0}
        return out

    def to_dict(self) -> dict:
        return {"samples": self.samples, "ok": self.ok, "output_sqnr_db": self.output_sqnr, "skipped": self.skipped,
                "defects": self.defects(), "local_by_kind": self.by_kind(),
                "end_to_end_max_lsb": max((r.max_lsb for r in self.end_to_end.values()), default=0.0)}

    def format(self) -> str:
        kinds = ", ".join(f"{k} {v['max_lsb']:g}" for k, v in self.by_kind().items())
        out = "no quantized output" if np.isnan(self.output_sqnr) else f"output SQNR {self.output_sqnr:.1f} dB"
        head = (f"integer program vs simulation over {self.samples} samples: {out}, "
                f"max local |delta| per step kind (LSB): {kinds}"
                + (f" ({len(self.skipped)} per-channel quant point(s) not compared)" if self.skipped else ""))
        bad = self.defects()
        return head if not bad else "\n".join([head + f"; {len(bad)} step(s) off by more than {DEFECT_LSB} LSB:"]
                                              + [f"  {d}" for d in bad])


def lowering_parity(sim: SimModel, program: IntProgram, inputs: dict[str, np.ndarray], batch_size: int = 8,
                    device: str = "cpu") -> LoweringParity:
    """``LoweringParity`` of ``program`` (lowered from ``sim``'s state) on ``inputs``."""
    if sim.chunk:  # a fixed batch: whole runs of it, the last one filled with copies of the last sample
        batch_size = sim.chunk
        n = len(next(iter(inputs.values())))
        inputs = {k: v[padded_rows(0, n + (-n % batch_size), n)] for k, v in inputs.items()}
    isim = IntSim(program, sim.consts, device)
    producer = {o: (s.node, s.kind) for s in program.steps if s.kind != "output" for o in s.outputs if o}
    points = [t for t in sim.qg.quant_points if t in program.tensors and t in producer]
    # per-channel activation steps (ECAQ) live in the program as channel shifts folded into the readers
    skipped = [t for t in points if np.asarray(sim.act_quantizer(t).params.scale).size != 1]
    points = [t for t in points if t not in skipped]
    info = {t: _qp(sim, t) for t in points}
    problems = []
    for t in list(points):
        scale, frac = float(info[t][0]), program.tensors[t].frac
        if scale != 2.0 ** -frac:
            problems.append((t, f"the program's step 2^-{frac} is not the simulation's scale {scale:g}"))
            points.remove(t)
    e2e: dict[str, list[np.ndarray]] = {t: [] for t in points}
    local: dict[str, list[np.ndarray]] = {t: [] for t in points}
    outs_int, outs_sim = [], []
    n = len(next(iter(inputs.values())))
    # the first output the program dequantizes (others, such as ArgMax's class index, are no grid values)
    out_name = next((o for o in program.outputs if o in program.tensors), None)
    was_training = sim.training
    sim.eval()
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                chunk = {k: v[i:i + batch_size] for k, v in inputs.items()}
                got = isim.run(chunk, keep=True)
                # the program's containers as the simulation's grid integers q = c - zp_program + z
                q = {t: got[f"{t}.q"] - program.tensors[t].zp + info[t][1] for t in points}
                feeds = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in chunk.items()}
                sim_out: dict[str, np.ndarray] = {}
                free = simulate_quant_points(sim, feeds, points=points, outputs=sim_out)
                forced = simulate_quant_points(sim, feeds, forced={t: q[t] + info[t][2] for t in points}, points=points)
                for t in points:
                    e2e[t].append(free[t] - q[t])
                    local[t].append(forced[t] - q[t])
                if out_name is not None:
                    outs_int.append(got[out_name])
                    outs_sim.append(sim_out[out_name])
    finally:
        sim.train(was_training)
    return LoweringParity(
        samples=n,
        end_to_end={t: _report(t, np.concatenate(v), n) for t, v in e2e.items()},
        local={t: _report(t, np.concatenate(v), n) for t, v in local.items()},
        steps={t: producer[t] for t in points},
        output_sqnr=sqnr_db(np.concatenate(outs_sim), np.concatenate(outs_int)) if outs_int else float("nan"),
        scale_problems=problems,
        skipped=skipped,
    )
