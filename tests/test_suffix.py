"""Suffix-only trial runs (``sim/suffix.py``): each trial's output equals the whole model run under it, the first
changed node is found from the states, and the searches built on them (accuracy-target ranking, mixed-precision
sensitivities) give the values of a full run per trial."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxptq import api
from onnxptq.accuracy.changes import change_layer
from onnxptq.calib.calibrate import choose_scale
from onnxptq.config import QuantConfig
from onnxptq.data import Dataset
from onnxptq.mixed import sensitivity
from onnxptq.mixed.sensitivity import measure_sensitivities
from onnxptq.quant import QParams, weight_grid
from onnxptq.sim.model import SimModel, simulate
from onnxptq.sim.suffix import Trial, first_changed_node, node_positions, trial_outputs

from helpers import MODELS

MODEL = MODELS / "digits_resnet.onnx"


@pytest.fixture(scope="module")
def quantized():
    calib = dict(np.load(MODELS / "digits_calib.npz"))
    res = api.quantize(MODEL, calib, w_bits=4, a_bits=4, num_calib=32, progress=False, check_kernels=False)
    sim = SimModel(res.qgraph)
    sim.load_state(res.state)
    sim.set_quant(weights=True, acts=True)
    x = dict(np.load(MODELS / "digits_val.npz"))
    inputs = {res.qgraph.inputs[0]: x["input"][:40]}
    return res, sim, inputs


def _full(sim: SimModel, state, inputs, base) -> np.ndarray:
    sim.load_state(state)
    try:
        return simulate(sim, inputs, 16)
    finally:
        sim.load_state(base)


def test_trial_outputs_equal_whole_runs_of_each_variant(quantized):
    res, sim, inputs = quantized
    base = res.state
    cfg = QuantConfig(w_bits=4, a_bits=4)
    layers = [x.name for x in res.qgraph.layers]
    picks = [layers[1], layers[len(layers) // 2], layers[-2], layers[3]]  # out of node order on purpose
    variants = [change_layer(base, sim, n, "bits", cfg) for n in picks] + [base.copy()]
    t = res.qgraph.inputs[0]  # a graph input's quantizer: the whole graph runs
    coarse = base.copy()
    p = base.act_params[t]
    coarse.act_params[t] = QParams(p.grid, p.scale * np.float32(2), p.zero_point, p.axis, p.po2)
    variants.append(coarse)
    positions = node_positions(sim)
    starts = [first_changed_node(sim, base, v, positions) for v in variants]
    assert starts[-2] == len(sim.nodes) and starts[-1] == 0
    assert 0 < starts[0] < starts[1] < starts[2] < len(sim.nodes)  # (first and last layer: 8 bits already)
    trials = [Trial(s, lambda v=v: sim.load_state(v), lambda: sim.load_state(base)) for s, v in zip(starts, variants)]
    sim.load_state(base)
    outs = trial_outputs(sim, inputs, trials, 16)  # 40 samples: chunks of 16, 16, 8
    for v, out in zip(variants, outs):
        assert np.array_equal(out, _full(sim, v, inputs, base))
    assert not np.array_equal(outs[1], outs[-2])  # the changes do change the output
    assert np.array_equal(simulate(sim, inputs, 16), outs[-2])  # left in the base configuration


def test_first_changed_node_follows_each_kind_of_change(quantized):
    res, sim, _ = quantized
    base = res.state
    layer = res.qgraph.layers[2]
    k = next(i for i, n in enumerate(sim.nodes) if n.layer is not None and n.layer.name == layer.name)
    cases = {
        "weight params": lambda s: s.weight_params.pop(layer.name),
        "bias correction": lambda s: s.bias_delta.__setitem__(layer.name, torch.ones(layer.weight_shape[0])),
        "weights": lambda s: s.weight_overrides.__setitem__(layer.weight, sim.float_weight(layer.weight) + 1),
    }
    for what, change in cases.items():
        v = base.copy()
        change(v)
        assert first_changed_node(sim, base, v) == k, what
    v = base.copy()
    v.float_weights[layer.weight] = sim.float_weight(layer.weight)
    assert first_changed_node(sim, base, v) == 0  # the float model itself changed
    src = res.qgraph.source[layer.input]
    v = base.copy()
    p = base.act_params[src]
    v.act_params[src] = QParams(p.grid, p.scale, p.zero_point, p.axis, p.po2)  # equal, but a new object
    producer = next(i for i, n in enumerate(sim.nodes) if src in n.outputs)
    assert first_changed_node(sim, base, v) == producer <= k


def test_sensitivities_equal_whole_runs(quantized, monkeypatch):
    """Each diagonal sensitivity is the output error of the whole float model with that layer's weights
    quantized (measured here by hand), though the measurement runs each layer's suffix only."""
    res, _, inputs = quantized
    sim = SimModel(res.qgraph).eval()
    cfg = QuantConfig(w_bits=4, a_bits=4)
    data = Dataset(inputs)
    names = [x.name for x in res.qgraph.layers]
    diag, off = measure_sensitivities(sim, data, cfg, names, (2, 4), 24, progress=False)
    feeds = {k: torch.from_numpy(v[:24]) for k, v in inputs.items()}
    with torch.no_grad():
        ref = sim(feeds)[sim.qg.outputs[0]].double()
        for name in (names[0], names[-1]):
            w = sim.weight(res.qgraph.layer(name).weight)
            keep = w.detach().clone()
            layer = res.qgraph.layer(name)
            qp = choose_scale(keep, weight_grid(4), cfg.w_symmetric, layer.weight_axis, cfg, cfg.w_scale_method)
            scale, zp = qp.shaped_for(w.dim())
            w.copy_(torch.from_numpy(np.float32((np.clip(np.round(keep.numpy() / scale) + zp, qp.grid.qmin,
                                                                qp.grid.qmax) - zp) * scale)))
            err = float((sim(feeds)[sim.qg.outputs[0]].double() - ref).pow(2).mean()) / float(ref.pow(2).mean())
            w.copy_(keep)
            assert diag[(name, 4)] == pytest.approx(err, rel=1e-6)
    assert all(diag[(n, 2)] > diag[(n, 4)] for n in names[:3]) and off
    cache: dict = {}
    assert measure_sensitivities(sim, data, cfg, names, (2, 4), 24, False, cache, pairs=False) == (diag, {})
    assert measure_sensitivities(sim, data, cfg, names, (2, 4), 24, False, cache) == (diag, off)
    monkeypatch.setattr(sensitivity, "_measure", lambda *a, **k: pytest.fail("measured again"))
    assert measure_sensitivities(sim, data, cfg, names, (2, 4), 24, False, cache, pairs=False) == (diag, off)
