"""Bit widths per layer and per activation quant point (first/last-layer rule, DESIGN.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass

from .config import QuantConfig
from .quant.grid import Grid, weight_grid
from .targets import Target, get_target
from .graph.qgraph import QGraph


@dataclass
class BitPlan:
    w_bits: dict[str, int]  # layer name -> weight bits
    a_bits: dict[str, int]  # quant point tensor -> activation bits


def make_plan(qg: QGraph, cfg: QuantConfig) -> BitPlan:
    """Everything at cfg bits, except first/last layer weights and inputs and the network outputs, and the
    depthwise convs standalone BNs became (at least 8 bits)."""
    w = {layer.name: cfg.w_bits for layer in qg.layers}
    for name in qg.fold.bn_as_conv:  # one weight per channel (a BN's scale): 8 bits cost nothing
        if name in w:
            w[name] = max(w[name], 8)
    a = {t: cfg.a_bits for t in qg.quant_points}
    fl = cfg.first_last_bits
    if fl is not None and qg.layers:
        for layer in (qg.layers[0], qg.layers[-1]):
            w[layer.name] = fl
            a[qg.source[layer.input]] = fl
        for o in qg.outputs:
            if o in a:
                a[o] = fl
    return BitPlan(w, a)


def cap_weight_bits(plan: BitPlan, target: Target) -> None:
    """Cap every layer's weight bits at the target's (``reduce_range``: 8 -> 7), after mixed precision."""
    plan.w_bits.update({k: target.weight_bits(b) for k, b in plan.w_bits.items()})


def weight_grid_for(cfg: QuantConfig, bits: int) -> Grid:
    """The integer grid of a layer's weights at ``bits`` (already capped by ``cap_weight_bits``) on ``cfg``'s
    target: its full-range grid [-2^(b-1), 2^(b-1)] for symmetric weights at the target's cap
    (``onnxruntime-avx2``: onnxruntime's reduce-range [-64, 64]), else the b-bit grid. Asymmetric weights keep
    the b-bit grid: centred on their zero point they must still fit int8."""
    target = get_target(cfg.target)
    full = target.weight_full_range and cfg.w_symmetric and bits == target.weight_max_bits
    return weight_grid(bits, full_range=full)
