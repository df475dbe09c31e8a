"""QuantState: everything quantization decided about a model, kept apart from the imported float graph.

The QGraph never changes after import; a ``SimModel`` runs it with the state in ``sim.state``:
- ``weight_params`` / ``act_params``: grid, scale and zero point per layer (per output channel) and per
  activation quant point; the quantizers read and write them here (``FakeQuant.bind``);
- ``float_weights``: weights of the float model that differ from the imported graph without changing
  what it computes: W_beta[:, c] = beta[c] W[:, c] of ECAQ (Bit-Split Eq. 26), whose input is x / beta;
  the float references of calibration and reconstruction use them (``SimModel.float_weight``);
- ``weight_overrides``: the weights the simulation runs where they differ from its float weights (on-grid
  weights of learned rounding, Bit-Split or non-nearest RTN rounding). In a running simulation these are
  its parameters ``sim.weights``; ``SimModel.export_state`` lists the ones that differ;
- ``bias_delta``: per-layer bias correction E[(W_q - W) x] (Nagel et al. 2019, Eq. 13), subtracted from
  the float bias when the weights are quantized;
- ``ecaq_scales``: per-channel activation scales beta of ECAQ quant points (Bit-Split Eq. 23-24);
- ``input_means``: per-input-channel float mean of every layer's input on the calibration data (what
  bias correction is computed from).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..quant import QParams


@dataclass
class QuantState:
    weight_params: dict[str, QParams] = field(default_factory=dict)  # layer -> weight QParams
    act_params: dict[str, QParams] = field(default_factory=dict)  # quant point -> activation QParams
    float_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # weight initializer -> float weights
    weight_overrides: dict[str, torch.Tensor] = field(default_factory=dict)  # weight initializer -> weights
    bias_delta: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> bias correction
    ecaq_scales: dict[str, np.ndarray] = field(default_factory=dict)  # ECAQ quant point -> beta per channel
    input_means: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> float input mean per channel

    def copy(self) -> "QuantState":
        """A copy with its own dicts that shares the tensors and arrays: for a variant that replaces entries and
        never changes a tensor in place (many variants of one state cost no memory beyond what they replace)."""
        return QuantState(dict(self.weight_params), dict(self.act_params), dict(self.float_weights),
                          dict(self.weight_overrides), dict(self.bias_delta), dict(self.ecaq_scales),
                          dict(self.input_means))

    def detached(self) -> "QuantState":
        """A copy that shares nothing with this state: tensors cloned to the CPU, arrays copied (QParams
        are replaced, never changed in place, so they are shared)."""
        def tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu().clone() for k, v in d.items()}

        return QuantState(dict(self.weight_params), dict(self.act_params), tensors(self.float_weights),
                          tensors(self.weight_overrides),
                          tensors(self.bias_delta), {k: np.array(v) for k, v in self.ecaq_scales.items()},
                          tensors(self.input_means))
