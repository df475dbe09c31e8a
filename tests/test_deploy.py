"""Deployment checks: integer-kernel classification in onnxruntime and OpenVINO, OpenVINO loading and
agreement with onnxruntime, the ``bench`` command and the quantize warning about float layers.

OpenVINO is a test dependency: its tests skip (with the reason) where ``import openvino`` fails."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import MODELS, digits_path

from onnxptq.cli import main
from onnxptq.deploy.check import kernel_warnings
from onnxptq.deploy.kernels import classify, openvino_available, source_layers

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed (pip install openvino)")
RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=needs_openvino)]
MODEL = digits_path("digits_resnet")


def _calib(n: int = 64) -> np.ndarray:
    z = np.load(MODELS / "digits_calib.npz")
    return z[[k for k in z.files if k != "labels"][0]][:n].astype(np.float32)


def _val() -> np.ndarray:
    z = np.load(MODELS / "digits_val.npz")
    return z[[k for k in z.files if k != "labels"][0]].astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:
    """onnxptq W8A8 with float and Po2 scales, and onnxruntime quantize_static (U8/S8, per channel, QDQ)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from onnxptq.api import quantize

    d = tmp_path_factory.mktemp("deploy")
    out = {}
    for scale in ("float", "po2"):
        p = d / f"w8a8_{scale}.onnx"
        quantize(MODEL, _calib(), output=p, scale=scale, num_calib=64, progress=False, check_kernels=False)
        out[scale] = str(p)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": _calib(32)}])

        def get_next(self):
            return next(self.items, None)

    out["ort"] = str(d / "ort_static.onnx")
    quantize_static(str(MODEL), out["ort"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _uint8_weights(path: str) -> bool:
    """True where a weight DequantizeLinear reads a uint8 initializer (the exporter before int8 weights)."""
    g = onnx.load(path).graph
    u8 = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) > 1}
    return any(n.op_type == "DequantizeLinear" and n.input[0] in u8 for n in g.node)


def test_source_layers_are_the_constant_weight_layers():
    layers = source_layers(onnx.load(str(MODEL)))
    assert list(layers.values()).count("Conv") == 13 and list(layers.values()).count("Gemm") == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_float_model_runs_every_layer_in_float(runtime):
    rep = classify(MODEL, runtime)
    assert len(rep.layers) == 14 and rep.count() == "0/14"
    assert all(lay.reason.endswith("weights not quantized") for lay in rep.layers)
    assert sum(bool(lay.kernel) for lay in rep.layers) >= 1  # float kernels are mapped back to source layers


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ort_quantize_static_runs_every_layer_on_integer_kernels(exported, runtime):
    rep = classify(exported["ort"], runtime)
    assert rep.count() == "14/14", [(lay.name, lay.kernel, lay.reason) for lay in rep.float_layers]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("scale", ["float", "po2"])
def test_onnxptq_w8a8_runs_every_layer_on_integer_kernels(exported, runtime, scale):
    assert not _uint8_weights(exported[scale])  # int8 weights, zero point 0 (docs/design-notes.md section 2)
    rep = classify(exported[scale], runtime)
    assert rep.count() == f"{len(rep.layers)}/{len(rep.layers)}", [(x.name, x.reason) for x in rep.float_layers]


@needs_openvino
@pytest.mark.parametrize("scale", ["float", "po2"])
def test_openvino_agrees_with_onnxruntime(exported, scale):
    """OpenVINO (CPU, f32 hint) vs onnxruntime (CPU EP) on the 447 validation digits, both on integer kernels
    (int8 weights): measured identical fraction 0.656 / max |delta| 2 output LSB (float scales) and 0.757 / 1
    LSB (Po2), ORT 1.32, OpenVINO 2026.4.1, AVX512-VNNI CPU. The runtimes requantize differently (OpenVINO's
    FakeQuantize in f32), and one-LSB differences propagate layer to layer. Asserted with a margin for other
    CPUs: >= 0.55 identical and <= 3 LSB (float), >= 0.65 and <= 2 LSB (Po2)."""
    import onnxruntime as ort
    import openvino as ov
    from onnx import numpy_helper

    path = exported[scale]
    g = onnx.load(path).graph
    last = next(n for n in g.node if n.output[0] == g.output[0].name)
    assert last.op_type == "DequantizeLinear"
    step = float(numpy_helper.to_array(next(i for i in g.initializer if i.name == last.input[1])))
    x = _val()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    a = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    b = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    d = np.abs(a - b) / step
    min_identical, max_lsb = (0.55, 3) if scale == "float" else (0.65, 2)
    assert (d == 0).mean() >= min_identical, (d == 0).mean()
    assert d.max() <= max_lsb + 1e-4, d.max()


def test_bench_cli_json(exported, capsys):
    rc = main(["bench", str(MODEL), exported["po2"], "--runs", "2", "--warmup", "0", "--batch", "1,2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["batches"] == [1, 2] and out["runs"] == 2 and out["threads"] == 1
    assert out["runtimes"] == (["onnxruntime", "openvino"] if openvino_available() else ["onnxruntime"])
    f, q = out["models"]
    assert f["path"] == str(MODEL) and q["path"] == exported["po2"]
    for rt in out["runtimes"]:
        assert f["ratios"][rt] == {"1": 1.0, "2": 1.0}
        assert set(q["ratios"][rt]) == {"1", "2"} and all(r > 0 for r in q["ratios"][rt].values())
        assert f["kernels"][rt]["integer"] == "0/14"
        assert {"name", "op_type", "integer", "kernel", "reason"} <= set(q["kernels"][rt]["layers"][0])
    t = q["timings"][0]
    assert {"runtime", "batch", "min_ms", "median_ms", "runs"} <= set(t) and 0 < t["min_ms"] <= t["median_ms"]


def test_bench_cli_missing_file(capsys, tmp_path):
    rc = main(["bench", str(MODEL), str(tmp_path / "nope.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.onnx: no such model file" in err and "Traceback" not in err


def test_quantize_warns_about_a_layer_left_in_float(tmp_path, capsys):
    """--skip-nodes on the last Gemm: float weights and a float graph output, so onnxruntime cannot fuse it.
    (A skipped conv between quantized tensors is NOT left in float by onnxruntime 1.32: it quantizes the
    float weight itself and runs QLinearConv.)"""
    out = tmp_path / "q.onnx"
    np.savez(tmp_path / "calib.npz", input=_calib())
    rc = main(["quantize", str(MODEL), "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--skip-nodes",
               "/fc/Gemm", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "warning: onnxruntime" in err and "/fc/Gemm (float Gemm: weights not quantized)" in err


def test_kernel_warnings_without_a_runtime_say_so():
    (msg,) = kernel_warnings(MODEL, "tensorrt")
    assert "skipped" in msg and "tensorrt" in msg
    (msg,) = kernel_warnings(MODEL, "onnxruntime")
    assert "runs 14 of 14 layers on float kernels: /conv1/Conv (float Conv" in msg and msg.endswith("and 6 more")


def _clip_model(path) -> None:
    """x -> Q/DQ -> Conv (int8 weights via DequantizeLinear) -> Clip(0, 6) -> Q/DQ: the Clip is not redundant
    with the uint8 output grid (0..12.75), so onnxruntime cannot fold it into the QuantizeLinear."""
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    w = np.random.default_rng(0).integers(-50, 50, (4, 3, 3, 3)).astype(np.int8)
    consts = {"w_q": w, "w_s": np.float32(0.01), "w_z": np.int8(0), "a_s": np.float32(0.05), "a_z": np.uint8(0),
              "lo": np.float32(0.0), "hi": np.float32(6.0)}
    nodes = [h.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"], name="x_q"),
             h.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"], name="x_dq"),
             h.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq"),
             h.make_node("Conv", ["xd", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip"),
             h.make_node("QuantizeLinear", ["r", "a_s", "a_z"], ["rq"], name="r_q"),
             h.make_node("DequantizeLinear", ["rq", "a_s", "a_z"], ["y"], name="r_dq")]
    g = h.make_graph(nodes, "clip", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                     [nh.from_array(np.asarray(v), k) for k, v in consts.items()])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 21)]), str(path))


def test_clip_before_quantizelinear_keeps_the_conv_in_float_in_onnxruntime(tmp_path):
    _clip_model(tmp_path / "clip.onnx")
    (lay,) = classify(tmp_path / "clip.onnx", "onnxruntime").layers
    assert (lay.name, lay.integer) == ("conv", False)
    assert lay.reason == f"float {lay.kernel}: a Clip between the layer and its QuantizeLinear"


@needs_openvino
def test_openvino_runs_the_clipped_conv_on_integer_kernels(tmp_path):
    """OpenVINO folds the Clip into its u8 convolution where onnxruntime cannot (measured on 2026.4.1)."""
    _clip_model(tmp_path / "clip.onnx")
    (lay,) = classify(tmp_path / "clip.onnx", "openvino").layers
    assert lay.integer and lay.kernel.endswith(("u8", "i8"))
