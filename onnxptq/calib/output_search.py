"""Activation quantization parameters chosen by the error they cause at the model output.

A tensor-local criterion (the L_p error of BRECQ's search) ranks clipping ranges by the error of the
tensor itself; what counts is the error at the model output, where clipped outliers (attention logits,
the few large channels of a residual stream) weigh more than their share of the tensor's L_p error and
rounding noise partly averages out. Both searches here are greedy in node order: each quant point ranks
its candidates by the squared error of the first model output against the float model on a few
calibration samples, with the points decided so far quantized and the rest (and all weights) in float;
the first candidate (the L_p choice) wins ties. The graph runs once up to each point and only the nodes
after it are re-run per candidate: about (candidates x points / 2) forward passes in all.

``po2_output_search`` (first points of a Po2 model) is on by default (``--po2-output-points``);
``float_range_search`` (every point of a float-scale model) is opt-in (``--a-output-search``): on the digits
models at W8A4 and W4A4 RTN it moved the output SQNR by -0.7 to +1.4 dB (3 rows up, 3 down: with 16 samples
the per-point choices can fit the search samples), and it costs about 4 runs of the rest of the graph per
point (docs/benchmarks.md: `python tools/bench.py recon --experiments digits-ranges`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data import Dataset
from ..quant import QParams
from ..quant import scales as S
from ..quant.observer import Observer
from ..sim.model import SimModel

OUTPUT_SEARCH_SAMPLES = 16  # calibration samples the model-output searches run on

Candidates = Callable[[str, QParams], list[QParams]]


def sample_feeds(sim: SimModel, data: Dataset, n_samples: int) -> dict[str, torch.Tensor]:
    """The first ``n_samples`` calibration samples on the simulation's device (a multiple of a fixed batch)."""
    device = sim.device
    n = n_samples if sim.chunk is None else max(sim.chunk, n_samples - n_samples % sim.chunk)
    return {k: torch.from_numpy(v[:n]).to(device) for k, v in data.inputs.items()}


@torch.no_grad()
def greedy_output_search(sim: SimModel, feeds: dict[str, torch.Tensor], points: list[str], candidates: Candidates,
                         progress: bool = False, desc: str = "activation ranges") -> dict[str, float]:
    """Choose each of ``points`` (in node order) among ``candidates(point, current params)`` by the relative
    squared error of the first model output against the float model, the points decided so far quantized
    (see the module doc); returns that error per point. Leaves every activation quantizer disabled and the
    chosen parameters set.

    Measured at the model output on purpose: judged at the next block's output instead (tried), the
    choices were worse than the L_p ones on most zoo models tried."""
    out = sim.qg.outputs[0]
    sim.set_quant(weights=False, acts=False)
    ref = sim(feeds)[out].double()
    den = float((ref ** 2).sum()) + 1e-30
    todo = set(points)
    chosen: dict[str, float] = {}
    bar = tqdm(total=len(todo), desc=desc, disable=not progress, leave=False)

    def decide(t: str, env: dict[str, torch.Tensor], start: int) -> None:
        """Rank the candidates of ``t`` by running nodes[start:] on a copy of ``env`` each (the run frees
        tensors from the copy only). One candidate per run: shape tensors computed before ``start``
        (Shape -> Concat -> Reshape) fix the batch, so candidates cannot share one batch."""
        fq = sim.act_quantizer(t)
        p0, x = fq.params, env[t]
        cands = candidates(t, p0)
        fq.enabled = True
        errs = []
        for p in cands:
            fq.set_params(p)
            trial = dict(env)
            trial[t] = fq(x)
            errs.append(float(((sim.run_nodes(trial, start)[out].double() - ref) ** 2).sum()) / den)
        b = int(np.argmin(errs))
        fq.set_params(cands[b])
        env[t] = fq(x)
        chosen[t] = errs[b]
        todo.discard(t)
        bar.update(1)

    try:
        env = {k: feeds[k] for k in sim.qg.inputs}
        for t in sim.qg.inputs:
            if t in todo:
                decide(t, env, 0)
        for k, node in enumerate(sim.nodes):
            if not todo:
                break
            sim.run_nodes(env, k, k + 1)
            for o in node.outputs:
                if o in todo:
                    decide(o, env, k + 1)
    finally:
        bar.close()
        sim.set_quant(weights=False, acts=False)
    return chosen


def node_order_points(sim: SimModel) -> list[str]:
    """Activation quant points in the order the search decides them: graph inputs, then node outputs."""
    points = [t for t in sim.qg.inputs if t in sim.qg.quant_points]
    return points + [o for n in sim.nodes for o in n.outputs if o in sim.qg.quant_points and o not in points]


def float_range_search(sim: SimModel, data: Dataset, observers: dict[str, Observer],
                       n_samples: int = OUTPUT_SEARCH_SAMPLES, progress: bool = False) -> dict[str, float]:
    """Float per-tensor activation scales: each point ranks ``scales.clip_range_candidates`` (its L_p
    choice, then ranges toward the observed min/max) by the model-output error. Points with
    per-channel (ECAQ) or power-of-two parameters, or more than 8 bits, keep theirs."""
    def eligible(t: str) -> bool:
        p = sim.act_quantizer(t).params
        return p is not None and p.axis is None and not p.po2 and p.grid.bits <= 8 and t in observers

    def candidates(t: str, p0: QParams) -> list[QParams]:
        obs = observers[t]
        symmetric = bool(np.all(np.asarray(p0.zero_point) == 0))
        scales, zps = S.clip_range_candidates(obs.min, obs.max, float(p0.scale), int(p0.zero_point), p0.grid,
                                              symmetric)
        return [QParams(p0.grid, s.numpy(), z.numpy(), None, False) for s, z in zip(scales, zps)]

    points = [t for t in node_order_points(sim) if eligible(t)]
    if not points:
        return {}
    return greedy_output_search(sim, sample_feeds(sim, data, n_samples), points, candidates, progress)


def po2_output_search(sim: SimModel, data: Dataset, observers: dict[str, Observer], n_points: int,
                      n_samples: int = OUTPUT_SEARCH_SAMPLES) -> dict[str, float]:
    """Re-choose the Po2 (scale, zero point) of the first ``n_points`` activation quant points (graph
    inputs first, then in node order) among ``scales.po2_clip_candidates`` (the L_p choice first; then the
    finer exponent with zero points placing the clipping anywhere from the low to the high end).

    Why: on EfficientNet-Lite0 the input's L_p choice 2^-5 (no clipping) costs 2.3 dB of output SQNR while
    2^-6 with the bright end clipped costs ~1 dB (docs/design-notes.md). Returns the relative output
    error per point."""
    points = [t for t in node_order_points(sim)[:max(n_points, 0)] if sim.act_quantizer(t).params.po2]
    if not points:
        return {}

    def candidates(t: str, p0: QParams) -> list[QParams]:
        obs = observers[t]
        scales, zps = S.po2_clip_candidates(obs.min, obs.max, float(p0.scale), int(p0.zero_point), p0.grid)
        return [QParams(p0.grid, s.numpy(), z.numpy(), None, po2=True) for s, z in zip(scales, zps)]

    return greedy_output_search(sim, sample_feeds(sim, data, n_samples), points, candidates)

