"""Shared fixtures for the onnxptq test suite.

- ``models_dir`` / ``manifest`` / ``digits_calib`` / ``digits_val``: the shipped digits models and data.
- ``export_torch``: export a torch module to ONNX keeping BatchNormalization nodes.
- ``tv_model``: torchvision architectures with random weights, exported once per worker at 1x3x64x64.
- ``quantized_digits``: quantized digits models (QDQ file + simulation outputs on the validation set),
  computed once per configuration and shared by all pytest-xdist workers through a file lock.

torch runs single-threaded in each worker: with ``pytest -n 2`` on 2 cores, more threads only contend.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from helpers import (DIGITS, MODELS, ROOT, TV_ARCHS, TV_INPUT, build_tv, count_ops, digits_path,  # noqa: F401
                     export_torch_model, ort_run, sha256)

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running tests (torchvision architectures)")


# ---------------------------------------------------------------- shipped models and data

@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def manifest() -> dict:
    with open(MODELS / "manifest.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def manifest_by_name(manifest) -> dict:
    return {m["name"]: m for m in manifest["models"]}


@pytest.fixture(scope="session")
def digits_calib() -> dict[str, np.ndarray]:
    with np.load(MODELS / "digits_calib.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def digits_val() -> dict[str, np.ndarray]:
    with np.load(MODELS / "digits_val.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def export_torch():
    return export_torch_model


@pytest.fixture(scope="session")
def tv_model(tmp_path_factory):
    """``tv_model(name) -> path`` of the exported ONNX (BN kept, dynamic batch); cached per session."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("torchvision")

    def get(name: str) -> Path:
        if name not in cache:
            model = build_tv(name)
            cache[name] = export_torch_model(model, torch.randn(*TV_INPUT), root / f"{name}.onnx")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tv_qgraph(tv_model):
    """``tv_qgraph(name) -> QGraph`` of the exported architecture, imported once per worker (read-only use)."""
    from onnxptq.graph import import_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = import_model(tv_model(name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tv_inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, *TV_INPUT[1:])).astype(np.float32)


# ---------------------------------------------------------------- the exact onnxruntime target of this CPU

def _quantize_for_this_cpu() -> None:
    """The suite asserts that onnxruntime's fused kernels reproduce the simulation bit for bit. With the
    default ``onnxruntime`` target (uint8 activations x int8 8-bit weights) that holds on VNNI and non-x86
    CPUs only; on x86 without VNNI, u8 x s8 pairs saturate (docs/design-notes.md section 2), so there the
    suite quantizes for ``onnxruntime-avx2`` (7-bit weights) unless a test names its target.
    tests/test_targets.py checks both profiles explicitly."""
    from onnxptq import api
    from onnxptq.targets import exact_onnxruntime_target

    target = exact_onnxruntime_target()
    if target == "onnxruntime":
        return
    import functools

    original = api.quantize

    @functools.wraps(original)  # the API reference (tests/test_docs.py) reads its signature and docstring
    def quantize(model, calib, config=None, output=None, **kw):
        if config is None:
            kw.setdefault("target", target)
        elif config.target == "onnxruntime":
            config = type(config)(**{**config.to_dict(), "target": target, "int_kernels": None})
        return original(model, calib, config, output, **kw)

    api.quantize = quantize


_quantize_for_this_cpu()


# ---------------------------------------------------------------- quantized digits models (shared)

@dataclass
class QuantArtifact:
    """A quantized digits model: the exported QDQ file, the simulation's output on the validation set,
    the output quant scale and per-layer metadata (bits, input quant point)."""

    name: str
    config: dict
    path: Path
    sim_val: np.ndarray
    out_scale: float
    meta: dict


def _quantize_digits(name: str, cfg: dict, out_dir: Path, val: np.ndarray) -> None:
    from onnxptq.api import quantize

    res = quantize(digits_path(name), MODELS / "digits_calib.npz", output=out_dir / "model.qdq.onnx",
                   force=True, progress=False, **cfg)
    sim = res.sim
    qg = res.qgraph
    np.save(out_dir / "sim_val.npy", res.simulate({qg.inputs[0]: val}))
    meta = {
        "out_scale": float(sim.act_quantizer(qg.source[qg.outputs[0]]).params.scale),
        "layers": {
            layer.name: {
                "w_bits": int(sim.weight_quantizer(layer.name).params.grid.bits),
                "input_qp": qg.source[layer.input],
                "weight_axis": layer.weight_axis,
                "has_bias": bool(layer.bias),
            } for layer in qg.layers
        },
        "act_bits": {t: int(fq.params.grid.bits) for t, fq in sim.act_quantizers()},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="session")
def quantized_digits(tmp_path_factory, digits_val):
    """``quantized_digits(name, **config) -> QuantArtifact``; each configuration is quantized once for all
    workers (file lock in the shared pytest base temp)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    # under xdist the parent is this run's directory shared by the workers; alone, stay inside this run's
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "onnxptq_quantized"
    shared.mkdir(exist_ok=True)
    mem: dict[str, QuantArtifact] = {}

    def get(name: str, **cfg) -> QuantArtifact:
        # keyed by the whole config, defaults included: spelling out a default reuses the same model
        from onnxptq.config import QuantConfig

        full = QuantConfig(**cfg).to_dict()
        key = hashlib.sha1(json.dumps([name, sorted(full.items())], default=str).encode()).hexdigest()[:16]
        if key in mem:
            return mem[key]
        d = shared / f"{name}_{key}"
        with FileLock(str(d) + ".lock"):
            if not (d / "meta.json").exists():
                d.mkdir(exist_ok=True)
                _quantize_digits(name, cfg, d, digits_val["input"])
        meta = json.loads((d / "meta.json").read_text())
        art = QuantArtifact(name, cfg, d / "model.qdq.onnx", np.load(d / "sim_val.npy"), meta["out_scale"], meta)
        mem[key] = art
        return art

    return get
