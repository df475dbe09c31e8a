"""Integer LayerNormalization (``intplan.layernorm_params``, ``integer.s_layernorm``, ``int_sim._layernorm``):
its integer helpers against exact Python arithmetic, and a MatMul -> LayerNormalization -> MatMul model
at level-1 parity and at the QDQ model's accuracy."""

import math
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxptq
from onnxptq.errors import UnsupportedOpError
from onnxptq.eval import sqnr_db
from onnxptq.export.intplan import IntProgram, Step, layernorm_params
from onnxptq.quant.requant import floor_sqrt, rne_div
from onnxptq.verify.int_sim import IntSim
from onnxptq.verify.integer import verify_integer


# ------------------------------------------------------------------------------------ integer helpers

def test_floor_sqrt_is_exact_below_2_52():
    k = np.array([1, 2, 3, 1000, 2**13, 2**20 + 7, 2**25, 2**26 - 3, 2**26 - 1], dtype=np.int64)
    hand = np.concatenate([np.arange(0, 200), k * k - 1, k * k, k * k + 1, [2**52 - 1]]).astype(np.int64)
    hand = hand[hand < 2**52]
    rng = np.random.default_rng(0)
    rand = np.concatenate([rng.integers(0, 2**52, 20000), rng.integers(0, 2**30, 20000)]).astype(np.int64)
    for m in (hand, rand):
        want = np.array([math.isqrt(int(v)) for v in m], dtype=np.int64)
        np.testing.assert_array_equal(floor_sqrt(m), want)
        np.testing.assert_array_equal(floor_sqrt(torch.from_numpy(m)).numpy(), want)
    assert int(floor_sqrt(np.int64(2**52 - 1))) == 2**26 - 1


def _round_exact(a: int, d: int, mode: str) -> int:
    """round(a / d) in exact rational arithmetic (Python's round on a Fraction rounds ties to even)."""
    x = Fraction(a, d)
    return round(x) if mode == "rne" else math.floor(x + Fraction(1, 2))


@pytest.mark.parametrize("mode", ["rne", "half_up"])
def test_division_by_a_tensor_rounds_exactly(mode):
    """rne_div with a per-element divisor (the LayerNormalization's t = RNE(u 2^(k+s) / r)), ties included."""
    rng = np.random.default_rng(1)
    d = rng.integers(1, 2**26, 4000)
    a = rng.integers(-2**40, 2**40, 4000)
    ties_d = 2 * rng.integers(1, 2**20, 2000)  # even divisors: a = q d + d / 2 is a tie, q odd and even
    ties_a = rng.integers(-2**20, 2**20, 2000) * ties_d + ties_d // 2
    hand_d = np.array([1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 7, 10])
    hand_a = np.array([0, -5, 1, 3, -1, -3, 4, -4, 6, -10, -7, 25])  # 0.5 -> 0, 1.5 -> 2, -0.5 -> 0, ...
    for a_, d_ in ((a, d), (ties_a, ties_d), (hand_a, hand_d)):
        a_, d_ = a_.astype(np.int64), d_.astype(np.int64)
        want = np.array([_round_exact(int(x), int(y), mode) for x, y in zip(a_, d_)], dtype=np.int64)
        np.testing.assert_array_equal(rne_div(a_, d_, mode), want)
        np.testing.assert_array_equal(rne_div(torch.from_numpy(a_), torch.from_numpy(d_), mode).numpy(), want)
    if mode == "rne":
        np.testing.assert_array_equal(rne_div(hand_a[:6], hand_d[:6]), [0, -5, 0, 2, 0, -2])


def _ln_exact(v: list[int], p: dict, gamma: np.ndarray, beta: np.ndarray, y_zp: int, lo: int, hi: int) -> list[int]:
    """The recipe of ``layernorm_params`` on one row, in Python integers and fractions."""
    n = p["count"]
    total = sum(v)
    u = [n * x - total for x in v]
    if p["form"] == "moments":  # P = N sum v^2 - (sum v)^2 = Q / N, no division
        m = (n * sum(x * x for x in v) - total * total) * 2 ** p["sq_shift"] + p["eps_term"]
    else:
        m = (sum(x * x for x in u) * 2 ** p["sq_shift"] + p["eps_term"]) // n
    r = max(1, math.isqrt(m))
    out = []
    for x, g, b in zip(u, gamma.tolist(), beta.tolist()):
        t = min(max(round(Fraction(x * 2 ** p["num_shift"], r)), -p["t_max"]), p["t_max"])
        out.append(min(max(round(Fraction(t * g + b, 2 ** p["shift"])) + y_zp, lo), hi))
    return out


@pytest.mark.parametrize("count, x_frac, y_frac, eps", [(48, 3, 5, 1e-5), (7, 0, 4, 1e-2), (768, 5, 5, 1e-6),
                                                        (1, 2, 4, 1e-5), (4096, 4, 6, 1e-5),
                                                        (2**17, 4, 5, 1e-5)])  # the moments form
def test_layernorm_integers_match_exact_arithmetic_and_the_float_op(count, x_frac, y_frac, eps):
    """The executor equals the recipe in exact arithmetic, and is within 1 LSB of the float op on the grid."""
    rng = np.random.default_rng(count)
    gamma = 1 + 0.5 * rng.standard_normal(count)
    beta = 0.3 * rng.standard_normal(count)
    p = layernorm_params(count, 255, x_frac, y_frac, eps, gamma, beta)
    assert p["sq_shift"] >= 0 and p["shift"] >= 1
    rows = [rng.integers(-128, 128, count), rng.integers(-3, 4, count), np.full(count, 17),
            np.r_[np.full(count - 1, -128), [127]], np.round(rng.standard_normal(count) * 20).clip(-128, 127)]
    c = np.stack(rows).astype(np.int64) + 128  # uint8 containers, zero point 128
    y_zp, lo, hi = 128, 0, 255
    step = Step("layernorm", "ln", ["x"], ["y"], {"axes": [1], "x_zp": 128, **p, "pre": 0, "y_zp": y_zp, "lo": lo,
                                                  "hi": hi, "wide": True})
    sim = IntSim(IntProgram({}, [step], {}, [], [], "rne"), {})
    got = sim._layernorm(step, torch.from_numpy(c).double()).long().numpy()
    for row, g in zip(c, got):
        assert g.tolist() == _ln_exact((row - 128).tolist(), p, p["gamma"], p["beta"], y_zp, lo, hi)
    x = (c - 128) * 2.0**-x_frac
    mean = x.mean(axis=1, keepdims=True)
    ref = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps) * gamma + beta
    want = np.clip(np.round(ref * 2.0**y_frac) + y_zp, lo, hi)
    assert np.abs(got - want).max() <= 1
    assert (got == want).mean() > 0.99


def test_layernorm_bounds_are_checked():
    with pytest.raises(ValueError, match="62 bits"):
        layernorm_params(2**24, 255, 4, 4, 1e-5, np.ones(4), None)
    assert layernorm_params(2**16, 255, 4, 4, 1e-5, np.ones(4), None)["form"] == "q"
    big = layernorm_params(200704, 255, 4, 4, 1e-5, np.ones(4), None)  # PoolFormer's GroupNorm over 64x56x56
    assert big["form"] == "moments" and 200704**2 * 255**2 // 4 * 2 ** big["sq_shift"] + big["eps_term"] < 2**52
    p = layernorm_params(2**13, 255, 4, 4, 1e-5, np.ones(4), None)  # large N: a smaller s, still exact
    assert p["count"] ** 3 * 255**2 // 4 * 2 ** p["sq_shift"] + p["eps_term"] < 2**62


# ------------------------------------------------------------------------------------ end to end

def _model(path, c_in=32, hidden=48, mean_output=False, seed=0):
    rng = np.random.default_rng(seed)

    def const(name, v):
        return numpy_helper.from_array(np.asarray(v, np.float32), name)

    outs = ["n", "mean"] if mean_output else ["n"]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], outs, name="ln", axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2")]
    inits = [const("w1", rng.standard_normal((c_in, hidden)) / np.sqrt(c_in)),
             const("gamma", 1 + 0.3 * rng.standard_normal(hidden)), const("beta", 0.2 * rng.standard_normal(hidden)),
             const("w2", rng.standard_normal((hidden, 16)) / np.sqrt(hidden))]
    graph_outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])]
    if mean_output:
        graph_outs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 8, 1]))
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, c_in])],
                          graph_outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return rng.standard_normal((32, 8, c_in)).astype(np.float32)


def test_layernorm_model_is_exact_and_as_accurate_as_qdq(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "ln.onnx"
    x = _model(path)
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    res = onnxptq.quantize(str(path), x, w_bits=8, a_bits=8, scale="po2", format="int")
    assert [s.kind for s in res.program.steps if s.node == "ln"] == ["layernorm"]
    rep = verify_integer(res.model, {"x": x[:8]})
    assert rep.ok, rep.format()

    qdq = onnxptq.quantize(str(path), x, w_bits=8, a_bits=8, scale="po2", format="qdq")
    y_int = ort.InferenceSession(res.model.SerializeToString()).run(None, {"x": x})[0]
    y_qdq = ort.InferenceSession(qdq.model.SerializeToString()).run(None, {"x": x})[0]
    s_int, s_qdq = sqnr_db(ref, y_int), sqnr_db(ref, y_qdq)
    assert s_qdq > 25 and s_int > s_qdq - 0.5, (s_int, s_qdq)

    # the LayerNormalization's codes against the float op on its integer input, rounded to the output grid
    out = IntSim(res.program, {}).run({"x": x}, keep=True)
    t_in, t_out = res.program.tensors["h"], res.program.tensors["n"]
    h = (out["h.q"] - t_in.zp) * 2.0**-t_in.frac
    mean = h.mean(-1, keepdims=True)
    gamma, beta = (numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer[1:3])
    ln = (h - mean) / np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + np.float32(1e-5)) * gamma + beta
    want = np.clip(np.round(ln * 2.0**t_out.frac) + t_out.zp, t_out.lo, t_out.hi)
    assert np.abs(out["n.q"] - want).max() <= 1
    assert (out["n.q"] == want).mean() > 0.995


def test_layernorm_rounding_half_up_is_exact(tmp_path):
    path = tmp_path / "ln.onnx"
    x = _model(path, c_in=16, hidden=24, seed=1)
    res = onnxptq.quantize(str(path), x, w_bits=8, a_bits=8, scale="po2", format="int", int_rounding="half_up")
    rep = verify_integer(res.model, {"x": x[:4]}, reference_samples=1)
    assert rep.ok, rep.format()


def test_layernorm_with_its_mean_output_used_is_named(tmp_path):
    path = tmp_path / "ln_mean.onnx"
    x = _model(path, mean_output=True)
    with pytest.raises(UnsupportedOpError, match="ln.*Mean / InvStdDev"):
        onnxptq.quantize(str(path), x, w_bits=8, a_bits=8, scale="po2", format="int")


@pytest.mark.parametrize("hw", [8, 272])  # 272 x 272 = 73984 values per channel: the moments form
def test_instance_norm_lowers_like_a_layer_norm_over_the_spatial_axes(tmp_path, hw):
    """InstanceNormalization (GroupNorm as torch exports it) with a scale and bias per channel: exact parity,
    as accurate as QDQ."""
    import onnxruntime as ort

    rng = np.random.default_rng(4)

    def const(name, v):
        return numpy_helper.from_array(np.asarray(v, np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["h", "s", "t"], ["n"], name="inorm", epsilon=1e-5),
             helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2")]
    inits = [const("w", rng.standard_normal((6, 3, 3, 3)) * 0.3), const("b", rng.standard_normal(6) * 0.1),
             const("s", 1 + 0.3 * rng.standard_normal(6)), const("t", 0.2 * rng.standard_normal(6)),
             const("w2", rng.standard_normal((4, 6, 1, 1)) * 0.4)]
    g = helper.make_graph(nodes, "in", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, hw, hw])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "in.onnx"
    onnx.save(m, str(path))
    x = rng.standard_normal((24 if hw == 8 else 8, 3, hw, hw)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    res = onnxptq.quantize(str(path), x, w_bits=8, a_bits=8, scale="po2", format="int")
    assert [s.kind for s in res.program.steps if s.node == "inorm"] == ["layernorm"]
    assert next(s for s in res.program.steps if s.node == "inorm").attrs["form"] == ("q" if hw == 8 else "moments")
    assert verify_integer(res.model, {"x": x[:4]}).ok
    qdq = onnxptq.quantize(str(path), x, w_bits=8, a_bits=8, scale="po2", format="qdq")
    s_int = sqnr_db(ref, ort.InferenceSession(res.model.SerializeToString()).run(None, {"x": x})[0])
    s_qdq = sqnr_db(ref, ort.InferenceSession(qdq.model.SerializeToString()).run(None, {"x": x})[0])
    assert s_qdq > 25 and s_int > s_qdq - 0.5, (s_int, s_qdq)
