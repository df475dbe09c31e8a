"""More bad inputs (issue 8), on top of ``test_cli.py``'s suite: broken graphs, awkward but valid calibration
data, an unwritable output directory and a full disk. Errors: exit 2, one ``error:`` line, no traceback,
nothing written, the input model unchanged; awkward-but-valid inputs quantize."""
from __future__ import annotations

import errno
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import sha256
from test_cli import CALIB, FAST, MODEL, assert_user_error, run_cli


def _conv_model(nodes_fn) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(nodes_fn(), "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 1, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 14, 14])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _graph_case(case: str) -> tuple[onnx.ModelProto, str]:
    if case == "empty_graph":
        m = _conv_model(lambda: [])
        del m.graph.output[:]
        m.graph.output.extend([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])])
        return m, "empty"
    if case == "cycle":
        return _conv_model(lambda: [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
                                    helper.make_node("Add", ["c", "d"], ["e"], name="add_in_cycle"),
                                    helper.make_node("Relu", ["e"], ["d"], name="relu_in_cycle"),
                                    helper.make_node("Identity", ["e"], ["out"], name="id")]), "cycle"
    if case == "dangling":
        return _conv_model(lambda: [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
                                    helper.make_node("Add", ["c", "ghost"], ["out"], name="add_ghost")]), "ghost"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty_graph", "cycle", "dangling"])
def test_broken_graphs(case, capsys, tmp_path):
    model, must = _graph_case(case)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = sha256(path)
    np.savez(tmp_path / "c.npz", input=np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32))
    rc, out, err = run_cli(capsys, "quantize", path, "--calib", tmp_path / "c.npz", "-o", tmp_path / "q.onnx",
                           *FAST)
    assert_user_error(rc, out, err, must)
    assert not (tmp_path / "q.onnx").exists() and sha256(path) == before


@pytest.mark.parametrize("case", ["constant_images", "zero_images", "fewer_than_batch", "one_sample"])
def test_awkward_but_valid_calibration(case, capsys, tmp_path):
    shape = np.load(CALIB)["input"].shape[1:]  # the digits models: grayscale images
    n = {"fewer_than_batch": 5, "one_sample": 1}.get(case, 16)
    x = {"constant_images": np.full((n, *shape), 0.7, np.float32), "zero_images": np.zeros((n, *shape), np.float32)
         }.get(case, np.load(CALIB)["input"][:n])
    np.savez(tmp_path / "c.npz", input=x)
    out = tmp_path / "q.onnx"
    extra = ["--method", "brecq", "--iters", "4", "--act-iters", "2"] if case == "fewer_than_batch" else []
    rc, o, err = run_cli(capsys, "quantize", MODEL, "--calib", tmp_path / "c.npz", "-o", out, *FAST, *extra)
    assert rc == 0 and out.exists(), err
    onnx.checker.check_model(onnx.load(str(out)))


def test_unwritable_output_directory(capsys, tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(d) and mode & os.W_OK
                        else real(p, mode, *a, **k))  # root ignores chmod: simulate a read-only directory
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", CALIB, "-o", d / "q.onnx", *FAST)
    assert_user_error(rc, out, err, "not writable")
    assert list(d.iterdir()) == []


def test_full_disk_leaves_no_partial_file(capsys, tmp_path, monkeypatch):
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", CALIB, "-o", out_dir / "q.onnx", *FAST)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert_user_error(rc, out, err, "no space left")
    assert list(out_dir.iterdir()) == [], "a partial or temporary file was left behind"
