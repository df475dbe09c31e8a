"""The accuracy-target search: measure, rank the layers, change the best-ranked ones one at a time until the
target holds; no reconstruction runs again (the other layers keep their state).

Ranking: each candidate layer's change is applied alone to the current state and the target measured (the
"revert" gain: what changing this layer buys on the quantized model, activations and reconstruction included;
the graph runs once up to each layer and only the rest of it per candidate: ``sim/suffix.py``);
the ``bits`` stage also ranks the activation quant points no layer reads directly (``changes.other_points``);
ties break on the BRECQ diagonal sensitivity (``mixed/sensitivity.py``: output error with this layer alone
quantized at the run's weight bits, the rest float, on the first 64 evaluation samples). Greedy: change layers in that order, measuring after each;
a change that brings the target no closer is undone (the row stays in the report, not kept); stop as soon as
the target holds. With ``target_action`` ``bits`` (and QDQ export), a second stage leaves
layers in float, ranked again on the all-8-bit state, when raising every candidate still misses.
The passes run on one CPU thread (``calib.calibrate.threads``): on a shared 2-core machine two threads made a
digits-model pass 100x slower (2.7 s against 0.025 s).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..calib.calibrate import threads
from ..config import QuantConfig
from ..data import Dataset
from ..diagnostics import Diagnostics
from ..eval import sqnr_db
from ..mixed.sensitivity import SAMPLES, measure_sensitivities
from ..plan import BitPlan
from ..sim.model import SimModel, simulate
from ..sim.state import QuantState
from ..sim.suffix import Trial, first_changed_node, node_positions, trial_outputs
from ..targets import get_target
from .changes import RAISED_BITS, can_change, change_layer, change_point, layer_bits, other_points, point_bits
from .cost import FLOAT_BITS, latency_ms, weight_bytes
from .target import Measure, Metric, Target, format_measure

log = logging.getLogger("onnxptq")


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

    def changed(self) -> dict[str, str]:
        """Layer -> its final change (``bits`` or ``float``) in the exported model."""
        return {s.layer: s.action for s in self.steps if s.kept}

    def lines(self) -> list[str]:
        """The CLI's table: one line per step, then the cost."""
        out = [f"target {self.target} on {self.eval_samples} samples ({self.eval_source}): "
               f"{'met' if self.met else 'MISSED'}; before {format_measure(self.before)}, "
               f"after {format_measure(self.after)}"]
        if self.steps:
            out.append(f"  {'step':>4}  {'layer':<28} {'change':<7} {'weights':<12} {'input':<8} "
                       f"{'alone':>9} {'sensitivity':>11}  after")
        for k, s in enumerate(self.steps, 1):
            out.append(f"  {k:>4}  {s.layer[:28]:<28} {s.action:<7} {s.w_bits:<12} {s.in_bits:<8} "
                       f"{s.alone.sqnr_db:>6.2f} dB {_fmt(s.sensitivity):>11}  {format_measure(s.measure)}"
                       + ("" if s.kept else "  (no gain: undone)"))
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


class _Evaluator:
    """The target of a QuantState: the simulation runs it on the evaluation samples against the float outputs."""

    def __init__(self, sim: SimModel, data: Dataset, float_out: np.ndarray, metric: Metric | None,
                 batch_size: int, progress: bool) -> None:
        self.sim, self.data, self.float_out, self.metric = sim, data, float_out, metric
        self.batch_size, self.count = batch_size, 0
        self.bar = tqdm(desc="accuracy target", unit="eval", disable=not progress, dynamic_ncols=True)

    @torch.no_grad()
    def __call__(self, state: QuantState) -> Measure:
        self.sim.load_state(state)
        out = simulate(self.sim, self.data.inputs, self.batch_size)
        self.count += 1
        self.bar.update(1)
        return self._measure(out)

    def many(self, base: QuantState, variants: dict[str, QuantState]) -> dict[str, Measure]:
        """The target of each of ``variants`` (states differing from ``base`` in a few places), each computed
        from its first changed node on (``sim.suffix``): the same values as calling this on each."""
        sim, positions = self.sim, node_positions(self.sim)

        def load(state: QuantState):
            return lambda: sim.load_state(state)

        trials = [Trial(first_changed_node(sim, base, v, positions), load(v), load(base)) for v in variants.values()]
        sim.load_state(base)
        outs = trial_outputs(sim, self.data.inputs, trials, self.batch_size, self.bar.update)
        self.count += len(trials)
        return {name: self._measure(out) for name, out in zip(variants, outs)}

    def _measure(self, out: np.ndarray) -> Measure:
        return Measure(float(sqnr_db(self.float_out, out)),
                       None if self.metric is None else float(self.metric(out, self.data.labels)))


def control_accuracy(sim: SimModel, data: Dataset, cfg: QuantConfig, plan: BitPlan, diagnostics: Diagnostics,
                     metric: Metric | None = None, eval_source: str = "", cache: dict | None = None
                     ) -> AccuracyControlReport:
    """Meet ``cfg.min_sqnr`` / ``cfg.max_drop`` (``metric``: needed with max_drop) on ``data`` by changing layers of
    the quantized ``sim`` (module doc). ``sim`` ends holding the exported state; ``plan`` gets the changed bits (a
    float layer: 32); ``diagnostics`` lists the changed layers and a missed target."""
    with threads(1):
        return _control(sim, data, cfg, plan, diagnostics, metric, eval_source, cache)


def _control(sim: SimModel, data: Dataset, cfg: QuantConfig, plan: BitPlan, diagnostics: Diagnostics,
             metric: Metric | None, eval_source: str, cache: dict | None) -> AccuracyControlReport:
    t0 = time.perf_counter()
    qg = sim.qg
    was_training = sim.training
    sim.eval()
    float_sim = SimModel(qg).to(cfg.device).eval()  # quantizers off: the float model
    float_out = simulate(float_sim, data.inputs, cfg.batch_size)
    if cfg.max_drop is not None and metric is None:
        raise ValueError("max_drop needs a metric")
    target = Target(cfg.min_sqnr, cfg.max_drop, None if metric is None else float(metric(float_out, data.labels)))
    evaluate = _Evaluator(sim, data, float_out, metric, cfg.batch_size, cfg.progress)
    base = sim.export_state()
    before = evaluate(base)
    rep = AccuracyControlReport(target.describe(), eval_source, len(data), before, before, target.holds(before),
                                weight_bytes_before=weight_bytes(qg, base))
    state = base
    try:
        if not rep.met:
            names = [x.name for x in qg.layers]
            diag, _ = measure_sensitivities(float_sim, data, cfg, names, (cfg.w_bits,), min(len(data), SAMPLES),
                                            cfg.progress, cache, pairs=False)
            search = _Search(sim, cfg, target, evaluate, {n: diag[(n, cfg.w_bits)] for n in names}, rep)
            fallback = cfg.target_action == "bits" and cfg.format != "int"  # --format int holds no float layer
            current = before
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


@dataclass
class _Search:
    """One stage of the greedy search: rank the layers ``action`` can change, then change them in that order."""

    sim: SimModel
    cfg: QuantConfig
    target: Target
    evaluate: _Evaluator
    sensitivity: dict[str, float]  # BRECQ diagonal, the tie-break
    rep: AccuracyControlReport  # gets a Step per tried change

    def stage(self, action: str, state: QuantState, current: Measure) -> tuple[QuantState, Measure]:
        sim, cfg, target = self.sim, self.cfg, self.target
        w8 = get_target(cfg.target).weight_bits(RAISED_BITS)
        cands = [x.name for x in sim.qg.layers if can_change(state, sim, x.name, action, w8)]
        points = other_points(state, sim) if action == "bits" else []

        def change(s: QuantState, name: str) -> QuantState:
            return change_point(s, name) if name in points else change_layer(s, sim, name, action, cfg, w8)

        ranked = state
        variants = {n: change(state, n) for n in cands + points}
        alone = self.evaluate.many(state, variants)
        order = sorted(variants, key=lambda n: (target.key(alone[n]), self.sensitivity.get(n, 0.0)), reverse=True)
        for name in order:
            # nothing kept since the ranking (the first step, or only undone ones): the ranked variant is the step
            tried = variants[name] if state is ranked else change(state, name)
            if name in points:
                w_text, in_text = "-", _bits_text(point_bits(state, name), point_bits(tried, name))
            else:
                b0, b1 = layer_bits(state, sim, name), layer_bits(tried, sim, name)
                w_text, in_text = _bits_text(b0.w_bits, b1.w_bits), _bits_text(b0.in_bits, b1.in_bits)
            m = alone[name] if state is ranked else self.evaluate(tried)
            keep = target.holds(m) or target.key(m) > target.key(current)
            self.rep.steps.append(Step(name, action, w_text, in_text, alone[name], self.sensitivity.get(name), m,
                                       weight_bytes(sim.qg, tried), keep, "point" if name in points else "layer"))
            if keep:
                state, current = tried, m
            if target.holds(current):
                break
        return state, current


def _bits_text(a: int | None, b: int | None) -> str:
    name = {None: "float"}
    return f"{name.get(a, a)}" if a == b else f"{name.get(a, a)} -> {name.get(b, b)}"


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
