"""Hand-computed checks of the tricky ops, exactness of the integer kernels, and cross-checks of
runtime/ against onnxruntime and onnx.reference on small random graphs.

The facts these tests pin down (re-measured on onnx 1.23.2 / onnxruntime 1.32, x86-64):
* Round and QuantizeLinear round half to even; QuantizeLinear saturates (NaN -> type minimum).
* Integer Div truncates toward zero (spec; onnxruntime and onnx.reference agree).
* Mod fmod=0 takes the divisor's sign (Python %), fmod=1 the dividend's (C fmod).
* Cast float -> int truncates toward zero and, out of range, wraps via int32 (128.0 -> int8 -128).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from rt_helpers import make_model, run_ort, run_ref, run_rt, single, vi

import runtime
from runtime import kernels as K

RNG = np.random.default_rng(1234)
CPU_HAS_VNNI = "vnni" in open("/proc/cpuinfo").read()


def _y(model, feeds):
    return run_rt(model, feeds)["y0"]


# ------------------------------------------------------------------------------ rounding


def test_round_ties_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 2.5000002, 1e10 + 0.5], np.float32)
    y = _y(single("Round", {"x": x}, np.float32), {"x": x})
    np.testing.assert_array_equal(y, np.array([0, 2, 2, -0.0, -2, -2, 0, 3, 1e10 + 0.5], np.float32))
    assert np.signbit(y[3])  # -0.5 rounds to -0
    np.testing.assert_array_equal(y, run_ort(single("Round", {"x": x}, np.float32), {"x": x})["y0"])


def test_quantize_linear_ties_and_saturation():
    x = np.array(
        [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 128.0, -128.5, -129.0, 1e9, -1e9,
         np.inf, -np.inf, np.nan],
        np.float32,
    )
    m = single("QuantizeLinear", {"x": x}, np.int8, inits={"s": np.float32(1), "z": np.int8(0)})
    y = _y(m, {"x": x})
    exp = [0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128, 127, -128, 127, -128, -128]
    np.testing.assert_array_equal(y, np.array(exp, np.int8))
    np.testing.assert_array_equal(y, run_ort(m, {"x": x})["y0"])
    # uint8, zero point 128, scale 0.5: ties are resolved on x / scale, before adding the zp
    x2 = np.array([0.25, 0.75, -0.25, 63.75, 64.0, -64.25, -100.0], np.float32)
    m2 = single("QuantizeLinear", {"x": x2}, np.uint8, inits={"s": np.float32(0.5), "z": np.uint8(128)})
    y2 = _y(m2, {"x": x2})
    np.testing.assert_array_equal(y2, np.array([128, 130, 128, 255, 255, 0, 0], np.uint8))
    np.testing.assert_array_equal(y2, run_ort(m2, {"x": x2})["y0"])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16])
def test_quantize_per_axis_random_vs_ort_and_reference(dtype):
    """(QuantizeLinear has no int32 output type in any opset; int32 is a DequantizeLinear input.)"""
    x = (RNG.standard_normal((2, 5, 4, 3)) * 200).astype(np.float32)
    s = np.array([0.5, 0.25, 2.0, 1.0, 0.125], np.float32)
    info = np.iinfo(dtype)
    z = RNG.integers(max(info.min, -50), min(info.max, 50) + 1, 5).astype(dtype)
    m = single("QuantizeLinear", {"x": x}, dtype, inits={"s": s, "z": z}, axis=1)
    y = _y(m, {"x": x})
    np.testing.assert_array_equal(y, run_ort(m, {"x": x})["y0"])
    np.testing.assert_array_equal(y, run_ref(m, {"x": x})["y0"])


def test_dequantize_per_axis_and_int32_bias():
    x = RNG.integers(-128, 128, (3, 4, 2)).astype(np.int8)
    s = np.array([0.5, 0.25, 0.1, 3.0], np.float32)
    z = np.array([0, -3, 5, 127], np.int8)
    m = single("DequantizeLinear", {"x": x}, np.float32, inits={"s": s, "z": z}, axis=1)
    y = _y(m, {"x": x})
    exp = (x.astype(np.int32) - z.reshape(1, 4, 1)).astype(np.float32) * s.reshape(1, 4, 1)
    np.testing.assert_array_equal(y, exp)
    np.testing.assert_array_equal(y, run_ort(m, {"x": x})["y0"])
    b = np.array([2**30, -(2**31), 123456789, 7], np.int32)
    mb = single("DequantizeLinear", {"b": b}, np.float32, inits={"s": s}, axis=0)
    np.testing.assert_array_equal(_y(mb, {"b": b}), run_ort(mb, {"b": b})["y0"])


# ----------------------------------------------------------------------------- Div / Mod


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_integer_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 6, -6, 0, -128], np.int8)
    b = np.array([2, 2, -2, -2, 3, 3, 5, -1], np.int8)
    m = single("Div", {"a": a, "b": b}, np.int8, opset=14)
    y = _y(m, {"a": a, "b": b})
    np.testing.assert_array_equal(y, np.array([3, -3, -3, 3, 2, -2, 0, -128], np.int8))
    np.testing.assert_array_equal(y, run_ort(m, {"a": a, "b": b})["y0"])
    np.testing.assert_array_equal(y, run_ref(m, {"a": a, "b": b})["y0"])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32])
def test_integer_div_random_vs_ort(dtype):
    info = np.iinfo(dtype)
    lo = max(info.min, -(2**40))
    hi = min(info.max, 2**40)
    a = RNG.integers(lo, hi, 200, endpoint=True).astype(dtype)
    b = RNG.integers(lo, hi, 200, endpoint=True).astype(dtype)
    b[b == 0] = 3
    b[:20] = RNG.integers(1, 9, 20).astype(dtype)
    m = single("Div", {"a": a, "b": b}, dtype, opset=14)
    y = _y(m, {"a": a, "b": b})
    exp = np.array([abs(int(x)) // abs(int(y_)) * (1 if (x >= 0) == (y_ >= 0) else -1)
                    for x, y_ in zip(a.tolist(), b.tolist())]).astype(dtype)
    np.testing.assert_array_equal(y, exp)
    np.testing.assert_array_equal(y, run_ort(m, {"a": a, "b": b})["y0"])


def test_mod_sign_rules():
    a = np.array([7, -7, 7, -7, 0, 5, -6], np.int32)
    b = np.array([3, 3, -3, -3, 3, 5, 4], np.int32)
    m0 = single("Mod", {"a": a, "b": b}, np.int32, opset=13, fmod=0)
    m1 = single("Mod", {"a": a, "b": b}, np.int32, opset=13, fmod=1)
    y0, y1 = _y(m0, {"a": a, "b": b}), _y(m1, {"a": a, "b": b})
    np.testing.assert_array_equal(y0, [1, 2, -2, -1, 0, 0, 2])  # sign of divisor (Python %)
    np.testing.assert_array_equal(y1, [1, -1, 1, -1, 0, 0, -2])  # sign of dividend (C fmod)
    for m, y in ((m0, y0), (m1, y1)):
        np.testing.assert_array_equal(y, run_ort(m, {"a": a, "b": b})["y0"])
        np.testing.assert_array_equal(y, run_ref(m, {"a": a, "b": b})["y0"])
    af = np.array([5.5, -5.5, 5.5, -5.5], np.float32)
    bf = np.array([2.0, 2.0, -2.0, -2.0], np.float32)
    mf = single("Mod", {"a": af, "b": bf}, np.float32, opset=13, fmod=1)
    np.testing.assert_array_equal(_y(mf, {"a": af, "b": bf}), [1.5, -1.5, 1.5, -1.5])
    np.testing.assert_array_equal(_y(mf, {"a": af, "b": bf}), run_ort(mf, {"a": af, "b": bf})["y0"])


# ---------------------------------------------------------------------------------- Cast


def test_cast_float_to_int_hand_computed():
    x = np.array([2.7, -2.7, 128.0, 300.7, -1.7, 1e10, 0.5, -0.5], np.float32)
    i8 = _y(single("Cast", {"x": x}, np.int8, to=TensorProto.INT8), {"x": x})
    u8 = _y(single("Cast", {"x": x}, np.uint8, to=TensorProto.UINT8), {"x": x})
    np.testing.assert_array_equal(i8, [2, -2, -128, 44, -1, 0, 0, 0])
    np.testing.assert_array_equal(u8, [2, 254, 128, 44, 255, 0, 0, 0])


_CAST_VALUES = np.array(
    [0.0, -0.0, 0.5, -0.5, 0.9999, 1.5, -1.7, 2.5, 127.0, 127.9, 128.0, 200.0, 255.5, 256.0,
     300.7, -128.0, -128.9, -129.0, -200.0, 32767.5, 32768.0, 65535.9, 65536.0, 70000.0,
     -32769.0, 2.0**31 - 128, 2.0**31, 3e9, 5e9, -(2.0**31), -3e9, 1e10, -1e10, 1e19, 1.9e19,
     2.0**63, -(2.0**63), 2.0**64, -1e20, 1e30, np.inf, -np.inf, np.nan],
    np.float64,
)


@pytest.mark.parametrize("src", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    "dst",
    [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64],
)
def test_cast_float_to_int_matches_onnxruntime(src, dst):
    with np.errstate(over="ignore"):
        x = _CAST_VALUES.astype(src)
    to = helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    if dst == np.uint32:
        # onnxruntime's out-of-range uint32 answer depends on the element's position (vector loop
        # vs scalar tail); compare in range, and pin our (scalar-path) answer by hand.
        with np.errstate(over="ignore", invalid="ignore"):
            oor = np.array([5e9, -3e9, -1e10, -1e20, -np.inf, np.nan]).astype(src)
            keep = np.isfinite(x) & (x.astype(np.float64) > -(2.0**31)) & (x.astype(np.float64) < 2.0**32)
        x = x[keep]
        exp = {np.float16: [0, 0, 0, 0, 0, 0]}.get(src, [705032704, 1294967296, 2884901888, 0, 0, 0])
        if src == np.float16:
            oor = np.array([-np.inf, np.nan], src)
            exp = [0, 0]
        np.testing.assert_array_equal(_y(single("Cast", {"x": oor}, dst, to=to), {"x": oor}), exp)
    m = single("Cast", {"x": x}, dst, to=to)
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])
    # one element at a time (the all-in-range fast path must not misjudge the boundaries)
    info = np.iinfo(dst)
    edge = [info.max, info.max + 1, info.min, info.min - 1, 2.0**31, 2.0**63, -(2.0**63) - 4096]
    with np.errstate(over="ignore"):
        edge = [v for v in np.array(edge, np.float64).astype(src) if dst != np.uint32 or -(2.0**31) < v < 2.0**32]
    m1 = single("Cast", {"x": np.zeros(1, src)}, dst, to=to)
    sess = runtime.Session(m1)
    for v in edge:
        x1 = np.array([v], src)
        np.testing.assert_array_equal(sess.run({"x": x1})["y0"], run_ort(m1, {"x": x1})["y0"], err_msg=str(v))


def test_cast_int_wraparound_and_bool():
    x = np.array([200, 300, -129, 128, 255, -1, 0, 2**31 - 1], np.int64)
    m = single("Cast", {"x": x}, np.int8, to=TensorProto.INT8)
    np.testing.assert_array_equal(_y(m, {"x": x}), [-56, 44, 127, -128, -1, -1, 0, -1])
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])
    mu = single("Cast", {"x": x}, np.uint8, to=TensorProto.UINT8)
    np.testing.assert_array_equal(_y(mu, {"x": x}), run_ort(mu, {"x": x})["y0"])
    f = np.array([0.0, -0.0, 0.1, np.nan, -3.0], np.float32)
    mb = single("Cast", {"x": f}, np.bool_, to=TensorProto.BOOL)
    np.testing.assert_array_equal(_y(mb, {"x": f}), [False, False, True, True, True])


# ------------------------------------------------------------------------------ BitShift


def test_bitshift_unsigned_vs_ort():
    x = np.array([1, 2, 255, 128, 7, 200], np.uint8)
    s = np.array([1, 7, 1, 1, 0, 3], np.uint8)
    for d in ("LEFT", "RIGHT"):
        m = single("BitShift", {"x": x, "s": s}, np.uint8, opset=11, direction=d)
        np.testing.assert_array_equal(_y(m, {"x": x, "s": s}), run_ort(m, {"x": x, "s": s})["y0"])
    left = _y(single("BitShift", {"x": x, "s": s}, np.uint8, opset=11, direction="LEFT"), {"x": x, "s": s})
    np.testing.assert_array_equal(left, [2, 0, 254, 0, 7, 64])


def test_bitshift_signed_opset28():
    x = np.array([-8, -8, 64, 1, -1, 5, -5], np.int8)
    s = np.array([1, 9, 1, 8, -1, -2, 3], np.int8)
    r = _y(single("BitShift", {"x": x, "s": s}, np.int8, opset=28, direction="RIGHT"), {"x": x, "s": s})
    l_ = _y(single("BitShift", {"x": x, "s": s}, np.int8, opset=28, direction="LEFT"), {"x": x, "s": s})
    np.testing.assert_array_equal(r, [-4, -1, 32, 0, -1, 0, -1])
    np.testing.assert_array_equal(l_, [-16, 0, -128, 0, 0, 0, -40])


# --------------------------------------------------------------------------- ConvInteger


def conv_ref_int64(x, w, x_zp, w_zp, group, strides, pads, dilations):
    """Independent exact reference: sliding_window_view + int64 einsum per group."""
    nd = x.ndim - 2
    xi = x.astype(np.int64) - (0 if x_zp is None else int(x_zp))
    wi = w.astype(np.int64)
    if w_zp is not None:
        wi = wi - np.asarray(w_zp, np.int64).reshape((-1,) + (1,) * (nd + 1))
    xp = np.pad(xi, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    ks = w.shape[2:]
    eff = [(k - 1) * d + 1 for k, d in zip(ks, dilations)]
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + nd)))
    win = win[(Ellipsis,) + tuple(slice(None, None, d) for d in dilations)]
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
    cg, mg = w.shape[1], w.shape[0] // group
    letters = "defghi"[:nd]
    kl = "uvwxyz"[:nd]
    spec = f"nc{letters}{kl},mc{kl}->nm{letters}"
    outs = [
        np.einsum(spec, win[:, g * cg : (g + 1) * cg], wi[g * mg : (g + 1) * mg])
        for g in range(group)
    ]
    return np.concatenate(outs, axis=1)


def explicit_pads(in_sp, ks, strides, dil, auto_pad):
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        tot = [max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n) for n, k, s, d in zip(in_sp, ks, strides, dil)]
        b = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in tot]
        return b + [t - bb for t, bb in zip(tot, b)]
    return [0] * (2 * len(in_sp))


CONV_CASES = [
    # name, x shape, w shape, group, strides, pads|auto_pad, dilations, x dtype, w dtype, zp mode
    ("plain_s8s8", (2, 4, 9, 9), (6, 4, 3, 3), 1, [1, 1], [1, 1, 1, 1], [1, 1], np.int8, np.int8, None),
    ("group2_stride2_asympad_u8s8", (1, 4, 10, 11), (6, 2, 3, 3), 2, [2, 2], [0, 1, 2, 1], [1, 1], np.uint8, np.int8, "x"),
    ("depthwise_dil2", (2, 8, 12, 12), (8, 1, 3, 3), 8, [2, 2], [1, 1, 1, 1], [2, 2], np.int8, np.int8, None),
    ("depthwise_mult2_zp", (1, 4, 7, 9), (8, 1, 3, 3), 4, [1, 1], [1, 1, 1, 1], [1, 1], np.uint8, np.uint8, "xw"),
    ("perchannel_wzp", (1, 3, 8, 8), (5, 3, 3, 3), 1, [1, 1], [1, 1, 1, 1], [1, 1], np.uint8, np.uint8, "xwc"),
    ("single_in_channel", (2, 1, 9, 9), (4, 1, 5, 5), 1, [2, 1], [2, 2, 2, 2], [1, 1], np.int8, np.int8, None),
    ("pointwise", (2, 16, 7, 7), (24, 16, 1, 1), 1, [1, 1], [0, 0, 0, 0], [1, 1], np.int8, np.int8, None),
    ("pointwise_stride2", (1, 16, 7, 7), (8, 16, 1, 1), 1, [2, 2], [0, 0, 0, 0], [1, 1], np.int8, np.int8, None),
    ("conv1d", (2, 3, 17), (5, 3, 4), 1, [3], [2, 1], [2], np.int8, np.int8, "x"),
    ("conv3d", (1, 2, 5, 6, 7), (3, 2, 2, 3, 2), 1, [1, 2, 1], [1, 0, 1, 0, 1, 1], [1, 1, 2], np.int8, np.int8, None),
    ("same_upper_s2", (1, 4, 10, 9), (4, 4, 3, 3), 1, [2, 2], "SAME_UPPER", [1, 1], np.int8, np.int8, None),
    ("same_lower_s2", (1, 4, 10, 9), (4, 4, 4, 4), 1, [2, 2], "SAME_LOWER", [1, 1], np.int8, np.int8, None),
    ("valid", (1, 4, 10, 9), (4, 2, 3, 2), 2, [1, 2], "VALID", [2, 1], np.int8, np.int8, None),
    ("float64_path_K1152", (1, 128, 5, 5), (8, 128, 3, 3), 1, [1, 1], [1, 1, 1, 1], [1, 1], np.int8, np.int8, None),
    ("u8u8_zp_group4", (2, 8, 6, 6), (8, 2, 3, 3), 4, [1, 1], [1, 0, 0, 1], [1, 1], np.uint8, np.uint8, "xw"),
]


def _rand(dtype, shape):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_integer_exact(case):
    name, xs, ws, group, strides, pads, dil, xdt, wdt, zp = case
    x = _rand(xdt, xs)
    w = _rand(wdt, ws)
    x_zp = np.array(RNG.integers(0, 200) if xdt == np.uint8 else -7, xdt) if "x" in (zp or "") else None
    if zp and "wc" in zp:
        w_zp = RNG.integers(0, 255, ws[0]).astype(wdt)
    elif zp and "w" in zp:
        w_zp = np.array(100 if wdt == np.uint8 else 3, wdt)
    else:
        w_zp = None
    attrs = dict(group=group, strides=strides, dilations=dil)
    if isinstance(pads, str):
        attrs["auto_pad"] = pads
        epads = explicit_pads(xs[2:], ws[2:], strides, dil, pads)
    else:
        attrs["pads"] = pads
        epads = pads
    inits = {"w": w}
    names = ["x", "w"]
    if x_zp is not None or w_zp is not None:
        inits["xz"] = x_zp if x_zp is not None else np.array(0, xdt)
        names.append("xz")
    if w_zp is not None:
        inits["wz"] = w_zp
        names.append("wz")
    node = helper.make_node("ConvInteger", names, ["y"], **attrs)
    m = make_model([node], [vi("x", xdt, list(xs))], [vi("y", np.int32)], inits, opset=10)
    y = run_rt(m, {"x": x})["y"]
    exp = conv_ref_int64(x, w, x_zp, w_zp, group, strides, epads, dil)
    assert y.dtype == np.int32 and y.shape == exp.shape
    np.testing.assert_array_equal(y, exp)
    # onnxruntime is exact for s8 x s8 and u8 x u8 with a per-tensor weight zero point
    if xdt == wdt and (w_zp is None or w_zp.ndim == 0) and len(xs) == 4:
        np.testing.assert_array_equal(y, run_ort(m, {"x": x})["y"])


def test_conv_integer_fed_weights_not_cached():
    """Weights fed as graph inputs are re-read every run (no stale per-session cache)."""
    x = _rand(np.int8, (1, 4, 6, 6))
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    m = make_model([node], [vi("x", np.int8, [1, 4, 6, 6]), vi("w", np.int8, [4, 4, 3, 3])], [vi("y", np.int32)])
    s = runtime.Session(m)
    w = _rand(np.int8, (4, 4, 3, 3))
    y1 = s.run({"x": x, "w": w})["y"]
    np.testing.assert_array_equal(y1, conv_ref_int64(x, w, None, None, 1, [1, 1], [1] * 4, [1, 1]))
    w[:] = _rand(np.int8, (4, 4, 3, 3))
    y2 = s.run({"x": x, "w": w})["y"]
    np.testing.assert_array_equal(y2, conv_ref_int64(x, w, None, None, 1, [1, 1], [1] * 4, [1, 1]))


def test_qlinear_conv_vs_ort():
    for xdt in (np.uint8, np.int8):
        x = _rand(xdt, (1, 6, 9, 9))
        w = _rand(xdt, (8, 3, 3, 3))
        inits = {
            "xs": np.float32(0.02), "xz": np.array(128 if xdt == np.uint8 else -3, xdt),
            "w": w, "ws": (RNG.random(8) * 0.01 + 0.001).astype(np.float32),
            "wz": np.array(128 if xdt == np.uint8 else 0, xdt),
            "ys": np.float32(0.37), "yz": np.array(120 if xdt == np.uint8 else 5, xdt),
            "b": RNG.integers(-5000, 5000, 8).astype(np.int32),
        }
        node = helper.make_node(
            "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
            group=2, pads=[1, 1, 1, 1], strides=[2, 1],
        )
        m = make_model([node], [vi("x", xdt, [1, 6, 9, 9])], [vi("y", xdt)], inits, opset=10)
        y = run_rt(m, {"x": x})["y"]
        np.testing.assert_array_equal(y, run_ort(m, {"x": x})["y"])


@pytest.mark.parametrize("wdt", [np.uint8, np.int8])
def test_qlinear_conv_po2_per_channel_vs_ort_large_accumulators(wdt):
    """Po2 scales (multiplier 2^-n[c], n <= 0 included) as onnxptq's compact integer form writes them:
    u8 activations, u8 weights with zero point 128 or s8 weights, accumulators up to ~2^24 and past it
    (where float32 rounds the accumulator: runtime/ must round it the same way as onnxruntime)."""
    x = _rand(np.uint8, (2, 64, 6, 6))
    x[0] = 255
    w = _rand(wdt, (8, 64, 3, 3))
    if wdt == np.int8 and not CPU_HAS_VNNI:
        # onnxruntime's u8 x s8 kernel on AVX2 without VNNI (vpmaddubsw) saturates pairs of products at int16,
        # as its docs warn: 7-bit weights (|w| <= 64) keep every pair within it; onnxptq's portable
        # integer form never writes u8 x s8 (tests/test_integer.py KERNELS_EXACT_HERE)
        w = (w.astype(np.int16) // 2).astype(np.int8)
    n = np.array([-3, 0, 1, 5, 9, 14, 17, 20])
    inits = {
        "xs": np.float32(2.0**-4), "xz": np.array(17, np.uint8), "w": w,
        "ws": np.exp2(-(n - 4 + 3)).astype(np.float32),
        "wz": np.array(128 if wdt == np.uint8 else 0, wdt),
        "ys": np.float32(2.0**-3), "yz": np.array(9, np.uint8),
        "b": np.array([0, 1, -7, 2**24 + 3, 33685505, -(2**23), 5, 2**30], np.int32),
    }
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1] * 4)
    m = make_model([node], [vi("x", np.uint8, [2, 64, 6, 6])], [vi("y", np.uint8)], inits, opset=21)
    np.testing.assert_array_equal(run_rt(m, {"x": x})["y"], run_ort(m, {"x": x})["y"])


def test_qlinear_matmul_po2_per_column_vs_ort():
    a = _rand(np.uint8, (4, 300))
    b = _rand(np.uint8, (300, 6))
    n = np.array([-1, 0, 3, 8, 15, 19])
    inits = {"as": np.float32(1), "az": np.array(100, np.uint8), "b": b, "bs": np.exp2(-n).astype(np.float32),
             "bz": np.full(6, 128, np.uint8), "ys": np.float32(1), "yz": np.array(128, np.uint8)}
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    m = make_model([node], [vi("a", np.uint8, [4, 300])], [vi("y", np.uint8)], inits, opset=21)
    np.testing.assert_array_equal(run_rt(m, {"a": a})["y"], run_ort(m, {"a": a})["y"])


# ------------------------------------------------------------------------ integer matmul


@pytest.mark.parametrize("dt", [np.int8, np.uint8])
def test_matmul_integer_vs_ort_and_int64(dt):
    a = _rand(dt, (2, 3, 7, 40))
    b = _rand(dt, (40, 9))
    az = np.array(5 if dt == np.uint8 else -2, dt)
    bz = np.array(200 if dt == np.uint8 else 1, dt)
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    m = make_model([node], [vi("a", dt, list(a.shape))], [vi("y", np.int32)], {"b": b, "az": az, "bz": bz}, opset=10)
    y = run_rt(m, {"a": a})["y"]
    exp = (a.astype(np.int64) - int(az)) @ (b.astype(np.int64) - int(bz))
    np.testing.assert_array_equal(y, exp)
    np.testing.assert_array_equal(y, run_ort(m, {"a": a})["y"])


def test_matmul_integer_per_row_and_column_zero_points():
    a = _rand(np.uint8, (5, 12))
    b = _rand(np.int8, (12, 4))
    az = RNG.integers(0, 255, 5).astype(np.uint8)
    bz = RNG.integers(-128, 127, 4).astype(np.int8)
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    m = make_model([node], [vi("a", np.uint8, [5, 12])], [vi("y", np.int32)], {"b": b, "az": az, "bz": bz}, opset=10)
    exp = (a.astype(np.int64) - az.astype(np.int64)[:, None]) @ (b.astype(np.int64) - bz.astype(np.int64)[None, :])
    np.testing.assert_array_equal(run_rt(m, {"a": a})["y"], exp)


def test_qlinear_matmul_vs_ort():
    for dt in (np.uint8, np.int8):
        a = _rand(dt, (3, 16, 32))
        b = _rand(dt, (32, 10))
        inits = {"as": np.float32(0.05), "az": np.array(3, dt), "b": b, "bs": np.float32(0.01),
                 "bz": np.array(0, dt), "ys": np.float32(0.9), "yz": np.array(7, dt)}
        node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
        m = make_model([node], [vi("a", dt, list(a.shape))], [vi("y", dt)], inits, opset=21)
        np.testing.assert_array_equal(run_rt(m, {"a": a})["y"], run_ort(m, {"a": a})["y"])


def _exact_mod32(a, b):
    prod = np.array(a.astype(object)) @ np.array(b.astype(object))
    return np.array([((int(v) + 2**31) % 2**32) - 2**31 for v in prod.ravel()], np.int64).reshape(prod.shape)


def test_gemm_bound_selects_exact_dtype():
    i8 = np.zeros(1, np.int8)
    assert K.acc_dtype(1024, 128, 127) == np.float32  # int8 x int8, K <= 1024 -> float32
    assert K.acc_dtype(4608, 128, 128) == np.float64  # 2^26.2 -> float64
    assert K.acc_dtype(64, 2**30, 2**30) == np.int64  # beyond 2^53 -> exact int64
    assert K.dtype_bound(np.uint8, np.array(128, np.uint8)) == 128
    assert K.dtype_bound(i8.dtype, np.array(-128, np.int8)) == 255


@pytest.mark.parametrize("mag,expect", [(2**30, np.int64), (2**19, np.float64), (2**5, np.float32)])
def test_int32_matmul_fallback_paths_exact(mag, expect):
    """int32 MatMul: values chosen so K*max|a|*max|b| exceeds 2^53 (int64 path), sits between
    2^24 and 2^53 (float64) or below 2^24 (float32); all must equal exact arithmetic mod 2^32."""
    a = RNG.integers(-mag, mag, (6, 64)).astype(np.int32)
    b = RNG.integers(-mag, mag, (64, 5)).astype(np.int32)
    a[0, 0], b[0, 0] = mag, mag  # pin the data bound
    dt, _ = K.plan_dtype(64, a, None, b, None)
    assert dt == expect
    m = single("MatMul", {"a": a, "b": b}, np.int32)
    y = _y(m, {"a": a, "b": b})
    np.testing.assert_array_equal(y.astype(np.int64), _exact_mod32(a, b))
    if expect != np.int64:  # no overflow: onnxruntime must agree too
        np.testing.assert_array_equal(y, run_ort(m, {"a": a, "b": b})["y0"])


# --------------------------------------------------------------------- pools, shape ops


POOL_CASES = [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[2, 1], dilations=[2, 2], pads=[0, 1, 1, 0]),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 2], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1),
]


@pytest.mark.parametrize("attrs", POOL_CASES)
@pytest.mark.parametrize("dt", [np.int8, np.uint8, np.float32])
def test_maxpool_vs_ort(attrs, dt):
    x = _rand(dt, (2, 3, 10, 11)) if dt != np.float32 else RNG.standard_normal((2, 3, 10, 11)).astype(dt)
    m = single("MaxPool", {"x": x}, dt, opset=12, **attrs)
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])


def test_maxpool_indices_vs_ort():
    x = RNG.standard_normal((2, 3, 9, 8)).astype(np.float32)
    for so in (0, 1):
        m = single("MaxPool", {"x": x}, [np.float32, np.int64], opset=12, n_out=2,
                   kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], storage_order=so)
        got, ref = run_rt(m, {"x": x}), run_ort(m, {"x": x})
        np.testing.assert_array_equal(got["y0"], ref["y0"])
        np.testing.assert_array_equal(got["y1"], ref["y1"])


@pytest.mark.parametrize("attrs", POOL_CASES[:2] + POOL_CASES[3:] + [dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)])
def test_averagepool_vs_ort(attrs):
    x = RNG.standard_normal((2, 3, 10, 11)).astype(np.float32)
    m = single("AveragePool", {"x": x}, np.float32, opset=19, **attrs)
    np.testing.assert_allclose(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"], rtol=1e-6, atol=1e-6)


RESIZE_CASES = [
    dict(scales=[1, 1, 2, 2]),
    dict(scales=[1, 1, 0.5, 0.75], coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(sizes=[2, 3, 7, 5], coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil"),
    dict(scales=[1, 1, 1.7, 2.5], coordinate_transformation_mode="pytorch_half_pixel"),
    dict(sizes=[2, 3, 13, 4], coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="ceil"),
]


@pytest.mark.parametrize("case", RESIZE_CASES)
def test_resize_nearest_int8_vs_ort(case):
    x = _rand(np.int8, (2, 3, 6, 8))
    case = dict(case)
    inits = {"roi": np.zeros(0, np.float32)}
    if "scales" in case:
        inits["scales"] = np.array(case.pop("scales"), np.float32)
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.array(case.pop("sizes"), np.int64)
    m = single("Resize", {"x": x}, np.int8, inits=inits, opset=19, mode="nearest", **case)
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])


@pytest.mark.parametrize("mode,pads", [("constant", [0, 0, 1, 2, 0, 1, 2, 0]), ("reflect", [0, 0, 2, 1, 0, 0, 1, 2]),
                                       ("edge", [0, 1, 3, 0, 0, 0, 0, 2]), ("constant", [0, 0, -1, 2, 0, 0, 1, -2])])
def test_pad_int8_vs_ort(mode, pads):
    x = _rand(np.int8, (2, 3, 5, 6))
    inits = {"pads": np.array(pads, np.int64), "v": np.array(-7, np.int8)}
    m = single("Pad", {"x": x}, np.int8, inits=inits if mode == "constant" else {"pads": inits["pads"]}, opset=19, mode=mode)
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])


@pytest.mark.parametrize("dt", [np.int8, np.int32, np.uint8, np.int64])
def test_reduce_sum_gather_clip_int_vs_ort(dt):
    """ReduceSum allows int32/int64 only (spec); Gather and Clip every integer type.

    (Sums stay inside the type: onnxruntime saturates an overflowing int32 ReduceSum while
    runtime/ wraps; overflow is undefined in ONNX and the exporter proves it cannot happen.)
    """
    x = _rand(dt, (2, 5, 4, 3)) // 4 if np.iinfo(dt).bits == 8 else RNG.integers(-(2**20), 2**20, (2, 5, 4, 3)).astype(dt)
    for keep in ((0, 1) if dt in (np.int32, np.int64) else ()):
        m = single("ReduceSum", {"x": x}, dt, inits={"axes": np.array([1, -1], np.int64)}, opset=13, keepdims=keep)
        np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])
    idx = np.array([[0, -1], [4, 2]], np.int64)
    m = single("Gather", {"x": x}, dt, inits={"i": idx}, opset=13, axis=1)
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])
    lo, hi = np.array(3, dt), np.array(20, dt)
    m = single("Clip", {"x": x}, dt, inits={"lo": lo, "hi": hi}, opset=13)
    np.testing.assert_array_equal(_y(m, {"x": x}), np.clip(x, lo, hi))
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])


# ------------------------------------------------------ an integer network, three engines


def _rne_shift_nodes(a: str, n: int, out: str, tag: str):
    """DESIGN section 4's exact int32 RNE(a / 2^n) from Mod/Div (every intermediate named)."""
    D = 2**n
    c = lambda v: helper.make_tensor(f"{tag}_c{v}", TensorProto.INT32, [], [v])  # noqa: E731
    consts = [c(D), c(2), c(D // 2 - 1)]
    nodes = [
        helper.make_node("Mod", [a, f"{tag}_c{D}"], [f"{tag}_m"], fmod=0),
        helper.make_node("Sub", [a, f"{tag}_m"], [f"{tag}_am"]),
        helper.make_node("Div", [f"{tag}_am", f"{tag}_c{D}"], [f"{tag}_f"]),
        helper.make_node("Mod", [f"{tag}_f", f"{tag}_c2"], [f"{tag}_odd"], fmod=0),
        helper.make_node("Add", [a, f"{tag}_c{D // 2 - 1}"], [f"{tag}_t0"]),
        helper.make_node("Add", [f"{tag}_t0", f"{tag}_odd"], [f"{tag}_t"]),
        helper.make_node("Mod", [f"{tag}_t", f"{tag}_c{D}"], [f"{tag}_tm"], fmod=0),
        helper.make_node("Sub", [f"{tag}_t", f"{tag}_tm"], [f"{tag}_tt"]),
        helper.make_node("Div", [f"{tag}_tt", f"{tag}_c{D}"], [out]),
    ]
    return nodes, consts


def integer_network() -> tuple:
    w1 = _rand(np.int8, (16, 8, 3, 3))
    w2 = _rand(np.int8, (16, 1, 3, 3))
    w3 = _rand(np.int8, (144, 10))
    b1 = RNG.integers(-3000, 3000, (16, 1, 1)).astype(np.int32)
    b3 = RNG.integers(-3000, 3000, (10,)).astype(np.int32)
    lut = RNG.integers(-128, 128, 256).astype(np.int8)
    inits = {
        "w1": w1, "w2": w2, "w3": w3, "b1": b1, "b3": b3, "lut": lut,
        "s_in": np.float32(16.0), "lo": np.float32(-128), "hi": np.float32(127),
        "z": np.int32(0), "i127": np.int32(127), "im128": np.int32(-128),
        "s_dw": np.float64(2.0**-6), "i128": np.int64(128), "nine": np.int32(9),
        "axes": np.array([2, 3], np.int64), "s_out": np.float32(2.0**-4), "shape": np.array([1, -1], np.int64),
    }
    rne, rne_consts = _rne_shift_nodes("acc1b", 7, "r1", "rq")
    nodes = [
        helper.make_node("Mul", ["x", "s_in"], ["xs"]),
        helper.make_node("Round", ["xs"], ["xr"]),
        helper.make_node("Clip", ["xr", "lo", "hi"], ["xc"]),
        helper.make_node("Cast", ["xc"], ["xq"], to=TensorProto.INT8),
        helper.make_node("ConvInteger", ["xq", "w1"], ["acc1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["acc1", "b1"], ["acc1b"]),
        *rne,
        helper.make_node("Clip", ["r1", "z", "i127"], ["r1c"]),
        helper.make_node("Cast", ["r1c"], ["h1"], to=TensorProto.INT8),
        helper.make_node("MaxPool", ["h1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ConvInteger", ["p1", "w2"], ["acc2"], group=16, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Cast", ["acc2"], ["acc2d"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["acc2d", "s_dw"], ["acc2s"]),
        helper.make_node("Round", ["acc2s"], ["acc2r"]),
        helper.make_node("Cast", ["acc2r"], ["acc2i"], to=TensorProto.INT32),
        helper.make_node("Clip", ["acc2i", "im128", "i127"], ["acc2c"]),
        helper.make_node("Cast", ["acc2c"], ["h2"], to=TensorProto.INT8),
        helper.make_node("Reshape", ["h2", "shape"], ["h2f"]),
        helper.make_node("MatMulInteger", ["h2f", "w3"], ["acc3"]),
        helper.make_node("Add", ["acc3", "b3"], ["logits"]),
        helper.make_node("Cast", ["h2"], ["h2i"], to=TensorProto.INT32),
        helper.make_node("ReduceSum", ["h2i", "axes"], ["s2"], keepdims=1),
        helper.make_node("Div", ["s2", "nine"], ["m2"]),
        helper.make_node("Clip", ["m2", "im128", "i127"], ["m2c"]),
        helper.make_node("Cast", ["m2c"], ["m2l"], to=TensorProto.INT64),
        helper.make_node("Add", ["m2l", "i128"], ["m2k"]),
        helper.make_node("Gather", ["lut", "m2k"], ["g2"], axis=0),
        helper.make_node("Cast", ["g2"], ["g2f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["g2f", "s_out"], ["out"]),
    ]
    m = make_model(nodes, [vi("x", np.float32, [1, 8, 12, 12])], [vi("out", np.float32), vi("logits", np.int32)], inits, opset=21)
    m.graph.initializer.extend(rne_consts)
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_network_runtime_eq_ort_eq_reference(seed):
    m = integer_network()
    x = (np.random.default_rng(seed).standard_normal((1, 8, 12, 12)) * 3).astype(np.float32)
    got = run_rt(m, {"x": x}, keep=True)
    names = [n for n in got if n != "x"]
    ort_out = run_ort(m, {"x": x}, extra={n: got[n].dtype for n in names})
    ref_out = run_ref(m, {"x": x}, names)
    for n in names:
        assert got[n].dtype == ort_out[n].dtype == ref_out[n].dtype, n
        np.testing.assert_array_equal(got[n], ort_out[n], err_msg=f"{n} vs onnxruntime")
        np.testing.assert_array_equal(got[n], ref_out[n], err_msg=f"{n} vs onnx.reference")
    # the requantizer really is RNE(acc / 128)
    acc = got["acc1b"].astype(np.int64)
    np.testing.assert_array_equal(got["r1"], np.rint(acc / 128.0).astype(np.int64))


# -------------------------------------------------------------------------- float ops


def test_float_conv_gemm_softmax_vs_ort():
    x = RNG.standard_normal((2, 6, 9, 9)).astype(np.float32)
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], group=2, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("HardSwish", ["c"], ["hs"]),
        helper.make_node("GlobalAveragePool", ["hs"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Sigmoid", ["g"], ["sg"]),
        helper.make_node("HardSigmoid", ["g"], ["hsg"]),
        helper.make_node("Add", ["sg", "hsg"], ["a"]),
        helper.make_node("Softmax", ["a"], ["y"], axis=-1),
    ]
    inits = {"w": w, "b": b, "gw": RNG.standard_normal((5, 8)).astype(np.float32), "gb": RNG.standard_normal(5).astype(np.float32)}
    m = make_model(nodes, [vi("x", np.float32, [2, 6, 9, 9])], [vi("y", np.float32)], inits, opset=21)
    got = run_rt(m, {"x": x}, keep=True)
    ref = run_ort(m, {"x": x}, extra={n: np.float32 for n in got if n != "x"})
    for n in got:
        if n != "x":
            np.testing.assert_allclose(got[n], ref[n], rtol=1e-5, atol=1e-5, err_msg=n)


@pytest.mark.parametrize("dt", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32])
@pytest.mark.parametrize("const_pow2", [False, True])
def test_div_mod_all_paths_exact(dt, const_pow2):
    """Div / Mod(fmod 0 and 1) against exact Python integers, through every kernel path:
    power-of-two constant divisors (shift/mask), float32/float64 quotients, int64 fallback."""
    info = np.iinfo(dt)
    a = RNG.integers(info.min, info.max, (3, 4, 50), endpoint=True).astype(dt)
    a.flat[:4] = [info.min, info.max, 0, info.min + 1]
    if const_pow2:
        top = min(info.bits - 2, 20)
        b = (2 ** RNG.integers(0, top + 1, (1, 4, 1))).astype(dt)
    else:
        b = RNG.integers(info.min, info.max, (3, 4, 50), endpoint=True).astype(dt)
        b.flat[:8] = [1, -1 if info.min else 1, 2, 3, 7, 1, 1, 1]
        b[b == 0] = 5
    feeds = {"a": a} if const_pow2 else {"a": a, "b": b}
    inits = {"b": b} if const_pow2 else None
    A = a.astype(object)
    B = np.broadcast_to(b, a.shape).astype(object)
    wrap = lambda v: ((int(v) - info.min) % (info.max - info.min + 1)) + info.min  # noqa: E731
    def tdiv(x, y):
        q = abs(x) // abs(y)
        return q if (x >= 0) == (y >= 0) else -q
    exp_div = np.array([wrap(tdiv(x, y)) for x, y in zip(A.ravel(), B.ravel())]).reshape(a.shape)
    exp_mod0 = np.array([x % y for x, y in zip(A.ravel(), B.ravel())]).reshape(a.shape)
    exp_mod1 = np.array([x - tdiv(x, y) * y for x, y in zip(A.ravel(), B.ravel())]).reshape(a.shape)
    got_div = _y(single("Div", feeds, dt, inits=inits, opset=14), feeds)
    got_mod0 = _y(single("Mod", feeds, dt, inits=inits, opset=13, fmod=0), feeds)
    got_mod1 = _y(single("Mod", feeds, dt, inits=inits, opset=13, fmod=1), feeds)
    np.testing.assert_array_equal(got_div.astype(object), exp_div)
    np.testing.assert_array_equal(got_mod0.astype(object), exp_mod0)
    np.testing.assert_array_equal(got_mod1.astype(object), exp_mod1)
    assert got_div.dtype == got_mod0.dtype == got_mod1.dtype == dt


@pytest.mark.parametrize("scales", [[1, 1, 2, 3], [1, 1, 0.5, 0.6], [1, 1, 1.5, 2.5], [1, 1, 0.7, 1.3]])
def test_resize10_nearest_vs_ort(scales):
    """Resize-10 (X, scales): onnxruntime's asymmetric / truncate-up, ceil-down convention."""
    x = _rand(np.int8, (1, 2, 5, 7)).astype(np.float32)
    m = single("Resize", {"x": x}, np.float32, inits={"s": np.array(scales, np.float32)}, opset=10, mode="nearest")
    np.testing.assert_array_equal(_y(m, {"x": x}), run_ort(m, {"x": x})["y0"])


def test_division_by_zero_is_zero():
    a = np.array([5, -5, 0, 7], np.int32)
    b = np.array([0, 0, 0, 2], np.int32)
    np.testing.assert_array_equal(_y(single("Div", {"a": a, "b": b}, np.int32, opset=14), {"a": a, "b": b}), [0, 0, 0, 3])
    for fm in (0, 1):
        m = single("Mod", {"a": a, "b": b}, np.int32, opset=13, fmod=fm)
        np.testing.assert_array_equal(_y(m, {"a": a, "b": b}), [0, 0, 0, 1])
