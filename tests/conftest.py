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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
MODELS = ROOT / "models"
DIGITS = ("digits_resnet", "digits_mbv2", "digits_regnet")

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


def digits_path(name: str) -> Path:
    return MODELS / f"{name}.onnx"


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ort_run(model, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """Run a model (path, bytes or ModelProto) in onnxruntime CPU, default graph optimizations."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# ---------------------------------------------------------------- torch export

def export_torch_model(module: torch.nn.Module, x: torch.Tensor, path: str | os.PathLike, keep_bn: bool = True,
                       dynamic_batch: bool = True, **kw) -> Path:
    """Export with the TorchScript exporter (dynamo=False), opset 13.

    ``keep_bn``: PRESERVE training mode and no constant folding, so BatchNormalization nodes survive.
    Otherwise the exporter's eval-mode defaults (BN fused into the preceding conv).
    """
    module = module.eval()
    args = dict(dynamo=False, opset_version=13, input_names=["input"], output_names=["logits"])
    if dynamic_batch:
        args["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if keep_bn:
        args.update(do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    else:
        args.update(do_constant_folding=True)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), **args)
    return Path(path)


@pytest.fixture(scope="session")
def export_torch():
    return export_torch_model


def count_ops(model: onnx.ModelProto | str | os.PathLike, op_type: str) -> int:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    return sum(1 for n in model.graph.node if n.op_type == op_type)


# ---------------------------------------------------------------- torchvision architectures

TV_ARCHS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "mnasnet0_5",
            "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet")
TV_INPUT = (1, 3, 64, 64)


def build_tv(name: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    kw = dict(aux_logits=False, init_weights=True) if name == "googlenet" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(torchvision.models, name)(weights=None, **kw).eval()
    # Random but non-trivial BN statistics, so folding does real work and activations are O(1).
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


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
    from onnxptq.importer import import_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = import_model(tv_model(name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tv_inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, *TV_INPUT[1:])).astype(np.float32)


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
        key = hashlib.sha1(json.dumps([name, sorted(cfg.items())], default=str).encode()).hexdigest()[:16]
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
