"""Rescale activation quant points through their neighbouring layers: an exact rewrite of the float graph.

A quant point ``t`` produced by one layer ``L`` (Conv/Gemm/MatMul with its fused Relu/Clip) and read only by
layers (directly or through ops that only move values: Reshape, Transpose, MaxPool, ...) can carry any positive
factor ``c``: ``L``'s weights and bias times ``c`` (and its Clip bounds: ``Clip(c x, c lo, c hi) = c Clip(x, lo,
hi)``) make ``t`` ``c`` times larger, and the reading layers' weights times ``1 / c`` undo it. The float model's
outputs are unchanged (up to float rounding of the rescaled weights).

What it is for (``calib/po2_rescale.py``): a power-of-two activation scale can only be ``2^k``, so at 4 bits a
tensor whose best scale lies between two powers loses resolution or range. Rescaling it by ``c`` puts its best
scale on ``2^k`` exactly; the layers around it take the factor into their per-channel weight scales.

Per channel (``channel_rescalable_points``): where every op between ``L`` and its readers acts channel by channel
and keeps the channel axis (a fused Relu, MaxPool, Identity, ...: ``f(c_k x_k) = c_k f(x_k)`` per channel ``k``)
and every reader is a Conv, ``c`` may be one factor per output channel of ``L``: ``L``'s weight and bias of
channel ``k`` times ``c_k``, the readers' weights of input channel ``k`` times ``1 / c_k`` (Nagel et al. 2019,
cross-layer equalization, with other factors). ``calib/po2_rescale.po2_equalize_factors`` chooses them so that
each weight channel's best scale is a power of two.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .qgraph import CARRY_OPS, Layer, QGraph, attrs_of, build_qgraph


@dataclass(frozen=True)
class Rescalable:
    """A quant point that can carry a factor, with the layers that take it."""

    point: str
    producer: str  # the layer whose unit output (after its fused Relu/Clip) is the point
    consumers: tuple[str, ...]  # the layers reading it (directly or through value-moving ops)
    path_ops: tuple[str, ...] = ()  # op types of the value-moving nodes between the producer and the readers


# value-moving ops that act on each channel alone and keep the channel axis (axis 1)
CHANNEL_OPS = frozenset({"Dropout", "Identity", "MaxPool", "GlobalMaxPool"})


def _moves_values(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is positively homogeneous in its data input: f(c x) = c f(x) for c > 0 (values moved,
    copied, max-pooled or linearly interpolated; a Pad that fills a non-zero constant is not)."""
    if node.op_type not in CARRY_OPS:
        return False
    if node.op_type == "Pad":
        return attrs_of(node).get("mode", b"constant") not in ("constant", b"constant") or len(node.input) < 3 \
            or not node.input[2]
    return True


def rescalable_points(qg: QGraph) -> dict[str, Rescalable]:
    """The quant points of ``qg`` that ``rescale`` can change (module doc), in graph order."""
    g = qg.model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_output = {x.output: x for x in qg.layers}
    by_node = {x.name: x for x in qg.layers}  # each has its own weight and bias (qgraph.unshare_layer_initializers)
    outputs = set(qg.outputs)
    found: dict[str, Rescalable] = {}
    for t in qg.quant_points:
        producer = by_output.get(t)
        if producer is None or t in qg.chains:
            continue
        readers: list[str] = []
        path: list[str] = []
        todo, ok = [t], True
        while todo and ok:
            x = todo.pop()
            if x in outputs:
                ok = False
                break
            for n in consumers.get(x, []):
                layer = by_node.get(n.name)
                if layer is not None and layer.input == x and list(n.input).count(x) == 1:
                    readers.append(layer.name)
                elif _moves_values(n) and n.input[0] == x and x not in n.input[1:] and \
                        all(qg.source.get(o) == t for o in n.output if o):
                    todo += [o for o in n.output if o]
                    path.append(n.op_type)
                else:
                    ok = False
                    break
        if ok and readers:
            found[t] = Rescalable(t, producer.name, tuple(readers), tuple(path))
    return found


def channel_rescalable_points(qg: QGraph) -> dict[str, Rescalable]:
    """The points of ``rescalable_points`` that can carry one factor per channel (module doc): the producer is a
    Conv with no fused activation or a Relu (a Clip has one bound for all channels), the ops on the way are
    ``CHANNEL_OPS`` and every reader is a Conv."""
    layers = {x.name: x for x in qg.layers}
    out = {}
    for t, r in rescalable_points(qg).items():
        prod = layers[r.producer]
        relu = prod.act_node is None or prod.act_bounds in (None, (0.0, float("inf")))
        if prod.op_type == "Conv" and relu and set(r.path_ops) <= CHANNEL_OPS and \
                all(layers[c].op_type == "Conv" for c in r.consumers):
            out[t] = r
    return out


def reader_multiplier(layer: Layer, w_shape: tuple[int, ...], inv: np.ndarray) -> np.ndarray:
    """The multiplier of a Conv reader's weight (shape ``w_shape``: out, in / groups, kernel...) for factors
    ``inv`` of its input channels: group ``g``'s outputs read input channels ``g * in/groups`` onwards."""
    cout, cin_g = w_shape[0], w_shape[1]
    per_group = cout // layer.groups
    m = np.repeat(np.asarray(inv, np.float64).reshape(layer.groups, 1, cin_g), per_group, axis=1)
    return m.reshape(cout, cin_g, *([1] * (len(w_shape) - 2)))


def rescale(qg: QGraph, factors: dict[str, float | np.ndarray], skip_nodes: frozenset[str] = frozenset(),
            record: str = "rescaled_points") -> QGraph:
    """A new QGraph computing the same function with quant point ``t`` multiplied by ``factors[t]`` (> 0), each
    a key of ``rescalable_points(qg)`` (module doc); a 1-D factor (one per output channel of the producer) needs
    a key of ``channel_rescalable_points(qg)``. ``qg`` is not changed; the folded BatchNorm gamma/beta of a
    producer scale with it (RAPQ's BN-based loss reads them). The new graph's ``import_info[record]`` lists the
    rescaled points."""
    cands = rescalable_points(qg)
    unknown = sorted(set(factors) - set(cands))
    if unknown:
        raise ValueError(f"quant points {unknown[:5]} cannot be rescaled (not produced by one layer and read by "
                         "layers only)")
    layers = {x.name: x for x in qg.layers}
    vectors = {t for t, c in factors.items() if np.ndim(c) > 0}
    if vectors:
        per_channel = channel_rescalable_points(qg)
        bad = sorted(vectors - set(per_channel))
        if bad:
            raise ValueError(f"quant points {bad[:5]} cannot take one factor per channel (module doc)")
        for t in vectors:
            if np.shape(factors[t]) != (layers[cands[t].producer].out_channels,):
                raise ValueError(f"quant point {t!r}: {np.shape(factors[t])} factors for "
                                 f"{layers[cands[t].producer].out_channels} channels")
    if any(not (np.all(np.asarray(c) > 0) and np.all(np.isfinite(c))) for c in factors.values()):
        raise ValueError("rescale factors must be positive and finite")
    model = onnx.ModelProto()
    model.CopyFrom(qg.model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    # weight multipliers, broadcast against each weight: a producer's per output channel, a reader's per input
    w_factor: dict[str, np.ndarray] = {}
    out_factor: dict[str, np.ndarray] = {}
    for t, c in factors.items():
        r = cands[t]
        c = np.asarray(c, np.float64)
        prod = layers[r.producer]
        shape = tuple(inits[prod.weight].dims)
        along = c.reshape([-1 if i == prod.weight_axis else 1 for i in range(len(shape))]) if c.ndim else c
        w_factor[r.producer] = w_factor.get(r.producer, 1.0) * along
        out_factor[r.producer] = c
        for name in r.consumers:
            reader = layers[name]
            inv = (reader_multiplier(reader, tuple(inits[reader.weight].dims), 1.0 / c) if c.ndim else 1.0 / c)
            w_factor[name] = w_factor.get(name, 1.0) * inv

    def scale_init(name: str, f) -> None:
        a = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array((a.astype(np.float64) * f).astype(a.dtype), name))

    nodes = {n.name: n for n in g.node}
    for layer in qg.layers:
        if layer.name in w_factor:
            scale_init(layer.weight, w_factor[layer.name])
        c = out_factor.get(layer.name)
        if c is None:
            continue
        if layer.bias:
            scale_init(layer.bias, c)
        act = nodes.get(layer.act_node) if layer.act_node else None
        if act is not None and act.op_type == "Clip" and c.ndim == 0:  # per channel: bounds 0 and inf only
            lo, hi = layer.act_bounds
            for k, v in ((1, lo), (2, hi)):
                if len(act.input) > k and act.input[k]:
                    name = f"{act.name}_bound{k}_rescaled"
                    g.initializer.append(numpy_helper.from_array(np.array(v * c, np.float32), name))
                    act.input[k] = name
    fold = dataclasses.replace(qg.fold, gamma=dict(qg.fold.gamma), beta=dict(qg.fold.beta))
    for name, c in out_factor.items():
        for d in (fold.gamma, fold.beta):
            if name in d:
                d[name] = (np.asarray(d[name], np.float64) * c).astype(np.asarray(d[name]).dtype)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)  # Clip bounds that no node reads any more
    info = dict(qg.import_info)
    out = build_qgraph(model, fold, info, frozenset(skip_nodes))
    info["zero_bias_added"] = qg.import_info.get("zero_bias_added")  # the import's, not this rebuild's (none)
    info[record] = sorted(factors)
    return out
