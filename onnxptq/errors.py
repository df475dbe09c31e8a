"""User-facing errors: each says what is wrong, where (file, node, tensor) and what to do.

The CLI prints ``error: <message>`` and exits non-zero for these; anything else is a bug.
"""


class OnnxPtqError(Exception):
    """Base class of errors caused by the user's input, printed without a traceback."""

    exit_code = 2


class ModelError(OnnxPtqError):
    """The model file is missing, unreadable, not ONNX, or structurally invalid."""


class UnsupportedOpError(OnnxPtqError):
    """The graph holds an op the quantizer cannot simulate or export."""

    def __init__(self, nodes: list[tuple[str, str]], what: str = "simulate") -> None:
        listed = ", ".join(f"{name!r} ({op})" for name, op in nodes[:10])
        more = f" and {len(nodes) - 10} more" if len(nodes) > 10 else ""
        super().__init__(
            f"cannot {what} {len(nodes)} node(s): {listed}{more}. "
            "Remove or replace these ops, or exclude their region with --skip-nodes if they sit after a quantized layer."
        )
        self.nodes = nodes


class DataError(OnnxPtqError):
    """Calibration / evaluation data does not match the model's inputs."""


class ConfigError(OnnxPtqError):
    """An option value is invalid or options contradict each other."""


class OutputError(OnnxPtqError):
    """The output path cannot or must not be written."""
