"""Activation statistics over calibration batches: running min/max plus a seeded uniform sample.

The sample (at most ``sample_size`` values, uniform over everything observed) feeds the percentile
and L_p scale searches without keeping every activation in memory. It is a bottom-k sample: every
observed value (thinned at one fixed rate, so large and small batches count alike) gets a random key,
and the values with the ``sample_size`` smallest keys are kept.
"""
from __future__ import annotations

import torch

OVERSAMPLE = 4  # candidates drawn per kept value from the first batch, setting the thinning rate


class Observer:
    """Collects min, max and a uniform sample of at most ``sample_size`` values of one tensor."""

    def __init__(self, sample_size: int = 1 << 16, seed: int = 0) -> None:
        self.sample_size = sample_size
        self.min = float("inf")
        self.max = float("-inf")
        self.count = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._rate: float | None = None
        self._values = torch.empty(0)
        self._keys = torch.empty(0)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1).float().cpu()
        n = x.numel()
        if n == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += n
        if self._rate is None:
            self._rate = min(1.0, OVERSAMPLE * self.sample_size / n)
        take = n if self._rate >= 1.0 else max(1, int(round(self._rate * n)))
        picked = x if take == n else x[torch.randperm(n, generator=self._gen)[:take]]
        keys = torch.rand(picked.numel(), generator=self._gen)
        values = torch.cat([self._values, picked])
        keys = torch.cat([self._keys, keys])
        if values.numel() > self.sample_size:
            keep = torch.topk(keys, self.sample_size, largest=False).indices
            values, keys = values[keep], keys[keep]
        self._values, self._keys = values, keys

    @property
    def nonnegative(self) -> bool:
        return self.count > 0 and self.min >= 0.0

    def sample(self) -> torch.Tensor:
        """The kept values, with the exact extremes included so minmax-based searches see them."""
        if self.count == 0:
            raise ValueError("observer saw no data")
        return torch.cat([self._values, torch.tensor([self.min, self.max])])
