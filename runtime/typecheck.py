"""Check a node's actual input/output dtypes against its ONNX schema's type constraints.

Done once per node and per distinct input-dtype signature (so it costs nothing in steady state).
Input violations are model errors (e.g. ``Add(int8, int32)``, ``Relu`` on int8 before opset 14);
output violations would be bugs in an op implementation and are reported as such.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx.defs
from onnx import TensorProto

from .dtypes import onnx_type
from .errors import ModelError, NodeExecutionError
from .ops import Node

_VARIADIC = onnx.defs.OpSchema.FormalParameterOption.Variadic


def _tstr(dtype: np.dtype) -> str:
    return f"tensor({TensorProto.DataType.Name(onnx_type(dtype)).lower()})"


class SchemaTypes:
    """Type constraints of one op schema version."""

    def __init__(self, op_type: str, opset: int, domain: str = "") -> None:
        self.schema = onnx.defs.get_schema(op_type, opset, domain)
        self.allowed = {c.type_param_str: set(c.allowed_type_strs) for c in self.schema.type_constraints}

    def _bind(
        self,
        formals: Sequence,
        dtypes: Sequence[np.dtype | None],
        binding: dict[str, str],
        what: str,
    ) -> list[str]:
        errors = []
        for i, dt in enumerate(dtypes):
            if dt is None:
                continue
            if not formals:
                break
            f = formals[min(i, len(formals) - 1)]
            if i >= len(formals) and f.option != _VARIADIC:
                errors.append(f"too many {what}s ({len(dtypes)})")
                break
            try:
                actual = _tstr(dt)
            except Exception:  # dtype unknown to onnx (e.g. object)
                errors.append(f"{what} {i}: dtype {dt} has no ONNX type")
                continue
            ts = f.type_str
            if ts in self.allowed:
                if actual not in self.allowed[ts]:
                    errors.append(
                        f"{what} {i} ({f.name}) has type {actual}, allowed for {ts}: "
                        + ", ".join(sorted(self.allowed[ts]))
                    )
                    continue
                homogeneous = f.option != _VARIADIC or f.is_homogeneous
                if homogeneous:
                    prev = binding.setdefault(ts, actual)
                    if prev != actual:
                        errors.append(f"{what} {i} ({f.name}) has type {actual} but {ts} is {prev}")
            elif ts != actual:
                errors.append(f"{what} {i} ({f.name}) has type {actual}, expected {ts}")
        return errors

    def check_inputs(self, node: Node, dtypes: Sequence[np.dtype | None]) -> dict[str, str]:
        binding: dict[str, str] = {}
        errors = self._bind(self.schema.inputs, dtypes, binding, "input")
        if errors:
            raise ModelError(
                f"node {node.name!r} (op {node.op_type}, opset {node.opset}): " + "; ".join(errors)
            )
        return binding

    def check_outputs(
        self, node: Node, binding: dict[str, str], dtypes: Sequence[np.dtype | None]
    ) -> None:
        errors = self._bind(self.schema.outputs, dtypes, dict(binding), "output")
        if errors:
            raise NodeExecutionError(
                node.name, node.op_type, "runtime produced a wrongly typed output: " + "; ".join(errors)
            )
