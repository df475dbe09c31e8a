"""The greedy search of one stage of the accuracy target, and the evaluator it measures states with.

Ranking: each candidate layer's change is applied alone to the current state and the target measured (the
"revert" gain: what changing this layer buys on the quantized model, activations and reconstruction included;
the graph runs once up to each layer and only the rest of it per candidate: ``sim/suffix.py``);
the ``bits`` stage also ranks the activation quant points no layer reads directly (``changes.other_points``);
ties break on the BRECQ diagonal sensitivity (``mixed/sensitivity.py``: output error with this layer alone
quantized at the run's weight bits, the rest float, on the first 64 evaluation samples). With
``--target-rank-samples N`` the ranking runs on the first N evaluation samples only (its cost is most of a
search: one suffix pass per candidate, against one full pass per greedy step). Greedy: change layers
in that order, measuring after each; a change that brings the target no closer is undone (the row stays in the
report, not kept); stop as soon as the target holds.
The passes run on one CPU thread (``calib.calibrate.threads``): on a shared 2-core machine two threads made a
digits-model pass 100x slower (2.7 s against 0.025 s).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..calib.calibrate import threads
from ..config import QuantConfig
from ..data import Dataset
from ..eval import sqnr_db
from ..sim.model import SimModel, simulate
from ..sim.state import QuantState
from ..sim.suffix import Trial, first_changed_node, node_positions, trial_outputs
from ..targets import get_target
from .changes import RAISED_BITS, can_change, change_layer, change_point, layer_bits, other_points, point_bits
from .cost import weight_bytes
from .report import AccuracyControlReport, Step
from .target import Measure, Metric, Target


class Evaluator:
    """The target of a QuantState: the simulation runs it on the evaluation samples against the float outputs."""

    def __init__(self, sim: SimModel, data: Dataset, float_out: np.ndarray, metric: Metric | None,
                 batch_size: int, progress: bool, rank_samples: int | None = None) -> None:
        self.sim, self.data, self.float_out, self.metric = sim, data, float_out, metric
        self.batch_size, self.count = batch_size, 0
        n = len(data)
        self.rank_samples = n if rank_samples is None else min(rank_samples, n)  # ``many`` measures these
        self.bar = tqdm(desc="accuracy target", unit="eval", disable=not progress, dynamic_ncols=True)

    @torch.no_grad()
    def __call__(self, state: QuantState) -> Measure:
        self.sim.load_state(state)
        with threads(1):
            out = simulate(self.sim, self.data.inputs, self.batch_size)
        self.count += 1
        self.bar.update(1)
        return self._measure(out)

    @property
    def ranks_on_all(self) -> bool:
        """Whether ``many`` measures every evaluation sample (then its values equal this call's)."""
        return self.rank_samples == len(self.data)

    def many(self, base: QuantState, variants: dict[str, QuantState]) -> dict[str, Measure]:
        """The target of each of ``variants`` (states differing from ``base`` in a few places) on the first
        ``rank_samples`` evaluation samples, each computed from its first changed node on (``sim.suffix``): with
        every sample, the same values as calling this on each."""
        data = self.data if self.ranks_on_all else self.data.take(self.rank_samples)
        sim, positions = self.sim, node_positions(self.sim)

        def load(state: QuantState):
            return lambda: sim.load_state(state)

        trials = [Trial(first_changed_node(sim, base, v, positions), load(v), load(base)) for v in variants.values()]
        sim.load_state(base)
        with threads(1):
            outs = trial_outputs(sim, data.inputs, trials, self.batch_size, self.bar.update)
        self.count += len(trials)
        return {name: self._measure(out, data) for name, out in zip(variants, outs)}

    def _measure(self, out: np.ndarray, data: Dataset | None = None) -> Measure:
        data = self.data if data is None else data
        return Measure(float(sqnr_db(self.float_out[:len(data)], out)),
                       None if self.metric is None else float(self.metric(out, data.labels)))


@dataclass
class Search:
    """One stage of the greedy search: rank the layers ``action`` can change, then change them in that order."""

    sim: SimModel
    cfg: QuantConfig
    target: Target
    evaluate: Evaluator
    sensitivity: dict[str, float]  # BRECQ diagonal, the tie-break
    rep: AccuracyControlReport  # gets a Step per tried change
    round: int = 0  # Step.round of the changes this search tries

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
            m = alone[name] if state is ranked and self.evaluate.ranks_on_all else self.evaluate(tried)
            keep = target.holds(m) or target.key(m) > target.key(current)
            self.rep.steps.append(Step(name, action, w_text, in_text, alone[name], self.sensitivity.get(name), m,
                                       weight_bytes(sim.qg, tried), keep, "point" if name in points else "layer",
                                       self.round))
            if keep:
                state, current = tried, m
            if target.holds(current):
                break
        return state, current


def _bits_text(a: int | None, b: int | None) -> str:
    name = {None: "float"}
    return f"{name.get(a, a)}" if a == b else f"{name.get(a, a)} -> {name.get(b, b)}"
