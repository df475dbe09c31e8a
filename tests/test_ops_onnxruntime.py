"""The torch simulation of each op (onnxptq.ops.simulate.OPS) against onnxruntime on one-node models."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from helpers import ort_run
from onnxptq.ops.simulate import OPS

IR_FOR_OPSET = {9: 7, 10: 7, 11: 7, 13: 7, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def _attrs(node: onnx.NodeProto) -> dict:
    """Attributes as the simulation receives them (strings as bytes, tensors as numpy arrays)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v
    return out


def check(op_type: str, inputs: list, n_out: int = 1, opset: int = 17, atol: float = 1e-6, rtol: float = 1e-6,
          **attrs) -> list[np.ndarray]:
    """Run op_type on inputs (numpy arrays; None: an omitted optional input) in onnxruntime and in OPS and
    compare: same shapes and dtypes, integer and bool outputs exactly, float outputs within atol/rtol."""
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"out{k}" for k in range(n_out)]
    node = helper.make_node(op_type, names, outs, **attrs)
    g = helper.make_graph([node], op_type,
                          [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                           for n, v in zip(names, inputs) if v is not None],
                          [helper.make_empty_tensor_value_info(o) for o in outs])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_FOR_OPSET[opset]
    want = ort_run(model, {n: v for n, v in zip(names, inputs) if v is not None}, optimize=False)
    got = OPS[op_type]([None if v is None else torch.from_numpy(np.ascontiguousarray(v)) for v in inputs],
                       _attrs(node))
    for k, (w, t) in enumerate(zip(want, got)):
        t = t.numpy()
        assert t.shape == w.shape, f"output {k}: shape {t.shape} != onnxruntime's {w.shape}"
        assert t.dtype == w.dtype, f"output {k}: dtype {t.dtype} != onnxruntime's {w.dtype}"
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(t, w, err_msg=f"output {k}")
        else:
            np.testing.assert_allclose(t, w, atol=atol, rtol=rtol, err_msg=f"output {k}")
    return want


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def ties(*shape, seed=0, hi=4):
    """Small integer-valued floats: many ties."""
    return np.random.default_rng(seed).integers(0, hi, shape).astype(np.float32)


# ---------------------------------------------------------------- normalizations and Einsum

@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("bias, n_out", [(True, 1), (False, 3), (True, 3)])
def test_layer_normalization(axis, bias, n_out):
    x = rand(2, 3, 4, 5) * 3 + 1
    shape = x.shape[axis % 4:]
    ins = [x, rand(*shape, seed=1)] + ([rand(*shape, seed=2)] if bias else [])
    check("LayerNormalization", ins, n_out=n_out, axis=axis, epsilon=1e-3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opset, per_channel", [(18, False), (21, True)])
@pytest.mark.parametrize("shape, groups", [((2, 6, 4, 5), 3), ((2, 4, 7), 2), ((1, 6, 3, 3), 6)])
def test_group_normalization(opset, per_channel, shape, groups):
    n = shape[1] if per_channel else groups
    check("GroupNormalization", [rand(*shape) * 2 + 0.5, rand(n, seed=1), rand(n, seed=2)], opset=opset,
          num_groups=groups, epsilon=1e-4, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7), (1, 2, 3, 4, 2)])
def test_instance_normalization(shape):
    check("InstanceNormalization", [rand(*shape) * 2 + 1, rand(shape[1], seed=1), rand(shape[1], seed=2)],
          epsilon=1e-3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("eq, shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bhid,bhjd->bhij", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij->ji", [(3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
    ("bij, bjk -> bik", [(2, 3, 4), (2, 4, 2)]),
])
def test_einsum(eq, shapes):
    check("Einsum", [rand(*s, seed=k) for k, s in enumerate(shapes)], equation=eq, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- logic, masks and scans

@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_boolean_ops(op):
    rng = np.random.default_rng(0)
    check(op, [rng.random((3, 4)) > 0.5, rng.random((4,)) > 0.5])


@pytest.mark.parametrize("op", ["LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_comparisons(op, dtype):
    check(op, [ties(3, 4).astype(dtype), ties(4, seed=1).astype(dtype)])


def _special():
    return np.array([0.0, -0.0, 1.5, -2.5, np.inf, -np.inf, np.nan, 3.0], np.float32)


def test_isnan():
    check("IsNaN", [_special()])


@pytest.mark.parametrize("neg, pos", [(1, 1), (0, 1), (1, 0), (0, 0)])
def test_isinf(neg, pos):
    check("IsInf", [_special()], detect_negative=neg, detect_positive=pos)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_sign(dtype):
    check("Sign", [(ties(3, 5, hi=7) - 3).astype(dtype)])


def test_round_half_to_even():
    x = np.concatenate([np.arange(-3, 3, 0.25), [0.49999997, -0.5, 2.5000002, 1e7 + 0.5]]).astype(np.float32)
    check("Round", [x])


@pytest.mark.parametrize("fmod, dtype", [(0, np.int32), (0, np.int64), (1, np.int64), (1, np.float32)])
def test_mod(fmod, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(-20, 20, (4, 5)).astype(dtype)
    b = rng.integers(1, 7, (5,)) * rng.choice([-1, 1], 5)
    if dtype == np.float32:
        a = a + rng.random(a.shape).astype(dtype)
    check("Mod", [a, b.astype(dtype)], fmod=fmod, atol=1e-5)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis, dtype", [(1, np.float32), (-1, np.float32), (0, np.int32), (2, np.int64)])
def test_cumsum(exclusive, reverse, axis, dtype):
    check("CumSum", [(ties(3, 4, 5, hi=9) - 4).astype(dtype), np.array(axis, np.int64)], exclusive=exclusive,
          reverse=reverse)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, -1, 2, 9])
@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 3)])
def test_trilu(upper, k, shape):
    ins = [rand(*shape)] + ([] if k is None else [np.array(k, np.int64)])
    check("Trilu", ins, upper=upper)
