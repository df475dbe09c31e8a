"""What the op family modules share: the OPS table they register their torch functions in, the
@op decorator, and small helpers (attribute ints, ONNX pads -> F.pad, ONNX -> torch dtypes)."""
from __future__ import annotations

from typing import Callable

import torch

OpFn = Callable[[list, dict], list]
OPS: dict[str, OpFn] = {}

ONNX_TO_TORCH_DTYPE = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
                       7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def op(*names: str):
    def register(fn: OpFn) -> OpFn:
        for n in names:
            OPS[n] = fn
        return fn
    return register


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def torch_pad(pads: list[int]) -> list[int]:
    """ONNX pads [b_0, ..., b_{n-1}, e_0, ..., e_{n-1}] -> F.pad's (b_last, e_last, ..., b_0, e_0)."""
    nd = len(pads) // 2
    out: list[int] = []
    for d in reversed(range(nd)):
        out += [pads[d], pads[nd + d]]
    return out
