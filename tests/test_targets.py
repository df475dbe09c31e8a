"""Deployment target profiles (onnxptq/targets.py, DESIGN.md section 8): containers, reduce range, TensorRT's
Q/DQ rules, the integer-domain clip that keeps Po2 ReLU6 units fused, and which profile is bit-exact on
which CPU (docs/design-notes.md section 2)."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from onnxptq import api
from onnxptq.cli import main as cli_main
from onnxptq.config import QuantConfig
from onnxptq.settings import resolve
from onnxptq.errors import ConfigError
from onnxptq.targets import TARGETS, cpu_has_vnni, exact_onnxruntime_target, get_target
from onnxptq.verify.qdq import qdq_output_parity

from helpers import export_torch_model


class Net(torch.nn.Module):
    """Conv+ReLU6 (the Po2 fusion case), a MaxPool-carried residual Add (TensorRT's Add rule), a signed
    tensor (asymmetric grid), a Flatten-carried Gemm input."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 8, 1)
        self.pool = torch.nn.MaxPool2d(3, 1, 1)
        self.fc = torch.nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        a = torch.nn.functional.relu6(self.c1(x))
        b = self.c2(a)  # signed
        y = self.pool(a) + torch.relu(self.c3(b))
        return self.fc(torch.flatten(torch.nn.functional.avg_pool2d(y, 2), 1))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("targets")
    torch.manual_seed(0)
    path = export_torch_model(Net().eval(), torch.zeros(1, 3, 8, 8), d / "net.onnx", keep_bn=False)
    g = np.random.default_rng(0)
    x = 4 * g.standard_normal((72, 3, 8, 8)).astype(np.float32)  # wide enough that ReLU6 clips
    return path, x[:48], x[48:]


def _quantize(net, tmp_path, **kw):
    path, calib, _ = net
    out = tmp_path / f"q_{kw.get('target', 'default')}_{kw.get('scale', 'float')}_{kw.get('w_bits', 8)}.onnx"
    return api.quantize(path, calib, output=out, progress=False, **kw), out


def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _weight_dq(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("_weight_DequantizeLinear")]


def ort_optimized_ops(path) -> list[str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("w_bits", [8, 4])
def test_weights_are_int8_or_int4_with_zero_point_0(net, tmp_path, target, w_bits):
    res, out = _quantize(net, tmp_path, target=target, w_bits=w_bits, first_last_bits=None)
    m = onnx.load(out)
    inits = _inits(m)
    dqs = _weight_dq(m)
    assert len(dqs) == 4
    for dq in dqs:
        q, zp = inits[dq.input[0]], inits[dq.input[2]]
        assert q.data_type == (TensorProto.INT8 if w_bits == 8 else TensorProto.INT4), dq.name
        assert zp.data_type == q.data_type and not numpy_helper.to_array(zp).any(), dq.name
        vals = numpy_helper.to_array(q).astype(np.int64)
        cap = get_target(target).weight_bits(w_bits)
        assert vals.min() >= -(1 << (cap - 1)) and vals.max() <= (1 << (cap - 1)) - 1
    bits = {res.sim.weight_quantizer(layer.name).params.grid.bits for layer in res.qgraph.layers}
    assert bits == {7 if (target == "onnxruntime-avx2" and w_bits == 8) else w_bits}


def test_tensorrt_files_are_int8_symmetric_with_qdq_on_both_add_inputs(net, tmp_path):
    _, out = _quantize(net, tmp_path, target="tensorrt", scale="po2")
    m = onnx.load(out)
    inits = _inits(m)
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = inits[n.input[2]]
            assert zp.data_type in (TensorProto.INT8, TensorProto.INT4, TensorProto.INT32), n.name
            assert not numpy_helper.to_array(zp).any(), n.name
    producer = {o: n for n in m.graph.node for o in n.output}
    adds = [n for n in m.graph.node if n.op_type == "Add"]
    assert adds
    for add in adds:
        assert all(producer[i].op_type == "DequantizeLinear" for i in add.input), [producer[i].op_type for i in add.input]
    # the default profile keeps the carried MaxPool input as it is (no extra pair)
    _, out2 = _quantize(net, tmp_path, scale="po2")
    m2 = onnx.load(out2)
    producer2 = {o: n for n in m2.graph.node for o in n.output}
    assert any(producer2[i].op_type == "MaxPool" for a in m2.graph.node if a.op_type == "Add" for i in a.input)


def test_tensorrt_rejects_the_integer_format():
    with pytest.raises(ConfigError, match="--format qdq"):
        resolve(QuantConfig(target="tensorrt", scale="po2", format="int"))
    assert resolve(QuantConfig(target="tensorrt")).a_symmetric
    assert not QuantConfig(target="tensorrt").a_symmetric  # the user's config is not rewritten; resolve decides


def test_unknown_target_is_a_clear_error(capsys, net):
    with pytest.raises(ConfigError, match="choose one of onnxruntime"):
        QuantConfig(target="tflite")
    with pytest.raises(SystemExit):
        cli_main(["quantize", str(net[0]), "--calib", "x.npz", "--target", "tflite", "-o", "y.onnx"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["float", "po2"])
def test_every_layer_fuses_in_onnxruntime(net, tmp_path, scale):
    """Po2: the ReLU6 clip (6 is not the top of a Po2 grid) sits on the codes between Q and DQ, so
    onnxruntime fuses every Conv (and the Gemm after the Flatten, which reads its own Q/DQ pair)."""
    _, out = _quantize(net, tmp_path, scale=scale)
    m = onnx.load(out)
    if scale == "po2":
        clips = [n for n in m.graph.node if n.op_type == "Clip"]
        assert clips and all(n.name.endswith("_code_Clip") for n in clips)
        assert all(_inits(m)[n.input[2]].data_type == TensorProto.UINT8 for n in clips)
    ops = ort_optimized_ops(out)
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops and "FusedConv" not in ops, ops
    assert ops.count("QGemm") == 1 and "Gemm" not in ops, ops


def test_openvino_profile_keeps_the_float_clip_and_runs_every_layer_in_u8(net, tmp_path):
    """OpenVINO folds a float Clip in front of Q into its FakeQuantize (targets.py: measured slightly faster)."""
    from onnxptq.deploy.kernels import classify, openvino_available

    _, out = _quantize(net, tmp_path, scale="po2", target="openvino")
    m = onnx.load(out)
    clips = [n for n in m.graph.node if n.op_type == "Clip"]
    assert clips and not any(n.name.endswith("_code_Clip") for n in clips)  # the ReLU6 stays a float Clip
    if not openvino_available():
        pytest.skip("OpenVINO not installed (pip install openvino)")
    rep = classify(out, "openvino")
    assert rep.count() == f"{len(rep.layers)}/{len(rep.layers)}", [(x.name, x.reason) for x in rep.float_layers]


def test_integer_clip_is_exact_against_the_float_clip_form(net, tmp_path):
    """The same Po2 model written with the float Clip in front of Q (the profile field off) and with the clip on
    the codes gives identical outputs in onnxruntime without fusion."""
    from dataclasses import replace

    from onnxptq.export.qdq import export_qdq

    res, _ = _quantize(net, tmp_path, scale="po2")
    x = {"input": net[2]}
    floatform = export_qdq(res.sim, 21, replace(get_target("onnxruntime"), clip_in_integer_domain=False))
    intform = export_qdq(res.sim, 21, get_target("onnxruntime"))
    assert sum(n.op_type == "Clip" for n in floatform.graph.node) >= 1
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outs = [ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, x)[0]
            for m in (floatform, intform)]
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("target", ["onnxruntime", "onnxruntime-avx2"])
def test_po2_parity_per_cpu(net, tmp_path, target):
    """Level 2 for Po2 scales: bit-exact for onnxruntime-avx2 on every CPU, for onnxruntime where u8 x s8
    kernels are exact (VNNI, non-x86)."""
    if target == "onnxruntime" and exact_onnxruntime_target() != "onnxruntime":
        pytest.skip("x86 without VNNI: u8 x s8 pairs saturate, the onnxruntime target is not bit-exact here")
    res, out = _quantize(net, tmp_path, scale="po2", target=target)
    assert qdq_output_parity(res.sim, str(out), {"input": net[2]}).bit_exact


def test_exact_target_per_cpu_flags():
    assert exact_onnxruntime_target({"sse2", "avx2", "avx512_vnni"}) == "onnxruntime"
    assert exact_onnxruntime_target({"sse2", "avx2", "avx_vnni"}) == "onnxruntime"
    assert exact_onnxruntime_target({"sse2", "avx2", "fma"}) == "onnxruntime-avx2"
    assert exact_onnxruntime_target({"fp", "asimd"}) == "onnxruntime"  # ARM: no x86 flags
    assert cpu_has_vnni({"avx512_vnni"}) and not cpu_has_vnni({"avx2"})


@pytest.mark.parametrize("target, flagged", [("onnxruntime", True), ("onnxruntime-avx2", False)])
def test_saturating_layers_are_named_for_x86_without_vnni(net, tmp_path, target, flagged):
    """8-bit int8 weights x uint8 activations can pass int16 in onnxruntime's AVX2 kernels: quantize (through the
    kernel check), eval and verify name such a layer when this CPU lacks VNNI; 7-bit weights never do."""
    from onnxptq.targets import cpu_saturation_note, saturating_u8s8_node

    path, calib, _ = net
    res = api.quantize(path, calib, output=tmp_path / "q.onnx", target=target, progress=False, check_kernels=False)
    node = saturating_u8s8_node(res.model)
    assert (node is not None) == flagged
    if flagged:
        assert node in {x.name for x in res.qgraph.layers}
    avx2 = cpu_saturation_note(res.model, {"sse2", "avx2", "fma"})
    assert bool(avx2) == flagged and (not flagged or "--target onnxruntime-avx2" in avx2)
    assert cpu_saturation_note(res.model, {"sse2", "avx2", "avx512_vnni"}) == ""
    assert cpu_saturation_note(res.model, {"asimd"}) == ""
