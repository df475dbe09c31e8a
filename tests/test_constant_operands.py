"""graph/constant_operands.py: which MatMul constant operands get an Identity quant point."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxptq.graph.constant_operands import PREFIX, route_constant_operands
from onnxptq.graph.qgraph import _float_constants


def _graph():
    f = np.float32
    inits = [numpy_helper.from_array(np.ones((8, 4), f), "w2"), numpy_helper.from_array(np.ones((1, 8, 4), f), "w3"),
             numpy_helper.from_array(np.ones((6, 6), f), "left"), numpy_helper.from_array(np.ones((8, 4), f), "skipped")]
    nodes = [helper.make_node("Constant", [], ["c3"], name="c3", value=numpy_helper.from_array(np.ones((2, 8, 4), f))),
             helper.make_node("MatMul", ["x", "w2"], ["a"], name="weight"),
             helper.make_node("MatMul", ["x", "w3"], ["b"], name="three_d"),
             helper.make_node("MatMul", ["x", "c3"], ["c"], name="constant_node"),
             helper.make_node("MatMul", ["left", "x"], ["d"], name="first"),
             helper.make_node("MatMul", ["x", "skipped"], ["e"], name="skip_me"),
             helper.make_node("MatMul", ["x", "x8"], ["f"], name="activations")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 8])
    x8 = helper.make_tensor_value_info("x8", TensorProto.FLOAT, [8, 6])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "abcdef"]
    return helper.make_graph(nodes, "g", [x, x8], outs, inits)


def test_only_constant_operands_that_are_no_weight_are_routed():
    g = _graph()
    consts = _float_constants(g)
    assert consts["c3"] == (TensorProto.FLOAT, (2, 8, 4), False) and consts["w2"][2]
    # "skip_me" reads a 2-D weight (no change anyway); the skip list also keeps a routed case as it is
    changed = route_constant_operands(g, consts, frozenset({"first"}))
    assert changed == ["three_d", "constant_node"]
    by_name = {n.name: n for n in g.node}
    assert list(by_name["weight"].input) == ["x", "w2"] and list(by_name["first"].input) == ["left", "x"]
    for name, const in (("three_d", "w3"), ("constant_node", "c3")):
        ident = by_name[f"{PREFIX}{name}/input1"]
        assert ident.op_type == "Identity" and list(ident.input) == [const]
        assert list(by_name[name].input) == ["x", ident.output[0]]
        order = [n.name for n in g.node]
        assert order.index(ident.name) == order.index(name) - 1  # right before its MatMul: still sorted
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.value_info}
    assert shapes[f"{PREFIX}three_d/input1"] == [1, 8, 4]
    assert route_constant_operands(g, _float_constants(g), frozenset({"first"})) == []  # already routed


def test_a_constant_first_operand_is_routed_too():
    g = _graph()
    assert "first" in route_constant_operands(g, _float_constants(g))


def test_every_constant_einsum_operand_is_routed():
    """Einsum is no layer: even a 2-D constant second operand gets the Identity."""
    g = _graph()
    g.node.append(helper.make_node("Einsum", ["x", "w2"], ["g"], name="einsum", equation="ij,jk->ik"))
    assert route_constant_operands(g, _float_constants(g))[-1] == "einsum"
