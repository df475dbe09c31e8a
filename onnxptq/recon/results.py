"""What reconstruction reports: one ``RegionResult`` per region (or Bit-Split layer) and the run's
``ReconReport``; both are saved in checkpoints and written by ``--report`` (report.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RegionResult:
    name: str
    layers: list[str]
    loss_before: float  # region loss (without regularizer) at the calibrated (RTN) state
    loss_after: float  # ... after reconstruction (hard rounding, learned steps)
    seconds: float
    iterations: int
    undecided: float = 0.0  # fraction of soft rounding offsets not at 0/1 when made hard
    beyond_neighbors: float = 0.0  # fraction of weights rounded past their two nearest grid points (attention)
    rtn_channels: float = 0.0  # bitsplit: fraction of output channels that kept RTN (held-out rows chose it)
    steps_kept: list[str] = field(default_factory=list)  # learned steps refused (int32 bias range)
    steps_clamped: list[str] = field(default_factory=list)  # learned steps raised until the int32 biases fit
    lp_exponent: float | None = None  # RAPQ Eq. 19 P of the region (loss lp)
    lp_source: str | None = None  # where its gamma came from: "bn" (folded BN) | "std" (output std estimate)
    bias_corrected: bool = False  # bias correction re-applied to the learned rounding (it lowered the loss)
    reverted: bool = False  # the region ended above its calibrated loss and went back to it (recon_guard)
    crop: float = 1.0  # share of the input's area each training step saw (recon/crops.py; 1: whole images)
    phase_seconds: dict = field(default_factory=dict)  # where ``seconds`` went: cache, fisher, measure, each phase
    curve: list = field(default_factory=list)  # [phase, iteration, region loss] every 25 iterations (loss curves)


@dataclass
class ReconReport:
    method: str
    granularity: str
    loss: str
    samples: int
    regions: list[RegionResult] = field(default_factory=list)
    resumed_regions: int = 0
    cache_spilled_mb: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)
