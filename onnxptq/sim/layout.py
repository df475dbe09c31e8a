"""Memory layout of the simulation's tensors: channels-last for 4-D tensors on CPU.

torch's CPU convolutions (depthwise ones most of all) run 2-3x faster on channels-last inputs, and a
convolution's output keeps its input's layout, so converting a model's (or a region's) 4-D inputs is enough for
the whole float or fake-quantized pass to run channels-last. The values are the same: only the order in memory
changes (a convolution may sum in another order, so results can differ in the last bits)."""
from __future__ import annotations

import torch


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D CPU tensor in the channels-last layout; other tensors unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and x.device.type == "cpu" else x

