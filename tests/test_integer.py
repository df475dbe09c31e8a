"""Integer export (issue 3): requantization math, its ONNX recipe, level-1 parity on the shipped models
and on 200 fuzzed graphs, the integer model's outputs vs the Po2 simulation, error reporting, CLI."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fuzz_graphs import random_cnn
from helpers import DIGITS, MODELS, digits_path, ort_run

import onnxptq
from onnxptq.errors import ConfigError, UnsupportedOpError
from onnxptq.export.integer import IntegerWriter
from onnxptq.export.intplan import (IntProgram, TInt, exact_in_float32, fold_constant_channels, qlinear_form,
                                    weight_kernel)
from onnxptq.quant.requant import po2_frac, requant_shift, rne_div, rne_shift, shift_float
from onnxptq.verify.integer import verify_integer


def _exact_round(num: int, den: int, mode: str) -> int:
    """Round num/den with Fractions: ties to even (rne) or towards +inf (half_up)."""
    q = Fraction(num, den)
    fl = q.numerator // q.denominator
    rem = q - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and (mode == "half_up" or fl % 2 == 1)):
        return fl + 1
    return fl


# ------------------------------------------------------------------ requantization math

@pytest.mark.parametrize("a,n,want", [(5, 1, 2), (7, 1, 4), (-5, 1, -2), (-7, 1, -4), (6, 2, 2), (10, 2, 2),
                                      (-6, 2, -2), (-10, 2, -2), (3, 1, 2), (-3, 1, -2), (1, 1, 0), (-1, 1, 0),
                                      (2**30, 30, 1), (2**31 - 1, 31, 1), (-2**31, 31, -1), (1 << 20 | 1 << 19, 20, 2)])
def test_rne_shift_hand_cases(a, n, want):
    assert int(rne_shift(np.array(a, np.int64), n)) == want
    assert int(rne_shift(torch.tensor(a, dtype=torch.int64), n)) == want


def test_rne_shift_and_div_match_exact_rounding():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.integers(-2**31, 2**31, 4000), rng.integers(-64, 64, 1000) * 8 + 4])  # many ties
    for mode in ("rne", "half_up"):
        for n in (1, 2, 3, 7, 15):
            got = rne_shift(a, n, mode)
            assert got.tolist() == [_exact_round(int(v), 2**n, mode) for v in a]
            assert np.array_equal(rne_shift(torch.from_numpy(a), n, mode).numpy(), got)
        for d in (1, 2, 3, 49, 196, 49 * 8):
            got = rne_div(a, d, mode)
            assert got.tolist() == [_exact_round(int(v), d, mode) for v in a]


def test_float_fast_path_equals_integer_recipe():
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.integers(-2**51, 2**51, 3000), rng.integers(-64, 64, 1000) * 16 + 8])
    for mode in ("rne", "half_up"):
        for n in (-3, 0, 1, 4, 20):
            pre = max(0, 1 - n)
            want = requant_shift(a, n, pre, mode) if pre == 0 or abs(a).max() * 2**pre < 2**62 else None
            got = shift_float(torch.from_numpy(a.astype(np.float64)), n, mode).numpy()
            assert np.array_equal(got.astype(np.int64), want)


def test_requant_shift_per_channel_with_left_shift():
    a = np.array([[5, -7, 12, 9]], np.int64)
    n = np.array([[1, 0, -2, 3]])
    pre = 1 - int(n.min())
    got = requant_shift(a, n + 0, pre)
    want = [[_exact_round(5, 2, "rne"), -7, 48, _exact_round(9, 8, "rne")]]
    assert got.tolist() == want


def test_po2_frac_rejects_non_po2():
    assert po2_frac(np.array([0.25, 1.0, 8.0], np.float32)).tolist() == [2, 0, -3]
    with pytest.raises(ValueError):
        po2_frac(np.array([0.3]))


# ------------------------------------------------------------------ the ONNX recipe of R and of the RNE division

def _recipe_model(kind: str, arg, wide: bool, mode: str) -> onnx.ModelProto:
    w = IntegerWriter(IntProgram({}, [], {}, [], [], mode), onnx.ModelProto())
    elem = TensorProto.INT64 if wide else TensorProto.INT32
    if kind == "shift":
        out = w.requant("a", arg, 0, wide, "r")
    else:
        np_dt = np.int64 if wide else np.int32
        D = w.const("D", np_dt(arg))
        r = w.op("Mod", ["a", D], "rem")
        q = w.op("Div", [w.op("Sub", ["a", r], "fn"), D], "q")
        twice = w.op("Mul", [r, w.const("two", np_dt(2))], "tw")
        if mode == "half_up":
            up = w.op("Div", [twice, D], "up")
        else:
            odd = w.op("Mod", [q, w.const("two_", np_dt(2))], "odd")
            up = w.op("Div", [w.op("Add", [twice, odd], "t"), w.const("Dp1", np_dt(arg + 1))], "up")
        out = w.op("Add", [q, up], "y")
    g = helper.make_graph(w.nodes, "recipe", [helper.make_tensor_value_info("a", elem, [None])],
                          [helper.make_tensor_value_info(out, elem, [None])], w.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("mode", ["rne", "half_up"])
@pytest.mark.parametrize("kind,arg", [("shift", 1), ("shift", 4), ("shift", 13), ("div", 49), ("div", 64), ("div", 3)])
def test_onnx_recipe_equals_requant_functions(kind, arg, mode):
    import runtime

    rng = np.random.default_rng(1)
    lim = 2**31 - 2**arg if kind == "shift" else 2**30
    a = np.concatenate([rng.integers(-lim, lim, 3000), np.arange(-40, 40) * (2**arg if kind == "shift" else arg) // 2,
                        [lim - 1, -lim]]).astype(np.int32)
    want = rne_shift(a.astype(np.int64), arg, mode) if kind == "shift" else rne_div(a.astype(np.int64), arg, mode)
    m = _recipe_model(kind, arg, False, mode)
    assert np.array_equal(ort_run(m, {"a": a})[0], want)
    got_rt = runtime.run(m, {"a": a})
    got_rt = got_rt[m.graph.output[0].name] if isinstance(got_rt, dict) else got_rt[0]
    assert np.array_equal(got_rt, want)


# ------------------------------------------------------------------ compact form: QLinearConv with Po2 scales

def _qlinear_conv_model(w: np.ndarray, bias: np.ndarray, n: np.ndarray, x_zp: int, y_zp: int, group: int,
                        kernel: str) -> onnx.ModelProto:
    """One QLinearConv with s_x = 1, s_y = 1, s_w[c] = 2^-n[c] (multiplier exactly 2^-n[c]); ``kernel`` picks
    the container types: s8s8, u8s8 or u8u8 (weights stored + 128 with zero point 128)."""
    xt, wt = {"s8s8": (np.int8, np.int8), "u8s8": (np.uint8, np.int8), "u8u8": (np.uint8, np.uint8)}[kernel]
    wz = 128 if wt == np.uint8 else 0
    m = w.shape[0]
    inits = [numpy_helper.from_array(np.float32(1), "xs"), numpy_helper.from_array(xt(x_zp), "xz"),
             numpy_helper.from_array((w.astype(np.int16) + wz).astype(wt), "w"),
             numpy_helper.from_array(np.exp2(-n.astype(np.float64)).astype(np.float32), "ws"),
             numpy_helper.from_array(wt(wz), "wz"), numpy_helper.from_array(np.float32(1), "ys"),
             numpy_helper.from_array(xt(y_zp), "yz"), numpy_helper.from_array(bias.astype(np.int32), "b")]
    k = w.shape[-1]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], group=group,
                            kernel_shape=[k, k], pads=[k // 2] * 4)
    elem = TensorProto.INT8 if xt == np.int8 else TensorProto.UINT8
    g = helper.make_graph([node], "qlc", [helper.make_tensor_value_info("x", elem, None)],
                          [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _exact_conv_requant(x, w, bias, n, x_zp, y_zp, group, lo, hi) -> np.ndarray:
    """clip(R(conv(x - z_x, w) + b, n[c]) + z_y): the shift recipe's integers (exact, int64)."""
    k = w.shape[-1]
    xz = torch.nn.functional.pad(torch.tensor(x.astype(np.float64) - x_zp), [k // 2] * 4)
    acc = torch.nn.functional.conv2d(xz, torch.tensor(w.astype(np.float64)), groups=group).numpy()
    acc = np.round(acc).astype(np.int64) + bias.reshape(1, -1, 1, 1)
    nn = n.reshape(1, -1, 1, 1)
    return np.clip(requant_shift(acc, nn, max(0, 1 - int(n.min()))) + y_zp, lo, hi)


KERNELS_EXACT_HERE = ["s8s8", "u8u8"] + (["u8s8"] if "vnni" in open("/proc/cpuinfo").read() else [])


@pytest.mark.parametrize("kernel", KERNELS_EXACT_HERE)
@pytest.mark.parametrize("case", range(8))
def test_qlinearconv_po2_equals_exact_shift_below_2_24(kernel, case):
    """onnxruntime's and runtime/'s QLinearConv with Po2 scales give R(acc, n) exactly when |acc| <= 2^24
    (per-channel scales, n <= 0, depthwise, input zero point in the padding, extreme operands)."""
    import runtime

    rng = np.random.default_rng(case)
    depthwise = case % 2 == 1
    c = [3, 16, 64, 32][case % 4]
    m = c if depthwise else 8
    group = c if depthwise else 1
    lo_c, hi_c = (-128, 127) if kernel == "s8s8" else (0, 255)
    w = rng.integers(-127, 128, (m, c // group, 3, 3))
    x = rng.integers(lo_c, hi_c + 1, (2, c, 7, 7))
    if case >= 4:  # extremes: the largest products, every AVX2 int16 pair saturating
        w = rng.choice([-127, 127], w.shape)
        x = rng.choice([lo_c, hi_c], x.shape)
    x_zp, y_zp = int(rng.integers(lo_c, lo_c + 100)), int(rng.integers(lo_c, lo_c + 100))
    bias = rng.integers(-5000, 5000, m)
    n = rng.integers(-2, 14, m) if case != 3 else rng.integers(12, 18, m)
    want = _exact_conv_requant(x, w, bias, n, x_zp, y_zp, group, lo_c, hi_c)
    bound = int((np.abs(w).reshape(m, -1).sum(1) * max(hi_c - x_zp, x_zp - lo_c) + np.abs(bias)).max())
    assert bound <= 2**24
    model = _qlinear_conv_model(w, bias, n, x_zp, y_zp, group, kernel)
    xin = x.astype(np.int8 if kernel == "s8s8" else np.uint8)
    assert np.array_equal(ort_run(model, {"x": xin})[0], want)
    assert np.array_equal(runtime.run(model, {"x": xin})["y"], want)


def test_qlinearconv_po2_is_not_exact_above_2_24_and_the_proof_refuses_it():
    """acc = 257 * 2^17 + 1 (> 2^24, not a float32): exact R(acc, 18) = 129, onnxruntime gives 128 (the float
    rounds to the tie, then to even). ``qlinear_form`` must refuse exactly this, and folding the constant
    channel (weights 0, bias R(acc, n), shift 0) makes it exact again."""
    acc = 257 * 2**17 + 1
    w = np.zeros((1, 1, 1, 1), np.int64)
    bias, n = np.array([acc]), np.array([18])
    model = _qlinear_conv_model(w, bias, n, 0, 0, 1, "u8u8")
    x = np.zeros((1, 1, 2, 2), np.uint8)
    assert ort_run(model, {"x": x})[0].reshape(-1)[0] == 128
    assert int(requant_shift(acc, 18)) == 129
    t = TInt("t", 4, 0, 0, 255, 8, False)
    form, why = qlinear_form("Conv", t, t, n, np.array([0], dtype=object), bias, 0, 255, 4, container="uint8")
    assert form == "shift" and "2^24" in why
    w2, b2, n2, folded = fold_constant_channels(w, 1, bias, np.array([0], dtype=object), n, 0, 0, 255)
    assert folded == [0] and b2[0] == 129 and n2[0] == 0
    assert ort_run(_qlinear_conv_model(w2, b2, n2, 0, 0, 1, "u8u8"), {"x": x})[0].reshape(-1)[0] == 129


def test_exact_in_float32_bound_and_saturation():
    assert exact_in_float32(-2**24, 2**24, 10, 0, 0, 255) == ""
    assert "2^24" in exact_in_float32(0, 2**24 + 1, 18, 0, 0, 255)
    # past 2^24 but R(2^24, 5) = 2^19 already saturates at 255 on that side: exact by monotonicity
    assert exact_in_float32(-2**20, 2**28, 5, 0, 0, 255) == ""
    assert exact_in_float32(-2**28, 2**20, 5, 0, -10, 255) == ""  # R(-2^24, 5) = -2^19 <= lo: saturated
    assert "-2^24" in exact_in_float32(-2**28, 2**20, 18, 0, -100, 255)  # R(-2^24, 18) = -64 > lo: not
    assert "2^31" in exact_in_float32(0, 2**31, 30, 0, 0, 255)  # onnxruntime adds the bias in int32
    assert "2^30" in exact_in_float32(0, 2**23, -8, 0, 0, 255)  # 2^31 after the left shift: cvtps2dq overflows


def test_weight_kernel_choice():
    assert weight_kernel("int8", 127, 127) == "s8s8"
    assert weight_kernel("uint8", 255, 127) == "u8u8"  # 255 * 254 > 32767: AVX2 pairs can saturate
    assert weight_kernel("uint8", 255, 64) == "u8s8"  # 255 * 128 = 32640
    assert weight_kernel("uint8", 127, 127) == "u8s8"  # a 7-bit unsigned input
    assert weight_kernel("uint8", 255, 127, "always") == "u8s8"


def _positive_conv_model(cin: int) -> onnx.ModelProto:
    """3x3 Conv with positive weights: on positive inputs the outputs come close to the worst case, so with
    cin = 1024 (K = 9216) the calibrated output step makes n = 19: 2^24 maps far below saturation."""
    w = (np.random.default_rng(0).uniform(0, 1, (4, cin, 3, 3)) / cin).astype(np.float32)
    node = helper.make_node("Conv", ["input", "w", "b"], ["out"], name="/big/Conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    g = helper.make_graph([node], "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", cin, 6, 6])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 0.1, np.float32), "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("cin,form", [(8, "QLinearConv"), (1024, "shift")])
def test_compact_form_only_where_the_bound_proves_it(tmp_path, cin, form):
    """A small layer becomes QLinearConv; a layer whose accumulator can pass 2^24 below saturation keeps the
    exact shift recipe (ConvInteger + R); both are level-1 exact, and the export summary names the form."""
    p = tmp_path / "big.onnx"
    onnx.save(_positive_conv_model(cin), p)
    calib = np.random.default_rng(1).uniform(0, 1, (8, cin, 6, 6)).astype(np.float32)
    res = onnxptq.quantize(p, calib, scale="po2", format="int", progress=False, num_calib=8, first_last_bits=None,
                           w_scale_method="minmax", a_scale_method="minmax")
    step = next(s for s in res.program.steps if s.kind == "layer")
    assert step.attrs["form"] == form, step.attrs["form_why"]
    ops = {n.op_type for n in res.model.graph.node}
    assert ("QLinearConv" in ops) == (form == "QLinearConv") and ("ConvInteger" in ops) == (form == "shift")
    want = "1/1 layers as QLinearConv, 0 with the shift recipe" if form != "shift" else "1 with the shift recipe: /big/Conv"
    assert res.summary()["integer_forms"] == want
    rep = verify_integer(res.model, {"input": calib[:4]}, batch_size=4, reference_samples=1)
    assert rep.ok, rep.format()


def test_dead_channel_is_folded_and_keeps_the_po2_simulation(tmp_path):
    """A channel with tiny weights and a large bias (a dead BN channel, as in EfficientNet-Lite0) passes 2^24
    below saturation; its output is one constant, so it is folded (weights 0, bias k, shift 0) and the layer
    keeps the compact form, with the same integers as the fake-quant Po2 simulation."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 8, 3, 3)) * 0.2).astype(np.float32)
    w[0] *= 1e-4
    b = np.array([3.0, 0.1, -0.1, 0.2], np.float32)
    node = helper.make_node("Conv", ["input", "w", "b"], ["out"], name="/c/Conv", pads=[1] * 4, kernel_shape=[3, 3])
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 6, 6])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = tmp_path / "dead.onnx"
    onnx.save(model, p)
    calib = rng.standard_normal((8, 8, 6, 6)).astype(np.float32)
    res = onnxptq.quantize(p, calib, scale="po2", format="int", progress=False, num_calib=8, first_last_bits=None)
    step = next(s for s in res.program.steps if s.kind == "layer")
    assert step.attrs["form"] == "QLinearConv" and step.attrs["folded"] == [0], step.attrs["form_why"]
    assert step.attrs["shift"][0] == 0 and step.attrs["shift"][1] > 0
    x = {"input": (rng.standard_normal((6, 8, 6, 6)) * 3).astype(np.float32)}
    rep = verify_integer(res.model, x, batch_size=6, reference_samples=1)
    assert rep.ok, rep.format()
    assert np.array_equal(ort_run(res.model, x)[0], onnxptq.api.simulate(res.sim, x))


# ------------------------------------------------------------------ fuzzed graphs: level-1 parity

N_FUZZ = 200


@pytest.mark.parametrize("seed", range(N_FUZZ))
def test_fuzz_level1_parity(seed, tmp_path):
    model, shape, desc = random_cnn(seed)
    rng = np.random.default_rng(seed + 1000)
    path = tmp_path / f"fuzz{seed}.onnx"
    onnx.save(model, path)
    w_bits, a_bits = int(rng.integers(2, 9)), int(rng.integers(4, 9))
    calib = rng.standard_normal((16, *shape)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = onnxptq.quantize(path, calib, scale="po2", format="int", w_bits=w_bits, a_bits=a_bits,
                               first_last_bits=None, progress=False, w_scale_method="minmax", a_scale_method="minmax",
                               po2_method=str(rng.choice(["floor", "round", "search"])), num_calib=16,
                               w_symmetric=bool(rng.random() < 0.7) or w_bits == 8)
    # inputs on a 1/64 grid (exact ties when the input has <= 5 fractional bits), 3x the calibration range
    x = (np.round(rng.standard_normal((6, *shape)) * 3 * 64) / 64).astype(np.float32)
    rep = verify_integer(res.model, {"input": x}, batch_size=6, reference_samples=1)
    assert rep.ok, f"{desc} W{w_bits}A{a_bits}: {rep.format()}"
    assert rep.tensors >= 3


def test_fuzz_covers_int64_accumulators_and_all_block_kinds():
    kinds, wide, forms = set(), 0, set()
    for seed in range(N_FUZZ):
        _, _, desc = random_cnn(seed)
        kinds.update(desc.split("+"))
    assert kinds >= {"conv", "residual", "maxpool", "avgpool", "concat", "silu", "hardswish", "tiny_add"}
    for seed in (8, 14, 18):  # graphs whose tiny branch needs an int64 Add
        model, shape, _ = random_cnn(seed)
        rng = np.random.default_rng(seed + 1000)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "m.onnx")
            onnx.save(model, p)
            res = onnxptq.quantize(p, rng.standard_normal((16, *shape)).astype(np.float32), scale="po2", format="int",
                                   progress=False, w_scale_method="minmax", a_scale_method="minmax", num_calib=16)
        wide += sum(bool(s.attrs.get("wide")) for s in res.program.steps)
        forms.update((s.kind, s.attrs.get("form")) for s in res.program.steps if s.kind in ("layer", "add", "mul", "avgpool"))
        assert any(i.data_type == TensorProto.INT64 for i in res.model.graph.initializer)
    assert wide >= 3
    # both Add forms (float32 where |sum| <= 2^24, the int64 shift recipe for the tiny branch), both average
    # forms (float32 for a power-of-two divisor, the RNE division otherwise), compact layers
    assert forms >= {("layer", "QLinearConv"), ("add", "float32"), ("add", "shift"), ("mul", "float32"),
                     ("avgpool", "float32"), ("avgpool", "shift")}, forms


# ------------------------------------------------------------------ shipped models

@pytest.fixture(scope="module")
def digits_int(tmp_path_factory):
    cache = {}

    def get(name: str, w_bits: int, a_bits: int, int_kernels: str | None = None):
        key = (name, w_bits, a_bits, int_kernels)
        if key not in cache:
            cache[key] = onnxptq.quantize(digits_path(name), MODELS / "digits_calib.npz", scale="po2", format="int",
                                          w_bits=w_bits, a_bits=a_bits, num_calib=64, progress=False,
                                          int_kernels=int_kernels)
        return cache[key]
    return get


@pytest.mark.parametrize("name", DIGITS)
@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (4, 4)])
def test_digits_integer_model_level1_and_equals_po2_simulation(digits_int, digits_val, name, bits):
    res = digits_int(name, *bits)
    x = {"input": digits_val["input"][:48]}
    rep = verify_integer(res.model, x, batch_size=24, reference_samples=1)
    assert rep.ok, rep.format()
    # the integer model computes the same output integers as the fake-quant Po2 simulation
    int_out = ort_run(res.model, x)[0]
    assert np.array_equal(int_out, onnxptq.api.simulate(res.sim, x))
    assert np.array_equal(int_out, res.simulate(x))
    only = {n.op_type for n in res.model.graph.node}
    assert not only & {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear", "Softmax"}
    # every layer's accumulator bound proves the compact form (docs/integer.md), the Gemm as a 1x1 conv
    layers = [s for s in res.program.steps if s.kind == "layer"]
    assert all(s.attrs["form"] == "QLinearConv" for s in layers), [s.attrs["form_why"] for s in layers]
    assert "QLinearConv" in only and not only & {"ConvInteger", "MatMulInteger"}
    assert res.summary()["integer_forms"] == f"{len(layers)}/{len(layers)} layers as QLinearConv, 0 with the shift recipe"


@pytest.mark.skipif("vnni" not in open("/proc/cpuinfo").read(), reason="u8 x s8 is exact on VNNI CPUs only")
def test_kernels_follow_the_target():
    """--int-kernels defaults to the target's: u8 x s8 everywhere where its CPUs are exact (onnxruntime: VNNI /
    ARM), the portable choice for onnxruntime-avx2 and generic; an explicit choice wins."""
    from onnxptq.config import QuantConfig
    from onnxptq.settings import resolve

    int_cfg = dict(scale="po2", format="int")
    assert resolve(QuantConfig(**int_cfg)).int_kernels == "vnni"
    assert resolve(QuantConfig(target="onnxruntime-avx2", **int_cfg)).int_kernels == "portable"
    assert resolve(QuantConfig(target="generic", **int_cfg)).int_kernels == "portable"
    assert resolve(QuantConfig(int_kernels="portable", **int_cfg)).int_kernels == "portable"
    assert resolve(QuantConfig()).int_kernels == "portable"  # QDQ: not used
    with pytest.raises(ConfigError, match="--format int only"):
        QuantConfig(int_kernels="vnni")


def test_vnni_kernels_level1_on_a_vnni_cpu(digits_val):
    """``--int-kernels vnni``: u8 x s8 everywhere (8-bit weights too); exact here, so level-1 parity holds."""
    res = onnxptq.quantize(digits_path("digits_mbv2"), MODELS / "digits_calib.npz", scale="po2", format="int",
                           int_kernels="vnni", num_calib=32, progress=False)
    assert {s.attrs["kernel"] for s in res.program.steps if s.kind == "layer"} == {"u8s8"}
    rep = verify_integer(res.model, {"input": digits_val["input"][:32]}, reference_samples=1)
    assert rep.ok, rep.format()


def test_portable_kernels_avoid_saturating_pairs(digits_int):
    res = digits_int("digits_regnet", 8, 8, "portable")
    for s in (s for s in res.program.steps if s.kind == "layer"):
        x = res.program.tensors[s.inputs[0]]
        w = res.program.arrays[s.attrs["weight"]].astype(np.int64) - s.attrs["w_zp"]
        safe = max(x.hi, x.zp) * 2 * int(np.abs(w).max()) <= 2**15 - 1
        assert s.attrs["kernel"] == ("u8s8" if safe else "u8u8")
        assert (s.attrs["w_zp"] == 128) == (s.attrs["kernel"] == "u8u8")


def test_corrupted_shift_is_reported_at_its_node(digits_int, digits_val):
    res = digits_int("digits_resnet", 8, 8)
    m = onnx.ModelProto()
    m.CopyFrom(res.model)
    layer = res.qgraph.layers[3]
    target = f"{layer.name}/w_scale"  # the compact form's multiplier 2^-n[c] = s_x s_w[c] / s_y
    for init in m.graph.initializer:
        if init.name == target:
            a = numpy_helper.to_array(init).copy()
            a.reshape(-1)[:] *= 2
            init.CopyFrom(numpy_helper.from_array(a, init.name))
            break
    else:
        pytest.fail(f"no initializer {target}")
    rep = verify_integer(m, {"input": digits_val["input"][:16]}, reference_samples=0,
                         engines=("sim", "onnxruntime", "runtime"))
    assert not rep.ok
    assert rep.first.node == layer.name
    assert {mm.engine for mm in rep.mismatches} == {"onnxruntime", "runtime"}


def test_modified_weights_break_the_record(digits_int, digits_val):
    res = digits_int("digits_regnet", 8, 8)
    m = onnx.ModelProto()
    m.CopyFrom(res.model)
    key = f"{res.qgraph.layers[1].name}.weight"
    for init in m.graph.initializer:
        if init.name == key:
            a = numpy_helper.to_array(init).copy()
            a.reshape(-1)[0] ^= 1  # int8 or uint8 (u8 x u8 kernels) weights
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    rep = verify_integer(m, {"input": digits_val["input"][:8]}, reference_samples=0)
    assert not rep.ok and any(key in p for p in rep.record_problems)


def test_half_up_rounding_keeps_level1_parity(tmp_path, digits_val):
    res = onnxptq.quantize(digits_path("digits_mbv2"), MODELS / "digits_calib.npz", scale="po2", format="int",
                           int_rounding="half_up", num_calib=32, progress=False, a_bits=4, w_bits=4)
    rep = verify_integer(res.model, {"input": digits_val["input"][:16]}, reference_samples=1)
    assert rep.ok, rep.format()
    assert json.loads(res.model.metadata_props[-1].value)["rounding"] == "half_up"


def test_integer_format_needs_po2_and_names_unsupported_nodes(tmp_path):
    with pytest.raises(ConfigError, match="po2"):
        onnxptq.QuantConfig(format="int")
    with pytest.raises(ConfigError, match="format int"):
        onnxptq.QuantConfig(int_rounding="half_up")
    model, shape, _ = random_cnn(2)
    g = model.graph
    g.node.append(helper.make_node("LogSoftmax", ["logits"], ["probs"], name="/head/LogSoftmax", axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5]))
    p = tmp_path / "softmax.onnx"
    onnx.save(model, p)
    with pytest.raises(UnsupportedOpError, match="/head/LogSoftmax"):
        onnxptq.quantize(p, np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32), scale="po2",
                         format="int", progress=False, num_calib=8)


# ------------------------------------------------------------------ CLI: quantize --format int, run, verify, golden

def test_cli_int_run_verify_golden(tmp_path, digits_val, capsys):
    from onnxptq.cli import main

    out = tmp_path / "m.int.onnx"
    assert main(["quantize", str(digits_path("digits_resnet")), "--calib", str(MODELS / "digits_calib.npz"),
                 "--scale", "po2", "--format", "int", "--w-bits", "4", "--num-calib", "32", "-o", str(out),
                 "--no-progress"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("integer layers"))
    assert line.split(None, 2)[2] == "14/14 layers as QLinearConv, 0 with the shift recipe"
    x = tmp_path / "x.npy"
    np.save(x, digits_val["input"][:2])
    assert main(["run", str(out), "--input", str(x), "-o", str(tmp_path / "o.npz")]) == 0
    got = np.load(tmp_path / "o.npz")["logits"]
    assert np.array_equal(got, ort_run(out, {"input": digits_val["input"][:2]})[0])
    capsys.readouterr()
    assert main(["verify", str(out), "--data", str(MODELS / "digits_val.npz"), "--limit", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["level"] == 1 and rep["tensors_compared"] > 10
    gdir = tmp_path / "golden"
    assert main(["golden", str(out), "--input", str(x), "-o", str(gdir)]) == 0
    index = json.loads((gdir / "index.json").read_text())
    first = index["tensors"][0]
    assert first["name"] == "input.q" and first["dtype"] == "uint8" and "frac_bits" in first
    blob = (gdir / "golden.bin").read_bytes()
    for t in index["tensors"][:20]:
        arr = np.load(gdir / t["file"])
        assert blob[t["offset"]:t["offset"] + t["nbytes"]] == arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    assert main(["golden", str(out), "--input", str(x), "-o", str(gdir)]) == 2  # exists, no --force
    assert main(["quantize", str(digits_path("digits_resnet")), "--calib", str(MODELS / "digits_calib.npz"),
                 "--format", "int", "-o", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_one_activation_with_scalar_constants_is_a_lookup_table(tmp_path):
    """GELU written out (x * 0.5 * (1 + erf(x / sqrt 2))), x * c, x / c, x ** 2: each op with one activation
    and scalar constants lowers to a table; the integer model passes level-1 verify. A per-channel
    constant has no table: that Mul becomes an integer multiply (``affine``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def c(name, v):
        return numpy_helper.from_array(np.asarray(v, np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv"),
             helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div_const"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["e1"], name="add_const"),
             helper.make_node("Mul", ["h", "e1"], ["m"], name="mul_acts"),
             helper.make_node("Mul", ["m", "half"], ["g"], name="mul_const"),
             helper.make_node("Pow", ["g", "two"], ["p"], name="pow_const"),
             helper.make_node("GlobalAveragePool", ["p"], ["y"], name="gap")]
    inits = [c("w", rng.standard_normal((4, 3, 3, 3)) * 0.3), c("b", rng.standard_normal(4) * 0.1),
             c("sqrt2", 2 ** 0.5), c("one", 1.0), c("half", [0.5]), c("two", 2.0)]
    g = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "gelu.onnx"))
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    res = onnxptq.quantize(str(tmp_path / "gelu.onnx"), x, w_bits=8, a_bits=8, scale="po2", format="int")
    # the whole chain is a function of the conv output alone: no quant point inside, one table
    assert res.qgraph.chains["p"] == ("h", ("div_const", "erf", "add_const", "mul_acts", "mul_const", "pow_const"))
    assert [s.node for s in res.program.steps if s.kind == "lut"] == ["pow_const"]
    assert not {"d", "e", "e1", "m", "g"} & set(res.qgraph.quant_points)
    rep = verify_integer(res.model, {"x": x[:4]})
    assert rep.ok, rep.format()

    inits[4] = c("half", rng.standard_normal((1, 4, 1, 1)))  # a per-channel constant: no single table
    g = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "gelu2.onnx"))
    res = onnxptq.quantize(str(tmp_path / "gelu2.onnx"), x, w_bits=8, a_bits=8, scale="po2", format="int")
    assert next(s for s in res.program.steps if s.node == "mul_const").kind == "affine"  # no single table
    rep = verify_integer(res.model, {"x": x[:4]})
    assert rep.ok, rep.format()
