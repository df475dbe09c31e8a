"""Explicit state (issue 17 item 4): the QuantState of a simulation round-trips, layer inputs come from one
capture context, the imported graph stays the float graph, and a quantize run leaves no process-wide torch
or NumPy state changed; the importer's and calibration's fallbacks are in ``QuantResult.diagnostics``."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from onnxptq import api
from onnxptq.diagnostics import Diagnostics
from onnxptq.export.qdq import export_qdq
from onnxptq.graph import import_model
from onnxptq.run_context import RunContext
from onnxptq.sim.capture import layer_inputs
from onnxptq.sim.model import SimModel, simulate

from helpers import export_torch_model, method_kw
from test_recon import FAST, tiny  # noqa: F401  (fixture)


def _forward(sim: SimModel, x: np.ndarray) -> None:
    with torch.no_grad():
        sim({sim.qg.inputs[0]: torch.from_numpy(x)})


def test_capture_sees_every_layer_input_and_is_removed_even_on_error(tiny):
    _, path, calib, _ = tiny
    sim = SimModel(import_model(path))
    seen: list[str] = []
    inner: list[str] = []
    with layer_inputs(sim, lambda layer, x: seen.append(layer.name)):
        with layer_inputs(sim, lambda layer, x: inner.append(layer.name)):
            _forward(sim, calib[:2])
        _forward(sim, calib[:2])
    assert seen == [x.name for x in sim.qg.layers] * 2 and inner == [x.name for x in sim.qg.layers]

    def stop(layer, x):
        raise KeyError("stop")

    with pytest.raises(KeyError, match="stop"):
        with layer_inputs(sim, stop):
            _forward(sim, calib[:2])
    _forward(sim, calib[:2])  # the failing callback is gone
    assert len(seen) == 2 * len(sim.qg.layers) and not hasattr(sim, "layer_input_hook")


@pytest.mark.parametrize("options", [dict(ecaq=True, w_bits=4, a_bits=4),
                                     dict(method="brecq", w_bits=3, a_bits=4, **method_kw("brecq", **FAST)),
                                     dict(rounding="stochastic", w_bits=4)], ids=["ecaq", "brecq", "stochastic"])
def test_state_round_trips_into_a_fresh_simulation(tiny, options):
    """load_state(export_state()) on a fresh SimModel of the same graph gives the same outputs and the same
    exported model, byte for byte."""
    _, path, calib, val = tiny
    res = api.quantize(path, calib, check_kernels=False, **{"progress": False, **options})
    state = res.state
    if options.get("ecaq"):
        assert state.ecaq_scales and state.float_weights and not state.weight_overrides
    else:  # learned or stochastic rounding: on-grid weights that differ from the float ones
        assert state.weight_overrides and not state.float_weights
    # BRECQ keeps the bias correction of its learned rounding only where it lowered the region loss (on this
    # model, in no region); the other two runs hold bias deltas, so their round trip covers them
    dropped = {x.where for x in res.diagnostics.of("bias-correction-dropped")}
    assert bool(state.bias_delta) or (options.get("method") == "brecq" and dropped)
    assert state.input_means and len(state.weight_params) == len(res.qgraph.layers)
    fresh = SimModel(res.qgraph)
    fresh.load_state(state)
    fresh.set_quant(weights=True, acts=True)
    assert np.array_equal(simulate(fresh, {"input": val}), res.simulate({"input": val}))
    assert export_qdq(fresh, res.config.opset).SerializeToString() == res.model.SerializeToString()
    again = fresh.export_state()
    assert again.weight_params == state.weight_params and again.act_params == state.act_params
    for a, b in ((again.weight_overrides, state.weight_overrides), (again.bias_delta, state.bias_delta),
                 (again.float_weights, state.float_weights)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_state_replaces_all_of_the_previous_state(tiny):
    """A BRECQ simulation given an RTN run's state exports the RTN model: no weight, bias correction or
    quantizer parameter of the BRECQ run is left."""
    _, path, calib, _ = tiny
    rtn = api.quantize(path, calib, w_bits=3, a_bits=4, progress=False, check_kernels=False)
    learned = api.quantize(path, calib, method="brecq", w_bits=3, a_bits=4, check_kernels=False, **method_kw("brecq", **FAST))
    assert learned.model.SerializeToString() != rtn.model.SerializeToString()
    learned.sim.load_state(rtn.state)
    assert export_qdq(learned.sim, rtn.config.opset).SerializeToString() == rtn.model.SerializeToString()


def test_load_state_of_another_model_is_refused(tiny):
    _, path, calib, _ = tiny
    res = api.quantize(path, calib, progress=False, check_kernels=False)
    other = dataclasses.replace(res.state, bias_delta={"not_a_layer": torch.zeros(1)},
                                weight_params={**res.state.weight_params, "conv_x": None})
    with pytest.raises(ValueError, match=r"conv_x.*another model"):
        SimModel(res.qgraph).load_state(other)


def test_imported_graph_is_read_only(tiny):
    _, path, _, _ = tiny
    qg = import_model(path)
    w = qg.initializer(qg.layers[0].weight)
    with pytest.raises(ValueError, match="read-only"):
        w[...] = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        qg.layers = []
    qg.check_unchanged()
    qg.model.graph.initializer[0].raw_data = bytes(len(qg.model.graph.initializer[0].raw_data))
    with pytest.raises(RuntimeError, match="modified after import"):
        qg.check_unchanged()


def test_ecaq_run_leaves_the_imported_graph_float(tiny, tmp_path):
    """ECAQ's W_beta lives in the simulation's state; ``QuantResult.qgraph`` is the float graph, byte for byte."""
    _, path, calib, val = tiny
    before = import_model(path)
    res = api.quantize(path, calib, output=tmp_path / "e.onnx", ecaq=True, w_bits=4, a_bits=4, progress=False,
                       check_kernels=False)
    assert res.state.ecaq_scales
    assert res.qgraph.model.SerializeToString() == before.model.SerializeToString()
    for init in before.model.graph.initializer:
        assert np.array_equal(res.qgraph.initializer(init.name), before.initializer(init.name))
    consumer = next(x for x in res.qgraph.layers if x.input in res.state.ecaq_scales)
    assert not torch.equal(res.sim.float_weight(consumer.weight),
                           torch.from_numpy(np.array(res.qgraph.initializer(consumer.weight))))


def test_quantize_leaves_threads_rng_and_cudnn_as_it_found_them(tiny):
    _, path, calib, _ = tiny
    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn.deterministic
    try:
        torch.set_num_threads(2)
        torch.backends.cudnn.deterministic = not cudnn
        torch.manual_seed(1234)
        np.random.seed(1234)
        rng, np_rng = torch.get_rng_state(), np.random.get_state()
        api.quantize(path, calib, method="qdrop", w_bits=3, a_bits=4, check_kernels=False, **method_kw("qdrop", **FAST))
        assert torch.get_num_threads() == 2
        assert torch.backends.cudnn.deterministic == (not cudnn)
        assert torch.equal(torch.get_rng_state(), rng)
        after = np.random.get_state()
        assert after[0] == np_rng[0] and np.array_equal(after[1], np_rng[1]) and after[2:] == np_rng[2:]
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic = cudnn


def test_run_context_seeds_inside_and_restores_on_exit_even_on_error():
    threads = torch.get_num_threads()
    torch.manual_seed(7)
    outside = torch.rand(3)
    torch.manual_seed(7)
    with pytest.raises(ZeroDivisionError):
        with RunContext(seed=5):
            inside = torch.rand(3)
            torch.set_num_threads(threads + 1)
            1 / 0
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), outside)  # the generator continues where it was before the run
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), inside)


def test_importer_fallbacks_are_diagnostics(tiny, monkeypatch):
    import onnxsim

    _, path, calib, _ = tiny

    def fail(*a, **k):
        raise RuntimeError("onnxsim broke")

    monkeypatch.setattr(onnxsim, "simplify", fail)
    res = api.quantize(path, calib, progress=False, check_kernels=False)
    assert [x.kind for x in res.diagnostics.items] == ["simplifier"]
    qg = dataclasses.replace(res.qgraph, import_info={**res.qgraph.import_info, "float_layers": ["/head/MatMul"]})
    diag = Diagnostics()
    api.import_diagnostics(qg, diag)
    assert [x.where for x in diag.of("float-layer")] == ["/head/MatMul"]
    assert f"1/{len(qg.layers) + 1} layers left in float" in "\n".join(diag.summary_lines())


class _NoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 5, bias=False)  # a MatMul: no bias input to hold a correction

    def forward(self, x):
        return self.fc(self.conv2(torch.sigmoid(self.conv1(x))))


def test_calibration_fallbacks_are_diagnostics(tmp_path):
    """A MatMul layer has no bias to hold its bias correction (a bias-less Conv gets a zero bias that does);
    --ecaq on a model without a qualifying activation (here none is post-ReLU) quantizes without per-channel
    activation scales. Both are said."""
    path = export_torch_model(_NoBias().eval(), torch.zeros(1, 1, 8, 8), tmp_path / "nobias.onnx", keep_bn=False)
    calib = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    res = api.quantize(path, calib, ecaq=True, progress=False, check_kernels=False)
    conv1, fc = res.qgraph.layers[0], res.qgraph.layers[-1]
    assert conv1.bias.endswith(".bias_zero") and fc.op_type == "MatMul" and not fc.bias
    assert conv1.name in res.qgraph.import_info["zero_bias_added"]
    assert conv1.name in res.sim.state.bias_delta  # its correction is held by the zero bias
    assert [x.where for x in res.diagnostics.of("no-bias-input")] == [fc.name]
    assert not res.diagnostics.of("bias-correction-dropped")  # nothing was dropped for not paying
    assert len(res.diagnostics.of("other")) == 1 and "--ecaq" in res.diagnostics.of("other")[0].detail
    assert not res.state.ecaq_scales
    plain = api.quantize(path, calib, bias_correction=False, progress=False, check_kernels=False)
    assert not plain.diagnostics.items


def test_a_count_of_one_reads_in_the_singular():
    """``1 bias correction dropped``, not ``1 bias corrections``; counts with a total keep the plural (1/18 layers)."""
    diag = Diagnostics()
    diag.add("bias-correction-dropped", "", "the guard dropped it", quiet=True)
    diag.add("no-bias-input", "fc", "a MatMul", quiet=True)
    diag.add("no-bias-input", "fc2", "a MatMul", quiet=True)
    lines = diag.summary_lines()
    assert lines[0].startswith("1 bias correction dropped (") and lines[0].endswith("lower with it)")
    assert lines[1].startswith("2 layers with no bias input")
