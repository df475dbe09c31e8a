"""Calibration data from a folder of images (jpg/png/bmp, searched recursively) with a preprocessing spec.

The spec (``Preprocess``) comes from flags or a small JSON (or YAML, when PyYAML is installed) file:
``{"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
"scale": 255, "layout": "NCHW", "channels": "RGB"}``. Each image is decoded (PIL), converted to RGB (or
grayscale for a 1-channel model), its shorter side resized to ``resize`` (bilinear), center-cropped to
``crop`` (default: the model input's spatial size), divided by ``scale``, normalized
``(x - mean) / std`` per channel, reordered to BGR if asked and laid out as NCHW or NHWC.
Images are taken in a seeded random order (so the first N of a class-sorted folder are not all one class).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class Preprocess:
    resize: int | None = None  # shorter side before the crop; None: crop * 256 / 224 (the ImageNet habit)
    crop: int | list[int] | None = None  # side or [height, width]; None: the model input's spatial size
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    scale: float = 255.0  # pixel values are divided by this first (255: [0, 1])
    layout: str = "NCHW"  # NCHW | NHWC
    channels: str = "RGB"  # RGB | BGR | GRAY

    def __post_init__(self) -> None:
        self.layout, self.channels = str(self.layout).upper(), str(self.channels).upper()
        if self.layout not in ("NCHW", "NHWC"):
            raise DataError(f"preprocess layout must be NCHW or NHWC; got {self.layout!r}")
        if self.channels not in ("RGB", "BGR", "GRAY"):
            raise DataError(f"preprocess channels must be RGB, BGR or GRAY; got {self.channels!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            v = [float(v)] if isinstance(v, (int, float)) else [float(x) for x in v]
            if len(v) not in (1, 3) or (name == "std" and any(x <= 0 for x in v)):
                raise DataError(f"preprocess {name} needs 1 or 3 values{' > 0' if name == 'std' else ''}; got {v}")
            setattr(self, name, v)
        if not self.scale > 0:
            raise DataError(f"preprocess scale must be positive; got {self.scale}")
        for name in ("resize", "crop"):
            v = getattr(self, name)
            vals = [] if v is None else [v] if isinstance(v, int) else list(v)
            if any(not isinstance(x, int) or x < 1 for x in vals) or len(vals) > 2:
                raise DataError(f"preprocess {name} must be a positive integer (crop: or [height, width]); got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def load_preprocess(path: str | os.PathLike) -> Preprocess:
    """A ``Preprocess`` from a JSON (or, with PyYAML installed, YAML) file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"preprocessing spec not found: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise DataError(f"{p}: YAML needs PyYAML (pip install pyyaml); or write the spec as JSON") from None
            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    except (ValueError, TypeError) as e:
        raise DataError(f"{p}: not a valid spec ({str(e)[:120]})") from None
    if not isinstance(spec, dict):
        raise DataError(f"{p}: the spec must be a mapping like {{\"crop\": 224, \"mean\": [...], \"std\": [...]}}")
    known = {f.name for f in fields(Preprocess)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise DataError(f"{p}: unknown preprocessing key(s) {unknown}; known: {sorted(known)}")
    return Preprocess(**spec)


def find_images(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _spatial(shape: tuple, layout: str) -> tuple[int, int] | None:
    if len(shape) != 4:
        return None
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    return (h, w) if h > 0 and w > 0 else None


def _channels(shape: tuple, layout: str) -> int | None:
    if len(shape) != 4:
        return None
    c = shape[1] if layout == "NCHW" else shape[3]
    return c if c > 0 else None


def preprocess_image(path: Path, spec: Preprocess, size: tuple[int, int], gray: bool) -> np.ndarray:
    """One image -> float32 (C, H, W) per ``spec`` (module doc)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if gray else "RGB")
            h, w = size
            short = spec.resize or int(round(max(h, w) * 256 / 224))
            r = short / min(im.size)
            im = im.resize((max(w, int(round(im.size[0] * r))), max(h, int(round(im.size[1] * r)))),
                           Image.BILINEAR)
            left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
            arr = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {str(e)[:100]})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    arr = arr / np.float32(spec.scale)
    c = arr.shape[0]
    mean = np.asarray(spec.mean * (c if len(spec.mean) == 1 else 1), dtype=np.float32)[:c].reshape(c, 1, 1)
    std = np.asarray(spec.std * (c if len(spec.std) == 1 else 1), dtype=np.float32)[:c].reshape(c, 1, 1)
    arr = (arr - mean) / std
    if spec.channels == "BGR" and c == 3:
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


def load_image_folder(folder: str | os.PathLike, input_shape: tuple, spec: Preprocess | None = None,
                      limit: int | None = None, seed: int = 0) -> np.ndarray:
    """(N, C, H, W) or (N, H, W, C) float32 samples for a model input of ``input_shape`` (module doc)."""
    spec = spec or Preprocess()
    files = find_images(folder)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    order = np.random.default_rng(seed).permutation(len(files))
    files = [files[i] for i in order[: limit or len(files)]]
    size = spec.crop if spec.crop is not None else _spatial(tuple(input_shape), spec.layout)
    if size is None:
        raise DataError(f"the model input has no fixed spatial size ({tuple(input_shape)}); give a crop size "
                        "(--crop 224 or \"crop\" in the spec)")
    size = (size, size) if isinstance(size, int) else tuple(size)
    want_c = _channels(tuple(input_shape), spec.layout)
    gray = spec.channels == "GRAY" or want_c == 1
    batch = np.stack([preprocess_image(p, spec, size, gray) for p in files])
    if want_c is not None and batch.shape[1] != want_c:
        raise DataError(f"images give {batch.shape[1]} channels, the model input wants {want_c} "
                        f"(shape {tuple(input_shape)}); check --layout / channels in the spec")
    return batch.transpose(0, 2, 3, 1).copy() if spec.layout == "NHWC" else batch
