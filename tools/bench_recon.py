"""``python tools/bench.py recon``: reconstruction benchmarks (issues 4-7), one markdown section per experiment.

    python tools/bench.py recon --experiments digits-methods,effnet-bits [--num-calib N] [--num-eval N]
                                [--set iters=200 ...] [--out docs/benchmarks.md]

Experiments (``--experiments all`` runs them in this order, digits first):
  digits-methods      W2A4: RTN, AdaRound (layer), BRECQ (block), QDrop on the three digits models
  digits-granularity  W2A4 BRECQ at layer / block / stage / net granularity
  digits-loss         W2A4 BRECQ, MSE vs Fisher loss
  effnet-bits         EfficientNet-Lite0 BRECQ W8A8, W4A8, W4A4, W3A4, W2A4 (+ RTN W8A8 / W4A8)
  effnet-granularity  EfficientNet-Lite0 W3A4 BRECQ at layer / block / stage / net
  effnet-loss         EfficientNet-Lite0 W4A4 BRECQ, MSE vs Fisher
  effnet-qdrop        EfficientNet-Lite0 W4A4 BRECQ (two-stage) vs QDrop (joint, drop 0.5)
  effnet-iters        EfficientNet-Lite0 W4A4 BRECQ at 50 / 200 / 800 rounding iterations per region
  digits-iters        W2A4 BRECQ at 50 / 200 / 800 / 3200 rounding iterations per region
  digits-rapq         RAPQ ablation at W4A4 and W2A4: naive Po2, exponent search, AdaRound on naive Po2,
                      Po2 scale group (MSE), scale group + BN-based L-P loss, float BRECQ alongside
  effnet-rapq         the same on EfficientNet-Lite0 at W4A4
  digits-rounding     rounding functions at W4A16 (~weights only), W4A4, W3A4: nearest, floor, ceil, stochastic,
                      AdaRound and Attention Round (block reconstruction), Bit-Split; Attention Round Table 5
  effnet-rounding     the same on EfficientNet-Lite0 at W4A4
  digits-attention-tau  Attention Round tau 0.1 / 0.25 / 0.5 / 1.0 grid steps, and 0.5 in weight units, W4A16 / W4A4
  digits-bitsplit     Bit-Split vs TF-Lite-style RTN and RTN at the L_p scale, log vs uniform, W3/W4 at A8
  effnet-bitsplit     the same on EfficientNet-Lite0
  digits-ecaq         per-layer activation scales vs ECAQ at A4/A3, RTN and Bit-Split weights
  effnet-ecaq         the same on EfficientNet-Lite0
  digits-mixed        unified 2/4/8-bit, coding-length mixed bits (3,4,5,6 and 3,4,5) and the genetic search at
                      the same weight sizes, all reconstructed with BRECQ at A8
  effnet-mixed        the same on EfficientNet-Lite0
  effnet-mixed-rtn    the same with round-to-nearest instead of BRECQ (minutes instead of hours)
  effnet-ranges       EfficientNet-Lite0 RTN W8A8 / W8A4 / W4A8, activation ranges L_p vs --a-output-search
  digits-ranges       the same on the digits models at W8A4 / W4A4
  effnet-fast         EfficientNet-Lite0 BRECQ W4A8 and W4A4, fast preset: time (run alone) and fidelity
  effnet-crop         the effnet-fast rows with each training step on a spatial crop of half the side, and without
  effnet-fast-iters   the fast preset's W4A8 and W4A4 BRECQ (crops) at 100 to 600 rounding iterations
  effnet-fast-layer   the same rows reconstructed layer by layer instead of block by block (same iterations
                      per region: a layer's iteration is cheaper, so more regions in about the same time)
  digits-fast-layer   the same on the digits models
  effnet-po2          power-of-two vs float scales, RTN and BRECQ at W8A8 / W4A8 / W4A4, activation rescale on/off
  digits-po2          the same on the digits models
  effnet-seeds        W4A8 BRECQ at seeds 0, 1, 2: how far results move with the seed alone
  effnet-accuracy     W4A4 BRECQ with an accuracy target (--min-sqnr 12): layers changed, SQNR before/after,
                      size and latency cost, time
  digits-accuracy     the same mode on the digits models at W2A4 (RTN and BRECQ, --min-sqnr 12): a quick check
  effnet-gain         the effnet-fast rows with learned weight-step gains off, at 1e-3 (the default) and at 3e-3
  digits-gain         W4A4 BRECQ on the digits models without and with --w-scale-lr 1e-3
  effnet-samples      the effnet-fast rows on 512 and 1024 calibration samples (the preset's 256 before 0b147ea)
  zoo-fast            RTN W8A8 / W4A8 and the fast preset's BRECQ W4A8 / W4A4 on resnet18, mobilenetv2_050 and
                      vit_tiny_patch16_224 (tools/zoo.py, random weights, real-photo crops; needs `.[zoo]`)
  zoo-samples         the zoo models' W4A8 and W4A4 BRECQ on 256 and 1024 calibration samples
  effnet-a8-steps     W4A8 BRECQ: 400 rounding + 100 step-size iterations (the fast preset before 8-bit
                      activations gave the step iterations to the rounding), 400 without steps, and the default
  zoo-a8-steps        the same on the zoo models

Every quantized model is exported to QDQ and run in onnxruntime (CPU, default session options) on the
evaluation samples; ``SQNR dB`` is onnxruntime's output against the float model's, ``sim SQNR dB`` is
the torch simulation's (the two agree when the export matches the simulation). Each experiment's
section is written as soon as it finishes, so a long run keeps what it has done.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import bench as B

W2A4 = dict(w_bits=2, a_bits=4)
W4A8, W4A4 = dict(w_bits=4, a_bits=8), dict(w_bits=4, a_bits=4)


@dataclass
class Exp:
    group: str  # digits | efficientnet | zoo
    title: str
    rows: list[tuple[str, dict]]  # (label, QuantConfig overrides)


def _po2_rows(bits: tuple[tuple[int, int], ...], methods: tuple[str, ...]) -> list[tuple[str, dict]]:
    """Per method and bit pair: float scales, po2 (exponent search) with and without the activation rescale, and
    with the weight-channel equalization (--po2-equalize)."""
    rows = []
    for m in methods:
        for w, a in bits:
            b = dict(method=m, w_bits=w, a_bits=a)
            rows += [(f"{m} float W{w}A{a}", b), (f"{m} po2 rescale W{w}A{a}", dict(scale="po2", po2_rescale=True, **b)),
                     (f"{m} po2 no-rescale W{w}A{a}", dict(scale="po2", po2_rescale=False, **b)),
                     (f"{m} po2 equalize W{w}A{a}", dict(scale="po2", po2_equalize=True, **b)),
                     (f"{m} po2 equalize rescale W{w}A{a}", dict(scale="po2", po2_equalize=True, po2_rescale=True, **b))]
    return rows


def _rapq_rows(w: int, a: int) -> list[tuple[str, dict]]:
    """RAPQ Table 3 analog: float-scale BRECQ; naive Po2 (2^floor(log2 s), Eq. 3-5) and exponent search,
    RTN; BRECQ (AdaRound + Po2 activation steps) with the frozen naive / searched Po2 scales; Po2 scale group
    (MSE loss) and scale group + L-P loss, from naive Po2 calibration; scale group + L-P from the exponent
    search's calibration (``po2_method`` search, the default: activation steps start at the searched Po2)."""
    bits, tag = dict(w_bits=w, a_bits=a), f"W{w}A{a}"
    naive = dict(scale="po2", po2_method="floor", **bits)
    search = dict(scale="po2", **bits)
    return [(f"brecq float {tag}", dict(method="brecq", **bits)),
            (f"rtn po2 naive {tag}", dict(method="rtn", **naive)),
            (f"rtn po2 search {tag}", dict(method="rtn", **search)),
            (f"brecq po2 naive {tag}", dict(method="brecq", **naive)),
            (f"brecq po2 search {tag}", dict(method="brecq", **search)),
            (f"rapq group mse {tag}", dict(method="rapq", loss="mse", **naive)),
            (f"rapq group+lp {tag}", dict(method="rapq", loss="lp", **naive)),
            (f"rapq group+lp search-init {tag}", dict(method="rapq", loss="lp", **search))]


def _rounding_rows(w: int, a: int, extra: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """Attention Round Table 5 analog: only the rounding function differs. Bias correction is off in every row
    (it would undo most of floor/ceil's systematic error); the learned rows reconstruct blocks and then
    learn the activation steps, with the same iterations."""
    bits, tag = dict(w_bits=w, a_bits=a, bias_correction=False), f"W{w}A{a}"
    rows = [(f"{r} {tag}", dict(method="rtn", rounding=r, **bits)) for r in ("nearest", "floor", "ceil", "stochastic")]
    rows += [(f"adaround block {tag}", dict(method="brecq", **bits)),
             (f"attention block {tag}", dict(method="attention", **bits)),
             (f"attention block tau 0.25 {tag}", dict(method="attention", attn_tau=0.25, **bits))]
    rows += [(f"{m} {tag}", dict(method=m, **bits)) for m in extra]
    return rows


def _bitsplit_rows(a: int) -> list[tuple[str, dict]]:
    """Bit-Split Table 1 / Fig. 4 analog: TF-Lite-style RTN (max-abs scale, Eq. 12), RTN at the L_p scale,
    Bit-Split, and logarithmic weights, at W3 and W4."""
    rows = []
    for w in (4, 3):
        tag = f"W{w}A{a}"
        rows += [(f"tflite rtn {tag}", dict(method="rtn", w_scale_method="minmax", bias_correction=False, w_bits=w,
                                            a_bits=a)),
                 (f"rtn lp {tag}", dict(method="rtn", w_bits=w, a_bits=a)),
                 (f"bitsplit uniform {tag}", dict(method="bitsplit", w_bits=w, a_bits=a)),
                 (f"bitsplit log {tag}", dict(method="bitsplit", weight_grid="log", w_bits=w, a_bits=a))]
    return rows


def _ecaq_rows(w: int = 4) -> list[tuple[str, dict]]:
    """Bit-Split Table 3 analog: per-layer activation scales vs ECAQ at A4 and A3, with RTN and Bit-Split weights."""
    rows = [(f"{m} {'ecaq' if e else 'per-layer'} W{w}A{a}", dict(method=m, ecaq=e, w_bits=w, a_bits=a))
            for a in (4, 3) for m in ("rtn", "bitsplit") for e in (False, True)]
    # power-of-two scales, exported as integer ONNX (ECAQ: per-channel requantization at the producer)
    return rows + [(f"rtn po2 int {'ecaq' if e else 'per-layer'} W{w}A{a}",
                    dict(method="rtn", ecaq=e, scale="po2", format="int", w_bits=w, a_bits=a))
                   for a in (4, 3) for e in (False, True)]


def _mixed_rows(a: int = 8, method: str = "brecq") -> list[tuple[str, dict]]:
    """Attention Round Table 4 / BRECQ Fig. 2 analog: unified bits, coding-length mixed bits, and the genetic
    search at the same weight sizes; every configuration quantized with ``method`` (BRECQ: fast preset)."""
    m = dict(method=method)
    rows = [(f"unified W{b}A{a}", dict(w_bits=b, a_bits=a, **m)) for b in (2, 3, 4, 8)]
    for bits in ((3, 4, 5, 6), (3, 4, 5)):
        tag = ",".join(map(str, bits))
        rows.append((f"coding-length {tag} A{a}", dict(mixed="coding-length", mixed_bits=list(bits), a_bits=a, **m)))
        rows.append((f"search = size of {tag} A{a}", dict(mixed="search", a_bits=a,
                                                          budget_like=("coding-length", list(bits)), **m)))
    for b in (3, 4):
        rows.append((f"search = size of W{b} A{a}", dict(mixed="search", a_bits=a, budget_like=("unified", b), **m)))
    return rows


EXPERIMENTS: dict[str, Exp] = {
    "digits-methods": Exp("digits", "W2A4: RTN vs AdaRound (layer) vs BRECQ (block) vs QDrop", [
        ("rtn W2A4", dict(method="rtn", **W2A4)),
        ("adaround W2A4", dict(method="adaround", **W2A4)),
        ("brecq block W2A4", dict(method="brecq", **W2A4)),
        ("qdrop block W2A4", dict(method="qdrop", **W2A4))]),
    "digits-granularity": Exp("digits", "W2A4 BRECQ: reconstruction granularity (BRECQ Table 1)", [
        (f"brecq {g} W2A4", dict(method="brecq", granularity=g, **W2A4)) for g in ("layer", "block", "stage", "net")]),
    "digits-loss": Exp("digits", "W2A4 BRECQ: MSE vs Fisher-weighted loss", [
        ("brecq mse W2A4", dict(method="brecq", loss="mse", **W2A4)),
        ("brecq fisher W2A4", dict(method="brecq", loss="fisher", **W2A4))]),
    "effnet-bits": Exp("efficientnet", "BRECQ fast preset, W8A8 to W2A4, with RTN references", [
        ("rtn W8A8", dict(method="rtn", w_bits=8, a_bits=8)),
        ("brecq W8A8", dict(method="brecq", w_bits=8, a_bits=8)),
        ("rtn W4A8", dict(method="rtn", w_bits=4, a_bits=8)),
        ("brecq W4A8", dict(method="brecq", w_bits=4, a_bits=8)),
        ("brecq W4A4", dict(method="brecq", w_bits=4, a_bits=4)),
        ("brecq W3A4", dict(method="brecq", w_bits=3, a_bits=4)),
        ("brecq W2A4", dict(method="brecq", **W2A4))]),
    "effnet-granularity": Exp("efficientnet", "W3A4 BRECQ: reconstruction granularity", [
        (f"brecq {g} W3A4", dict(method="brecq", granularity=g, w_bits=3, a_bits=4))
        for g in ("layer", "block", "stage", "net")]),
    "effnet-loss": Exp("efficientnet", "W4A4 BRECQ: MSE vs Fisher-weighted loss", [
        ("brecq mse W4A4", dict(method="brecq", loss="mse", w_bits=4, a_bits=4)),
        ("brecq fisher W4A4", dict(method="brecq", loss="fisher", w_bits=4, a_bits=4))]),
    "effnet-qdrop": Exp("efficientnet", "W4A4: BRECQ (rounding, then steps) vs QDrop (joint, drop 0.5)", [
        ("brecq W4A4", dict(method="brecq", w_bits=4, a_bits=4)),
        ("qdrop W4A4", dict(method="qdrop", w_bits=4, a_bits=4))]),
    "digits-rapq": Exp("digits", "RAPQ ablation (RAPQ Table 3): naive Po2 vs Po2 scale group vs + BN-based L-P loss", [
        row for bits in ((4, 4), (2, 4)) for row in _rapq_rows(*bits)]),
    "effnet-rapq": Exp("efficientnet", "RAPQ ablation (RAPQ Table 3) at W4A4 and W2A4", [
        row for bits in ((4, 4), (2, 4)) for row in _rapq_rows(*bits)]),
    "digits-rapq-presets": Exp("digits", "RAPQ presets (RAPQ Sec. 5.4): rapq-quick (20k+1k iterations, alpha 0.1) vs "
                               "rapq (80k+5k, alpha 0.9), W4A4, time and fidelity", [
        (f"{p} W4A4", dict(method="rapq", preset=p, scale="po2", w_bits=4, a_bits=4)) for p in ("rapq-quick", "rapq")]),
    "digits-rounding": Exp("digits", "rounding functions (Attention Round Table 5): nearest / floor / ceil / "
                           "stochastic / AdaRound / Attention Round", [
        row for bits in ((4, 16), (4, 4), (3, 4)) for row in _rounding_rows(*bits, extra=("bitsplit",))]),
    "digits-attention-tau": Exp("digits", "Attention Round tau (Fig. 2 analog) at W4A4 and W4A16, and tau read in "
                                "weight units (Eq. 3 literally)", [
        (f"attention tau {t}{' weight-units' if u == 'weight' else ''} W4A{a}",
         dict(method="attention", attn_tau=t, attn_tau_unit=u, w_bits=4, a_bits=a, bias_correction=False))
        for a in (16, 4) for t, u in ((0.1, "step"), (0.25, "step"), (0.5, "step"), (1.0, "step"), (0.5, "weight"))]),
    "effnet-rounding": Exp("efficientnet", "rounding functions (Attention Round Table 5) at W4A16, W4A4 and W3A4", [
        row for bits in ((4, 16), (4, 4), (3, 4)) for row in _rounding_rows(*bits, extra=("bitsplit",))]),
    "digits-bitsplit": Exp("digits", "Bit-Split vs TF-Lite-style RTN (Bit-Split Table 1), logarithmic vs uniform "
                           "weights (Fig. 4)", _bitsplit_rows(8)),
    "effnet-bitsplit": Exp("efficientnet", "Bit-Split vs TF-Lite-style RTN, logarithmic vs uniform weights",
                           _bitsplit_rows(8)),
    "digits-ecaq": Exp("digits", "ECAQ vs per-layer activation scales (Bit-Split Table 3)", _ecaq_rows()),
    "effnet-ecaq": Exp("efficientnet", "ECAQ vs per-layer activation scales", _ecaq_rows()),
    "digits-mixed": Exp("digits", "mixed precision vs unified bits at equal weight size (Attention Round Table 4, "
                        "BRECQ Fig. 2)", _mixed_rows()),
    "digits-mixed-rtn": Exp("digits", "mixed precision vs unified bits at equal weight size, round-to-nearest "
                            "(no reconstruction: the quantizer the sensitivities are measured with)",
                            _mixed_rows(method="rtn")),
    "effnet-mixed": Exp("efficientnet", "mixed precision vs unified bits at equal weight size", _mixed_rows()),
    "effnet-mixed-rtn": Exp("efficientnet", "mixed precision vs unified bits at equal weight size, round-to-nearest "
                            "(no reconstruction)", _mixed_rows(method="rtn")),
    "effnet-iters": Exp("efficientnet", "W4A4 BRECQ: fidelity vs rounding iterations per region", [
        (f"brecq W4A4 iters {n}", dict(method="brecq", w_bits=4, a_bits=4, iters=n, act_iters=n // 2))
        for n in (50, 200, 800)]),
    "effnet-fast": Exp("efficientnet", "the fast preset's time and fidelity, W4A8 and W4A4 BRECQ (issue 18 item 2: "
                       "at most 300 s on 2 cores)", [
        ("brecq W4A8", dict(method="brecq", w_bits=4, a_bits=8)),
        ("brecq W4A4", dict(method="brecq", w_bits=4, a_bits=4))]),
    "effnet-crop": Exp("efficientnet", "the fast preset's W4A8 and W4A4 BRECQ with each training step on a spatial "
                       "crop of half the side (recon_crop 0.5, recon/crops.py) vs whole images", [
        (f"brecq W4A{a}{' crop 0.5' if c < 1 else ''}", dict(method="brecq", w_bits=4, a_bits=a, recon_crop=c))
        for a in (8, 4) for c in (1.0, 0.5)]),
    "effnet-fast-iters": Exp("efficientnet", "the fast preset's W4A8 and W4A4 BRECQ (crops) at 100 / 200 / 300 / 400 / "
                             "600 rounding iterations per region: fidelity vs time", [
        (f"brecq W4A{a} iters {n}", dict(method="brecq", w_bits=4, a_bits=a, iters=n))
        for a in (8, 4) for n in (100, 200, 300, 400, 600)]),
    "effnet-fast-layer": Exp("efficientnet", "the fast preset's W4A8 and W4A4 BRECQ reconstructed layer by layer "
                             "(the block rows are effnet-fast)", [
        (f"brecq layer W4A{a}", dict(method="brecq", granularity="layer", w_bits=4, a_bits=a)) for a in (8, 4)]),
    "digits-fast-layer": Exp("digits", "the fast preset's W4A8 and W4A4 BRECQ, layer by layer vs block by block", [
        (f"brecq {g} W4A{a}", dict(method="brecq", granularity=g, w_bits=4, a_bits=a))
        for a in (8, 4) for g in ("block", "layer")]),
    "effnet-po2": Exp("efficientnet", "power-of-two scales vs float scales (issue 18: within 0.5 dB), RTN and "
                      "BRECQ (fast preset), with and without the activation rescale, and with the weight-channel "
                      "equalization (graph/rescale.py)",
                      _po2_rows(((8, 8), (4, 8), (4, 4)), ("rtn", "brecq"))),
    "digits-po2": Exp("digits", "power-of-two scales vs float scales, RTN and BRECQ (fast preset), with and "
                      "without the activation rescale, and with the weight-channel equalization (graph/rescale.py)",
                      _po2_rows(((8, 8), (4, 8), (4, 4)), ("rtn", "brecq"))),
    "effnet-seeds": Exp("efficientnet", "run-to-run spread: W4A8 BRECQ (fast preset) at seeds 0, 1, 2 "
                        "(minibatches, QDrop masks)", [
        (f"brecq W4A8 seed {k}", dict(method="brecq", w_bits=4, a_bits=8, seed=k)) for k in (0, 1, 2)]),
    "effnet-accuracy": Exp("efficientnet", "W4A4 BRECQ (fast preset) with an accuracy target: --min-sqnr 12 on 128 "
                           "calibration samples held out from calibration; changes chosen before reconstruction "
                           "(--target-stage auto: rounds of accuracy/rounds.py)", [
        ("brecq W4A4 min-sqnr 12", dict(method="brecq", w_bits=4, a_bits=4, min_sqnr=12.0, target_latency=True)),
        ("brecq W4A4 min-sqnr 12 rank 32", dict(method="brecq", w_bits=4, a_bits=4, min_sqnr=12.0, target_latency=True,
                                                target_rank_samples=32))]),
    "effnet-ranges": Exp("efficientnet", "RTN activation ranges: L_p per tensor (default) vs chosen by model-output "
                         "error (--a-output-search), W8A8, W8A4, W4A8", [
        (f"rtn W{w}A{a}{' output-search' if on else ''}", dict(method="rtn", w_bits=w, a_bits=a, a_output_search=on))
        for w, a in ((8, 8), (8, 4), (4, 8)) for on in (False, True)]),
    "digits-ranges": Exp("digits", "RTN activation ranges: L_p per tensor vs chosen by model-output error "
                         "(--a-output-search), W8A4 and W4A4", [
        (f"rtn W{w}A{a}{' output-search' if on else ''}", dict(method="rtn", w_bits=w, a_bits=a, a_output_search=on))
        for w, a in ((8, 4), (4, 4)) for on in (False, True)]),
    "digits-accuracy": Exp("digits", "W2A4 with an accuracy target: --min-sqnr 12, the changes ranked on all "
                           "target samples or on the first 32 (--target-rank-samples)", [
        (f"{m} W2A4 min-sqnr 12{' rank 32' if k else ''}",
         dict(method=m, min_sqnr=12.0, target_latency=True, target_rank_samples=k, **W2A4))
        for m in ("rtn", "brecq") for k in (None, 32)]),
    "effnet-gain": Exp("efficientnet", "the fast preset's W4A8 and W4A4 BRECQ with learned weight-step gains "
                               "(--w-scale-lr, recon/weight_gain.py; 1e-3 is the fast preset's default since "
                               "a9d2549, 0 turns them off)", [
        (f"brecq W{w}A{a} w-scale-lr {lr:g}", dict(method="brecq", w_bits=w, a_bits=a, w_scale_lr=lr))
        for w, a in ((4, 8), (4, 4)) for lr in (0.0, 1e-3, 3e-3)]),
    "digits-gain": Exp("digits", "W4A4 BRECQ (fast preset) without and with learned weight-step gains "
                               "(--w-scale-lr 1e-3, recon/weight_gain.py)", [
        (f"brecq W4A4 w-scale-lr {lr:g}", dict(method="brecq", w_scale_lr=lr, **W4A4)) for lr in (0.0, 1e-3)]),
    "effnet-samples": Exp("efficientnet", "the fast preset's W4A8 and W4A4 BRECQ on 512 and 1024 calibration samples "
                                  "(256, the preset's before 0b147ea: effnet-fast at a9d2549): fidelity vs time", [
        (f"brecq W4A{a} {n} samples", dict(method="brecq", w_bits=4, a_bits=a, num_calib=n))
        for n in (512, 1024) for a in (8, 4)]),
    "zoo-fast": Exp("zoo", "the fast preset's W4A8 and W4A4 BRECQ on zoo architectures beside EfficientNet-Lite0 "
                           "(issue 18: the defaults on other models), with RTN W8A8 / W4A8 references", [
        ("rtn W8A8", dict(method="rtn")), ("rtn W4A8", dict(method="rtn", **W4A8)),
        ("brecq W4A8", dict(method="brecq", **W4A8)), ("brecq W4A4", dict(method="brecq", **W4A4))]),
    "zoo-samples": Exp("zoo", "the fast preset's W4A8 and W4A4 BRECQ on 256 and 1024 calibration samples, on zoo "
                              "architectures (effnet-samples on other models)", [
        (f"brecq W4A{a} {n} samples", dict(method="brecq", w_bits=4, a_bits=a, num_calib=n))
        for a in (8, 4) for n in (256, 1024)]),
    **{f"{g}-a8-steps": Exp(m, "W4A8 BRECQ (fast preset): are 8-bit activation steps worth learning? 400 rounding + "
                               "100 step-size iterations, 400 + none, and the default (500 rounding, no step phase)", [
        ("brecq W4A8 400 + 100 steps", dict(method="brecq", iters=400, act_iters=100, **W4A8)),
        ("brecq W4A8 400, no steps", dict(method="brecq", iters=400, act_iters=0, **W4A8)),
        ("brecq W4A8", dict(method="brecq", **W4A8))]) for g, m in (("effnet", "efficientnet"), ("zoo", "zoo"))},
    "digits-iters": Exp("digits", "W2A4 BRECQ: fidelity vs rounding iterations per region", [
        (f"brecq W2A4 iters {n}", dict(method="brecq", iters=n, act_iters=n // 2, **W2A4)) for n in (50, 200, 800, 3200)]),
}


def run_row(bm: B.BenchModel, calib, eval_ds, float_out, label: str, overrides: dict, work: Path) -> B.Row:
    from onnxptq.api import quantize
    from onnxptq.eval import fidelity

    out = work / f"{bm.name}.{label.replace(' ', '-').replace(',', '_').replace('=', 'eq')}.onnx"
    overrides = dict(overrides)
    n = overrides.pop("num_calib", len(calib))  # a row with its own number of samples (effnet-samples, defaults)
    if n != len(calib):
        calib = load_calib(bm, n)
    if "budget_like" in overrides:  # a size budget equal to another configuration's weight size
        overrides["budget_size"] = reference_size(bm, overrides, *overrides.pop("budget_like"))
    row = B.Row("onnxptq", label)
    t0 = time.perf_counter()
    # options a method does not read (e.g. a shared checkpoint folder for rtn rows) were ignored before issue 17
    # and are an error now: each row passes what its method reads
    from onnxptq.recon.methods import options_for

    opts = options_for(overrides.get("method", "rtn"), {"checkpoint_dir": str(work / f"{out.name}.ckpt"), **overrides})
    data = calib
    if opts.get("min_sqnr") is not None or opts.get("max_drop") is not None:
        # the target's samples follow the calibration samples in the file, so calibration is the other rows'
        data = B.load_data(bm.calib, bm.path, len(calib) + opts.get("target_samples", 128))
    res = quantize(bm.path, data, output=out, force=True, num_calib=len(calib), progress=False, **opts)
    row.quant_s = time.perf_counter() - t0
    row.timings = dict(res.timings)
    row.file_bytes = B.file_size(out)
    row.fid = fidelity(float_out, B.run_onnxruntime(str(out), eval_ds.inputs, B.EVAL_BATCH), eval_ds.labels)
    row.unfused_sqnr_db = fidelity(float_out, res.simulate(eval_ds.inputs), None).sqnr_db  # simulation
    cfg = res.config
    summary = res.summary()
    from onnxptq.mixed.allocate import plan_size

    row.weight_bytes = plan_size(res.qgraph, res.plan)
    if res.mixed is not None:
        from onnxptq.cli import _fmt_layer_bits

        row.notes = (f"weights {res.mixed.size_bytes / 1e3:.1f} kB (bits/8, no bias), bits {_fmt_layer_bits(cfg_bits(res))}"
                     + (f", search {res.mixed.seconds:.0f} s" if res.mixed.method == "search" else "") + "; ")
    elif cfg.w_bits < 8:
        row.notes = f"weights {summary['weights_quant_bytes'] / 1e3:.1f} kB with biases; "
    if res.accuracy_control is not None:
        print("   accuracy " + "\n   ".join(res.accuracy_control.lines()), flush=True)
        row.notes += accuracy_notes(res.accuracy_control)
    if res.recon is not None:
        r = res.recon
        cropped = sum(x.crop < 1 for x in r.regions)
        row.notes += (f"{r.granularity} x{len(r.regions)}, {r.loss}, iters {sum(x.iterations for x in r.regions)}"
                      f"/{len(r.regions)} regions, {sum(x.bias_corrected for x in r.regions)} bias-corrected, "
                      f"{sum(x.reverted for x in r.regions)} kept RTN, "
                      + (f"{cropped} trained on crops, " if cropped else "") +
                      f"{sum(len(x.steps_kept) for x in r.regions)} steps kept / "
                      f"{sum(len(x.steps_clamped) for x in r.regions)} clamped (int32 bias)")
        ps = [x.lp_exponent for x in r.regions if x.lp_exponent is not None]
        if ps:
            srcs = sorted({x.lp_source for x in r.regions if x.lp_source})
            row.notes += f", L-P P {min(ps):.2f}-{max(ps):.2f} (gamma from {'/'.join(srcs)})"
        if r.method == "bitsplit":
            solved = [x.rtn_channels for x in r.regions if not x.reverted]
            row.notes += f", {100 * np.mean(solved or [0.0]):.0f}% of solved layers' channels kept RTN (held-out rows)"
        far = [x.beyond_neighbors for x in r.regions if x.beyond_neighbors]
        if far:
            row.notes += f", {100 * np.mean(far):.1f}% of weights beyond their two nearest grid points"
    if len(calib) != bm.default_calib:
        row.notes += ("; " if row.notes else "") + f"{len(calib)} calibration samples"
    return row


_CALIB: dict[tuple[str, int], object] = {}


def load_calib(bm: B.BenchModel, n: int):
    """The first ``n`` calibration samples of ``bm``'s file, loaded once per (model, n)."""
    if (bm.name, n) not in _CALIB:
        _CALIB[(bm.name, n)] = B.load_data(bm.calib, bm.path, n)
    return _CALIB[(bm.name, n)]


def default_samples(overrides: dict) -> int:
    """The calibration samples ``quantize`` takes by default for a row's method and preset (``method_defaults``)."""
    from onnxptq.config import QuantConfig
    from onnxptq.recon.methods import method_defaults

    cfg = QuantConfig(**{k: overrides[k] for k in ("method", "preset") if k in overrides})
    return method_defaults(cfg)["num_calib"]


def accuracy_notes(acc) -> str:
    """The accuracy target's outcome in a table cell: target, SQNR before/after (simulation, target samples), the
    layers changed, weight size and latency before/after, search time."""
    changed = acc.changed()
    text = (f"target {acc.target} {'met' if acc.met else 'MISSED'} on {acc.eval_samples} samples "
            f"({acc.eval_source}): SQNR {acc.before.sqnr_db:.2f} -> {acc.after.sqnr_db:.2f} dB; "
            f"{len(changed)} layer(s) changed ({sum(a == 'bits' for a in changed.values())} to 8 bits, "
            f"{sum(a == 'float' for a in changed.values())} float) of {len(acc.steps)} tried: "
            f"{', '.join(changed) or 'none'}; weights {acc.weight_bytes_before / 1e3:.1f} -> "
            f"{acc.weight_bytes_after / 1e3:.1f} kB")
    if acc.latency_ms_before is not None:
        text += f"; latency (ORT, b1, 1 thread) {acc.latency_ms_before:.2f} -> {acc.latency_ms_after:.2f} ms"
    text += f"; search {acc.seconds:.0f} s, {acc.evaluations} evaluations"
    for k, r in enumerate(acc.rounds, 1):  # --target-stage before (accuracy/rounds.py)
        text += (f"; round {k}: goal {r.goal} on the calibrated model, {r.kept} kept, calibrated "
                 f"{r.calibrated.sqnr_db:.2f} dB -> reconstructed {r.reconstructed.sqnr_db:.2f} dB "
                 f"(reconstruction {r.seconds:.0f} s)")
    return text + "".join(f"; {n}" for n in acc.notes) + "; "


def pareto_plot(rows: list[B.Row], title: str, path: Path) -> Path | None:
    """Fidelity (onnxruntime SQNR) vs weight size of the unified / coding-length / search rows (one PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = {"unified": ("o", "#4477aa"), "coding-length": ("s", "#228833"), "search": ("^", "#ee6677")}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, (marker, color) in groups.items():
        pts = sorted((r.weight_bytes / 1e3, r.fid.sqnr_db, r.config) for r in rows
                     if r.config.startswith(kind) and r.fid is not None and r.weight_bytes)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=kind,
                    linestyle="-" if kind == "unified" else "none")
    ax.set_xlabel("quantized weights (kB, bits/8 per weight)")
    ax.set_ylabel("output SQNR vs float (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cfg_bits(res) -> dict[str, int]:
    return {x.name: res.plan.w_bits[x.name] for x in res.qgraph.layers}


def reference_size(bm: B.BenchModel, overrides: dict, kind: str, arg) -> float:
    """Weight bytes (bits / 8, no bias) of a unified ``arg``-bit plan or of the coding-length plan with bits ``arg``."""
    from onnxptq.config import QuantConfig
    from onnxptq.graph import import_model
    from onnxptq.mixed.allocate import apply_mixed, plan_size
    from onnxptq.plan import make_plan

    qg = import_model(bm.path)
    base = {k: v for k, v in overrides.items() if k not in ("mixed", "budget_size", "budget_bops", "mixed_bits")}
    if kind == "unified":
        return plan_size(qg, make_plan(qg, QuantConfig(**{**base, "w_bits": arg})))
    cfg = QuantConfig(**{**base, "mixed": "coding-length", "mixed_bits": list(arg)})
    plan = make_plan(qg, cfg)
    return apply_mixed(qg, plan, cfg).size_bytes


def table(rows: list[B.Row], labels: bool) -> str:
    head = ["config", "SQNR dB (onnxruntime)", "sim SQNR dB", "top-1 agree", "KL"] + (["accuracy"] if labels else [])
    head += ["total s", "reconstruct s", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r.error:
            lines.append("| " + " | ".join([r.config, f"**failed**: {r.error}"] + [""] * (len(head) - 2)) + " |")
            continue
        f = r.fid
        cells = [r.config, B._f(f and f.sqnr_db, ".2f"), B._f(r.unfused_sqnr_db, ".2f"),
                 B._f(f and f.top1_agreement, ".4f"), B._f(f and f.kl, ".5f")]
        if labels:
            cells.append(B._f(r.float_accuracy if r.quantizer == "float" else (f.quant_accuracy if f else None), ".4f"))
        cells += [B._f(r.quant_s, ".0f"), B._f(r.timings.get("reconstruct"), ".0f"), r.notes]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def cmd_recon(args) -> int:
    names = list(EXPERIMENTS) if args.experiments == "all" else [e.strip() for e in args.experiments.split(",")]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise B.BenchError(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    sets = B.parse_sets(args.set)
    machine = B.machine_info()
    cmd = B.command_line()
    ctx = tempfile.TemporaryDirectory(prefix="onnxptq-recon-") if args.keep is None else None
    work = Path(ctx.name) if ctx else Path(args.keep)
    work.mkdir(parents=True, exist_ok=True)
    failed = []
    payload: dict[str, dict] = {}
    cache: dict[str, tuple] = {}
    try:
        for name in names:
            exp = EXPERIMENTS[name]
            models = [m for m in B.GROUPS[exp.group]() if not args.only or m.name in args.only.split(",")]
            load0 = os.getloadavg()
            t_exp = time.perf_counter()
            parts: list[str] = []

            def write(rows_now: list | None = None, bm_now=None, note: str = "") -> None:
                """Write the section with the finished models (and the rows so far of the current one)."""
                cur = []
                if rows_now is not None:
                    cur = [f"### {bm_now.name}", "", note, "", table(rows_now, note.endswith("labels)."))]
                load1 = os.getloadavg()
                head = [f"## Reconstruction ({name}): {exp.title}", "", f"Reproduce: `{cmd}`", "",
                        f"Machine: {B.machine_line(machine)}; load average {load0[0]:.1f} at start, {load1[0]:.1f} "
                        f"at the last row (the CPU is shared: times are wall clock under that load). "
                        f"{time.perf_counter() - t_exp:.0f} s so far.", "",
                        "Options: `onnxptq.quantize(model, calib, num_calib=N, <row options>"
                        + (", " + ", ".join(f"{k}={v!r}" for k, v in sets.items()) if sets else "")
                        + ")`, everything else at its default (fast preset, float per-channel scales, first/last "
                        "layer 8-bit). `SQNR dB (onnxruntime)`: the exported QDQ model in onnxruntime vs the float "
                        "model; `sim SQNR dB`: the torch simulation of the same quantized model; `total s`: the whole "
                        "quantize call (import, RTN calibration, reconstruction, export); `notes`: regions, loss, "
                        "rounding iterations.", ""]
                body = "\n".join(head + parts + cur)
                if args.out:
                    B.write_section(Path(args.out), f"recon-{name}", body)
                if args.json:
                    Path(args.json).write_text(B.json.dumps({"command": cmd, "machine": machine,
                                                             "experiments": payload}, indent=1, default=float) + "\n")

            for bm in models:
                if bm.name not in cache:
                    calib = B.load_data(bm.calib, bm.path, args.num_calib or bm.default_calib)
                    eval_ds = B.load_data(bm.eval, bm.path, args.num_eval or bm.default_eval)
                    float_out = B.run_onnxruntime(str(bm.path), eval_ds.inputs, B.EVAL_BATCH)
                    ref = B.fidelity(float_out, float_out, eval_ds.labels).float_accuracy
                    cache[bm.name] = (calib, eval_ds, float_out, ref)
                calib, eval_ds, float_out, ref = cache[bm.name]
                note = (f"Calibration {bm.calib.name} ({len(calib)} samples unless a row's notes say otherwise: "
                        "without --num-calib each row takes as many as quantize does by default, RTN "
                        f"{default_samples({})}, the fast preset {default_samples({'method': 'brecq'})}), "
                        f"evaluation {bm.eval.name} "
                        f"({len(eval_ds)} samples{', labels' if eval_ds.labels is not None else ''}).")
                rows = []
                if ref is not None:
                    rows.append(B.Row("float", "fp32 reference", float_accuracy=ref))
                sep = ";" if args.rows and ";" in args.rows else ","  # ';' when labels hold commas
                chosen = exp.rows if not args.rows else [r for want in args.rows.split(sep) for r in exp.rows
                                                           if r[0] == want.strip()]
                if args.rows and not chosen:
                    raise B.BenchError(f"--rows matched no row of {name}; labels: {'; '.join(r[0] for r in exp.rows)}"
                                       " (separate labels that contain commas with ';')")
                for label, ov in chosen:
                    print(f"== {name} {bm.name} {label} ...", flush=True)
                    ov = ov if ov.get("method") == "rtn" else {**sets, **ov}  # a row's own options win
                    if args.num_calib is None and "num_calib" not in ov:
                        ov = {**ov, "num_calib": default_samples(ov)}  # as many as quantize takes by default
                    try:
                        row = run_row(bm, calib, eval_ds, float_out, label, ov, work)
                    except Exception as e:  # noqa: BLE001 - a failed row is reported, the run goes on
                        traceback.print_exc()
                        row = B.Row("onnxptq", label, error=f"{type(e).__name__}: {str(e)[:160]}")
                        failed.append(f"{name} {bm.name} {label}")
                    if not row.error:
                        print(f"   SQNR {row.fid.sqnr_db:.2f} dB (sim {row.unfused_sqnr_db:.2f}), "
                              f"{row.quant_s:.0f} s", flush=True)
                    rows.append(row)
                    payload.setdefault(name, {})[bm.name] = [r.to_dict() for r in rows]
                    write(rows, bm, note)
                parts += [f"### {bm.name}", "", note, "", table(rows, eval_ds.labels is not None), ""]
                if "mixed" in name and args.out:
                    png = pareto_plot(rows, f"{bm.name}: fidelity vs weight size",
                                      Path(args.out).parent / "img" / f"{name}-{bm.name}.png")
                    if png is not None:
                        parts += [f"![{name} {bm.name}](img/{png.name})", ""]
            write()
            print(f"\nwrote section recon-{name}" + (f" of {args.out}" if args.out else ""), flush=True)
    finally:
        if ctx:
            ctx.cleanup()
    if failed:
        print("failed rows:\n  " + "\n  ".join(failed))
    return 1 if failed else 0


def add_parser(sub) -> None:
    r = sub.add_parser("recon", help="reconstruction (AdaRound / BRECQ / QDrop) benchmarks of issue 4")
    r.add_argument("--experiments", default="all", help=f"comma-separated, or all: {', '.join(EXPERIMENTS)}")
    r.add_argument("--num-calib", type=B._positive, default=None, help="calibration samples (default 256)")
    r.add_argument("--num-eval", type=B._positive, default=None,
                   help="evaluation samples (default: digits all 447, EfficientNet 512)")
    r.add_argument("--only", default=None, help="comma-separated model names (default: every model of the group)")
    r.add_argument("--rows", default=None, help="row labels to run, in this order, separated by commas, or by ';' "
                                               "when a label holds commas (default: all)")
    r.add_argument("--set", nargs="*", default=[], help="QuantConfig overrides for the learned rows, e.g. iters=200")
    B.add_common(r)
    r.set_defaults(func=cmd_recon)
