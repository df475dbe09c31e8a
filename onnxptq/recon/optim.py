"""Adam (Kingma & Ba 2015) for the few parameter groups of a region.

The same update as ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8, bias-corrected moments, no
weight decay). A local implementation because constructing ``torch.optim`` optimizers imports
``torch._dynamo`` (several seconds per process on a small CPU), which dominated short runs and tests.
"""
from __future__ import annotations

import torch


class Adam:
    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in groups]
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.t = 0
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1.0 - self.b1 ** self.t
        c2 = 1.0 - self.b2 ** self.t
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state.get(id(p)) or (torch.zeros_like(p), torch.zeros_like(p))
                m.mul_(self.b1).add_(p.grad, alpha=1.0 - self.b1)
                v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1.0 - self.b2)
                self.state[id(p)] = (m, v)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] / c1)
