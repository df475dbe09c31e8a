"""TEMPORARY (replaced by the method plug-ins when the recon branch merges): the method checks that
config.py used to run, behind the interface settings.resolve calls."""
from __future__ import annotations

from ...config import QuantConfig
from ...errors import ConfigError

METHODS = ("rtn", "adaround", "brecq", "qdrop", "rapq", "attention", "bitsplit")


def method_defaults(cfg: QuantConfig) -> dict:
    from ..settings import PRESETS

    out = {}
    if cfg.loss is None:
        out["loss"] = "lp" if cfg.method == "rapq" else "mse"
    if cfg.num_calib is None:
        out["num_calib"] = 256 if cfg.method == "rtn" else PRESETS[cfg.preset].samples
    return out


def check_options(cfg: QuantConfig) -> None:
    from ..losses import LOSSES

    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    if cfg.loss is not None and cfg.loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}; got {cfg.loss!r}")
    if cfg.method == "rapq" and cfg.scale != "po2":
        raise ConfigError("--method rapq learns power-of-two scales: add --scale po2 (float scales: --method brecq)")
    if cfg.rounding != "nearest" and cfg.method != "rtn":
        raise ConfigError(f"--rounding {cfg.rounding} is a round-to-nearest baseline: use it with --method rtn "
                          f"(--method {cfg.method} learns its own rounding)")
    if cfg.method == "bitsplit":
        if cfg.scale != "float":
            raise ConfigError("--method bitsplit solves a float scale per channel (Eq. 14): use --scale float")
        if cfg.weight_grid == "uniform" and cfg.w_bits < 3:
            raise ConfigError("Bit-Split needs w_bits >= 3 (Eq. 13 splits into w_bits-1 ternary planes); "
                              "2-bit: --weight-grid log or another method")
        if cfg.weight_grid == "log" and cfg.w_bits > 4:
            raise ConfigError(f"logarithmic weights (Bit-Split Sec. 3.3.2) support 2-4 bits; got w_bits={cfg.w_bits}")
    if cfg.ecaq and cfg.method not in ("rtn", "bitsplit"):
        raise ConfigError(f"--ecaq works with --method rtn or bitsplit (Bit-Split Algorithm 1); --method "
                          f"{cfg.method} learns per-layer activation steps")
    if cfg.method != "bitsplit" and cfg.weight_grid != "uniform":
        raise ConfigError("--weight-grid log is solved by Bit-Split's coordinate descent: add --method bitsplit")
