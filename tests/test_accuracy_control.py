"""Accuracy target mode (``--min-sqnr`` / ``--max-drop``, ``onnxptq/accuracy/``): the target is met after the
changes, the layers are changed in their ranked order and no more than needed, the report, the diagnostics and the
CLI show them, an impossible target is a warning naming the best value, and no file is written where it must not be."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxptq
from onnxptq.accuracy.changes import refine_grid
from onnxptq.accuracy.target import Measure, Target, eval_split, top1_accuracy
from onnxptq.cli import TARGET_MISSED, main
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError, DataError
from onnxptq.eval import run_onnxruntime, sqnr_db
from onnxptq.quant import QParams
from onnxptq.quant.grid import Grid

from helpers import MODELS, sha256, suite_weight_bits

MODEL = MODELS / "digits_resnet.onnx"
CALIB = MODELS / "digits_calib.npz"
VAL = MODELS / "digits_val.npz"
FAST = dict(num_calib=32, w_scale_method="minmax", a_scale_method="minmax", progress=False, check_kernels=False)
W2A4 = dict(w_bits=2, a_bits=4)  # RTN at W2A4: about 2.5 dB
# the search's target: high enough that it raises activation points no layer reads (a residual branch before its
# Add) as well as layers (at 12 dB, layers alone meet it)
TARGET_DB = 16.0


# ------------------------------------------------------------------------------------------ pure helpers


def test_eval_split_uses_spare_samples_else_holds_out_a_quarter():
    assert eval_split(300, 256, 128) == (256, 256, 300)  # the 44 samples calibration does not use
    assert eval_split(600, 256, 128) == (256, 256, 384)  # at most max_eval of them
    assert eval_split(256, 256, 128) == (192, 192, 256)  # none spare: the last quarter, calibration keeps the rest
    assert eval_split(256, 256, 16) == (240, 240, 256)
    assert eval_split(3, 256, 128) == (2, 2, 3)  # at least one sample
    with pytest.raises(ValueError):
        eval_split(1, 256, 128)


@pytest.mark.parametrize("signed,po2", [(False, True), (True, False)])
def test_refine_grid_keeps_every_level_and_the_range(signed, po2):
    g = Grid(4, signed)
    p = QParams(g, np.float32(0.25 if po2 else 0.3), np.int64(3 if not signed else -2), None, po2)
    r = refine_grid(p, 8)
    assert r.grid == Grid(8, signed) and r.po2 == po2
    old = (np.arange(g.qmin, g.qmax + 1) - p.zero_point) * p.scale
    new = (np.arange(r.grid.qmin, r.grid.qmax + 1) - r.zero_point) * r.scale
    assert np.isin(np.float32(old), np.float32(new)).all()  # a finer grid over (at least) the same range
    assert new.min() <= old.min() and new.max() >= old.max() and new.max() - old.max() < p.scale
    assert refine_grid(r, 8) is r and refine_grid(p, 4) is p


def test_target_holds_and_orders_measures():
    t = Target(min_sqnr=10.0)
    assert t.holds(Measure(10.0)) and not t.holds(Measure(9.99))
    assert t.key(Measure(12.0)) > t.key(Measure(11.0))
    d = Target(min_sqnr=None, max_drop=0.02, float_metric=0.95)
    assert d.holds(Measure(0.0, 0.93)) and not d.holds(Measure(30.0, 0.92))
    assert d.key(Measure(1.0, 0.94)) > d.key(Measure(30.0, 0.93))  # the metric first
    with pytest.raises(ValueError):
        Target(max_drop=0.1)  # no float metric to drop from
    assert top1_accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])) == 0.5


def test_options_are_checked():
    with pytest.raises(ConfigError, match="--min-sqnr or --max-drop"):
        QuantConfig(target_action="float")
    with pytest.raises(ConfigError, match="format int"):
        QuantConfig(min_sqnr=10, target_action="float", scale="po2", format="int")
    with pytest.raises(ConfigError, match="max_drop"):
        QuantConfig(max_drop=-0.1)
    with pytest.raises(ConfigError, match="min_sqnr"):
        QuantConfig(min_sqnr=float("nan"))
    with pytest.raises(ConfigError, match="eval_data"):
        onnxptq.quantize(MODEL, CALIB, eval_data=VAL, **FAST)
    with pytest.raises(ConfigError, match="target_rank_samples must be a positive integer"):
        QuantConfig(min_sqnr=10, target_rank_samples=0)
    with pytest.raises(ConfigError, match="--min-sqnr or --max-drop"):
        QuantConfig(target_rank_samples=32)


# ------------------------------------------------------------------------------------------ the search


@pytest.fixture(scope="module")
def met(tmp_path_factory):
    out = tmp_path_factory.mktemp("acc") / "m.onnx"
    res = onnxptq.quantize(MODEL, CALIB, output=out, min_sqnr=TARGET_DB, target_data=str(VAL), report=out.with_suffix(".md"),
                           **W2A4, **FAST)
    return res, out


def test_target_met_after_changing_layers_in_ranked_order(met):
    res, out = met
    acc = res.accuracy_control
    assert acc.before.sqnr_db < TARGET_DB <= acc.after.sqnr_db and acc.met
    assert acc.eval_samples == 128 and str(VAL) in acc.eval_source
    kept = [s for s in acc.steps if s.kept]
    assert kept and acc.changed() == {s.layer: "bits" for s in kept}
    # tried in the order of their gain alone (the ranking), and the search stopped at the first step that met it
    alone = [s.alone.sqnr_db for s in acc.steps]
    assert alone == sorted(alone, reverse=True)
    assert acc.steps[-1].kept and acc.steps[-1].measure.sqnr_db >= TARGET_DB
    assert all(s.measure.sqnr_db < TARGET_DB for s in acc.steps[:-1])  # no earlier step met it: none is spare
    layers = [s for s in kept if s.kind == "layer"]
    assert len(layers) < len(res.qgraph.layers) - 2  # not simply everything
    for s in kept:  # raised quant points (no layer reads them directly) are 8-bit
        if s.kind == "point":
            assert s.layer not in {res.qgraph.source[x.input] for x in res.qgraph.layers}
            assert res.sim.act_quantizer(s.layer).params.grid.bits == 8 and s.w_bits == "-"
    for s in layers:  # the changed layers run 8-bit weights and inputs; the others keep W2A4
        w8 = suite_weight_bits(8)
        assert res.plan.w_bits[s.layer] == w8 and res.sim.weight_quantizer(s.layer).params.grid.bits == w8
        src = res.qgraph.source[res.qgraph.layer(s.layer).input]
        assert res.sim.act_quantizer(src).params.grid.bits == 8
    untouched = [x.name for x in res.qgraph.layers if x.name not in acc.changed()]
    assert any(res.sim.weight_quantizer(n).params.grid.bits == 2 for n in untouched)
    assert acc.weight_bytes_after > acc.weight_bytes_before


def test_ranking_on_fewer_samples_measures_every_greedy_step_on_all(met):
    """--target-rank-samples 32: the 'alone' column ranks on the first 32 samples; every kept or undone step is
    measured on all 128 (the first step too, not reused from the ranking), so the exported value is the full one."""
    ref = met[0].accuracy_control
    res = onnxptq.quantize(MODEL, CALIB, min_sqnr=TARGET_DB, target_data=str(VAL), target_rank_samples=32, **W2A4, **FAST)
    acc = res.accuracy_control
    assert acc.met and acc.rank_samples == 32 and ref.rank_samples == 128
    assert "ranked on the first 32 samples" in "\n".join(acc.lines())
    alone = [s.alone.sqnr_db for s in acc.steps]
    assert alone == sorted(alone, reverse=True)
    first = acc.steps[0]
    assert first.measure.sqnr_db != first.alone.sqnr_db  # measured again on all samples
    assert acc.before.sqnr_db == ref.before.sqnr_db  # the same 128 target samples
    x = {"input": np.load(VAL)["input"][:128]}
    assert sqnr_db(run_onnxruntime(str(MODEL), x), res.simulate(x)) == pytest.approx(acc.after.sqnr_db, abs=1e-3)


def test_exported_model_is_the_measured_one(met):
    res, out = met
    x = {"input": np.load(VAL)["input"][:128]}
    ref = run_onnxruntime(str(MODEL), x)
    assert sqnr_db(ref, run_onnxruntime(str(out), x)) == pytest.approx(res.accuracy_control.after.sqnr_db, abs=0.3)
    assert sqnr_db(ref, res.simulate(x)) == pytest.approx(res.accuracy_control.after.sqnr_db, abs=1e-3)  # ORT vs torch float


def test_report_and_diagnostics_list_the_changed_layers(met):
    res, out = met
    changed = res.accuracy_control.changed()
    points = {s.layer for s in res.accuracy_control.steps if s.kind == "point" and s.kept}
    assert points  # this case needs raised activation points (W2A4)
    assert {x.where for x in res.diagnostics.of("target-bits")} == set(changed) - points
    assert {x.where for x in res.diagnostics.of("target-point")} == points
    line = next(s for s in res.summary()["fallbacks"] if "layers raised to 8 bits" in s)
    assert line.startswith(f"{len(changed) - len(points)}/{len(res.qgraph.layers)} ")
    line = next(s for s in res.summary()["fallbacks"] if "quant points raised to 8 bits" in s)
    assert line.startswith(f"{len(points)}/{len(res.qgraph.quant_points)} ")
    text = out.with_suffix(".md").read_text()
    section = text[text.index("## Accuracy target"):]
    assert "met" in section.splitlines()[0]
    for name in changed:
        assert name in section


def test_float_action_leaves_weights_float_in_the_export(tmp_path):
    out = tmp_path / "f.onnx"
    res = onnxptq.quantize(MODEL, CALIB, output=out, min_sqnr=8.0, target_action="float", **W2A4,
                           **{**FAST, "num_calib": 256})
    acc = res.accuracy_control
    assert acc.met and set(acc.changed().values()) == {"float"}
    # all 256 samples were to calibrate: the last 64 were held out instead, and the report says so
    assert acc.eval_source == "calibration samples 192..255, held out from calibration"
    assert any("calibration used 192 of its 256 samples" in n for n in acc.notes)
    m = onnx.load(out)
    inits = {i.name for i in m.graph.initializer}
    for name in acc.changed():
        node = next(n for n in m.graph.node if n.name == name)
        assert node.input[1] in inits  # the float weight initializer, no DequantizeLinear in front
        assert res.sim.weight_quantizer(name).params is None and res.plan.w_bits[name] == 32
    assert {x.where for x in res.diagnostics.of("target-float")} == set(acc.changed())
    x = {"input": np.load(CALIB)["input"][192:]}
    assert sqnr_db(run_onnxruntime(str(MODEL), x), run_onnxruntime(str(out), x)) == pytest.approx(
        acc.after.sqnr_db, abs=0.3)


def test_impossible_target_warns_with_the_best_value(tmp_path):
    out = tmp_path / "m.onnx"
    res = onnxptq.quantize(MODEL, CALIB, output=out, min_sqnr=200.0, **W2A4, **FAST)
    acc = res.accuracy_control
    assert not acc.met and out.exists()
    assert {s.action for s in acc.steps} == {"bits", "float"}  # 8 bits everywhere missed: float was tried too
    best = max(s.measure.sqnr_db for s in acc.steps if s.kept)
    assert acc.after.sqnr_db == best
    assert any("missed" in w and f"{best:.2f} dB" in w for w in res.warnings)
    assert res.diagnostics.of("target-missed")
    assert acc.eval_source == "calibration samples 32..159, held out from calibration" and not acc.notes


def test_metric_callback_with_labels():
    seen = []

    def accuracy(outputs, labels):
        seen.append((outputs.shape, labels.shape))
        return float(np.mean(outputs.argmax(1) == labels))

    val = np.load(VAL)
    res = onnxptq.quantize_with_accuracy_control(MODEL, CALIB, val["input"], accuracy, labels=val["labels"],
                                                 max_drop=0.01, **W2A4, **FAST)
    acc = res.accuracy_control
    assert seen and seen[0] == ((128, 10), (128,))
    float_acc = accuracy(run_onnxruntime(str(MODEL), {"input": val["input"][:128]}), val["labels"][:128])
    assert acc.met and acc.after.metric >= float_acc - 0.01 and acc.before.metric < float_acc - 0.01
    with pytest.raises(ConfigError):
        onnxptq.quantize_with_accuracy_control(MODEL, CALIB, val["input"], accuracy, **FAST)
    with pytest.raises(DataError, match="labels"):  # the CLI's top-1 metric without labels
        onnxptq.quantize(MODEL, CALIB, max_drop=0.01, eval_data=val["input"], **W2A4, **FAST)


# ------------------------------------------------------------------------------------------ command line


CLI_FAST = ["--no-progress", "--num-calib", "32", "--w-scale-method", "minmax", "--a-scale-method", "minmax",
            "--w-bits", "2", "--a-bits", "4", "--no-kernel-check"]


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written into the working directory would show below
    before = {p: sha256(p) for p in (MODEL, CALIB, VAL)}
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(MODEL), "--calib", str(CALIB), "-o", str(out), "--min-sqnr", "12", "--max-drop", "0.02",
               "--target-data", str(VAL), "--target-samples", "96", "--target-latency", *CLI_FAST])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert "accuracy target SQNR >= 12 dB and metric" in text and ": met;" in text
    assert "raised to 8 bits" in text and "onnxruntime latency" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # no temporary left, none in the cwd
    assert {p: sha256(p) for p in (MODEL, CALIB, VAL)} == before

    # an existing output is not replaced without --force, even by a run with a target
    digest = sha256(out)
    rc = main(["quantize", str(MODEL), "--calib", str(CALIB), "-o", str(out), "--min-sqnr", "12", *CLI_FAST])
    assert rc == 2 and "already exists" in capsys.readouterr().err and sha256(out) == digest

    # a missed target: the best model is written, a warning names the best value, exit code 4
    rc = main(["quantize", str(MODEL), "--calib", str(CALIB), "-o", str(out), "--force", "--min-sqnr", "200",
               "--target-action", "float", "--json", *CLI_FAST])
    cap = capsys.readouterr()
    s = json.loads(cap.out)
    assert rc == TARGET_MISSED and sha256(out) != digest
    assert s["accuracy_control"]["met"] is False and s["accuracy_control"]["changed"]
    assert any("missed" in w for w in s["warnings"])


def test_cli_flags_without_a_target_are_refused(capsys):
    rc = main(["quantize", str(MODEL), "--calib", str(CALIB), "-o", "/nonexistent/x.onnx", "--target-data", str(VAL)])
    assert rc == 2 and "--min-sqnr or --max-drop" in capsys.readouterr().err


def test_integer_export_raises_bits_only(tmp_path):
    """--format int: 8-bit layers only (no float layer in integer ONNX); the refined Po2 input grids stay Po2, so the
    integer program lowers and computes what the search measured."""
    out = tmp_path / "m.int.onnx"
    res = onnxptq.quantize(MODEL, CALIB, output=out, min_sqnr=200.0, scale="po2", format="int", **W2A4, **FAST)
    acc = res.accuracy_control
    assert not acc.met and {s.action for s in acc.steps} == {"bits"}
    assert any("no float stage" in n for n in acc.notes)
    x = {"input": np.load(CALIB)["input"][32:160]}
    assert sqnr_db(run_onnxruntime(str(MODEL), x), res.simulate(x)) == pytest.approx(acc.after.sqnr_db, abs=1e-3)
    assert sqnr_db(run_onnxruntime(str(MODEL), x), run_onnxruntime(str(out), x)) == pytest.approx(
        acc.after.sqnr_db, abs=1e-3)
