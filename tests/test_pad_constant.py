"""A constant Pad that writes a non-zero value into a carried quant point (EfficientViT's linear attention
appends a row of ones to V): the point's grid is widened to hold the value exactly (calib.calibrate.pad_values),
so the Po2 integer export writes it and passes level 1; a zero pad value changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onnxptq
from onnxptq.quant.scales import holds_values
from onnxptq.quant import QParams, activation_grid

from helpers import export_torch_model


class PadOnes(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        torch.manual_seed(0)
        self.value = value
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.d = nn.Conv2d(4, 2, 3)

    def forward(self, x):
        v = 0.05 * self.c(x)  # a range well inside (-1, 1)
        return self.d(F.pad(v, (0, 0, 0, 1), mode="constant", value=self.value))


def test_holds_values_hand_cases():
    g = activation_grid(8, False)  # signed, [-128, 127]
    p = QParams(g, np.float32(2.0 ** -8), np.array(0), None, True)
    assert not holds_values(p, [1.0])  # 256 > 127
    assert holds_values(QParams(g, np.float32(2.0 ** -6), np.array(0), None, True), [1.0])  # 64
    assert not holds_values(QParams(g, np.float32(2.0), np.array(0), None, True), [1.0])  # 0.5: between levels
    assert holds_values(QParams(g, np.float32(0.3), np.array(0), None, False), [1.0])  # float scales: in range


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_pad_constant_is_on_the_grid_and_exports_as_integers(tmp_path, value):
    from onnxptq.verify.integer import verify_integer
    import onnx

    x = np.random.default_rng(0).standard_normal((32, 3, 6, 6)).astype(np.float32)
    path = export_torch_model(PadOnes(value), torch.from_numpy(x[:1]), tmp_path / "p.onnx")
    res = onnxptq.quantize(str(path), x, output=tmp_path / "p.int.onnx", scale="po2", format="int", num_calib=32,
                           progress=False)
    t = res.qgraph.layers[0].output
    p = res.sim.act_quantizer(t).params
    top = (p.grid.qmax - float(p.zero_point)) * float(p.scale)
    if value:
        assert holds_values(p, [value]) and top >= 1.0
    else:
        assert top < 1.0  # nothing to hold: the L_p range of the data
    assert verify_integer(onnx.load(str(tmp_path / "p.int.onnx")), {"input": x[:4]}).ok and res.lowering.ok
