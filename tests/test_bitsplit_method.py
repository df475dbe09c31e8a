"""``--method bitsplit`` end to end (issue 6): every layer solved in closed form lands on its grid (uniform:
the symmetric b-bit grid; log: 0 / +-2^k), never above its RTN error on the sampled rows, and the QDQ
export runs bit-exactly in onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onnxptq import api
from onnxptq.settings import resolve as resolve_config
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.data import Dataset
from onnxptq.quant import scales as S
from onnxptq.recon.bitsplit import BitSplitResult, log_values, nearest_q
from onnxptq.recon.bitsplit_layers import _bias_safe, _layer_rows, choose_channels, log_grid_bits
from onnxptq.recon.float_weights import FloatWeights
from onnxptq.calib.calibrate import integer_weights
from onnxptq.verify.qdq import qdq_output_parity

from test_recon import tiny  # noqa: F401  (fixture)


@pytest.mark.parametrize("bits", [3, 4])
def test_bitsplit_uniform_on_grid_and_exported(tiny, tmp_path, bits):
    _, path, calib, val = tiny
    out = tmp_path / "bs.onnx"
    res = api.quantize(path, calib, output=out, method="bitsplit", w_bits=bits, a_bits=8, progress=False,
                       first_last_bits=None, bitsplit_points=2000)
    regions = res.recon.regions
    assert len(regions) == len(res.qgraph.layers)
    assert sum(r.loss_after for r in regions) < sum(r.loss_before for r in regions)  # it beats RTN overall
    assert sum(not r.reverted for r in regions) >= 1
    for layer, r in zip(res.qgraph.layers, regions):
        q = integer_weights(res.sim, layer.name)
        p = res.sim.weight_quantizer(layer.name).params
        assert p.grid.bits == bits and q.min() >= p.grid.qmin and q.max() <= p.grid.qmax
        assert np.all(p.zero_point == 0)
        if not r.reverted:
            # Bit-Split channels lie on the symmetric [-(2^(b-1)-1), 2^(b-1)-1] (Eq. 13's b-1 ternary planes);
            # only the RTN-kept share of channels may reach -2^(b-1)
            at_min = (q.reshape(q.shape[0], -1).min(axis=1) == p.grid.qmin).mean()
            assert at_min <= r.rtn_channels + 1e-9, (layer.name, at_min, r.rtn_channels)
    assert qdq_output_parity(res.sim, str(out), {"input": val}).bit_exact


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_bitsplit_log_weights_are_powers_of_two(tiny, tmp_path, bits):
    _, path, calib, val = tiny
    out = tmp_path / "log.onnx"
    res = api.quantize(path, calib, output=out, method="bitsplit", weight_grid="log", w_bits=bits, a_bits=8,
                       first_last_bits=None, progress=False, bitsplit_points=2000)
    allowed = set(log_values(bits).tolist())
    solved = [x for x, r in zip(res.qgraph.layers, res.recon.regions) if not r.reverted]
    assert solved
    for layer in solved:
        q = integer_weights(res.sim, layer.name)
        assert set(np.unique(q).tolist()) <= allowed
        assert res.sim.weight_quantizer(layer.name).params.grid.bits == log_grid_bits(bits)
    assert log_grid_bits(4) == 8 and log_grid_bits(3) == 4 and log_grid_bits(2) == 2  # +-64 / +-4 / +-1
    assert qdq_output_parity(res.sim, str(out), {"input": val}).bit_exact


def test_bitsplit_config_validation():
    with pytest.raises(ConfigError, match="w_bits >= 3"):
        resolve_config(QuantConfig(method="bitsplit", w_bits=2))
    with pytest.raises(ConfigError, match="2-4 bits"):
        resolve_config(QuantConfig(method="bitsplit", weight_grid="log", w_bits=5))
    with pytest.raises(ConfigError, match="--scale float"):
        resolve_config(QuantConfig(method="bitsplit", scale="po2"))
    with pytest.raises(ConfigError, match="--method bitsplit"):
        resolve_config(QuantConfig(method="brecq", weight_grid="log"))
    assert QuantConfig(method="bitsplit", weight_grid="log", w_bits=2).weight_grid == "log"


def test_nearest_q_hand_values():
    w = torch.tensor([[0.26, -0.74, 0.5, 2.0, 0.125]], dtype=torch.float64)
    a = torch.tensor([0.25], dtype=torch.float64)  # w / a = 1.04, -2.96, 2, 8, 0.5
    assert nearest_q(w, a, 3).tolist() == [[1, -3, 2, 3, 0]]  # clipped to +-3, the tie to even
    assert nearest_q(w, a, 3, log=True).tolist() == [[1, -2, 2, 4, 0]]  # {0, +-1, +-2, +-4}, ties to the lower


def test_choose_channels_per_channel_or_whole_layer():
    split, rtn = torch.tensor([[1.0, 5.0, 2.0]]), torch.tensor([[2.0, 4.0, 2.0]])
    assert choose_channels(split, rtn, per_channel=True).tolist() == [[True, False, False]]  # ties keep RTN
    assert choose_channels(split, rtn, per_channel=False).tolist() == [[False] * 3]  # 8 vs 8: not below
    assert choose_channels(split, rtn + 0.5, per_channel=False).tolist() == [[True] * 3]


def test_bias_safe_raises_only_the_unsafe_channels():
    wm = torch.tensor([[[0.01, -0.02], [1.0, -0.5]]], dtype=torch.float64)  # (G=1, M=2, D=2)
    res = BitSplitResult(torch.tensor([[[1, -3], [3, -1]]]), torch.tensor([[0.0067, 0.33]], dtype=torch.float64),
                         torch.zeros(1, 2), torch.zeros(1, 2))
    need = torch.tensor([[0.01, 0.01]], dtype=torch.float64)
    s_x = 1e-3
    bias = need * s_x * S.bias_limit()  # at s_w = 0.01 the bias sits exactly on the int32 bound
    assert _bias_safe(res, wm, bias, s_x, 3, use_log=False) == 1
    assert res.alpha[0, 1] == 0.33 and 0.01 < res.alpha[0, 0] < 0.01 * (1 + 1e-5)
    assert bool((res.alpha.float().double() >= need).all())  # still safe as the float32 scale the export stores
    assert res.q.tolist() == [[[1, -2], [3, -1]]]  # channel 0 re-rounded at alpha 0.01, channel 1 untouched


def test_layer_rows_come_from_every_sample_in_the_same_order(tiny):
    """The head sees one row per sample: every calibration sample contributes (not only the first chunk), and
    the float and quantized rows are the same samples' rows."""
    net, path, calib, _ = tiny
    res = api.quantize(path, calib, method="rtn", w_bits=4, a_bits=8, progress=False)
    sim = res.sim
    fc = next(x for x in res.qgraph.layers if x.op_type != "Conv")
    node = sim.nodes[sim.node_index(fc.name)]
    x, xq = _layer_rows(sim, Dataset({"input": calib}), FloatWeights(sim), fc, node, 10_000,
                        torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.no_grad():
        t = torch.from_numpy(calib)
        h = F.relu(net.conv1(t))
        h = F.relu(h + net.conv3(F.relu(net.conv2(h))))
        feats = F.relu(net.conv4(h)).mean((2, 3)).double()
    assert x.shape == (len(calib), 16) and xq.shape == x.shape
    match = torch.cdist(x, feats).argmin(1)  # each row is one sample's features, every sample once
    assert sorted(match.tolist()) == list(range(len(calib)))
    assert torch.allclose(x, feats[match], atol=1e-4)
    assert not torch.equal(match, torch.arange(len(calib)))  # shuffled: a slice is a random subset
    assert (xq - x).abs().max() < 0.1 * x.abs().max()  # the quantized model's rows of the same samples


def test_bitsplit_keeps_rtn_where_rows_are_too_few(tiny, caplog):
    _, path, calib, _ = tiny
    with caplog.at_level("WARNING"):
        res = api.quantize(path, calib[:12], method="bitsplit", w_bits=4, a_bits=8, first_last_bits=None,
                           progress=False)  # the head has 12 rows (10 to fit) for 16 weights per channel
    diag = res.diagnostics
    by_name = {r.name: r for r in res.recon.regions}
    fc = next(x for x in res.qgraph.layers if x.op_type != "Conv")
    assert by_name[fc.name].reverted and "underdetermined" in caplog.text and fc.name in caplog.text
    # the revert and any RTN-kept channels are recorded fallbacks, one per layer
    assert [x.where for x in diag.of("region-rtn")] == [r.name for r in res.recon.regions if r.reverted]
    assert diag.totals["region-rtn"] == len(res.recon.regions)
    assert [x.where for x in diag.of("channels-rtn")] == [r.name for r in res.recon.regions
                                                          if not r.reverted and r.rtn_channels > 0]
    assert not all(r.reverted for r in res.recon.regions)


@pytest.mark.parametrize("grid", ["uniform", "log"])
def test_bitsplit_resume_equals_uninterrupted(tmp_path, monkeypatch, digits_calib, grid):
    """Bit-Split checkpoints after every layer; an interrupted run resumed from its checkpoint exports the same
    bytes as an uninterrupted one (log weights: the checkpoint carries the changed grid too)."""
    from onnxptq.recon import checkpoint as ckpt
    from helpers import digits_path, stop_after_checkpoints

    kw = dict(method="bitsplit", w_bits=3, weight_grid=grid, bitsplit_points=256, bitsplit_iters=3, num_calib=32,
              progress=False, check_kernels=False)
    calib = digits_calib["input"][:32]
    full = api.quantize(digits_path("digits_resnet"), calib, checkpoint_dir=str(tmp_path / "a"), **kw)
    real_save = ckpt.save
    stop_after_checkpoints(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        api.quantize(digits_path("digits_resnet"), calib, checkpoint_dir=str(tmp_path / "b"), **kw)
    monkeypatch.setattr(ckpt, "save", real_save)
    res = api.quantize(digits_path("digits_resnet"), calib, checkpoint_dir=str(tmp_path / "b"), resume=True, **kw)
    assert res.recon.resumed_regions == 4
    assert res.model.SerializeToString() == full.model.SerializeToString()
    assert [r.name for r in res.recon.regions] == [r.name for r in full.recon.regions]
    assert [x.where for x in res.diagnostics.items] == [x.where for x in full.diagnostics.items]
