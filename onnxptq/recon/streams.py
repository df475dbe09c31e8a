"""Running the calibration set through the graph region by region, with cached live tensors.

A ``Frontier`` holds, for one position in the simulation's node list, every per-sample float tensor
still needed later (one tensor at a cut between blocks; several inside a residual block, e.g. at
layer granularity). ``advance`` runs the nodes between two positions batch by batch (quantized or
float) and returns the frontier after them. Integer side tensors (``Shape(input)`` feeding a late
Reshape, DESIGN notes section 4) are not per-sample: ``SideTensors`` computes them once per batch
size from a run on zeros.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..graph.partition import Region
from ..memory import trim_heap
from ..sim.layout import channels_last
from ..sim.model import SimModel
from .cache import ActivationStore, Cached


@dataclass
class Span:
    """A region as a node range [start, stop) of ``SimModel.nodes``."""

    region: Region
    start: int
    stop: int

    @property
    def name(self) -> str:
        return self.region.name


def region_spans(sim: SimModel, regions: list[Region]) -> list[Span]:
    """Node ranges of the regions, in execution order (a region's span covers any node interleaved
    with its own; spans never overlap)."""
    index = {n.name: k for k, n in enumerate(sim.nodes)}
    spans = []
    for r in regions:
        ks = [index[n] for n in r.nodes if n in index]
        if not ks:
            continue
        spans.append(Span(r, min(ks), max(ks) + 1))
    spans.sort(key=lambda s: s.start)
    for a, b in zip(spans, spans[1:]):
        if b.start < a.stop:
            raise ValueError(f"regions {a.name!r} and {b.name!r} overlap in node order")
    return spans


def live_after(sim: SimModel, pos: int, candidates) -> list[str]:
    """Tensors among ``candidates`` still read by a node at index >= ``pos`` (or graph outputs)."""
    outs = set(sim.qg.outputs)
    last = sim._last_use
    return [t for t in candidates if t in outs or last.get(t, -1) >= pos]


def produced(sim: SimModel, start: int, stop: int) -> list[str]:
    return [o for n in sim.nodes[start:stop] for o in n.outputs if o]


class SideTensors:
    """Non-float tensors (shape arithmetic) per batch size, from one float run on zeros."""

    def __init__(self, sim: SimModel, sample_shapes: dict[str, tuple[int, ...]], device: torch.device) -> None:
        self.sim, self.shapes, self.device = sim, sample_shapes, device
        floats = sim.qg.float_tensors
        self.names = [o for n in sim.nodes for o in n.outputs if o and o not in floats and o not in sim.consts]
        self._by_size: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, batch: int) -> dict[str, torch.Tensor]:
        if not self.names:
            return {}
        if batch not in self._by_size:
            sim = self.sim
            wanted = set(self.names)
            env = {k: torch.zeros((batch, *s), device=self.device) for k, s in self.shapes.items()}
            got: dict[str, torch.Tensor] = {}
            was = [(fq, fq.enabled) for fq in list(sim.w_fq.values()) + list(sim.act_fq.values())]
            sim.set_quant(False, False)
            try:
                with torch.no_grad():
                    for k in range(len(sim.nodes)):
                        env = sim.run_nodes(env, k, k + 1)
                        got.update({o: env[o] for o in sim.nodes[k].outputs if o in wanted and o in env})
            finally:
                for fq, e in was:
                    fq.enabled = e
            self._by_size[batch] = got
        return dict(self._by_size[batch])


class Frontier:
    """Cached per-sample tensors live at node position ``pos``."""

    def __init__(self, pos: int, tensors: dict[str, Cached], n: int) -> None:
        self.pos, self.tensors, self.n = pos, tensors, n

    def read(self, names, index) -> dict[str, torch.Tensor]:
        return {t: self.tensors[t].read(index) for t in names}

    def free_except(self, keep: "Frontier | None" = None) -> None:
        """Free the arrays not shared with ``keep``."""
        shared = {id(c) for c in keep.tensors.values()} if keep is not None else set()
        for c in self.tensors.values():
            if id(c) not in shared:
                c.free()
        self.tensors = {}


def input_frontier(sim: SimModel, inputs: dict[str, np.ndarray], store: ActivationStore, quantized: bool,
                   batch: int, device: torch.device) -> Frontier:
    """The graph inputs (through their input quantizers when ``quantized``) as a frontier at position 0."""
    n = len(next(iter(inputs.values())))
    tensors = {}
    for name, arr in inputs.items():
        c = store.new(f"{'q' if quantized else 'f'}_{name}", n, arr.shape[1:], np.float32)
        fq = sim.act_quantizer(name) if name in sim.qg.quant_points else None
        for i in range(0, n, batch):
            x = torch.from_numpy(np.ascontiguousarray(arr[i:i + batch])).to(device)
            if quantized and fq is not None:
                was = fq.enabled
                fq.enabled = True
                with torch.no_grad():
                    x = fq(x)
                fq.enabled = was
            c.write(i, x)
        tensors[name] = c
    return Frontier(0, tensors, n)


def consumed_inputs(sim: SimModel, front: Frontier, start: int, stop: int) -> list[str]:
    """Frontier tensors read by nodes [start, stop)."""
    read = {i for n in sim.nodes[start:stop] for i in n.inputs}
    return [t for t in front.tensors if t in read]


def set_quant_state(sim: SimModel, quantized: bool) -> None:
    sim.set_quant(weights=quantized, acts=quantized)


@torch.no_grad()
def advance(sim: SimModel, front: Frontier, stop: int, store: ActivationStore, side: SideTensors, quantized: bool,
            batch: int, device: torch.device, tag: str) -> Frontier:
    """Run nodes [front.pos, stop) over all samples; the frontier at ``stop`` (``front`` is kept)."""
    start = front.pos
    if stop == start:
        return Frontier(stop, dict(front.tensors), front.n)
    floats = sim.qg.float_tensors
    consumed = consumed_inputs(sim, front, start, stop)
    new_names = [t for t in live_after(sim, stop, produced(sim, start, stop)) if t in floats]
    out: dict[str, Cached] = {t: front.tensors[t] for t in live_after(sim, stop, front.tensors)}
    set_quant_state(sim, quantized)
    for i in range(0, front.n, batch):
        sl = slice(i, min(i + batch, front.n))
        env = {t: channels_last(front.tensors[t].read(sl).to(device)) for t in consumed}
        env.update(side(sl.stop - sl.start))
        env = sim.run_nodes(env, start, stop)
        for t in new_names:
            v = env[t]
            if t not in out:
                out[t] = store.new(f"{tag}_{t}", front.n, tuple(v.shape[1:]), np.float32)
            out[t].write(i, v.float())
        del env
    trim_heap()
    return Frontier(stop, out, front.n)
