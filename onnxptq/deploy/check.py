"""After export: which layers the target's runtime leaves on float kernels, as warnings for the user."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..diagnostics import Diagnostics
from ..errors import ConfigError, ModelError
from ..targets import cpu_flags, cpu_has_vnni, get_target
from .kernels import classify, openvino_available

log = logging.getLogger(__name__)

MAX_LISTED = 8


def _listed(layers) -> str:
    shown = [f"{lay.name}" + (f" ({lay.reason})" if lay.reason else "") for lay in layers[:MAX_LISTED]]
    more = f" and {len(layers) - MAX_LISTED} more" if len(layers) > MAX_LISTED else ""
    return "; ".join(shown) + more


PAIR_SAFE = 2**15 - 1  # AVX2 u8 x s8 (vpmaddubsw) sums pairs of products in int16 (export/intplan.py)


def saturating_u8s8_node(model: onnx.ModelProto) -> str | None:
    """The first layer that onnxruntime runs as uint8 x int8 with weights wide enough for a pair of products to
    pass int16 (255 * 2 |w| > 2^15 - 1, i.e. beyond 7 bits): QDQ (DequantizeLinear of uint8 activations and of an
    int8 weight initializer into Conv/ConvTranspose/Gemm/MatMul) or the integer format (QLinearConv/QLinearMatMul);
    None if there is none."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def dq_of(t: str, elem: int):
        n = producer.get(t)
        if n is None or n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            return None
        return n if inits[n.input[2]].data_type == elem else None

    def wide(w) -> bool:
        return 255 * 2 * int(np.abs(numpy_helper.to_array(w).astype(np.int32)).max(initial=0)) > PAIR_SAFE

    U8, S8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1:
            wdq = dq_of(n.input[1], S8)
            if wdq is not None and wdq.input[0] in inits and dq_of(n.input[0], U8) is not None \
                    and wide(inits[wdq.input[0]]):
                return n.name
        elif n.op_type in ("QLinearConv", "QLinearMatMul") and len(n.input) > 3:
            x_zp, w = inits.get(n.input[2]), inits.get(n.input[3])
            if x_zp is not None and w is not None and x_zp.data_type == U8 and w.data_type == S8 and wide(w):
                return n.name
    return None


def cpu_saturation_note(model: onnx.ModelProto, flags: set[str] | None = None) -> str:
    """A note when onnxruntime on this CPU (x86 without VNNI) saturates one of ``model``'s uint8 x int8 layers
    (onnxruntime's documented AVX2 limit): outputs measured here are then off although the file is exact on VNNI
    and ARM CPUs. Empty otherwise."""
    flags = cpu_flags() if flags is None else flags
    if cpu_has_vnni(flags) or not {"sse2", "avx2"} & flags:
        return ""
    node = saturating_u8s8_node(model)
    if node is None:
        return ""
    return (f"layer {node!r} multiplies uint8 by int8 weights beyond 7 bits, which onnxruntime saturates on x86 CPUs "
            "without VNNI such as this one, so outputs measured here may be off; the file is exact on VNNI and "
            "ARM CPUs. To deploy on x86 without VNNI, quantize with --target onnxruntime-avx2 (7-bit weights)")


def kernel_warnings(model: str | Path | onnx.ModelProto, target: str = "onnxruntime",
                    diagnostics: Diagnostics | None = None) -> list[str]:
    """Warnings naming the layers that ``target``'s runtime runs on float kernels ([] if none); with
    ``diagnostics``, each such layer is also recorded there (kind ``float-kernel``, out of all layers).

    Creates a session (or compiles the model) only, runs no inference. A target with no runtime here
    (TensorRT, or OpenVINO when not installed) gives one note saying the check was not done."""
    try:
        runtime = get_target(target).runtime  # targets.py: the runtime that stands for this target here
    except ConfigError:
        return [f"integer-kernel check skipped: unknown target {target!r}"]
    if runtime is None:
        return [f"integer-kernel check skipped: no {target} runtime here; check the engine's layer precisions "
                "(e.g. trtexec --verbose)"]
    if runtime == "openvino" and not openvino_available():
        return ["integer-kernel check skipped: OpenVINO is not installed (pip install openvino)"]
    with tempfile.TemporaryDirectory(prefix="onnxptq-check-") as tmp:
        path = model
        if isinstance(model, onnx.ModelProto):
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
        try:
            report = classify(path, runtime)
        except ModelError as e:
            return [f"integer-kernel check failed: {e}"]
    floats = report.float_layers
    warnings = []
    if runtime == "onnxruntime":
        note = cpu_saturation_note(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
        if note:  # a property of this CPU, not of the file: a warning, not a fallback
            log.warning(note)
            warnings.append(note)
    if diagnostics is not None:
        diagnostics.totals["float-kernel"] = len(report.layers)
        for lay in floats:
            diagnostics.add("float-kernel", lay.name, f"{runtime} runs it on a float kernel"
                            + (f" ({lay.reason})" if lay.reason else ""), quiet=True)
    if not floats:
        return warnings
    msg = (f"{runtime} ({report.note}) runs {len(floats)} of {len(report.layers)} layers on float kernels: "
           f"{_listed(floats)}")
    log.warning(msg)
    return warnings + [msg]
