"""onnxptq/atomic.py: a user's file is replaced whole or not at all, and no temporary file survives."""
from __future__ import annotations

import pytest

from onnxptq.atomic import atomic_path
from onnxptq.errors import OutputError


def test_replaces_whole_file(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        tmp.write_bytes(b"new")
        assert out.read_bytes() == b"old"  # untouched until the block ends
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_unwritable_target_is_an_output_error(tmp_path):
    out = tmp_path / "dir"
    out.mkdir()
    (out / "x").write_text("keep")  # os.replace of a file onto a non-empty directory fails
    with pytest.raises(OutputError, match="cannot write"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_suffix_for_numpy(tmp_path):
    import numpy as np

    with atomic_path(tmp_path / "o.npz", ".npz") as tmp:
        np.savez(tmp, a=np.arange(3))  # np.savez keeps a name ending in .npz as it is
    assert np.load(tmp_path / "o.npz")["a"].tolist() == [0, 1, 2]
