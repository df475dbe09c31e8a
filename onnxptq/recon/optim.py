"""Adam (Kingma & Ba 2015) for the few parameter groups of a region.

The same update as ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8, bias-corrected moments with a step count per
parameter, no weight decay). A local implementation because constructing ``torch.optim`` optimizers imports
``torch._dynamo`` (several seconds per process on a small CPU), which dominated short runs and tests. Each group
is updated by torch's fused Adam kernel (``torch._fused_adam_``: one pass over each tensor instead of eight
elementwise ops) where this torch build has it for the parameters' device, else by the same update op by op.
"""
from __future__ import annotations

import torch


def _fused_kernel_for(device: torch.device) -> bool:
    """Whether ``torch._fused_adam_`` runs on ``device`` in this torch build (CPU and CUDA in current ones)."""
    return hasattr(torch, "_fused_adam_") and device.type in ("cpu", "cuda")


class Adam:
    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None) -> None:
        """``fused``: use torch's fused kernel (None: where available)."""
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in groups]
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.fused = fused
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # id -> (m, v, step)

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    def _state(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        st = self.state.get(id(p))
        if st is None:
            st = self.state[id(p)] = (torch.zeros_like(p), torch.zeros_like(p),
                                      torch.zeros((), dtype=torch.float32, device=p.device))
        return st

    @torch.no_grad()
    def step(self) -> None:
        for g in self.groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            ms, vs, steps = zip(*(self._state(p) for p in ps))
            fused = self.fused if self.fused is not None else _fused_kernel_for(ps[0].device)
            if fused and len({(p.device, p.dtype) for p in ps}) == 1:
                for s in steps:
                    s.add_(1.0)
                torch._fused_adam_(ps, [p.grad for p in ps], list(ms), list(vs), [], list(steps), lr=g["lr"],
                                   beta1=self.b1, beta2=self.b2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                                   maximize=False)
                continue
            for p, m, v, s in zip(ps, ms, vs, steps):
                s.add_(1.0)
                t = float(s)
                c1, c2 = 1.0 - self.b1 ** t, 1.0 - self.b2 ** t
                m.mul_(self.b1).add_(p.grad, alpha=1.0 - self.b1)
                v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1.0 - self.b2)
                denom = v.sqrt().div_(c2 ** 0.5).add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] / c1)
