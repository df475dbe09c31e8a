"""Fixed-batch graphs: make the batch symbolic where that is provably safe.

Exporters often write the batch (usually 1) into the graph: the inputs' first dim, and shape constants
that onnxsim folds from it (``Reshape [1, 4, 16, 2100]``, ``Concat`` with a ``[1, 1, C]`` class token). Such a
graph cannot run a calibration batch. ``free_batch`` follows the batch from the inputs through the graph
(``BatchAxis``: which axis holds it, and how many per-sample rows are merged into that axis) and rewrites
what pins it:

- ``Reshape`` targets become ``[-1, d1, d2, ...]`` (the static per-sample dims), so a ``-1`` can never absorb
  the batch (``[1, 196, 4, -1]`` with 2 samples would otherwise silently mix them);
- ``Expand``/``Tile`` shapes keep the batch axis at 1 (broadcast);
- a constant concatenated with batched tensors is expanded to the batch with ``Shape``/``Expand`` nodes;
- the inputs' first dim becomes the symbolic ``batch``.

Any op that reads across the batch (an axis, reduction, Split or Slice over it; a convolution over a merged
batch; an op without a rule) makes the rewrite unprovable: ``free_batch`` raises ``NotProvable`` naming the
node, and the caller runs the graph in chunks of the fixed batch instead. A rewrite that succeeds is also
checked numerically (``check_free_batch``): two different samples in one batch give the outputs each
gives alone in the fixed-batch graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..onnx_graph import random_feeds
from .qgraph import attrs_of

PREFIX = "onnxptq_batch/"  # names of the nodes and constants the rewrite adds


class NotProvable(Exception):
    """The batch cannot be made symbolic at ``node``: ``reason``."""

    def __init__(self, node: onnx.NodeProto, reason: str) -> None:
        super().__init__(f"node {node.name!r} ({node.op_type}): {reason}")
        self.node, self.reason = node.name, reason


@dataclass(frozen=True)
class BatchAxis:
    axis: int  # the axis that holds the batch
    merged: int = 1  # per-sample rows merged into it (dim = batch * merged), e.g. 197 after Reshape [-1, 192]


@dataclass
class FreeBatchReport:
    batch: int  # the fixed batch of the original graph
    reshapes: int = 0
    expands: int = 0
    concat_constants: int = 0

    def describe(self) -> str:
        return (f"batch {self.batch} fixed in the graph made symbolic ({self.reshapes} Reshape targets, "
                f"{self.expands} Expand/Tile shapes, {self.concat_constants} concatenated constants rewritten)")


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The first dim shared by every graph input when all of them fix it; None when any is symbolic."""
    inits = {i.name for i in model.graph.initializer}
    dims = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = vi.type.tensor_type.shape.dim
        if not shape or not shape[0].HasField("dim_value"):
            return None
        dims.append(shape[0].dim_value)
    return dims[0] if dims and len(set(dims)) == 1 else None


# ops whose output keeps the input's batch axis unchanged, one data input (the others are constants or absent)
_SAME = {"Relu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Softplus", "Mish", "Gelu",
         "Erf", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Selu", "Celu", "Softsign",
         "ThresholdedRelu", "Identity", "Dropout", "Cast", "Not", "IsNaN", "IsInf", "Sign", "Round", "Sin", "Cos", "Tan",
         "Atan"}
# broadcasting elementwise ops (every input may carry the batch)
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual",
              "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu", "Mod", "Mean"}
# NCHW ops: the batch is axis 0 and must hold whole samples
_NCHW = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
         "InstanceNormalization", "GroupNormalization", "LpNormalization", "DepthToSpace", "SpaceToDepth", "Upsample"}
# ops with an ``axis`` attribute (default) that must not be the batch axis; output axis unchanged
_AXIS = {"Softmax": -1, "LogSoftmax": -1, "Hardmax": -1, "CumSum": None}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, batch: int) -> None:
        self.m, self.b = model, batch
        g = model.graph
        self.consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                v = attrs_of(n).get("value")
                if v is not None:
                    self.consts[n.output[0]] = np.asarray(v)
        self.shapes: dict[str, tuple] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        for k, v in self.consts.items():
            self.shapes[k] = tuple(v.shape)
        self.state: dict[str, BatchAxis] = {}
        self.report = FreeBatchReport(batch)
        self.new_inits: list[onnx.TensorProto] = []
        self.count = 0

    # ---------------------------------------------------------------- helpers
    def _name(self, what: str) -> str:
        self.count += 1
        return f"{PREFIX}{what}_{self.count}"

    def _const(self, value: np.ndarray, what: str) -> str:
        name = self._name(what)
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _shape(self, t: str, node) -> tuple:
        s = self.shapes.get(t)
        if s is None or any(d < 0 for d in s):
            raise NotProvable(node, f"the shape of {t!r} is not static")
        return s

    def _rank(self, t: str, node) -> int:
        s = self.shapes.get(t)
        if s is None:
            raise NotProvable(node, f"the rank of {t!r} is unknown")
        return len(s)

    def _batched(self, node) -> list[tuple[int, BatchAxis]]:
        return [(k, self.state[i]) for k, i in enumerate(node.input) if i and i in self.state]

    def _set_all(self, node, st: BatchAxis) -> None:
        for o in node.output:
            if o:
                self.state[o] = st

    @staticmethod
    def _axis(a, rank: int) -> int:
        return int(a) % rank if rank else 0

    # ---------------------------------------------------------------- rules
    def visit(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Rewrite ``node`` in place if needed; returns nodes to insert before it."""
        batched = self._batched(node)
        if not batched:
            return []
        op, a = node.op_type, attrs_of(node)
        first = batched[0][1]
        if op in _SAME:
            if any(k != 0 for k, _ in batched):
                raise NotProvable(node, "a batched tensor in a parameter input")
            self._set_all(node, first)
        elif op in _BROADCAST:
            return self._broadcast(node, batched)
        elif op in _NCHW:
            if len(batched) != 1 or batched[0][0] != 0 or first != BatchAxis(0):
                raise NotProvable(node, "the batch is not the first axis of whole samples")
            self._set_all(node, first)
        elif op == "BatchNormalization":  # inference BN: a per-channel affine (axis 1), rows independent
            if len(batched) != 1 or batched[0][0] != 0 or first.axis != 0:
                raise NotProvable(node, "the batch is not the first axis")
            self._set_all(node, first)
        elif op in _AXIS or op in ("LayerNormalization",):
            rank = self._rank(node.input[0], node)
            if op == "LayerNormalization":
                start = self._axis(a.get("axis", -1), rank)
                if first.axis >= start:
                    raise NotProvable(node, "normalizes over the batch axis")
            else:
                default = _AXIS[op]
                ax = a.get("axis", default) if default is not None else int(self.consts[node.input[1]])
                if self._axis(ax, rank) == first.axis:
                    raise NotProvable(node, "works along the batch axis")
            self._set_all(node, first)
        elif op in _REDUCE:
            self._reduce(node, first, a)
        elif op in ("MatMul", "Gemm"):
            self._matmul(node, batched, a)
        elif op == "Reshape":
            self._reshape(node, first)
        elif op == "Flatten":
            rank = self._rank(node.input[0], node)
            ax = int(a.get("axis", 1))
            ax = ax + rank if ax < 0 else ax  # Flatten's axis runs over [-rank, rank]: rank flattens everything
            if first.axis != 0 or ax == 0:
                raise NotProvable(node, "flattens the batch into another axis")
            merged = first.merged * int(np.prod(self._shape(node.input[0], node)[1:ax]))
            self.state[node.output[0]] = BatchAxis(0, merged)
        elif op == "Transpose":
            rank = self._rank(node.input[0], node)
            perm = list(a.get("perm") or reversed(range(rank)))
            self.state[node.output[0]] = BatchAxis(perm.index(first.axis), first.merged)
        elif op in ("Squeeze", "Unsqueeze"):
            self._squeeze(node, first, a)
        elif op in ("Concat",):
            return self._concat(node, batched, a)
        elif op == "Split":
            rank = self._rank(node.input[0], node)
            if self._axis(a.get("axis", 0), rank) == first.axis or batched[0][0] != 0:
                raise NotProvable(node, "splits along the batch axis")
            self._set_all(node, first)
        elif op == "Slice":
            self._slice(node, first)
        elif op == "Gather" and [k for k, _ in batched] == [1]:  # a table looked up by batched ids (embeddings)
            ax = self._axis(a.get("axis", 0), self._rank(node.input[0], node))
            self.state[node.output[0]] = BatchAxis(ax + first.axis, first.merged)
        elif op in ("Gather", "GatherElements"):
            if batched[0][0] != 0 or len(batched) != 1:
                raise NotProvable(node, "batched indices")
            rank = self._rank(node.input[0], node)
            ax = self._axis(a.get("axis", 0), rank)
            if ax == first.axis:
                raise NotProvable(node, "gathers along the batch axis")
            if op == "Gather" and ax < first.axis:
                irank = self._rank(node.input[1], node)
                self.state[node.output[0]] = BatchAxis(first.axis - 1 + irank, first.merged)
            else:
                self.state[node.output[0]] = first
        elif op in ("Expand", "Tile"):
            self._expand(node, batched)
        elif op == "Pad":
            pads = self.consts.get(node.input[1]) if len(node.input) > 1 else None
            if pads is None or len(node.input) > 3 and node.input[3]:
                raise NotProvable(node, "pads are not constant")
            rank = len(pads) // 2
            if pads[first.axis] or pads[rank + first.axis]:
                raise NotProvable(node, "pads the batch axis")
            self._set_all(node, first)
        elif op == "Resize":
            if first != BatchAxis(0) or batched[0][0] != 0:
                raise NotProvable(node, "the batch is not the first axis of whole samples")
            sizes = node.input[3] if len(node.input) > 3 else ""
            if sizes:
                raise NotProvable(node, "output sizes fixed in the graph (scales would free the batch)")
            self._set_all(node, first)
        elif op == "Shape":
            pass  # a shape computed at run time follows the batch by itself
        else:
            raise NotProvable(node, "no batch rule for this op")
        return []

    def _broadcast(self, node, batched) -> list:
        rank = self._rank(node.output[0], node)
        target = None
        for k, st in batched:
            pos = st.axis + rank - self._rank(node.input[k], node)
            if target is not None and (pos, st.merged) != target:
                raise NotProvable(node, "its inputs hold the batch in different axes")
            target = (pos, st.merged)
        pos = target[0]
        for k, i in enumerate(node.input):
            if not i or i in self.state:
                continue
            s = self.shapes.get(i)
            if s is None:
                raise NotProvable(node, f"unknown shape of {i!r}")
            own = pos - (rank - len(s))
            if own >= 0 and s[own] != 1:
                raise NotProvable(node, f"{i!r} has {s[own]} rows along the batch axis and would not broadcast")
        self._set_all(node, BatchAxis(pos, target[1]))
        return []

    def _reduce(self, node, first: BatchAxis, a: dict) -> None:
        rank = self._rank(node.input[0], node)
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [a.get("axis", 0)]
        else:
            axes = a.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                if node.input[1] not in self.consts:
                    raise NotProvable(node, "axes are not constant")
                axes = self.consts[node.input[1]].tolist()
            if not axes:
                raise NotProvable(node, "reduces over every axis, the batch included")
        axes = sorted(self._axis(x, rank) for x in axes)
        if first.axis in axes:
            raise NotProvable(node, "reduces over the batch axis")
        keep = a.get("keepdims", 1)
        self.state[node.output[0]] = first if keep else BatchAxis(first.axis - sum(x < first.axis for x in axes),
                                                                  first.merged)

    def _matmul(self, node, batched, a: dict) -> None:
        if node.op_type == "Gemm":
            if batched[0][0] != 0 or len(batched) != 1 or a.get("transA", 0) or batched[0][1].axis != 0:
                raise NotProvable(node, "Gemm with the batch outside A's rows")
            self.state[node.output[0]] = batched[0][1]
            return
        ra, rb = self._rank(node.input[0], node), self._rank(node.input[1], node)
        ro = self._rank(node.output[0], node)
        target = None
        for k, st in batched:
            r = ra if k == 0 else rb
            if (k == 1 and st.axis >= r - 2) or (k == 0 and st.axis == r - 1) or r < 2:
                raise NotProvable(node, "the batch lies in a contracted or column axis")
            pos = st.axis + ro - r
            if target is not None and (pos, st.merged) != target:
                raise NotProvable(node, "its inputs hold the batch in different axes")
            target = (pos, st.merged)
        if len(batched) == 1 and batched[0][0] == 0 and rb > 2 and batched[0][1].axis < ra - 2:
            s = self.shapes.get(node.input[1])
            own = target[0] - (ro - rb)
            if s is None or own >= 0 and s[own] != 1:
                raise NotProvable(node, "a constant batch operand does not broadcast over the batch")
        self.state[node.output[0]] = BatchAxis(*target)

    def _reshape(self, node, first: BatchAxis) -> None:
        shape_in = self._shape(node.input[0], node)
        if any(shape_in[d] != 1 for d in range(first.axis)):
            raise NotProvable(node, "the batch is not the outermost factor of its input")
        out = self.shapes.get(node.output[0])
        if out is None or any(d < 0 for d in out) or not out:
            raise NotProvable(node, "the output shape is not static")
        if out[0] % self.b:
            raise NotProvable(node, f"the first output dim {out[0]} is not a multiple of the batch {self.b}")
        target = np.array([-1, *out[1:]], dtype=np.int64)
        old = self.consts.get(node.input[1])
        if old is None or not np.array_equal(old, target):
            node.input[1] = self._const(target, "reshape")
            self.report.reshapes += 1
        self.state[node.output[0]] = BatchAxis(0, out[0] // self.b)

    def _squeeze(self, node, first: BatchAxis, a: dict) -> None:
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.consts[node.input[1]].tolist() if node.input[1] in self.consts else None
        if axes is None:
            raise NotProvable(node, "axes are not constant")
        if node.op_type == "Squeeze":
            rank = self._rank(node.input[0], node)
            axes = [self._axis(x, rank) for x in axes]
            if first.axis in axes:
                raise NotProvable(node, "squeezes the batch axis")
            self.state[node.output[0]] = BatchAxis(first.axis - sum(x < first.axis for x in axes), first.merged)
        else:
            rank = self._rank(node.output[0], node)
            axis = first.axis
            for x in sorted(self._axis(x, rank) for x in axes):
                if x <= axis:
                    axis += 1
            self.state[node.output[0]] = BatchAxis(axis, first.merged)

    def _concat(self, node, batched, a: dict) -> list:
        rank = self._rank(node.output[0], node)
        ax = self._axis(a["axis"], rank)
        sts = {st for _, st in batched}
        if len(sts) != 1:
            raise NotProvable(node, "its inputs hold the batch in different axes")
        st = sts.pop()
        if ax == st.axis:
            raise NotProvable(node, "concatenates along the batch axis")
        peer = node.input[batched[0][0]]
        added: list[onnx.NodeProto] = []
        for k, i in enumerate(node.input):
            if not i or i in self.state:
                continue
            s = self.shapes.get(i)
            if s is None or len(s) != rank or s[st.axis] != 1 or st.merged != 1:
                raise NotProvable(node, f"cannot expand {i!r} to the batch")
            # Expand(const, [1, .., batch, .., 1]) with the batch read from a batched peer at run time
            peer_shape, batch_dim = self._name("peer_shape"), self._name("batch_dim")
            added.append(helper.make_node("Shape", [peer], [peer_shape], name=peer_shape))
            added.append(helper.make_node("Gather", [peer_shape, self._const(np.array([st.axis], np.int64), "axis")],
                                          [batch_dim], name=batch_dim, axis=0))
            ones_before = self._const(np.ones(st.axis, np.int64), "ones")
            ones_after = self._const(np.ones(rank - st.axis - 1, np.int64), "ones")
            shape = self._name("expand_shape")
            added.append(helper.make_node("Concat", [ones_before, batch_dim, ones_after], [shape], name=shape, axis=0))
            expanded = self._name("expanded")
            added.append(helper.make_node("Expand", [i, shape], [expanded], name=expanded))
            node.input[k] = expanded
            self.report.concat_constants += 1
        self.state[node.output[0]] = st
        return added

    def _slice(self, node, first: BatchAxis) -> None:
        if node.input[0] not in self.state or any(i in self.state for i in node.input[1:]):
            raise NotProvable(node, "batched slice bounds")
        rank = self._rank(node.input[0], node)
        starts = self.consts.get(node.input[1])
        ends = self.consts.get(node.input[2])
        axes = self.consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None):
            raise NotProvable(node, "slice bounds are not constant")
        axes = list(range(len(starts))) if axes is None else [self._axis(x, rank) for x in axes.tolist()]
        if first.axis in axes:
            k = axes.index(first.axis)
            dim = self._shape(node.input[0], node)[first.axis]
            steps = self.consts.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
            full = int(starts[k]) in (0, -dim) and int(ends[k]) >= dim and (steps is None or int(steps[k]) == 1)
            if not full:
                raise NotProvable(node, "slices the batch axis")
        self.state[node.output[0]] = first

    def _expand(self, node, batched) -> None:
        if batched[0][0] != 0 or len(batched) != 1:
            raise NotProvable(node, "a batched shape")
        first = batched[0][1]
        shape = self.consts.get(node.input[1])
        if shape is None:
            raise NotProvable(node, "the shape is not constant")
        rank_in = self._rank(node.input[0], node)
        rank_out = max(rank_in, len(shape)) if node.op_type == "Expand" else rank_in
        pos = first.axis + rank_out - rank_in
        own = pos - (rank_out - len(shape))
        if own >= 0 and int(shape[own]) != 1:
            new = shape.copy()
            new[own] = 1
            node.input[1] = self._const(new.astype(np.int64), node.op_type.lower())
            self.report.expands += 1
        self.state[node.output[0]] = BatchAxis(pos, first.merged)


def free_batch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FreeBatchReport | None]:
    """A copy of ``model`` with a symbolic batch, or ``(model, None)`` when the batch is not fixed.

    Raises ``NotProvable`` when a node would read across the batch (see the module docstring)."""
    b = fixed_batch(model)
    if b is None:
        return model, None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rw = _Rewriter(m, b)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name not in inits:
            rw.state[vi.name] = BatchAxis(0)
    nodes: list[onnx.NodeProto] = []
    for node in m.graph.node:
        nodes.extend(rw.visit(node))
        nodes.append(node)
    for o in m.graph.output:
        st = rw.state.get(o.name)
        if st is None or st.axis != 0 or st.merged != 1:
            raise NotProvable(next(n for n in m.graph.node if o.name in n.output),
                              f"graph output {o.name!r} does not hold whole samples along its first axis")
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(rw.new_inits)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name not in inits:
            d = vi.type.tensor_type.shape.dim[0]
            d.ClearField("dim_value")
            d.dim_param = "batch"
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    return m, rw.report


def check_free_batch(fixed: onnx.ModelProto, freed: onnx.ModelProto, batch: int) -> str | None:
    """None when two batches of samples run together in ``freed`` give what each gives alone in ``fixed``
    (onnxruntime); else what differs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    opts = dict(sess_options=so, providers=["CPUExecutionProvider"])
    try:
        s_fixed = ort.InferenceSession(fixed.SerializeToString(), **opts)
        s_free = ort.InferenceSession(freed.SerializeToString(), **opts)
        feeds = random_feeds(fixed, 2 * batch, int_high=2)  # int inputs in {0, 1}: valid ids and masks
        alone = [s_fixed.run(None, {k: v[i * batch:(i + 1) * batch] for k, v in feeds.items()}) for i in range(2)]
        together = s_free.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - any failure means: not shown safe
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    for k, out in enumerate(together):
        ref = np.concatenate([a[k] for a in alone])
        if ref.shape != out.shape:
            return f"output {k} has shape {out.shape}, expected {ref.shape}"
        if np.issubdtype(ref.dtype, np.floating):
            tol = 1e-4 * (1.0 + float(np.nanmax(np.abs(ref))) if ref.size else 1.0)
            bad = ~np.isclose(out, ref, rtol=0, atol=tol, equal_nan=True)
        else:
            bad = out != ref
        if bad.any():
            return f"output {k} differs in {int(bad.sum())} of {bad.size} values"
    return None


def restore_batch(model: onnx.ModelProto, batch: int) -> None:
    """Fix the first dim of the graph inputs and outputs to ``batch`` again (the exported model keeps the
    user's interface); the symbolic Reshape targets stay valid."""
    inits = {i.name for i in model.graph.initializer}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in inits or not vi.type.tensor_type.HasField("shape") or not vi.type.tensor_type.shape.dim:
            continue
        d = vi.type.tensor_type.shape.dim[0]
        if d.HasField("dim_param") and d.dim_param == "batch":
            d.ClearField("dim_param")
            d.dim_value = batch
