"""Session API: loading, validation, input checks, outputs/keep, memory release, external data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rt_helpers import make_model, vi

import runtime


def _chain(opset: int = 21) -> onnx.ModelProto:
    """x:int8[N,3,4,4] -> Cast(int32) -> Add(b) -> Mul(2) -> ReduceSum -> y; also side output."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT32, name="cast"),
        helper.make_node("Add", ["xi", "b"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "two"], ["m"], name="mul"),
        helper.make_node("ReduceSum", ["m", "axes"], ["y"], keepdims=0, name="sum"),
        helper.make_node("Neg", ["xi"], ["dead"], name="dead_end"),
    ]
    inits = {
        "b": np.arange(3, dtype=np.int32).reshape(3, 1, 1),
        "two": np.int32(2),
        "axes": np.array([2, 3], np.int64),
    }
    return make_model(nodes, [vi("x", np.int8, ["N", 3, 4, 4])], [vi("y", np.int32)], inits, opset)


X = np.arange(2 * 3 * 16, dtype=np.int64).reshape(2, 3, 4, 4).astype(np.int8)


def _expected_y(x):
    return ((x.astype(np.int32) + np.arange(3, dtype=np.int32).reshape(3, 1, 1)) * 2).sum(axis=(2, 3))


def test_run_outputs_and_convenience():
    s = runtime.Session(_chain())
    out = s.run({"x": X})
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], _expected_y(X))
    np.testing.assert_array_equal(runtime.run(_chain(), {"x": X})["y"], out["y"])
    assert s.input_names == ["x"] and s.output_names == ["y"]


def test_named_intermediate_output_runs_only_what_it_needs():
    s = runtime.Session(_chain())
    out = s.run({"x": X}, outputs=["a"])
    assert list(out) == ["a"]
    np.testing.assert_array_equal(out["a"], X.astype(np.int32) + np.arange(3, dtype=np.int32).reshape(3, 1, 1))
    plan = s._plan(("a",), False, frozenset())
    assert [s._nodes[i].name for i in plan.steps] == ["cast", "add"]


def test_keep_true_returns_every_tensor_and_keep_list():
    s = runtime.Session(_chain())
    allt = s.run({"x": X}, keep=True)
    for name in ("x", "xi", "a", "m", "y", "dead"):
        assert name in allt, name
    assert "b" not in allt  # initializers are not intermediates
    some = s.run({"x": X}, keep=["m"])
    assert set(some) == {"y", "m"}


def test_intermediates_are_freed_after_last_use():
    s = runtime.Session(_chain())
    plan = s._plan(("y",), False, frozenset())
    freed = {n for names in plan.free.values() for n in names}
    assert {"xi", "a", "m"} <= freed and "y" not in freed and "b" not in freed
    plan_keep = s._plan(("y",), False, frozenset({"a"}))
    assert "a" not in {n for names in plan_keep.free.values() for n in names}


@pytest.mark.parametrize(
    "feeds,match",
    [
        ({}, "missing"),
        ({"x": X.astype(np.int16)}, "wrong dtype int16, expected int8"),
        ({"x": X[0]}, "wrong rank 3"),
        ({"x": X[:, :2]}, r"wrong shape \[2, 2, 4, 4\] \(axis 1 is 2\)"),
        ({"x": X, "nope": X}, "not an input of the model"),
    ],
)
def test_input_errors_name_the_input(feeds, match):
    s = runtime.Session(_chain())
    with pytest.raises(runtime.InputError, match=match) as ei:
        s.run(feeds)
    assert ei.value.input_name in ("x", "nope")


def test_symbolic_dims_must_agree_across_inputs():
    n = helper.make_node("Add", ["a", "b"], ["y"])
    m = make_model([n], [vi("a", np.float32, ["B", 2]), vi("b", np.float32, ["B", 2])], [vi("y", np.float32)])
    s = runtime.Session(m)
    s.run({"a": np.zeros((3, 2), np.float32), "b": np.zeros((3, 2), np.float32)})
    with pytest.raises(runtime.InputError, match="dimension 'B'"):
        s.run({"a": np.zeros((3, 2), np.float32), "b": np.zeros((1, 2), np.float32)})


def test_unsupported_op_named_at_load():
    n = helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="my_lstm", hidden_size=2)
    m = make_model([n], [vi("x", np.float32, [1, 1, 2]), vi("w", np.float32, [1, 8, 2]), vi("r", np.float32, [1, 8, 2])], [vi("y", np.float32)])
    with pytest.raises(runtime.UnsupportedOpError, match="my_lstm.*LSTM"):
        runtime.Session(m)
    r = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear")
    m = make_model([r], [vi("x", np.int8, [1, 1, 2, 2])], [vi("y", np.int8)], {"s": np.array([1, 1, 2, 2], np.float32)}, 19)
    with pytest.raises(runtime.UnsupportedOpError, match="'up'.*Resize.*linear"):
        runtime.Session(m)
    c = helper.make_node("Relu", ["x"], ["y"], name="custom", domain="com.example")
    m = make_model([c], [vi("x", np.float32, [1])], [vi("y", np.float32)])
    with pytest.raises(runtime.UnsupportedOpError, match="custom"):
        runtime.Session(m)


def test_type_constraint_violation_is_a_model_error():
    n = helper.make_node("Add", ["a", "b"], ["y"], name="mixed")
    m = make_model([n], [vi("a", np.int8, [2]), vi("b", np.int32, [2])], [vi("y", np.int8)])
    with pytest.raises(runtime.ModelError, match="mixed"):
        runtime.Session(m).run({"a": np.zeros(2, np.int8), "b": np.zeros(2, np.int32)})


def test_op_failure_names_node_and_shapes():
    n = helper.make_node("Reshape", ["x", "shape"], ["y"], name="bad_reshape")
    m = make_model([n], [vi("x", np.float32, [2, 3])], [vi("y", np.float32)], {"shape": np.array([4, -1], np.int64)})
    with pytest.raises(runtime.NodeExecutionError, match=r"bad_reshape.*Reshape.*float32\[2, 3\]"):
        runtime.Session(m).run({"x": np.zeros((2, 3), np.float32)})


def test_constant_folding_and_keep_reports_folded():
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.INT8, [2], [3, -4])),
        helper.make_node("DequantizeLinear", ["c", "s"], ["cf"]),
        helper.make_node("Add", ["x", "cf"], ["y"]),
    ]
    m = make_model(nodes, [vi("x", np.float32, [2])], [vi("y", np.float32)], {"s": np.float32(0.5)})
    s = runtime.Session(m)
    assert {s._nodes[i].op_type for i in s._folded} == {"Constant", "DequantizeLinear"}
    out = s.run({"x": np.ones(2, np.float32)}, keep=True)
    np.testing.assert_array_equal(out["y"], [2.5, -1.0])
    assert "cf" in out and "c" in out


def test_overridable_initializer_can_be_fed():
    n = helper.make_node("Add", ["x", "b"], ["y"])
    m = make_model([n], [vi("x", np.float32, [2]), vi("b", np.float32, [2])], [vi("y", np.float32)], {"b": np.ones(2, np.float32)})
    s = runtime.Session(m)
    assert s.input_names == ["x"]
    np.testing.assert_array_equal(s.run({"x": np.zeros(2, np.float32)})["y"], [1, 1])
    np.testing.assert_array_equal(s.run({"x": np.zeros(2, np.float32), "b": np.full(2, 5, np.float32)})["y"], [5, 5])


def test_load_from_path_with_external_data(tmp_path):
    w = np.arange(4 * 3 * 3 * 3, dtype=np.int64).reshape(4, 3, 3, 3).astype(np.int8)
    n = helper.make_node("ConvInteger", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    m = make_model([n], [vi("x", np.int8, [1, 3, 5, 5])], [vi("y", np.int32)], {"w": w}, 10)
    x = np.ones((1, 3, 5, 5), np.int8)
    y2 = runtime.Session(m).run({"x": x})["y"]
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").exists()
    y = runtime.Session(path).run({"x": x})["y"]
    np.testing.assert_array_equal(y, y2)
    unloaded = onnx.load(str(path), load_external_data=False)
    with pytest.raises(runtime.ModelError, match="external data"):
        runtime.Session(unloaded)


def test_int4_initializer_and_dequantize():
    from onnx import numpy_helper

    t = helper.make_tensor("w", TensorProto.INT4, [5], [-8, -1, 0, 3, 7])
    n = helper.make_node("DequantizeLinear", ["w", "s"], ["y"])
    g = helper.make_graph([n], "g", [], [vi("y", np.float32)], initializer=[t, numpy_helper.from_array(np.float32(0.5), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    np.testing.assert_array_equal(runtime.run(m, {})["y"], [-4, -0.5, 0, 1.5, 3.5])
