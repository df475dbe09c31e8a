"""Exceptions raised by the NumPy reference runtime.

All of them derive from :class:`RuntimeErrorBase`, so callers can catch the runtime's errors in one
clause while still telling the kinds apart.
"""

from __future__ import annotations


class RuntimeErrorBase(Exception):
    """Base class of every error raised by ``runtime``."""


class UnsupportedOpError(RuntimeErrorBase, NotImplementedError):
    """A node uses an op, domain, attribute value or input rank the runtime does not implement.

    Raised by :class:`runtime.Session` at load time whenever the node's attributes already show it,
    otherwise when the node runs. The message always names the node and its op type.
    """

    def __init__(self, node_name: str, op_type: str, detail: str = "") -> None:
        self.node_name = node_name
        self.op_type = op_type
        self.detail = detail
        msg = f"node {node_name!r} (op {op_type}) is not supported by runtime"
        super().__init__(msg + (f": {detail}" if detail else ""))


class InputError(RuntimeErrorBase, ValueError):
    """A feed is missing, unknown, or has the wrong dtype, rank or static shape."""

    def __init__(self, input_name: str, detail: str) -> None:
        self.input_name = input_name
        super().__init__(f"input {input_name!r}: {detail}")


class ModelError(RuntimeErrorBase, ValueError):
    """The model itself is malformed (cycle, undefined tensor, type-constraint violation, ...)."""


class NodeExecutionError(RuntimeErrorBase, RuntimeError):
    """An op failed while running; wraps the original exception with the node's identity."""

    def __init__(self, node_name: str, op_type: str, detail: str) -> None:
        self.node_name = node_name
        self.op_type = op_type
        super().__init__(f"node {node_name!r} (op {op_type}) failed: {detail}")
