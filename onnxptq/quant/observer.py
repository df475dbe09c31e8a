"""Activation statistics over calibration batches: running min/max plus a seeded reservoir sample.

The sample (a bounded, uniformly drawn subset of all observed values) feeds the percentile and L_p
scale searches without keeping every activation in memory.
"""
from __future__ import annotations

import torch


class Observer:
    """Collects min, max and up to ``sample_size`` values of one activation tensor."""

    def __init__(self, sample_size: int = 1 << 16, seed: int = 0) -> None:
        self.sample_size = sample_size
        self.min = float("inf")
        self.max = float("-inf")
        self.count = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._chunks: list[torch.Tensor] = []
        self._kept = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1).float().cpu()
        if x.numel() == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.numel()
        # Keep a per-batch share proportional to its size, then thin the pool to the budget.
        take = min(x.numel(), self.sample_size)
        idx = torch.randint(0, x.numel(), (take,), generator=self._gen)
        self._chunks.append(x[idx])
        self._kept += take
        if self._kept > 2 * self.sample_size:
            pool = torch.cat(self._chunks)
            keep = torch.randperm(pool.numel(), generator=self._gen)[: self.sample_size]
            self._chunks, self._kept = [pool[keep]], self.sample_size

    @property
    def nonnegative(self) -> bool:
        return self.count > 0 and self.min >= 0.0

    def sample(self) -> torch.Tensor:
        """The kept values, with the exact extremes included so minmax-based searches see them."""
        if self.count == 0:
            raise ValueError("observer saw no data")
        pool = torch.cat(self._chunks) if self._chunks else torch.empty(0)
        return torch.cat([pool, torch.tensor([self.min, self.max])])
