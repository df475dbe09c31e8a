"""ConvTranspose as a quantized layer (issue 16 item 2; YOLOv8-seg's mask upsampler, U-Net decoders): weights
per output channel on axis 1, QDQ export that onnxruntime runs, bias correction with the transposed
convolution's mean, reconstruction, and the integer format (a Conv over the zero-point-dilated input)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import onnxptq
from onnxptq.calib.calibrate import bias_shift
from onnxptq.errors import UnsupportedOpError
from onnxptq.graph import import_model
from onnxptq.ops.conv import conv_transpose

from helpers import export_torch_model, method_kw, ort_run
from test_recon import FAST


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(8, 6, 2, stride=2)  # YOLOv8-seg's proto upsample
        self.up4 = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, bias=False)  # DCGAN / U-Net style
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.up4(torch.relu(self.up2(torch.relu(self.down(x))))))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    path = export_torch_model(Decoder(), torch.from_numpy(x[:1]), d / "dec.onnx")
    return path, x, d


def _sqnr(ref, out) -> float:
    err = np.sum((ref - out).astype(np.float64) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / err))


def test_conv_transpose_is_a_layer_with_output_channels_on_axis_1(decoder):
    path, _, _ = decoder
    qg = import_model(path)
    ct = [x for x in qg.layers if x.op_type == "ConvTranspose"]
    assert len(ct) == 2 and all(x.weight_axis == 1 for x in ct)
    assert [x.out_channels for x in ct] == [6, 4] and [x.stride_area for x in ct] == [4, 4]
    assert all(x.bias for x in ct)  # the bias-free one gets a zero bias to hold the correction
    assert ct[0].macs_per_sample == 8 * 6 * 2 * 2 * 4 * 4  # every weight meets every input position once


def test_w8a8_qdq_runs_in_onnxruntime_like_the_simulation(decoder):
    path, x, d = decoder
    res = onnxptq.quantize(str(path), x, output=d / "q.onnx", force=True, num_calib=64, progress=False)
    assert not [f for f in res.diagnostics.items if f.kind in ("onnx2torch", "float-layer")]
    m = onnx.load(str(d / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "ConvTranspose":
            dq = next(p for p in m.graph.node if p.output[0] == n.input[1])
            assert dq.op_type == "DequantizeLinear"
            assert onnx.helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1
            assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[1],)  # a scale per output channel
    ref = ort_run(str(path), {"input": x})[0]
    out = ort_run(str(d / "q.onnx"), {"input": x})[0]
    with torch.no_grad():
        sim = res.sim({res.qgraph.inputs[0]: torch.from_numpy(x)})[res.qgraph.outputs[0]].numpy()
    assert _sqnr(ref, out) > 25.0
    assert _sqnr(sim, out) > 40.0  # the file computes what the simulation computed


def test_bias_shift_is_the_mean_output_change(decoder):
    """(W_q - W) applied to the input: the per-channel mean of the transposed convolution's output change equals
    bias_shift when the strides divide the kernel (k 2 s 2 everywhere; k 4 s 2 p 1 inside the border)."""
    path, _, _ = decoder
    qg = import_model(path)
    rng = np.random.default_rng(3)
    for layer, attrs, inner in [(qg.layers[1], dict(strides=[2, 2]), slice(None)),
                                (qg.layers[2], dict(strides=[2, 2], pads=[1, 1, 1, 1]), slice(1, -1))]:
        cin, cout = layer.weight_shape[:2]
        w = torch.from_numpy(rng.standard_normal(layer.weight_shape).astype(np.float32))
        w_q = w + 0.01 * torch.from_numpy(rng.standard_normal(layer.weight_shape).astype(np.float32))
        # spatially constant per sample and channel: every interior output position sees the channel mean
        xin = torch.from_numpy(np.broadcast_to(rng.standard_normal((16, cin, 1, 1)).astype(np.float32)
                                               + np.arange(cin)[:, None, None], (16, cin, 6, 6)).copy())
        dy = conv_transpose(xin.double(), (w_q - w).double(), None, attrs)[:, :, inner, inner]
        got = bias_shift(layer, w, w_q, xin.double().mean(dim=(0, 2, 3)).float())
        np.testing.assert_allclose(got.numpy(), dy.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_brecq_reconstructs_conv_transpose_layers(decoder):
    path, x, d = decoder
    res = onnxptq.quantize(str(path), x, output=d / "b.onnx", force=True, method="brecq", w_bits=4, a_bits=8,
                           num_calib=64, **method_kw("brecq", **FAST))
    names = {n for r in res.recon.regions for n in r.layers}
    assert {x.name for x in res.qgraph.layers if x.op_type == "ConvTranspose"} <= names
    ref = ort_run(str(path), {"input": x})[0]
    assert _sqnr(ref, ort_run(str(d / "b.onnx"), {"input": x})[0]) > 10.0


def test_integer_format_lowers_it_as_a_conv_over_the_dilated_input(decoder):
    """--format int: each ConvTranspose becomes zero-point insertion (stride > 1) and a ConvInteger/QLinearConv
    with the flipped, transposed kernel; runtime/, onnxruntime and the integer simulation agree (level 1) and
    the program matches the fake-quant simulation (lowering check)."""
    from onnxptq.verify.integer import verify_integer

    path, x, d = decoder
    res = onnxptq.quantize(str(path), x, output=d / "i.onnx", force=True, scale="po2", format="int", num_calib=64,
                           progress=False)
    m = onnx.load(str(d / "i.onnx"))
    assert not any(n.op_type == "ConvTranspose" for n in m.graph.node)
    assert sum(n.op_type in ("ConvInteger", "QLinearConv") for n in m.graph.node) == 4
    assert verify_integer(m, {"input": x[:8]}).ok
    assert res.lowering.ok, res.lowering
    ref = ort_run(str(path), {"input": x})[0]
    assert _sqnr(ref, ort_run(str(d / "i.onnx"), {"input": x})[0]) > 20.0


def test_integer_format_refuses_pads_beyond_the_kernel(tmp_path):
    class Cropping(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c = nn.Conv2d(3, 4, 1)
            self.up = nn.ConvTranspose2d(4, 4, 2, stride=2, padding=2)  # pads 2 > dilation (k - 1) = 1

        def forward(self, x):
            return self.up(torch.relu(self.c(x)))

    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    path = export_torch_model(Cropping(), torch.from_numpy(x[:1]), tmp_path / "c.onnx")
    with pytest.raises(UnsupportedOpError, match="kernel's reach") as e:
        onnxptq.quantize(str(path), x, output=tmp_path / "c.int.onnx", scale="po2", format="int", num_calib=16,
                         progress=False)
    assert [name for name, _ in e.value.nodes] == ["/up/ConvTranspose"]
    assert not (tmp_path / "c.int.onnx").exists()


def test_grouped_conv_transpose_stays_float_and_says_so(tmp_path):
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c = nn.Conv2d(3, 4, 3, padding=1)
            self.up = nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2)

        def forward(self, x):
            return self.up(torch.relu(self.c(x)))

    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    path = export_torch_model(Grouped(), torch.from_numpy(x[:1]), tmp_path / "g.onnx")
    res = onnxptq.quantize(str(path), x, output=tmp_path / "g.q.onnx", num_calib=32, progress=False)
    floats = [f for f in res.diagnostics.items if f.kind == "float-layer"]
    assert [f.where for f in floats] == ["/up/ConvTranspose"] and "grouped ConvTranspose" in floats[0].detail
    assert [x.op_type for x in res.qgraph.layers] == ["Conv"]
    ref = ort_run(str(path), {"input": x})[0]
    assert _sqnr(ref, ort_run(str(tmp_path / "g.q.onnx"), {"input": x})[0]) > 25.0


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1, output_padding=1),
                                dict(kernel_size=3, stride=1, padding=1),
                                dict(kernel_size=3, stride=3, padding=1, dilation=2),
                                dict(kernel_size=(2, 4), stride=(2, 3), padding=(0, 1))],
                         ids=["k3s2p1op1", "k3s1p1", "k3s3p1d2", "k2x4s2x3"])
def test_integer_conv_transpose_forms_pass_level_1(tmp_path, kw):
    from onnxptq.verify.integer import verify_integer

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.c = nn.Conv2d(3, 5, 3, padding=1)
            self.up = nn.ConvTranspose2d(5, 4, **kw)

        def forward(self, x):
            return self.up(torch.relu(self.c(x)))

    x = np.random.default_rng(0).standard_normal((16, 3, 7, 6)).astype(np.float32)
    path = export_torch_model(Up(), torch.from_numpy(x[:1]), tmp_path / "u.onnx")
    res = onnxptq.quantize(str(path), x, output=tmp_path / "u.int.onnx", scale="po2", format="int", num_calib=16,
                           progress=False)
    assert verify_integer(onnx.load(str(tmp_path / "u.int.onnx")), {"input": x[:4]}).ok and res.lowering.ok
    ref = ort_run(str(path), {"input": x})[0]
    assert ref.shape == ort_run(str(tmp_path / "u.int.onnx"), {"input": x})[0].shape
