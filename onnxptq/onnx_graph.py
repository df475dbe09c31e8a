"""Small pure-ONNX graph lookups shared by the importer and the deployment checks (no torch)."""
from __future__ import annotations

import onnx


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Every tensor name -> the nodes that read it, in node order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out
