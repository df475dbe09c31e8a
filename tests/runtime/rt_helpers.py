"""Small model builders and executors shared by the runtime tests."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

import runtime
from runtime.dtypes import onnx_type


def vi(name: str, dtype, shape=None) -> onnx.ValueInfoProto:
    t = dtype if isinstance(dtype, int) else onnx_type(np.dtype(dtype))
    return helper.make_tensor_value_info(name, t, shape)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 21,
) -> onnx.ModelProto:
    g = helper.make_graph(
        list(nodes),
        "g",
        list(inputs),
        list(outputs),
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10 if opset >= 21 else 8
    return m


def single(op: str, feeds: dict[str, np.ndarray], out_dtype, inits=None, opset=21, n_out=1, **attrs):
    """Model with one node whose inputs are ``feeds`` then ``inits`` (order of the dicts)."""
    inits = inits or {}
    names = list(feeds) + list(inits)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    odt = out_dtype if isinstance(out_dtype, (list, tuple)) else [out_dtype] * n_out
    return make_model(
        [node],
        [vi(k, v.dtype, list(v.shape)) for k, v in feeds.items()],
        [vi(o, d) for o, d in zip(outs, odt)],
        inits,
        opset,
    )


def run_rt(model, feeds, **kw) -> dict[str, np.ndarray]:
    return runtime.Session(model).run(feeds, **kw)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], extra: dict[str, np.dtype] | None = None):
    """Run with onnxruntime (CPU); ``extra`` adds intermediate tensors (name -> dtype) as outputs."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name, dt in (extra or {}).items():
        if name not in present:
            m.graph.output.append(vi(name, dt))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def run_ref(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: Sequence[str] | None = None):
    """Run with onnx.reference.ReferenceEvaluator (intermediates via ``names``)."""
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(model)
    names = list(names) if names is not None else [o.name for o in model.graph.output]
    return dict(zip(names, ev.run(names, feeds)))
