"""Reconstruction settings: the method's recipe and the preset's budget, with config overrides applied.

Methods (one engine, DESIGN.md section 6):
- ``adaround``: layer-wise AdaRound (Nagel et al. 2020): rounding learned per layer with the
  activations quantized at their calibrated scales; no step-size learning.
- ``brecq``: BRECQ (Algorithm 1): per region (default block) the rounding is learned with the
  region's activations in float, then hard-rounded; then the region's activation step sizes are
  learned with LSQ (Eq. 29) with activations quantized ("after the weights").
- ``qdrop``: BRECQ with QDrop: rounding and step sizes learned jointly with activations quantized,
  each activation (and the region input) kept in float with probability ``drop_prob``.
- ``rapq``: RAPQ (Algorithm 1): per region, first the Po2 scale group of the weights (Eq. 11-12; for
  the warm-up fraction of the rounding iterations, regularizer weight mu = 10 lambda), snapped to exact
  exponents; then BRECQ's rounding and (log2-domain, Eq. 16) Po2 activation steps; loss ``lp`` (Eq. 17-19).

- ``attention``: Attention Round (Sec. 3.3): like ``brecq``, but each weight's rounding is a learned
  perturbation alpha of w/s (any grid point, Eq. 3) trained through the erf surrogate of Eq. 6, with no
  rounding regularizer; the paper's own settings (Sec. 4.1: Adam lr 4e-4, batch 64, 2k iterations per
  module) replace BRECQ's under the ``full`` preset.

Presets (every value overridable by the matching ``QuantConfig`` field):
- ``full``: the papers' settings (BRECQ B.4.4): 1024 samples, batch 32, 20k rounding iterations per
  region, 5k step-size iterations, Adam lr 1e-3 (rounding) and 4e-5 (steps).
- ``fast``: for a 2-core CPU, chosen by measurement (docs/benchmarks.md, ``recon`` sections). With
  ~1% of the paper's iterations, Adam at lr 1e-3 (or 1e-2) cannot move the rounding variables V far enough to
  decide them (|V| ~ 2.4 is needed for h(V) to reach 0 or 1), and with lambda 0.01 the reconstruction
  term keeps most offsets near 0.5, so the hard rounding at the end lands far from the soft optimum
  (EfficientNet-Lite0 W4A8: 75% undecided, region losses 3x the RTN one). lr 3e-2 with lambda 1.0
  decides >95% of them in 200 iterations. More rounding iterations keep paying at W4A8 (EfficientNet-Lite0:
  +0.35-0.45 dB per 100 more, ``recon-effnet-fast-iters``) while the step time is set by the convolutions,
  so the preset spends its time on 400 iterations of minibatches of 8 rather than 200 of 16 (EfficientNet-Lite0
  W4A8 +0.47 dB, W4A4 +0.36 dB in 6-27 % more time). Each training step of a region of convolutions and
  pointwise ops whose input is at least 32 pixels on a side sees a crop of half the side (``recon/crops.py``): on
  EfficientNet-Lite0 and MobileNetV2-0.5, W4A8 and W4A4, this cut the time by 30-39 % at the same fidelity
  (docs/benchmarks.md ``recon-effnet-crop``). ``full`` trains on whole images, as the papers do. Each float weight
  step gets a per-channel gain learned with the rounding (``w_scale_lr`` 1e-3, ``recon/weight_gain.py``):
  EfficientNet-Lite0 +0.34 dB (W4A8) and +0.21 dB (W4A4), MobileNetV2-0.5 +2.7 and +2.0 dB, the digits CNNs at W4A4
  -0.3 to +0.2 dB, for 10-20 % more time (``recon-effnet-gain``, ``recon-digits-gain``). ``full`` keeps the papers'
  fixed steps. It uses up to 1024 calibration samples, as the papers do (fewer when fewer are given): the
  rounding steps cost the same on any number of samples, and on 256 the reconstruction fits them too closely.
  1024 instead of 256: EfficientNet-Lite0 W4A8 +0.81 dB, W4A4 +0.92 dB for 49-53 % more time
  (``recon-effnet-samples``), resnet18 W4A8 +1.83 dB, MobileNetV2-0.5 +0.10 dB (``recon-zoo-samples``).
  Where every activation has 8 bits and float scales, the 100 step-size iterations go to the rounding (500
  rounding iterations, no step phase): learning 8-bit steps moved W4A8 by +0.04 dB on EfficientNet-Lite0 and
  MobileNetV2-0.5 and by -0.63 dB on resnet18, while the 500 rounding iterations gained +0.19, +0.39 and +0.80 dB
  over 400 + 100 steps in about the same time (``recon-effnet-a8-steps``, ``recon-zoo-a8-steps``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import QuantConfig
from .methods import get_method
from .presets import PRESETS


@dataclass(frozen=True)
class ReconSettings:
    method: str
    granularity: str
    loss: str
    batch_size: int
    iters: int  # rounding (or joint, qdrop) iterations per region
    act_iters: int  # step-size iterations per region after the rounding (brecq)
    lr: float
    act_lr: float
    round_lambda: float
    warmup: float  # fraction of rounding iterations without the regularizer (beta schedule)
    beta: tuple[float, float]
    drop_prob: float  # QDrop probability of keeping a float activation (0: off)
    acts_during_rounding: bool  # activation quantizers of the region on while the rounding is learned
    learn_steps: str  # "none" | "after" | "joint"
    fisher_damping: float
    seed: int
    scale_group_iters: int = 0  # RAPQ: Po2 scale-group iterations per region before the rounding (0: none)
    group_lambda: float = 0.0  # mu of RAPQ Eq. 12
    lp_alpha: float = 0.1
    lp_beta: float = 1.0
    attn_tau: float = 0.5  # Attention Round tau and its unit (recon/attention_round.py)
    attn_tau_unit: str = "step"
    rounding: str = "soft-offset"  # the learned rounding (recon/roundings.py ROUNDINGS)
    crop: float = 1.0  # side of each step's spatial crop, share of the region input's (recon/crops.py)
    w_scale_lr: float = 0.0  # Adam lr of the weight step gains learned with the rounding (recon/weight_gain.py)

    @property
    def phases(self) -> list[tuple[str, int]]:
        """(phase, iterations) run for every region."""
        if self.learn_steps == "joint":
            return [("joint", self.iters)]
        out = [("scales", self.scale_group_iters)] if self.scale_group_iters > 0 else []
        out += [("rounding", self.iters)] if self.iters > 0 else []
        if self.learn_steps == "after" and self.act_iters > 0:
            out.append(("steps", self.act_iters))
        return out


def resolve(cfg: QuantConfig) -> ReconSettings:
    """The settings of ``cfg.method`` under ``cfg.preset``, with the config's explicit overrides."""
    m = get_method(cfg.method)
    # the method's departures from the preset (Attention Round's paper settings: recon/methods/attention.py)
    p = replace(PRESETS[cfg.preset], **m.presets.get(cfg.preset, {}))
    iters = p.iters if cfg.iters is None else cfg.iters
    act_iters = p.act_iters if cfg.act_iters is None else cfg.act_iters
    narrowest = min(cfg.a_bits, cfg.first_last_bits or cfg.a_bits)  # the first/last layers' inputs may differ
    if (cfg.act_iters is None and m.learn_steps == "after" and cfg.scale == "float"
            and 0 < p.steps_below_bits <= narrowest):
        # float steps of wide activations do not pay: the step phase's iterations go to the rounding (Po2 steps
        # move by factors of 2, so they keep their phase)
        iters, act_iters = iters + (act_iters if cfg.iters is None else 0), 0
    regularized = "round_lambda" in m.options  # Attention Round has no rounding regularizer
    round_lambda = 0.0 if not regularized else p.round_lambda if cfg.round_lambda is None else cfg.round_lambda
    return ReconSettings(
        method=m.name,
        granularity="layer" if m.layerwise else cfg.granularity,
        loss=cfg.loss,
        batch_size=p.batch_size if cfg.recon_batch_size is None else cfg.recon_batch_size,
        iters=iters,
        act_iters=act_iters,
        lr=p.lr if cfg.lr is None else cfg.lr,
        act_lr=p.act_lr if cfg.act_lr is None else cfg.act_lr,
        round_lambda=round_lambda,
        warmup=0.2,
        beta=(20.0, 2.0),
        drop_prob=cfg.drop_prob if "drop_prob" in m.options else 0.0,
        acts_during_rounding=m.acts_during_rounding,
        learn_steps=m.learn_steps,
        fisher_damping=cfg.fisher_damping,
        seed=cfg.seed,
        scale_group_iters=max(1, round(m.scale_group * iters)) if m.scale_group > 0 and iters > 0 else 0,
        group_lambda=10.0 * round_lambda,
        lp_alpha=p.lp_alpha if cfg.lp_alpha is None else cfg.lp_alpha,
        lp_beta=cfg.lp_beta,
        attn_tau=cfg.attn_tau,
        attn_tau_unit=cfg.attn_tau_unit,
        rounding=m.rounding,
        crop=p.crop if cfg.recon_crop is None else cfg.recon_crop,
        w_scale_lr=(p.w_scale_lr if cfg.w_scale_lr is None else cfg.w_scale_lr) if "w_scale_lr" in m.options else 0.0,
    )
