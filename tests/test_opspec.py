"""The op registry (onnxptq.ops.registry) against the simulation, the integer lowering and runtime/ops."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import runtime.ops
from onnxptq.export import integer
from onnxptq.ops.registry import REGISTRY, RUNTIME_KERNELS, build_registry
from onnxptq.ops.simulate import OPS
from onnxptq.ops.spec import DERIVED_LOWERINGS, LOWERINGS, ROLES, OpSpec
from onnxptq.verify import int_sim


def test_every_op_simulates_and_has_a_valid_spec():
    assert set(REGISTRY) == set(OPS)
    for name, spec in REGISTRY.items():
        assert spec.op_type == name and spec.simulate is OPS[name]
        assert spec.role in ROLES and spec.lowering in (None, *LOWERINGS)


def test_runtime_kernels_match_the_registry():
    declared = {s.runtime_kernel for s in REGISTRY.values() if s.runtime_kernel}
    assert declared <= set(runtime.ops.REGISTRY), "registry ops the runtime has no kernel for"
    missing = sorted(n for n in REGISTRY if n in runtime.ops.REGISTRY and REGISTRY[n].runtime_kernel is None)
    assert not missing, f"runtime kernels the registry does not declare: {missing}"
    assert RUNTIME_KERNELS <= set(REGISTRY)


def test_every_lowering_kind_has_a_writer_and_an_executor():
    kinds = {s.lowering for s in REGISTRY.values() if s.lowering}
    assert kinds | DERIVED_LOWERINGS == set(LOWERINGS) and not kinds & DERIVED_LOWERINGS
    for k in LOWERINGS:
        assert callable(getattr(integer.IntegerWriter, integer.WRITERS[k]))
        assert callable(getattr(int_sim.IntSim, int_sim.EXECUTORS[k]))


def test_layers_lower_as_layers_and_carries_keep_their_kind():
    for spec in REGISTRY.values():
        if spec.role == "layer":
            assert spec.lowering == "layer"
        if spec.lowering == "carry":
            assert spec.role == "carry"


def test_duplicate_or_unimplemented_ops_are_rejected():
    with pytest.raises(RuntimeError, match="declared twice"):
        build_registry([("a", "island", None, ("Relu",)), ("b", "island", "lut", ("Relu",))], ops={"Relu": OPS["Relu"]})
    with pytest.raises(RuntimeError, match="no torch function"):
        build_registry([("a", "island", None, ("NoSuchOp",))], ops={})
    with pytest.raises(RuntimeError, match="no family declares"):
        build_registry([], ops={"Relu": OPS["Relu"]})
    with pytest.raises(ValueError, match="role"):
        OpSpec("X", OPS["Relu"], role="bogus")


@pytest.mark.parametrize("op, ref", [
    ("Softsign", lambda x: x / (1 + np.abs(x))),
    ("Selu", lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x))),
    ("Celu", lambda x: np.maximum(0, x) + np.minimum(0, np.expm1(x))),
    ("ThresholdedRelu", lambda x: np.where(x > 1.0, x, 0.0)),
    ("Sin", np.sin), ("Cos", np.cos), ("Tan", np.tan), ("Atan", np.arctan),  # YOLOv8-OBB's angle head: Sin, Cos
])
def test_added_activations_simulate_as_onnx_defines_them(op, ref):
    x = np.linspace(-4, 4, 33).astype(np.float64)
    got = REGISTRY[op].simulate([torch.from_numpy(x)], {})[0].numpy()
    np.testing.assert_allclose(got, ref(x), rtol=1e-6, atol=1e-7)
    assert REGISTRY[op].lowering == "lut"


@pytest.mark.parametrize("op", ["Softsign", "Cos"])
def test_added_activation_end_to_end_through_the_registry(tmp_path, op):
    """Softsign and Cos (each added as one torch line and one name in a FAMILIES row of ops/elementwise.py) import,
    calibrate and lower to an integer lookup table that the integer model runs exactly (level 1)."""
    import onnxptq
    from onnx import numpy_helper
    from onnxptq.verify.integer import verify_integer

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="/c/Conv", pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node(op, ["c"], ["out"], name=f"/s/{op}")]
    g = helper.make_graph(nodes, "softsign",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = tmp_path / "softsign.onnx"
    onnx.save(model, p)
    calib = rng.uniform(-1, 1, (8, 3, 6, 6)).astype(np.float32)
    res = onnxptq.quantize(p, calib, scale="po2", format="int", progress=False, num_calib=8, first_last_bits=None,
                           w_scale_method="minmax", a_scale_method="minmax")
    assert any(s.kind == "lut" and s.attrs["op_type"] == op for s in res.program.steps)
    rep = verify_integer(res.model, {"input": calib[:4]}, batch_size=4, reference_samples=1)
    assert rep.ok, rep.format()


def test_resize_role_follows_its_mode():
    """Nearest Resize carries its input's quant point; linear/cubic make new values and get their own."""
    from onnxptq.ops.registry import REGISTRY

    spec = REGISTRY["Resize"]
    assert spec.role_of({"mode": b"nearest"}) == "carry" and spec.role_of({}) == "carry"
    assert spec.role_of({"mode": b"linear"}) == "island" and spec.role_of({"mode": "cubic"}) == "island"
    assert REGISTRY["Relu"].role_of({}) == REGISTRY["Relu"].role
