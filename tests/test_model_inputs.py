"""Models users really have (issue 8): opsets 11-21, external tensor data, a fixed batch, dynamic spatial sizes
fixed by --input-shape, and a BatchNorm-carrying export. Each quantizes and runs in onnxruntime close to float."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import version_converter

from onnxptq import api
from onnxptq.errors import OnnxPtqError

from helpers import export_torch_model, ort_run
from test_recon import Tiny


def _fidelity_db(path, out, x) -> float:
    f = ort_run(path, {"input": x})[0]
    q = ort_run(out, {"input": x})[0]
    return float(10 * np.log10((f ** 2).sum() / max(((f - q) ** 2).sum(), 1e-30)))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    path = export_torch_model(Tiny().eval(), torch.zeros(1, 1, 8, 8), d / "tiny13.onnx", keep_bn=False)
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    return d, path, x


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_opsets(base, opset, tmp_path):
    d, path, x = base
    src = tmp_path / f"m{opset}.onnx"
    export_torch_model(Tiny().eval(), torch.zeros(1, 1, 8, 8), src, keep_bn=False, opset_version=min(opset, 17))
    if opset > 17:  # the TorchScript exporter stops below 21: up-convert
        onnx.save(version_converter.convert_version(onnx.load(str(src)), opset), str(src))
    assert onnx.load(str(src)).opset_import[0].version == opset
    out = tmp_path / "q.onnx"
    api.quantize(src, x, output=out, progress=False)
    assert _fidelity_db(src, out, x) > 25  # 8-bit


def test_external_data(base, tmp_path):
    d, path, x = base
    m = onnx.load(str(path))
    src = tmp_path / "ext" / "model.onnx"
    src.parent.mkdir()
    onnx.save(m, str(src), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    assert (src.parent / "weights.bin").exists()
    out = tmp_path / "q.onnx"
    api.quantize(src, x, output=out, progress=False)
    q = onnx.load(str(out), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in q.graph.initializer)  # self-contained
    assert _fidelity_db(src, out, x) > 25
    (src.parent / "weights.bin").unlink()
    with pytest.raises(OnnxPtqError, match="external data"):
        api.quantize(src, x, output=tmp_path / "q2.onnx", progress=False)


def test_fixed_batch_and_dynamic_spatial(tmp_path):
    fixed = export_torch_model(Tiny().eval(), torch.zeros(4, 1, 8, 8), tmp_path / "fixed.onnx", keep_bn=False,
                               dynamic_batch=False)
    x = np.random.default_rng(1).standard_normal((16, 1, 8, 8)).astype(np.float32)
    out = tmp_path / "qf.onnx"
    api.quantize(fixed, x, output=out, progress=False)  # calibration runs in batches, the model says batch 4
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value in (0, 4)
    dyn = export_torch_model(Tiny().eval(), torch.zeros(1, 1, 8, 8), tmp_path / "dyn.onnx", keep_bn=False,
                             dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b"}})
    out2 = tmp_path / "qd.onnx"
    api.quantize(dyn, x, output=out2, input_shapes={"input": [1, 1, 8, 8]}, progress=False)
    assert _fidelity_db(dyn, out2, x) > 25


def test_batchnorm_export_is_folded(tmp_path):
    net = Tiny().eval()
    path = export_torch_model(net, torch.zeros(1, 1, 8, 8), tmp_path / "bn.onnx", keep_bn=True)
    x = np.random.default_rng(2).standard_normal((16, 1, 8, 8)).astype(np.float32)
    out = tmp_path / "q.onnx"
    api.quantize(path, x, output=out, progress=False)
    assert _fidelity_db(path, out, x) > 25


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        return self.fc(torch.relu(self.a(x) + self.b(y)).mean((2, 3)))


def test_multi_input_model(tmp_path, capsys):
    path = tmp_path / "two.onnx"
    torch.onnx.export(TwoInputs().eval(), (torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8)), str(path), dynamo=False,
                      opset_version=13, input_names=["x", "y"], output_names=["out"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}, "out": {0: "n"}})
    g = np.random.default_rng(3)
    data = {"x": g.standard_normal((16, 1, 8, 8)).astype(np.float32),
            "y": g.standard_normal((16, 2, 8, 8)).astype(np.float32)}
    np.savez(tmp_path / "c.npz", **data)
    out = tmp_path / "q.onnx"
    api.quantize(path, tmp_path / "c.npz", output=out, progress=False)
    f, q = ort_run(path, data)[0], ort_run(out, data)[0]
    assert 10 * np.log10((f ** 2).sum() / ((f - q) ** 2).sum()) > 20
    from onnxptq.cli import main

    np.savez(tmp_path / "bad.npz", x=data["x"])
    rc = main(["quantize", str(path), "--calib", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "q2.onnx"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "'y'" in err and "Traceback" not in err


def test_integer_model_inputs_keep_integer_values():
    """Token ids and masks stay integers of the model's dtype; fractions for an integer input are refused."""
    import numpy as np
    import pytest

    from onnxptq.data import validate
    from onnxptq.errors import DataError

    ids = validate("ids", np.array([[1.0, 2.0]]), (1, 2), "test", np.dtype(np.int64))
    assert ids.dtype == np.int64 and ids.tolist() == [[1, 2]]
    assert validate("x", np.array([[1, 2]], np.uint8), (1, 2), "test").dtype == np.float32
    with pytest.raises(DataError, match="fractions"):
        validate("ids", np.array([[1.5, 2.0]]), (1, 2), "test", np.dtype(np.int64))
