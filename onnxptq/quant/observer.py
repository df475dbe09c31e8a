"""Activation statistics over calibration batches: running min/max plus a seeded uniform sample.

The sample (at most ``sample_size`` values, uniform over everything observed) feeds the percentile
and L_p scale searches without keeping every activation in memory. It is a bottom-k sample: every
observed value (thinned at one fixed rate, so large and small batches count alike; thinning draws
positions uniformly with replacement, O(sample) per batch) gets a random key, and the values with the
``sample_size`` smallest keys are kept.

Values of magnitude at least ``SATURATING`` (1e30: an attention mask's float minimum, -3.4e38, added to the
scores) stand for infinities: when the other values span a range, the sample leaves them out, so the range
comes from the other values and they clip to the grid's end (as an infinity would). A tensor holding only such
values and one other value (the mask itself: 0 and -3.4e38) keeps them: that is its range.

With ``row_axis`` (a Softmax input, read along that axis) the observer also keeps the smallest row maximum,
``row_max_min``, over the rows whose maximum is not saturating, and the row length: the Softmax input's grid
needs to reach only a span below it (``calib/calibrate.py`` ``softmax_floor``).
"""
from __future__ import annotations

import torch

OVERSAMPLE = 4  # candidates drawn per kept value from the first batch, setting the thinning rate
COMPACT_AT = 8  # reduce to the bottom-k once this many times ``sample_size`` values are pending
SATURATING = 1e30  # |x| at least this: an infinity in disguise (module doc)


def _storage_order(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values as a 1-D tensor in their order in memory: no copy for a channels-last tensor, where
    ``reshape(-1)`` would copy it into logical order (the sample is uniform in any order)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.reshape(-1)


class Observer:
    """Collects min, max and a uniform sample of at most ``sample_size`` values of one tensor."""

    def __init__(self, sample_size: int = 1 << 16, seed: int = 0, row_axis: int | None = None) -> None:
        self.sample_size = sample_size
        self.row_axis = row_axis
        self.row_max_min = float("inf")  # the smallest non-saturating maximum along ``row_axis``
        self.row_length = 0  # the longest row along ``row_axis``
        self.min = float("inf")
        self.max = float("-inf")
        self.finite_min = float("inf")  # of the values below SATURATING in magnitude
        self.finite_max = float("-inf")
        self.count = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._rate: float | None = None
        self._values = torch.empty(0)
        self._keys = torch.empty(0)
        self._chunks: list[tuple[torch.Tensor, torch.Tensor]] = []  # not yet compacted (values, keys)
        self._pending = 0

    def update(self, x: torch.Tensor) -> None:
        if self.row_axis is not None and x.dim() > 0 and x.numel():
            self.row_length = max(self.row_length, x.shape[self.row_axis])
            rows = x.detach().amax(dim=self.row_axis)
            rows = rows[rows > -SATURATING]
            if rows.numel():
                self.row_max_min = min(self.row_max_min, float(rows.min()))
        x = _storage_order(x.detach())
        n = x.numel()
        if n == 0:
            return
        lo, hi = torch.aminmax(x)
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        if -SATURATING < float(lo) and float(hi) < SATURATING:
            self.finite_min, self.finite_max = min(self.finite_min, float(lo)), max(self.finite_max, float(hi))
        else:
            f = x[x.abs() < SATURATING]
            if f.numel():
                flo, fhi = torch.aminmax(f)
                self.finite_min = min(self.finite_min, float(flo))
                self.finite_max = max(self.finite_max, float(fhi))
        self.count += n
        if self._rate is None:
            self._rate = min(1.0, OVERSAMPLE * self.sample_size / n)
        take = n if self._rate >= 1.0 else max(1, int(round(self._rate * n)))
        if take == n:
            picked = x.float().cpu()
        else:  # thinning by ``take`` uniform draws: O(take), where a permutation of all n values cost O(n)
            idx = torch.randint(n, (take,), generator=self._gen)
            picked = x[idx.to(x.device)].float().cpu()
        self._chunks.append((picked, torch.rand(picked.numel(), generator=self._gen)))
        self._pending += picked.numel()
        if self._pending > COMPACT_AT * self.sample_size:
            self._compact()

    def _compact(self) -> None:
        """Keep the ``sample_size`` values with the smallest keys. Bottom-k of a union is the bottom-k of
        the parts' bottom-k, so compacting lazily (every few batches) keeps exactly the same sample."""
        if not self._chunks:
            return
        values = torch.cat([self._values] + [v for v, _ in self._chunks])
        keys = torch.cat([self._keys] + [k for _, k in self._chunks])
        self._chunks, self._pending = [], 0
        if values.numel() > self.sample_size:
            keep = torch.topk(keys, self.sample_size, largest=False).indices
            values, keys = values[keep], keys[keep]
        self._values, self._keys = values, keys

    @property
    def nonnegative(self) -> bool:
        return self.count > 0 and self.min >= 0.0

    @property
    def saturating(self) -> bool:
        """Whether the range leaves out values of magnitude >= SATURATING (module doc)."""
        return (self.min <= -SATURATING or self.max >= SATURATING) and self.finite_min < self.finite_max

    def sample(self) -> torch.Tensor:
        """The kept values, with the exact extremes included so minmax-based searches see them (without the
        saturating values when ``saturating``)."""
        if self.count == 0:
            raise ValueError("observer saw no data")
        self._compact()
        if self.saturating:
            kept = self._values[self._values.abs() < SATURATING]
            return torch.cat([kept, torch.tensor([self.finite_min, self.finite_max])])
        return torch.cat([self._values, torch.tensor([self.min, self.max])])
