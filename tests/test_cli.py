"""The ``onnxptq`` command line: inspect / quantize / eval, and user errors (exit 2, one ``error:`` line,
no traceback, nothing written, the input model untouched)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxptq.cli import main

from helpers import MODELS, ROOT, sha256, suite_weight_bits

MODEL = MODELS / "digits_mbv2.onnx"  # the fastest shipped model to quantize
CALIB = MODELS / "digits_calib.npz"
FAST = ["--no-progress", "--num-calib", "32", "--w-scale-method", "minmax", "--a-scale-method", "minmax"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``onnxptq.cli.main`` in process; an exception escaping it is a bug (the user would see a traceback)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    except BaseException:  # noqa: BLE001
        pytest.fail(f"onnxptq {' '.join(map(str, argv))} crashed with a traceback:\n{traceback.format_exc()}")
    out, err = capsys.readouterr()
    return rc, out, err


def run_subprocess(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "onnxptq.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, cwd=cwd or ROOT, env=env)


def assert_user_error(rc: int, out: str, err: str, *must_contain: str) -> str:
    assert "Traceback" not in out + err, err
    assert rc == 2, f"exit code {rc}, stderr: {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("error:"), lines[0]
    for s in must_contain:
        assert s.lower() in lines[0].lower(), f"{s!r} not in {lines[0]!r}"
    if os.environ.get("ONNXPTQ_ERROR_LOG"):  # collect what each case prints (the issue 8 closing-note list)
        with open(os.environ["ONNXPTQ_ERROR_LOG"], "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            f.write(f"{test}\t{lines[0]}\n")
    return lines[0]


# ---------------------------------------------------------------- happy paths

def test_inspect_text(capsys):
    rc, out, err = run_cli(capsys, "inspect", MODEL)
    assert rc == 0, err
    assert "quantizable layers" in out and "regions at granularity 'block'" in out
    assert "BatchNorm folded: 19" in out
    assert "Traceback" not in err


def test_inspect_json(capsys):
    rc, out, _ = run_cli(capsys, "inspect", MODELS / "digits_resnet.onnx", "--json", "--granularity", "stage")
    assert rc == 0
    info = json.loads(out)
    assert info["granularity"] == "stage" and info["regions"]
    assert all(r["kind"] == "stage" for r in info["regions"])
    assert [x for r in info["regions"] for x in r["layers"]] == [x["name"] for x in info["layers"]]
    assert info["inputs"] == {"input": [-1, 1, 16, 16]} and info["outputs"] == ["logits"]
    assert len(info["batchnorm_folded"]) == 13


def test_quantize_then_eval(capsys, tmp_path, digits_val):
    before = sha256(MODEL)
    out_path = tmp_path / "q.onnx"
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", CALIB, "-o", out_path, "--json", *FAST)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["output"] == str(out_path) and summary["layers"] == 20
    assert summary["weight_bits"] == {str(suite_weight_bits(8)): 20} and summary["compression"] > 3
    assert out_path.exists() and sha256(MODEL) == before
    onnx.checker.check_model(onnx.load(str(out_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # no temporary files left

    rc, out, err = run_cli(capsys, "eval", MODEL, out_path, "--data", MODELS / "digits_val.npz", "--json")
    assert rc == 0, err
    fid = json.loads(out)
    assert fid["samples"] == len(digits_val["input"])
    assert fid["float_accuracy"] == pytest.approx(0.9955, abs=1e-3)
    assert fid["quant_accuracy"] > 0.97 and fid["top1_agreement"] > 0.95

    rc, out, _ = run_cli(capsys, "eval", MODEL, out_path, "--data", MODELS / "digits_val.npz", "--limit", "50")
    assert rc == 0 and "accuracy" in out and "samples           50" in out


def test_quantize_text_summary_and_force(capsys, tmp_path):
    out_path = tmp_path / "q.onnx"
    out_path.write_bytes(b"old contents")
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", CALIB, "-o", out_path, *FAST)
    assert_user_error(rc, out, err, "exists", "--force")
    assert out_path.read_bytes() == b"old contents"
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", CALIB, "-o", out_path, "--force", "--w-bits", "4",
                           "--scale", "po2", *FAST)
    assert rc == 0, err
    assert "weight bits" in out and "4-bit" in out
    model = onnx.load(str(out_path))
    onnx.checker.check_model(model)
    assert any(i.data_type == TensorProto.INT4 for i in model.graph.initializer)


def test_subprocess_entry_point(tmp_path):
    """``python -m onnxptq.cli``: a real process, real stderr."""
    r = run_subprocess("inspect", MODEL, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["regions"]
    r = run_subprocess("quantize", tmp_path / "missing.onnx", "--calib", CALIB, "-o", tmp_path / "q.onnx")
    assert_user_error(r.returncode, r.stdout, r.stderr, "missing.onnx")
    assert not (tmp_path / "q.onnx").exists()


# ---------------------------------------------------------------- user errors

def _tiny_model(op: str) -> onnx.ModelProto:
    """Conv -> <op> -> output; ``op`` is an op the simulation lacks (or a custom-domain op)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    opsets = [helper.make_opsetid("", 13)]
    if op == "custom":
        odd = helper.make_node("MyOp", ["c"], ["logits"], name="my_custom_node", domain="com.example")
        opsets.append(helper.make_opsetid("com.example", 1))
    else:
        odd = helper.make_node(op, ["c"], ["logits"], name=f"my_{op.lower()}_node")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["c"], name="conv"), odd], "odd",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, 14, 14])], [w])
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 8
    return m


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _x(n=8, shape=(1, 16, 16), dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(dtype)


def _setup_case(case: str, tmp: Path) -> tuple[list, list[str]]:
    """(quantize argv without -o, strings the message must contain) for one error case."""
    model, calib = tmp / "model.onnx", CALIB
    shutil.copy(MODEL, model)
    extra: list = []
    must: list[str] = []
    if case == "missing_model":
        model = tmp / "nope.onnx"
        must = ["nope.onnx"]
    elif case == "random_bytes":
        model = tmp / "junk.onnx"
        model.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        must = ["junk.onnx"]
    elif case == "text_file":
        model = tmp / "notes.onnx"
        model.write_text("this is not a model\nreally not\n")
        must = ["notes.onnx"]
    elif case == "empty_file":
        model = tmp / "empty.onnx"
        model.write_bytes(b"")
        must = ["empty.onnx"]
    elif case.startswith("truncated"):
        frac = {"truncated_half": 0.5, "truncated_tail": 0.97, "truncated_head": 0.05}[case]
        data = MODEL.read_bytes()
        model.write_bytes(data[: int(len(data) * frac)])
        must = ["model.onnx"]
    elif case == "directory_as_model":
        model = tmp / "adir"
        model.mkdir()
    elif case == "missing_calib":
        calib = tmp / "nocalib.npz"
        must = ["nocalib.npz"]
    elif case == "calib_not_npz":
        calib = tmp / "calib.npz"
        calib.write_text("not numpy")
    elif case == "calib_wrong_key":
        calib = _npz(tmp / "calib.npz", images=_x(), masks=_x())
        must = ["input"]
    elif case == "calib_wrong_shape":
        calib = _npz(tmp / "calib.npz", input=_x(shape=(1, 8, 8)))
        must = ["input", "16"]
    elif case == "calib_wrong_channels":
        calib = _npz(tmp / "calib.npz", input=_x(shape=(3, 16, 16)))
        must = ["input"]
    elif case == "calib_wrong_rank":
        calib = _npz(tmp / "calib.npz", input=_x(shape=(16, 16)))
        must = ["input", "rank"]
    elif case == "calib_nan":
        x = _x()
        x[3, 0, 2, 2] = np.nan
        calib = _npz(tmp / "calib.npz", input=x)
        must = ["nan"]
    elif case == "calib_inf":
        x = _x()
        x[0, 0, 0, 0] = np.inf
        calib = _npz(tmp / "calib.npz", input=x)
    elif case == "calib_string":
        calib = _npz(tmp / "calib.npz", input=np.full((8, 1, 16, 16), "a"))
        must = ["dtype"]
    elif case == "calib_empty":
        calib = _npz(tmp / "calib.npz", input=np.zeros((0, 1, 16, 16), np.float32))
    elif case in ("w_bits_1", "w_bits_9", "a_bits_1"):
        flag, v = {"w_bits_1": ("--w-bits", 1), "w_bits_9": ("--w-bits", 9), "a_bits_1": ("--a-bits", 1)}[case]
        extra = [flag, v]
        must = [flag[2:].replace("-", "_")]
    elif case in ("unsupported_hardmax", "unsupported_custom"):
        op = "Hardmax" if case == "unsupported_hardmax" else "custom"
        onnx.save(_tiny_model(op), str(model))
        calib = _npz(tmp / "calib.npz", input=_x())
        must = ["my_hardmax_node" if op == "Hardmax" else "my_custom_node"]
    else:
        raise AssertionError(case)
    return ["quantize", model, "--calib", calib, "--no-progress", *extra], must


ERROR_CASES = ["missing_model", "random_bytes", "text_file", "empty_file", "truncated_half", "truncated_tail",
               "truncated_head", "directory_as_model", "missing_calib", "calib_not_npz", "calib_wrong_key",
               "calib_wrong_shape", "calib_wrong_channels", "calib_wrong_rank", "calib_nan", "calib_inf",
               "calib_string", "calib_empty", "w_bits_1", "w_bits_9", "a_bits_1", "unsupported_hardmax",
               "unsupported_custom"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_quantize_user_error(case, capsys, tmp_path):
    argv, must = _setup_case(case, tmp_path)
    model = Path(argv[1])
    before = sha256(model) if model.is_file() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out_path = out_dir / "q.onnx"
    rc, out, err = run_cli(capsys, *argv, "-o", out_path)
    assert_user_error(rc, out, err, *must)
    assert not out_path.exists() and list(out_dir.iterdir()) == [], "something was written"
    if before is not None:
        assert sha256(model) == before, "the input model was modified"


def test_calib_single_array_under_other_key_is_used(capsys, tmp_path):
    """A single-input model with a .npz holding one array (any key) uses it; labels are ignored."""
    calib = _npz(tmp_path / "calib.npz", images=_x(16), labels=np.arange(16))
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", calib, "-o", tmp_path / "q.onnx", *FAST)
    assert rc == 0, err


def test_output_is_input_model(capsys, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    before = sha256(model)
    for target in (model, tmp_path / "." / "m.onnx"):
        rc, out, err = run_cli(capsys, "quantize", model, "--calib", CALIB, "-o", target, "--force", *FAST)
        assert_user_error(rc, out, err, "input")
        assert sha256(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_output_in_missing_directory(capsys, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "q.onnx"
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", CALIB, "-o", target, *FAST)
    assert_user_error(rc, out, err, "does not exist")
    assert not (tmp_path / "no").exists()


def test_output_is_a_directory(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "quantize", MODEL, "--calib", CALIB, "-o", tmp_path, "--force", *FAST)
    assert_user_error(rc, out, err)
    assert list(tmp_path.iterdir()) == []


def test_inspect_errors(capsys, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("junk")
    for path in (tmp_path / "missing.onnx", junk):
        rc, out, err = run_cli(capsys, "inspect", path)
        assert_user_error(rc, out, err, path.name)
    odd = tmp_path / "odd.onnx"
    onnx.save(_tiny_model("Hardmax"), str(odd))
    rc, out, err = run_cli(capsys, "inspect", odd)
    assert_user_error(rc, out, err, "my_hardmax_node")


def test_eval_errors(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "eval", MODEL, tmp_path / "missing.qdq.onnx", "--data", MODELS / "digits_val.npz")
    assert_user_error(rc, out, err, "missing.qdq.onnx")
    bad = _npz(tmp_path / "bad.npz", input=_x(shape=(2, 16, 16)))
    rc, out, err = run_cli(capsys, "eval", MODEL, MODEL, "--data", bad)
    assert_user_error(rc, out, err, "input")


def test_unsupported_op_subprocess(tmp_path):
    """The real process prints one line naming the node, exit 2, no traceback."""
    model = tmp_path / "odd.onnx"
    onnx.save(_tiny_model("custom"), str(model))
    calib = _npz(tmp_path / "calib.npz", input=_x())
    r = run_subprocess("quantize", model, "--calib", calib, "-o", tmp_path / "q.onnx", "--no-progress")
    assert_user_error(r.returncode, r.stdout, r.stderr, "my_custom_node")
    assert not (tmp_path / "q.onnx").exists()
