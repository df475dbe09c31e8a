"""NumPy reference executor for (integer) ONNX models.

Imports only the standard library, NumPy and onnx. Usage::

    import runtime
    sess = runtime.Session("model.onnx")
    out = sess.run({"input": x})                 # graph outputs
    all_ = sess.run({"input": x}, keep=True)     # + every intermediate tensor
    runtime.run("model.onnx", {"input": x})      # one-shot

Semantics follow the ONNX operator specs exactly; where a spec leaves something open (integer
overflow, out-of-range float -> int Cast, QLinear requantization precision) the runtime does what
onnxruntime's CPU provider does, and the op's module docstring says so. Integer convolutions and
matrix products are exact (see :mod:`runtime.kernels`).
"""

from .errors import (
    InputError,
    ModelError,
    NodeExecutionError,
    RuntimeErrorBase,
    UnsupportedOpError,
)
from .ops import SUPPORTED_OPS
from .session import Session, run

__all__ = [
    "Session",
    "run",
    "SUPPORTED_OPS",
    "RuntimeErrorBase",
    "UnsupportedOpError",
    "InputError",
    "ModelError",
    "NodeExecutionError",
]
