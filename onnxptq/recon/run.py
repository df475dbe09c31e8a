"""``run_method``: the runner a method declares (``Method.runner``), called the same way for every method.

``regions``: block reconstruction (recon/engine.py; BRECQ Algorithm 1 and the methods built on it);
``layers``: Bit-Split's closed-form per-layer solver (recon/bitsplit_layers.py); ``None``: calibration only.
"""
from __future__ import annotations

from ..config import QuantConfig
from ..data import Dataset
from ..plan import BitPlan
from ..run_context import RunContext
from ..sim.model import SimModel
from .methods import get_method
from .results import ReconReport


def run_method(sim: SimModel, data: Dataset, plan: BitPlan, cfg: QuantConfig, checkpoint_dir: str | None,
               ctx: RunContext) -> ReconReport | None:
    """Run ``cfg.method``'s runner on the calibrated ``sim``; None for a method that only calibrates."""
    runner = get_method(cfg.method).runner
    if runner is None:
        return None
    if runner == "layers":
        from .bitsplit_layers import bitsplit_layers

        return bitsplit_layers(sim, data, cfg, ctx.diagnostics, checkpoint_dir)
    from .engine import reconstruct

    return reconstruct(sim, data, plan, cfg, checkpoint_dir, ctx=ctx)
