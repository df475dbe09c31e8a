"""tools/zoo.py's fast subset: real architectures (random weights) exported at batch 1 quantize as a user would.

The full table (every zoo model) is `python tools/zoo.py --out docs/benchmarks.md`."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

zoo = pytest.importorskip("tools.zoo")
FAST = [m for m in zoo.MODELS if m.fast]


@pytest.fixture(scope="module")
def photos():
    return zoo._photos()


def test_the_zoo_holds_25_models_of_every_family():
    assert len(zoo.MODELS) >= 25 and len(zoo.BY_NAME) == len(zoo.MODELS) + len(zoo.EXTRA)  # names are unique
    assert not {m.name for m in zoo.EXTRA} & {m.name for m in zoo.MODELS}
    assert {m.family for m in zoo.MODELS} == {"timm", "ultralytics", "transformers"}
    assert {m.family for m in FAST} == {"timm", "ultralytics", "transformers"}


@pytest.mark.parametrize("zm", FAST, ids=[m.name for m in FAST])
def test_fast_zoo_model(zm, tmp_path, photos, monkeypatch):
    monkeypatch.setattr(zoo, "zoo_dir", lambda: tmp_path)
    row = zoo.run_model(zm, tmp_path, photos, num_calib=16, num_eval=8, num_verify=2, draws=1)
    notes = "; ".join(row.notes)
    assert "INTERNAL" not in notes, notes
    assert row.import_ok == "ok", notes
    assert row.onnxptq_sqnr is not None, notes
    assert row.ort_sqnr is None or row.onnxptq_sqnr >= row.ort_sqnr - 0.5, (row.onnxptq_sqnr, row.ort_sqnr)
    # the integer export either passes level-1 verify or names the nodes it cannot lower
    assert row.verify.startswith("pass") or (row.int_export.startswith("error:") and "node" in row.int_export), \
        (row.int_export, row.verify)
    if row.verify.startswith("pass"):  # and its program computes what the quantizer simulated
        assert row.lowering.startswith("ok: max ") and row.int_sqnr is not None, (row.lowering, row.int_sqnr)


def test_the_w8a8_comparison_is_the_mean_over_calibration_draws():
    assert [zoo.calib_seed(d) for d in range(4)] == [1, 3, 4, 5]  # never the evaluation seed
    assert zoo.EVAL_SEED not in [zoo.calib_seed(d) for d in range(10)]
    row = zoo.ZooRow("m", "timm", onnxptq_draws=[10.0, 14.0, 15.0], ort_draws=[11.0, 13.0, 15.02])
    assert row.onnxptq_sqnr == pytest.approx(13.0) and row.ort_sqnr == pytest.approx(13.0066667)
    assert row.draws_not_below(0.05) == (2, 3)
    text = zoo.summary([row, zoo.ZooRow("n", "timm", onnxptq_draws=[1.0], ort_draws=[2.0])])
    assert "mean SQNR not below quantize_static's (0.05 dB tolerance) 1/2 compared (per draw: 2/4)" in text
    assert "10.00 / 14.00 / 15.00" in zoo.table([row])
    rows = [zoo.ZooRow("a", "timm", verify="pass"), zoo.ZooRow("b", "timm", verify="pass (reference could not run)"),
            zoo.ZooRow("c", "timm", verify="FAIL x")]
    assert "level-1 verify 2/3 (1 without onnx.reference, which could not run them)" in zoo.summary(rows)


def test_section_name_keeps_the_full_table():
    """--out: only the full zoo run writes the `zoo` section; a subset or a variant gets its own."""
    assert zoo.section_name(False, {}, []) == ("zoo", "")
    assert zoo.section_name(True, {}, []) == ("zoo-extra", "")
    key, suffix = zoo.section_name(False, {}, ["poolformer_s12", "coat_lite_tiny"])
    assert key == "zoo-only-poolformer_s12,coat_lite_tiny" and suffix == " — only poolformer_s12, coat_lite_tiny"
    key, suffix = zoo.section_name(False, {"join_grids": True}, ["fast"])
    assert key == "zoo-join_grids-True-only-fast" and suffix == " — with join_grids=True — only fast"


def test_the_zoo_bench_group_names_zoo_models(tmp_path, monkeypatch):
    """`tools/bench.py recon --experiments zoo-fast` benchmarks zoo architectures on the EfficientNet photo crops;
    `--models all` stays digits + EfficientNet (the zoo group exports models, so it is asked for by name)."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))  # the bench scripts import each other by module name
    import bench
    import bench_recon

    assert set(bench.ZOO_BENCH) <= set(zoo.BY_NAME) and len(bench.ZOO_BENCH) >= 2
    assert "zoo" in bench.GROUPS and "zoo" not in bench.ALL_GROUPS
    assert bench_recon.EXPERIMENTS["zoo-fast"].group == "zoo"
    monkeypatch.setenv("ONNXPTQ_CACHE", str(tmp_path))  # no photo files there: the group says how to make them
    with pytest.raises(bench.BenchError, match="make_models.py --efficientnet"):
        bench.zoo_models()
