"""``--report`` (issues 7-8): the markdown / HTML report lists every layer and quant point with its bits and
scales, and its PNG plots are real images; bad report paths are refused before any work."""
from __future__ import annotations

import numpy as np
import pytest

from onnxptq import api
from helpers import method_kw
from onnxptq.errors import OutputError

from test_recon import FAST, tiny  # noqa: F401  (fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_report_lists_layers_and_writes_plots(tiny, tmp_path, suffix):
    _, path, calib, _ = tiny
    rep = tmp_path / f"report{suffix}"
    res = api.quantize(path, calib, output=tmp_path / "q.onnx", report=rep, method="rapq", scale="po2", w_bits=4,
                       a_bits=4, mixed="coding-length", **method_kw("rapq", **FAST))
    text = rep.read_text()
    for layer in res.qgraph.layers:
        assert layer.name in text
    for t in res.qgraph.quant_points:
        assert t in text
    assert "2^" in text  # Po2 exponents
    pngs = [p for p in res.report_files if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"report_bits.png", "report_sqnr.png", "report_loss.png", "report_curves.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 2000
        assert p.name in text  # embedded in the report


def test_report_sqnr_is_infinite_only_for_exact_points(tiny):
    from onnxptq.report import quant_point_sqnr
    from onnxptq.data import Dataset

    _, path, calib, _ = tiny
    res = api.quantize(path, calib, w_bits=8, a_bits=8, progress=False)
    sqnr = quant_point_sqnr(res.sim, Dataset({"input": calib}))
    assert set(sqnr) == set(res.qgraph.quant_points)
    assert all(v > 20 for v in sqnr.values())  # 8-bit: every point close to float
    low = quant_point_sqnr(api.quantize(path, calib, w_bits=2, a_bits=2, first_last_bits=None,
                                        progress=False).sim, Dataset({"input": calib}))
    assert np.mean(list(low.values())) < np.mean(list(sqnr.values()))


def test_report_path_errors(tiny, tmp_path):
    _, path, calib, _ = tiny
    with pytest.raises(OutputError, match=".md or .html"):
        api.quantize(path, calib, output=tmp_path / "q.onnx", report=tmp_path / "r.txt", progress=False)
    with pytest.raises(OutputError, match="does not exist"):
        api.quantize(path, calib, output=tmp_path / "q.onnx", report=tmp_path / "no" / "r.md", progress=False)
    assert not (tmp_path / "q.onnx").exists()
