"""Parity of the torch simulation with onnxruntime running the exported QDQ model (DESIGN.md section 7).

Level 2 (QDQ in onnxruntime): with Po2 scales and the exporter's exact containers the quantized
outputs agree bit for bit; with float scales near-ties may flip, so the report gives the exact-match
rate, the |delta| histogram in LSB of the output scale and the maximum |delta|.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .eval import run_onnxruntime
from .sim.model import SimModel


@dataclass
class ParityReport:
    tensor: str
    samples: int
    elements: int
    exact_rate: float
    max_lsb: float
    histogram: dict[int, int] = field(default_factory=dict)  # |delta| in LSB -> count

    @property
    def bit_exact(self) -> bool:
        return self.max_lsb == 0

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "samples": self.samples, "elements": self.elements,
                "exact_rate": self.exact_rate, "max_lsb": self.max_lsb, "bit_exact": self.bit_exact,
                "histogram": self.histogram}


def qdq_output_parity(sim: SimModel, model, inputs: dict[str, np.ndarray], batch_size: int = 32) -> ParityReport:
    """Compare the simulation's first output with onnxruntime's on the exported QDQ ``model``."""
    from .api import simulate

    out = sim.qg.outputs[0]
    ort_out = run_onnxruntime(model, inputs, batch_size)
    sim_out = simulate(sim, inputs, batch_size)
    fq = sim.act_quantizer(out) if out in sim.qg.quant_points else None
    scale = float(fq.params.scale) if fq is not None and fq.params is not None else 1.0
    delta = np.rint(np.abs(ort_out.astype(np.float64) - sim_out.astype(np.float64)) / scale).astype(np.int64)
    values, counts = np.unique(delta, return_counts=True)
    return ParityReport(out, len(sim_out), int(delta.size), float(np.mean(delta == 0)), float(delta.max()),
                        {int(v): int(c) for v, c in zip(values, counts)})
