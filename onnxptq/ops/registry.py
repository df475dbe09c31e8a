"""REGISTRY: ONNX op_type -> OpSpec, built from one declaration per op family.

Each family module (conv, elementwise, normalization, indexing, pooling, recurrent, shape) defines its torch functions
(registered in OPS) and FAMILIES, its ops' roles and integer-lowering kinds; the runtime kernel name is the op_type when
runtime/ops implements it (RUNTIME_KERNELS, checked against runtime.ops.REGISTRY by tests/test_opspec.py).
Adding an op: its torch function and its name in a FAMILIES row of its family module (a new family: a new
module and one line in _FAMILIES below).
"""

from __future__ import annotations

from . import conv, elementwise, indexing, normalization, pooling, recurrent, shape
from .simulate import OPS
from .spec import OpSpec

# One line per op family module: each declares FAMILIES (family, role, lowering kind, op types) next to
# its torch functions.
_FAMILIES: list[tuple[str, str, str | None, tuple[str, ...]]] = [
    *conv.FAMILIES,
    *elementwise.FAMILIES,
    *normalization.FAMILIES,
    *indexing.FAMILIES,
    *pooling.FAMILIES,
    *recurrent.FAMILIES,
    *shape.FAMILIES,
]

#: op types runtime/ops has a NumPy kernel for (runtime never imports onnxptq, so this side names them).
RUNTIME_KERNELS = frozenset({
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Sum", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "ReduceMean",
    "MaxPool", "Reshape", "Flatten", "Transpose", "Pad", "Slice", "Split", "Squeeze", "Unsqueeze", "Identity",
    "GlobalMaxPool", "Resize", "Expand", "Tile", "Gather", "Dropout", "Relu", "Clip", "Sigmoid", "Tanh", "HardSwish",
    "HardSigmoid", "LeakyRelu", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Pow", "Div",
    "PRelu", "Softmax", "LogSoftmax", "BatchNormalization", "ReduceSum", "ReduceMax", "ReduceMin", "Equal", "Less",
    "Greater", "Not", "Where", "Max", "Min", "Cast", "Shape", "Size", "ConstantOfShape", "Range", "And", "Or", "Xor",
    "IsNaN", "LessOrEqual", "GreaterOrEqual", "Sign", "Round", "Mod", "GatherElements", "CumSum", "ArgMax", "ArgMin",
    "Einsum"})


#: op types whose role / lowering kind depends on the node's attributes (declared next to their torch functions)
_NODE_ROLES = {**shape.NODE_ROLES}
_NODE_LOWERINGS = {**shape.NODE_LOWERINGS}


def build_registry(families=_FAMILIES, ops=OPS, runtime_kernels=RUNTIME_KERNELS) -> dict[str, OpSpec]:
    """One OpSpec per op type; an op declared twice or without a torch function is an error."""
    reg: dict[str, OpSpec] = {}
    for family, role, lowering, names in families:
        for name in names:
            if name in reg:
                raise RuntimeError(f"op {name} is declared twice in the op registry (again in family {family!r})")
            if name not in ops:
                raise RuntimeError(f"op {name} (family {family!r}) has no torch function in ops/simulate.py")
            reg[name] = OpSpec(name, ops[name], role, lowering, name if name in runtime_kernels else None,
                               _NODE_ROLES.get(name), _NODE_LOWERINGS.get(name))
    undeclared = sorted(set(ops) - set(reg))
    if undeclared:
        raise RuntimeError(f"ops/simulate.py implements ops no family declares: {undeclared}")
    return reg


REGISTRY: dict[str, OpSpec] = build_registry()


def ops_with(role: str | None = None, lowering: str | None = None) -> frozenset[str]:
    """Op types of the given role and/or integer-lowering kind."""
    return frozenset(n for n, s in REGISTRY.items()
                     if (role is None or s.role == role) and (lowering is None or s.lowering == lowering))
