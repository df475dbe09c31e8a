"""Spatial crops of reconstruction steps (recon/crops.py): on a region of convolutions, pools and pointwise ops,
the outputs a crop computes exactly are the full outputs at the same positions; regions with anything else
are never cropped; a reconstruction with crops runs, reports the crop share, and lands near the uncropped one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnxptq
from onnxptq.graph import import_model, partition
from onnxptq.recon.crops import IDENTITY, CropSampler, Reach, footprint
from onnxptq.recon.streams import live_after, produced, region_spans
from onnxptq.sim.model import SimModel

from helpers import export_torch_model


class _Net(nn.Module):
    """Stem (stride 2), an inverted residual (dilated depthwise, asymmetric-free pads), a stride-2 block with
    a padded max pool, then a global pool and a classifier (not croppable)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU6())
        self.expand = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 2, dilation=2, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.down = nn.Sequential(nn.Conv2d(8, 12, 3, 2, 1), nn.Hardswish(), nn.MaxPool2d(3, 1, 1),
                                  nn.Conv2d(12, 12, (1, 5), 1, (0, 2)), nn.Sigmoid())
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(torch.relu(self.dw(torch.relu(self.expand(x)))))
        x = self.down(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("crops") / "net.onnx"
    export_torch_model(_Net(), torch.randn(1, 3, 96, 96), path, keep_bn=False)
    qg = import_model(str(path))
    sim = SimModel(qg).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        env = sim.run_nodes(sim.input_env({qg.inputs[0]: x}), keep=True)
    return sim, env


def _region_io(sim, env, span):
    read = {i for n in sim.nodes[span.start:span.stop] for i in n.inputs if i}
    made = set(produced(sim, span.start, span.stop))
    names = [t for t in read if t in env and t not in made and t not in sim.consts]
    outputs = live_after(sim, span.stop, produced(sim, span.start, span.stop))
    return names, outputs


def test_reach_by_hand():
    """A 3x3 conv, stride 2, pad 1 reads [2j - 1, 2j + 1]; after it a 3x3 conv, stride 1, pad 1 reads
    [2(j - 1) - 1, 2(j + 1) + 1]; pointwise operands join to the union of reaches."""
    r = IDENTITY.then([3, 3], [2, 2], [1, 1], [1, 1])
    assert r == Reach((2, 2), (-1, -1), (1, 1))
    r2 = r.then([3, 3], [1, 1], [1, 1], [1, 1])
    assert r2 == Reach((2, 2), (-3, -3), (3, 3))
    assert r.join(r2) == r2 and r.join(IDENTITY) is None
    dil = IDENTITY.then([3, 1], [1, 1], [2, 1], [2, 0])
    assert dil == Reach((1, 1), (-2, 0), (2, 0))


def test_crops_compute_the_full_outputs_where_they_say(net):
    sim, env = net
    spans = region_spans(sim, partition(sim.qg, "block"))
    croppable = 0
    gen = torch.Generator().manual_seed(0)
    for span in spans:
        names, outputs = _region_io(sim, env, span)
        shapes = {t: tuple(env[t].shape) for t in names}
        reach = footprint(sim, span.start, span.stop, shapes, outputs)
        convs_only = all(n.op_type != "Gemm" and n.op_type not in ("ReduceMean", "GlobalAveragePool", "MatMul")
                         for n in sim.nodes[span.start:span.stop])
        assert (reach is not None) == convs_only, span.name
        if reach is None:
            continue
        croppable += 1
        size = next(s[2:] for s in shapes.values())
        sampler = CropSampler(reach, size, {t: tuple(env[t].shape[2:]) for t in outputs}, 0.5)
        assert sampler.active and 0.2 < sampler.share < 0.5
        borders = set()
        for _ in range(12):
            crop = sampler.draw(gen)
            borders |= {("start" if w.start == 0 else None) for w in crop.window}
            borders |= {("end" if w.stop == n else None) for w, n in zip(crop.window, size)}
            with torch.no_grad():
                out = sim.run_nodes({t: env[t][..., crop.window[0], crop.window[1]] for t in names},
                                    span.start, span.stop)
            for t in outputs:
                (ch, cw), (fh, fw) = crop.outputs[t]
                got, want = out[t][..., ch, cw], env[t][..., fh, fw]
                assert got.numel() > 0 and got.shape == want.shape, (span.name, t)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert {"start", "end"} <= borders  # both image borders are drawn, not only interior crops
    assert croppable >= 2


def test_small_inputs_are_not_cropped():
    """Axes shorter than MIN_SIDE keep the whole image: no crop at all on a 16x16 input."""
    r = {"y": IDENTITY.then([3, 3], [1, 1], [1, 1], [1, 1])}
    assert not CropSampler(r, (16, 16), {"y": (16, 16)}, 0.5).active
    s = CropSampler(r, (64, 16), {"y": (64, 16)}, 0.5)
    assert s.active and s.length == [32, 16]


def test_the_fast_preset_crops_and_the_papers_presets_do_not():
    from onnxptq.config import QuantConfig
    from onnxptq.recon.settings import resolve

    assert resolve(QuantConfig(method="brecq")).crop == 0.5
    assert resolve(QuantConfig(method="brecq", preset="full")).crop == 1.0
    assert resolve(QuantConfig(method="brecq", recon_crop=1.0)).crop == 1.0


def test_reconstruction_with_crops_reports_them(tmp_path):
    """BRECQ with recon_crop 0.5 on the net at 96x96: the croppable regions report the crop share,
    the head region reports whole images, and the result stays close to the uncropped run."""
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    export_torch_model(_Net(), torch.randn(1, 3, 96, 96), path, keep_bn=False)
    x = np.random.default_rng(0).standard_normal((32, 3, 96, 96)).astype(np.float32)
    kw = dict(method="brecq", w_bits=4, a_bits=8, iters=20, act_iters=10, recon_batch_size=8, progress=False)
    full = onnxptq.quantize(str(path), x, recon_crop=1.0, **kw)
    crop = onnxptq.quantize(str(path), x, recon_crop=0.5, **kw)
    shares = [r.crop for r in crop.recon.regions]
    assert all(r.crop == 1.0 for r in full.recon.regions)
    assert min(shares) < 0.5 and shares[-1] == 1.0, shares
    after_full = sum(r.loss_after for r in full.recon.regions)
    after_crop = sum(r.loss_after for r in crop.recon.regions)
    before = sum(r.loss_before for r in full.recon.regions)
    assert after_crop < before and after_crop < 1.5 * after_full, (before, after_full, after_crop)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "GlobalAveragePool"])
def test_ops_across_positions_are_not_cropped(tmp_path, op):
    """A softmax over the width (or a global pool) mixes every position of a row: no footprint."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    attrs = {"axis": 3} if op != "GlobalAveragePool" else {}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["h"], ["s"], name="mix", **attrs),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="c2")]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                         ["N", 2, 1, 1] if op == "GlobalAveragePool" else ["N", 2, 64, 64])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    import onnx

    onnx.save(m, str(tmp_path / "m.onnx"))
    sim = SimModel(import_model(str(tmp_path / "m.onnx")))
    outs = [o for o in sim.nodes[-1].outputs]
    assert footprint(sim, 0, len(sim.nodes), {"x": (1, 3, 64, 64)}, outs) is None
    assert footprint(sim, 0, 1, {"x": (1, 3, 64, 64)}, list(sim.nodes[0].outputs)) is not None


def test_nodes_the_outputs_do_not_read_do_not_count(tmp_path):
    """A Shape of the input read only after the region (a classifier's Reshape target, as in EfficientNet's
    stem region) does not stop the region's convolutions from being cropped."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["h"], ["r"], name="relu")]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
                          [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4, 32, 32]),
                           helper.make_tensor_value_info("shape", TensorProto.INT64, [4])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    sim = SimModel(import_model(str(tmp_path / "m.onnx")))
    assert any(n.op_type == "Shape" for n in sim.nodes)
    out = next(n.outputs[0] for n in sim.nodes if n.op_type == "Relu")
    reach = footprint(sim, 0, len(sim.nodes), {"x": (1, 3, 64, 64)}, [out])
    assert reach == {out: Reach((2, 2), (-1, -1), (1, 1))}


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_explicit_pads_crop_exactly(tmp_path, mode):
    """TensorFlow-style exports pad explicitly before a VALID stride-2 conv: Pad (any mode that reads the
    image's own borders) is a shift of the reach, and crops still compute the full outputs where they say."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode=mode),
             helper.make_node("Conv", ["p", "w1"], ["h"], name="c1", strides=[2, 2]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", group=4, pads=[2, 2, 2, 2])]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads"),
             numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 1, 5, 5)).astype(np.float32), "w2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 48])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 33, 24])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    sim = SimModel(import_model(str(tmp_path / "m.onnx"))).eval()
    # a zero constant pad is folded into the conv's own (asymmetric) pads by the importer: the same reach
    assert any(n.op_type == "Pad" for n in sim.nodes) == (mode != "constant")
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        env = sim.run_nodes(sim.input_env({"x": x}), keep=True)
    out = sim.nodes[-1].outputs[0]
    reach = footprint(sim, 0, len(sim.nodes), {"x": (2, 3, 64, 48)}, [out])
    assert reach == {out: Reach((2, 2), (-1 - 4, -2 - 4), (-1 + 2 + 4, -2 + 2 + 4))}
    sampler = CropSampler(reach, (64, 48), {out: tuple(env[out].shape[2:])}, 0.5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        crop = sampler.draw(gen)
        with torch.no_grad():
            got = sim.run_nodes({"x": x[..., crop.window[0], crop.window[1]]}, 0, len(sim.nodes))[out]
        (ch, cw), (fh, fw) = crop.outputs[out]
        assert got[..., ch, cw].numel() > 0
        torch.testing.assert_close(got[..., ch, cw], env[out][..., fh, fw], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, pads, out_hw", [("constant", [0, 0, -1, 0, 0, 0, 0, 0], [63, 64]),
                                                ("wrap", [0, 0, 1, 1, 0, 0, 1, 1], [66, 66]),
                                                ("constant", [0, 1, 1, 1, 0, 0, 1, 1], [66, 66])])
def test_pads_that_crop_wrap_or_add_channels_are_not_cropped(tmp_path, mode, pads, out_hw):
    """A negative pad (a crop), wrap (reads the far side, which a crop moves) or a pad of the channels."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode=mode),
             helper.make_node("Relu", ["p"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads")]
    c_out = 3 + pads[1] + pads[5]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, *out_hw])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "m.onnx"))
    sim = SimModel(import_model(str(tmp_path / "m.onnx")))
    assert [n.op_type for n in sim.nodes] == ["Pad", "Relu"]
    assert footprint(sim, 0, len(sim.nodes), {"x": (1, 3, 64, 64)}, [sim.nodes[-1].outputs[0]]) is None


@pytest.mark.parametrize("budget_mb", [64, 0])
def test_windowed_reads_equal_reading_then_slicing(budget_mb):
    """``Cached.read(index, window)`` copies only the window, in RAM and from a spilled file, and gives what
    reading whole rows and slicing them gives."""
    from onnxptq.recon.cache import ActivationStore

    store = ActivationStore(budget_mb)
    c = store.new("x", 6, (3, 10, 12))
    c.write(0, torch.arange(6 * 3 * 10 * 12, dtype=torch.float32).reshape(6, 3, 10, 12))
    assert c.on_disk == (budget_mb == 0)
    window = (slice(2, 7), slice(4, 12))
    for index in (torch.tensor([5, 0, 3]), slice(1, 4)):
        whole = c.read(index)
        part = c.read(index, window)
        assert part.shape == (3, 3, 5, 8) and torch.equal(part, whole[..., window[0], window[1]])
    store.close()


@pytest.mark.parametrize("budget_mb", [64, 0])
def test_cache_stores_images_channels_last_and_reads_back_what_was_written(budget_mb):
    """(C, H, W) samples are kept as (H, W, C): batches written in either layout read back equal to them (rows,
    indices, windows; in RAM and spilled), as channels-last (N, C, H, W) tensors; other ranks are kept as given."""
    from onnxptq.recon.cache import ActivationStore

    store = ActivationStore(budget_mb)
    x = torch.randn(7, 3, 5, 6)
    c = store.new("x", 7, (3, 5, 6))
    c.write(0, x[:4])  # contiguous (N, C, H, W)
    c.write(4, x[4:].contiguous(memory_format=torch.channels_last))
    assert c.channels_last and c.on_disk == (budget_mb == 0)
    for index in (slice(0, 7), slice(2, 5), torch.tensor([6, 1, 3])):
        got = c.read(index)
        assert torch.equal(got, x[index]) and got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(c.read(index, (slice(1, 4), slice(2, 6))), x[index][..., 1:4, 2:6])
        assert torch.equal(c.read(index, (slice(3, 6),)), x[index][..., 3:6])  # a window on W alone
    v = torch.randn(7, 10)
    flat = store.new("v", 7, (10,))
    flat.write(0, v)
    assert not flat.channels_last and torch.equal(flat.read(torch.tensor([2, 0])), v[[2, 0]])
    store.close()


@pytest.mark.parametrize("method", ["brecq", "qdrop"])
def test_crops_from_a_spilled_cache_equal_crops_in_ram(tmp_path, method):
    """Training on crops reads the cached inputs and targets through the crop's window: a run whose cache
    spills to disk gives the same integers as one that keeps it in RAM (QDrop's float/quantized mix as well)."""
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    export_torch_model(_Net(), torch.randn(1, 3, 96, 96), path, keep_bn=False)
    x = np.random.default_rng(1).standard_normal((16, 3, 96, 96)).astype(np.float32)
    kw = dict(method=method, w_bits=4, a_bits=8, iters=6, recon_batch_size=4, recon_crop=0.5, progress=False,
              **({"act_iters": 4} if method == "brecq" else {}))
    ram = onnxptq.quantize(str(path), x, **kw)
    disk = onnxptq.quantize(str(path), x, cache_budget_mb=0, **kw)
    assert min(r.crop for r in ram.recon.regions) < 0.5
    for layer in ram.qgraph.layers:
        w_ram, w_disk = ram.sim.weight(layer.weight), disk.sim.weight(layer.weight)
        assert np.array_equal(w_ram.detach().numpy(), w_disk.detach().numpy())
