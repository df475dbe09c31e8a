"""Partition a QGraph into reconstruction regions (DESIGN.md section 5, BRECQ Sec. 3.2).

Cut tensors are the tensors every path from the input to the output passes through: in a
topologically ordered single-input graph, exactly the points where one tensor alone is live.
Segments between consecutive cuts hold whole residual blocks; runs of single-layer segments are
merged into blocks of 2-3 layers, guided by name scopes (``/features.3/...``) when present.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .qgraph import QGraph

GRANULARITIES = ("layer", "block", "stage", "net")
MAX_MERGED_LAYERS = 3
_LIST_INDEX = re.compile(r"\.\d+$")  # features.3, layer1.0, _blocks.5
_NUMBERED = re.compile(r"\d+$")  # layer1, conv1


@dataclass
class Region:
    name: str
    kind: str  # layer | block | stage | net
    nodes: list[str]  # node names, execution order
    layers: list[str]  # quantized layer names inside, execution order
    input: str  # tensor entering the region
    output: str  # tensor leaving the region
    children: list[str] = field(default_factory=list)  # block names inside a stage / net

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "input": self.input, "output": self.output,
                "layers": self.layers, "nodes": len(self.nodes), "children": self.children}


def find_cuts(qg: QGraph) -> list[tuple[int, str]]:
    """(node index, tensor) after which ``tensor`` is the only live float activation.

    Integer side tensors (e.g. ``Shape(input)`` feeding a late Reshape for a dynamic batch) carry
    no data to reconstruct and do not prevent a cut; region execution recomputes or caches them.
    """
    g = qg.model.graph
    last_use: dict[str, int] = {}
    for k, n in enumerate(g.node):
        for i in n.input:
            if i in qg.float_tensors:
                last_use[i] = k
    outputs = set(qg.outputs)
    live = {i for i in qg.inputs if i in last_use or i in outputs}
    cuts = []
    for k, n in enumerate(g.node):
        if n.op_type == "Constant":
            continue
        live.update(o for o in n.output if o in qg.float_tensors and (o in outputs or last_use.get(o, -1) > k))
        live = {t for t in live if t in outputs or last_use.get(t, -1) > k}
        if len(live) == 1:
            cuts.append((k, next(iter(live))))
    return cuts


def _scope(node_name: str) -> str | None:
    """The module-instance prefix of an exporter node name: ``/features/features.3/conv/...`` -> up to features.3."""
    parts = [p for p in node_name.split("/") if p][:-1]
    for pattern in (_LIST_INDEX, _NUMBERED):
        for k, p in enumerate(parts):
            if pattern.search(p):
                return "/" + "/".join(parts[: k + 1])
    return None


def _chunks(items: list, size: int = MAX_MERGED_LAYERS) -> list[list]:
    """Split into chunks of at most ``size`` items, avoiding a trailing chunk of one."""
    if len(items) <= size:
        return [items]
    out = [items[i:i + size] for i in range(0, len(items), size)]
    if len(out[-1]) == 1 and len(out[-2]) > 2:
        out[-1].insert(0, out[-2].pop())
    return out


def _segments(qg: QGraph) -> list[Region]:
    g = qg.model.graph
    names = [n.name for n in g.node]
    layer_names = {layer.name for layer in qg.layers}
    cuts = find_cuts(qg)
    segs: list[Region] = []
    start, src = 0, qg.inputs[0] if qg.inputs else ""
    for k, tensor in cuts + [(len(names) - 1, qg.outputs[0])]:
        if k < start:
            continue
        nodes = [g.node[j].name for j in range(start, k + 1) if g.node[j].op_type != "Constant"]
        if nodes:
            segs.append(Region("", "block", nodes, [n for n in nodes if n in layer_names], src, tensor))
        start, src = k + 1, tensor
    # Segments without a layer (pools, flatten, ...) join the segment before them.
    merged: list[Region] = []
    for s in segs:
        if merged and not s.layers:
            merged[-1].nodes += s.nodes
            merged[-1].output = s.output
        elif merged and not merged[-1].layers:
            s.nodes = merged[-1].nodes + s.nodes
            s.input = merged[-1].input
            merged[-1] = s
        else:
            merged.append(s)
    return merged


def _merge(parts: list[Region]) -> Region:
    return Region("", "block", [n for p in parts for n in p.nodes], [x for p in parts for x in p.layers],
                  parts[0].input, parts[-1].output)


def blocks(qg: QGraph) -> list[Region]:
    """Segments of one name scope merge (a Fire module's squeeze with its expands, the three convs of a
    MobileNetV2 block without shortcut); remaining runs of single-layer regions (stems, heads) merge
    into chunks of 2-3 layers."""
    groups: list[list[Region]] = []
    for s in _segments(qg):
        key = _scope(s.layers[0])
        same_scope = groups and key is not None and _scope(groups[-1][-1].layers[0]) == key
        # Exporter scopes may name a whole stage (/layers.8/...): never join two multi-layer segments.
        two_multi = same_scope and len(s.layers) > 1 and any(len(g.layers) > 1 for g in groups[-1])
        if same_scope and not two_multi:
            groups[-1].append(s)
        else:
            groups.append([s])
    out: list[Region] = []
    run: list[Region] = []
    for region in (_merge(g) for g in groups):
        if len(region.layers) == 1:
            run.append(region)
            continue
        out.extend(_merge(c) for c in (_chunks(run) if run else []))
        run = []
        out.append(region)
    out.extend(_merge(c) for c in (_chunks(run) if run else []))
    for k, r in enumerate(out):
        scope = _scope(r.layers[0]) if r.layers else None
        r.name = f"block{k}" + (f" {scope}" if scope else "")
    return out


def _spatial(qg: QGraph, tensor: str) -> tuple:
    shape = qg.shapes.get(tensor, ())
    return tuple(shape[2:]) if len(shape) > 2 else ()


def partition(qg: QGraph, granularity: str) -> list[Region]:
    """Regions at one granularity: layer | block | stage | net."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "layer":
        regs = []
        for layer in qg.layers:
            nodes = [layer.name] + ([layer.act_node] if layer.act_node else [])
            regs.append(Region(layer.name, "layer", nodes, [layer.name], layer.input, layer.output))
        return regs
    bl = blocks(qg)
    if granularity == "block":
        return bl
    if granularity == "net":
        net = _merge(bl)
        net.name, net.kind, net.children = "net", "net", [b.name for b in bl]
        return [net]
    stages: list[list[Region]] = []
    for b in bl:
        sp = _spatial(qg, b.output)
        if stages and (not sp or _spatial(qg, stages[-1][-1].output) == sp):
            stages[-1].append(b)
        else:
            stages.append([b])
    out = []
    for k, grp in enumerate(stages):
        st = _merge(grp)
        st.name, st.kind, st.children = f"stage{k}", "stage", [b.name for b in grp]
        out.append(st)
    return out
