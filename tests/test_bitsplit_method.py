"""``--method bitsplit`` end to end (issue 6): every layer solved in closed form lands on its grid (uniform:
the symmetric b-bit grid; log: 0 / +-2^k), never above its RTN error on the sampled rows, and the QDQ
export runs bit-exactly in onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

from onnxptq import api
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.recon.bitsplit import log_values
from onnxptq.recon.bitsplit_layers import log_grid_bits
from onnxptq.recon.calibrate import integer_weights
from onnxptq.verify import qdq_output_parity

from test_recon import tiny  # noqa: F401  (fixture)


@pytest.mark.parametrize("bits", [3, 4])
def test_bitsplit_uniform_on_grid_and_exported(tiny, tmp_path, bits):
    _, path, calib, val = tiny
    out = tmp_path / "bs.onnx"
    res = api.quantize(path, calib, output=out, method="bitsplit", w_bits=bits, a_bits=8, progress=False,
                       first_last_bits=None, bitsplit_points=2000)
    regions = res.recon.regions
    assert len(regions) == len(res.qgraph.layers)
    assert all(r.loss_after <= r.loss_before for r in regions)
    assert sum(r.loss_after for r in regions) < sum(r.loss_before for r in regions)  # it beats RTN overall
    qmax = 2 ** (bits - 1) - 1
    for layer, r in zip(res.qgraph.layers, regions):
        q = integer_weights(res.sim, layer.name)
        p = res.sim.weight_quantizer(layer.name).params
        assert p.grid.bits == bits
        if not r.reverted:
            assert np.abs(q).max() <= qmax and np.all(p.zero_point == 0) and np.all(p.scale > 0)
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
        QuantConfig(method="bitsplit", w_bits=2)
    with pytest.raises(ConfigError, match="2-4 bits"):
        QuantConfig(method="bitsplit", weight_grid="log", w_bits=5)
    with pytest.raises(ConfigError, match="--scale float"):
        QuantConfig(method="bitsplit", scale="po2")
    with pytest.raises(ConfigError, match="--method bitsplit"):
        QuantConfig(method="brecq", weight_grid="log")
    assert QuantConfig(method="bitsplit", weight_grid="log", w_bits=2).weight_grid == "log"
