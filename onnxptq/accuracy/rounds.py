"""Choosing the target's changes before reconstruction, for methods that reconstruct (``--target-stage before``).

After block reconstruction, raising one layer or quant point rarely gains: each reconstructed region compensates
the errors of the regions before it, so making one of them exact moves its output away from what the next
regions learned (Lite0 BRECQ W4A4, ``effnet-accuracy`` at git d11aa3f: 2 of 108 single changes gained).
Changes chosen on the calibrated model, before reconstruction, avoid that: reconstruction then learns
around them. A round:

1. goal = the calibrated model's value plus the reconstructed model's shortfall (``target.calibrated_goal``: the
   reconstruction is expected to gain what it gained last time);
2. the greedy ``bits`` search (``search.Search``, ranked suffix runs) changes the calibrated state until it
   meets the goal;
3. the method's reconstruction runs again from that state; the reconstructed model is measured.

Rounds stop when the target holds, when a round kept no change (every candidate raised or none gains), or after
``MAX_ROUNDS``; a target still missed then goes to the usual stages on the reconstructed model. Each round costs
one reconstruction; its rows in the report are measured on the calibrated model (``Step.round``).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from ..config import QuantConfig
from ..sim.model import SimModel
from ..sim.state import QuantState
from .report import AccuracyControlReport, Round
from .search import Evaluator, Search
from .target import Measure, Target, calibrated_goal, format_measure


log = logging.getLogger("onnxptq")

MAX_ROUNDS = 3


def search_before_reconstruction(sim: SimModel, cfg: QuantConfig, target: Target, evaluate: Evaluator,
                                 sensitivity: dict[str, float], rep: AccuracyControlReport,
                                 calibrated: QuantState, reconstructed: QuantState, measure: Measure,
                                 reconstruct: Callable[[], object]) -> tuple[QuantState, Measure]:
    """Rounds of (goal on the calibrated model, bits search, reconstruction) from ``calibrated`` and its
    reconstruction ``reconstructed`` (measured ``measure``); returns the last reconstructed state and its measure
    (module doc). ``rep`` gets the steps and a ``Round`` per round; ``sim`` ends holding the returned state."""
    cal_measure = evaluate(calibrated)
    for k in range(1, MAX_ROUNDS + 1):
        goal = calibrated_goal(target, cal_measure, measure)
        if goal.holds(cal_measure):  # no shortfall left to make up on the calibrated model
            break
        n_steps = len(rep.steps)
        search = Search(sim, cfg, goal, evaluate, sensitivity, rep, round=k)
        changed, changed_measure = search.stage("bits", calibrated, cal_measure)
        kept = sum(s.kept for s in rep.steps[n_steps:])
        if changed is calibrated:
            rep.notes.append(f"round {k} before reconstruction: no change of the calibrated model gains "
                             f"toward {goal.describe()}; stopped")
            break
        calibrated, cal_measure = changed, changed_measure
        log.info("accuracy target, round %d: %d change(s) on the calibrated model (%s); reconstructing again",
                 k, kept, format_measure(cal_measure))
        sim.load_state(calibrated)
        t0 = time.perf_counter()
        reconstruct()
        seconds = time.perf_counter() - t0
        sim.eval()
        reconstructed = sim.export_state()
        measure = evaluate(reconstructed)
        rep.rounds.append(Round(goal.describe(), cal_measure, measure, kept, seconds))
        if target.holds(measure):
            break
    sim.load_state(reconstructed)
    return reconstructed, measure
