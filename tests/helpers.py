"""Plain helpers shared by the onnxptq tests (import them as ``from helpers import ...``).

Kept out of ``conftest.py``: ``tests/runtime`` has its own conftest, and importing a module named
``conftest`` picks whichever pytest loaded first.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
MODELS = ROOT / "models"
DIGITS = ("digits_resnet", "digits_mbv2", "digits_regnet")


def digits_path(name: str) -> Path:
    return MODELS / f"{name}.onnx"


def save_graph(tmp_path, name: str, nodes: list, x_shape: list, y_shape: list, inits: dict) -> str:
    """Save a one-input ("x") one-output ("y") opset-17 model of ``nodes`` with float32 ``inits``, batch "N"
    in front of both shapes; returns its path."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(m, path)
    return path


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


def method_kw(method: str, **options):
    """``options`` less the ones ``method`` does not read (passing another method's option is a ConfigError)."""
    from onnxptq.recon.methods import options_for

    return options_for(method, options)


def stop_after_checkpoints(monkeypatch, n: int) -> None:
    """Make the ``n``-th checkpoint save (recon/checkpoint.py) raise KeyboardInterrupt after writing, as Ctrl-C
    right after it would; ``monkeypatch.undo()`` or a new setattr restores saving."""
    from onnxptq.recon import checkpoint as ckpt

    real_save, saves = ckpt.save, []

    def save_then_stop(*a, **k):
        out = real_save(*a, **k)
        saves.append(a[2])
        if len(saves) == n:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(ckpt, "save", save_then_stop)


def suite_weight_bits(bits: int) -> int:
    """The weight bits a layer asked for at ``bits`` gets under the target the suite quantizes for on this CPU
    (conftest.py: ``onnxruntime-avx2`` on x86 without VNNI caps 8 bits at 7; otherwise ``bits``)."""
    from onnxptq.targets import exact_onnxruntime_target, get_target

    return get_target(exact_onnxruntime_target()).weight_bits(bits)
