"""Layer-input capture: the one way to see what each quantized layer consumes while a SimModel runs.

Calibration (input means for bias correction), ECAQ (activation samples) and Bit-Split (a layer's input
rows) install a callback for the duration of a ``with`` block; it is removed on exit, even when the
forward pass raises (e.g. a callback that stops the pass once it has what it needs).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from ..graph.qgraph import Layer
from .model import SimModel


@contextmanager
def layer_inputs(sim: SimModel, callback: Callable[[Layer, torch.Tensor], None]) -> Iterator[None]:
    """Call ``callback(layer, x)`` with the input ``x`` of every layer that runs inside the block, before
    the layer computes. Captures nest: an inner one runs after the outer ones."""
    sim._input_taps.append(callback)
    try:
        yield
    finally:
        sim._input_taps.remove(callback)
