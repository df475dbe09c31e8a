"""Grids, rounding, scale initialization, QParams and the activation observer (onnxptq.quant)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnxptq.quant import Grid, QParams, activation_grid, dequantize, fake_quantize, is_power_of_two, quantize
from onnxptq.quant import scales as S
from onnxptq.quant.grid import weight_grid
from onnxptq.quant.observer import Observer

from helpers import ort_run

# ---------------------------------------------------------------- grids

SIGNED = {2: (-2, 1), 3: (-4, 3), 4: (-8, 7), 5: (-16, 15), 6: (-32, 31), 7: (-64, 63), 8: (-128, 127)}
UNSIGNED = {2: (0, 3), 3: (0, 7), 4: (0, 15), 5: (0, 31), 6: (0, 63), 7: (0, 127), 8: (0, 255)}


@pytest.mark.parametrize("bits", range(2, 9))
def test_grid_bounds(bits):
    s, u = Grid(bits, True), Grid(bits, False)
    assert (s.qmin, s.qmax) == SIGNED[bits]
    assert (u.qmin, u.qmax) == UNSIGNED[bits]
    assert s.levels == u.levels == s.qmax - s.qmin + 1 == 2 ** bits
    assert str(s) == f"int{bits}" and str(u) == f"uint{bits}"


def test_grid_helpers_and_validation():
    assert weight_grid(4) == Grid(4, True)
    assert activation_grid(4, nonnegative=True) == Grid(4, False)
    assert activation_grid(4, nonnegative=False) == Grid(4, True)
    for bad in (0, 1, 33):
        with pytest.raises(ValueError):
            Grid(bad, True)


# ---------------------------------------------------------------- rounding: numpy == torch == ONNX

def _both(fn, x, scale, zp, *rest):
    """Run ``fn`` on numpy and on torch inputs; return (numpy result, torch result as numpy)."""
    r_np = fn(x, scale, zp, *rest)
    r_t = fn(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(scale)), torch.from_numpy(np.asarray(zp)), *rest)
    return np.asarray(r_np), r_t.numpy()


@pytest.mark.parametrize("grid", [Grid(8, True), Grid(4, True), Grid(8, False), Grid(3, False)], ids=str)
def test_numpy_and_torch_identical(grid):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 50)) * 3).astype(np.float32)
    x[0, :6] = [0.05, 0.15, 0.25, -0.05, -0.15, -0.25]  # exact-ish ties with scale 0.1
    scale = rng.uniform(0.01, 0.3, size=(6, 1)).astype(np.float32)
    scale[0] = 0.1
    zp = rng.integers(grid.qmin, grid.qmax + 1, size=(6, 1)).astype(np.float32)
    q_np, q_t = _both(lambda a, s, z: quantize(a, s, z, grid), x, scale, zp)
    np.testing.assert_array_equal(q_np, q_t)
    assert q_np.min() >= grid.qmin and q_np.max() <= grid.qmax
    np.testing.assert_array_equal(q_np, np.round(q_np))
    d_np, d_t = _both(dequantize, q_np, scale, zp)
    np.testing.assert_array_equal(d_np, d_t)
    f_np, f_t = _both(lambda a, s, z: fake_quantize(a, s, z, grid), x, scale, zp)
    np.testing.assert_array_equal(f_np, f_t)
    np.testing.assert_array_equal(f_np, d_np)
    assert f_np.dtype == np.float32 and f_t.dtype == np.float32


def test_numpy_and_torch_identical_with_int64_zero_points():
    """QParams stores zero points as int64: both frameworks must then still compute in float32, like
    ONNX DequantizeLinear ((q - z) * s in float32), and agree bit for bit."""
    grid = Grid(8, True)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1000) * 2).astype(np.float32)
    p = QParams(grid, np.float32(0.0173), np.int64(5))
    f_np = fake_quantize(x, p.scale, p.zero_point, grid)
    f_t = fake_quantize(torch.from_numpy(x), torch.tensor(p.scale), torch.tensor(p.zero_point), grid)
    assert np.asarray(f_np).dtype == np.float32, f"numpy fake_quantize returned {np.asarray(f_np).dtype}"
    np.testing.assert_array_equal(np.asarray(f_np), f_t.numpy())


TIES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], dtype=np.float32)
TIES_RNE = np.array([0, 2, 2, 0, -2, -2], dtype=np.float32)


@pytest.mark.parametrize("scale", [0.25, 1.0, 2.0 ** -7])
@pytest.mark.parametrize("zp", [0, 3, -7])
def test_round_half_to_even_ties(scale, zp):
    grid = Grid(8, True)
    x = TIES * np.float32(scale)
    for q in _both(lambda a, s, z: quantize(a, s, z, grid), x, np.float32(scale), np.float32(zp)):
        np.testing.assert_array_equal(q, TIES_RNE + zp)
    # -0.5 rounds to (negative) zero, not -1
    assert float(quantize(np.float32(-0.5 * scale), np.float32(scale), np.float32(0), grid)) == 0.0


@pytest.mark.parametrize("grid,zp,expect_lo,expect_hi", [
    (Grid(8, True), 0, -128, 127),
    (Grid(8, True), 5, -128, 127),
    (Grid(4, True), -3, -8, 7),
    (Grid(8, False), 10, 0, 255),
    (Grid(2, False), 1, 0, 3),
])
def test_saturation_with_zero_points(grid, zp, expect_lo, expect_hi):
    s = np.float32(0.5)
    x = np.array([-1e6, -1000.0, 1000.0, 1e6], dtype=np.float32)
    for q in _both(lambda a, sc, z: quantize(a, sc, z, grid), x, s, np.float32(zp)):
        np.testing.assert_array_equal(q, [expect_lo, expect_lo, expect_hi, expect_hi])
    # just inside: x / s + z lands exactly on the bounds
    inside = np.array([(grid.qmin - zp) * 0.5, (grid.qmax - zp) * 0.5], dtype=np.float32)
    np.testing.assert_array_equal(quantize(inside, s, np.float32(zp), grid), [grid.qmin, grid.qmax])
    # fake_quantize of a saturated value is the grid end's real value
    np.testing.assert_array_equal(fake_quantize(x, s, np.float32(zp), grid),
                                  np.float32([(grid.qmin - zp) * 0.5] * 2 + [(grid.qmax - zp) * 0.5] * 2))


def test_quantize_matches_onnxruntime_quantizelinear():
    """Our quantize == onnxruntime QuantizeLinear (divides, RNE, saturates) on ties, near-ties, saturation."""
    rng = np.random.default_rng(2)
    scale, zp = np.float32(0.1), 3
    x = np.concatenate([TIES * scale, (np.arange(-140, 140) + 0.5) * scale,
                        rng.standard_normal(2000).astype(np.float32) * 5]).astype(np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
                              [helper.make_tensor_value_info("q", TensorProto.INT8, [len(x)])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [float(scale)]),
                               helper.make_tensor("z", TensorProto.INT8, [], [zp])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    q_ort = ort_run(model, {"x": x})[0].astype(np.float32)
    np.testing.assert_array_equal(quantize(x, scale, np.float32(zp), Grid(8, True)), q_ort)


# ---------------------------------------------------------------- minmax / percentile (hand values)

def _t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_minmax_symmetric_signed():
    s, z = S.minmax(_t(-3.0, 1.0, 2.0), Grid(8, True), symmetric=True)
    assert float(s) == pytest.approx(3.0 / 127, rel=1e-6) and int(z) == 0
    s, z = S.minmax(_t(0.5, 4.0, -1.0), Grid(4, True), symmetric=True)
    assert float(s) == pytest.approx(4.0 / 7, rel=1e-6) and int(z) == 0
    # a range not containing 0 is widened to contain it
    s, z = S.minmax(_t(1.0, 3.0), Grid(8, True), symmetric=True)
    assert float(s) == pytest.approx(3.0 / 127, rel=1e-6) and int(z) == 0


def test_minmax_unsigned():
    s, z = S.minmax(_t(0.0, 0.5, 2.55), Grid(8, False), symmetric=True)
    assert float(s) == pytest.approx(0.01, rel=1e-6) and int(z) == 0
    s, z = S.minmax(_t(0.2, 3.0), Grid(4, False), symmetric=False)
    assert float(s) == pytest.approx(3.0 / 15, rel=1e-6) and int(z) == 0


def test_minmax_asymmetric_zero_point():
    # signed grid over [-1, 3]: s = 4/255, z = RNE(-128 + 1/s) = RNE(-64.25) = -64
    s, z = S.minmax(_t(-1.0, 0.3, 3.0), Grid(8, True), symmetric=False)
    assert float(s) == pytest.approx(4.0 / 255, rel=1e-6) and int(z) == -64
    # unsigned grid over [-1, 3]: z = RNE(63.75) = 64
    s, z = S.minmax(_t(-1.0, 3.0), Grid(8, False), symmetric=False)
    assert float(s) == pytest.approx(4.0 / 255, rel=1e-6) and int(z) == 64
    # 4-bit signed over [-2, 1]: s = 3/15 = 0.2, z = RNE(-8 + 10) = 2
    s, z = S.minmax(_t(-2.0, 1.0), Grid(4, True), symmetric=False)
    assert float(s) == pytest.approx(0.2, rel=1e-6) and int(z) == 2
    # the real range maps onto the grid ends (within half a step)
    assert float((-2.0 / s).round() + z) == -8 and float((1.0 / s).round() + z) == 7


def test_minmax_per_channel():
    x = torch.tensor([[-1.0, 0.5, 0.2], [0.1, 4.0, -2.0], [0.0, 0.0, 0.0]])
    s, z = S.minmax(x, Grid(8, True), symmetric=True, axis=0)
    assert s.shape == (3,)
    np.testing.assert_allclose(s[:2].numpy(), [1 / 127, 4 / 127], rtol=1e-6)
    assert float(s[2]) > 0  # all-zero channel: tiny positive scale, never 0
    assert z.tolist() == [0, 0, 0]
    s1, _ = S.minmax(x.t().contiguous(), Grid(8, True), symmetric=True, axis=1)
    torch.testing.assert_close(s, s1, rtol=0, atol=0)


def test_percentile_hand_values():
    x = torch.arange(0, 101, dtype=torch.float32)  # quantile(0.9) = 90, quantile(0.1) = 10
    s, z = S.percentile(x, Grid(8, False), symmetric=True, q=90.0)
    assert float(s) == pytest.approx(90.0 / 255, rel=1e-5) and int(z) == 0
    x = torch.arange(-100, 101, dtype=torch.float32)  # quantiles +-80
    s, z = S.percentile(x, Grid(8, True), symmetric=True, q=90.0)
    assert float(s) == pytest.approx(80.0 / 127, rel=1e-5) and int(z) == 0
    s, z = S.percentile(x, Grid(8, True), symmetric=True, q=100.0)
    assert float(s) == pytest.approx(100.0 / 127, rel=1e-5)
    # asymmetric: arange(-50, 151) -> quantiles -30 / 130: s = 160/255, z = RNE(-128 + 30 * 255/160) = RNE(-80.19)
    x = torch.arange(-50, 151, dtype=torch.float32)
    s, z = S.percentile(x, Grid(8, True), symmetric=False, q=90.0)
    assert float(s) == pytest.approx(160.0 / 255, rel=1e-5) and int(z) == -80


def test_percentile_per_channel():
    x = torch.stack([torch.arange(0, 101, dtype=torch.float32), 2 * torch.arange(-100, 101, 2, dtype=torch.float32)])
    s, _ = S.percentile(x, Grid(8, True), symmetric=True, axis=0, q=90.0)
    np.testing.assert_allclose(s.numpy(), [90 / 127, 160 / 127], rtol=1e-5)


# ---------------------------------------------------------------- L_p search

def _err(x, s, z, grid, axis, p):
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    return S.lp_error(x, fake_quantize(x, s.reshape(shape), z.reshape(shape).float(), grid), p, axis)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lp_search_never_worse_than_minmax_per_channel(bits, symmetric):
    torch.manual_seed(bits)
    g = torch.Generator().manual_seed(bits)
    x = torch.distributions.StudentT(3.0).sample((16, 8, 3, 3)) * torch.rand(16, 1, 1, 1, generator=g).add(0.1)
    x[3] *= 0  # an all-zero channel
    grid = Grid(bits, True)
    s_l, z_l = S.lp_search(x, grid, symmetric, axis=0, p=2.4)
    s_m, z_m = S.minmax(x, grid, symmetric, axis=0)
    e_l, e_m = _err(x, s_l, z_l, grid, 0, 2.4), _err(x, s_m, z_m, grid, 0, 2.4)
    assert e_l.shape == (16,)
    assert torch.all(e_l <= e_m * (1 + 1e-6) + 1e-30), (e_l - e_m)
    if bits <= 4:  # heavy tails on a coarse grid: clipping must pay off somewhere
        assert torch.any(e_l < 0.95 * e_m)
    assert torch.all((s_l > 0) & torch.isfinite(s_l))
    assert torch.all((z_l >= grid.qmin) & (z_l <= grid.qmax))


def test_lp_search_per_tensor_unsigned():
    torch.manual_seed(6)
    x = torch.distributions.Exponential(1.0).sample((4000,))
    grid = Grid(4, False)
    s_l, z_l = S.lp_search(x, grid, True, p=2.4)
    s_m, z_m = S.minmax(x, grid, True)
    assert float(_err(x, s_l, z_l, grid, None, 2.4)) < float(_err(x, s_m, z_m, grid, None, 2.4))
    assert float(s_l) < float(s_m) and int(z_l) == 0


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_lp_search_is_exactly_per_channel(axis, symmetric):
    """Searching all channels at once == searching each channel alone (no cross-channel coupling)."""
    torch.manual_seed(3)
    x = torch.distributions.Laplace(0.0, 1.0).sample((12, 10)) * torch.linspace(0.05, 3.0, 12).reshape(12, 1)
    if axis == 1:
        x = x.t().contiguous()
    grid = Grid(4, True)
    s_all, z_all = S.lp_search(x, grid, symmetric, axis=axis)
    for c in range(x.shape[axis]):
        xc = x.select(axis, c)
        s_c, z_c = S.lp_search(xc, grid, symmetric, axis=None)
        assert float(s_all[c]) == pytest.approx(float(s_c), rel=1e-6), c
        assert int(z_all[c]) == int(z_c), c
        xc1 = x.narrow(axis, c, 1)
        s_c1, z_c1 = S.lp_search(xc1, grid, symmetric, axis=axis)
        assert float(s_all[c]) == pytest.approx(float(s_c1[0]), rel=1e-6), c


# ---------------------------------------------------------------- power-of-two scales

@pytest.mark.parametrize("s,floor,rnd", [
    (0.3, 0.25, 0.25), (0.375, 0.25, 0.5), (0.25, 0.25, 0.25), (1.0, 1.0, 1.0), (3.0, 2.0, 4.0),
    (0.7, 0.5, 0.5), (0.72, 0.5, 1.0), (1e-3, 2.0 ** -10, 2.0 ** -10), (6.0, 4.0, 8.0),
])
def test_po2_floor_and_round(s, floor, rnd):
    # log2(0.72) = -0.474 -> round 0 -> 1.0 ; log2(0.7) = -0.515 -> round -1 -> 0.5 ; log2(6) = 2.58 -> 8
    t = torch.tensor([s], dtype=torch.float32)
    assert float(S.po2_floor(t)) == floor
    assert float(S.po2_round(t)) == rnd
    assert S.po2_floor(t).dtype == torch.float32


def test_po2_zero_point_keeps_x_min():
    grid = Grid(8, True)
    # z' = RNE(s z / s') clipped: 0.3 * -64 / 0.25 = -76.8 -> -77
    assert int(S.po2_zero_point(_t(0.3), torch.tensor(-64), _t(0.25), grid)) == -77
    assert int(S.po2_zero_point(_t(0.3), torch.tensor(-120), _t(0.125), grid)) == -128  # clipped


@pytest.mark.parametrize("case", ["signed_sym", "unsigned", "asym"])
@pytest.mark.parametrize("axis", [None, 0])
def test_po2_search_exact_and_no_worse_than_floor_or_round(case, axis):
    torch.manual_seed(4)
    x = torch.distributions.StudentT(4.0).sample((8, 300)) * torch.logspace(-3, 1, 8).reshape(8, 1)
    grid, symmetric = Grid(4, True), True
    if case == "unsigned":
        x, grid = x.abs(), Grid(4, False)
    elif case == "asym":
        x, symmetric = x + x.abs().amax(1, keepdim=True) * 0.4, False
    if axis is None:
        x = x[5]
    scale, zp = S.minmax(x, grid, symmetric, axis)
    s_s, z_s = S.po2_search(x, scale, zp, grid, axis, p=2.4)
    assert np.all(is_power_of_two(s_s.numpy()))
    assert s_s.dtype == scale.dtype
    e_s = _err(x, s_s, z_s, grid, axis, 2.4)
    for rule in (S.po2_floor, S.po2_round):
        s_r = rule(scale)
        z_r = S.po2_zero_point(scale, zp, s_r, grid)
        e_r = _err(x, s_r, z_r, grid, axis, 2.4)
        assert torch.all(e_s <= e_r * (1 + 1e-6) + 1e-30), (rule.__name__, e_s, e_r)
    assert torch.all((z_s >= grid.qmin) & (z_s <= grid.qmax))
    # all Po2 candidates lie in [ceil(log2 s) - 2, ceil(log2 s)]
    k = torch.log2(s_s.double())
    k0 = torch.ceil(torch.log2(scale.double()))
    assert torch.all((k <= k0) & (k >= k0 - 2))


# ---------------------------------------------------------------- QParams / is_power_of_two

def test_is_power_of_two():
    yes = np.array([1.0, 0.5, 2.0, 1024.0, 2.0 ** -20, 2.0 ** -126, 2.0 ** -149, 2.0 ** 100])
    no = np.array([0.3, 3.0, 0.75, 1.5, 0.1, 1.0 + 2 ** -20, 0.0, -0.5, -2.0, np.inf, np.nan])
    assert is_power_of_two(yes).all()
    assert not is_power_of_two(no).any()
    assert is_power_of_two(np.float32(2.0 ** -7)).all()
    # float32 just below a power of two is not one
    assert not is_power_of_two(np.nextafter(np.float32(0.25), np.float32(0))).any()


def test_qparams_valid():
    p = QParams(Grid(8, True), [0.5, 0.25], [0, 0], axis=0, po2=True)
    assert p.scale.dtype == np.float32 and p.zero_point.dtype == np.int64
    assert p.symmetric
    assert p.exponents.tolist() == [-1, -2]
    s, z = p.shaped_for(4)
    assert s.shape == (2, 1, 1, 1) and z.shape == (2, 1, 1, 1)
    q = QParams(Grid(8, False), 0.1, 3)
    assert not q.symmetric and q.zero_point.shape == ()
    with pytest.raises(ValueError):
        q.exponents  # noqa: B018  (not Po2)
    r = QParams(Grid(4, True), [0.1, 0.2, 0.3], 0, axis=0)  # scalar zero point broadcast
    assert r.zero_point.tolist() == [0, 0, 0]


@pytest.mark.parametrize("kwargs", [
    dict(scale=-0.1, zero_point=0),
    dict(scale=0.0, zero_point=0),
    dict(scale=float("nan"), zero_point=0),
    dict(scale=float("inf"), zero_point=0),
    dict(scale=[0.1, -0.2], zero_point=[0, 0], axis=0),
    dict(scale=[0.1, float("nan")], zero_point=[0, 0], axis=0),
    dict(scale=0.1, zero_point=128),
    dict(scale=0.1, zero_point=-129),
    dict(scale=[0.1, 0.1], zero_point=[0, 200], axis=0),
    dict(scale=0.3, zero_point=0, po2=True),
    dict(scale=[0.25, 0.3], zero_point=[0, 0], axis=0, po2=True),
])
def test_qparams_rejects(kwargs):
    with pytest.raises(ValueError):
        QParams(Grid(8, True), **kwargs)


def test_qparams_unsigned_grid_zero_point_range():
    QParams(Grid(4, False), 0.1, 15)
    with pytest.raises(ValueError):
        QParams(Grid(4, False), 0.1, 16)
    with pytest.raises(ValueError):
        QParams(Grid(4, False), 0.1, -1)


# ---------------------------------------------------------------- observer

def test_observer_min_max_count():
    obs = Observer(sample_size=64, seed=0)
    assert not obs.nonnegative
    with pytest.raises(ValueError):
        obs.sample()
    obs.update(torch.tensor([[0.5, 2.0], [1.0, 0.0]]))
    assert (obs.min, obs.max, obs.count) == (0.0, 2.0, 4)
    assert obs.nonnegative
    obs.update(torch.empty(0))
    assert obs.count == 4
    obs.update(torch.tensor([-0.25, 7.0, 3.0]))
    assert (obs.min, obs.max, obs.count) == (-0.25, 7.0, 7)
    assert not obs.nonnegative
    s = obs.sample()
    assert float(s.min()) == -0.25 and float(s.max()) == 7.0  # exact extremes included


def test_observer_relu_data_is_nonnegative():
    obs = Observer(sample_size=128)
    for k in range(5):
        obs.update(torch.relu(torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(k))))
    assert obs.nonnegative and obs.min == 0.0
    assert float(obs.sample().min()) >= 0.0


def test_observer_sample_is_bounded():
    """At most ``sample_size`` kept values (plus the two exact extremes), however much data is seen."""
    size = 1000
    obs = Observer(sample_size=size, seed=1)
    for k in range(40):
        obs.update(torch.randn(7, 300, generator=torch.Generator().manual_seed(k)))
        assert obs.sample().numel() <= size + 2, (k, obs.sample().numel())
    assert obs.count == 40 * 2100
    assert obs.sample().numel() >= size  # it does keep a full-size sample


def test_observer_is_seeded():
    a, b = Observer(sample_size=100, seed=7), Observer(sample_size=100, seed=7)
    for k in range(6):
        x = torch.randn(500, generator=torch.Generator().manual_seed(k))
        a.update(x)
        b.update(x)
    assert torch.equal(a.sample(), b.sample())


def test_observer_reads_channels_last_in_memory_order():
    """A channels-last tensor is read in its memory order (no copy into NCHW order): the same statistics, and
    the same sample as from the NHWC tensor that holds those values in that order."""
    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(3))
    cl = x.contiguous(memory_format=torch.channels_last)
    a, b, c = Observer(sample_size=16, seed=2), Observer(sample_size=16, seed=2), Observer(sample_size=16, seed=2)
    a.update(cl)
    b.update(x.permute(0, 2, 3, 1).contiguous())  # the values in channels-last memory order
    c.update(x)
    assert torch.equal(a.sample(), b.sample())
    assert (a.min, a.max, a.count) == (c.min, c.max, c.count) == (float(x.min()), float(x.max()), x.numel())
    assert set(a.sample()[:-2].tolist()) <= set(x.flatten().tolist())


def test_softmax_floor_from_row_maxima_by_hand():
    """Rows [2, 1, -1e4] and [0.5, 0, -1e4] (a finite mask): the smallest row maximum is 0.5, so the floor is
    0.5 - SOFTMAX_MASK_SPAN - ln 3 (three values a row); rows whose maximum saturates (a fully masked row of float minima) do not count; a
    tensor whose values all lie above the floor needs none; without row statistics only a saturating mask
    gives a floor, SPAN below the largest finite value."""
    from onnxptq.calib.calibrate import SOFTMAX_MASK_SPAN, softmax_floor

    fmin = float(np.finfo(np.float32).min)
    obs = Observer(sample_size=64, row_axis=-1)
    obs.update(torch.tensor([[[2.0, 1.0, -1e4], [0.5, 0.0, -1e4], [fmin, fmin, fmin]]]))
    assert obs.row_max_min == 0.5 and obs.row_length == 3
    assert softmax_floor(obs) == pytest.approx(0.5 - SOFTMAX_MASK_SPAN - math.log(3))
    near = Observer(sample_size=64, row_axis=-1)
    near.update(torch.tensor([[2.0, 1.0, -3.0], [0.5, 0.0, -2.0]]))
    assert softmax_floor(near) is None  # -3 is within the span of every row's maximum
    flat = Observer(sample_size=64)  # no row statistics: the finite mask is a value like any other
    flat.update(torch.tensor([[2.0, 1.0, -1e4], [0.5, 0.0, -1e4]]))
    assert softmax_floor(flat) is None
    flat.update(torch.tensor([[2.0, fmin]]))
    assert softmax_floor(flat) == pytest.approx(2.0 - SOFTMAX_MASK_SPAN)


def test_observer_sample_is_uniform_over_batches():
    """Every observed value has the same chance to be kept: a small batch is not over-represented."""
    obs = Observer(sample_size=1000, seed=0)
    obs.update(torch.zeros(20_000))
    obs.update(torch.ones(200))  # 1 % of all values
    frac = float(obs.sample()[:-2].mean())  # drop the appended extremes
    assert 0.002 < frac < 0.03, f"ones make {100 * frac:.1f} % of the sample, 1 % of the data"


def test_observer_percentile_matches_full_data():
    """The sample feeds percentile search: its 99th percentile is close to the data's."""
    torch.manual_seed(5)
    data = [torch.distributions.Exponential(1.0).sample((4096,)) for _ in range(20)]
    obs = Observer(sample_size=8192, seed=0)
    for d in data:
        obs.update(d)
    full = torch.cat(data)
    assert float(torch.quantile(obs.sample(), 0.99)) == pytest.approx(float(torch.quantile(full, 0.99)), rel=0.1)
    assert math.isclose(obs.max, float(full.max()))


def test_int16_multiplier_hand_cases():
    """g = M 2^-f with the most bits that keep max |M| <= 2^15 - 1 (one exponent for the whole tensor)."""
    from onnxptq.quant.requant import MULT_MAX, int16_multiplier

    m, f = int16_multiplier(np.array([1.0]))
    assert f == 14 and m.tolist() == [16384]  # 2^15 would exceed 32767
    m, f = int16_multiplier(np.array([0.5, -0.25, 0.0]))
    assert f == 15 and m.tolist() == [16384, -8192, 0]
    m, f = int16_multiplier(np.array([3.0, 1e-3]))
    assert f == 13 and m.tolist() == [24576, 8]  # 1e-3 * 8192 = 8.192 -> 8
    m, f = int16_multiplier(np.zeros(3))
    assert f == 0 and m.tolist() == [0, 0, 0]
    g = np.random.default_rng(0).standard_normal(50) * 7
    m, f = int16_multiplier(g)
    assert np.abs(m).max() <= MULT_MAX and np.abs(m).max() > MULT_MAX // 2
    assert np.abs(m * 2.0**-f - g).max() <= 2.0 ** (-f - 1)
