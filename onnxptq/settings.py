"""``resolve``: a QuantConfig as the run will use it, decided once before any stage runs.

A user's QuantConfig leaves some options to be decided (``None``: the method's loss, the preset's sample
count, the target's integer kernels) and some follow from others (a target whose Q/DQ carry zero points of 0
needs symmetric activation grids). ``resolve`` fills them in, runs the checks that span stages (the method's
own checks and unused options: ``recon.methods.check_options``; the target's: below) and returns a new frozen
QuantConfig; the stages read only that. It is idempotent.
"""
from __future__ import annotations

from dataclasses import replace

from .config import QuantConfig
from .errors import ConfigError
from .recon.methods import check_options, method_defaults
from .targets import get_target


def resolve(cfg: QuantConfig) -> QuantConfig:
    """``cfg`` with every option decided; ConfigError names what conflicts and what to do."""
    check_options(cfg)
    t = get_target(cfg.target)
    changes = dict(method_defaults(cfg))
    if t.symmetric_activations:
        if cfg.format == "int":
            raise ConfigError(f"--target {t.name} takes QDQ files (--format qdq); --format int is for runtimes "
                              "that run standard integer ONNX ops")
        changes["a_symmetric"] = True  # the target's Q/DQ have zero point 0 (TensorRT: int8 only)
    if cfg.int_kernels is None:
        changes["int_kernels"] = "vnni" if cfg.format == "int" and t.exact_u8s8 else "portable"
    if cfg.device != "cpu":
        import torch

        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device!r} requested but torch sees no CUDA device; use --device cpu")
    return replace(cfg, **changes) if changes else cfg
