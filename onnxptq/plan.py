"""Bit widths per layer and per activation quant point (first/last-layer rule, DESIGN.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass

from .config import QuantConfig
from .targets import Target
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
