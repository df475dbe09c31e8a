"""Constant MatMul and Einsum operands that are not a layer's weight get a quant point of their own.

A MatMul is a quantized layer when its second operand is a 2-D constant and its first an activation: the
weight, quantized per output channel (qgraph.build_qgraph). Other constant operands have no such channel
axis: a 3-D constant folded from a position projection (DeBERTa's relative-position attention), learned
queries folded through a decoder's first layer (DETR), a constant first operand, and every constant operand
of an Einsum (Funnel's projections to heads). Left as they are, the op reads a float tensor: a float kernel in
QDQ, no integer form in the integer format.

``route_constant_operands`` puts an ``Identity`` between each such constant and its node. The Identity's
output is an island quant point like any activation (per tensor, at the activation bits), calibrated on the
constant's values, so the node multiplies two quantized tensors: QLinearMatMul / MatMulInteger in QDQ, the
"matmul" or "einsum" step in the integer format, where the constant's codes are computed at lowering time
(``export/intplan.py``, ``constant_carry``).
"""
from __future__ import annotations

import onnx
from onnx import helper

PREFIX = "onnxptq_const/"  # names of the Identity nodes (and their outputs) the rewrite adds


def route_constant_operands(g: onnx.GraphProto, float_consts: dict[str, tuple[int, tuple[int, ...], bool]],
                            skip_nodes: frozenset[str] = frozenset()) -> list[str]:
    """Insert ``Identity`` in front of each float constant operand of a MatMul or Einsum that is not a layer
    weight.

    ``float_consts``: name -> (element type, shape, is an initializer) of the graph's float constants
    (initializers and ``Constant`` outputs). A MatMul or Einsum of two operands qualifies when exactly one is
    such a constant, for a MatMul one that is not a weight (a 2-D initializer as the second operand). Nodes in
    ``skip_nodes`` stay as they are. Returns the nodes changed, in graph order."""
    changed, nodes = [], []
    for n in g.node:
        if n.op_type in ("MatMul", "Einsum") and n.domain in ("", "ai.onnx") and n.name not in skip_nodes:
            k = _constant_operand(n, float_consts)
            if k is not None:
                name = f"{PREFIX}{n.name}/input{k}"
                nodes.append(helper.make_node("Identity", [n.input[k]], [name], name=name))
                elem, shape, _ = float_consts[n.input[k]]
                g.value_info.append(helper.make_tensor_value_info(name, elem, list(shape)))
                n.input[k] = name
                changed.append(n.name)
        nodes.append(n)
    if changed:
        del g.node[:]
        g.node.extend(nodes)
    return changed


def _constant_operand(n: onnx.NodeProto, float_consts: dict) -> int | None:
    """The index of ``n``'s one float constant operand that a layer would not quantize, else None."""
    const = [i in float_consts for i in n.input[:2]]
    if len(n.input) != 2 or sum(const) != 1:
        return None
    k = const.index(True)
    _, shape, initializer = float_consts[n.input[k]]
    if n.op_type == "MatMul" and k == 1 and initializer and len(shape) == 2:
        return None  # a weight: the layer quantizes it per output channel
    return k
