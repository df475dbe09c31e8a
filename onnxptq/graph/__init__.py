"""ONNX -> QGraph: load, check, fold BatchNorm, simplify, place quantizers, partition."""
from __future__ import annotations

import os

from .fold import FoldReport, fold
from .qgraph import QGraph, build_qgraph, sort_topologically, topo_check, topo_order_ok
from .load import check, infer_shapes, read_model, set_input_shapes, simplify, upgrade_opset, opset_of
from .batch import NotProvable, check_free_batch, fixed_batch, free_batch
from .partition import GRANULARITIES, Region, partition


def import_model(path: str | os.PathLike, input_shapes: dict[str, list[int]] | None = None,
                 skip_nodes: frozenset[str] = frozenset(), simplify_model: bool = True) -> QGraph:
    """read -> check -> opset >= 13 -> fold BN (gamma kept) -> onnxsim -> fold again -> QGraph."""
    model = read_model(path)
    if not topo_order_ok(model.graph):
        sort_topologically(model.graph)  # a cycle raises here
        topo_check(model.graph)  # what sorting cannot mend: a tensor no node, initializer or input produces
    check(model)
    model = upgrade_opset(model)
    set_input_shapes(model, input_shapes)
    info = {"opset": opset_of(model), "simplifier": "none", "path": str(path)}
    model, report = fold(infer_shapes(model))
    if simplify_model:
        model, info["simplifier"] = simplify(model)
        model, again = fold(model)
        report.folded.update(again.folded)
        report.gamma.update(again.gamma)
        report.beta.update(again.beta)
        report.removed += again.removed
        report.unfolded_bn = again.unfolded_bn
        report.bn_as_conv += again.bn_as_conv
    model = infer_shapes(model)
    model, info["batch"] = _free_batch(model)
    return build_qgraph(model, report, info, frozenset(skip_nodes))


def _free_batch(model):
    """A symbolic batch for a fixed-batch graph where it is provably safe (graph/batch.py); what was done."""
    b = fixed_batch(model)
    if b is None:
        return model, {"fixed": None, "mode": "symbolic"}
    try:
        freed, rep = free_batch(model)
    except NotProvable as e:
        return model, {"fixed": b, "mode": "chunks", "reason": str(e)}
    problem = check_free_batch(model, freed, b)
    if problem is not None:
        return model, {"fixed": b, "mode": "chunks", "reason": f"the rewritten graph failed its check: {problem}"}
    return freed, {"fixed": b, "mode": "symbolic", "detail": rep.describe()}


__all__ = ["import_model", "QGraph", "Region", "partition", "GRANULARITIES", "FoldReport"]
