"""ECAQ (Bit-Split Sec. 3.4, issue 6): per-channel activation scales folded into the consumer convs. Before
quantization the float model is unchanged (exact re-scaling, Eq. 25-26); quantized, the QDQ export has a
per-axis QuantizeLinear and a scale-1 DequantizeLinear and runs bit-exactly in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxptq import api
from helpers import method_kw
from onnxptq.settings import resolve as resolve_config
from onnxptq.config import QuantConfig
from onnxptq.data import Dataset
from onnxptq.errors import ConfigError
from onnxptq.graph import import_model
from onnxptq.plan import make_plan
from onnxptq.calib.calibrate import calibrate_activations, observe_activations
from onnxptq.calib.ecaq import apply_ecaq, candidates, in_channel_view
from onnxptq.sim.model import SimModel
from onnxptq.verify.qdq import qdq_output_parity

from test_recon import tiny  # noqa: F401  (fixture)


def _float_out(sim: SimModel, x: np.ndarray) -> np.ndarray:
    sim.set_quant(weights=False, acts=False)
    with torch.no_grad():
        return sim({"input": torch.from_numpy(x)})[sim.qg.outputs[0]].numpy()


def test_ecaq_rescaling_leaves_the_float_model_unchanged(tiny):
    _, path, calib, val = tiny
    qg = import_model(path)
    cfg = QuantConfig(a_bits=4, ecaq=True, progress=False)
    sim = SimModel(qg)
    before = _float_out(sim, val)
    w_before = {x.name: qg.initializer(x.weight).copy() for x in qg.layers}
    data = Dataset({"input": calib})
    observers, means = observe_activations(sim, data, cfg)
    sim.state.input_means.update(means)
    calibrate_activations(sim, observers, make_plan(qg, cfg), cfg)
    points = candidates(sim)
    conv2, conv3 = qg.layers[1], qg.layers[2]
    assert points == [conv2.output]  # relu(conv2) feeds only the depthwise conv3; conv1's output also feeds an Add
    betas = apply_ecaq(sim, data, cfg)
    beta = betas[conv2.output]
    assert beta.shape == (8,) and np.all(beta > 0) and len(set(beta.tolist())) > 1
    # Eq. 26: the consumer's simulated weights are W[:, c] * beta[c]; here depthwise: channel o. The imported
    # graph keeps W (it is the float graph); the state records beta and the input mean seen through it.
    expected = w_before[conv3.name] * beta.reshape(8, 1, 1, 1)
    np.testing.assert_array_equal(qg.initializer(conv3.weight), w_before[conv3.name])
    np.testing.assert_allclose(sim.weight(conv3.weight).detach().numpy(), expected, rtol=1e-6)
    assert list(sim.state.ecaq_scales) == [conv2.output] and sim.act_quantizer(conv2.output).ecaq
    torch.testing.assert_close(sim.state.input_means[conv3.name], means[conv3.name] / torch.from_numpy(beta))
    np.testing.assert_allclose(_float_out(sim, val), before, rtol=1e-5, atol=1e-5)  # Eq. 25: exact re-scaling


def test_in_channel_view_for_grouped_convs():
    class L:
        groups, weight_shape = 2, (4, 3, 1, 1)  # 6 input channels in 2 groups of 3, 2 outputs per group
    beta = torch.arange(1.0, 7.0)
    v = in_channel_view(L, beta, 4).reshape(4, 3)
    assert v.tolist() == [[1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6]]


@pytest.mark.parametrize("method", ["rtn", "bitsplit"])
def test_ecaq_export_is_per_axis_and_bit_exact(tiny, tmp_path, method):
    _, path, calib, val = tiny
    out = tmp_path / "ecaq.onnx"
    res = api.quantize(path, calib, output=out, method=method, ecaq=True, w_bits=4, a_bits=4, progress=False,
                       **method_kw(method, bitsplit_points=2000))
    t = res.qgraph.layers[1].output
    assert list(res.state.ecaq_scales) == [t]
    m = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == f"{t}_quantized")
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == f"{t}_quantized")
    assert next(a.i for a in q.attribute if a.name == "axis") == 1
    np.testing.assert_array_equal(inits[q.input[1]], res.state.ecaq_scales[t])
    assert float(inits[dq.input[1]]) == 1.0
    # the consumer's int32 bias has scale 1 * s_w
    conv3 = res.qgraph.layers[2]
    np.testing.assert_array_equal(inits[f"{conv3.name}.bias_scale"],
                                  res.sim.weight_quantizer(conv3.name).params.scale.astype(np.float32))
    assert qdq_output_parity(res.sim, str(out), {"input": val}).bit_exact


def test_ecaq_config_validation():
    with pytest.raises(ConfigError, match="rtn or bitsplit"):
        resolve_config(QuantConfig(method="brecq", ecaq=True))
    QuantConfig(ecaq=True, scale="po2", format="int")  # per-channel requantization at the producer


@pytest.mark.parametrize("model,a_bits", [("digits_mbv2", 4), ("digits_mbv2", 8), ("digits_resnet", 4)])
def test_ecaq_integer_export_level1_and_equals_po2_simulation(model, a_bits):
    """Integer ONNX of an ECAQ model: the producer conv requantizes per output channel (shift
    f_x + f_w[c] - f_beta[c], fused Relu6 top per channel), the consumer reads codes at scale 1. Level-1
    parity (integer simulation = onnxruntime = runtime/ = onnx.reference) and the same output integers as
    the fake-quant Po2 simulation."""
    from onnxptq.verify.integer import verify_integer

    from helpers import MODELS, ort_run

    val = dict(np.load(MODELS / "digits_val.npz"))
    res = api.quantize(MODELS / f"{model}.onnx", MODELS / "digits_calib.npz", scale="po2", format="int",
                       ecaq=True, w_bits=4, a_bits=a_bits, num_calib=64, progress=False)
    betas = res.state.ecaq_scales
    assert betas, "no ECAQ point in the model"
    for beta in betas.values():  # Po2 per channel, and not all equal (else ECAQ would be per-tensor)
        assert np.array_equal(np.exp2(np.round(np.log2(beta))), beta) and len(set(beta.tolist())) > 1
    per_channel = [s for s in res.program.steps if s.kind == "layer" and isinstance(s.attrs["shift"], np.ndarray)
                   and s.outputs[0] in betas]
    assert len(per_channel) == len(betas)
    assert res.lowering.ok and set(res.lowering.skipped) == set(betas)  # per-channel points: not compared
    x = {"input": val["input"][:32]}
    rep = verify_integer(res.model, x, batch_size=16, reference_samples=1)
    assert rep.ok, rep.format()
    int_out = ort_run(res.model, x)[0]
    assert np.array_equal(int_out, res.simulate(x))
