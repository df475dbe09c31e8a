"""Reconstruction checkpoints: the quantizer state after each finished region.

A checkpoint holds everything reconstruction changes in the simulation: the weights of the
reconstructed layers (already on their grid), every weight and activation quantizer's scale and
zero point, the bias corrections, and the per-region report. It is tied to a fingerprint of the
model, the calibration data and the options that change results; resuming with anything else is
refused. Written atomically (temporary file + rename) after every region.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path

from ..config import QuantConfig
from ..errors import ConfigError
from ..quant import QParams
from ..sim.model import SimModel

FILE = "recon_state.pt"
VERSION = 1
# options that do not change the result of a run
NEUTRAL = {"progress", "resume", "checkpoint_dir", "cache_budget_mb", "cache_dir", "device", "format", "opset",
           "int_rounding", "max_memory_mb"}


def fingerprint(sim: SimModel, inputs: dict[str, np.ndarray], cfg: QuantConfig) -> str:
    h = hashlib.sha256()
    h.update(sim.qg.model.SerializeToString())
    for k in sorted(inputs):
        h.update(k.encode())
        h.update(np.ascontiguousarray(inputs[k]).tobytes())
    opts = {k: v for k, v in cfg.to_dict().items() if k not in NEUTRAL}
    h.update(json.dumps(opts, sort_keys=True, default=str).encode())
    # the calibrated bit widths: an accuracy target that raises layers before reconstructing again
    # (accuracy/rounds.py) runs with the same options, and must not resume the previous round's checkpoint
    bits = {f"w:{x.name}": _bits(sim.weight_quantizer(x.name).params) for x in sim.qg.layers}
    bits.update({f"a:{t}": _bits(fq.params) for t, fq in sim.act_quantizers()})
    h.update(json.dumps(bits, sort_keys=True).encode())
    return h.hexdigest()


def _bits(p: QParams | None) -> int | None:
    return None if p is None else p.grid.bits


def _params(p: QParams) -> dict:
    return {"scale": p.scale.copy(), "zero_point": p.zero_point.copy(), "grid": p.grid}


def save(directory: str | os.PathLike, fp: str, done: int, sim: SimModel, layers_done: list[str],
         report: list[dict]) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {
        "version": VERSION, "fingerprint": fp, "done": done, "report": report,
        "weights": {name: sim.weight(sim.qg.layer(name).weight).detach().cpu().clone() for name in layers_done},
        "w_params": {layer.name: _params(sim.weight_quantizer(layer.name).params) for layer in sim.qg.layers},
        "a_params": {t: _params(fq.params) for t, fq in sim.act_quantizers() if fq.params is not None},
        "bias_delta": {k: v.detach().cpu().clone() for k, v in sim.bias_delta.items()},
    }
    path = d / FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load(directory: str | os.PathLike, fp: str) -> dict | None:
    """The saved state, or None when there is no checkpoint; refuses one from another run."""
    path = Path(directory) / FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise ConfigError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to start over") from None
    if state.get("version") != VERSION:
        raise ConfigError(f"{path}: checkpoint format {state.get('version')} is not {VERSION}; delete it to start over")
    if state["fingerprint"] != fp:
        raise ConfigError(f"{path} was written for another model, calibration data or options; "
                          "resume with the same ones, or use another --checkpoint-dir")
    return state


@torch.no_grad()
def restore(sim: SimModel, state: dict) -> list[str]:
    """Put a checkpoint's quantizer state into ``sim``; returns the reconstructed layer names."""
    for name, w in state["weights"].items():
        p = sim.weight(sim.qg.layer(name).weight)
        p.copy_(w.to(p.device))
    for layer in sim.qg.layers:
        fq = sim.weight_quantizer(layer.name)
        s = state["w_params"][layer.name]
        p = fq.params
        grid = s.get("grid", p.grid)  # Bit-Split's logarithmic weights change the grid itself
        fq.bits = grid.bits
        fq.set_params(QParams(grid, s["scale"], s["zero_point"], p.axis, p.po2), len(layer.weight_shape))
    for t, fq in sim.act_quantizers():
        s = state["a_params"].get(t)
        if s is not None and fq.params is not None:
            p = fq.params
            fq.set_params(QParams(p.grid, s["scale"], s["zero_point"], p.axis, p.po2))
    device = sim.device
    sim.bias_delta.clear()
    sim.bias_delta.update({k: v.to(device) for k, v in state["bias_delta"].items()})
    return list(state["weights"])
