#!/usr/bin/env python3
"""Benchmarks of onnxptq against onnxruntime's own quantizer, written to ``docs/benchmarks.md``.

One entry point regenerates every section of docs/benchmarks.md:

    python tools/bench.py foundation [--models digits|efficientnet|all] [--num-calib N] [--num-eval N]
                                     [--out docs/benchmarks.md] [--json FILE] [--keep DIR]
    python tools/bench.py recon --experiments NAME[,NAME...] [--only MODEL] [--rows LABEL,...] [--set k=v ...]
    python tools/bench.py integer [--models digits|efficientnet|all]     (tools/bench_integer.py)
    python tools/bench.py memory [--budgets 3GB,none]                    (tools/bench_memory.py)
    python tools/bench.py deploy [--models ...] [--only MODEL] [--batch 1,8] [--target a,b]  (tools/bench_deploy.py)

``foundation``: for every model, onnxruntime ``quantize_static`` (QDQ, per-channel weights,
activations QUInt8 / weights QInt8, MinMax and Percentile calibration, after
``quant_pre_process``) next to onnxptq round-to-nearest (W8A8 and W4A8, float and power-of-two
scales), on the same calibration samples, measured the same way: every quantized model and the
float model run in onnxruntime (default session options, CPU) on the same evaluation samples and
are compared with ``onnxptq.eval.fidelity`` (output SQNR, top-1 agreement, top-5 containment,
KL, accuracy where the data has labels). Also the wall time of the quantize call and the file size.

Models: ``digits`` = the shipped models/digits_{resnet,mbv2,regnet}.onnx (calibration
models/digits_calib.npz, evaluation models/digits_val.npz with labels); ``efficientnet`` =
EfficientNet-Lite0 with photo crops from the cache ($ONNXPTQ_CACHE or ~/.cache/onnxptq, built by
``python tools/make_models.py --efficientnet``; evaluation crops have no labels).

Each benchmark owns sections of the output file between ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->`` (one per model group, e.g. ``foundation-digits``); a run replaces only
its own sections and keeps the rest of the file. The tables are printed to stdout as well.

New benchmarks: write ``cmd_NAME(args)`` using the helpers below (model groups, data loading,
``run_ort_static``/``run_onnxptq``, ``Row``, ``markdown_table``, ``write_section``) and register it
in ``build_parser``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

# run as a script, this module is __main__; the other tools' ``import bench`` must get this same module
# (one BenchError class, one cache), not a second copy
sys.modules.setdefault("bench", sys.modules[__name__])
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from onnxptq.data import Dataset, load_dataset, model_input_specs  # noqa: E402
from onnxptq.eval import Fidelity, fidelity, run_onnxruntime  # noqa: E402

EVAL_BATCH = 32  # batch of the onnxruntime evaluation sessions (all rows)
ORT_CALIB_BATCH = 32  # samples per CalibrationDataReader item
DIGITS = ("digits_resnet", "digits_mbv2", "digits_regnet")
MAKE_EFFNET = "python tools/make_models.py --efficientnet"


class BenchError(Exception):
    """A user-facing problem (missing files, ...): printed as ``error: ...``, exit 2."""


# ------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    """Read-only git query in the repository (None when git is unavailable)."""
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def machine_info() -> dict:
    import onnxruntime
    import torch

    import onnxptq

    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in text]
        flags = " ".join(found)
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    if commit is not None:
        dirty = _git("diff", "--name-only", "HEAD", "--", "onnxptq") or _git(
            "ls-files", "--others", "--exclude-standard", "--", "onnxptq")
        commit += " + uncommitted changes in onnxptq/" if dirty else ""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxptq": onnxptq.__version__,
        "git": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(m: dict) -> str:
    return (f"{m['cpu']} ({m['cpu_flags'] or 'no SIMD flags read'}), {m['cores']} cores "
            f"({m['cores_usable']} usable, torch {m['torch_threads']} threads), {m['os']}; "
            f"Python {m['python']}, numpy {m['numpy']}, torch {m['torch']}, onnx {m['onnx']}, "
            f"onnxruntime {m['onnxruntime']}, onnxptq {m['onnxptq']}"
            + (f" (git {m['git']})" if m.get("git") else "") + f"; run {m['date']}")


def command_line(argv: list[str] | None = None, drop: tuple[str, ...] = ("--json", "--keep")) -> str:
    """The command that reproduces the results (options that only add outputs are left out)."""
    args, out, skip = list(sys.argv[1:] if argv is None else argv), [], False
    for a in args:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif not any(a.startswith(d + "=") for d in drop):
            out.append(a)
    return "python tools/bench.py " + shlex.join(out)


# ------------------------------------------------------------------------------ models, data


@dataclass
class BenchModel:
    name: str
    path: Path
    calib: Path
    eval: Path
    group: str
    default_calib: int
    default_eval: int | None  # None: the whole file


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_sets(items: list[str]) -> dict:
    """``--set key=value ...`` as QuantConfig overrides (numbers, none/true/false, else text)."""
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        out[k.replace("-", "_")] = _value(v)
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("ONNXPTQ_CACHE") or Path.home() / ".cache" / "onnxptq").expanduser()


def digits_models() -> list[BenchModel]:
    mdir = ROOT / "models"
    manifest = json.loads((mdir / "manifest.json").read_text())
    out = []
    for m in manifest["models"]:
        if m["name"] not in DIGITS:
            continue
        out.append(BenchModel(m["name"], mdir / m["file"], mdir / m["calib"], mdir / m["val"], "digits",
                              256, None))
    missing = [str(p) for b in out for p in (b.path, b.calib, b.eval) if not p.exists()]
    if missing or not out:
        raise BenchError(f"digits models/data missing ({', '.join(missing) or 'manifest lists none'}); "
                         "run `python tools/make_models.py`")
    return out


def efficientnet_models() -> list[BenchModel]:
    c = cache_dir()
    b = BenchModel("efficientnet_lite0", c / "efficientnet_lite0.onnx", c / "photos_calib.npz",
                   c / "photos_eval.npz", "efficientnet", 256, 512)
    missing = [p.name for p in (b.path, b.calib, b.eval) if not p.exists()]
    if missing:
        raise BenchError(f"EfficientNet-Lite0 files not found in {c} ({', '.join(missing)}); build them with\n"
                         f"    {MAKE_EFFNET}\n(needs `pip install -e .[bench]`; "
                         "set $ONNXPTQ_CACHE to use another directory)")
    return [b]


# zoo architectures for the low-bit rows beside EfficientNet-Lite0 (issue 18: "at least two other models"): a plain
# CNN, a depthwise net and a transformer, random weights (tools/zoo.py), fed the same real-photo crops
ZOO_BENCH = ("resnet18", "mobilenetv2_050", "vit_tiny_patch16_224")


def zoo_models() -> list[BenchModel]:
    """The ``ZOO_BENCH`` models, exported once by tools/zoo.py (needs timm: ``pip install -e .[zoo]``), with the
    EfficientNet-Lite0 photo crops (224 x 224, ImageNet-normalized like the zoo's own crops) as their data."""
    from tools import zoo

    effnet = efficientnet_models()[0]  # checks the photo files and says how to build them
    known = {m.name: m for m in zoo.MODELS}
    out = []
    for name in ZOO_BENCH:
        try:
            path = zoo.export(known[name])
        except ImportError as e:
            raise BenchError(f"zoo model {name} needs {e.name or 'timm'} (`pip install -e .[zoo]`)") from None
        out.append(BenchModel(name, path, effnet.calib, effnet.eval, "zoo", effnet.default_calib,
                              effnet.default_eval))
    return out


GROUPS = {"digits": digits_models, "efficientnet": efficientnet_models, "zoo": zoo_models}
ALL_GROUPS = ("digits", "efficientnet")  # what --models all means: the zoo group is asked for by name


def select_groups(which: str) -> dict[str, list[BenchModel]]:
    names = list(ALL_GROUPS) if which == "all" else [which]
    return {g: GROUPS[g]() for g in names}  # resolves (and checks) every group before any work


def input_specs(model_path: Path) -> dict[str, tuple]:
    """Graph input name -> shape (-1 for symbolic/unknown dims), initializers excluded."""
    return model_input_specs(onnx.load(str(model_path), load_external_data=False))


def load_data(path: Path, model_path: Path, limit: int | None) -> Dataset:
    ds = load_dataset(path, input_specs(model_path), limit)
    # take() slices views: copy so the (possibly much larger) full file's arrays are freed
    ds.inputs = {k: v.copy() if v.base is not None else v for k, v in ds.inputs.items()}
    if limit and len(ds) < limit:
        print(f"note: {path.name} holds {len(ds)} samples (< {limit} requested)", file=sys.stderr)
    return ds


def file_size(path: Path | str) -> int:
    return os.path.getsize(path)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}" if n < 10 else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------------------------ quantizers


@dataclass
class Row:
    """One quantized model (or the float reference) with its metrics."""

    quantizer: str  # "float", "onnxruntime", "onnxptq"
    config: str
    file_bytes: int | None = None
    quant_s: float | None = None  # wall time of the quantize call(s)
    timings: dict[str, float] = field(default_factory=dict)  # breakdown
    fid: Fidelity | None = None
    float_accuracy: float | None = None  # float row only
    error: str | None = None
    notes: str = ""
    unfused_sqnr_db: float | None = None  # SQNR with ORT graph optimizations off (no integer kernels)
    weight_bytes: float | None = None  # quantized weights at bits / 8 per weight, no biases (mixed precision)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fid"] = self.fid.to_dict() if self.fid else None
        return d


class ArrayReader:
    """CalibrationDataReader over in-memory arrays, ``batch`` samples per item (rewindable)."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = ORT_CALIB_BATCH) -> None:
        self.inputs, self.batch = inputs, batch
        self.n = len(next(iter(inputs.values())))
        self.pos = 0

    def get_next(self):
        if self.pos >= self.n:
            return None
        i, self.pos = self.pos, self.pos + self.batch
        return {k: np.ascontiguousarray(v[i:i + self.batch]) for k, v in self.inputs.items()}

    def rewind(self) -> None:
        self.pos = 0

    def __iter__(self):
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def ort_preprocess(model_path: Path, work: Path) -> tuple[Path, float, str]:
    """``quant_pre_process`` (symbolic shape inference + ORT graph optimization, which folds BN, +
    ONNX shape inference), the flow onnxruntime's docs recommend before quantize_static. Falls back
    to the original model (then skip_optimization, then the raw model) if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / f"{model_path.stem}.ort-pre.onnx"
    model_path = Path(model_path).resolve()
    with contextlib.chdir(work):  # its symbolic shape inference writes temporary files into the working folder
        return _ort_preprocess(quant_pre_process, model_path, out.resolve())


def _ort_preprocess(quant_pre_process, model_path: Path, out: Path) -> tuple[Path, float, str]:
    t0 = time.perf_counter()
    try:
        quant_pre_process(str(model_path), str(out))
        return out, time.perf_counter() - t0, "quant_pre_process"
    except Exception as e:  # noqa: BLE001 - any failure: try a lighter pre-process
        first = f"{type(e).__name__}: {str(e)[:120]}"
    try:
        quant_pre_process(str(model_path), str(out), skip_symbolic_shape=True)
        return out, time.perf_counter() - t0, f"quant_pre_process(skip_symbolic_shape) [full failed: {first}]"
    except Exception as e:  # noqa: BLE001
        return model_path, time.perf_counter() - t0, (f"no pre-process [quant_pre_process failed: {first}; "
                                                       f"{type(e).__name__}: {str(e)[:120]}]")


ORT_CONFIGS = (  # (label, calibrate method, activation type, weight type, reduce_range)
    # the two rows asked for: QUInt8 activations / QInt8 weights, per-channel, QDQ
    ("MinMax U8/S8", "MinMax", "QUInt8", "QInt8", False),
    ("Percentile U8/S8", "Percentile", "QUInt8", "QInt8", False),
    # for reference: the same ranges (calibration cache) with reduce_range=True (7-bit weights; what
    # quantize_static's docstring recommends on x86 without VNNI) and with QInt8 activations (the
    # signature default of quantize_static in onnxruntime >= 1.11)
    ("MinMax U8/S8 reduce_range", "MinMax", "QUInt8", "QInt8", True),
    ("Percentile U8/S8 reduce_range", "Percentile", "QUInt8", "QInt8", True),
    ("MinMax S8/S8", "MinMax", "QInt8", "QInt8", False),
    ("Percentile S8/S8", "Percentile", "QInt8", "QInt8", False),
)


def run_ort_static(pre_path: Path, pre_s: float, calib: Dataset, out: Path, label: str, method: str,
                   act: str, weight: str, reduce_range: bool, cache: Path | None = None) -> Row:
    """onnxruntime quantize_static: QDQ, per-channel weights. ``cache``: calibration cache file; when
    it exists the ranges are read from it (calibration skipped), else they are computed and saved."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cached = cache is not None and cache.exists()
    row = Row("onnxruntime", label + " per-channel")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the Percentile calibrator prints progress
        quantize_static(str(pre_path), str(out), ArrayReader(calib.inputs), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=reduce_range, activation_type=getattr(QuantType, act),
                        weight_type=getattr(QuantType, weight), calibrate_method=getattr(CalibrationMethod, method),
                        calibration_cache_path=str(cache) if cache is not None else None)
    q_s = time.perf_counter() - t0
    row.timings = {"pre-process": pre_s, "quantize_static": q_s}
    if cached:
        row.quant_s = None  # calibration was skipped: not comparable
        row.notes = "cached ranges"
    else:
        row.quant_s = pre_s + q_s
    row.file_bytes = file_size(out)
    return row


ONNXPTQ_CONFIGS = (  # (label, QuantConfig overrides); method rtn = the default
    ("W8A8 float", dict(w_bits=8, a_bits=8, scale="float")),
    ("W8A8 po2", dict(w_bits=8, a_bits=8, scale="po2")),
    ("W4A8 float", dict(w_bits=4, a_bits=8, scale="float")),
    ("W4A8 po2", dict(w_bits=4, a_bits=8, scale="po2")),
)


def run_onnxptq(model_path: Path, calib: Dataset, out: Path, label: str, **overrides) -> Row:
    from onnxptq.api import quantize

    t0 = time.perf_counter()
    res = quantize(model_path, calib, output=out, force=True, num_calib=len(calib), progress=False, **overrides)
    wall = time.perf_counter() - t0
    cfg = res.config
    row = Row("onnxptq", f"{cfg.method} {label}")
    row.quant_s = wall
    row.timings = dict(res.timings)
    row.file_bytes = file_size(out)
    s = res.summary()
    row.notes = (f"w {'/'.join(f'{b}b x{n}' for b, n in s['weight_bits'].items())}, "
                 f"a {'/'.join(f'{b}b x{n}' for b, n in s['activation_bits'].items())}")
    return row


def run_ort_unfused(model_path: Path, inputs: dict[str, np.ndarray], batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Like ``run_onnxruntime`` but with graph optimizations off: QDQ models then run as
    DequantizeLinear -> float op -> QuantizeLinear (no fused integer kernels), which isolates the
    quantization grid from integer-kernel effects (e.g. u8*s8 pair saturation on AVX2 without VNNI)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    fixed = any(isinstance(i.shape[0], int) and i.shape[0] == 1 for i in sess.get_inputs())
    bs = 1 if fixed else batch_size
    n = len(next(iter(inputs.values())))
    return np.concatenate([sess.run(None, {k: v[i:i + bs] for k, v in inputs.items()})[0] for i in range(0, n, bs)])


def measure(row: Row, quant_path: Path, eval_ds: Dataset, float_out: np.ndarray, unfused: bool = True) -> None:
    q = run_onnxruntime(str(quant_path), eval_ds.inputs, EVAL_BATCH)
    row.fid = fidelity(float_out, q, eval_ds.labels)
    if unfused:
        row.unfused_sqnr_db = fidelity(float_out, run_ort_unfused(quant_path, eval_ds.inputs), None).sqnr_db


def guarded(make_row, label: tuple[str, str]) -> Row:
    """Run one quantizer; a failure becomes a table row with the error instead of ending the run."""
    try:
        return make_row()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        return Row(*label, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")


# ------------------------------------------------------------------------------------ reporting


def _f(v, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else "nan"
    return format(v, fmt)


def _timing_text(row: Row) -> str:
    return " + ".join(f"{k} {v:.2f}" for k, v in row.timings.items())


def markdown_table(rows: list[Row], labels: bool, float_bytes: int) -> str:
    head = ["quantizer", "config", "SQNR dB", "top-1 agree", "top-5 contain", "KL"]
    head += ["accuracy"] if labels else []
    head += ["SQNR dB unfused", "quant s", "time breakdown s", "size", "x float"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r.error:
            cells = [r.quantizer, r.config, f"**failed**: {r.error}"] + [""] * (len(head) - 3)
        else:
            fid = r.fid
            cells = [r.quantizer, r.config + (f" ({r.notes})" if r.notes else "")]
            cells += [_f(fid and fid.sqnr_db, ".2f"), _f(fid and fid.top1_agreement, ".4f"),
                      _f(fid and fid.top5_containment, ".4f"), _f(fid and fid.kl, ".5f")]
            if labels:
                acc = r.float_accuracy if r.quantizer == "float" else (fid.quant_accuracy if fid else None)
                cells.append(_f(acc, ".4f"))
            cells += [_f(r.unfused_sqnr_db, ".2f"), _f(r.quant_s, ".2f"), _timing_text(r) or "-",
                      human_size(r.file_bytes) if r.file_bytes is not None else "-",
                      _f(r.file_bytes / float_bytes if r.file_bytes and float_bytes else None, ".3f")]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Replace the text between ``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` in
    ``path`` (appended at the end if absent; the file is created with ``title`` if missing)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else (
        f"{title}\n\nGenerated by `tools/bench.py`: each section between `<!-- bench:NAME:begin/end -->` "
        "markers is regenerated in place by its benchmark; text outside the markers is kept.\n")
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end):]
    elif i >= 0 or j >= 0:
        raise BenchError(f"{path}: unbalanced markers for section {name!r}; fix the file by hand")
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ foundation


def bench_model(bm: BenchModel, num_calib: int, num_eval: int | None, work: Path) -> dict:
    """All foundation rows for one model."""
    print(f"\n== {bm.name}: {bm.path}", flush=True)
    t_model = time.perf_counter()
    calib = load_data(bm.calib, bm.path, num_calib)
    eval_ds = load_data(bm.eval, bm.path, num_eval)
    print(f"   calibration {len(calib)} samples from {bm.calib.name}, evaluation {len(eval_ds)} from {bm.eval.name}"
          f"{' (labels)' if eval_ds.labels is not None else ' (no labels)'}", flush=True)
    float_bytes = file_size(bm.path)
    float_out = run_onnxruntime(str(bm.path), eval_ds.inputs, EVAL_BATCH)
    ref = Row("float", "fp32 reference", file_bytes=float_bytes)
    ref.fid = fidelity(float_out, float_out, eval_ds.labels)
    ref.float_accuracy = ref.fid.float_accuracy
    ref.fid = None
    rows = [ref]

    pre_path, pre_s, pre_note = ort_preprocess(bm.path, work)
    print(f"   onnxruntime pre-process: {pre_note} ({pre_s:.2f} s)", flush=True)
    jobs = []
    caches = {m: work / f"{bm.name}.ort-{m.lower()}.calib-cache.json" for m in {c[1] for c in ORT_CONFIGS}}
    for c in caches.values():
        c.unlink(missing_ok=True)  # left over from an earlier run in --keep DIR: recalibrate
    for label, method, act, weight, rr in ORT_CONFIGS:
        out = work / f"{bm.name}.ort-{label.replace(' ', '-').replace('/', '').lower()}.onnx"
        cache = caches[method]
        jobs.append((out, lambda a=(label, method, act, weight, rr), o=out, c=cache:
                     run_ort_static(pre_path, pre_s, calib, o, *a, cache=c), ("onnxruntime", label)))
    for label, ov in ONNXPTQ_CONFIGS:
        out = work / f"{bm.name}.onnxptq-{label.replace(' ', '-').lower()}.onnx"
        jobs.append((out, lambda lb=label, o=out, kw=ov: run_onnxptq(bm.path, calib, o, lb, **kw),
                     ("onnxptq", f"rtn {label}")))
    for out, make, label in jobs:
        print(f"   {label[0]} {label[1]} ...", end=" ", flush=True)
        row = guarded(make, label)
        if not row.error:
            try:
                measure(row, out, eval_ds, float_out)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                row.error = f"evaluation failed: {type(e).__name__}: {str(e)[:160]}"
        print(f"{'FAILED ' + row.error if row.error else f'SQNR {row.fid.sqnr_db:.2f} dB (unfused {row.unfused_sqnr_db:.2f})'} "
              f"(quantize {row.quant_s or 0:.1f} s)", flush=True)
        rows.append(row)
    return {"model": bm.name, "path": str(bm.path), "calib": f"{bm.calib.name} ({len(calib)} samples)",
            "eval": f"{bm.eval.name} ({len(eval_ds)} samples{', labels' if eval_ds.labels is not None else ''})",
            "labels": eval_ds.labels is not None, "float_bytes": float_bytes, "ort_preprocess": pre_note,
            "rows": rows, "seconds": time.perf_counter() - t_model}


FOUNDATION_NOTES = """\
- **onnxruntime**: `quant_pre_process` (symbolic shape inference, ORT graph optimizations incl. BN folding,
  ONNX shape inference; its time is counted in both ORT rows), then `quantize_static(quant_format=QDQ,
  per_channel=True, activation_type=QUInt8, weight_type=QInt8, calibrate_method=MinMax|Percentile)`, other
  options at their defaults (Percentile: 99.999th percentile, 2048 bins); CalibrationDataReader over the same
  calibration arrays, {ort_batch} samples per item.
- **onnxptq**: `onnxptq.quantize(model, calib, w_bits=..., a_bits=8, scale=float|po2, num_calib=N)`, all other
  options at their defaults (method `rtn`, MSE weight/activation scales, po2 by search, first/last layer at
  8 bits); `time breakdown` = its internal timings (import / calibrate / export); `quant s` = the whole call
  incl. writing the file.
- **Metrics**: every model (float and quantized) runs in onnxruntime (CPU EP, default session options, batch
  {eval_batch}) on the evaluation samples; `onnxptq.eval.fidelity` compares the first output (logits) with the
  float model's: output SQNR = 10 log10(sum y_f^2 / sum (y_f - y_q)^2), top-1 agreement, top-5 containment
  (float top-1 among the quantized top-5), KL(float || quant) of the softmaxes; `accuracy` on labelled data.
  `size` = the ONNX file, `x float` = size / float model file size.
- **SQNR dB unfused**: the same model run with onnxruntime graph optimizations off
  (`ORT_DISABLE_ALL`: QDQ executes as DequantizeLinear -> float op -> QuantizeLinear, no fused integer
  kernels). A large gap to `SQNR dB` means the integer kernels lose accuracy, e.g. u8 x s8 pair
  saturation (VPMADDUBSW) on x86 without VNNI, which `reduce_range` or s8 x s8 / u8 x u8 avoid.
- The first two onnxruntime rows are the configurations under comparison (QUInt8 activations, QInt8
  weights, reduce_range off). The other onnxruntime rows reuse their calibration ranges (calibration
  cache, so no quant time is given) with `reduce_range=True` (7-bit weights, which quantize_static's
  docstring recommends on x86 without VNNI) or QInt8 activations (quantize_static's signature default).
- Times are wall-clock on a machine shared with other jobs (load average at start/end given above):
  compare them within a run only, roughly."""


@contextlib.contextmanager
def work_dir(keep: str | None, prefix: str):
    """The benchmark's scratch folder: ``--keep DIR`` (created, kept) or a temporary one removed afterwards."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def cmd_foundation(args) -> int:
    groups = select_groups(args.models)
    machine = machine_info()
    load_start = os.getloadavg()
    cmd = command_line()
    results: dict[str, list[dict]] = {}
    t_all = time.perf_counter()
    with work_dir(args.keep, "onnxptq-bench-") as work:
        for group, models in groups.items():
            results[group] = []
            for bm in models:
                nc = args.num_calib or bm.default_calib
                ne = args.num_eval or bm.default_eval
                results[group].append(bench_model(bm, nc, ne, work))
    total = time.perf_counter() - t_all
    load = f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_start)} at start, " \
           f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} at end"

    titles = {"digits": "digits CNNs (ResNet / MobileNetV2 / RegNetX)", "efficientnet": "EfficientNet-Lite0"}
    for group, res in results.items():
        secs = sum(r["seconds"] for r in res)
        parts = [f"## Foundation: onnxptq RTN vs onnxruntime quantize_static, {titles[group]}", "",
                 f"Reproduce: `{cmd}`", "",
                 f"Machine: {machine_line(machine)}; {load}. This group took {secs:.0f} s.", "",
                 FOUNDATION_NOTES.format(ort_batch=ORT_CALIB_BATCH, eval_batch=EVAL_BATCH), ""]
        for r in res:
            parts += [f"### {r['model']}", "",
                      f"Calibration: {r['calib']}; evaluation: {r['eval']}; ORT pre-process: {r['ort_preprocess']}.",
                      "", markdown_table(r["rows"], r["labels"], r["float_bytes"]), ""]
        body = "\n".join(parts)
        print("\n" + body)
        if args.out:
            write_section(Path(args.out), f"foundation-{group}", body)
    if args.out:
        print(f"\nwrote sections {', '.join(f'foundation-{g}' for g in results)} of {args.out}")
    if args.json:
        payload = {"benchmark": "foundation", "command": cmd, "machine": machine, "seconds": total,
                   "groups": {g: [{**{k: v for k, v in r.items() if k != "rows"},
                                   "rows": [row.to_dict() for row in r["rows"]]} for r in res]
                              for g, res in results.items()}}
        Path(args.json).write_text(json.dumps(payload, indent=1, default=float) + "\n")
        print(f"wrote {args.json}")
    print(f"total {total:.1f} s")
    failed = [f"{r['model']}: {row.quantizer} {row.config}" for res in results.values() for r in res
              for row in r["rows"] if row.error]
    if failed:
        print("failed rows:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------ CLI


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return v


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"),
                   help="markdown file whose sections are regenerated ('' to skip; default docs/benchmarks.md)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON to this file")
    p.add_argument("--keep", default=None, help="keep the quantized models in this directory (default: a temp dir)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True)
    f = sub.add_parser("foundation", help="onnxptq RTN (W8A8/W4A8, float/po2) vs onnxruntime quantize_static")
    f.add_argument("--models", choices=[*GROUPS, "all"], default="all")
    f.add_argument("--num-calib", type=_positive, default=None,
                   help="calibration samples (default 256 for every model)")
    f.add_argument("--num-eval", type=_positive, default=None,
                   help="evaluation samples (default: digits all 447, EfficientNet 512)")
    add_common(f)
    f.set_defaults(func=cmd_foundation)
    import bench_recon  # noqa: E402 - tools/bench_recon.py: the reconstruction benchmarks (issue 4)

    bench_recon.add_parser(sub)
    import bench_deploy  # noqa: E402 - tools/bench_deploy.py: latency and integer kernels in real runtimes

    bench_deploy.add_parser(sub)
    sub.add_parser("memory", help="peak resident memory under --max-memory (tools/bench_memory.py; its own options)")
    sub.add_parser("integer", help="integer ONNX: level-1 parity, fidelity, runtime/ speed (tools/bench_integer.py; "
                                   "its own options)")
    return p


DELEGATED = {"memory": "bench_memory", "integer": "bench_integer"}  # subcommands with their own option parsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
