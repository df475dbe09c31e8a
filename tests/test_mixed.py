"""Mixed precision end to end (issue 7): the chosen per-layer bits reach the exported model exactly, the
budget is met, the search is seeded, and the options reach the config from the CLI."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from onnxptq import api
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.graph import import_model
from onnxptq.mixed.allocate import free_layers, plan_bops, plan_size, weight_matrix
from onnxptq.mixed.coding_length import allocate_bits, coding_lengths

from helpers import suite_weight_bits
from test_recon import tiny  # noqa: F401  (fixture)


def _exported_bits(path) -> dict[str, tuple[int, int, int]]:
    """layer -> (container elem type, min, max) of q - zp read back from the QDQ model's initializers."""
    inits = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    out = {}
    for name, t in inits.items():
        if name.endswith(".weight_quantized"):
            layer = name[: -len(".weight_quantized")]
            q = numpy_helper.to_array(t).astype(np.int64)
            zp = numpy_helper.to_array(inits[f"{layer}.weight_zero_point"]).astype(np.int64)
            shape = [1] * q.ndim
            shape[0 if q.shape[0] == zp.size or zp.size == 1 else 1] = -1
            d = q - zp.reshape(shape) if zp.size > 1 else q - zp
            out[layer] = (t.data_type, int(d.min()), int(d.max()))
    return out


def _assert_honoured(path, bits: dict[str, int]) -> None:
    got = _exported_bits(path)
    for layer, b in bits.items():
        elem, lo, hi = got[layer]
        assert -(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1, (layer, b, lo, hi)
        assert (elem == TensorProto.INT4) == (b <= 4), (layer, b, elem)


def test_coding_length_plan_is_algorithm1_and_exported(tiny, tmp_path):
    _, path, calib, _ = tiny
    out = tmp_path / "cl.onnx"
    res = api.quantize(path, calib, output=out, mixed="coding-length", mixed_bits=[3, 4, 6], a_bits=8, progress=False)
    qg = res.qgraph
    free = free_layers(qg, res.config)
    assert free == [x.name for x in qg.layers[1:-1]]
    expected = allocate_bits(coding_lengths({n: weight_matrix(qg, n) for n in free}), [3, 4, 6])
    assert {n: res.plan.w_bits[n] for n in free} == expected == res.mixed.bits
    w8 = suite_weight_bits(8)
    assert res.plan.w_bits[qg.layers[0].name] == w8 and res.plan.w_bits[qg.layers[-1].name] == w8
    for layer in qg.layers:
        assert res.sim.weight_quantizer(layer.name).params.grid.bits == res.plan.w_bits[layer.name]
    _assert_honoured(out, res.plan.w_bits)
    assert res.summary()["weight_bits_per_layer"] == res.plan.w_bits


def test_search_meets_the_size_budget_and_is_seeded(tiny, tmp_path):
    _, path, calib, _ = tiny
    qg = import_model(path)
    n = {x.name: int(np.prod(x.weight_shape)) for x in qg.layers}
    all4 = sum(v * (8 if k in (qg.layers[0].name, qg.layers[-1].name) else 4) / 8 for k, v in n.items())
    budget = all4 - 100  # below unified 4-bit: some layer must drop to 2 bits
    runs = []
    for k in range(2):
        out = tmp_path / f"s{k}.onnx"
        res = api.quantize(path, calib, output=out, mixed="search", budget_size=budget, a_bits=8, seed=5,
                           progress=False)
        assert res.mixed.size_bytes <= budget and plan_size(res.qgraph, res.plan) == res.mixed.size_bytes
        assert set(res.mixed.bits.values()) <= {2, 4, suite_weight_bits(8)} and 2 in res.mixed.bits.values()
        _assert_honoured(out, res.plan.w_bits)
        runs.append(res.mixed.bits)
    assert runs[0] == runs[1]


def test_sensitivities_are_measured_once_per_model_and_data(tiny, monkeypatch):
    """A sweep over budgets that shares one cache reuses the measurement (memoized on weights, samples and
    scale settings); other calibration data is measured anew; runs without a shared cache share nothing."""
    from onnxptq.mixed import sensitivity

    _, path, calib, _ = tiny
    calls = []
    real = sensitivity._measure
    monkeypatch.setattr(sensitivity, "_measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    qg = import_model(path)
    total = sum(int(np.prod(x.weight_shape)) for x in qg.layers)
    cache: dict = {}
    bits = [api.quantize(path, calib, mixed="search", budget_size=total * b / 8, a_bits=8, progress=False,
                         cache=cache).mixed.bits for b in (3.0, 5.0)]
    assert len(calls) == 1 and bits[0] != bits[1]
    api.quantize(path, calib[::-1].copy(), mixed="search", budget_size=total * 3.0 / 8, a_bits=8, progress=False,
                 cache=cache)
    assert len(calls) == 2
    again = api.quantize(path, calib, mixed="search", budget_size=total * 3.0 / 8, a_bits=8, progress=False)
    assert len(calls) == 3 and again.mixed.bits == bits[0]  # a run of its own measures, the same numbers


def test_search_bops_budget_and_infeasible_budget(tiny):
    _, path, calib, _ = tiny
    res = api.quantize(path, calib, mixed="search", mixed_bits=[2, 4], budget_bops=1e12, a_bits=8, progress=False)
    assert set(res.mixed.bits.values()) == {4}  # a budget that fits all-4-bit: the least sensitive choice
    assert res.mixed.bops == plan_bops(res.qgraph, res.plan) <= 1e12
    with pytest.raises(ConfigError, match="cannot be met"):
        api.quantize(path, calib, mixed="search", budget_size=10.0, progress=False)


def test_mixed_config_validation():
    with pytest.raises(ConfigError, match="--mixed"):
        QuantConfig(budget_size=1e6)
    with pytest.raises(ConfigError, match="exactly one budget"):
        QuantConfig(mixed="search")
    with pytest.raises(ConfigError, match="budget"):
        QuantConfig(mixed="coding-length", budget_size=1e6)
    with pytest.raises(ConfigError, match="distinct"):
        QuantConfig(mixed="coding-length", mixed_bits=[4, 4])
    with pytest.raises(ConfigError, match="opset"):
        QuantConfig(mixed="coding-length", opset=19)


def test_cli_mixed_flags(tiny, tmp_path, capsys):
    from onnxptq.cli import main

    _, path, calib, _ = tiny
    np.save(tmp_path / "c.npy", calib)
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(path), "--calib", str(tmp_path / "c.npy"), "-o", str(out), "--mixed", "search",
               "--budget-size", "3kB", "--bits", "2,4,8", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "search:" in text
    with pytest.raises(SystemExit):
        main(["quantize", str(path), "--calib", str(tmp_path / "c.npy"), "-o", str(out), "--mixed", "search",
              "--budget-size", "lots"])
