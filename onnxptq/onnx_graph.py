"""Small pure-ONNX graph lookups shared by the importer and the deployment checks (no torch)."""
from __future__ import annotations

import numpy as np
import onnx


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Every tensor name -> the nodes that read it, in node order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def random_feeds(model: onnx.ModelProto, n: int, seed: int = 0, int_high: int = 8) -> dict[str, np.ndarray]:
    """``n`` random samples for every graph input (initializers excluded) in the input's dtype: the first axis
    is ``n`` whatever the model says, other dynamic axes 1; floats standard normal, integers in [0, int_high)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        shape = [n, *dims[1:]] if dims else []
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        arr = rng.standard_normal(shape) if np.issubdtype(dtype, np.floating) else rng.integers(0, int_high, shape)
        out[vi.name] = arr.astype(dtype)
    return out
