"""Random small float CNN graphs (ONNX, built directly with onnx.helper) for integer-parity fuzzing.

``random_cnn(seed)`` returns (model, input shape, description): a stem Conv, then 1-5 random blocks
drawn from: conv (+ Relu / ReLU6 / none; groups 1, 2 or depthwise; kernel 1/3; stride 1/2), residual
Add, MaxPool, AveragePool, Concat of two branches, x * Sigmoid(x) (SiLU as Mul) then x * Sigmoid(MaxPool(x)),
HardSwish, a tiny-
scale branch added to a normal one (forces int64 accumulators in the Add); then GlobalAveragePool,
Flatten and Gemm.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCKS = ("conv", "residual", "maxpool", "avgpool", "concat", "silu", "hardswish", "tiny_add")


class _G:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits, self.k = rng, [], [], 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def init(self, arr: np.ndarray, base: str) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), n))
        return n

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.name(f"t_{op.lower()}")
        self.nodes.append(helper.make_node(op, ins, [out], name=self.name(f"/{op}_"), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: str = "relu",
             scale: float = 1.0) -> str:
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / (cin // groups * k * k)) * scale
        b = self.rng.standard_normal(cout) * 0.1 * scale
        y = self.node("Conv", [x, self.init(w, "w"), self.init(b, "b")], kernel_shape=[k, k], strides=[stride, stride],
                      pads=[k // 2] * 4, group=groups)
        if act == "relu":
            y = self.node("Relu", [y])
        elif act == "relu6":
            y = self.node("Clip", [y, self.init(np.array(0.0), "lo"), self.init(np.array(6.0), "hi")])
        return y


def random_cnn(seed: int) -> tuple[onnx.ModelProto, tuple[int, ...], str]:
    rng = np.random.default_rng(seed)
    g = _G(rng)
    size = int(rng.choice([8, 9, 12]))
    hw = size
    cin = int(rng.choice([1, 3]))
    c = int(rng.choice([4, 8]))
    x = g.conv("input", cin, c, 3, 1, 1, str(rng.choice(["relu", "relu6", "none"])))
    kinds = []
    for _ in range(int(rng.integers(1, 6))):
        kind = str(rng.choice(BLOCKS))
        kinds.append(kind)
        if kind == "conv":
            groups = int(rng.choice([1, 2, c]))
            stride = int(rng.choice([1, 1, 2])) if size >= 4 else 1
            x = g.conv(x, c, c, int(rng.choice([1, 3])), stride, groups, str(rng.choice(["relu", "relu6", "none"])))
            size = (size + stride - 1) // stride
        elif kind == "residual":
            y = g.conv(x, c, c, 3, 1, 1, "relu")
            y = g.conv(y, c, c, 1, 1, 1, "none")
            x = g.node("Add", [x, y])
            if rng.random() < 0.5:
                x = g.node("Relu", [x])
        elif kind == "maxpool" and size >= 2:
            x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            size //= 2
        elif kind == "avgpool" and size >= 2:
            if rng.random() < 0.5:
                x = g.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
                size //= 2
            else:
                x = g.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)
        elif kind == "concat":
            a = g.conv(x, c, c // 2, 1, 1, 1, "relu")
            b = g.conv(x, c, c - c // 2, 3, 1, 1, "relu6")
            x = g.node("Concat", [a, b], axis=1)
        elif kind == "silu":  # SiLU (one lookup table: QGraph.chains), then a gate of two activations (a Mul step)
            x = g.node("Mul", [x, g.node("Sigmoid", [x])])
            gate = g.node("Sigmoid", [g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])])
            x = g.node("Mul", [x, gate])
        elif kind == "hardswish":
            x = g.node("HardSwish", [x])
        elif kind == "tiny_add":
            tiny = g.conv(x, c, c, 1, 1, 1, "none", scale=float(rng.choice([1e-7, 1e-9])))
            x = g.node("Add", [x, tiny])
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    w = rng.standard_normal((5, c)) * 0.5
    out = "logits"
    g.nodes.append(helper.make_node("Gemm", [x, g.init(w, "fc_w"), g.init(rng.standard_normal(5) * 0.1, "fc_b")], [out],
                                    name="/fc/Gemm", transB=1))
    graph = helper.make_graph(g.nodes, f"fuzz{seed}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", cin, hw, hw])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 5])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, (cin, hw, hw), "+".join(kinds)
