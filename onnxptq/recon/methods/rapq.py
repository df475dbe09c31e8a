"""RAPQ (Yao et al. 2022, Algorithm 1): Po2 scale group (Eq. 11-12), BRECQ rounding, L-P loss (Eq. 17-19)."""
from ...errors import ConfigError
from .base import RECON_OPTIONS, Method
from .rtn import SHARED_CHECKS


def _needs_po2(cfg) -> None:
    if cfg.scale != "po2":
        raise ConfigError("--method rapq learns power-of-two scales: add --scale po2 (float scales: --method brecq)")


# float-step gains (--w-scale-lr) would leave the Po2 scale group's exponents
METHOD = Method("rapq", RECON_OPTIONS - {"w_scale_lr"}, SHARED_CHECKS + (_needs_po2,), default_loss="lp",
                scale_group=0.2)
