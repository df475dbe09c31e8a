"""``bench_models``: latency of several models (the first is the float reference) in onnxruntime and
OpenVINO, with the ratio to the float model in the same runtime, and the layers left on float kernels."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError, ModelError
from .kernels import KernelReport, classify, load_model, openvino_available
from .latency import TIMERS, Timing

RUNTIMES = ("onnxruntime", "openvino")


@dataclass
class ModelBench:
    """One model: its timings per runtime and batch, ratios to the float model, kernel reports."""

    path: str  # the model file
    timings: list[Timing] = field(default_factory=list)  # min/median ms per runtime and batch
    ratios: dict[str, dict[int, float]] = field(default_factory=dict)  # runtime -> batch -> median / float median
    kernels: dict[str, KernelReport] = field(default_factory=dict)  # runtime -> report
    errors: dict[str, str] = field(default_factory=dict)  # runtime -> why the model could not run there

    def to_dict(self) -> dict:
        return {"path": self.path, "errors": self.errors, "timings": [asdict(t) for t in self.timings],
                "ratios": {rt: {str(b): r for b, r in v.items()} for rt, v in self.ratios.items()},
                "kernels": {rt: k.to_dict() for rt, k in self.kernels.items()}}


@dataclass
class BenchReport:
    """What ``bench_models`` returns."""

    models: list[ModelBench]  # in the order given; the first is the float reference
    runtimes: list[str]  # the runtimes used ("onnxruntime", "openvino")
    batches: list[int]  # batch sizes timed
    threads: int  # intra-op (onnxruntime) / inference (OpenVINO) threads
    runs: int  # timed runs per model, runtime and batch
    warmup: int  # untimed runs before them
    notes: list[str] = field(default_factory=list)  # skipped runtimes, precision hints

    def to_dict(self) -> dict:
        return {"runtimes": self.runtimes, "batches": self.batches, "threads": self.threads, "runs": self.runs,
                "warmup": self.warmup, "notes": self.notes, "models": [m.to_dict() for m in self.models]}


def available_runtimes(requested: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(runtimes to use, notes about the skipped ones)."""
    wanted = list(requested or RUNTIMES)
    bad = [r for r in wanted if r not in RUNTIMES]
    if bad:
        raise ConfigError(f"unknown runtime(s) {bad}; choose from {list(RUNTIMES)}")
    notes = []
    if "openvino" in wanted and not openvino_available():
        wanted.remove("openvino")
        notes.append("OpenVINO skipped: `import openvino` failed (pip install openvino)")
    return wanted, notes


def bench_models(paths: list[str | Path], batches: list[int] = (1, 8), threads: int = 1, runs: int = 20,
                 warmup: int = 5, runtimes: list[str] | None = None, kernels: bool = True) -> BenchReport:
    """Time every model in every runtime; ``paths[0]`` is the float reference of the ratios.

    Never writes the users' files (optimized graphs go to a temp dir)."""
    if not paths:
        raise ConfigError("give at least one model (the float model first)")
    if runs < 1 or warmup < 0 or threads < 1 or not batches or min(batches) < 1:
        raise ConfigError("--runs, --threads and --batch must be positive, --warmup >= 0")
    for p in paths:
        load_model(p)  # missing / unreadable files fail before any timing
    use, notes = available_runtimes(runtimes)
    if "openvino" in use:
        notes.append("OpenVINO: CPU plugin, INFERENCE_PRECISION_HINT f32")
    report = BenchReport([], use, list(batches), threads, runs, warmup, notes)
    for p in paths:
        mb = ModelBench(str(p))
        for rt in use:
            try:  # a model one runtime cannot load (or a fixed batch) is reported, the others still run
                for b in batches:
                    mb.timings.append(TIMERS[rt](p, b, threads, runs, warmup))
                if kernels:
                    mb.kernels[rt] = classify(p, rt)
            except (ModelError, ConfigError) as e:
                mb.errors[rt] = str(e)
        report.models.append(mb)
    ref = {(t.runtime, t.batch): t.median_ms for t in report.models[0].timings}
    for mb in report.models:
        for t in mb.timings:
            if (t.runtime, t.batch) in ref:
                mb.ratios.setdefault(t.runtime, {})[t.batch] = t.median_ms / ref[(t.runtime, t.batch)]
    return report
