"""QGraph: the folded float graph plus what quantization needs to know about it.

Placement follows DESIGN.md section 3:
- quantized layers: Conv, Gemm, MatMul with a constant weight operand (2-D);
- a layer followed by Relu, or by Clip with constant bounds, is one unit: its quant point is after
  the activation function; so is an Add / Sub / Sum of activations followed by one (``FusedAct``: the
  residual Add + ReLU of ResNets and MobileOne, quantized once on the ReLU's grid, as onnxruntime does);
- every other float tensor produced by a non-carry op (Add, Mul, Concat, pools, islands such as
  Sigmoid/HardSwish/Softmax) and every float graph input is a quant point;
- a float constant that a MatMul reads other than as its 2-D weight is routed through an Identity whose
  output is a quant point (graph/constant_operands.py), so the MatMul multiplies two quantized tensors;
- carry ops (MaxPool, Reshape, Flatten, Transpose, Pad, Slice, Split, ...) keep their input's
  quantization: their outputs are "carried" tensors, not new quant points.
"""
from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError, UnsupportedOpError
from ..ops.fallback import Onnx2Torch
from ..ops.registry import REGISTRY, ops_with
from ..ops.spec import OpFn
from .constant_operands import route_constant_operands
from .fold import FoldReport

CARRY_OPS = ops_with(role="carry")
LAYER_OPS = ops_with(role="layer")
ADD_OPS = ops_with(lowering="add")  # Add, Sub, Sum: a fused Relu / Clip after them makes a FusedAct
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class Layer:
    """One quantizable layer unit (weighted op + optional fused Relu/ReLU6)."""

    name: str  # ONNX node name of the Conv/ConvTranspose/Gemm/MatMul
    op_type: str
    input: str  # activation input tensor
    weight: str  # initializer name
    bias: str | None
    raw_output: str  # the weighted op's own output
    output: str  # the unit's output (after the fused activation)
    act_node: str | None = None  # fused Relu / Clip node name
    act_bounds: tuple[float, float] | None = None  # Clip bounds of the fused activation (Relu: (0, inf))
    weight_axis: int = 0  # per-channel axis of the weight tensor
    groups: int = 1
    weight_shape: tuple[int, ...] = ()
    macs_per_sample: int = 0
    bn_gamma: np.ndarray | None = None  # folded BatchNorm gamma per output channel (RAPQ Eq. 17-19)
    bn_beta: np.ndarray | None = None
    stride_area: int = 1  # ConvTranspose: product of its strides (output positions per input position)

    @property
    def spatial(self) -> bool:
        """Channels on axis 1 of the input and output (Conv, ConvTranspose), not on the last axis."""
        return self.op_type in ("Conv", "ConvTranspose")

    @property
    def out_channels(self) -> int:
        return self.weight_shape[self.weight_axis]

    @property
    def depthwise(self) -> bool:
        return self.op_type == "Conv" and self.groups > 1 and self.groups == self.out_channels


@dataclass(frozen=True)
class FusedAct:
    """A Relu or a Clip with constant bounds fused into the node before it, a layer or an Add / Sub / Sum of
    activations (its only consumer): the node's own output is no quant point, the activation's output is,
    and the node's integer step writes the clipped result straight onto its grid (QLinearConv, or QLinearAdd
    with the Relu dropped, in onnxruntime)."""

    node: str  # the layer or the Add / Sub / Sum
    act_node: str  # the fused Relu / Clip
    act_bounds: tuple[float, float]  # its clip bounds (Relu: (0, inf))
    output: str  # the activation's output: the unit's quant point


@dataclass
class QuantPoint:
    """A float tensor that the deployed model holds as integers with its own scale."""

    tensor: str
    producer: str | None  # node name (None for a graph input)
    kind: str  # input | layer | merge | island
    consumers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QGraph:
    """Immutable after import: no stage writes into its model, initializers or layers (quantization state
    lives in ``sim.state.QuantState``). ``initializer`` returns read-only arrays, attributes cannot be
    reassigned, and ``check_unchanged`` (run at the end of ``api.quantize``) fails on any write to the model."""

    model: onnx.ModelProto
    layers: list[Layer]
    quant_points: dict[str, QuantPoint]
    source: dict[str, str]  # every quantized float tensor -> the quant point whose parameters it carries
    shapes: dict[str, tuple]  # static shapes from shape inference (batch dim may be -1)
    inputs: list[str]
    outputs: list[str]
    fold: FoldReport
    import_info: dict
    float_tensors: frozenset[str] = frozenset()  # non-constant float tensors (activations)
    # elementwise chains of one activation (GELU as Div/Erf/Add/Mul/Mul, SiLU as x * Sigmoid(x)): the chain's
    # output tensor -> (its one activation input, the chain's node names in order); the inner tensors are no
    # quant points (one rounding for the whole function; the integer format makes it one lookup table)
    chains: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    fallback: dict[str, OpFn] = field(default_factory=dict)  # node -> onnx2torch simulation (ops/fallback.py)
    merge_acts: dict[str, "FusedAct"] = field(default_factory=dict)  # Add/Sub/Sum node -> its fused Relu / Clip

    @property
    def fused_activations(self) -> dict[str, "FusedAct"]:
        """Every fused Relu / Clip, a layer's or an Add's: the node it is fused into -> ``FusedAct``."""
        return self._fused

    def unit_output(self, node: str, output: str) -> str:
        """The tensor that holds ``node``'s result once quantized: its fused activation's output, else
        ``output`` itself."""
        f = self._fused.get(node)
        return f.output if f is not None else output

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_digest", self._model_digest())
        fused = {x.name: FusedAct(x.name, x.act_node, x.act_bounds or (0.0, float("inf")), x.output)
                 for x in self.layers if x.act_node}
        object.__setattr__(self, "_fused", {**fused, **self.merge_acts})

    def _model_digest(self) -> bytes:
        return hashlib.sha256(self.model.SerializeToString()).digest()

    def check_unchanged(self) -> None:
        """Raise if the imported model was written to since import (it is the float graph of the run)."""
        if self._model_digest() != self._digest:
            raise RuntimeError("the imported graph was modified after import; stages must keep their state in "
                               "the simulation's QuantState (sim/state.py), not in the QGraph")

    def initializer(self, name: str) -> np.ndarray:
        """The float initializer ``name`` as a read-only array (copy it to change it)."""
        for init in self.model.graph.initializer:
            if init.name == name:
                arr = numpy_helper.to_array(init)
                arr.setflags(write=False)
                return arr
        raise KeyError(name)


def attrs_of(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _constant_value(name: str, inits: dict, const_nodes: dict) -> np.ndarray | None:
    if name in inits:
        return inits[name]
    if name in const_nodes:
        return const_nodes[name]
    return None


def fusable_activation(t: str, consumers: dict, graph_outputs: set, skip_nodes: frozenset, inits: dict,
                       const_nodes: dict) -> tuple[onnx.NodeProto, tuple[float, float]] | None:
    """The Relu, or Clip with constant bounds, that is the only consumer of ``t`` (not a graph output, not
    skipped), with its bounds (Relu: (0, inf)); None otherwise."""
    cons = consumers.get(t, [])
    if len(cons) != 1 or t in graph_outputs or cons[0].name in skip_nodes:
        return None
    c = cons[0]
    if c.op_type == "Relu":
        return c, (0.0, float("inf"))
    if c.op_type == "Clip":
        ca = attrs_of(c)
        lo = _constant_value(c.input[1], inits, const_nodes) if len(c.input) > 1 and c.input[1] else ca.get("min", -np.inf)
        hi = _constant_value(c.input[2], inits, const_nodes) if len(c.input) > 2 and c.input[2] else ca.get("max", np.inf)
        if lo is not None and hi is not None:
            return c, (float(np.asarray(lo)), float(np.asarray(hi)))
    return None


def topo_check(graph: onnx.GraphProto) -> None:
    """Every node input must be produced earlier, be a graph input or an initializer (no cycles)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    for n in graph.node:
        missing = [i for i in n.input if i not in known]
        if missing:
            raise ModelError(f"node {n.name!r} ({n.op_type}) reads {missing[0]!r}, which no earlier node produces "
                             "(dangling tensor or cycle); re-export or topologically sort the model")
        known.update(n.output)
    missing_out = [o.name for o in graph.output if o.name not in known]
    if missing_out:
        raise ModelError(f"graph output {missing_out[0]!r} is produced by no node")


def unshare_layer_initializers(g: onnx.GraphProto) -> None:
    """Give every Conv/Gemm/MatMul its own weight and bias initializers.

    Simplifiers deduplicate equal initializers (e.g. all-zero folded biases); a quantized layer
    needs its own copy, since its integers and scales are its own.
    """
    users: dict[str, int] = {}
    for n in g.node:
        for i in set(n.input):
            users[i] = users.get(i, 0) + 1
    by_name = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type not in LAYER_OPS:
            continue
        for k in (1, 2):
            if len(n.input) > k and n.input[k] in by_name and users[n.input[k]] > 1:
                old = n.input[k]
                new = f"{n.name}.{'weight' if k == 1 else 'bias'}"
                copy = onnx.TensorProto()
                copy.CopyFrom(by_name[old])
                copy.name = new
                g.initializer.append(copy)
                by_name[new] = copy
                users[old] -= 1
                n.input[k] = new


def add_zero_biases(g: onnx.GraphProto) -> list[str]:
    """Give each Conv and Gemm with a constant weight and no bias a zero bias (exact: adds nothing), so that
    bias correction (Nagel et al. 2019, Eq. 13) has an input to hold its shift. Returns the nodes changed."""
    inits = {i.name: i for i in g.initializer}
    changed = []
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if len(n.input) > 2 and n.input[2]:
            continue
        w = inits[n.input[1]]
        if n.op_type == "Conv":
            channels = w.dims[0]
        elif n.op_type == "ConvTranspose":
            channels = w.dims[1] * int(attrs_of(n).get("group", 1))
        else:
            attrs = attrs_of(n)
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            channels = w.dims[0] if attrs.get("transB", 0) else w.dims[1]
        name = f"{n.name}.bias_zero"
        g.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), name))
        while len(n.input) < 3:
            n.input.append("")
        n.input[2] = name
        changed.append(n.name)
    return changed


def constant_values(g: onnx.GraphProto) -> dict:
    """``Constant`` output -> its ``value`` attribute (a numpy array; None for the other value forms)."""
    return {n.output[0]: attrs_of(n).get("value") for n in g.node if n.op_type == "Constant"}


def _float_constants(g: onnx.GraphProto, const_nodes: dict | None = None
                     ) -> dict[str, tuple[int, tuple[int, ...], bool]]:
    """name -> (element type, shape, is an initializer) of the graph's float initializers and ``Constant``
    outputs (``const_nodes``: ``constant_values(g)`` where the caller has it)."""
    out = {i.name: (i.data_type, tuple(i.dims), True) for i in g.initializer if i.data_type in FLOAT_TYPES}
    for name, v in (constant_values(g) if const_nodes is None else const_nodes).items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            out[name] = (helper.np_dtype_to_tensor_dtype(v.dtype), v.shape, False)
    return out


def _fallback_fns(model: onnx.ModelProto, import_info: dict) -> dict[str, OpFn]:
    """node name -> onnx2torch's simulation of each node outside the op table (ops/fallback.py), listed in
    ``import_info["onnx2torch_nodes"]``; nodes neither can simulate raise UnsupportedOpError."""
    others = [n for n in model.graph.node if n.op_type != "Constant"
              and (n.op_type not in REGISTRY or n.domain not in ("", "ai.onnx"))]
    if not others:
        return {}
    o2t = Onnx2Torch(model)
    fns = {n.name: o2t.fn(n) for n in others}
    unknown = [(n.name, f"{n.op_type}: not in onnxptq's op table, and {o2t.reasons[n.name]}")
               for n in others if fns[n.name] is None]
    if unknown:
        raise UnsupportedOpError(unknown)
    import_info["onnx2torch_nodes"] = [n.name for n in others]
    return fns


def build_qgraph(model: onnx.ModelProto, fold: FoldReport, import_info: dict,
                 skip_nodes: frozenset[str] = frozenset()) -> QGraph:
    g = model.graph
    topo_check(g)
    missing_skips = sorted(set(skip_nodes) - {n.name for n in g.node})
    if missing_skips:
        raise ModelError(f"--skip-nodes names {missing_skips[:5]} which are not nodes of the (folded) graph; "
                         "run `onnxptq inspect` to list node names")

    unshare_layer_initializers(g)
    import_info["zero_bias_added"] = add_zero_biases(g)
    const_nodes = constant_values(g)
    routed = route_constant_operands(g, _float_constants(g, const_nodes), skip_nodes)
    if routed or "constant_operands" not in import_info:  # a rebuild (graph/rescale.py) finds them routed
        import_info["constant_operands"] = routed
    fallback = _fallback_fns(model, import_info)  # after unsharing: the converters see the final input names
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    elem_type: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        elem_type[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    for k, v in inits.items():
        shapes[k] = tuple(v.shape)

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = [o.name for o in g.output]
    inputs = [i.name for i in g.input if i.name not in inits]

    def is_float(t: str) -> bool:
        return elem_type.get(t, onnx.TensorProto.FLOAT) in FLOAT_TYPES and t not in inits and t not in const_nodes

    # ---- layers and fused activations
    layers: list[Layer] = []
    fused_inner: set[str] = set()  # raw outputs hidden inside a unit
    layer_of_node: dict[str, Layer] = {}
    float_reasons: dict[str, str] = {}  # weighted nodes kept float for a reason of their own
    for n in g.node:
        if n.op_type not in LAYER_OPS or n.name in skip_nodes or n.name in fallback:
            continue
        a = attrs_of(n)
        if n.op_type == "MatMul":
            if n.input[1] not in inits or inits[n.input[1]].ndim != 2 or n.input[0] in inits:
                continue
            w_name, b_name, axis = n.input[1], None, 1
        elif n.op_type == "Gemm":
            if n.input[1] not in inits or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                continue
            w_name, axis = n.input[1], 0 if a.get("transB", 0) else 1
            b_name = n.input[2] if len(n.input) > 2 and n.input[2] in inits else None
            if len(n.input) > 2 and n.input[2] and b_name is None:
                continue
        elif n.op_type == "ConvTranspose":
            # weights (C_in, C_out / group, k...): one output channel per index of axis 1 only without groups;
            # grouped ones are simulated by the own table in float (weights not quantized)
            if n.input[1] not in inits or int(a.get("group", 1)) != 1:
                if n.input[1] in inits:
                    float_reasons[n.name] = "a grouped ConvTranspose has no single output-channel axis to quantize " \
                                            "its weights on, so it stays float"
                continue
            w_name, axis = n.input[1], 1
            b_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
            if b_name is not None and b_name not in inits:
                continue
        else:
            if n.input[1] not in inits:
                continue
            w_name, axis = n.input[1], 0
            b_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
            if b_name is not None and b_name not in inits:
                continue
        if not is_float(n.input[0]):
            continue
        w = inits[w_name]
        if n.op_type == "Conv":
            macs = int(np.prod(w.shape))
            out_shape = shapes.get(n.output[0], ())
            if out_shape and all(d > 0 for d in out_shape[2:]):
                macs *= int(np.prod(out_shape[2:]))
        elif n.op_type == "ConvTranspose":  # every input position meets every weight once
            macs = int(np.prod(w.shape))
            in_shape = shapes.get(n.input[0], ())
            if in_shape and all(d > 0 for d in in_shape[2:]):
                macs *= int(np.prod(in_shape[2:]))
        else:
            macs = int(np.prod(w.shape))
        layer = Layer(name=n.name, op_type=n.op_type, input=n.input[0], weight=w_name, bias=b_name,
                      raw_output=n.output[0], output=n.output[0], weight_axis=axis, groups=int(a.get("group", 1)),
                      weight_shape=tuple(w.shape), macs_per_sample=macs,
                      bn_gamma=fold.gamma.get(n.name), bn_beta=fold.beta.get(n.name),
                      stride_area=int(np.prod(a.get("strides", [1]))) if n.op_type == "ConvTranspose" else 1)
        act = fusable_activation(n.output[0], consumers, set(graph_outputs), skip_nodes, inits, const_nodes)
        if act is not None:
            layer.act_node, layer.act_bounds, layer.output = act[0].name, act[1], act[0].output[0]
            fused_inner.add(n.output[0])
        layers.append(layer)
        layer_of_node[n.name] = layer

    # ---- Add / Sub / Sum of activations followed by Relu / Clip: one unit, quantized after the activation
    merge_acts: dict[str, FusedAct] = {}
    for n in g.node:
        if (n.name in skip_nodes or n.name in fallback or n.op_type not in ADD_OPS
                or len(n.output) != 1 or not is_float(n.output[0])
                or sum(1 for i in n.input if i and is_float(i)) < 2):
            continue
        act = fusable_activation(n.output[0], consumers, set(graph_outputs), skip_nodes, inits, const_nodes)
        if act is not None:
            merge_acts[n.name] = FusedAct(n.name, act[0].name, act[1], act[0].output[0])
            fused_inner.add(n.output[0])

    # ---- quant points and carried tensors
    quant_points: dict[str, QuantPoint] = {}
    source: dict[str, str] = {}
    for t in inputs:
        if is_float(t):
            quant_points[t] = QuantPoint(t, None, "input")
            source[t] = t
    fused_act_nodes = {layer.act_node for layer in layers if layer.act_node}
    merge_act_nodes = {m.act_node for m in merge_acts.values()}
    for n in g.node:
        if n.op_type == "Constant":
            continue
        for o in n.output:
            if not o or not is_float(o) or o in fused_inner:
                continue
            if n.op_type in CARRY_OPS and n.name not in fallback and REGISTRY[n.op_type].role_of(attrs_of(n)) == "carry":
                src = source.get(n.input[0])
                if src is not None:
                    source[o] = src
                    continue
            kind = "layer" if n.name in layer_of_node or n.name in fused_act_nodes else (
                "merge" if n.name in merge_act_nodes or (n.name not in fallback and REGISTRY[n.op_type].role == "merge")
                else "island")
            quant_points[o] = QuantPoint(o, n.name, kind)
            source[o] = o
    chains = elementwise_chains(g, quant_points, source, layer_of_node, fused_act_nodes | merge_act_nodes, inits,
                                const_nodes, is_float, set(graph_outputs), consumers)
    for qp in quant_points.values():
        qp.consumers = sorted({c.name for t, s in source.items() if s == qp.tensor for c in consumers.get(t, [])})

    unquantized_inputs = [layer.name for layer in layers if layer.input not in source]
    if unquantized_inputs:
        # A layer whose input stays float cannot run on integers: leave it float and say so.
        layers = [layer for layer in layers if layer.input in source]
    if unquantized_inputs or float_reasons:
        import_info["float_layers"] = unquantized_inputs + list(float_reasons)
        import_info["float_layer_reasons"] = float_reasons
    float_tensors = frozenset(t for n in g.node for t in n.output if t and is_float(t)) | frozenset(
        t for t in inputs if is_float(t))
    return QGraph(model=model, layers=layers, quant_points=quant_points, source=source, shapes=shapes,
                  inputs=inputs, outputs=graph_outputs, fold=fold, import_info=import_info,
                  float_tensors=float_tensors, chains=chains, fallback=fallback, merge_acts=merge_acts)


#: integer-lowering kinds of elementwise ops (one value in, one value out, given scalar constants)
_ELEMENTWISE_KINDS = ("lut", "add", "mul")


def elementwise_chains(g, quant_points: dict, source: dict, layer_of_node: dict, fused_act_nodes: set, inits: dict,
                       const_nodes: dict, is_float, graph_outputs: set, consumers: dict) -> dict:
    """Find chains of elementwise ops (scalar constants only) that compute a function of one activation ``x``
    and whose inner tensors feed only the chain; the inner tensors stop being quant points (``QGraph.chains``:
    chain output -> (x, node names in order))."""
    order = {n.name: k for k, n in enumerate(g.node)}
    producer = {o: n for n in g.node for o in n.output if o}
    root: dict[str, str] = {}  # elementwise output -> the one activation it is a function of
    acts: dict[str, list[str]] = {}  # elementwise output -> its activation inputs
    for n in g.node:
        spec = REGISTRY.get(n.op_type)
        outs = [o for o in n.output if o]
        if (spec is None or spec.lowering not in _ELEMENTWISE_KINDS or n.name in layer_of_node
                or n.name in fused_act_nodes or len(outs) != 1 or not is_float(outs[0])):
            continue
        act = [i for i in n.input if i and is_float(i)]
        values = [_constant_value(i, inits, const_nodes) for i in n.input if i and not is_float(i)]
        if not act or any(v is None or np.asarray(v).size != 1 for v in values):
            continue
        if any(i not in root and i not in source for i in act):
            continue
        roots = {root.get(i, i) for i in act}
        if len(roots) == 1:
            root[outs[0]] = roots.pop()
            acts[outs[0]] = act
    while True:  # inner: feeds only nodes of the same chain; every chain node reads only x or inner tensors
        inner = {t for t, r in root.items() if t not in graph_outputs and consumers.get(t) and all(
            any(o in root and root[o] == r for o in u.output) for u in consumers[t])}
        bad = [t for t in root if any(i != root[t] and i not in inner for i in acts[t])]
        if not bad:
            break
        for t in bad:
            root.pop(t)
    chains: dict[str, tuple[str, tuple[str, ...]]] = {}
    for t, r in root.items():
        if t in inner or not any(i in inner for i in acts[t]):
            continue
        names, todo = set(), [t]
        while todo:
            cur = todo.pop()
            names.add(producer[cur].name)
            todo += [i for i in acts[cur] if i in inner]
        chains[t] = (r, tuple(sorted(names, key=order.__getitem__)))
    for t in inner:
        quant_points.pop(t, None)
        source.pop(t, None)
    return chains


def topo_order_ok(graph: onnx.GraphProto) -> bool:
    """True when nodes are listed in a valid execution order (checked by ``topo_check``)."""
    try:
        topo_check(graph)
        return True
    except ModelError:
        return False


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes into a valid execution order (Kahn); models from some exporters are unsorted."""
    produced_by = {o: k for k, n in enumerate(graph.node) for o in n.output}
    nodes = list(graph.node)
    indeg = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in set(n.input):
            if i in produced_by:
                indeg[k] += 1
                users.setdefault(produced_by[i], []).append(k)
    ready = deque(k for k in range(len(nodes)) if indeg[k] == 0)
    order = []
    while ready:
        k = ready.popleft()
        order.append(k)
        for u in users.get(k, []):
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        stuck = next(nodes[k].name for k in range(len(nodes)) if indeg[k] > 0)
        raise ModelError(f"the graph has a cycle through node {stuck!r}; ONNX graphs must be acyclic")
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)
