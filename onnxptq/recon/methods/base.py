"""The interface of a quantization method: what it reads from ``QuantConfig`` and what it checks.

A method is data (``Method``): its name, ``options`` (the ``QuantConfig`` fields it reads beyond the
common ones: bits, scales, format, data, seed, memory), its own ``checks`` (each raises ``ConfigError``),
the loss and calibration-sample defaults it resolves, and its preset departures. The registry in
``recon/methods/__init__.py`` holds one per ``--method``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ...config import QuantConfig

Check = Callable[[QuantConfig], None]

# what every reconstruction method (one engine, recon/engine.py) reads
RECON_OPTIONS = frozenset({
    "loss", "preset", "iters", "act_iters", "recon_batch_size", "lr", "act_lr", "round_lambda", "fisher_damping",
    "lp_alpha", "lp_beta", "recon_guard", "checkpoint_dir", "resume", "granularity", "w_scale_lr",
})
RTN_SAMPLES = 256  # calibration samples of a method without a preset budget


@dataclass(frozen=True)
class Method:
    name: str
    options: frozenset[str]  # QuantConfig fields read beyond the common ones
    checks: tuple[Check, ...] = ()  # method-specific validation, each raising ConfigError
    default_loss: str | None = "mse"  # None: the method has no reconstruction loss
    preset_samples: bool = True  # num_calib defaults to the preset's samples (else RTN_SAMPLES)
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    # preset name -> overrides of recon/presets.py Preset fields (the method's own paper settings)
    # the recipe the runner follows (recon/engine.py and recon/run.py never name a method):
    runner: str | None = "regions"  # regions (recon/engine.py) | layers (recon/bitsplit_layers.py) | None (RTN only)
    rounding: str = "soft-offset"  # the learned rounding (recon/roundings.py ROUNDINGS)
    learn_steps: str = "after"  # activation steps (LSQ): none | after the rounding | joint with it
    acts_during_rounding: bool = False  # activation quantizers on while the rounding is learned
    layerwise: bool = False  # regions are single layers whatever --granularity says
    scale_group: float = 0.0  # fraction of the rounding iterations first spent on a Po2 scale group (RAPQ Eq. 11-12)

    def validate(self, cfg: QuantConfig) -> None:
        """Run the method's own checks on ``cfg`` (raises ``ConfigError``)."""
        for check in self.checks:
            check(cfg)

    def default_samples(self, preset: str) -> int:
        """Calibration samples when ``num_calib`` is None: the preset's for a reconstruction method."""
        if not self.preset_samples:
            return RTN_SAMPLES
        from ..presets import PRESETS
        return PRESETS[preset].samples
