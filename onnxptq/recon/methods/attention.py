"""Attention Round (Sec. 3.3): BRECQ's schedule with each weight's rounding a learned perturbation (Eq. 3, 6).

No rounding regularizer (round_lambda is not read); the paper's settings (Sec. 4.1: Adam lr 4e-4, batch 64,
2k iterations per module) replace BRECQ's under the ``full`` preset; under ``fast`` the perturbations need a
larger step than AdaRound's V to move within 200 iterations.
"""
from types import MappingProxyType

from .base import RECON_OPTIONS, Method
from .rtn import SHARED_CHECKS


PRESETS = MappingProxyType({
    "full": MappingProxyType(dict(iters=2000, batch_size=64, lr=4e-4)),
    "fast": MappingProxyType(dict(lr=1e-2)),
})

METHOD = Method("attention", (RECON_OPTIONS - {"round_lambda"}) | {"attn_tau", "attn_tau_unit"},
                SHARED_CHECKS, presets=PRESETS, rounding="any-grid-point")
