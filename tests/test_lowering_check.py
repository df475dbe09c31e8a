"""The integer program against the simulation it was lowered from (verify/lowering.py): exact on a real
model, and a wrong step is named by its node while level-1 verify still passes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import digits_path

import onnxptq
from onnxptq.export.integer import export_integer
from onnxptq.verify.integer import verify_integer
from onnxptq.verify.lowering import lowering_parity


@pytest.fixture(scope="module")
def int_resnet(digits_calib):
    calib = {"input": digits_calib["input"][:32]}
    return onnxptq.quantize(digits_path("digits_resnet"), calib,
                            scale="po2", format="int", progress=False)


def test_the_program_equals_the_simulation_at_every_quant_point(int_resnet, digits_val):
    """Po2 W8A8 ResNet: every quant point's integers equal the fake-quant simulation's, free-running and
    teacher-forced, and the run reports the check (4 calibration samples by default)."""
    res = int_resnet
    assert res.lowering is not None and res.lowering.ok and res.lowering.samples == 4
    assert "lowering check" in res.timings and "lowering_check" in res.summary()
    lp = lowering_parity(res.sim, res.program, {"input": digits_val["input"][:8]})
    assert lp.ok and lp.samples == 8 and lp.output_sqnr == float("inf")
    assert set(lp.local) == set(lp.end_to_end) and len(lp.local) >= len(res.program.steps) // 3
    assert all(r.max_lsb == 0 for r in lp.end_to_end.values())
    assert {"layer", "add", "avgpool"} <= set(lp.by_kind())


def test_a_wrong_step_is_named_by_its_node_and_verify_cannot_see_it(int_resnet, digits_val):
    """One layer's requantization shift off by one (a lowering bug): level-1 verify passes, because every
    engine runs the same wrong program; the lowering check names that layer only (teacher forcing keeps the
    error from spreading to the steps downstream), while the free run shows it downstream too."""
    res = int_resnet
    program = copy.deepcopy(res.program)
    step = [s for s in program.steps if s.kind == "layer"][2]
    step.attrs["shift"] = tuple(int(v) + 1 for v in np.atleast_1d(step.attrs["shift"]))
    x = {"input": digits_val["input"][:4]}
    assert verify_integer(export_integer(program, res.qgraph.model), x, 4, 0, progress=False).ok
    lp = lowering_parity(res.sim, program, x)
    assert not lp.ok
    (point, what), = lp.defect_items()
    assert point == step.outputs[0] and step.node in what and "layer step" in what
    assert lp.local[point].max_lsb > 1
    downstream = [t for t, r in lp.end_to_end.items() if t != point and r.max_lsb > 1]
    assert downstream and lp.output_sqnr < 40


def test_the_check_is_off_with_zero_samples_and_absent_for_qdq(digits_calib):
    calib = {"input": digits_calib["input"][:16]}
    path = digits_path("digits_resnet")
    res = onnxptq.quantize(path, calib, scale="po2", format="int", lowering_check=0, progress=False)
    assert res.lowering is None and "lowering check" not in res.timings
    assert onnxptq.quantize(path, calib, progress=False).lowering is None
