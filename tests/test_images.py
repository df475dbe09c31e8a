"""Calibration from a folder of images (issue 8): preprocessing by spec file or flags, checked on images whose
pixels are known, then end to end through the CLI; bad folders, images and specs give clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from onnxptq import api
from onnxptq.errors import DataError
from onnxptq.images import Preprocess, find_images, load_image_folder, load_preprocess, preprocess_image

from test_recon import tiny  # noqa: F401  (fixture)


def _solid(path, rgb, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(rgb)).save(path)
    return path


def test_preprocess_hand_values(tmp_path):
    p = _solid(tmp_path / "a.png", (255, 128, 0))
    spec = Preprocess(crop=8, mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.5])
    x = preprocess_image(p, spec, (8, 8), gray=False)
    assert x.shape == (3, 8, 8)
    np.testing.assert_allclose(x[:, 0, 0], [(1.0 - 0.5) / 0.5, (128 / 255 - 0.5) / 0.25, (0.0 - 0.5) / 0.5], atol=1e-6)
    bgr = preprocess_image(p, Preprocess(channels="BGR"), (8, 8), gray=False)
    np.testing.assert_allclose(bgr[:, 0, 0], [0.0, 128 / 255, 1.0], rtol=1e-6)
    gray = preprocess_image(p, Preprocess(), (8, 8), gray=True)
    assert gray.shape == (1, 8, 8)  # PIL luma: 0.299 R + 0.587 G + 0.114 B
    assert abs(float(gray[0, 0, 0]) - (0.299 * 255 + 0.587 * 128) / 255) < 2 / 255


def test_folder_is_recursive_seeded_and_laid_out(tmp_path):
    for k in range(5):
        _solid(tmp_path / f"class{k % 2}" / f"img{k}.{'jpg' if k % 2 else 'png'}", (50 * k, 10, 20))
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(find_images(tmp_path)) == 5
    a = load_image_folder(tmp_path, (-1, 3, 16, 16), Preprocess(), limit=3, seed=1)
    b = load_image_folder(tmp_path, (-1, 3, 16, 16), Preprocess(), limit=3, seed=1)
    assert a.shape == (3, 3, 16, 16) and np.array_equal(a, b)
    nhwc = load_image_folder(tmp_path, (-1, 16, 16, 3), Preprocess(layout="NHWC"), seed=1)
    assert nhwc.shape == (5, 16, 16, 3)


def test_spec_file_and_errors(tmp_path):
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"resize": 10, "crop": 8, "mean": [0.1, 0.2, 0.3], "layout": "nchw"}))
    p = load_preprocess(spec)
    assert (p.resize, p.crop, p.layout) == (10, 8, "NCHW")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"crop": 8, "colour": "red"}))
    with pytest.raises(DataError, match="colour"):
        load_preprocess(bad)
    with pytest.raises(DataError, match="std"):
        Preprocess(std=[1.0, 0.0, 1.0])
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path, (-1, 3, 8, 8))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image_folder(tmp_path, (-1, 3, 8, 8))


def test_quantize_from_image_folder_cli(tiny, tmp_path, capsys):
    from onnxptq.cli import main

    _, path, _, _ = tiny  # input (N, 1, 8, 8): images become grayscale 8x8
    for k in range(12):
        _solid(tmp_path / "imgs" / f"{k}.png", (20 * k, 255 - 20 * k, 7 * k), size=(12 + k, 10))
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(path), "--calib", str(tmp_path / "imgs"), "--mean", "0.5", "--std", "0.25", "-o",
               str(out), "--no-progress"])
    assert rc == 0 and out.exists()
    res = api.quantize(path, tmp_path / "imgs", preprocess={"mean": [0.5], "std": [0.25]}, progress=False)
    assert res.qgraph.inputs == ["input"]
    rc = main(["eval", str(path), str(out), "--data", str(tmp_path / "imgs"), "--mean", "0.5", "--std", "0.25"])
    assert rc == 0 and "output SQNR" in capsys.readouterr().out
    with pytest.raises(DataError, match="folder"):
        api.quantize(path, np.zeros((4, 1, 8, 8), np.float32), preprocess={"crop": 8}, progress=False)
