"""The model output under many one-place changes, running only the nodes each change can affect.

A search that tries one change at a time (a layer raised to 8 bits, one layer's weights quantized) changes
the result of the nodes from some position on: everything before it computes what the base configuration
computes. ``trial_outputs`` runs the graph once per chunk of samples in the base configuration, stopping at
each trial's first changed node (in node order), and runs only the rest of the graph under the trial, on a
copy of the live tensors. For changes spread evenly over the graph this halves the work of running every
trial from the start, and the outputs are the same: the same operations on the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .model import SimModel
from .state import QuantState


@dataclass(frozen=True)
class Trial:
    """One change: ``enter`` puts it in place and ``leave`` restores the base configuration; ``start`` is the
    first node whose result it can change (0: the graph inputs' quantizers too, the whole graph runs)."""

    start: int
    enter: Callable[[], None]
    leave: Callable[[], None]


@torch.no_grad()
def trial_outputs(sim: SimModel, inputs: dict[str, np.ndarray], trials: Sequence[Trial],
                  batch_size: int, progress: Callable[[float], None] | None = None) -> list[np.ndarray]:
    """The first model output of every trial on ``inputs`` (float32, one row per sample), computed
    ``batch_size`` samples at a time (module doc). The simulation must be in the base configuration.
    ``progress(k)``: called after each chunk, k = trials x the chunk's share of the samples."""
    out = sim.qg.outputs[0]
    order = sorted(range(len(trials)), key=lambda j: trials[j].start)
    results: list[list[np.ndarray]] = [[] for _ in trials]
    n = len(next(iter(inputs.values())))
    device = sim.device
    for i in range(0, n, batch_size):
        feeds = {k: torch.from_numpy(v[i:i + batch_size]).to(device) for k, v in inputs.items()}
        env: dict[str, torch.Tensor] | None = None
        pos = 0
        for j in order:
            trial = trials[j]
            if trial.start > 0:
                if env is None:
                    env = sim.input_env(feeds)
                if pos < trial.start:
                    sim.run_nodes(env, pos, trial.start)
                    pos = trial.start
            trial.enter()
            try:
                y = sim(feeds)[out] if trial.start <= 0 else sim.run_nodes(dict(env), trial.start)[out]
            finally:
                trial.leave()
            results[j].append(y.cpu().numpy())
        if progress is not None:
            progress(len(trials) * len(next(iter(feeds.values()))) / n)
    return [np.concatenate(r) for r in results]


def node_positions(sim: SimModel) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(tensor -> index of its producing node (graph inputs: 0), layer -> its node index, initializer -> index
    of its first consuming node)."""
    produced = {t: 0 for t in sim.qg.inputs}
    layers: dict[str, int] = {}
    consumers: dict[str, int] = {}
    for k, node in enumerate(sim.nodes):
        for o in node.outputs:
            produced.setdefault(o, k)
        if node.layer is not None:
            layers[node.layer.name] = k
        for i in node.inputs:
            consumers.setdefault(i, k)
    return produced, layers, consumers


def _same_tensor(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal by value; a tensor a ``QuantState.copy`` shares is equal without reading it."""
    return x is y or torch.equal(x, y)


def _changed(a: dict, b: dict, same: Callable[[object, object], bool]) -> set[str]:
    return {k for k in a.keys() | b.keys() if k not in a or k not in b or not same(a[k], b[k])}


def first_changed_node(sim: SimModel, base: QuantState, other: QuantState,
                       positions: tuple[dict[str, int], dict[str, int], dict[str, int]] | None = None) -> int:
    """The first node whose result can differ between ``sim`` loaded with ``base`` and with ``other``: the
    producer of a quant point whose parameters differ, the node of a layer whose weight parameters or bias
    correction differ, the first consumer of a weight that differs; 0 when the float weights, ECAQ scales or
    input means differ, or a graph input's quantizer. QParams are compared by identity (states share them:
    ``QuantState.detached``), tensors by identity, then by value. ``positions``: ``node_positions(sim)``, when
    called often."""
    produced, layers, consumers = positions or node_positions(sim)
    if (_changed(base.float_weights, other.float_weights, _same_tensor)
            or _changed(base.ecaq_scales, other.ecaq_scales, lambda x, y: x is y or np.array_equal(x, y))
            or _changed(base.input_means, other.input_means, _same_tensor)):
        return 0
    end = len(sim.nodes)
    starts = [produced.get(t, 0) for t in _changed(base.act_params, other.act_params, lambda x, y: x is y)]
    starts += [layers.get(n, 0) for n in _changed(base.weight_params, other.weight_params, lambda x, y: x is y)]
    starts += [layers.get(n, 0) for n in _changed(base.bias_delta, other.bias_delta, _same_tensor)]
    starts += [consumers.get(w, 0) for w in _changed(base.weight_overrides, other.weight_overrides, _same_tensor)]
    return min(starts, default=end)
