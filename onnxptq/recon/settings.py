"""Reconstruction settings: the method's recipe and the preset's budget, with config overrides applied.

Methods (one engine, DESIGN.md section 6):
- ``adaround``: layer-wise AdaRound (Nagel et al. 2020): rounding learned per layer with the
  activations quantized at their calibrated scales; no step-size learning.
- ``brecq``: BRECQ (Algorithm 1): per region (default block) the rounding is learned with the
  region's activations in float, then hard-rounded; then the region's activation step sizes are
  learned with LSQ (Eq. 29) with activations quantized ("after the weights").
- ``qdrop``: BRECQ with QDrop: rounding and step sizes learned jointly with activations quantized,
  each activation (and the region input) kept in float with probability ``drop_prob``.

Presets (every value overridable by the matching ``QuantConfig`` field):
- ``full``: the papers' settings (BRECQ B.4.4): 1024 samples, batch 32, 20k rounding iterations per
  region, 5k step-size iterations, Adam lr 1e-3 (rounding) and 4e-5 (steps).
- ``fast``: for a 2-core CPU, chosen by measurement (docs/benchmarks.md, ``recon`` sections). With
  ~1% of the paper's iterations, Adam at lr 1e-3 (or 1e-2) cannot move the rounding variables V far enough to
  decide them (|V| ~ 2.4 is needed for h(V) to reach 0 or 1), and with lambda 0.01 the reconstruction
  term keeps most offsets near 0.5, so the hard rounding at the end lands far from the soft optimum
  (EfficientNet-Lite0 W4A8: 75% undecided, region losses 3x the RTN one). lr 3e-2 with lambda 1.0
  decides >95% of them in 200 iterations.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import QuantConfig


@dataclass(frozen=True)
class Preset:
    samples: int
    batch_size: int
    iters: int
    act_iters: int
    lr: float
    act_lr: float
    round_lambda: float


PRESETS = {
    "full": Preset(samples=1024, batch_size=32, iters=20000, act_iters=5000, lr=1e-3, act_lr=4e-5, round_lambda=0.01),
    "fast": Preset(samples=256, batch_size=16, iters=200, act_iters=100, lr=3e-2, act_lr=1e-3, round_lambda=1.0),
}


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

    @property
    def phases(self) -> list[tuple[str, int]]:
        """(phase, iterations) run for every region."""
        if self.learn_steps == "joint":
            return [("joint", self.iters)]
        out = [("rounding", self.iters)] if self.iters > 0 else []
        if self.learn_steps == "after" and self.act_iters > 0:
            out.append(("steps", self.act_iters))
        return out


def resolve(cfg: QuantConfig) -> ReconSettings:
    """The settings of ``cfg.method`` under ``cfg.preset``, with the config's explicit overrides."""
    p = PRESETS[cfg.preset]
    method = cfg.method
    return ReconSettings(
        method=method,
        granularity="layer" if method == "adaround" else cfg.granularity,
        loss=cfg.loss,
        batch_size=p.batch_size if cfg.recon_batch_size is None else cfg.recon_batch_size,
        iters=p.iters if cfg.iters is None else cfg.iters,
        act_iters=p.act_iters if cfg.act_iters is None else cfg.act_iters,
        lr=p.lr if cfg.lr is None else cfg.lr,
        act_lr=p.act_lr if cfg.act_lr is None else cfg.act_lr,
        round_lambda=p.round_lambda if cfg.round_lambda is None else cfg.round_lambda,
        warmup=0.2,
        beta=(20.0, 2.0),
        drop_prob=cfg.drop_prob if method == "qdrop" else 0.0,
        acts_during_rounding=method != "brecq",
        learn_steps={"adaround": "none", "brecq": "after", "qdrop": "joint"}[method],
        fisher_damping=cfg.fisher_damping,
        seed=cfg.seed,
    )
