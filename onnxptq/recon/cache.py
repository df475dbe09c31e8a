"""Cached per-sample tensors for reconstruction (region inputs, float outputs, gradients).

``ActivationStore`` hands out ``Cached`` arrays of N samples. Arrays live in RAM (torch tensors)
while the store's total stays within its byte budget; beyond it new arrays are ``.npy`` files in a
spill directory (removed when the store closes), written with file I/O and read through short-lived
memory maps, so a large model at 224x224 with 1024 samples runs with a bounded resident set. Rows are written batch by batch and read by sample index.
Per-sample (C, H, W) tensors are stored channels-last, as (H, W, C), the layout the simulation computes in on CPU
(``sim/layout.py``): writing a batch and reading a minibatch then copy memory as it lies instead of transposing it,
and reads return (N, C, H, W) tensors in the channels-last layout.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


class Cached:
    """N samples of one tensor: ``write(start, batch)``, ``read(indices)``, ``batches(size)``."""

    def __init__(self, store: "ActivationStore", name: str, n: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.store, self.name, self.n, self.shape, self.dtype = store, name, n, tuple(shape), np.dtype(dtype)
        self.nbytes = int(n * int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize)
        self.channels_last = len(self.shape) == 3  # stored as (n, H, W, C)
        stored = (n, *self.shape[1:], self.shape[0]) if self.channels_last else (n, *self.shape)
        self.path: Path | None = None
        if store.ram_bytes + self.nbytes <= store.budget_bytes:
            self.data: torch.Tensor | np.memmap = torch.empty(stored, dtype=torch.from_numpy(np.empty(0, self.dtype)).dtype)
            store.ram_bytes += self.nbytes
        else:
            # a .npy file written and read with plain file I/O and short-lived maps: pages of a long-lived
            # np.memmap stay in the process's resident set, which a memory budget must not count on
            self.path = store.spill_path(name)
            # the file with its .npy header; the map itself is dropped at once
            np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=stored)
            self._offset = self.path.stat().st_size - self.nbytes  # after the .npy header
            self._row = self.nbytes // max(n, 1)
            self.data = None
            store.disk_bytes += self.nbytes

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def write(self, start: int, batch: torch.Tensor) -> None:
        b = batch.detach()
        if self.channels_last:
            b = b.permute(0, 2, 3, 1)  # a view, already contiguous for a channels-last batch
        if self.on_disk:
            with open(self.path, "r+b") as f:
                f.seek(self._offset + start * self._row)
                f.write(np.ascontiguousarray(b.cpu().numpy(), dtype=self.dtype))  # its buffer: no bytes copy
        else:
            self.data[start:start + len(b)] = b.cpu()

    def read(self, index: torch.Tensor | slice, window: tuple[slice, ...] | None = None) -> torch.Tensor:
        """Rows ``index`` (a slice or a 1-D index tensor) as a torch tensor (a copy); with ``window`` (slices of the
        last axes, e.g. a spatial crop) only that part of each row is copied."""
        def part(a):  # a view: only the window's elements are copied from it
            if window is None:
                return a
            if not self.channels_last:
                return a[(...,) + tuple(window)]
            at = [slice(None)] * 4  # stored axes (n, H, W, C) of the logical axes (n, C, H, W)
            for axis, sl in zip(range(4 - len(window), 4), window):
                at[(0, 3, 1, 2)[axis]] = sl
            return a[tuple(at)]

        def logical(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 3, 1, 2) if self.channels_last else t

        if self.on_disk:
            mm = np.load(self.path, mmap_mode="r")
            try:
                if isinstance(index, slice):
                    return logical(torch.from_numpy(np.array(part(mm)[index])))
                idx = np.asarray(index.cpu().numpy())
                order = np.argsort(idx, kind="stable")  # sequential disk reads, then back to the asked order
                rows = part(mm)[idx[order]]  # fancy indexing: already a copy in memory
            finally:
                del mm
            out = np.empty(rows.shape, rows.dtype)  # a plain array (rows may be an np.memmap instance)
            out[order] = rows
            return logical(torch.from_numpy(out))
        if isinstance(index, slice):
            return logical(part(self.data)[index].clone())
        return logical(part(self.data).index_select(0, index.cpu()))

    def batches(self, size: int):
        for i in range(0, self.n, size):
            yield i, self.read(slice(i, min(i + size, self.n)))

    def free(self) -> None:
        if self.on_disk:
            self.store.disk_bytes -= self.nbytes
            self.path.unlink(missing_ok=True)
        else:
            self.store.ram_bytes -= self.nbytes
            del self.data


class ActivationStore:
    """Allocator of ``Cached`` arrays within ``budget_mb`` of RAM, spilling to ``spill_dir`` beyond it."""

    def __init__(self, budget_mb: float, spill_dir: str | None = None) -> None:
        self.budget_bytes = int(budget_mb * 2**20)
        self.ram_bytes = 0
        self.disk_bytes = 0
        self.peak_disk_bytes = 0
        self._parent = spill_dir
        self._dir: Path | None = None
        self._count = 0

    def spill_path(self, name: str) -> Path:
        if self._dir is None:
            if self._parent is not None:
                Path(self._parent).mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="onnxptq-cache-", dir=self._parent))
        self._count += 1
        safe = "".join(c if c.isalnum() else "_" for c in name)[-60:]
        return self._dir / f"{self._count:05d}_{safe}.npy"

    def new(self, name: str, n: int, shape: tuple[int, ...], dtype=np.float32) -> Cached:
        c = Cached(self, name, n, shape, dtype)
        self.peak_disk_bytes = max(self.peak_disk_bytes, self.disk_bytes)
        return c

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
