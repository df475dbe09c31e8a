"""The registry of quantization methods (one module each) and the method checks of a ``QuantConfig``.

``check_options(cfg)``: the method's own checks, the loss name (single-field ranges are config.py's), and that
no option read only by other methods is set to a non-default value (``--iters`` with rtn, ``--loss`` with
bitsplit, ``--drop-prob`` with brecq): such an option would be silently ignored.
``method_defaults(cfg)``: the ``loss`` and ``num_calib`` the method resolves where the config leaves None.
Nothing here is read by ``config.py``; the resolver calls both after constructing the config.
"""
from __future__ import annotations

from dataclasses import fields

from ...config import QuantConfig, cli_flag
from ...errors import ConfigError
from . import adaround, attention, bitsplit, brecq, qdrop, rapq, rtn
from .base import Method

METHODS: dict[str, Method] = {
    "rtn": rtn.METHOD,
    "adaround": adaround.METHOD,
    "brecq": brecq.METHOD,
    "qdrop": qdrop.METHOD,
    "rapq": rapq.METHOD,
    "attention": attention.METHOD,
    "bitsplit": bitsplit.METHOD,
}

_DEFAULTS = {f.name: f.default for f in fields(QuantConfig)}
_FLAGS = {f.name: cli_flag(f) for f in fields(QuantConfig)}


def get_method(name: str) -> Method:
    """The registered method ``name`` (``ConfigError`` listing the methods otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {name!r}") from None



def check_options(cfg: QuantConfig) -> None:
    """Raise ``ConfigError`` if ``cfg`` sets an option its method does not read or fails a method check."""
    method = get_method(cfg.method)
    method.validate(cfg)
    foreign = set().union(*(m.options for m in METHODS.values())) - method.options
    stray = sorted(n for n in foreign if getattr(cfg, n) != _DEFAULTS[n])
    if stray:
        users = sorted({m.name for m in METHODS.values() if m.options & set(stray)})
        raise ConfigError(f"{', '.join(_FLAGS[n] for n in stray)} {'is' if len(stray) == 1 else 'are'} not read by "
                          f"--method {cfg.method} (used by --method {' / '.join(users)}): remove "
                          f"{'it' if len(stray) == 1 else 'them'} or choose one of those methods")
    if cfg.loss is not None:
        from ..losses import LOSSES
        if cfg.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}; got {cfg.loss!r}")


def options_for(method: str, options: dict) -> dict:
    """``options`` (QuantConfig fields) less those that only other methods read: for sweeps that share one
    schedule across methods (benchmarks, tests), where passing them would be an error."""
    foreign = set().union(*(m.options for m in METHODS.values())) - get_method(method).options
    return {k: v for k, v in options.items() if k not in foreign}


def method_defaults(cfg: QuantConfig) -> dict:
    """``loss`` and ``num_calib`` as the method resolves them, for those that ``cfg`` leaves None."""
    method = get_method(cfg.method)
    out = {}
    if cfg.loss is None and method.default_loss is not None:
        out["loss"] = method.default_loss
    if cfg.num_calib is None:
        out["num_calib"] = method.default_samples(cfg.preset)
    return out
