"""OpSpec: everything onnxptq knows about one ONNX op, in one record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

OpFn = Callable[[list, dict], list[torch.Tensor]]

#: layer: weighted op, one quantizable unit with its own weight quantizer (Conv, Gemm, MatMul).
#: carry: moves or selects values; its output keeps its input's quant point (MaxPool, Reshape, ...).
#: merge: combines quantized tensors and gets its own quant point (Add, Concat, average pools, ...).
#: island: any other float op; its output gets its own quant point.
ROLES = ("layer", "carry", "merge", "island")

#: Integer-lowering kinds: the Step.kind export/intplan.py emits for the op; export/integer.py
#: (writer) and verify/int_sim.py (executor) each keep a handler per kind.
LOWERINGS = ("layer", "carry", "add", "mul", "concat", "avgpool", "lut", "softmax", "matmul", "affine", "layernorm", "batchnorm",
             "l2norm", "div", "dilate", "intcast", "einsum", "select")
#: Kinds no op declares: the lowering picks them from the operands. "matmul": a MatMul (kind "layer")
#: whose second operand is an activation; "affine": Add/Sub/Mul/Div (kinds "add", "mul", "lut") with a
#: constant that holds a value per position (scalar constants give "lut"); "div": a Div of two activations;
#: "dilate": the zero-point insertion in front of a ConvTranspose lowered as a Conv (stride > 1);
#: "intcast": a Cast of an integer tensor (a mask from the input ids) to float, quantized onto its grid;
#: "select": a Where choosing between two activations, each requantized onto the output grid.
DERIVED_LOWERINGS = frozenset({"matmul", "affine", "div", "dilate", "intcast", "select"})


@dataclass(frozen=True)
class OpSpec:
    """One ONNX op: its torch simulation, its role in the quant graph, its integer lowering kind
    (None: no exact integer form) and the name runtime/ops registers its NumPy kernel under (None: none)."""

    op_type: str
    simulate: OpFn
    role: str = "island"
    lowering: str | None = None
    runtime_kernel: str | None = None
    node_role: Callable[[dict], str] | None = None  # the role when it depends on the node's attributes
    node_lowering: Callable[[dict], str | None] | None = None  # the lowering kind when it depends on them

    def role_of(self, attrs: dict) -> str:
        """This node's role: ``node_role(attrs)`` where the op declares one, else ``role``."""
        return self.node_role(attrs) if self.node_role is not None else self.role

    def lowering_of(self, attrs: dict) -> str | None:
        """This node's integer-lowering kind: ``node_lowering(attrs)`` where the op declares one, else
        ``lowering``."""
        return self.node_lowering(attrs) if self.node_lowering is not None else self.lowering

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"OpSpec {self.op_type}: role {self.role!r} is not one of {ROLES}")
        if self.lowering is not None and self.lowering not in LOWERINGS:
            raise ValueError(f"OpSpec {self.op_type}: lowering {self.lowering!r} is not one of {LOWERINGS}")
