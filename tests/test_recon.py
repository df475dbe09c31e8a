"""Reconstruction engine (issue 4): AdaRound math, hard rounding on the grid, region losses, Fisher
gradients against autograd, resume == uninterrupted, memmap spilling, QDQ parity after reconstruction.

Most tests use a tiny residual CNN (8x8 inputs) exported from torch, so they stay fast on a CPU.
"""
from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onnxptq import api
from onnxptq.settings import resolve as resolve_config
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.graph import import_model, partition
from onnxptq.recon import checkpoint as ckpt
from onnxptq.recon.adaround import (beta_at, init_v, inverse_rectified_sigmoid, rectified_sigmoid,
                                    rounding_regularizer, within_one_step)
from onnxptq.recon.cache import ActivationStore
from onnxptq.calib.calibrate import integer_bias, integer_weights
from onnxptq.recon.fisher import float_logits, output_gradients
from onnxptq.recon.losses import fisher_weights
from onnxptq.recon.streams import SideTensors, advance, input_frontier, region_spans
from onnxptq.verify.qdq import qdq_output_parity

from helpers import digits_path, export_torch_model, method_kw, stop_after_checkpoints


# ---------------------------------------------------------------- AdaRound math (BRECQ Eq. 27-28)

def test_rectified_sigmoid_hand_values():
    h = rectified_sigmoid(torch.tensor([0.0, 50.0, -50.0, math.log(3.0)]))
    # sigmoid(0) = 1/2 -> 0.5 * 1.2 - 0.1 = 0.5; saturates at exactly 1 and 0; sigmoid(log 3) = 3/4 -> 0.8
    assert torch.allclose(h, torch.tensor([0.5, 1.0, 0.0, 0.8]), atol=1e-7)
    # inverse: h = 0.25 -> V = -log(1.2 / 0.35 - 1) = -log(17/7)
    v = inverse_rectified_sigmoid(torch.tensor([0.25]))
    assert torch.allclose(v, torch.tensor([-math.log(17 / 7)]), atol=1e-6)
    assert torch.allclose(rectified_sigmoid(v), torch.tensor([0.25]), atol=1e-6)


def test_init_v_gives_fractional_part():
    w_over_s = torch.tensor([2.3, -1.75, 0.0, 5.999])
    h = rectified_sigmoid(init_v(w_over_s))
    assert torch.allclose(torch.floor(w_over_s) + h, w_over_s, atol=1e-5)


def test_regularizer_and_beta_schedule_hand_values():
    h = torch.tensor([0.0, 0.5, 1.0, 0.25])
    # 1 - |2h - 1|^2 = [0, 1, 0, 0.75]
    assert float(rounding_regularizer(h, 2.0)) == pytest.approx(1.75)
    # beta 20: only h near 0.5 costs; 1 - 0.5^20 for h = 0.25
    assert float(rounding_regularizer(h, 20.0)) == pytest.approx(1.0 + 1.0 - 0.5 ** 20)
    assert beta_at(0, 100) is None and beta_at(19, 100) is None  # warm-up 0.2: regularizer off
    assert beta_at(20, 100) == pytest.approx(20.0)
    assert beta_at(60, 100) == pytest.approx(11.0)  # halfway: 2 + 18 * 0.5
    assert beta_at(100, 100) == pytest.approx(2.0)


def test_fisher_weights_normalization():
    g = torch.tensor([0.0, 1.0, 2.0, -3.0])
    ms = float(g.pow(2).mean())
    assert torch.allclose(fisher_weights(g, ms, 0.0), g.pow(2) / ms)  # pure Eq. 11, mean 1
    w = fisher_weights(g, ms, 1.0)
    rms = ms ** 0.5
    assert torch.allclose(w, (g.abs() / rms + 1) ** 2 / 4)


# ---------------------------------------------------------------- a tiny residual CNN

class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv4 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(x + self.conv3(F.relu(self.conv2(x))))
        x = F.relu(self.conv4(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    net = Tiny().eval()
    path = export_torch_model(net, torch.zeros(1, 1, 8, 8), d / "tiny.onnx", keep_bn=False)
    g = np.random.default_rng(0)
    calib = g.standard_normal((48, 1, 8, 8)).astype(np.float32)
    val = g.standard_normal((32, 1, 8, 8)).astype(np.float32)
    return net, path, calib, val


# a short explicit schedule, without the fast preset's weight-step gains (tests/test_weight_gain.py covers them)
FAST = dict(iters=40, act_iters=20, recon_batch_size=16, lr=0.1, act_lr=1e-3, w_scale_lr=0.0, progress=False)


def calib128() -> np.ndarray:
    """128 samples for tests that compare region losses: the guard measures them on the held-out samples
    (engine.held_out: 16 of 128; the fixture's 48 would hold out 6, too few for a stable comparison)."""
    return np.random.default_rng(0).standard_normal((128, 1, 8, 8)).astype(np.float32)


def test_adaround_hard_result_on_grid_within_one_step(tiny):
    net, path, calib, _ = tiny
    qg = import_model(path)
    floats = {layer.name: qg.initializer(layer.weight) for layer in qg.layers}
    res = api.quantize(path, calib, method="adaround", w_bits=3, a_bits=8, recon_guard=False, **method_kw("adaround", **FAST))
    changed = 0
    for layer in res.qgraph.layers:
        fq = res.sim.weight_quantizer(layer.name)
        q = integer_weights(res.sim, layer.name)
        grid = fq.params.grid
        assert q.min() >= grid.qmin and q.max() <= grid.qmax
        scale, zp = fq.params.shaped_for(q.ndim)
        w = floats[layer.name]
        assert within_one_step(q, w, scale, zp, grid.qmin, grid.qmax), layer.name
        # the simulation's weights are exactly the chosen integers on the grid
        stored = res.sim.weight(layer.weight).detach().numpy()
        assert np.array_equal(stored, ((q - zp) * scale).astype(np.float32))
        rtn = np.clip(np.round(w / scale) + zp, grid.qmin, grid.qmax)
        changed += int((rtn != q).sum())
    assert changed > 0  # the learned rounding differs from round-to-nearest somewhere


@pytest.mark.parametrize("method", ["brecq", "qdrop"])
def test_region_loss_decreases(tiny, method):
    _, path, _, _ = tiny
    # recon_guard off: the optimized state itself must be better, not the guard's fallback
    res = api.quantize(path, calib128(), method=method, w_bits=2, a_bits=4, first_last_bits=None, recon_guard=False,
                       **method_kw(method, **FAST))
    assert res.recon is not None and len(res.recon.regions) == len(partition(res.qgraph, "block"))
    assert not any(r.reverted for r in res.recon.regions)
    # every region but the classifier of this random net (its logits are ~0.05, so its loss is ~1e-3 and the
    # RTN bias correction, which the learned rounding replaces, is worth more than 40 iterations of rounding)
    regions = res.recon.regions
    for r in regions[:-1]:
        assert r.loss_after < r.loss_before, (r.name, r.loss_before, r.loss_after)
    assert sum(r.loss_after for r in regions) < sum(r.loss_before for r in regions)


def _quantizer_state(res) -> tuple[dict, dict, dict]:
    sim = res.sim
    ints = {x.name: integer_weights(sim, x.name) for x in res.qgraph.layers}
    bias = {x.name: integer_bias(sim, x.name) for x in res.qgraph.layers if x.bias}
    acts = {t: (fq.params.scale.copy(), fq.params.zero_point.copy()) for t, fq in sim.act_quantizers()}
    return ints, bias, acts


def test_guard_restores_the_calibrated_state(tiny, monkeypatch):
    """A region made worse than RTN goes back to exactly its calibrated weights, biases and steps."""
    from onnxptq.recon import engine as E

    _, path, calib, _ = tiny
    orig = E.Engine._optimize

    def spoiled(self, k, span, region, *args):
        result = orig(self, k, span, region, *args)
        for t in region.acts:  # a 4x activation step: far worse than the calibrated one
            fq = self.sim.act_quantizer(t)
            p = fq.params
            fq.set_params(type(p)(p.grid, p.scale * 4, p.zero_point, p.axis, p.po2))
        return result

    monkeypatch.setattr(E.Engine, "_optimize", spoiled)
    res = api.quantize(path, calib, method="brecq", w_bits=3, a_bits=4, **method_kw("brecq", **FAST))
    assert all(r.reverted and r.loss_after == r.loss_before for r in res.recon.regions)
    # every revert is a visible fallback, counted against the number of regions, and in the summary
    assert [x.where for x in res.diagnostics.of("region-rtn")] == [r.name for r in res.recon.regions]
    n = len(res.recon.regions)
    assert any(line.startswith(f"{n}/{n} regions kept RTN") for line in res.summary()["fallbacks"])
    rtn = api.quantize(path, calib, method="rtn", w_bits=3, a_bits=4, num_calib=len(calib), progress=False)
    for a, b in zip(_quantizer_state(res), _quantizer_state(rtn)):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], tuple):
                assert all(np.array_equal(x, y) for x, y in zip(a[key], b[key])), key
            else:
                assert np.array_equal(a[key], b[key]), key


def test_bias_correction_of_the_learned_rounding(tiny):
    """Where kept, the correction is Nagel et al. Eq. 13 on the hard learned weights; elsewhere none."""
    from onnxptq.calib.calibrate import bias_shift

    _, path, calib, _ = tiny
    qg = import_model(path)
    res = api.quantize(path, calib, method="brecq", w_bits=2, a_bits=8, recon_guard=False,
                       **method_kw("brecq", **{**FAST, "iters": 8, "lr": 1e-3}))
    sim = res.sim
    kept = [r for r in res.recon.regions if r.bias_corrected]
    assert kept, "8 iterations leave the rounding undecided: the correction should help somewhere"
    for r in res.recon.regions:
        for name in r.layers:
            layer = qg.layer(name)
            if not layer.bias:
                continue
            if not r.bias_corrected:
                assert name not in sim.bias_delta
                continue
            w = torch.from_numpy(np.array(qg.initializer(layer.weight), dtype=np.float32))
            want = bias_shift(layer, w, sim.weight(layer.weight).detach(), sim.input_means[name])
            assert torch.allclose(sim.bias_delta[name], want)


def test_granularities_cover_every_layer(tiny):
    _, path, calib, _ = tiny
    for g in ("layer", "stage", "net"):
        res = api.quantize(path, calib, method="brecq", granularity=g, w_bits=4, a_bits=8,
                           **method_kw("brecq", **{**FAST, "iters": 10, "act_iters": 5}))
        names = [x for r in res.recon.regions for x in r.layers]
        assert sorted(names) == sorted(x.name for x in res.qgraph.layers)
        assert res.recon.granularity == g and len(res.recon.regions) == len(partition(res.qgraph, g))


def test_fisher_gradients_equal_autograd(tiny):
    """The cached output gradients of KL(float || quantized) equal autograd through the torch module's
    own layers after the region (model quantized up to the region, float after it)."""
    net, path, calib, _ = tiny
    res = api.quantize(path, calib, w_bits=4, a_bits=4, progress=False)  # calibrated (RTN) state
    sim = res.sim
    spans = region_spans(sim, partition(sim.qg, "layer"))
    span = spans[3]  # conv4 + relu; the rest is GAP -> Flatten -> Gemm
    out = span.region.output
    store = ActivationStore(64)
    side = SideTensors(sim, {"input": calib.shape[1:]}, torch.device("cpu"))
    dev = torch.device("cpu")
    ff = input_frontier(sim, {"input": calib}, store, False, 16, dev)
    logits = float_logits(sim, ff, store, side, 16, dev)
    qf = input_frontier(sim, {"input": calib}, store, True, 16, dev)
    qf = advance(sim, qf, span.start, store, side, True, 16, dev, "q")
    grads, ms = output_gradients(sim, qf, span.start, span.stop, [out], logits, store, side, 16, dev)
    # reference: z from the quantized simulation, then the torch module's float tail, autograd
    sim.set_quant(True, True)
    with torch.no_grad():
        env = sim({"input": torch.from_numpy(calib)}, keep=True)
        z = env[out].detach().clone().requires_grad_(True)
        ref_logits = net(torch.from_numpy(calib))
    assert np.allclose(logits.read(slice(0, 48)).numpy(), ref_logits.numpy(), atol=1e-5)
    q_logits = net.fc(z.mean((2, 3)))
    kl = F.kl_div(F.log_softmax(q_logits.double(), 1), F.log_softmax(ref_logits.double(), 1), log_target=True,
                  reduction="sum")
    (g_ref,) = torch.autograd.grad(kl, z)
    g = grads[out].read(slice(0, 48))
    assert float(g_ref.abs().max()) > 0
    # float32 sums in another order (the cache hands out channels-last tensors): agreement to 1e-5 of the largest
    assert torch.allclose(g, g_ref.float(), rtol=1e-4, atol=1e-5 * float(g_ref.abs().max()))
    assert ms[out] == pytest.approx(float(g_ref.double().pow(2).mean()), rel=1e-4)
    store.close()


def _state(res) -> dict:
    sim = res.sim
    return {"w": {x.name: integer_weights(sim, x.name) for x in res.qgraph.layers},
            "a": {t: (fq.params.scale.copy(), fq.params.zero_point.copy()) for t, fq in sim.act_quantizers()},
            "model": res.model.SerializeToString()}


def _assert_same(a: dict, b: dict) -> None:
    for k in a["w"]:
        assert np.array_equal(a["w"][k], b["w"][k]), k
    for t in a["a"]:
        assert np.array_equal(a["a"][t][0], b["a"][t][0]) and np.array_equal(a["a"][t][1], b["a"][t][1]), t
    assert a["model"] == b["model"]


def test_resume_equals_uninterrupted(tiny, tmp_path, monkeypatch):
    _, path, calib, _ = tiny
    kw = dict(method="qdrop", loss="fisher", w_bits=3, a_bits=4, seed=7, **method_kw("qdrop", **FAST))
    full = _state(api.quantize(path, calib, checkpoint_dir=str(tmp_path / "a"), **kw))
    # interrupt after the second region's checkpoint
    real_save = ckpt.save
    stop_after_checkpoints(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        api.quantize(path, calib, checkpoint_dir=str(tmp_path / "b"), **kw)
    monkeypatch.setattr(ckpt, "save", real_save)
    res = api.quantize(path, calib, checkpoint_dir=str(tmp_path / "b"), resume=True, **kw)
    assert res.recon.resumed_regions == 2
    _assert_same(full, _state(res))
    # a checkpoint of other options is refused
    with pytest.raises(ConfigError, match="another model"):
        api.quantize(path, calib, checkpoint_dir=str(tmp_path / "b"), resume=True, **{**kw, "seed": 8})


def test_spilled_cache_gives_the_same_result(tiny):
    _, path, calib, _ = tiny
    kw = dict(method="brecq", w_bits=3, a_bits=4, **method_kw("brecq", **FAST))
    a = _state(api.quantize(path, calib, **kw))
    res = api.quantize(path, calib, cache_budget_mb=0, **kw)
    _assert_same(a, _state(res))
    store = ActivationStore(0)
    c = store.new("x", 5, (2, 3))
    c.write(0, torch.arange(30, dtype=torch.float32).reshape(5, 2, 3))
    assert c.on_disk and torch.equal(c.read(torch.tensor([4, 0, 2]))[:, 0, 0], torch.tensor([24.0, 0.0, 12.0]))
    store.close()


def test_config_validation():
    with pytest.raises(ConfigError):
        resolve_config(QuantConfig(method="bogus"))
    with pytest.raises(ConfigError):
        resolve_config(QuantConfig(method="brecq", loss="bogus"))
    with pytest.raises(ConfigError):
        QuantConfig(method="qdrop", drop_prob=1.0)
    assert resolve_config(QuantConfig(method="brecq", preset="full")).num_calib == 1024
    assert resolve_config(QuantConfig()).num_calib == 256 and QuantConfig(method="brecq", num_calib=64).num_calib == 64


def test_cli_flags_reach_the_config(tiny, tmp_path, capsys):
    from onnxptq.cli import main

    _, path, calib, _ = tiny
    np.save(tmp_path / "c.npy", calib)
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(path), "--calib", str(tmp_path / "c.npy"), "-o", str(out), "--method", "brecq",
               "--granularity", "layer", "--loss", "fisher", "--iters", "5", "--act-iters", "3", "--w-bits", "4",
               "--recon-batch-size", "8", "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress", "--json"])
    assert rc == 0 and out.exists() and (tmp_path / "ck" / ckpt.FILE).exists()
    assert '"reconstruct"' in capsys.readouterr().out


# ---------------------------------------------------------------- QDQ export of a reconstructed model

@pytest.mark.parametrize("name,method", [("digits_mbv2", "qdrop"), ("digits_resnet", "brecq")])
def test_qdq_export_matches_simulation_after_reconstruction(name, method, tmp_path, digits_calib, digits_val):
    out = tmp_path / "q.onnx"
    res = api.quantize(digits_path(name), digits_calib["input"], output=out, method=method, scale="po2",
                       w_bits=4, a_bits=4, num_calib=64, progress=False,
                       **method_kw(method, iters=20, act_iters=10, recon_batch_size=16))
    onnx.checker.check_model(onnx.load(str(out)))
    rep = qdq_output_parity(res.sim, str(out), {"input": digits_val["input"][:64]})
    assert rep.bit_exact, rep.histogram


def test_max_memory_budget_spills_and_keeps_the_result(tiny, monkeypatch):
    from onnxptq import memory

    _, path, calib, _ = tiny
    kw = dict(method="brecq", w_bits=4, a_bits=4, seed=3, **method_kw("brecq", **FAST))
    ref = _state(api.quantize(path, calib, **kw))
    # a budget of the current resident set plus the step's headroom: the cache gets nothing, everything spills
    memory.trim_heap()  # as the engine does before it sizes the cache
    rss = memory.rss_bytes() / 2**20
    res = api.quantize(path, calib, max_memory_mb=rss + memory.MIN_HEADROOM_MB, **kw)
    assert res.recon.cache_spilled_mb > 0
    assert res.summary()["max_memory_mb"] == round(rss + memory.MIN_HEADROOM_MB, 1)
    assert 0 < res.summary()["peak_rss_mb"] == pytest.approx(memory.peak_rss_bytes() / 2**20, abs=64)
    _assert_same(ref, _state(res))
    with pytest.raises(ConfigError, match="max-memory"):
        api.quantize(path, calib, max_memory_mb=1.0, **kw)
    assert memory.cache_budget_mb(4096, rss=1024 * 2**20) == 3072 - 768  # 25 % of what is left kept free
    assert memory.cache_budget_mb(1200, rss=1024 * 2**20) == 0.0  # less than the 256 MB headroom left
    assert memory.cache_budget_mb(4096, rss=1024 * 2**20, reserve_mb=2000) == 3072 - 2000  # one batch's tensors


def test_sixteen_bit_activation_steps_are_not_learned(tiny):
    """At A16 one Adam update of act_lr exceeds the step itself (LSQ diverged and the guard sent most regions
    back to RTN); such steps keep their calibration, while 8-bit steps are still learned."""
    _, path, _, _ = tiny
    scales = {}
    for method, a in (("rtn", 16), ("brecq", 16), ("rtn", 8), ("brecq", 8)):
        res = api.quantize(path, calib128(), method=method, w_bits=4, a_bits=a, first_last_bits=None, **method_kw(method, **FAST))
        scales[method, a] = {t: float(res.sim.act_quantizer(t).params.scale) for t in res.qgraph.quant_points
                             if res.sim.act_quantizer(t).params is not None}
        if method == "brecq" and a == 16:
            assert not any(r.reverted for r in res.recon.regions)
    assert scales["brecq", 16] == scales["rtn", 16]
    assert scales["brecq", 8] != scales["rtn", 8]


def test_guard_decides_on_held_out_samples(tiny, monkeypatch):
    """Training minibatches never draw the held-out samples; the guard's loss is measured only on them."""
    from onnxptq.recon import engine as E

    _, path, calib, _ = tiny
    n = len(calib)
    assert (E.held_out(n), E.held_out(7), E.held_out(4096)) == (n // 8, 0, 64)
    seen = {"train": set(), "measure": set()}
    real = E.Engine._batch_env

    def spy(self, qf, ff, names, idx, *args):
        seen["measure" if qf is ff else "train"].update(int(i) for i in idx)
        return real(self, qf, ff, names, idx, *args)

    monkeypatch.setattr(E.Engine, "_batch_env", spy)
    api.quantize(path, calib, method="brecq", w_bits=3, a_bits=4, num_calib=n, **method_kw("brecq", **FAST))
    n_train = n - E.held_out(n)
    assert seen["measure"] == set(range(n_train, n))
    assert seen["train"] and max(seen["train"]) < n_train


def test_region_time_is_split_by_phase(tiny, tmp_path):
    """Each region's seconds are split into caching, measuring and the method's phases (rounding, steps), which
    add up to the region's seconds; the report's region table shows the split."""
    _, path, calib, _ = tiny
    res = api.quantize(path, calib, method="brecq", w_bits=4, a_bits=8, report=str(tmp_path / "r.md"),
                       **method_kw("brecq", **FAST))
    for r in res.recon.regions:
        if not r.layers:
            continue
        assert {"cache", "measure", "rounding", "steps"} <= set(r.phase_seconds), r.phase_seconds
        assert sum(r.phase_seconds.values()) == pytest.approx(r.seconds, rel=0.02, abs=0.01)
    text = (tmp_path / "r.md").read_text()
    assert "seconds_by_phase" in text and re.search(r"rounding [0-9.]+", text) and re.search(r"steps [0-9.]+", text)
