"""BatchNorm folding and Identity/Dropout removal (onnxptq.graph.fold) keep the float function exactly."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxptq.graph import import_model
from onnxptq.graph.fold import fold
from onnxptq.sim.model import SimModel

from helpers import DIGITS, count_ops, digits_path, export_torch_model, ort_run, suite_weight_bits

REL_TOL = 1e-4


def assert_close_rel(ref: np.ndarray, got: np.ndarray, tol: float = REL_TOL) -> None:
    assert ref.shape == got.shape
    assert np.all(np.isfinite(got))
    err = float(np.abs(ref.astype(np.float64) - got).max())
    scale = max(float(np.abs(ref).max()), 1e-12)
    assert err / scale < tol, f"max |diff| {err:.3g} = {err / scale:.3g} relative (limit {tol})"


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
        bn.weight[0] = -0.7  # a negative gamma flips the channel: folding must keep the sign
        bn.bias.copy_(torch.randn(n, generator=g) * 0.5)
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)


class FoldNet(nn.Module):
    """Conv(bias=False)+BN, Conv(bias=True)+BN, a BN after a residual Add (no conv: becomes a depthwise 1x1
    conv), Linear+BN1d."""

    def __init__(self, linear_bias: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc1, self.bn4 = nn.Linear(8, 16, bias=linear_bias), nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)
        for k, bn in enumerate((self.bn1, self.bn2, self.bn3, self.bn4)):
            randomize_bn(bn, k)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = self.bn2(self.conv2(y))
        y = self.bn3(torch.relu(z + y))
        y = torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)
        y = torch.relu(self.bn4(self.fc1(y)))
        return self.fc2(y)


class ConvBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 4, 3, stride=2, bias=True), nn.BatchNorm2d(4)
        randomize_bn(self.bn1, 10)
        randomize_bn(self.bn2, 11)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


@pytest.fixture(scope="module")
def x8() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)


def _sim_float(qg, x: np.ndarray) -> np.ndarray:
    sim = SimModel(qg).eval()
    with torch.no_grad():
        return sim({qg.inputs[0]: torch.from_numpy(x)})[qg.outputs[0]].numpy()


def _node_named(model: onnx.ModelProto, part: str, op: str) -> onnx.NodeProto:
    found = [n for n in model.graph.node if n.op_type == op and part in n.name]
    assert len(found) == 1, (part, op, [n.name for n in model.graph.node])
    return found[0]


# ---------------------------------------------------------------- torch model with BN kept

@pytest.mark.parametrize("linear_bias", [True, False])
def test_fold_torch_model(tmp_path, x8, linear_bias):
    torch.manual_seed(0)
    net = FoldNet(linear_bias).eval()
    path = export_torch_model(net, torch.from_numpy(x8[:1]), tmp_path / "foldnet.onnx")
    original = onnx.load(str(path))
    assert count_ops(original, "BatchNormalization") == 4, "the export must keep the BN nodes"
    with torch.no_grad():
        y_torch = net(torch.from_numpy(x8)).numpy()
    y_ref = ort_run(path, {"input": x8})[0]
    assert_close_rel(y_torch, y_ref, 1e-5)

    folded, report = fold(original)
    onnx.checker.check_model(folded)
    assert count_ops(original, "BatchNormalization") == 4, "fold() must not modify its input"
    assert_close_rel(y_ref, ort_run(folded, {"input": x8})[0])

    conv1 = _node_named(original, "conv1", "Conv").name
    conv2 = _node_named(original, "conv2", "Conv").name
    bn3 = _node_named(original, "bn3", "BatchNormalization").name
    bn4 = _node_named(original, "bn4", "BatchNormalization").name
    pairs = [(conv1, net.bn1), (conv2, net.bn2)]
    if linear_bias:  # Linear with bias exports as Gemm: folded like a conv
        fc1 = _node_named(original, "fc1", "Gemm").name
        pairs.append((fc1, net.bn4))
        expect_unfolded = []
    else:  # Linear without bias exports as MatMul; its BN may be folded, else it must be reported
        fc1 = _node_named(original, "fc1", "MatMul").name
        expect_unfolded = [] if fc1 in report.folded else [bn4]  # a 2-D BN has no conv form: it stays
        if fc1 in report.folded:
            pairs.append((fc1, net.bn4))
    assert set(report.folded) == {layer for layer, _ in pairs}
    assert "bn1" in report.folded[conv1] and "bn2" in report.folded[conv2]
    assert sorted(report.unfolded_bn) == sorted(expect_unfolded)
    assert count_ops(folded, "BatchNormalization") == len(expect_unfolded)
    assert report.bn_as_conv == [bn3]
    dw = _node_named(folded, "bn3", "Conv")
    assert dw.name == bn3 and {a.name: a.i for a in dw.attribute}["group"] == 8
    np.testing.assert_array_equal(report.gamma[bn3], net.bn3.weight.detach().numpy())
    for layer, bn in pairs:
        np.testing.assert_array_equal(report.gamma[layer], bn.weight.detach().numpy())
        np.testing.assert_array_equal(report.beta[layer], bn.bias.detach().numpy())
        assert report.gamma[layer].shape == (bn.num_features,)

    # the full importer (fold -> onnxsim -> fold) reports the same and keeps the function
    qg = import_model(path)
    assert count_ops(qg.model, "BatchNormalization") == len(expect_unfolded)
    assert set(qg.fold.folded) == {layer for layer, _ in pairs}
    assert sorted(qg.fold.unfolded_bn) == sorted(expect_unfolded)
    assert_close_rel(y_ref, ort_run(qg.model, {"input": x8})[0])
    assert_close_rel(y_ref, _sim_float(qg, x8))
    gammas = {layer.name: layer.bn_gamma for layer in qg.layers}
    for layer, bn in pairs:
        np.testing.assert_array_equal(gammas[layer], bn.weight.detach().numpy())
    assert gammas[_node_named(qg.model, "fc2", "Gemm").name] is None


def test_fold_conv_weights_hand_check(tmp_path, x8):
    """w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta."""
    net = ConvBNNet().eval()
    path = export_torch_model(net, torch.from_numpy(x8[:1]), tmp_path / "convbn.onnx")
    folded, report = fold(onnx.load(str(path)))
    assert count_ops(folded, "BatchNormalization") == 0 and report.unfolded_bn == []
    conv = _node_named(folded, "conv2", "Conv")
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    bn = net.bn2
    k = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    w_expect = net.conv2.weight.detach().double().numpy() * k.reshape(-1, 1, 1, 1)
    b_expect = (net.conv2.bias.detach().double().numpy() - bn.running_mean.double().numpy()) * k + bn.bias.detach().double().numpy()
    np.testing.assert_allclose(inits[conv.input[1]], w_expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(inits[conv.input[2]], b_expect, rtol=1e-6, atol=1e-7)
    conv1 = _node_named(folded, "conv1", "Conv")
    assert len(conv1.input) == 3, "a conv without bias gets the folded bias"
    assert_close_rel(ort_run(path, {"input": x8})[0], ort_run(folded, {"input": x8})[0])


# ---------------------------------------------------------------- shipped digits models

@pytest.mark.parametrize("name", DIGITS)
def test_fold_digits_models(name, digits_val, manifest_by_name):
    x = digits_val["input"][:64]
    path = digits_path(name)
    original = onnx.load(str(path))
    n_bn = count_ops(original, "BatchNormalization")
    assert n_bn == manifest_by_name[name]["batchnorm_nodes"] > 0
    y_ref = ort_run(path, {"input": x})[0]

    folded, report = fold(original)
    assert count_ops(folded, "BatchNormalization") == 0
    assert len(report.folded) == n_bn and report.unfolded_bn == []
    assert_close_rel(y_ref, ort_run(folded, {"input": x})[0])
    # gamma per output channel == the BN's scale initializer
    inits = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    bns = {n.name: n for n in original.graph.node if n.op_type == "BatchNormalization"}
    for layer, bn_name in report.folded.items():
        np.testing.assert_array_equal(report.gamma[layer], inits[bns[bn_name].input[1]])
        np.testing.assert_array_equal(report.beta[layer], inits[bns[bn_name].input[2]])

    qg = import_model(path)
    assert count_ops(qg.model, "BatchNormalization") == 0
    assert len(qg.fold.folded) == n_bn and not qg.fold.unfolded_bn
    assert sum(layer.bn_gamma is not None for layer in qg.layers) == n_bn
    assert_close_rel(y_ref, ort_run(qg.model, {"input": x})[0])
    assert_close_rel(y_ref, _sim_float(qg, x))


# ---------------------------------------------------------------- models whose BN was folded already

@pytest.mark.parametrize("how", ["exporter", "torch_fusion"])
def test_already_folded_model(tmp_path, x8, how):
    net = ConvBNNet().eval()
    if how == "exporter":  # eval-mode export with constant folding fuses Conv+BN
        path = export_torch_model(net, torch.from_numpy(x8[:1]), tmp_path / "fused.onnx", keep_bn=False)
    else:
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        fused = nn.Sequential(fuse_conv_bn_eval(net.conv1, net.bn1), nn.ReLU(), fuse_conv_bn_eval(net.conv2, net.bn2))
        path = export_torch_model(fused, torch.from_numpy(x8[:1]), tmp_path / "fused.onnx")
    assert count_ops(path, "BatchNormalization") == 0
    qg = import_model(path)
    assert qg.fold.folded == {} and qg.fold.unfolded_bn == [] and qg.fold.gamma == {}
    assert len(qg.layers) == 2 and all(layer.bn_gamma is None for layer in qg.layers)
    with torch.no_grad():
        y_torch = net(torch.from_numpy(x8)).numpy()
    assert_close_rel(y_torch, _sim_float(qg, x8), 1e-5)


# ---------------------------------------------------------------- Identity / Dropout removal

def _passthrough_model(mask_output: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    fw = numpy_helper.from_array(rng.standard_normal((5, 4 * 6 * 6)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fb")
    nodes = [
        helper.make_node("Identity", ["input"], ["x_id"], name="id_in"),
        helper.make_node("Conv", ["x_id", "w", "b"], ["c"], name="conv"),
        helper.make_node("Dropout", ["c"], ["c_drop"], name="drop_a"),
        helper.make_node("Relu", ["c_drop"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["r_id"], name="id_mid"),
        helper.make_node("Flatten", ["r_id"], ["f"], name="flatten"),
        helper.make_node("Dropout", ["f"], ["f_drop", "f_mask"] if mask_output else ["f_drop"], name="drop_b"),
        helper.make_node("Gemm", ["f_drop", "fw", "fb"], ["g"], name="fc", transB=1),
        helper.make_node("Identity", ["g"], ["logits"], name="id_out"),
        helper.make_node("Identity", ["input"], ["passthrough"], name="id_passthrough"),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
               helper.make_tensor_value_info("passthrough", TensorProto.FLOAT, ["N", 3, 8, 8])]
    if mask_output:
        outputs.append(helper.make_tensor_value_info("f_mask", TensorProto.BOOL, ["N", 144]))
    graph = helper.make_graph(nodes, "passthrough",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              outputs, [w, b, fw, fb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_identity_dropout_removal_keeps_outputs(x8):
    model = _passthrough_model()
    ref = ort_run(model, {"input": x8})
    folded, report = fold(model)
    onnx.checker.check_model(folded)
    assert sorted(report.removed) == sorted(["id_in", "drop_a", "id_mid", "drop_b", "id_out"])
    kinds = [n.op_type for n in folded.graph.node]
    assert kinds.count("Dropout") == 0
    # the graph input -> graph output Identity is the one Identity that must stay
    assert kinds.count("Identity") == 1
    assert [o.name for o in folded.graph.output] == ["logits", "passthrough"]
    got = ort_run(folded, {"input": x8})
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r, g)


def test_dropout_with_used_mask_is_kept(x8):
    model = _passthrough_model(mask_output=True)
    ref = ort_run(model, {"input": x8})
    folded, report = fold(model)
    assert "drop_b" not in report.removed and "drop_a" in report.removed
    assert any(n.name == "drop_b" and n.op_type == "Dropout" for n in folded.graph.node)
    got = ort_run(folded, {"input": x8})
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r, g)


def test_import_of_passthrough_model_simulates_exactly(tmp_path, x8):
    path = tmp_path / "pt.onnx"
    onnx.save(_passthrough_model(), str(path))
    qg = import_model(path)
    assert len(qg.layers) == 2
    assert qg.outputs[0] == "logits"
    assert_close_rel(ort_run(path, {"input": x8})[0], _sim_float(qg, x8), 1e-5)


class PreActNet(nn.Module):
    """DenseNet-style pre-activation: BN -> ReLU -> Conv with no conv before the BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 4, 3)
        randomize_bn(self.bn, 5)

    def forward(self, x):
        y = self.conv0(x)
        return self.conv1(torch.relu(self.bn(y + x[:, :1])))


def test_standalone_bn_quantizes_as_a_depthwise_layer_and_lowers_to_integers(tmp_path, x8):
    import onnxptq
    from onnxptq.verify.integer import verify_integer

    torch.manual_seed(0)
    path = export_torch_model(PreActNet().eval(), torch.from_numpy(x8[:1]), tmp_path / "preact.onnx")
    x = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    res = onnxptq.quantize(str(path), x, w_bits=4, a_bits=8, scale="po2", format="int", num_calib=32)
    bn = res.qgraph.fold.bn_as_conv
    assert len(bn) == 1 and res.qgraph.layer(bn[0]).act_node is not None  # the ReLU is fused into it
    assert res.plan.w_bits[bn[0]] == suite_weight_bits(8)  # one weight per channel: kept at 8 bits
    assert verify_integer(res.model, {"input": x[:4]}).ok

