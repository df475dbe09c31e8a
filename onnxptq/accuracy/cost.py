"""The cost of the changes: quantized-weight bytes (``mixed/budget.py``'s convention: bits / 8 per weight, a float
weight 4 bytes, biases not counted) and, optionally, the median latency in onnxruntime."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..config import QuantConfig
from ..deploy.latency import time_onnxruntime
from ..export.qdq import export_qdq
from ..graph.qgraph import QGraph
from ..mixed.budget import model_size_bytes
from ..sim.model import SimModel
from ..sim.state import QuantState
from ..targets import get_target

FLOAT_BITS = 32


def weight_bytes(qg: QGraph, state: QuantState) -> float:
    """Bytes of every layer's weights at its bits in ``state`` (a float layer: 4 bytes a weight)."""
    sizes = {x.name: int(np.prod(x.weight_shape)) for x in qg.layers}
    bits = {k: state.weight_params[k].grid.bits if k in state.weight_params else FLOAT_BITS for k in sizes}
    return model_size_bytes(sizes, bits)


def latency_ms(sim: SimModel, states: list[QuantState], cfg: QuantConfig, runs: int = 20) -> list[float]:
    """Median onnxruntime latency (batch 1, one thread) of the QDQ export of each state; ``sim`` is left holding
    the last state. The models are written to a temporary directory, never beside the output."""
    out = []
    with tempfile.TemporaryDirectory(prefix="onnxptq-latency-") as tmp:
        for k, state in enumerate(states):
            sim.load_state(state)
            path = Path(tmp) / f"model{k}.onnx"
            path.write_bytes(export_qdq(sim, cfg.opset, get_target(cfg.target)).SerializeToString())
            out.append(time_onnxruntime(path, 1, threads=1, runs=runs).median_ms)
    return out
