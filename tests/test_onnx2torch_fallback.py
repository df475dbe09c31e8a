"""onnx2torch as the fallback for ops outside the own table (onnxptq/ops/fallback.py): one-node models simulate
like onnxruntime, a model with such a node quantizes end to end, and a node neither can simulate is named."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from helpers import ort_run
from onnxptq import quantize
from onnxptq.api import inspect
from onnxptq.errors import UnsupportedOpError
from onnxptq.graph import import_model
from onnxptq.ops.fallback import Onnx2Torch
from onnxptq.ops.registry import REGISTRY
from onnxptq.sim.model import SimModel

OPSET = 17
X_SHAPE = (2, 8, 4, 4)

# op -> (node attributes, number of data inputs, output shape): ops the own table lacks
CASES = {
    "DepthToSpace": ({"blocksize": 2, "mode": "CRD"}, 1, (2, 2, 8, 8)),
    "ReduceL1": ({"axes": [2, 3], "keepdims": 1}, 1, (2, 8, 1, 1)),
    "ReduceLogSumExp": ({"axes": [1], "keepdims": 0}, 1, (2, 4, 4)),
    "Mean": ({}, 2, X_SHAPE),
}


def _model(nodes, inputs, output_shape, inits=(), opsets=(("", OPSET),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)], list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    return m


def _x(shape=X_SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("op", sorted(CASES))
def test_one_node_model_simulates_like_onnxruntime(op, tmp_path):
    assert op not in REGISTRY
    attrs, n_in, out_shape = CASES[op]
    names = [f"x{k}" for k in range(n_in)]
    path = tmp_path / f"{op}.onnx"
    onnx.save(_model([helper.make_node(op, names, ["y"], name=f"my_{op}", **attrs)],
                     [(n, list(X_SHAPE)) for n in names], list(out_shape)), str(path))
    feeds = {n: _x(seed=k) for k, n in enumerate(names)}
    qg = import_model(path)
    assert qg.import_info["onnx2torch_nodes"] == [f"my_{op}"]
    assert qg.quant_points["y"].kind == "island"
    with torch.no_grad():
        got = SimModel(qg)({k: torch.from_numpy(v) for k, v in feeds.items()})["y"].numpy()
    want = ort_run(path, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_module_gets_only_the_mapped_inputs():
    """A constant input the converter bakes into the module (ReduceSum's axes) is not fed again."""
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="rs", keepdims=0)
    m = _model([node], [("x", list(X_SHAPE))], [2, 8],
               [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")], opsets=(("", 13),))
    fn = Onnx2Torch(m).fn(m.graph.node[0])
    x = _x()
    out = fn([torch.from_numpy(x), torch.tensor([0])], {})  # a wrong axes value: it must be ignored
    assert len(out) == 1
    np.testing.assert_allclose(out[0].numpy(), x.sum(axis=(2, 3)), rtol=1e-5, atol=1e-5)


def _conv_d2s_conv(path) -> None:
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    b1 = numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 2, 3, 3)) * 0.3).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("DepthToSpace", ["r1"], ["d"], name="d2s", blocksize=2, mode="CRD"),
             helper.make_node("Conv", ["d", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    onnx.save(_model(nodes, [("x", ["N", 3, 8, 8])], ["N", 4, 16, 16], [w1, b1, w2]), str(path))


def test_model_with_a_fallback_node_quantizes_end_to_end(tmp_path):
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _conv_d2s_conv(path)
    calib = _x((16, 3, 8, 8), seed=2)
    res = quantize(path, calib, w_bits=8, a_bits=8, output=out, check_kernels=False)
    assert res.qgraph.import_info["onnx2torch_nodes"] == ["d2s"]
    assert [x.where for x in res.diagnostics.of("onnx2torch")] == ["d2s"]
    assert any("onnx2torch" in line for line in res.summary()["fallbacks"])
    assert [x.name for x in res.qgraph.layers] == ["conv1", "conv2"]
    assert inspect(path)["onnx2torch_nodes"] == ["d2s"]
    x = _x((4, 3, 8, 8), seed=3)
    q = ort_run(out, {"x": x})[0]
    f = ort_run(path, {"x": x})[0]
    assert q.shape == f.shape == (4, 4, 16, 16)
    sqnr = 10 * np.log10(np.mean(f ** 2) / np.mean((f - q) ** 2))
    assert sqnr > 25, sqnr
    np.testing.assert_allclose(res.simulate({"x": x}), q, atol=0.05 * float(np.abs(f).max()))


def test_integer_export_names_the_fallback_node(tmp_path):
    path = tmp_path / "m.onnx"
    _conv_d2s_conv(path)
    with pytest.raises(UnsupportedOpError, match=r"d2s.*onnx2torch"):
        quantize(path, _x((8, 3, 8, 8)), w_bits=8, a_bits=8, format="int", scale="po2", check_kernels=False)


@pytest.mark.parametrize("case", ["no_converter", "custom_domain", "unconvertible_attr"])
def test_node_neither_can_simulate_is_named(case, tmp_path):
    opsets, out_shape = [("", OPSET)], list(X_SHAPE)
    if case == "no_converter":  # an ONNX op that neither the own table nor onnx2torch 1.5 has
        node = helper.make_node("Hardmax", ["x"], ["y"], name="my_foo")
    elif case == "custom_domain":
        node = helper.make_node("MyOp", ["x"], ["y"], name="my_foo", domain="com.example")
        opsets.append(("com.example", 1))
    else:  # onnx2torch converts DepthToSpace in CRD mode only
        node = helper.make_node("DepthToSpace", ["x"], ["y"], name="my_foo", blocksize=2, mode="DCR")
        out_shape = [2, 2, 8, 8]
    path = tmp_path / "m.onnx"
    m = _model([node], [("x", list(X_SHAPE))], out_shape, opsets=opsets)
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedOpError, match=r"cannot simulate 1 node\(s\): 'my_foo'.*onnx2torch") as e:
        import_model(path)
    assert e.value.nodes[0][0] == "my_foo"
