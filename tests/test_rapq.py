"""RAPQ (issue 5): the Po2 scale group, log2-domain Po2 steps (Eq. 16), the BN-based L-P loss (Eq. 17-19),
checked against hand-computed values; then ``--method rapq`` end to end (exact Po2 exports, level-1 parity)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from onnxptq import api
from helpers import method_kw
from onnxptq.settings import resolve as resolve_config
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.quant import activation_grid, fake_quantize, is_power_of_two, weight_grid
from onnxptq.quant.rapq import lp_exponent, po2_base_exponent, po2_group_scale, po2_step, snap_exponent
from onnxptq.calib.calibrate import choose_scale
from onnxptq.recon.losses import lp_loss, mse_loss
from onnxptq.recon.po2_group import Po2ScaleGroup
from onnxptq.recon.settings import resolve
from onnxptq.sim.fake_quant import round_ste
from onnxptq.verify.integer import verify_integer

from test_recon import FAST, tiny  # noqa: F401  (fixture)


def test_lp_exponent_hand_values():
    assert lp_exponent(1.0, 0.9, 1.0) == 1.45  # sigmoid(0) = 0.5
    assert lp_exponent(1.0 + math.log(3.0), 0.9, 1.0) == round(1 + 0.9 * 0.75, 2)  # sigmoid(ln 3) = 3/4
    assert lp_exponent(50.0, 1.0, 1.0) == 2.0 and lp_exponent(-50.0, 0.1, 1.0) == 1.0
    with pytest.raises(ValueError):
        lp_exponent(1.0, 0.0)


def test_lp_loss_reduces_to_mse_and_l1():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    assert torch.allclose(lp_loss(a, b, p=2.0), mse_loss(a, b))
    assert torch.allclose(lp_loss(a, b, p=1.0), (a - b).abs().sum(1).mean())
    assert torch.allclose(lp_loss(a, b, p=1.5), (a - b).abs().pow(1.5).sum(1).mean())


def test_po2_group_scale_and_snap_hand_values():
    s0 = np.array([0.3, 0.25, 0.9], dtype=np.float32)
    base = po2_base_exponent(s0)
    assert base.tolist() == [-2, -2, -1]
    assert torch.allclose(po2_group_scale(torch.tensor(base), torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)),
                          torch.tensor([0.25, 0.5, 2 ** -0.5], dtype=torch.float64))
    assert snap_exponent(base, np.array([0.49, 0.5, 1.0])).tolist() == [-2, -1, 0]
    g = Po2ScaleGroup(s0, (3, 1, 1, 1))
    assert torch.allclose(g().reshape(-1), torch.from_numpy(s0), rtol=1e-5)  # initialized at s0
    snapped = g.snapped().reshape(-1)  # h(V) = frac(log2 s0): 0.26 -> down, 0 -> down, 0.85 -> up
    assert snapped.tolist() == [0.25, 0.25, 1.0] and all(is_power_of_two(snapped))


def test_po2_step_gradient_is_rapq_eq16():
    """d x^ / d log2 s = s ln2 (round(x/s) - x/s) inside, s ln2 (q_end - z) at a clipped end (TQT)."""
    grid = activation_grid(4, nonnegative=True)  # 0..15
    t = torch.tensor(-2.3, requires_grad=True)  # step 2^floor(-2.3) = 0.125
    z = torch.tensor(0.0)
    x = torch.tensor([0.33, 1.0, 5.0, -1.0])
    s = po2_step(t)
    assert float(s.detach()) == 0.125
    xq = fake_quantize(x, s, z, grid, round_ste)
    grads = [torch.autograd.grad(v, t, retain_graph=True)[0].item() for v in xq]
    ln2, s = math.log(2.0), 0.125
    want = [s * ln2 * (round(0.33 / s) - 0.33 / s), s * ln2 * (round(1.0 / s) - 1.0 / s), s * ln2 * 15, 0.0]
    assert np.allclose(grads, want, atol=1e-6)


def test_config_of_rapq():
    with pytest.raises(ConfigError, match="--scale po2"):
        resolve_config(QuantConfig(method="rapq"))
    cfg = resolve_config(QuantConfig(method="rapq", scale="po2", iters=50))
    assert cfg.loss == "lp" and resolve_config(QuantConfig(method="brecq")).loss == "mse"
    st = resolve(cfg)
    assert [p for p, _ in st.phases] == ["scales", "rounding", "steps"] and st.scale_group_iters == 10
    assert st.group_lambda == pytest.approx(10 * st.round_lambda)
    assert resolve(QuantConfig(method="rapq", scale="po2", preset="rapq")).lp_alpha == 0.9
    assert resolve(QuantConfig(method="rapq", scale="po2", preset="rapq-quick")).lp_alpha == 0.1
    with pytest.raises(ConfigError):
        resolve_config(QuantConfig(method="rapq", scale="po2", lp_alpha=1.5))


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_rapq_exports_exact_po2_scales_and_passes_level1(tiny):  # noqa: F811
    _, path, calib, val = tiny
    res = api.quantize(path, calib, method="rapq", scale="po2", w_bits=3, a_bits=4, **method_kw("rapq", **FAST))
    regions = res.recon.regions
    assert all(r.lp_exponent is not None and 1.0 <= r.lp_exponent <= 2.0 for r in regions)
    assert {r.lp_source for r in regions} == {"std"}  # the tiny net's BNs are folded by the exporter
    scales = [v for k, v in _initializers(res.model).items() if k.endswith("scale") and v.dtype == np.float32]
    assert scales and all(bool(np.all(is_power_of_two(s))) for s in scales)
    # without the guard every weight scale is one of the two powers of two around its float L_p scale
    free = api.quantize(path, calib, method="rapq", scale="po2", w_bits=3, a_bits=4, recon_guard=False, **method_kw("rapq", **FAST))
    qg = free.qgraph  # the float weights it quantized (po2 rescale: the layers around a rescaled point change)
    for layer in qg.layers:
        fq = free.sim.weight_quantizer(layer.name)
        w = torch.from_numpy(np.array(qg.initializer(layer.weight), dtype=np.float32))
        s0 = choose_scale(w, fq.params.grid, True, layer.weight_axis, QuantConfig(), "mse").scale.astype(np.float64)
        lo, got = np.exp2(np.floor(np.log2(s0))), fq.params.scale.astype(np.float64)
        assert np.all((got == lo) | (got == 2 * lo)), layer.name
    intm = api.quantize(path, calib, method="rapq", scale="po2", format="int", w_bits=3, a_bits=4, **method_kw("rapq", **FAST))
    rep = verify_integer(intm.model, {"input": val[:8]}, batch_size=8, reference_samples=1)
    assert rep.ok, rep.format()


def test_rapq_records_bn_gamma_source():
    """Digits ResNet keeps its BatchNorm nodes: P comes from the folded gammas."""
    from helpers import MODELS, digits_path

    res = api.quantize(digits_path("digits_resnet"), MODELS / "digits_calib.npz", method="rapq",
                       scale="po2", w_bits=4, a_bits=8, num_calib=32, **method_kw("rapq", **{**FAST, "iters": 4, "act_iters": 2}))
    assert "bn" in {r.lp_source for r in res.recon.regions}
