"""Reconstruction presets: sample count, batch, iterations, learning rates and regularizer weight of a
schedule (``--preset``); the rationale of each value is in ``recon/settings.py``'s docstring."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    samples: int
    batch_size: int
    iters: int
    act_iters: int
    lr: float
    act_lr: float
    round_lambda: float
    lp_alpha: float = 0.1  # RAPQ Eq. 19 (quick mode's 0.1 for short schedules)
    crop: float = 1.0  # side of each step's spatial crop, share of the region input's (recon/crops.py)
    w_scale_lr: float = 0.0  # weight step gains learned with the rounding (recon/weight_gain.py; 0: off)
    # learn activation steps only where activations have fewer bits than this; at or above it the step
    # iterations go to the rounding instead (0: always learn them)
    steps_below_bits: int = 0


PRESETS = {
    "full": Preset(samples=1024, batch_size=32, iters=20000, act_iters=5000, lr=1e-3, act_lr=4e-5, round_lambda=0.01,
                   lp_alpha=0.9),
    "fast": Preset(samples=1024, batch_size=8, iters=400, act_iters=100, lr=3e-2, act_lr=1e-3, round_lambda=1.0,
                   crop=0.5, w_scale_lr=1e-3, steps_below_bits=8),
    # RAPQ Sec. 5: 1024 images, 80k weight and 5k activation iterations, alpha 0.9; quick mode (Sec. 5.4):
    # 20k / 1k iterations, alpha 0.1 (batch, learning rates and lambda as BRECQ's code, which RAPQ builds on)
    "rapq": Preset(samples=1024, batch_size=32, iters=80000, act_iters=5000, lr=1e-3, act_lr=4e-5, round_lambda=0.01,
                   lp_alpha=0.9),
    "rapq-quick": Preset(samples=1024, batch_size=32, iters=20000, act_iters=1000, lr=1e-3, act_lr=4e-5,
                         round_lambda=0.01, lp_alpha=0.1),
}
