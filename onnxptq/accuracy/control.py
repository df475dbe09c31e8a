"""The accuracy target (``--min-sqnr`` / ``--max-drop``): measure the quantized model on the evaluation samples,
then change the fewest, most sensitive layers until the target holds.

For a method that reconstructs (and ``target_action`` ``bits``, ``target_stage`` auto/before) the changes are
first chosen on the calibrated model and the reconstruction runs again (``accuracy/rounds.py``). If the target is
still missed, the stages run on the quantized (reconstructed) model, where no reconstruction runs again (the
other layers keep their state): ``bits`` (``accuracy/search.py``: rank, then greedy), then, with
``target_action`` ``bits`` and QDQ export, a second stage leaves layers in float, ranked again on the
all-8-bit state, when raising every candidate still misses.
"""
from __future__ import annotations

import time
from typing import Callable

from ..calib.calibrate import threads
from ..config import QuantConfig
from ..data import Dataset
from ..diagnostics import Diagnostics
from ..mixed.sensitivity import SAMPLES, measure_sensitivities
from ..plan import BitPlan
from ..sim.model import SimModel, simulate
from ..sim.state import QuantState
from .changes import RAISED_BITS
from .cost import FLOAT_BITS, latency_ms, weight_bytes
from .report import AccuracyControlReport, Round, Step
from .search import Evaluator, Search
from .target import Metric, Target, format_measure

__all__ = ["AccuracyControlReport", "Round", "Step", "control_accuracy"]


def control_accuracy(sim: SimModel, data: Dataset, cfg: QuantConfig, plan: BitPlan, diagnostics: Diagnostics,
                     metric: Metric | None = None, eval_source: str = "", cache: dict | None = None,
                     calibrated: QuantState | None = None, reconstruct: Callable[[], object] | None = None
                     ) -> AccuracyControlReport:
    """Meet ``cfg.min_sqnr`` / ``cfg.max_drop`` (``metric``: needed with max_drop) on ``data`` by changing layers of
    the quantized ``sim`` (module doc). ``sim`` ends holding the exported state; ``plan`` gets the changed bits (a
    float layer: 32); ``diagnostics`` lists the changed layers and a missed target.

    ``calibrated`` (the state before reconstruction) and ``reconstruct`` (runs the method's reconstruction on the
    state ``sim`` holds, in place) turn on the rounds before reconstruction (``accuracy/rounds.py``)."""
    t0 = time.perf_counter()
    qg = sim.qg
    was_training = sim.training
    sim.eval()
    with threads(1):
        float_sim = SimModel(qg).to(cfg.device).eval()  # quantizers off: the float model
        float_out = simulate(float_sim, data.inputs, cfg.batch_size)
    if cfg.max_drop is not None and metric is None:
        raise ValueError("max_drop needs a metric")
    target = Target(cfg.min_sqnr, cfg.max_drop, None if metric is None else float(metric(float_out, data.labels)))
    evaluate = Evaluator(sim, data, float_out, metric, cfg.batch_size, cfg.progress, cfg.target_rank_samples)
    base = sim.export_state()
    before = evaluate(base)
    rep = AccuracyControlReport(target.describe(), eval_source, len(data), before, before, target.holds(before),
                                weight_bytes_before=weight_bytes(qg, base), rank_samples=evaluate.rank_samples)
    state, current = base, before
    try:
        if not rep.met:
            names = [x.name for x in qg.layers]
            with threads(1):
                diag, _ = measure_sensitivities(float_sim, data, cfg, names, (cfg.w_bits,), min(len(data), SAMPLES),
                                                cfg.progress, cache, pairs=False)
            sens = {n: diag[(n, cfg.w_bits)] for n in names}
            if reconstruct is not None and calibrated is not None:
                from .rounds import search_before_reconstruction

                state, current = search_before_reconstruction(
                    sim, cfg, target, evaluate, sens, rep, calibrated, state, current, reconstruct)
            fallback = cfg.target_action == "bits" and cfg.format != "int"  # --format int holds no float layer
            search = Search(sim, cfg, target, evaluate, sens, rep)
            for action in [cfg.target_action] + (["float"] if fallback else []):
                if not target.holds(current):
                    state, current = search.stage(action, state, current)
            rep.met, rep.after = target.holds(current), current
            if not rep.met and cfg.target_action == "bits" and not fallback:
                rep.notes.append("--format int holds no float layer: no float stage after the 8-bit one")
        rep.weight_bytes_after = weight_bytes(qg, state)
        if cfg.target_latency:
            rep.latency_ms_before, rep.latency_ms_after = latency_ms(sim, [base, state], cfg)
        sim.load_state(state)
    finally:
        evaluate.bar.close()
        sim.train(was_training)
    _update_plan(plan, sim, state)
    rep.evaluations, rep.seconds = evaluate.count, time.perf_counter() - t0
    _record(rep, diagnostics, len(qg.layers), len(qg.quant_points))
    return rep


def _update_plan(plan: BitPlan, sim: SimModel, state: QuantState) -> None:
    for x in sim.qg.layers:
        p = state.weight_params.get(x.name)
        plan.w_bits[x.name] = FLOAT_BITS if p is None else p.grid.bits
    for t, p in state.act_params.items():
        plan.a_bits[t] = p.grid.bits


def _record(rep: AccuracyControlReport, diagnostics: Diagnostics, n_layers: int, n_points: int) -> None:
    changed = rep.changed()
    points = {s.layer for s in rep.steps if s.kind == "point"}
    for name, action in changed.items():
        kind = "target-float" if action == "float" else "target-point" if name in points else "target-bits"
        diagnostics.add(kind, name, "weights left in float for the accuracy target" if action == "float" else
                        f"activation raised to {RAISED_BITS} bits for the accuracy target" if name in points else
                        f"weights and input raised to {RAISED_BITS} bits for the accuracy target", quiet=True)
    for kind, total in (("target-float", n_layers), ("target-bits", n_layers), ("target-point", n_points)):
        if diagnostics.of(kind):
            diagnostics.totals[kind] = total
    if not rep.met:
        diagnostics.add("target-missed", "", f"accuracy target {rep.target} missed with {len(changed)} of "
                        f"{len(rep.steps)} tried layer change(s) kept; best achieved {format_measure(rep.after)} "
                        "(exported)")
