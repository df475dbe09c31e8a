"""Latency of one model in onnxruntime (CPU EP, ORT_ENABLE_ALL) or OpenVINO (CPU, f32 precision hint).

Random inputs of the model's own shapes (the batch axis set to ``batch`` where it is dynamic); the
first ``warmup`` runs are discarded; the min and median of ``runs`` timed runs are reported.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..errors import ConfigError
from ..onnx_graph import random_feeds
from .kernels import compile_openvino, load_model, ort_session

@dataclass
class Timing:
    """Milliseconds per run of one model at one batch size in one runtime."""

    runtime: str
    batch: int
    min_ms: float
    median_ms: float
    runs: int


def random_inputs(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the model's shapes: a dynamic first axis becomes ``batch``, other dynamic axes 1.

    A model whose first axis is fixed to another size cannot take ``batch``: ConfigError."""
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and dims and dims[0].HasField("dim_value") and dims[0].dim_value != batch:
            raise ConfigError(f"input {vi.name!r} has a fixed batch of {dims[0].dim_value}; cannot time batch {batch}")
    return random_feeds(model, batch, seed)


def _time(fn: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t0))
    return min(ms), statistics.median(ms)


def time_onnxruntime(path: str | Path, batch: int, threads: int = 1, runs: int = 20, warmup: int = 5) -> Timing:
    """Latency in onnxruntime, CPU EP, ORT_ENABLE_ALL, ``threads`` intra-op threads, sequential execution."""
    inputs = random_inputs(load_model(path), batch)
    sess = ort_session(path, threads)
    lo, med = _time(lambda: sess.run(None, inputs), runs, warmup)
    return Timing("onnxruntime", batch, lo, med, runs)


def time_openvino(path: str | Path, batch: int, threads: int = 1, runs: int = 20, warmup: int = 5) -> Timing:
    """Latency in OpenVINO's CPU plugin (f32 precision hint, ``threads`` inference threads), synchronous."""
    inputs = random_inputs(load_model(path), batch)
    compiled = compile_openvino(path, threads)
    request = compiled.create_infer_request()
    lo, med = _time(lambda: request.infer(inputs), runs, warmup)
    return Timing("openvino", batch, lo, med, runs)


TIMERS = {"onnxruntime": time_onnxruntime, "openvino": time_openvino}
