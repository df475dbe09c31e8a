"""After export: which layers the target's runtime leaves on float kernels, as warnings for the user."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from ..diagnostics import Diagnostics
from ..errors import ConfigError, ModelError
from ..targets import cpu_saturation_note, get_target
from .kernels import classify, openvino_available

log = logging.getLogger(__name__)

MAX_LISTED = 8


def _listed(layers) -> str:
    shown = [f"{lay.name}" + (f" ({lay.reason})" if lay.reason else "") for lay in layers[:MAX_LISTED]]
    more = f" and {len(layers) - MAX_LISTED} more" if len(layers) > MAX_LISTED else ""
    return "; ".join(shown) + more


def kernel_warnings(model: str | Path | onnx.ModelProto, target: str = "onnxruntime",
                    diagnostics: Diagnostics | None = None, proto: onnx.ModelProto | None = None) -> list[str]:
    """Warnings naming the layers that ``target``'s runtime runs on float kernels ([] if none); with
    ``diagnostics``, each such layer is also recorded there (kind ``float-kernel``, out of all layers).

    Creates a session (or compiles the model) only, runs no inference. A target with no runtime here
    (TensorRT, or OpenVINO when not installed) gives one note saying the check was not done. For onnxruntime,
    also the CPU saturation note (``targets.cpu_saturation_note``), read from ``proto`` when the caller holds
    the loaded model."""
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
        if proto is None:  # the caller's copy when it has one (``proto``): no second read of the file
            proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        note = cpu_saturation_note(proto)
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
