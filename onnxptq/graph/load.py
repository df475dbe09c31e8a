"""Read an ONNX model (external data too), check it, infer shapes and simplify it.

Simplification uses onnxsim; when onnxsim fails (it does on some graphs), a built-in constant
folding pass (initializer-only subgraphs and static ``Shape`` results) takes over, so shape
arithmetic never reaches the quantizer.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import ModelError

log = logging.getLogger(__name__)

MIN_OPSET, TARGET_OPSET = 11, 17


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse an ONNX file, loading external tensor data from its folder."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"{p} is a directory; give the path of a .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ModelError(f"{p} is not a readable ONNX model ({type(e).__name__}: {str(e)[:200]}); "
                         "check that the file is complete and really an .onnx file") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{p} holds no ONNX graph (empty or not an ONNX file)")
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:
        raise ModelError(f"cannot load the external data of {p}: {e}. Keep the data files next to the model") from None
    return model


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("the model imports no default-domain (ai.onnx) opset")


def check(model: onnx.ModelProto) -> None:
    """onnx.checker on the in-memory model, with the failure turned into a user error."""
    try:
        onnx.checker.check_model(model)
    except ValueError:
        # Models above 2 GB cannot be checked in memory; they are rare for this tool.
        pass
    except onnx.checker.ValidationError as e:
        raise ModelError(f"the model is not valid ONNX: {str(e).splitlines()[0]}") from None
    if len(model.graph.input) == 0 or len(model.graph.output) == 0:
        raise ModelError("the model graph has no inputs or no outputs")
    if len(model.graph.node) == 0:
        raise ModelError("the model graph is empty (no nodes)")


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Bring old models to opset 13+ (axes as inputs, etc.) so the importer handles one form."""
    v = opset_of(model)
    if v < MIN_OPSET:
        raise ModelError(f"opset {v} is too old (need {MIN_OPSET} or newer); re-export the model")
    if v >= 13:
        return model
    try:
        return onnx.version_converter.convert_version(model, TARGET_OPSET)
    except Exception as e:
        raise ModelError(f"cannot convert opset {v} to {TARGET_OPSET}: {e}") from None


def set_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> None:
    """Fix input dims given by the user (e.g. --input-shape input:1,3,224,224); batch stays dynamic."""
    if not shapes:
        return
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    for name, dims in shapes.items():
        if name not in graph_inputs:
            raise ModelError(f"--input-shape names {name!r}, but the model inputs are {sorted(graph_inputs)}")
        tt = graph_inputs[name].type.tensor_type
        if len(tt.shape.dim) not in (0, len(dims)):
            raise ModelError(f"input {name!r} has rank {len(tt.shape.dim)}, --input-shape gives {len(dims)} dims")
        del tt.shape.dim[:]
        for i, d in enumerate(dims):
            dim = tt.shape.dim.add()
            if i == 0:
                dim.dim_param = "batch"
            else:
                dim.dim_value = int(d)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelError(f"ONNX shape inference failed: {str(e).splitlines()[0]}") from None


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim first; on failure, built-in constant folding. Returns the model and what was used."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model, skip_fuse_bn=True)
        if ok:
            return simplified, "onnxsim"
        log.warning("onnxsim could not validate its result; using built-in constant folding")
    except Exception as e:  # onnxsim raises many kinds of errors on exotic graphs
        log.warning("onnxsim failed (%s); using built-in constant folding", str(e).splitlines()[0][:200])
    return fold_constants(model), "constant-folding"


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate nodes whose inputs are all constants (and Shape of static tensors) with onnx.reference."""
    from onnx.reference import ReferenceEvaluator

    model = infer_shapes(model)
    g = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    static_shapes: dict[str, list[int]] = {}
    for vi in list(g.value_info) + list(g.input):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            static_shapes[vi.name] = [d.dim_value for d in dims]
    kept: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type == "Shape" and node.input[0] in static_shapes and not node.attribute:
            consts[node.output[0]] = np.array(static_shapes[node.input[0]], dtype=np.int64)
            continue
        if all((not i) or i in consts for i in node.input) and node.domain in ("", "ai.onnx"):
            try:
                sub = helper.make_graph(
                    [node], "fold", [],
                    [helper.make_tensor_value_info(o, 0, None) for o in node.output],
                    initializer=[numpy_helper.from_array(consts[i], i) for i in node.input if i],
                )
                outs = ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})
                for o, v in zip(node.output, outs):
                    consts[o] = np.asarray(v)
                continue
            except Exception:
                pass
        kept.append(node)
    used = {i for n in kept for i in n.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(kept)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    del g.value_info[:]
    return infer_shapes(model)

