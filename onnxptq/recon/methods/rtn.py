"""Round-to-nearest: calibration only (calib/calibrate.py); the rounding baselines and ECAQ apply here."""
from ...errors import ConfigError
from .base import Method


def _no_rounding_without_rtn(cfg) -> None:
    if cfg.rounding != "nearest" and cfg.method != "rtn":
        raise ConfigError(f"--rounding {cfg.rounding} is a round-to-nearest baseline: use it with --method rtn "
                          f"(--method {cfg.method} learns its own rounding)")


def _ecaq_methods(cfg) -> None:
    if cfg.ecaq and cfg.method not in ("rtn", "bitsplit"):
        raise ConfigError(f"--ecaq works with --method rtn or bitsplit (Bit-Split Algorithm 1); --method "
                          f"{cfg.method} learns per-layer activation steps")


def _log_grid_only_bitsplit(cfg) -> None:
    if cfg.method != "bitsplit" and cfg.weight_grid != "uniform":
        raise ConfigError("--weight-grid log is solved by Bit-Split's coordinate descent: add --method bitsplit")


# checks every method runs: options of rtn / bitsplit that other methods reject with a pointed message
SHARED_CHECKS = (_no_rounding_without_rtn, _ecaq_methods, _log_grid_only_bitsplit)

METHOD = Method("rtn", frozenset({"rounding", "ecaq"}), SHARED_CHECKS, default_loss=None, preset_samples=False,
                runner=None)
