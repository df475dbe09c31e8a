"""Graph clean-up before quantization: BatchNorm folding into Conv/Gemm, Identity/Dropout removal.

Folding keeps each folded BN's gamma and beta per output channel: RAPQ's BN-based L-P loss
(Eq. 17-19) needs gamma after the BN is gone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..onnx_graph import consumers_of


@dataclass
class FoldReport:
    folded: dict[str, str] = field(default_factory=dict)  # layer node name -> BN node name
    gamma: dict[str, np.ndarray] = field(default_factory=dict)  # layer node name -> BN gamma
    beta: dict[str, np.ndarray] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)  # Identity / Dropout nodes
    unfolded_bn: list[str] = field(default_factory=list)  # BN nodes left in place (no Conv before them)
    bn_as_conv: list[str] = field(default_factory=list)  # standalone BNs rewritten as depthwise 1x1 Convs


def bn_epsilon(bn: onnx.NodeProto) -> float:
    return next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)


def bn_affine(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization as the per-channel affine y = k x + b: (k, b) with
    k = gamma / sqrt(var + eps), b = beta - mean k (float64)."""
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in (gamma, beta, mean, var))
    k = gamma / np.sqrt(var + eps)
    return k, beta - mean * k


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new
    for o in graph.output:
        if o.name == old:
            o.name = new


def remove_passthrough(graph: onnx.GraphProto, report: FoldReport) -> None:
    """Drop Identity and inference-mode Dropout nodes, rewiring their consumers."""
    graph_outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type not in ("Identity", "Dropout"):
            continue
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            if any(node.output[1] in n.input for n in graph.node) or node.output[1] in graph_outputs:
                continue  # the mask is used: leave it
        src, dst = node.input[0], node.output[0]
        graph.node.remove(node)
        if dst in graph_outputs and src in {i.name for i in graph.input}:
            graph.node.append(onnx.helper.make_node("Identity", [src], [dst], name=node.name))
            continue
        if dst in graph_outputs:
            # Keep the output name stable: rename the producer's output instead.
            for n in graph.node:
                for k, o in enumerate(n.output):
                    if o == src:
                        n.output[k] = dst
            _rename_input(graph, src, dst)
        else:
            _rename_input(graph, dst, src)
        report.removed.append(node.name)


def fold_batchnorm(graph: onnx.GraphProto, report: FoldReport) -> None:
    """Fold BatchNormalization into the preceding Conv or Gemm when it is that layer's only consumer.

    w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta.
    """
    inits = {i.name: i for i in graph.initializer}
    consumers = consumers_of(graph)
    producers = {o: n for n in graph.node for o in n.output}
    graph_outputs = {o.name for o in graph.output}
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        layer = producers.get(bn.input[0])
        params = [inits.get(i) for i in bn.input[1:5]]
        foldable = (
            layer is not None and layer.op_type in ("Conv", "Gemm")
            and len(consumers.get(bn.input[0], [])) == 1 and bn.input[0] not in graph_outputs
            and len(layer.input) >= 2 and layer.input[1] in inits and all(p is not None for p in params)
            and (len(layer.input) < 3 or not layer.input[2] or layer.input[2] in inits)
            and len([o for o in bn.output if o]) == 1
        )
        if layer is not None and layer.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in layer.attribute}
            foldable = foldable and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if not foldable:
            report.unfolded_bn.append(bn.name)
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
        k, _ = bn_affine(gamma, beta, mean, var, bn_epsilon(bn))
        w_init = inits[layer.input[1]]
        w = numpy_helper.to_array(w_init).astype(np.float64)
        if layer.op_type == "Conv":
            w = w * k.reshape(-1, *([1] * (w.ndim - 1)))
        else:
            trans_b = any(a.name == "transB" and a.i == 1 for a in layer.attribute)
            w = w * (k.reshape(-1, 1) if trans_b else k.reshape(1, -1))
        has_bias = len(layer.input) >= 3 and layer.input[2]
        b = numpy_helper.to_array(inits[layer.input[2]]).astype(np.float64) if has_bias else np.zeros_like(mean)
        b = (b - mean) * k + beta
        # New initializer names: the originals may be shared with other nodes.
        w_name, b_name = f"{layer.name or layer.output[0]}.weight_folded", f"{layer.name or layer.output[0]}.bias_folded"
        graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), w_name))
        graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), b_name))
        layer.input[1] = w_name
        if has_bias:
            layer.input[2] = b_name
        else:
            layer.input.append(b_name)
        # The layer now produces the BN's output tensor.
        layer.output[0] = bn.output[0]
        graph.node.remove(bn)
        report.folded[layer.name] = bn.name
        report.gamma[layer.name] = gamma.astype(np.float32)
        report.beta[layer.name] = beta.astype(np.float32)
    prune_initializers(graph)


def standalone_bn_to_conv(graph: onnx.GraphProto, report: FoldReport) -> None:
    """Rewrite each BatchNormalization left after folding (no Conv before it: a pre-activation BN, an
    identity-branch BN) on a 3-D or 4-D input as the depthwise 1x1 Conv it equals,
    y = k * x + (beta - mean * k) per channel with k = gamma / sqrt(var + eps). It then quantizes and lowers
    to integers like any layer (one weight per channel: plan.py keeps it at 8 bits at least)."""
    inits = {i.name: i for i in graph.initializer}
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in list(graph.value_info) + list(graph.input)
             if vi.type.tensor_type.HasField("shape")}
    for k, bn in enumerate(list(graph.node)):
        if bn.op_type != "BatchNormalization" or ranks.get(bn.input[0]) not in (3, 4):
            continue
        params = [inits.get(i) for i in bn.input[1:5]]
        if any(p is None for p in params) or len([o for o in bn.output if o]) != 1:
            continue
        if any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
        scale, shift = bn_affine(gamma, beta, mean, var, bn_epsilon(bn))
        nd = ranks[bn.input[0]] - 2
        w_name, b_name = f"{bn.name}.weight_dw", f"{bn.name}.bias_dw"
        graph.initializer.append(numpy_helper.from_array(
            scale.reshape(-1, 1, *([1] * nd)).astype(np.float32), w_name))
        graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), b_name))
        conv = onnx.helper.make_node("Conv", [bn.input[0], w_name, b_name], [bn.output[0]], name=bn.name,
                                     group=len(scale), kernel_shape=[1] * nd)
        index = list(graph.node).index(bn)
        graph.node.remove(bn)
        graph.node.insert(index, conv)
        if bn.name in report.unfolded_bn:
            report.unfolded_bn.remove(bn.name)
        report.bn_as_conv.append(bn.name)
        report.gamma[bn.name] = gamma.astype(np.float32)
        report.beta[bn.name] = beta.astype(np.float32)
    prune_initializers(graph)


def prune_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes holding a tensor become initializers (simplifiers write folded weights, e.g. a conv
    weight times a layer scale, as Constant nodes; a layer's weight must be an initializer)."""
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type != "Constant" or node.output[0] in outputs or len(node.attribute) != 1 \
                or node.attribute[0].name != "value":
            continue
        t = onnx.TensorProto()
        t.CopyFrom(node.attribute[0].t)
        t.name = node.output[0]
        graph.initializer.append(t)
        graph.node.remove(node)


def ensure_node_names(graph: onnx.GraphProto) -> None:
    """Give every node a unique, non-empty name (errors and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(graph.node):
        name = n.name or f"{n.op_type}_{i}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        n.name = name
        seen.add(name)


def fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FoldReport]:
    """Return a cleaned copy: unique node names, no Identity/Dropout, BN folded where possible."""
    model = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    report = FoldReport()
    ensure_node_names(model.graph)
    constants_to_initializers(model.graph)
    remove_passthrough(model.graph, report)
    fold_batchnorm(model.graph, report)
    standalone_bn_to_conv(model.graph, report)
    return model, report
