"""LSTM and GRU (ops/recurrent.py): the simulation against onnxruntime, and a model holding one quantizes
with the recurrence left float."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from helpers import ort_run

from onnxptq.ops.registry import REGISTRY

SEQ, BATCH, IN, H = 5, 3, 4, 6


def _node_model(op: str, inputs: dict[str, np.ndarray], attrs: dict, n_out: int) -> onnx.ModelProto:
    names = list(inputs)
    outs = ["Y", "Y_h", "Y_c"][:n_out]
    x = inputs[names[0]]
    feeds = [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, list(x.shape))]
    inits = [numpy_helper.from_array(v, k) for k, v in inputs.items() if k != names[0] and v is not None]
    node = helper.make_node(op, [k if v is not None else "" for k, v in inputs.items()], outs, name="rnn", **attrs)
    g = helper.make_graph([node], "rnn", feeds, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _inputs(op: str, dirs: int, layout: int, bias: bool, states: bool, peep: bool, rng) -> dict:
    gates = 4 if op == "LSTM" else 3
    x = rng.standard_normal((BATCH, SEQ, IN) if layout else (SEQ, BATCH, IN)).astype(np.float32)
    st = (BATCH, dirs, H) if layout else (dirs, BATCH, H)
    d = {"X": x,
         "W": (rng.standard_normal((dirs, gates * H, IN)) * 0.5).astype(np.float32),
         "R": (rng.standard_normal((dirs, gates * H, H)) * 0.5).astype(np.float32),
         "B": (rng.standard_normal((dirs, 2 * gates * H)) * 0.2).astype(np.float32) if bias else None,
         "sequence_lens": np.full(BATCH, SEQ, np.int32) if states else None,
         "initial_h": rng.standard_normal(st).astype(np.float32) if states else None}
    if op == "LSTM":
        d["initial_c"] = rng.standard_normal(st).astype(np.float32) if states else None
        d["P"] = (rng.standard_normal((dirs, 3 * H)) * 0.3).astype(np.float32) if peep else None
    while d and list(d.values())[-1] is None:  # trailing optional inputs left out
        d.popitem()
    return d


CASES = [
    ("LSTM", dict(), 1, 0, False, False, False),
    ("LSTM", dict(direction="bidirectional"), 2, 0, True, True, True),
    ("LSTM", dict(direction="reverse", clip=1.5), 1, 0, True, False, False),
    ("LSTM", dict(input_forget=1), 1, 0, True, True, False),
    ("LSTM", dict(activations=["Sigmoid", "Relu", "Tanh"]), 1, 0, True, False, False),
    ("GRU", dict(), 1, 0, True, False, False),
    ("GRU", dict(linear_before_reset=1, direction="bidirectional"), 2, 0, True, True, False),
    ("GRU", dict(direction="reverse", clip=2.0), 1, 0, True, True, False),
]


@pytest.mark.parametrize("op, attrs, dirs, layout, bias, states, peep", CASES)
def test_recurrent_layer_matches_onnxruntime(op, attrs, dirs, layout, bias, states, peep):
    rng = np.random.default_rng(len(str(attrs)) + dirs)
    inputs = _inputs(op, dirs, layout, bias, states, peep, rng)
    n_out = 3 if op == "LSTM" else 2
    m = _node_model(op, inputs, {"hidden_size": H, "layout": layout, **attrs}, n_out)
    want = ort_run(m, {"X": inputs["X"]})
    got = REGISTRY[op].simulate([None if v is None else torch.from_numpy(v) for v in inputs.values()],
                                {"hidden_size": H, "layout": layout, **attrs})
    assert len(got) == n_out
    for w, g in zip(want, got):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_batch_first_layout_matches_the_reference():
    """layout=1 (batch first; onnxruntime's CPU kernels take layout 0 only): against onnx.reference."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(3)
    inputs = _inputs("LSTM", 1, 1, True, True, False, rng)
    m = _node_model("LSTM", inputs, {"hidden_size": H, "layout": 1}, 3)
    want = ReferenceEvaluator(m).run(None, {"X": inputs["X"]})
    got = REGISTRY["LSTM"].simulate([None if v is None else torch.from_numpy(v) for v in inputs.values()],
                                    {"hidden_size": H, "layout": 1})
    for w, g in zip(want, got):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-5)


def test_unsupported_attributes_are_named():
    x = torch.zeros(SEQ, BATCH, IN)
    w, r = torch.zeros(1, 4 * H, IN), torch.zeros(1, 4 * H, H)
    with pytest.raises(NotImplementedError, match="Elu"):
        REGISTRY["LSTM"].simulate([x, w, r], {"hidden_size": H, "activations": [b"Sigmoid", b"Elu", b"Tanh"]})
    with pytest.raises(NotImplementedError, match="sequence_lens"):
        REGISTRY["LSTM"].simulate([x, w, r, None, torch.tensor([SEQ, 2, SEQ], dtype=torch.int32)],
                                  {"hidden_size": H})


def test_a_model_with_an_lstm_quantizes_with_the_recurrence_float(tmp_path):
    """MatMul -> LSTM -> MatMul (a sequence model): W8A8 QDQ runs in onnxruntime close to the float model; the
    LSTM keeps float weights; the integer format refuses it by name."""
    import onnxptq
    from onnxptq.errors import UnsupportedOpError

    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["e"], name="embed"),
             helper.make_node("Transpose", ["e"], ["e_t"], name="to_seq_first", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["e_t", "W", "R", "B"], ["Y", "Y_h"], name="lstm", hidden_size=H),
             helper.make_node("Squeeze", ["Y", "one"], ["y_s"], name="drop_dir"),
             helper.make_node("Transpose", ["y_s"], ["y_b"], name="to_batch_first", perm=[1, 0, 2]),
             helper.make_node("MatMul", ["y_b", "w_out"], ["y"], name="head")]
    inits = {"w_in": rng.standard_normal((IN, IN)) * 0.5, "W": rng.standard_normal((1, 4 * H, IN)) * 0.5,
             "R": rng.standard_normal((1, 4 * H, H)) * 0.5, "B": rng.standard_normal((1, 8 * H)) * 0.2,
             "w_out": rng.standard_normal((H, 3)) * 0.5}
    g = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SEQ, IN])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SEQ, 3])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
                          + [numpy_helper.from_array(np.array([1], np.int64), "one")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "seq.onnx"
    onnx.save(m, str(path))
    x = rng.standard_normal((48, SEQ, IN)).astype(np.float32)
    res = onnxptq.quantize(str(path), x[:32], w_bits=8, a_bits=8, progress=False)
    assert "lstm" not in {layer.name for layer in res.qgraph.layers}  # its weights stay float
    ref, got = ort_run(m, {"x": x[32:]})[0], ort_run(res.model, {"x": x[32:]})[0]
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    assert sqnr > 25, sqnr
    with pytest.raises(UnsupportedOpError, match="'lstm' \\(LSTM"):
        onnxptq.quantize(str(path), x[:32], w_bits=8, a_bits=8, scale="po2", format="int", progress=False)


def _seq_first_lstm(tmp_path, lens: list[int] | None):
    """x (5, 2, IN) fixed, time first: the LSTM reads axis 0 as time, so the graph's first axis stays fixed."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["e"], name="embed"),
             helper.make_node("LSTM", ["e", "W", "R", "", "lens" if lens else ""], ["Y"], name="lstm",
                              hidden_size=H)]
    inits = {"w_in": rng.standard_normal((IN, IN)), "W": rng.standard_normal((1, 4 * H, IN)),
             "R": rng.standard_normal((1, 4 * H, H))}
    g = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, 2, IN])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [SEQ, 1, 2, H])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
                          + ([numpy_helper.from_array(np.array(lens, np.int32), "lens")] if lens else []))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "seq_first.onnx"
    onnx.save(m, str(path))
    return str(path), rng.standard_normal((10, 2, IN)).astype(np.float32)


def test_an_attribute_the_simulation_lacks_is_a_user_error_naming_the_node(tmp_path):
    """An op's simulation raises NotImplementedError for attribute values it does not cover (LSTM variable
    sequence lengths, Resize modes): the run stops with the node named, not with an internal error."""
    import onnxptq
    from onnxptq.errors import UnsupportedOpError

    path, x = _seq_first_lstm(tmp_path, [SEQ, 3])
    with pytest.raises(UnsupportedOpError, match="'lstm' \\(LSTM: LSTM with sequence_lens shorter"):
        onnxptq.quantize(path, x, batch_size=SEQ, progress=False)
