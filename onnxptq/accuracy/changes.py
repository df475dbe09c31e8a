"""One layer's change, applied to a copy of a ``QuantState``; the other layers keep their (reconstructed) state.

- ``bits``: the layer's input quant point moves to an 8-bit grid over the same range (``refine_grid``: every old
  level stays a level, a Po2 scale stays Po2; ECAQ points and points already at >= 8 bits are kept), and its
  weights become round-to-nearest at 8 bits (the target's cap, e.g. 7 for onnxruntime-avx2) at a fresh L_p
  scale, with their bias correction measured again;
- ``float``: the input as for ``bits``; the weights and bias stay float (what ``--skip-nodes`` leaves of a layer:
  no weight quantizer; the exporter writes the float initializers).

The ``bits`` stage also tries the activation quant points that feed no layer directly (a residual Add's output,
a convolution's output before that Add, a Concat): ``change_point`` moves one to 8 bits over the same range. At
4-bit activations those carry most of the error (digits ResNet, BRECQ W4A4: raising every layer with its input
still missed what raising the other points brought), and no layer change reaches them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..calib.calibrate import layer_weight_params, threads
from ..config import QuantConfig
from ..quant import QParams, weight_grid
from ..quant.grid import Grid
from ..sim.model import SimModel
from ..sim.state import QuantState

RAISED_BITS = 8


def refine_grid(p: QParams, bits: int) -> QParams:
    """``p`` on a ``bits``-bit grid covering the same range: scale / 2^k and zero point * 2^k, k = bits - p's bits
    (unchanged when ``p`` has at least ``bits`` bits)."""
    if p.grid.bits >= bits:
        return p
    f = 1 << (bits - p.grid.bits)
    return QParams(Grid(bits, p.grid.signed), p.scale / np.float32(f), p.zero_point * f, p.axis, p.po2)


@dataclass(frozen=True)
class LayerBits:
    """Weight bits (None: float) and input bits (None: no quant point) of one layer in a state."""

    w_bits: int | None
    in_bits: int | None


def layer_bits(state: QuantState, sim: SimModel, name: str) -> LayerBits:
    layer = sim.qg.layer(name)
    wp = state.weight_params.get(name)
    ap = state.act_params.get(sim.qg.source.get(layer.input, ""))
    return LayerBits(None if wp is None else wp.grid.bits, None if ap is None else ap.grid.bits)


def can_change(state: QuantState, sim: SimModel, name: str, action: str, w_bits: int = RAISED_BITS) -> bool:
    """Whether ``action`` changes anything for layer ``name``."""
    b = layer_bits(state, sim, name)
    src = sim.qg.source.get(sim.qg.layer(name).input, "")
    raises_input = b.in_bits is not None and b.in_bits < RAISED_BITS and src not in state.ecaq_scales
    if action == "float":
        return b.w_bits is not None or raises_input
    return (b.w_bits is not None and b.w_bits < w_bits) or raises_input


def change_layer(state: QuantState, sim: SimModel, name: str, action: str, cfg: QuantConfig,
                 w_bits: int = RAISED_BITS) -> QuantState:
    """A copy of ``state`` with layer ``name`` changed by ``action`` (module doc); it shares the unchanged
    entries' tensors with ``state`` (``QuantState.copy``)."""
    if action not in ("bits", "float"):
        raise ValueError(f"unknown action {action!r}; bits or float")
    layer = sim.qg.layer(name)
    out = state.copy()
    src = sim.qg.source.get(layer.input)
    if src in out.act_params and src not in out.ecaq_scales:
        out.act_params[src] = refine_grid(out.act_params[src], RAISED_BITS)
    old = out.weight_params.get(name)
    if old is None or (action == "bits" and old.grid.bits >= w_bits):
        return out  # weights already float or wide enough: only the input changes
    out.weight_overrides.pop(layer.weight, None)  # learned on-grid weights: back to the float ones
    out.bias_delta.pop(name, None)
    if action == "float":
        out.weight_params.pop(name)
        return out
    out.weight_params[name] = _rtn_weights(out, sim, name, cfg, w_bits)
    return out


@torch.no_grad()
def _rtn_weights(state: QuantState, sim: SimModel, name: str, cfg: QuantConfig, bits: int) -> QParams:
    """Round-to-nearest weight parameters of layer ``name`` at ``bits`` on its float weights
    (``calibrate.layer_weight_params``, as RTN calibration); writes the layer's bias correction into ``state``
    (when the run corrects biases) and keeps its int32 bias in range."""
    layer = sim.qg.layer(name)
    mean = state.input_means.get(name) if cfg.bias_correction else None
    bias = sim.float_weight(layer.bias) if layer.bias else None
    s_x = 1.0
    if layer.bias and sim.qg.source[layer.input] not in state.ecaq_scales:
        s_x = float(state.act_params[sim.qg.source[layer.input]].scale)
    with threads(1):
        p, delta = layer_weight_params(layer, sim.float_weight(layer.weight), bias, weight_grid(bits), cfg, s_x,
                                       None if mean is None else mean.cpu())
    if delta is not None:
        state.bias_delta[name] = delta
    return p


def other_points(state: QuantState, sim: SimModel) -> list[str]:
    """Activation quant points below RAISED_BITS that no layer's input comes from (in node order), ECAQ ones
    excluded: the ``bits`` stage's candidates besides the layers."""
    inputs = {sim.qg.source.get(x.input) for x in sim.qg.layers}
    return [t for t in sim.qg.quant_points if t in state.act_params and t not in inputs
            and t not in state.ecaq_scales and state.act_params[t].grid.bits < RAISED_BITS]


def point_bits(state: QuantState, tensor: str) -> int | None:
    p = state.act_params.get(tensor)
    return None if p is None else p.grid.bits


def change_point(state: QuantState, tensor: str) -> QuantState:
    """A copy of ``state`` with activation quant point ``tensor`` on an 8-bit grid over the same range."""
    out = state.copy()
    out.act_params[tensor] = refine_grid(out.act_params[tensor], RAISED_BITS)
    return out
