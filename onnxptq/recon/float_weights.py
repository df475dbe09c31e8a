"""Float-weight swapping: the model's original float weights put back into the simulation for a block of code
(reconstructed layers hold on-grid weights), for the float stream, the float logits and the report."""
from __future__ import annotations

import torch

from ..sim.model import SimModel


class FloatWeights:
    """Context: the model's float weights in the simulation (reconstructed layers hold on-grid weights),
    for the float stream and the float logits."""

    def __init__(self, sim: SimModel) -> None:
        self.sim = sim
        self.float = {x.weight: sim.float_weight(x.weight) for x in sim.qg.layers}
        self.saved: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __enter__(self) -> None:
        for name, w in self.float.items():
            p = self.sim.weight(name)
            if not torch.equal(p.detach().cpu(), w):
                self.saved[name] = p.detach().clone()
                p.copy_(w.to(p.device))

    @torch.no_grad()
    def __exit__(self, *exc) -> None:
        for name, w in self.saved.items():
            self.sim.weight(name).copy_(w)
        self.saved.clear()
