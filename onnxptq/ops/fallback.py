"""onnx2torch as the fallback for ops outside the own table (registry.REGISTRY).

onnx2torch converts an ONNX graph node by node: its converter for (op type, opset version, domain) turns one
node into a torch module plus a mapping of which node inputs the module takes (constant inputs may be baked
into the module). Only that per-node module is borrowed here: the simulation keeps its own node loop and
tensor names, and feeds the module exactly the inputs its mapping asks for, in order.

A fallback op is an island (its output gets its own quant point) with no integer lowering.
"""
from __future__ import annotations

import inspect

import onnx
import torch

from .spec import OpFn

DOMAINS = ("", "ai.onnx")  # onnx2torch registers the default domain as ""


def _module_fn(module: torch.nn.Module, mapping_inputs: tuple[str, ...], node_inputs: list[str]) -> OpFn:
    """``fn(inputs, attrs)`` over the node's inputs (in node order) that calls ``module`` on the mapped ones."""
    params = tuple(inspect.signature(module.forward).parameters)
    missing = [i for i in mapping_inputs if i and i not in node_inputs]
    if missing:
        raise RuntimeError(f"onnx2torch maps inputs {missing} which the node does not read")

    def fn(inputs: list, attrs: dict) -> list[torch.Tensor]:
        del attrs  # baked into the module by the converter
        by_name = dict(zip(node_inputs, inputs))
        args = [by_name[i] if i else None for i in mapping_inputs]
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if device is not None:
            module.to(device)  # no-op when already there; the module's constants follow the simulation
        kwargs = {}
        if None in args:  # like onnx2torch.convert: omitted inputs after the first gap go by keyword
            k = args.index(None)
            kwargs = {p: a for p, a in zip(params[k:], args[k:]) if a is not None}
            args = args[:k]
        out = module(*args, **kwargs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return fn


class Onnx2Torch:
    """onnx2torch's per-node simulations for one model: ``fn(node)`` is built once per node and cached."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx2torch.onnx_graph import OnnxGraph

        self.graph = OnnxGraph(model.graph)
        self.opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        self._fns: dict[str, OpFn | None] = {}
        self.reasons: dict[str, str] = {}  # node name -> why onnx2torch cannot convert it

    def fn(self, node: onnx.NodeProto) -> OpFn | None:
        """The node's simulate callable from onnx2torch's converter; None when it has none for the op/version
        (the reason is kept in ``reasons``)."""
        if node.name not in self._fns:
            self._fns[node.name] = self._build(node)
        return self._fns[node.name]

    def _build(self, node: onnx.NodeProto) -> OpFn | None:
        from onnx2torch.node_converters.registry import get_converter
        from onnx2torch.onnx_node import OnnxNode

        domain = "" if node.domain in DOMAINS else node.domain
        version = self.opsets.get(domain)
        if version is None:
            self.reasons[node.name] = f"no onnx2torch converter either (the model imports no opset of domain {domain!r})"
            return None
        try:
            converter = get_converter(node.op_type, version, domain)
        except NotImplementedError:
            self.reasons[node.name] = f"onnx2torch has no converter for it either ({domain or 'ai.onnx'} opset {version})"
            return None
        try:
            module, mapping = converter(OnnxNode(node, unique_name=node.name), self.graph)
            module.eval().requires_grad_(False)
            return _module_fn(module, tuple(mapping.inputs), list(node.input))
        except Exception as e:  # converters raise NotImplementedError (and others) for unhandled attributes
            self.reasons[node.name] = f"onnx2torch's converter fails too ({type(e).__name__}: {str(e)[:160]})"
            return None

