"""Bit-Split and Stitching (Wang et al. 2020): layer-wise ternary bit planes (Eq. 12-19), log grid (Sec. 3.3.2)."""
from ...errors import ConfigError
from .base import Method
from .rtn import SHARED_CHECKS


def _bitsplit_grid(cfg) -> None:
    if cfg.scale != "float":
        raise ConfigError("--method bitsplit solves a float scale per channel (Eq. 14): use --scale float")
    if cfg.weight_grid == "uniform" and cfg.w_bits < 3:
        raise ConfigError("Bit-Split needs w_bits >= 3 (Eq. 13 splits into w_bits-1 ternary planes); "
                          "2-bit: --weight-grid log or another method")
    if cfg.weight_grid == "log" and cfg.w_bits > 4:
        raise ConfigError("logarithmic weights (Bit-Split Sec. 3.3.2) support 2-4 bits; got "
                          f"w_bits={cfg.w_bits}")


# the preset only sets the calibration sample count (its iterations are bitsplit_iters)
METHOD = Method("bitsplit", frozenset({"preset", "ecaq", "weight_grid", "bitsplit_points", "bitsplit_iters",
                                           "checkpoint_dir", "resume"}),
                SHARED_CHECKS + (_bitsplit_grid,), default_loss=None, runner="layers")
