"""Merge points taking over an input's grid (calib/join_grids.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import export_torch_model
from onnx import numpy_helper

import onnxptq
from onnxptq.calib.join_grids import pick_params
from onnxptq.quant import QParams, fake_quantize
from onnxptq.quant.grid import Grid

G8 = Grid(8, True)


def _params(scale: float, zp: int, grid: Grid = G8) -> QParams:
    return QParams(grid, np.float32(scale), np.int64(zp))


def test_pick_params_keeps_values_on_their_grid():
    """A tensor whose values lie on grid A: A rounds it exactly, so A wins over a grid 2 % finer that the
    L_p search on the same values would rather take; in either order."""
    torch.manual_seed(0)
    y = torch.randint(-128, 128, (4000,)).float() * 0.01  # on A: scale 0.01, zero point 0
    a, b = _params(0.01, 0), _params(0.0098, 0)
    assert pick_params(y, [b, a]) == 1
    assert pick_params(y, [a, b]) == 0
    assert pick_params(y, [a, a]) == 0  # ties: the first


def test_pick_params_is_the_lowest_lp_error():
    """Off every grid, the pick is the candidate with the lowest mean |y - Q(y)|^2.4, computed by hand."""
    torch.manual_seed(1)
    y = torch.randn(5000) * 1.3 + 0.2
    cands = [_params(s, z) for s, z in ((0.02, 0), (0.025, -8), (0.03, 3), (0.045, 0))]
    errs = [float(((y - fake_quantize(y, torch.tensor(float(c.scale)), torch.tensor(float(c.zero_point)),
                                      G8)).abs() ** 2.4).mean()) for c in cands]
    assert pick_params(y, cands) == int(np.argmin(errs))
    # and that is not simply the first candidate here (the test can fail)
    assert int(np.argmin(errs)) != 0


def test_pick_params_tolerances_and_masked_values():
    """The first candidate within ``rel_tol`` of the lowest error wins; an attention mask's float minimum
    (an infinity in disguise) does not count, so it cannot make every error infinite and the first win."""
    torch.manual_seed(2)
    y = torch.randn(5000)
    fine, coarse = _params(0.04, 0), _params(0.042, 0)  # no clipping: coarse rounds y a little worse
    e = [float(((y - fake_quantize(y, torch.tensor(float(c.scale)), torch.tensor(0.0), G8)).abs() ** 2.4).mean())
         for c in (fine, coarse)]
    assert e[1] > e[0]
    assert pick_params(y, [coarse, fine]) == 1
    assert pick_params(y, [coarse, fine], rel_tol=e[1] / e[0] - 1 + 1e-6) == 0
    assert pick_params(y, [coarse, fine], abs_tol=e[1] * 1.000001) == 0
    masked = torch.cat([y, torch.full((100,), -3.4e38)])
    assert pick_params(masked, [coarse, fine]) == 1


class _Stream(torch.nn.Module):
    """conv -> four residual blocks whose branches are 1e-4 of the stream (PoolFormer's small layer scales)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.branches = torch.nn.ModuleList(torch.nn.Conv2d(8, 8, 1) for _ in range(4))

    def forward(self, x):
        y = self.conv(x)
        for b in self.branches:
            y = y + 1e-4 * b(y)
        return y


def _q_scale(model: onnx.ModelProto, tensor_prefix: str) -> list[tuple[float, int]]:
    """(scale, zero point) of every QuantizeLinear whose input tensor starts with ``tensor_prefix``."""
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(float(init[n.input[1]]), int(init[n.input[2]])) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0].startswith(tensor_prefix)]


@pytest.mark.parametrize("join", [True, False])
def test_residual_stream_keeps_one_grid(tmp_path, join):
    """With ``join_grids`` every Add of the stream carries the conv output's (scale, zero point) in the exported
    QDQ model (no re-rounding); without it the Adds' own L_p choices differ from it."""
    torch.manual_seed(0)
    m = _Stream().eval()
    x = torch.randn(1, 3, 12, 12)
    path = tmp_path / "stream.onnx"
    export_torch_model(m, x, path)
    calib = {onnx.load(str(path)).graph.input[0].name: np.random.default_rng(0).normal(
        size=(64, 3, 12, 12)).astype(np.float32)}
    out = tmp_path / "q.onnx"
    onnxptq.quantize(str(path), calib, output=out, progress=False, join_grids=join)
    q = onnx.load(str(out))
    conv = _q_scale(q, "/conv/Conv_output_0")
    adds = [p for n in q.graph.node if n.op_type == "Add" for p in _q_scale(q, n.output[0])]
    assert len(conv) == 1 and len(adds) == 4
    if join:
        assert all(a == conv[0] for a in adds)
    else:
        assert any(a != conv[0] for a in adds)
