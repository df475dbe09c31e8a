"""Spatial crops for reconstruction steps: a region made only of convolutions, pools, pads and pointwise ops is
translation-equivariant, so its loss on a crop of its input, compared on the outputs that depend on the crop
alone, is the full loss restricted to those positions; one training step then costs the crop's share of the
image (``QuantConfig.recon_crop``).

``footprint`` follows every tensor of the region from its input: output position ``j`` (per spatial axis)
depends on input positions ``[j S + lo, j S + hi]`` (stride ``S``, reach ``lo <= 0 <= hi`` through the
padding). A crop ``[x0, x1)`` with ``x0`` a multiple of ``S`` (so every stage keeps its alignment: crop
output ``j'`` is full output ``j' + x0 / S``) computes output ``j`` exactly when its reach lies inside the
crop, or crosses the crop's border where that border is the image's own (``x0 = 0``, ``x1 = size``: the
padding is then the same). ``CropSampler`` draws such crops and says which outputs to compare.
Anything else the outputs depend on (a global pool, a reshape, a matmul, a constant that varies over positions,
a padding that depends on the size) leaves the region uncropped (``footprint`` returns None); nodes the outputs
do not depend on (shape arithmetic read by later regions) do not count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops.elementwise import FAMILIES
from ..ops.shape import pad_mode
from ..sim.model import SimModel

#: Ops computed position by position (their other operands broadcast over the spatial axes).
POINTWISE = frozenset(op for _, _, _, ops in FAMILIES for op in ops) - {"Softmax", "LogSoftmax", "CumSum", "Trilu"}
POOLS = frozenset({"MaxPool", "AveragePool"})
MIN_SIDE = 32  # axes shorter than this (region input) are never cropped: little to save, more border


@dataclass(frozen=True)
class Reach:
    """Per spatial axis (H, W): output position j depends on input positions [j S + lo, j S + hi]."""

    stride: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]

    def then(self, kernel: list[int], strides: list[int], dil: list[int], pads_begin: list[int]) -> Reach:
        """This reach followed by a window op (conv or pool) with that kernel, stride, dilation and begin pad:
        window output j reads inputs [j st - p, j st - p + d (k - 1)]."""
        st = tuple(s * t for s, t in zip(self.stride, strides))
        lo = tuple(-p * s + lo for p, s, lo in zip(pads_begin, self.stride, self.lo))
        hi = tuple((-p + d * (k - 1)) * s + hi for p, d, k, s, hi in zip(pads_begin, dil, kernel, self.stride, self.hi))
        return Reach(st, lo, hi)

    def join(self, other: Reach) -> Reach | None:
        """Two operands of a pointwise op: the same stride, the union of reaches (None: different grids)."""
        if self.stride != other.stride:
            return None
        return Reach(self.stride, tuple(map(min, self.lo, other.lo)), tuple(map(max, self.hi, other.hi)))


IDENTITY = Reach((1, 1), (0, 0), (0, 0))


def _window(attrs: dict, kernel: list[int]) -> tuple[list[int], list[int], list[int]] | None:
    """(strides, dilations, begin pads) of a 2-D conv or pool with explicit pads; None for auto_pad SAME
    (its pads depend on the input size, so a crop would pad differently)."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID") or len(kernel) != 2:
        return None
    pads = [0] * 4 if auto == "VALID" else list(attrs.get("pads", [0] * 4))
    return list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1])), pads[:2]


def _spatially_constant(t: torch.Tensor) -> bool:
    """A constant operand that broadcasts over H and W of an NCHW tensor (same value at every position)."""
    return t.dim() < 2 or (t.shape[-1] == 1 and t.shape[-2] == 1)


def _spatial_pads(sim: SimModel, node) -> list[int] | None:
    """The begin pads (H, W) of a Pad over the spatial axes of an NCHW tensor, constant, edge or reflect
    (each reads the image's own pixels at the image's borders, so a crop there pads the same way); None for
    other modes (wrap reads the far side), pads not constant, negative (cropping) or on the batch or channels."""
    if pad_mode(node.attrs) not in ("constant", "edge", "reflect") or len(node.inputs) < 2 \
            or node.inputs[1] not in sim.consts:
        return None
    if len(node.inputs) > 3 and node.inputs[3]:
        return None  # explicit axes (opset 18): not needed by the exporters seen so far
    pads = [int(v) for v in sim.consts[node.inputs[1]].reshape(-1).tolist()]
    if len(pads) != 8 or min(pads) < 0 or any(pads[k] for k in (0, 1, 4, 5)):
        return None
    return [pads[2], pads[3]]


def footprint(sim: SimModel, start: int, stop: int, inputs: dict[str, tuple[int, ...]],
              outputs: list[str]) -> dict[str, Reach] | None:
    """The reach of each of ``outputs`` over the region's inputs (nodes[start:stop]; ``inputs``: the consumed
    tensors and their shapes), or None when the region is not a pure stack of 2-D windows and pointwise ops
    over one NCHW grid."""
    spatial = {s[2:] for s in inputs.values() if len(s) == 4 and s[2:] != (1, 1)}
    if len(spatial) != 1 or any(len(s) != 4 for s in inputs.values()):
        return None
    reach: dict[str, Reach | None] = {t: IDENTITY if s[2:] != (1, 1) else None for t, s in inputs.items()}
    needed = set(outputs)  # only the nodes the outputs depend on count (not, say, a Shape read by a later region)
    relevant = []
    for node in reversed(sim.nodes[start:stop]):
        if any(o in needed for o in node.outputs if o):
            relevant.append(node)
            needed.update(i for i in node.inputs if i)
    for node in reversed(relevant):
        ins = [i for i in node.inputs if i]
        mapped = [reach[i] for i in ins if i in reach]
        if any(i not in reach and not (i in sim.consts and _spatially_constant(sim.consts[i])) for i in ins):
            if node.layer is None:
                return None  # an operand from outside the region's grid (side input, per-position constant)
        if node.layer is not None:
            if node.layer.op_type != "Conv" or reach.get(node.inputs[0]) is None:
                return None
            kernel = list(sim.weight(node.layer.weight).shape[2:])
            win = _window(node.attrs, kernel)
            if win is None:
                return None
            out = reach[node.inputs[0]].then(kernel, *win)
        elif node.op_type in POOLS:
            if reach.get(node.inputs[0]) is None or node.attrs.get("ceil_mode", 0):
                return None
            kernel = list(node.attrs.get("kernel_shape", []))
            win = _window(node.attrs, kernel)
            if win is None:
                return None
            out = reach[node.inputs[0]].then(kernel, *win)
        elif node.op_type == "Pad":
            pads = _spatial_pads(sim, node)
            if pads is None or reach.get(node.inputs[0]) is None:
                return None
            out = reach[node.inputs[0]].then([1, 1], [1, 1], [1, 1], pads)
        elif node.op_type in POINTWISE:
            grids = [r for r in mapped if r is not None]
            out = grids[0] if grids else None
            for r in grids[1:]:
                out = out.join(r)
                if out is None:
                    return None
        else:
            return None
        for o in node.outputs:
            if o:
                reach[o] = out
    result = {t: reach.get(t) for t in outputs}
    return result if all(r is not None for r in result.values()) else None


@dataclass(frozen=True)
class Crop:
    """One drawn crop: the input window per axis and, per output, the slices of the region's output on the
    crop and of the full target that hold the same positions."""

    window: tuple[slice, slice]
    outputs: dict[str, tuple[tuple[slice, slice], tuple[slice, slice]]]


class CropSampler:
    """Draws crops of side ``fraction`` of the input (axes of at least ``MIN_SIDE``), starting at multiples of
    the region's stride and ending at the image's border when the next start would not fit. A crop is centred
    on a uniformly drawn position and pushed inside the image, so the borders (where the padding acts) are
    drawn about ``fraction / 2`` of the time each, not once per possible start."""

    def __init__(self, reach: dict[str, Reach], in_size: tuple[int, int], out_sizes: dict[str, tuple[int, int]],
                 fraction: float) -> None:
        self.reach, self.size, self.out_sizes = reach, in_size, out_sizes
        self.step = tuple(math.lcm(*(r.stride[a] for r in reach.values())) for a in (0, 1))
        self.length = []
        for a in (0, 1):
            n = self.size[a]
            span = max(r.hi[a] - r.lo[a] for r in reach.values())
            length = max(math.ceil(n * fraction), span + 4 * self.step[a])
            self.length.append(n if n < MIN_SIDE or length >= n else length)

    @property
    def active(self) -> bool:
        return any(L < n for L, n in zip(self.length, self.size))

    @property
    def share(self) -> float:
        """The crop's area as a share of the input's."""
        return self.length[0] * self.length[1] / (self.size[0] * self.size[1])

    def draw(self, gen: torch.Generator) -> Crop:
        window = []
        for a in (0, 1):
            n, L, s = self.size[a], self.length[a], self.step[a]
            last = (n - L) // s  # the last aligned start
            centre = int(torch.randint(n, (1,), generator=gen))
            k = min(max((centre - L // 2) // s, 0), last)
            x0 = k * s
            x1 = n if k == last else x0 + L
            window.append((x0, x1))
        outs = {}
        for t, r in self.reach.items():
            crop_sl, full_sl = [], []
            for a in (0, 1):
                (x0, x1), n_out, st = window[a], self.out_sizes[t][a], r.stride[a]
                first = 0 if x0 == 0 else -(-(x0 - r.lo[a]) // st)
                last = n_out - 1 if x1 == self.size[a] else (x1 - 1 - r.hi[a]) // st
                first, last = max(first, 0), min(last, n_out - 1)
                off = x0 // st
                crop_sl.append(slice(first - off, last - off + 1))
                full_sl.append(slice(first, last + 1))
            outs[t] = (tuple(crop_sl), tuple(full_sl))
        return Crop((slice(*window[0]), slice(*window[1])), outs)
