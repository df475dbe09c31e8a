"""Per-layer weight bits for a model: coding-length allocation or sensitivity + genetic search.

``apply_mixed`` rewrites ``plan.w_bits`` of the *free* layers (every layer, except the first and last
when ``first_last_bits`` pins them) before calibration, so calibration, reconstruction and both
exporters see the chosen bits like any other plan:
- ``coding-length`` (Attention Round Algorithm 1): L(W) per layer (Eq. 12), 1-D k-means into
  len(bits) clusters, fewer bits to shorter coding lengths. Needs no data.
- ``search`` (BRECQ Sec. 3.4, Algorithm 2): per-layer sensitivities at each bit width (diagonal) and
  2-bit pairs inside each block (off-diagonal), measured on calibration data (``sensitivity.py``);
  then the seeded genetic search picks bits under a model-size or BOPs budget (Eq. 12).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..config import QuantConfig
from ..data import Dataset
from ..errors import ConfigError
from ..graph.qgraph import QGraph
from ..plan import BitPlan
from .budget import bops, model_size_bytes
from .coding_length import allocate_bits, coding_lengths
from .genetic import genetic_search

SEARCH_CHOICES = (2, 4, 8)  # BRECQ Sec. 3.4
CODING_CHOICES = (3, 4, 5, 6)  # Attention Round Table 4


@dataclass
class MixedReport:
    method: str
    bits: dict[str, int]  # free layer -> weight bits
    size_bytes: float  # quantized weights of every layer (bits / 8 per weight)
    bops: float  # sum over layers of MACs x b_w x b_a per sample
    budget: float | None = None
    budget_kind: str | None = None  # "size" | "bops"
    coding_lengths: dict[str, float] = field(default_factory=dict)
    fitness: float | None = None  # total sensitivity of the chosen bits (search)
    seconds: float = 0.0  # sensitivity measurement + search

    def to_dict(self) -> dict:
        return asdict(self)


def free_layers(qg: QGraph, cfg: QuantConfig) -> list[str]:
    """Layers whose bits the allocation chooses (first/last are pinned by ``first_last_bits``)."""
    pinned = {qg.layers[0].name, qg.layers[-1].name} if cfg.first_last_bits is not None and qg.layers else set()
    return [x.name for x in qg.layers if x.name not in pinned]


def weight_matrix(qg: QGraph, name: str) -> np.ndarray:
    """The layer's weight, output channels first (MatMul weights are (in, out) in ONNX)."""
    layer = qg.layer(name)
    w = np.asarray(qg.initializer(layer.weight), dtype=np.float64)
    return np.moveaxis(w, layer.weight_axis, 0)


def plan_size(qg: QGraph, plan: BitPlan) -> float:
    return model_size_bytes({x.name: int(np.prod(x.weight_shape)) for x in qg.layers}, plan.w_bits)


def capped_report(report: "MixedReport", qg: QGraph, plan: BitPlan) -> "MixedReport":
    """``report`` after the target capped the plan's weight bits (``plan.cap_weight_bits``, e.g. 8 -> 7 for
    onnxruntime-avx2): the bits, size and bit-operations of the plan as it is exported. A cap only lowers
    bits, so a met budget stays met."""
    return replace(report, bits={k: plan.w_bits[k] for k in report.bits}, size_bytes=plan_size(qg, plan),
                   bops=plan_bops(qg, plan))


def plan_bops(qg: QGraph, plan: BitPlan) -> float:
    macs = {x.name: int(x.macs_per_sample) for x in qg.layers}
    a_bits = {x.name: plan.a_bits.get(qg.source.get(x.input, x.input), 32) for x in qg.layers}
    return bops(macs, plan.w_bits, a_bits)


def coding_length_bits(qg: QGraph, layers: list[str], bits: list[int], eps: float) -> tuple[dict, dict]:
    lengths = coding_lengths({n: weight_matrix(qg, n) for n in layers}, eps)
    return allocate_bits(lengths, sorted(bits)), lengths


def apply_mixed(qg: QGraph, plan: BitPlan, cfg: QuantConfig, sim=None, data: Dataset | None = None,
                cache: dict | None = None) -> MixedReport:
    """Choose the free layers' weight bits by ``cfg.mixed`` and write them into ``plan`` (see module doc).
    ``cache``: the run's ``RunContext.cache`` (sensitivities measured once per model, data and settings)."""
    t0 = time.perf_counter()
    layers = free_layers(qg, cfg)
    if not layers:
        raise ConfigError("mixed precision needs at least one layer besides the first and last "
                          "(or --first-last-bits none)")
    if cfg.mixed == "coding-length":
        chosen, lengths = coding_length_bits(qg, layers, list(cfg.mixed_bits or CODING_CHOICES), cfg.coding_eps)
        plan.w_bits.update(chosen)
        return MixedReport("coding-length", chosen, plan_size(qg, plan), plan_bops(qg, plan), coding_lengths=lengths,
                           seconds=time.perf_counter() - t0)
    if cfg.mixed != "search":
        raise ConfigError(f"unknown mixed-precision method {cfg.mixed!r}; use coding-length or search")
    if sim is None or data is None:
        raise ValueError("the sensitivity search needs the simulation model and calibration data")
    from .sensitivity import measure_sensitivities

    choices = tuple(sorted(cfg.mixed_bits or SEARCH_CHOICES))
    diag, offdiag = measure_sensitivities(sim, data, cfg, layers, choices, progress=cfg.progress, cache=cache)
    kind, budget = ("size", cfg.budget_size) if cfg.budget_size is not None else ("bops", cfg.budget_bops)
    measure = plan_size if kind == "size" else plan_bops

    def cost(bits: dict[str, int]) -> float:
        return measure(qg, BitPlan({**plan.w_bits, **bits}, plan.a_bits))

    try:
        res = genetic_search(layers, choices, diag=diag, offdiag=offdiag, cost_fn=cost, budget=float(budget),
                             seed=cfg.seed)
    except ValueError as e:
        lowest = cost({n: choices[0] for n in layers})
        raise ConfigError(f"{kind} budget {budget:.6g} cannot be met: with every free layer at {choices[0]} bits the "
                          f"model needs {lowest:.6g} ({e}); raise the budget or lower --first-last-bits") from None
    plan.w_bits.update(res.bits)
    return MixedReport("search", dict(res.bits), plan_size(qg, plan), plan_bops(qg, plan), budget, kind,
                       fitness=res.fitness, seconds=time.perf_counter() - t0)
