"""Which layers of a model run on integer kernels in onnxruntime and OpenVINO, and why not.

A *layer* is a Conv/ConvTranspose/Gemm/MatMul whose weight is a constant in the given file (an
initializer, or a DequantizeLinear of one), or a ConvInteger/MatMulInteger of an integer model.
onnxruntime: the graph optimized at ORT_ENABLE_ALL on the CPU EP is saved to a temp dir and its nodes
mapped back to the layers by name (fused nodes keep the source name, plus a ``_token_N`` suffix).
OpenVINO: the compiled model's runtime graph; each op's ``originalLayersNames`` lists the source nodes
and ``runtimePrecision`` says u8/i8 (integer) or f32/bf16 (float).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from ..errors import ModelError
from ..onnx_graph import consumers_of

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INTEGER_MODEL_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")
ORT_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger", "QGemm",
                   "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "QAttention", "NhwcQLinearConv",
                   "QLinearConvTranspose", "DynamicQuantizeLSTM"}
ORT_FLOAT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv"}
OV_LAYER_TYPES = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}
OV_INTEGER_PRECISIONS = {"u8", "i8"}
OV_PRECISION_HINT = "f32"  # fixed: float layers in f32 even on CPUs where OpenVINO would pick bf16
_TOKEN = re.compile(r"(_token_\d+)+$")


@dataclass
class LayerKernel:
    """One layer of the source file and the kernel that runs it."""

    name: str  # node name in the source file
    op_type: str  # op in the source file
    integer: bool  # runs on an integer kernel
    kernel: str  # the runtime's op (onnxruntime op type, OpenVINO layerType/primitive), "" if not found
    reason: str = ""  # why it is float, when it can be told


@dataclass
class KernelReport:
    """Per-layer kernels of one model in one runtime."""

    runtime: str  # "onnxruntime" or "openvino"
    layers: list[LayerKernel] = field(default_factory=list)
    note: str = ""  # e.g. the precision hint used

    @property
    def float_layers(self) -> list[LayerKernel]:
        return [lay for lay in self.layers if not lay.integer]

    def count(self) -> str:
        """'k/n': layers on integer kernels out of all layers."""
        return f"{len(self.layers) - len(self.float_layers)}/{len(self.layers)}"

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "integer": self.count(), "note": self.note,
                "layers": [asdict(lay) for lay in self.layers]}


def load_model(path: str | Path) -> onnx.ModelProto:
    """The model without external data, or a ModelError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise ModelError(f"{p}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _is_constant(name: str, inits: set[str], prod: dict[str, onnx.NodeProto]) -> bool:
    """An initializer, a Constant, or a DequantizeLinear/QuantizeLinear/Transpose/Reshape/Cast/Identity chain
    over one."""
    seen = 0
    while name not in inits and seen < 4:
        node = prod.get(name)
        if node is None:
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear", "Transpose", "Reshape", "Cast", "Identity"):
            return False
        name, seen = node.input[0], seen + 1
    return name in inits


def source_layers(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> op type of the layers (constant weights) in execution order."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    prod = _producers(g)
    out = {}
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        if n.op_type in INTEGER_MODEL_OPS:
            out[name] = n.op_type
        elif n.op_type in LAYER_OPS and len(n.input) > 1:
            w = n.input[1]
            if n.op_type == "MatMul" and not _is_constant(w, inits, prod):
                w = n.input[0]
            if _is_constant(w, inits, prod):
                out[name] = n.op_type
    return out


def _init_dtype(name: str, g: onnx.GraphProto) -> int | None:
    return next((i.data_type for i in g.initializer if i.name == name), None)


def float_reason(model: onnx.ModelProto, name: str) -> str:
    """Why the QDQ pattern around layer ``name`` may not fuse to an integer kernel ('' if none seen): the
    structural reasons first (unquantized weights, a float producer, a Clip before the QuantizeLinear, a float
    consumer), then uint8 weights (onnxruntime's QGemm and OpenVINO's convolutions need int8 weights)."""
    g = model.graph
    node = next((n for n in g.node if n.name == name), None)
    if node is None or node.op_type not in LAYER_OPS:
        return ""
    prod, cons = _producers(g), consumers_of(g)
    w_idx = 1
    if node.op_type == "MatMul" and prod.get(node.input[1]) is None and node.input[1] not in {
            i.name for i in g.initializer}:
        w_idx = 0
    x_idx = 1 - w_idx if node.op_type == "MatMul" else 0
    w_dq = prod.get(node.input[w_idx])
    if w_dq is None or w_dq.op_type != "DequantizeLinear":
        return "weights not quantized"
    x_dq = prod.get(node.input[x_idx])
    if x_dq is None or x_dq.op_type != "DequantizeLinear":
        src = x_dq.op_type if x_dq is not None else "a graph input"
        return f"its input is not a DequantizeLinear output (float producer: {src})"
    after = cons.get(node.output[0], [])
    if not after:
        return "its output is a float graph output (no QuantizeLinear)"
    if len(after) == 1 and after[0].op_type in ("Clip", "Relu"):
        nxt = cons.get(after[0].output[0], [])
        if nxt and all(c.op_type == "QuantizeLinear" for c in nxt):
            return f"a {after[0].op_type} between the layer and its QuantizeLinear"
    if not all(c.op_type == "QuantizeLinear" for c in after):
        return f"its output is not quantized (consumed by {', '.join(sorted({c.op_type for c in after}))})"
    if _init_dtype(w_dq.input[0], g) == onnx.TensorProto.UINT8:
        return "uint8 weights"
    return ""


def _base_name(name: str) -> str:
    return _TOKEN.sub("", name)


CHAIN_OPS = ("BatchNormalization", "Relu", "Clip", "Add", "Mul", "QuantizeLinear", "DequantizeLinear")


def layer_chains(model: onnx.ModelProto, layers: dict[str, str]) -> dict[str, str]:
    """Node or tensor name -> layer, for the nodes a runtime fuses into a layer (its BN, ReLU/Clip, bias Add,
    output QuantizeLinear) and their outputs: runtimes rename fused nodes after them."""
    g = model.graph
    cons = consumers_of(g)
    by_name = {n.name: n for n in g.node}
    out: dict[str, str] = {}
    for name in layers:
        node = by_name.get(name)
        for _ in range(4):
            if node is None:
                break
            out.setdefault(node.name, name)
            out.setdefault(node.output[0], name)
            nxt = cons.get(node.output[0], [])
            if node.op_type == "QuantizeLinear" or len(nxt) != 1 or nxt[0].op_type not in CHAIN_OPS:
                break
            node = nxt[0]
    return out


def ort_session(path: str | Path, threads: int | None = None, optimized_path: Path | None = None):
    """An onnxruntime CPU session (ORT_ENABLE_ALL; ``threads`` intra-op threads, sequential), or a ModelError
    with the runtime's own message. ``optimized_path``: where onnxruntime writes its optimized graph."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # the NCHWc serialization warning is expected
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the runtime's message is the user's answer
        raise ModelError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:300]})") from None


def classify_onnxruntime(path: str | Path) -> KernelReport:
    """Kernels of the layers of ``path`` in onnxruntime (CPU EP, ORT_ENABLE_ALL); no inference is run."""
    model = load_model(path)
    layers = source_layers(model)
    with tempfile.TemporaryDirectory(prefix="onnxptq-kernels-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        ort_session(path, optimized_path=opt)
        optimized = onnx.load(str(opt), load_external_data=False)
    chains = layer_chains(model, layers)
    kernels: dict[str, str] = {}
    for n in optimized.graph.node:
        if n.op_type not in ORT_INTEGER_OPS and n.op_type not in ORT_FLOAT_OPS:
            continue
        base = _base_name(n.name)
        layer = base if base in layers else chains.get(base.removesuffix("_nchwc")) or next(
            (chains[o] for o in n.output if o in chains), None)
        if layer is not None and kernels.get(layer) not in ORT_INTEGER_OPS:  # an integer kernel wins
            kernels[layer] = n.op_type
    report = KernelReport("onnxruntime", note="CPU EP, ORT_ENABLE_ALL")
    for name, op in layers.items():
        k = kernels.get(name, "")
        integer = k in ORT_INTEGER_OPS
        reason = ""
        if not integer:
            reason = float_reason(model, name) or ("not found in the optimized graph" if not k else "")
            if k:
                reason = f"float {k}" + (f": {reason}" if reason else "")
        report.layers.append(LayerKernel(name, op, integer, k, reason))
    return report


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def compile_openvino(path: str | Path, threads: int | None = None):
    """An OpenVINO CPU compiled model at f32 inference precision, or a ModelError saying why not."""
    import openvino as ov

    cfg = {"INFERENCE_PRECISION_HINT": OV_PRECISION_HINT}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    try:
        return ov.Core().compile_model(str(path), "CPU", cfg)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: OpenVINO cannot load it ({str(e).strip().splitlines()[0][:300]})") from None


def _rt(info, key: str) -> str:
    v = info[key] if key in info else None
    return "" if v is None else (v.astype(str) if hasattr(v, "astype") else str(v))


def classify_openvino(path: str | Path) -> KernelReport:
    """Kernels of the layers of ``path`` in OpenVINO's CPU plugin (f32 precision hint); no inference."""
    model = load_model(path)
    layers = source_layers(model)
    compiled = compile_openvino(path)
    chains = layer_chains(model, layers)
    found: dict[str, tuple[str, str]] = {}  # layer -> (layerType/primitive, precision)
    weak: dict[str, tuple[str, str]] = {}  # matched through a fused BN/ReLU/QuantizeLinear name only
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        ltype = _rt(info, "layerType")
        if ltype not in OV_LAYER_TYPES:
            continue
        prec = _rt(info, "runtimePrecision")
        entry = (f"{ltype} {_rt(info, 'primitiveType')}".strip(), prec)
        for orig in _rt(info, "originalLayersNames").split(","):
            name = orig if orig in layers else orig.rsplit("/", 1)[0]
            if name in layers:
                if name not in found or prec in OV_INTEGER_PRECISIONS:
                    found[name] = entry
            elif orig in chains:
                weak.setdefault(chains[orig], entry)
    found = {**weak, **found}
    report = KernelReport("openvino", note=f"CPU plugin, INFERENCE_PRECISION_HINT {OV_PRECISION_HINT}")
    for name, op in layers.items():
        kernel, prec = found.get(name, ("", ""))
        integer = prec in OV_INTEGER_PRECISIONS
        reason = ""
        if not integer:
            reason = float_reason(model, name)
            reason = (f"{prec} {kernel}" + (f": {reason}" if reason else "")) if kernel else (
                reason or "not found in the runtime graph")
        report.layers.append(LayerKernel(name, op, integer, f"{kernel} {prec}".strip(), reason))
    return report


def classify(path: str | Path, runtime: str) -> KernelReport:
    """``classify_onnxruntime`` or ``classify_openvino`` by name."""
    if runtime == "onnxruntime":
        return classify_onnxruntime(path)
    if runtime == "openvino":
        return classify_openvino(path)
    raise ValueError(f"unknown runtime {runtime!r}")
