"""Activation ranges chosen by model-output error (calib/output_search.py, quant/scales.clip_range_candidates)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import MODELS, digits_path

from onnxptq.quant import scales as S
from onnxptq.quant.grid import Grid


def test_clip_range_candidates_hand_case():
    """L_p range first, then 1/3, 2/3 of the way to the observed range, then min/max (asymmetric 8-bit)."""
    g = Grid(8, True)
    # L_p choice: scale 0.02, zero point -28 -> range [(-128 + 28) 0.02, (127 + 28) 0.02] = [-2.0, 3.1]
    s, z = S.clip_range_candidates(-3.5, 5.5, 0.02, -28, g, symmetric=False)
    assert s[0].item() == pytest.approx(0.02) and z[0].item() == -28
    lo0, hi0 = -2.0, 3.1
    for k, t in enumerate((1 / 3, 2 / 3, 1.0), start=1):
        lo, hi = lo0 + t * (-3.5 - lo0), hi0 + t * (5.5 - hi0)
        assert s[k].item() == pytest.approx((hi - lo) / 255, rel=1e-6)
        assert z[k].item() == round(-128 - lo / ((hi - lo) / 255))
    # the last one is minmax
    s_mm, z_mm = S.minmax(torch.tensor([-3.5, 5.5]), g, False)
    assert s[-1].item() == pytest.approx(float(s_mm)) and z[-1].item() == int(z_mm)
    # no clipping to relax: all candidates coincide and are dropped as duplicates
    s, z = S.clip_range_candidates(0.0, 2.55, 0.01, 0, Grid(8, False), symmetric=True)
    assert s.tolist() == pytest.approx([0.01]) and z.tolist() == [0]


def _digits_setup():
    from onnxptq.calib import calibrate as C
    from onnxptq.config import QuantConfig
    from onnxptq.data import load_dataset
    from onnxptq.graph import import_model
    from onnxptq.plan import make_plan
    from onnxptq.sim.model import SimModel

    qg = import_model(digits_path("digits_resnet"))
    data = load_dataset(MODELS / "digits_calib.npz", {n: qg.shapes.get(n, ()) for n in qg.inputs}, 64)
    cfg = QuantConfig(a_bits=4, progress=False, num_calib=64)
    sim = SimModel(qg)
    obs, _ = C.observe_activations(sim, data, cfg)
    C.calibrate_activations(sim, obs, make_plan(qg, cfg), cfg)
    return qg, data, sim, obs


def test_float_range_search_picks_the_lowest_output_error_first_point():
    """The first point's choice is the candidate with the lowest model-output error (the others in float);
    every chosen parameter is one of its point's candidates."""
    from onnxptq.calib.output_search import float_range_search, node_order_points
    from onnxptq.quant import QParams

    qg, data, sim, obs = _digits_setup()
    before = {t: sim.act_quantizer(t).params for t in qg.quant_points}
    chosen = float_range_search(sim, data, obs, n_samples=16)
    order = node_order_points(sim)
    assert set(chosen) == {t for t in order if t in chosen} and chosen
    first = next(t for t in order if t in chosen)
    p0 = before[first]
    scales, zps = S.clip_range_candidates(obs[first].min, obs[first].max, float(p0.scale), int(p0.zero_point),
                                          p0.grid, bool(np.all(np.asarray(p0.zero_point) == 0)))
    feeds = {k: torch.from_numpy(v[:16]) for k, v in data.inputs.items()}
    out = qg.outputs[0]
    with torch.no_grad():
        sim.set_quant(weights=False, acts=False)
        ref = sim(feeds)[out].double()
        errs = []
        fq = sim.act_quantizer(first)
        picked = fq.params
        fq.enabled = True
        for s, z in zip(scales, zps):
            fq.set_params(QParams(p0.grid, s.numpy(), z.numpy(), None, False))
            errs.append(float(((sim(feeds)[out].double() - ref) ** 2).sum()) / float((ref ** 2).sum()))
        fq.set_params(picked)
        sim.set_quant(weights=False, acts=False)
    assert chosen[first] == pytest.approx(min(errs), rel=1e-6)
    assert float(picked.scale) == pytest.approx(float(scales[int(np.argmin(errs))]))
    for t in chosen:
        p = sim.act_quantizer(t).params
        q = before[t]
        s, z = S.clip_range_candidates(obs[t].min, obs[t].max, float(q.scale), int(q.zero_point), q.grid,
                                       bool(np.all(np.asarray(q.zero_point) == 0)))
        assert any(float(p.scale) == pytest.approx(float(a)) and int(p.zero_point) == int(b) for a, b in zip(s, z))


def test_a_output_search_end_to_end_not_worse_on_search_samples():
    """--a-output-search: quantize works end to end, and on the samples it searched the activation-only
    output error is not above the L_p ranges' (the L_p choice is every point's first candidate)."""
    from onnxptq import api

    calib = MODELS / "digits_calib.npz"
    kw = dict(w_bits=8, a_bits=4, num_calib=64, progress=False)
    errs = {}
    for on in (False, True):
        res = api.quantize(digits_path("digits_resnet"), calib, a_output_search=on, **kw)
        sim = res.sim
        data = np.load(calib)
        feeds = {sim.qg.inputs[0]: torch.from_numpy(data[data.files[0]][:16])}
        with torch.no_grad():
            sim.set_quant(weights=False, acts=False)
            ref = sim(feeds)[sim.qg.outputs[0]].double()
            sim.set_quant(weights=False, acts=True)
            errs[on] = float(((sim(feeds)[sim.qg.outputs[0]].double() - ref) ** 2).sum())
    assert errs[True] <= errs[False] * (1 + 1e-9)
