"""Layer sensitivities for the mixed-precision search (BRECQ Sec. 3.4, Eq. 12).

The sensitivity of a configuration is the model-output error it causes on calibration samples, with
every other layer (and every activation) in float: the output MSE divided by the float output's
mean square (a noise-to-signal ratio, so values of different layers add up like the second-order
terms of Eq. 12). Diagonal terms: one layer at b bits (round-to-nearest at its L_p per-channel scale,
the calibration the engine starts from). Off-diagonal terms: two layers of the same block at the
lowest bit width together, minus their two diagonal terms (the intra-block interaction BRECQ keeps).
"""
from __future__ import annotations

import hashlib
from itertools import combinations
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import QuantConfig
from ..data import Dataset
from ..graph.partition import partition
from ..quant import fake_quantize, weight_grid
from ..sim.model import SimModel
from ..sim.suffix import Trial, node_positions, trial_outputs

SAMPLES = 64  # calibration samples the output error is measured on


def _output(sim: SimModel, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    return sim(feeds)[sim.qg.outputs[0]].double()


CACHE_KEY = "mixed.sensitivities"  # RunContext.cache entry: content key -> (diag, offdiag)


def _memo_key(sim: SimModel, data: Dataset, cfg: QuantConfig, layers: list[str], choices: tuple[int, ...],
              samples: int) -> str:
    """What the measurement depends on: the weights of ``layers``, the samples, the weight-scale settings."""
    h = hashlib.sha256(repr((layers, choices, samples, cfg.w_symmetric, cfg.w_scale_method, cfg.percentile,
                             cfg.scale, cfg.po2_method)).encode())
    for name in layers:
        h.update(np.ascontiguousarray(sim.weight(sim.qg.layer(name).weight).detach().cpu().numpy()).tobytes())
    for k in sorted(data.inputs):
        h.update(k.encode())
        h.update(np.ascontiguousarray(data.inputs[k][:samples]).tobytes())
    return h.hexdigest()


def measure_sensitivities(sim: SimModel, data: Dataset, cfg: QuantConfig, layers: list[str], choices: tuple[int, ...],
                          samples: int = SAMPLES, progress: bool = True,
                          cache: dict[str, Any] | None = None, pairs: bool = True) -> tuple[dict, dict]:
    """(diag {(layer, bits): s}, offdiag {((a, b_min), (b, b_min)): s}) for ``layers`` (see module doc);
    ``pairs=False``: the diagonal only (offdiag empty). With ``cache`` (a ``RunContext.cache``, shared by the
    runs of a sweep over budgets) memoized on the weights, samples and weight-scale settings, so quantizing one
    model at several budgets measures once (a diagonal-only request reuses a full measurement)."""
    memo = cache.setdefault(CACHE_KEY, {}) if cache is not None else {}
    key = _memo_key(sim, data, cfg, layers, choices, samples) if cache is not None else ""
    if key not in memo:
        key += "" if pairs else ":diag"
        if key not in memo:
            memo[key] = _measure(sim, data, cfg, layers, choices, samples, progress, pairs)
    diag, offdiag = memo[key]
    return dict(diag), dict(offdiag)


@torch.no_grad()
def _measure(sim: SimModel, data: Dataset, cfg: QuantConfig, layers: list[str], choices: tuple[int, ...],
             samples: int, progress: bool, with_pairs: bool = True) -> tuple[dict, dict]:
    from ..calib.calibrate import choose_scale, threads

    qg = sim.qg
    device = sim.device
    feeds = {k: torch.from_numpy(v[:samples]).to(device) for k, v in data.inputs.items()}
    was_training = sim.training
    sim.eval()
    sim.set_quant(weights=False, acts=False)
    ref = _output(sim, feeds).cpu()
    power = float(ref.pow(2).mean()) or 1.0
    quantized: dict[tuple[str, int], torch.Tensor] = {}

    def q_weight(name: str, bits: int) -> torch.Tensor:
        if (name, bits) not in quantized:
            layer = qg.layer(name)
            w = sim.weight(layer.weight).detach()
            with threads(1):
                p = choose_scale(w, weight_grid(bits), cfg.w_symmetric, layer.weight_axis, cfg, cfg.w_scale_method)
            scale, zp = p.shaped_for(w.dim())
            quantized[(name, bits)] = fake_quantize(w, torch.from_numpy(np.asarray(scale)).to(w.device),
                                                    torch.from_numpy(np.asarray(zp, dtype=np.float32)).to(w.device),
                                                    p.grid)
        return quantized[(name, bits)]

    _, node_of, _ = node_positions(sim)
    inputs = {k: v[:samples] for k, v in data.inputs.items()}

    def errors(assigns: list[dict[str, int]]) -> list[float]:
        """Output error of each assignment (its layers quantized, the rest float), each run from its first
        quantized layer on (``sim/suffix.py``), all samples in one batch."""
        saved: dict[str, torch.Tensor] = {}

        def enter(assign: dict[str, int]):
            def put() -> None:
                for name, bits in assign.items():
                    w = sim.weight(qg.layer(name).weight)
                    saved[name] = w.detach().clone()
                    w.copy_(q_weight(name, bits))
            return put

        def leave() -> None:
            for name, w in saved.items():
                sim.weight(qg.layer(name).weight).copy_(w)
            saved.clear()

        trials = [Trial(min(node_of[n] for n in a), enter(a), leave) for a in assigns]
        outs = trial_outputs(sim, inputs, trials, samples, bar.update)
        return [float((torch.from_numpy(o).double() - ref).pow(2).mean()) / power for o in outs]

    free = set(layers)
    pairs = [(a, b) for region in partition(qg, "block") for a, b in combinations([x for x in region.layers if x in free], 2)
             if with_pairs]
    lowest = min(choices)
    bar = tqdm(total=len(layers) * len(choices) + len(pairs), disable=not progress, desc="sensitivities", unit="eval",
               dynamic_ncols=True)
    try:
        diag = {}
        for bits in choices:
            diag.update(zip([(name, bits) for name in layers], errors([{name: bits} for name in layers])))
            quantized = {k: v for k, v in quantized.items() if k[1] == lowest}  # keep only what the pairs reuse
        offdiag = {}
        for (a, b), e in zip(pairs, errors([{a: lowest, b: lowest} for a, b in pairs])):
            offdiag[((a, lowest), (b, lowest))] = e - diag[(a, lowest)] - diag[(b, lowest)]
    finally:
        bar.close()
        sim.train(was_training)
    return diag, offdiag
