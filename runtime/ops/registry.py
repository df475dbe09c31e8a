"""Op registry: ONNX op_type -> implementation (the op families register here; ``runtime/ops/__init__`` loads them).

An implementation is ``fn(node, *inputs) -> array | tuple[array, ...]`` where ``node`` is a
:class:`Node` (attributes, opset version, name, a private cache) and ``inputs`` are NumPy arrays, or
``None`` for an omitted optional input. Trailing optional inputs that the node does not list are not
passed, so implementations give them a default of ``None``.

``register`` may also take ``check(node)``, run once at load time; it raises
:class:`runtime.errors.UnsupportedOpError` for attribute values the runtime does not implement, so
that the failure names the node before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from onnx import AttributeProto, NodeProto, helper, numpy_helper

from ..errors import UnsupportedOpError

OpFn = Callable[..., Any]
CheckFn = Callable[["Node"], None]


@dataclass
class OpSpec:
    """One registered op."""

    fn: OpFn
    check: CheckFn | None = None


REGISTRY: dict[str, OpSpec] = {}


def register(*op_types: str, check: CheckFn | None = None) -> Callable[[OpFn], OpFn]:
    """Decorator registering ``fn`` for each op type in ``op_types``."""

    def deco(fn: OpFn) -> OpFn:
        for op in op_types:
            if op in REGISTRY:
                raise RuntimeError(f"op {op} registered twice")
            REGISTRY[op] = OpSpec(fn, check)
        return fn

    return deco


def _attr_value(a: AttributeProto) -> Any:
    if a.type == AttributeProto.STRING:
        return a.s.decode("utf-8")
    if a.type == AttributeProto.STRINGS:
        return [s.decode("utf-8") for s in a.strings]
    if a.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(a.t)
    if a.type == AttributeProto.INTS:
        return [int(i) for i in a.ints]
    if a.type == AttributeProto.FLOATS:
        return [float(f) for f in a.floats]
    if a.type == AttributeProto.INT:
        return int(a.i)
    if a.type == AttributeProto.FLOAT:
        return float(a.f)
    return helper.get_attribute_value(a)


@dataclass
class Node:
    """A graph node as the op implementations see it."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    cache: dict[str, Any] = field(default_factory=dict)
    #: positions of inputs that are session constants (absent optional inputs count as constant)
    const_inputs: frozenset[int] = frozenset()

    @classmethod
    def from_proto(cls, proto: NodeProto, opset: int, index: int) -> "Node":
        name = proto.name or f"{proto.op_type}_{index}"
        attrs: dict[str, Any] = {}
        for a in proto.attribute:
            if a.ref_attr_name:
                raise UnsupportedOpError(name, proto.op_type, "attribute references (functions)")
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                raise UnsupportedOpError(name, proto.op_type, "subgraph attributes")
            if a.type in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
                raise UnsupportedOpError(name, proto.op_type, "sparse tensor attributes")
            attrs[a.name] = _attr_value(a)
        return cls(name, proto.op_type, list(proto.input), list(proto.output), attrs, opset)

    def attr(self, key: str, default: Any = None) -> Any:
        """Attribute value, or ``default`` when the node does not set it."""
        return self.attrs.get(key, default)

    @property
    def n_outputs(self) -> int:
        """Number of outputs the node actually produces for the graph (trailing "" dropped)."""
        n = len(self.outputs)
        while n and not self.outputs[n - 1]:
            n -= 1
        return n

    def unsupported(self, detail: str) -> UnsupportedOpError:
        """An :class:`UnsupportedOpError` naming this node."""
        return UnsupportedOpError(self.name, self.op_type, detail)


def const_cached(node: Node, key: str, inputs: tuple[int, ...], make: Callable[[], Any]) -> Any:
    """Return ``make()``, computed once per session if the node's ``inputs`` are all constants.

    Per-weight preprocessing (zero-point subtraction, reshaping, float conversion, bounds) thus
    happens once for initializers and folded constants. When any of those inputs is a fed or
    computed tensor the value is recomputed on every call (never cached, so a caller mutating its
    own arrays between runs cannot see stale results).
    """
    if not all(i >= len(node.inputs) or i in node.const_inputs for i in inputs):
        return make()
    try:
        return node.cache[key]
    except KeyError:
        val = node.cache[key] = make()
        return val
