"""Accuracy target before reconstruction (``--target-stage``, ``onnxptq/accuracy/rounds.py``): the calibrated
model's goal, the rounds of (bits search, reconstruction again), what the report and diagnostics say, that the
exported model is the last reconstructed one, and the options that refuse it."""
from __future__ import annotations

import numpy as np
import pytest

import onnxptq
from onnxptq.accuracy.target import Measure, Target, calibrated_goal
from onnxptq.config import QuantConfig
from onnxptq.diagnostics import Diagnostics
from onnxptq.errors import ConfigError
from onnxptq.eval import run_onnxruntime, sqnr_db

from helpers import MODELS, suite_weight_bits

MODEL = MODELS / "digits_resnet.onnx"
CALIB = MODELS / "digits_calib.npz"
VAL = MODELS / "digits_val.npz"
# BRECQ W4A4 with short schedules: a few seconds per reconstruction of digits ResNet
RECON = dict(method="brecq", w_bits=4, a_bits=4, num_calib=32, iters=40, act_iters=20, recon_batch_size=16,
             progress=False, check_kernels=False)
TARGET = 30.0  # above what the reconstructed W4A4 model gives (about 20 dB), below all-8-bit


# ------------------------------------------------------------------------------------------ pure helpers


def test_calibrated_goal_adds_the_shortfall_to_the_calibrated_value():
    t = Target(min_sqnr=12.0)
    # reconstruction took 5 dB to 9 dB: 3 dB short, so the calibrated model must reach 8 dB
    assert calibrated_goal(t, Measure(5.0), Measure(9.0)).min_sqnr == pytest.approx(8.0)
    # metric: float 0.9, at most 0.05 lower -> 0.85 needed; reconstructed 0.80 (0.05 short), calibrated 0.60 -> 0.65
    t = Target(max_drop=0.05, float_metric=0.9)
    g = calibrated_goal(t, Measure(5.0, 0.60), Measure(9.0, 0.80))
    assert g.min_sqnr is None and g.float_metric == 0.9 and g.max_drop == pytest.approx(0.25)
    assert g.holds(Measure(0.0, 0.65)) and not g.holds(Measure(0.0, 0.64))
    # both parts; a part the reconstructed model already meets asks nothing more of the calibrated one
    t = Target(min_sqnr=10.0, max_drop=0.05, float_metric=0.9)
    g = calibrated_goal(t, Measure(4.0, 0.70), Measure(11.0, 0.80))
    assert g.min_sqnr == pytest.approx(3.0) and g.holds(Measure(3.0, 0.75)) and not g.holds(Measure(3.0, 0.74))
    with pytest.raises(ValueError):
        calibrated_goal(t, Measure(4.0), Measure(11.0, 0.8))


def test_target_text_is_short():
    assert Target(min_sqnr=22.2974).describe() == "SQNR >= 22.3 dB"
    assert Target(min_sqnr=12.0).describe() == "SQNR >= 12 dB"


def test_diagnostics_rewind_forgets_what_came_after_the_mark():
    d = Diagnostics()
    d.add("other", "a", "kept", quiet=True)
    d.totals["other"] = 1
    mark = d.mark()
    d.add("other", "b", "dropped", quiet=True)
    d.totals["other"] = 5
    d.rewind(mark)
    assert [x.where for x in d.items] == ["a"] and d.totals == {"other": 1}


def test_checkpoints_of_other_bits_do_not_match():
    """A round reconstructs with the same options but other bits: its checkpoint fingerprint differs."""
    from onnxptq.accuracy.changes import change_layer
    from onnxptq.api import quantize
    from onnxptq.recon.checkpoint import fingerprint

    res = quantize(MODEL, CALIB, num_calib=32, progress=False, check_kernels=False, w_bits=4, a_bits=4)
    cfg = QuantConfig(method="brecq", w_bits=4, a_bits=4)
    x = {"input": np.load(CALIB)["input"][:8]}
    before = fingerprint(res.sim, x, cfg)
    assert fingerprint(res.sim, x, cfg) == before
    name = res.qgraph.layers[3].name
    res.sim.load_state(change_layer(res.sim.export_state(), res.sim, name, "bits", res.config))
    assert fingerprint(res.sim, x, cfg) != before


@pytest.mark.parametrize("kw, match", [
    (dict(min_sqnr=20.0, target_stage="before", target_action="float"), "--target-stage before raises bits"),
    (dict(target_stage="before"), "belong to an accuracy target"),
])
def test_options_are_checked(kw, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kw)


def test_before_needs_a_reconstructing_method(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="needs a method that reconstructs"):
        onnxptq.quantize(MODEL, CALIB, output=out, min_sqnr=20.0, target_stage="before", num_calib=32, progress=False)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    out = tmp_path_factory.mktemp("rounds") / "m.onnx"
    res = onnxptq.quantize(MODEL, CALIB, output=out, min_sqnr=TARGET, target_data=str(VAL), **RECON)
    return res, out


def test_rounds_meet_the_target_and_are_reported(rounds):
    res, out = rounds
    acc = res.accuracy_control
    assert acc.met and acc.before.sqnr_db < TARGET <= acc.after.sqnr_db
    assert 1 <= len(acc.rounds) <= 3
    last = acc.rounds[-1]
    assert last.reconstructed == acc.after  # the exported model is the last round's reconstruction
    assert all(not r.reconstructed.sqnr_db >= TARGET for r in acc.rounds[:-1])  # rounds stop once it holds
    for k, r in enumerate(acc.rounds, 1):
        steps = [s for s in acc.steps if s.round == k]
        assert r.kept == sum(s.kept for s in steps) > 0
        assert r.seconds > 0 and r.goal.startswith("SQNR >= ")
        assert steps[-1].measure == r.calibrated or not steps[-1].kept
    assert all(s.round >= 1 for s in acc.steps)  # met in the rounds: no search on the reconstructed model
    # the kept changes are in the exported model
    for s in acc.steps:
        if s.kept and s.kind == "layer":
            w8 = suite_weight_bits(8)
            assert res.sim.weight_quantizer(s.layer).params.grid.bits == w8 and res.plan.w_bits[s.layer] == w8
        if s.kept and s.kind == "point":
            assert res.sim.act_quantizer(s.layer).params.grid.bits == 8
    lines = acc.lines()
    assert any(line.strip().startswith("round 1 (rows r1") for line in lines)
    assert any(" r1 " in line for line in lines)
    text = out.with_suffix(".md").read_text() if out.with_suffix(".md").exists() else None
    assert text is None or "rounds before reconstruction" in text


def test_rounds_export_the_measured_model(rounds):
    res, out = rounds
    x = {"input": np.load(VAL)["input"][:128]}
    ref = run_onnxruntime(str(MODEL), x)
    assert sqnr_db(ref, res.simulate(x)) == pytest.approx(res.accuracy_control.after.sqnr_db, abs=1e-3)
    assert sqnr_db(ref, run_onnxruntime(str(out), x)) == pytest.approx(res.accuracy_control.after.sqnr_db, abs=0.5)


def test_rounds_report_the_last_reconstruction_only(rounds):
    """Each round reconstructs again: the run's reconstruction report and its fallbacks are the last round's."""
    res, _ = rounds
    assert res.recon is not None and res.recon.regions
    reverted = {r.name for r in res.recon.regions if r.reverted}
    assert {x.where for x in res.diagnostics.of("region-rtn")} == reverted
    assert len(res.diagnostics.of("region-rtn")) == len(reverted)  # not once per round
    assert len(res.diagnostics.of("target-bits")) + len(res.diagnostics.of("target-point")) == len(
        res.accuracy_control.changed())


def test_after_stage_searches_the_reconstructed_model_only():
    res = onnxptq.quantize(MODEL, CALIB, min_sqnr=TARGET, target_data=str(VAL), target_stage="after", **RECON)
    acc = res.accuracy_control
    assert not acc.rounds and acc.steps and all(s.round == 0 for s in acc.steps)
