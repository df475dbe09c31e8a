"""Integer lowering of Softmax:
level-1 parity (onnxruntime == runtime/ == the integer simulation) and closeness to the float model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import ort_run

import onnxptq
from onnxptq.api import QuantResult
from onnxptq.verify.integer import verify_integer

T, C = 8, 16  # sequence length and width of the token models


def _save(tmp_path, name, nodes, x_shape, y_shape, inits) -> str:
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(m, path)
    return path


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2)))


def _check(path: str, x: np.ndarray, kinds: set[str], floor: float, **int_options) -> QuantResult:
    """Quantize to the integer format and QDQ; the integer model passes level-1 verify, holds the step
    kinds, and its output is within 0.5 dB of the QDQ model's SQNR against the float model (and above
    ``floor``)."""
    calib, test = x[:32], x[32:]
    res = onnxptq.quantize(path, calib, w_bits=8, a_bits=8, scale="po2", format="int", progress=False, **int_options)
    assert kinds <= {s.kind for s in res.program.steps}
    rep = verify_integer(res.model, {"x": test[:8]}, batch_size=8)
    assert rep.ok, rep.format()
    qdq = onnxptq.quantize(path, calib, w_bits=8, a_bits=8, scale="po2", format="qdq", progress=False)
    ref = ort_run(path, {"x": test})[0]
    s_int = _sqnr(ref, ort_run(res.model, {"x": test})[0])
    s_qdq = _sqnr(ref, ort_run(qdq.model, {"x": test})[0])
    assert s_int >= floor and s_int >= s_qdq - 0.5, (s_int, s_qdq)
    return res


def _tokens(seed: int, n: int = 48, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, T, C)) * scale).astype(np.float32)


def _w(rng, *shape, scale=0.3):
    return rng.standard_normal(shape) * scale


@pytest.mark.parametrize("axis, length", [(-1, T), (1, T), (1, "T")])
def test_softmax_is_an_integer_exp_table_and_division(tmp_path, axis, length):
    """Softmax after a MatMul layer over the last axis and over axis 1 (yolov8's DFL head): exp table,
    integer sum, exact RNE division by the sum; int64 when the axis length is not static."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Softmax", ["h"], ["y"], name="softmax", axis=axis)]
    path = _save(tmp_path, "softmax", nodes, (length, C), (length, C), {"w": _w(rng, C, C, scale=0.8)})
    res = _check(path, _tokens(1), {"softmax"}, floor=25.0)
    step = next(s for s in res.program.steps if s.kind == "softmax")
    assert step.attrs["table"][0] == 2**16 and step.attrs["axis"] == axis
    assert step.attrs["wide"] == (length != T)
