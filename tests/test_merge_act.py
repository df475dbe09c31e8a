"""An Add / Sub / Sum of activations followed by Relu or Clip is one unit (``QGraph.merge_acts``): quantized once,
after the activation, as a layer with a fused activation is. Placement, the QDQ file onnxruntime fuses into
QLinearAdd, level-2 parity, and the integer step clipping onto the activation's grid."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import save_graph

import onnxptq
from onnxptq.verify.integer import verify_integer
from onnxptq.verify.qdq import OrtExactRunner, qdq_output_parity, qdq_parity

C = 8


def _residual(tmp_path, act: str = "Relu", op: str = "Add", extra_use: bool = False, constant_operand: bool = False,
              name: str = "res") -> str:
    """x -> Conv a, Conv b -> ``op`` -> ``act`` -> Conv c -> y (``extra_use``: the sum also feeds the output Add;
    ``constant_operand``: Conv a plus a constant per channel instead of Conv b)."""
    rng = np.random.default_rng(0)
    inits = {"wa": rng.standard_normal((C, 4, 3, 3)) * 0.3, "ba": rng.standard_normal(C) * 0.1,
             "wb": rng.standard_normal((C, 4, 1, 1)) * 0.5, "bb": rng.standard_normal(C) * 0.1,
             "wc": rng.standard_normal((C, C, 1, 1)) * 0.3, "bc": np.zeros(C), "lo": np.array(0.0), "hi": np.array(6.0),
             "k": rng.standard_normal((1, C, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="conv_b"),
             helper.make_node(op, ["a", "k" if constant_operand else "b"], ["s"], name="sum")]
    nodes.append(helper.make_node("Relu", ["s"], ["r"], name="act") if act == "Relu"
                 else helper.make_node("Clip", ["s", "lo", "hi"], ["r"], name="act"))
    nodes.append(helper.make_node("Conv", ["r", "wc", "bc"], ["c"], name="conv_c"))
    out = "c"
    if extra_use:
        nodes.append(helper.make_node("Add", [out, "s"], ["y2"], name="reuse"))
        out = "y2"
    nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    return save_graph(tmp_path, name, nodes, [4, 8, 8], [C, 8, 8], inits)


def _x(n: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("act, op, bounds", [("Relu", "Add", (0.0, float("inf"))), ("Clip", "Add", (0.0, 6.0)),
                                             ("Relu", "Sub", (0.0, float("inf"))), ("Relu", "Sum", (0.0, float("inf")))])
def test_sum_then_activation_is_one_unit_quantized_after_it(tmp_path, act, op, bounds):
    res = onnxptq.quantize(_residual(tmp_path, act, op), _x()[:32], w_bits=8, a_bits=8, scale="float",
                           target="onnxruntime", progress=False)
    qg = res.sim.qg
    assert "s" not in qg.quant_points and "s" not in qg.source  # the sum is never rounded on its own
    assert qg.quant_points["r"].kind == "merge"
    m = qg.merge_acts["sum"]
    assert (m.act_node, m.act_bounds, m.output) == ("act", bounds, "r")
    assert qg.unit_output("sum", "s") == "r"
    # the activation's grid starts at its lower bound: no code is spent on the negative sums
    p = res.sim.act_quantizer("r").params
    assert float((p.grid.qmin - p.zero_point) * p.scale) >= -float(p.scale) * 0.5


@pytest.mark.parametrize("case", ["extra_use", "constant_operand"])
def test_a_sum_read_elsewhere_or_of_one_activation_is_not_fused(tmp_path, case):
    path = _residual(tmp_path, **{case: True})
    res = onnxptq.quantize(path, _x()[:32], w_bits=8, a_bits=8, scale="float", progress=False)
    qg = res.sim.qg
    assert not qg.merge_acts and "s" in qg.quant_points  # the sum keeps its own quant point


def test_onnxruntime_runs_the_unit_as_qlinearadd_bit_exact(tmp_path):
    """The QDQ file drops the Relu (its bound is the grid's lower end), onnxruntime fuses DQ -> Add -> Q into
    QLinearAdd, and level-2 parity holds: the ort-exact simulation reproduces that kernel teacher-forced."""
    x = _x()
    res = onnxptq.quantize(_residual(tmp_path), x[:32], output=tmp_path / "q.onnx", w_bits=8, a_bits=8,
                           scale="float", target="onnxruntime", progress=False)
    assert "Relu" not in {n.op_type for n in res.model.graph.node}
    rep = qdq_parity(res.sim, str(res.output), {"x": x[32:]})
    assert rep.kernels["r"] == "QLinearAdd"
    runner = OrtExactRunner(res.sim, rep.kernels)  # the ort-exact run computes the unit with QLinearAdd's arithmetic
    assert runner.handles(next(n for n in res.sim.nodes if n.name == "sum"))
    assert rep.exact_local["r"].bit_exact, rep.exact_local["r"].histogram
    assert rep.max_local_lsb <= 1 and not rep.defects()


def test_a_target_clipping_in_float_keeps_the_relu(tmp_path):
    """OpenVINO's target clips in float: DQ -> Add -> Relu -> Q, and the file computes what the simulation does."""
    x = _x()
    res = onnxptq.quantize(_residual(tmp_path), x[:32], output=tmp_path / "q.onnx", w_bits=8, a_bits=8,
                           scale="float", target="openvino", progress=False)
    g = res.model.graph
    act = next(n for n in g.node if n.op_type == "Relu")
    assert [n.op_type for n in g.node if act.output[0] in n.input] == ["QuantizeLinear"]
    rep = qdq_output_parity(res.sim, str(res.output), {"x": x[32:]})
    assert rep.max_lsb <= 1 and rep.exact_rate > 0.99, rep.histogram


@pytest.mark.parametrize("act, op", [("Relu", "Add"), ("Clip", "Add"), ("Relu", "Sum")])
def test_integer_step_clips_onto_the_activation_grid(tmp_path, act, op):
    """Po2 integer export: one add step writes the activation's quant point, clipped to its bounds there; no step
    for the activation; level-1 verify and the lowering check pass."""
    x = _x()
    res = onnxptq.quantize(_residual(tmp_path, act, op), x[:32], w_bits=8, a_bits=8, scale="po2", format="int",
                           progress=False)
    steps = {s.node: s for s in res.program.steps}
    assert "act" not in steps
    st = steps["sum"]
    assert st.kind == "add" and st.outputs == ["r"]
    y = res.program.tensors["r"]
    assert st.attrs["lo"] >= y.zp  # nothing below zero survives
    if act == "Clip":
        assert (st.attrs["hi"] - y.zp) * 2.0 ** -y.frac <= 6.0
    assert verify_integer(res.model, {"x": x[32:40]}, batch_size=8).ok
    assert res.lowering.ok, res.lowering.format()


def test_inspect_lists_the_fused_sums(tmp_path, capsys):
    from onnxptq.cli import main

    path = _residual(tmp_path, "Clip")
    info = onnxptq.inspect(path)
    assert info["merge_activations"] == [{"node": "sum", "activation": "act", "bounds": [0.0, 6.0], "output": "r"}]
    assert main(["inspect", path]) == 0
    assert "1 Add/Sub/Sum node with its Relu/Clip fused (quantized once, after the activation)" in capsys.readouterr().out
