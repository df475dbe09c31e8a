"""Merge points (Add, Sub, Concat, Mul, pools) that take over an input's grid where that is the better choice
on the tensor the quantized model actually holds.

Each activation's L_p scale (``calibrate.py``) is chosen on float samples of that tensor alone. At a merge
node that misses one cost: the node combines tensors that are already on their own grids, and its output is
rounded once more onto its own. Where the output is mostly one of its inputs (a residual stream through blocks
whose branches are small), re-rounding onto a grid whose step differs by a few percent adds a whole extra
rounding noise, while the input's own grid rounds it at no cost. Seen on poolformer_s12 (random weights,
layer scales 1e-5): the L_p scales of its residual stream differ by a few percent between consecutive Adds,
and the stream's SQNR drops at each such Add.

So one pass over a few calibration samples, in node order (quant points before the current one quantized,
weights in float, as the scales were calibrated), compares at each merge point the L_p error (BRECQ's p = 2.4,
the criterion of ``scales.lp_search``) of its own parameters with that of each input's parameters on the same
grid, on the output computed from quantized inputs, and keeps the lowest. An input's grid wins within 1 % of the
lowest error (``JOIN_TOL``, below the sampling spread of an error measured on 16 samples), or when its error
is that of an offset of 1 % of a step everywhere or less: one grid fewer, and the runtime's requantization
between the two tensors becomes the identity. Where the branches matter the output is off every input's grid
and the comparison is the usual L_p one.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..data import Dataset
from ..quant import QParams
from ..quant import scales as S
from ..quant.observer import SATURATING
from ..sim.model import SimModel, SimNode
from .output_search import OUTPUT_SEARCH_SAMPLES, sample_feeds

log = logging.getLogger("onnxptq")

JOIN_TOL = 0.01  # an input's grid wins within 1 % of the lowest error (module doc)


def _per_tensor(sim: SimModel, t: str) -> QParams | None:
    fq = sim.act_quantizer(t)
    if fq.params is None or fq.params.axis is not None or fq.ecaq:
        return None
    return fq.params


def same_grid_inputs(sim: SimModel, point: str, node: SimNode) -> list[str]:
    """The quant points that ``node`` (``point``'s producer) reads, in input order, each once, whose per-tensor
    parameters sit on the same grid as ``point``'s: the grids it may take over."""
    own = sim.act_quantizer(point).params
    out: list[str] = []
    for i in node.inputs:
        src = sim.qg.source.get(i)
        if src is None or src == point or src in out:
            continue
        p = _per_tensor(sim, src)
        if p is not None and p.grid == own.grid and p.po2 == own.po2:
            out.append(src)
    return out


def join_points(sim: SimModel, fixed: set[str] = frozenset()) -> dict[str, list[str]]:
    """Merge quant points with per-tensor parameters, other than ``fixed`` -> the inputs whose grid they may
    take over."""
    out = {}
    nodes = {n.name: n for n in sim.nodes}
    for t, qp in sim.qg.quant_points.items():
        if qp.kind == "merge" and t not in fixed and _per_tensor(sim, t) is not None:
            ins = same_grid_inputs(sim, t, nodes[qp.producer])
            if ins:
                out[t] = ins
    return out


def pick_params(y: torch.Tensor, candidates: list[QParams], rel_tol: float = 0.0, abs_tol: float = 0.0) -> int:
    """Index of the first candidate whose L_p error on ``y`` is within ``rel_tol`` (relative) of the lowest or
    at most ``abs_tol``."""
    scale = torch.tensor(np.array([float(c.scale) for c in candidates], dtype=np.float32))
    zp = torch.tensor(np.array([float(c.zero_point) for c in candidates], dtype=np.float32))
    y = y.detach().float().cpu().reshape(-1)
    y = y[y.abs() < SATURATING]  # attention masks' float minimum stands for -inf (quant/observer.py)
    if not len(y):
        return 0
    err = S.candidate_lp_errors(y, scale, zp, candidates[0].grid, S.LP_NORM, None).double()
    return int(torch.nonzero(err <= max(float(err.min()) * (1 + rel_tol), abs_tol))[0, 0])


@torch.no_grad()
def align_join_grids(sim: SimModel, data: Dataset, fixed: set[str] = frozenset(),
                     n_samples: int = OUTPUT_SEARCH_SAMPLES) -> dict[str, str]:
    """Let each merge point take over an input's grid where that lowers its L_p error on the output computed
    from quantized inputs (module doc). ``fixed``: points whose grid must stay (a Softmax input reaching down
    to an attention mask's floor, a grid holding a Pad constant). Returns point -> the input whose parameters
    it now carries, also logged at INFO level (the CLI's ``--verbose``). Leaves activation quantization on
    and weights in float."""
    points = join_points(sim, fixed)
    if not points:
        return {}
    sim.set_quant(weights=False, acts=True)
    taken: dict[str, str] = {}
    env = sim.input_env(sample_feeds(sim, data, n_samples))
    for k, node in enumerate(sim.nodes):
        here = [o for o in node.outputs if o in points]
        for o in here:
            sim.act_quantizer(o).enabled = False
        try:
            sim.run_nodes(env, k, k + 1)
        finally:
            for o in here:
                sim.act_quantizer(o).enabled = True
        for o in here:
            fq = sim.act_quantizer(o)
            cands = [sim.act_quantizer(s).params for s in points[o]] + [fq.params]
            b = pick_params(env[o], cands, JOIN_TOL, (JOIN_TOL * float(fq.params.scale)) ** S.LP_NORM)
            if b < len(points[o]):
                fq.set_params(cands[b])
                taken[o] = points[o][b]
            env[o] = fq(env[o])
    if taken:
        log.info("%d merge point(s) took over an input's grid: %s", len(taken),
                 ", ".join(f"{t} <- {s}" for t, s in taken.items()))
    return taken
