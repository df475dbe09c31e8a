"""``onnxptq`` command line: a thin shell over ``onnxptq.api``.

User mistakes (missing files, bad data, bad options) print ``error: ...`` and exit 2 with no
traceback; Ctrl-C exits 130 and leaves no partial output file.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from . import __version__
from .config import (FORMATS, GRANULARITIES, INT_KERNELS, INT_ROUNDINGS, METHODS, PO2_METHODS, PRESETS, ROUNDINGS,
                     SCALE_KINDS,
                     SCALE_METHODS, TAU_UNITS, MIXED, WEIGHT_GRIDS, QuantConfig)
from .targets import TARGETS
from .mixed.budget import parse_count, parse_size
from .errors import ConfigError, OnnxPtqError


def _shape_arg(text: str) -> dict[str, list[int]]:
    """--input-shape name:1,3,224,224 (several separated by ';')."""
    out = {}
    for part in text.split(";"):
        if ":" not in part:
            raise argparse.ArgumentTypeError(f"expected NAME:D0,D1,..., got {part!r}")
        name, dims = part.rsplit(":", 1)
        try:
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"dims must be integers: {dims!r}") from None
    return out


def _bits_or_same(text: str) -> int | None:
    return None if text in ("same", "none") else int(text)


def _bits_list(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated bit widths like 3,4,5,6; got {text!r}") from None


def _parsed(fn):
    def parse(text: str) -> float:
        try:
            return fn(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,8; got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406; got {text!r}") from None


def add_image_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image folders", "preprocessing when the data is a folder of jpg/png images")
    g.add_argument("--preprocess", default=None, help="JSON (or YAML) spec: resize, crop, mean, std, scale, layout, "
                                                      "channels (flags below override its keys)")
    g.add_argument("--resize", type=int, default=None, help="shorter side before the crop (default crop*256/224)")
    g.add_argument("--crop", type=int, default=None, help="center crop (default: the model input's size)")
    g.add_argument("--mean", type=_floats, default=None, help="per-channel mean after /scale, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats, default=None, help="per-channel std, e.g. 0.229,0.224,0.225")
    g.add_argument("--pixel-scale", type=float, default=None, dest="pixel_scale", help="divide pixels by this first "
                                                                                        "(default 255)")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), default=None)
    g.add_argument("--channels", choices=("RGB", "BGR", "GRAY"), default=None)


def preprocess_from_args(args):
    """None, or an ``images.Preprocess`` from --preprocess and the individual flags."""
    from .images import Preprocess, load_preprocess

    flags = {"resize": args.resize, "crop": args.crop, "mean": args.mean, "std": args.std,
             "scale": args.pixel_scale, "layout": args.layout, "channels": args.channels}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.preprocess is None and not flags:
        return None
    base = load_preprocess(args.preprocess).to_dict() if args.preprocess else {}
    return Preprocess(**{**base, **flags})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnxptq", description="ONNX post-training quantization")
    p.add_argument("--version", action="version", version=f"onnxptq {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (warnings from simplification, ...)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="layers, blocks, activation quant points, BN folding")
    s.add_argument("model")
    s.add_argument("--granularity", choices=GRANULARITIES, default="block")
    s.add_argument("--input-shape", type=_shape_arg, default=None, help="NAME:D0,D1,... (batch stays dynamic)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    d = QuantConfig()
    q = sub.add_parser("quantize", help="quantize a float ONNX model with calibration data")
    q.add_argument("model")
    q.add_argument("--calib", required=True, help=".npz (arrays keyed by input name), .npy, or a folder of images "
                                                  "(see the image-folder options)")
    q.add_argument("-o", "--output", required=True, help="where to write the quantized ONNX model")
    q.add_argument("--force", action="store_true", help="replace an existing output file")
    q.add_argument("--no-kernel-check", action="store_true",
                   help="skip the check for layers the target's runtime runs on float kernels")
    q.add_argument("--report", default=None,
                   help="also write a per-layer report, REPORT.md or REPORT.html, with PNG plots beside it")
    q.add_argument("--w-bits", type=int, default=d.w_bits)
    q.add_argument("--a-bits", type=int, default=d.a_bits)
    q.add_argument("--first-last-bits", type=_bits_or_same, default=d.first_last_bits,
                   help="bits of the first/last layer weights and inputs (default 8; 'same' = like the rest)")
    q.add_argument("--scale", choices=SCALE_KINDS, default=d.scale, help="float scales or powers of two")
    q.add_argument("--po2-method", choices=PO2_METHODS, default=d.po2_method)
    q.add_argument("--po2-output-points", type=int, default=d.po2_output_points,
                   help="po2: the first N activation quant points (graph input first) choose their scale and zero "
                        "point by model-output error on 16 calibration samples (default 1; 0 = L_p search only)")
    q.add_argument("--w-scale-method", choices=SCALE_METHODS, default=d.w_scale_method)
    q.add_argument("--a-scale-method", choices=SCALE_METHODS, default=d.a_scale_method)
    q.add_argument("--percentile", type=float, default=d.percentile)
    q.add_argument("--w-asymmetric", action="store_true", help="asymmetric per-channel weights")
    q.add_argument("--a-symmetric", action="store_true",
                   help="symmetric grid for signed activations (default: asymmetric with a zero point)")
    q.add_argument("--no-bias-correction", action="store_true", help="keep the float biases as they are")
    q.add_argument("--method", choices=METHODS, default=d.method,
                   help="rtn (calibration only) | adaround | brecq | qdrop | rapq (needs --scale po2) | "
                        "attention (Attention Round: weights may round to any grid point) | "
                        "bitsplit (Bit-Split & Stitching, closed form per layer)")
    q.add_argument("--weight-grid", choices=WEIGHT_GRIDS, default=d.weight_grid,
                   help="bitsplit: uniform, or log (weights 0 / +-2^k times a channel scale, 2-4 bits)")
    q.add_argument("--ecaq", action="store_true",
                   help="per-channel activation scales folded into the consuming convs (Bit-Split ECAQ; rtn/bitsplit)")
    q.add_argument("--bitsplit-points", type=int, default=d.bitsplit_points,
                   help="bitsplit: sampled input rows per layer to fit (default 12000, as the paper; a fifth more are held out)")
    q.add_argument("--mixed", choices=MIXED, default=None,
                   help="per-layer weight bits: coding-length (Attention Round Alg. 1, from the weights) or "
                        "search (BRECQ Alg. 2: sensitivities + genetic search under --budget-size/--budget-bops)")
    q.add_argument("--bits", type=_bits_list, default=None, dest="mixed_bits",
                   help="candidate bits of --mixed (default coding-length 3,4,5,6; search 2,4,8)")
    q.add_argument("--budget-size", type=_parsed(parse_size), default=None,
                   help="--mixed search: quantized weight size of the model, e.g. 1.5MB, 800kB, 1.2MiB")
    q.add_argument("--budget-bops", type=_parsed(parse_count), default=None,
                   help="--mixed search: bit-operations per sample (MACs x b_w x b_a), e.g. 20G")
    q.add_argument("--coding-eps", type=float, default=d.coding_eps, help="eps of the coding length (Eq. 12)")
    q.add_argument("--rounding", choices=ROUNDINGS, default=d.rounding,
                   help="weight rounding of --method rtn: nearest | floor | ceil | stochastic (baselines)")
    q.add_argument("--attn-tau", type=float, default=d.attn_tau, help="Attention Round tau (Eq. 1-6; default 0.5)")
    q.add_argument("--attn-tau-unit", choices=TAU_UNITS, default=d.attn_tau_unit,
                   help="tau in grid steps (default) or in weight units (Eq. 3's literal tau/s)")
    q.add_argument("--granularity", choices=GRANULARITIES, default=d.granularity,
                   help="reconstruction regions of brecq/qdrop (adaround is layer-wise)")
    q.add_argument("--loss", default=None,
                   help="reconstruction loss: mse | fisher (BRECQ Eq. 11) | lp (RAPQ BN-based L-P; default for rapq)")
    q.add_argument("--preset", choices=PRESETS, default=d.preset,
                   help="fast (2-core CPU) | full (BRECQ: 1024 samples, batch 32, 20k iterations per region)")
    q.add_argument("--iters", type=int, default=None, help="rounding (qdrop: joint) iterations per region")
    q.add_argument("--act-iters", type=int, default=None, help="step-size iterations per region after rounding (brecq)")
    q.add_argument("--recon-batch-size", type=int, default=None, help="minibatch of the reconstruction")
    q.add_argument("--lr", type=float, default=None, help="Adam learning rate of the rounding variables")
    q.add_argument("--act-lr", type=float, default=None, help="Adam learning rate of the activation steps")
    q.add_argument("--round-lambda", type=float, default=None,
                   help="AdaRound regularizer weight (default: the preset's, fast 1.0, full 0.01)")
    q.add_argument("--drop-prob", type=float, default=d.drop_prob, help="qdrop: probability of a float activation")
    q.add_argument("--fisher-damping", type=float, default=d.fisher_damping)
    q.add_argument("--lp-alpha", type=float, default=None, help="RAPQ Eq. 19 alpha (default: the preset's)")
    q.add_argument("--lp-beta", type=float, default=d.lp_beta, help="RAPQ Eq. 19 beta")
    q.add_argument("--no-recon-guard", action="store_true",
                   help="keep a region's reconstruction even when its loss ends above the calibrated (RTN) loss")
    q.add_argument("--checkpoint-dir", default=None, help="checkpoint after every region (default OUTPUT.recon)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted reconstruction from its checkpoint")
    q.add_argument("--cache-budget-mb", type=float, default=d.cache_budget_mb,
                   help="RAM for cached activations; more spills to np.memmap files")
    q.add_argument("--max-memory", type=_parsed(parse_size), default=None,
                   help="keep the process's resident memory under this during reconstruction, e.g. 6GB "
                        "(cached activations spill to disk beyond what is left)")
    q.add_argument("--cache-dir", default=None, help="directory of spilled activations (default: system temp)")
    q.add_argument("--format", choices=FORMATS, default=d.format,
                   help="qdq: QuantizeLinear/DequantizeLinear ONNX; int: shift-based integer ONNX (needs --scale po2)")
    q.add_argument("--int-rounding", choices=INT_ROUNDINGS, default=d.int_rounding,
                   help="requantization rounding of --format int: rne (matches QDQ/onnxruntime) or half_up")
    q.add_argument("--int-kernels", choices=INT_KERNELS, default=None,
                   help="--format int kernels: portable (exact on every x86) or vnni (u8 x s8, faster, exact on "
                        "AVX512-VNNI / AVX-VNNI CPUs and ARM only); default: the target's (vnni for onnxruntime "
                        "and qnn, portable for onnxruntime-avx2 and generic)")
    q.add_argument("--target", choices=list(TARGETS), default=d.target,
                   help="deployment target profile: containers, reduce range, Q/DQ placement (" +
                        "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values()) + ")")
    q.add_argument("--opset", type=int, default=d.opset)
    add_image_args(q)
    q.add_argument("--num-calib", type=int, default=None,
                   help="calibration samples (default 256; learned methods: the preset's, fast 256, full 1024)")
    q.add_argument("--batch-size", type=int, default=d.batch_size)
    q.add_argument("--seed", type=int, default=d.seed)
    q.add_argument("--device", default=d.device)
    q.add_argument("--skip-nodes", default="", help="comma-separated node names to leave in float")
    q.add_argument("--input-shape", type=_shape_arg, default=None, help="NAME:D0,D1,... (batch stays dynamic)")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")

    e = sub.add_parser("eval", help="accuracy (if labels) and fidelity of a quantized model vs its float model")
    e.add_argument("float_model")
    e.add_argument("quant_model")
    e.add_argument("--data", required=True, help=".npz with the model input(s) and optional 'labels', or a folder "
                                                 "of images")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--limit", type=int, default=None, help="use the first N samples")
    e.add_argument("--json", action="store_true")
    add_image_args(e)

    r = sub.add_parser("run", help="run a model with the NumPy runtime (runtime/) or onnxruntime")
    r.add_argument("model")
    r.add_argument("--input", required=True, help=".npy (single-input models) or .npz keyed by input name")
    r.add_argument("--engine", choices=("runtime", "onnxruntime"), default="runtime")
    r.add_argument("-o", "--output", default=None, help="write the outputs to this .npz")
    r.add_argument("--force", action="store_true", help="replace an existing output file")

    v = sub.add_parser("verify", help="integer model: simulation vs onnxruntime vs runtime/ vs onnx.reference "
                                      "(level 1); QDQ model: onnxruntime vs op-by-op execution (level 2)")
    v.add_argument("model")
    v.add_argument("--data", required=True, help=".npz / .npy inputs")
    v.add_argument("--limit", type=int, default=64, help="use the first N samples (default 64)")
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--reference-samples", type=int, default=2,
                   help="samples also run through onnx.reference (slow, pure Python); 0 to skip it")
    v.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="latency in onnxruntime and OpenVINO vs the float model; layers left on float "
                                     "kernels")
    b.add_argument("models", nargs="+", help="the float model first, then the quantized models")
    b.add_argument("--batch", type=_ints, default=[1, 8], help="batch sizes, comma-separated (default 1,8)")
    b.add_argument("--threads", type=int, default=1, help="intra-op / inference threads (default 1)")
    b.add_argument("--runs", type=int, default=20, help="timed runs per model and batch (default 20)")
    b.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--runtime", choices=("onnxruntime", "openvino", "all"), default="all")
    b.add_argument("--json", action="store_true", help="machine-readable output")

    gd = sub.add_parser("golden", help="dump every integer tensor of one input (npy + raw binary + JSON index)")
    gd.add_argument("model")
    gd.add_argument("--input", required=True, help=".npy / .npz; the first sample is used unless --batch N")
    gd.add_argument("--batch", type=int, default=1, help="number of samples to run (default 1)")
    gd.add_argument("-o", "--output", required=True, help="output directory")
    gd.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    return p


def _load_model(path: str):
    from .graph.load import read_model

    return read_model(path)


def _inputs_for(model, path: str, limit: int | None) -> dict:
    """Arrays for the model's graph inputs from .npy (single-input models) or .npz (keyed by name);
    a single sample may omit the sample axis."""
    from .data import load_dataset, model_input_specs

    return load_dataset(path, model_input_specs(model), limit, single_sample=True).inputs


def cmd_run(args) -> int:
    import numpy as np

    from .api import check_output_path
    from .verify.integer import make_engine

    model = _load_model(args.model)
    out_path = check_output_path(args.output, args.model, args.force) if args.output else None
    feeds = _inputs_for(model, args.input, None)
    names = [o.name for o in model.graph.output]
    res = make_engine(args.engine, model, names)(feeds)
    outs = {k: res[k] for k in names}
    for k, v in outs.items():
        line = f"{k}: shape {list(v.shape)} dtype {v.dtype}"
        if v.ndim == 2 and v.dtype.kind == "f":
            line += "  argmax " + str(v.argmax(1)[:16].tolist())
        print(line)
    if out_path is not None:
        from .atomic import atomic_path

        with atomic_path(out_path, ".npz") as tmp:
            np.savez(tmp, **outs)
        print(f"wrote {out_path}")
    return 0


def cmd_verify(args) -> int:
    from .verify.qdq import qdq_file_parity
    from .verify.integer import is_integer_model, verify_integer

    model = _load_model(args.model)
    feeds = _inputs_for(model, args.data, args.limit)
    if is_integer_model(model):
        rep = verify_integer(model, feeds, args.batch_size, args.reference_samples,
                             progress=not args.json)
        print(json.dumps(rep.to_dict(), indent=1) if args.json else rep.format())
        return 0 if rep.ok else 1
    rows = qdq_file_parity(model, feeds, args.batch_size)
    if args.json:
        print(json.dumps({"level": 2, "tensors": [r.__dict__ for r in rows]}, indent=1))
    else:
        n = sum(r.elements for r in rows)
        exact = sum(r.exact_rate * r.elements for r in rows) / max(n, 1)
        worst = max((r.max_lsb for r in rows), default=0)
        print(f"level-2 parity (QDQ): onnxruntime vs op-by-op execution over {len(rows)} quantized tensors, "
              f"{len(next(iter(feeds.values())))} samples: exact {exact:.4%}, max |delta| {worst} LSB")
        for r in rows:
            if r.max_lsb:
                print(f"  {r.tensor}: exact {r.exact_rate:.4%}, max {r.max_lsb} LSB, histogram {r.histogram}")
    return 0


def cmd_golden(args) -> int:
    from .verify.golden import dump_golden

    model = _load_model(args.model)
    feeds = _inputs_for(model, args.input, args.batch)
    index = dump_golden(model, feeds, args.output, args.force)
    print(f"wrote {len(index['tensors'])} integer tensors to {args.output} (index.json, golden.bin, *.npy)")
    return 0


def cmd_inspect(args) -> int:
    from .api import inspect

    info = inspect(args.model, args.granularity, args.input_shape)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"model {info['model']}  opset {info['opset']}  simplifier {info['simplifier']}")
    print(f"inputs {info['inputs']}  outputs {info['outputs']}")
    print(f"BatchNorm folded: {len(info['batchnorm_folded'])}" +
          (f"  left unfolded: {info['batchnorm_unfolded']}" if info["batchnorm_unfolded"] else "") +
          f"  Identity/Dropout removed: {len(info['removed_nodes'])}")
    if info["float_layers"]:
        print(f"layers left in float (input not quantizable): {info['float_layers']}")
    print(f"\n{len(info['layers'])} quantizable layers")
    print(f"  {'#':>3} {'op':<6} {'weight':<18} {'grp':>4} {'act':<14} {'BN':<3} {'MACs':>12}  name")
    for k, x in enumerate(info["layers"]):
        print(f"  {k:>3} {x['op']:<6} {str(tuple(x['weight_shape'])):<18} {x['groups']:>4} {str(x['activation'] or '-'):<14} "
              f"{'yes' if x['bn_gamma'] else '-':<3} {x['macs']:>12}  {x['name']}")
    kinds: dict[str, int] = {}
    for q in info["quant_points"]:
        kinds[q["kind"]] = kinds.get(q["kind"], 0) + 1
    print(f"\n{len(info['quant_points'])} activation quant points: " + ", ".join(f"{v} {k}" for k, v in kinds.items()))
    print(f"\n{len(info['regions'])} regions at granularity '{info['granularity']}'")
    for r in info["regions"]:
        print(f"  {r['name']:<28} {len(r['layers']):>2} layers  {r['nodes']:>3} nodes  in={r['input']}  out={r['output']}")
    return 0


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def cmd_quantize(args) -> int:
    from .api import quantize

    cfg = QuantConfig(
        w_bits=args.w_bits, a_bits=args.a_bits, first_last_bits=args.first_last_bits, scale=args.scale,
        po2_method=args.po2_method, po2_output_points=args.po2_output_points, w_scale_method=args.w_scale_method, a_scale_method=args.a_scale_method,
        percentile=args.percentile, w_symmetric=not args.w_asymmetric, a_symmetric=args.a_symmetric, bias_correction=not args.no_bias_correction,
        method=args.method, granularity=args.granularity, loss=args.loss, preset=args.preset, iters=args.iters,
        act_iters=args.act_iters, recon_batch_size=args.recon_batch_size, lr=args.lr, act_lr=args.act_lr,
        round_lambda=args.round_lambda, drop_prob=args.drop_prob, fisher_damping=args.fisher_damping,
        recon_guard=not args.no_recon_guard, lp_alpha=args.lp_alpha, lp_beta=args.lp_beta, rounding=args.rounding,
        attn_tau=args.attn_tau, attn_tau_unit=args.attn_tau_unit, mixed=args.mixed, mixed_bits=args.mixed_bits,
        weight_grid=args.weight_grid, bitsplit_points=args.bitsplit_points, ecaq=args.ecaq,
        budget_size=args.budget_size, budget_bops=args.budget_bops, coding_eps=args.coding_eps,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, cache_budget_mb=args.cache_budget_mb,
        cache_dir=args.cache_dir, max_memory_mb=None if args.max_memory is None else args.max_memory / 2**20,
        num_calib=args.num_calib, batch_size=args.batch_size,
        seed=args.seed, device=args.device, skip_nodes=[s for s in args.skip_nodes.split(",") if s],
        input_shapes=args.input_shape or {}, format=args.format, int_rounding=args.int_rounding,
        int_kernels=args.int_kernels, target=args.target, opset=args.opset,
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    res = quantize(args.model, args.calib, cfg, args.output, force=args.force, report=args.report,
                   preprocess=preprocess_from_args(args), check_kernels=not args.no_kernel_check)
    s = res.summary()
    s["total_s"] = round(time.perf_counter() - t0, 2)
    s["output"] = str(res.output)
    s["warnings"] = list(res.warnings)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    rows = [
        ("output", s["output"]),
        ("method", f"{s['method']} ({cfg.scale} scales{', ' + cfg.po2_method if cfg.scale == 'po2' else ''}"
                   + (f"; {res.recon.granularity} regions, {cfg.loss} loss, {cfg.preset} preset" if res.recon else "")
                   + ")"),
        ("target", f"{s['target']} ({TARGETS[s['target']].description})"),
        ("layers", f"{s['layers']} quantized, {s['quant_points']} activation quant points"),
        ("weight bits", ", ".join(f"{b}-bit x{n}" for b, n in s["weight_bits"].items())
                        + (f" ({s['mixed']}: {_fmt_layer_bits(s['weight_bits_per_layer'])})" if "mixed" in s else "")),
        ("activation bits", ", ".join(f"{b}-bit x{n}" for b, n in s["activation_bits"].items())),
        ("weights size", f"{_fmt_bytes(s['weights_float_bytes'])} -> {_fmt_bytes(s['weights_quant_bytes'])} "
                         f"({s['compression']:.1f}x)"),
        ("file size", _fmt_bytes(s["file_bytes"])),
        *([("integer layers", s["integer_forms"])] if "integer_forms" in s else []),
        *([("report", ", ".join(str(p) for p in res.report_files))] if res.report_files else []),
        ("time", f"{s['total_s']:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in s["timings_s"].items()) + ")"),
    ]
    if cfg.max_memory_mb:
        rows.append(("memory", f"peak {s['peak_rss_mb']:.0f} MiB (--max-memory {cfg.max_memory_mb:.0f} MiB)"))
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    for warning in res.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if cfg.max_memory_mb and s["peak_rss_mb"] > cfg.max_memory_mb:
        print(f"warning: the peak resident set ({s['peak_rss_mb']:.0f} MiB) exceeded --max-memory "
              f"({cfg.max_memory_mb:.0f} MiB): the cached activations spilled to disk, but torch, the model, the "
              "calibration data and one batch's tensors did not fit; raise --max-memory, or lower --num-calib, "
              "--batch-size or --recon-batch-size", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from .deploy.bench import bench_models

    rep = bench_models(args.models, args.batch, args.threads, args.runs, args.warmup,
                       None if args.runtime == "all" else [args.runtime])
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
        return 0
    for note in rep.notes:
        print(f"note: {note}")
    print(f"{args.threads} thread(s), {args.runs} runs after {args.warmup} warm-up; ms per run, min / median, "
          f"median / float model's median in the same runtime")
    for rt in rep.runtimes:
        print(f"\n{rt}")
        for m in rep.models:
            if rt in m.errors:
                print(f"  {m.path}: {m.errors[rt]}")
                continue
            cells = [f"b{t.batch} {t.min_ms:.3f} / {t.median_ms:.3f} ms ({m.ratios[rt][t.batch]:.2f}x)"
                     for t in m.timings if t.runtime == rt]
            k = m.kernels.get(rt)
            print(f"  {m.path}: " + "; ".join(cells) + (f"; integer layers {k.count()}" if k else ""))
            for lay in (k.float_layers if k and k.float_layers and m is not rep.models[0] else []):
                print(f"    float: {lay.name} ({lay.op_type}){': ' + lay.reason if lay.reason else ''}")
    return 0


def _fmt_layer_bits(bits: dict[str, int]) -> str:
    """Per-layer bits in execution order, runs of equal bits collapsed: '8 4x3 2 4x5 8'."""
    runs: list[list[int]] = []
    for b in bits.values():
        if runs and runs[-1][0] == b:
            runs[-1][1] += 1
        else:
            runs.append([b, 1])
    return " ".join(f"{b}x{n}" if n > 1 else str(b) for b, n in runs)


def cmd_eval(args) -> int:
    from .api import evaluate

    fid = evaluate(args.float_model, args.quant_model, args.data, args.batch_size, args.limit,
                   preprocess_from_args(args))
    if args.json:
        print(json.dumps(fid.to_dict(), indent=1))
        return 0
    if fid.float_accuracy is not None:
        print(f"accuracy          float {fid.float_accuracy:.4f}   quantized {fid.quant_accuracy:.4f}   "
              f"delta {100 * (fid.quant_accuracy - fid.float_accuracy):+.2f} points")
    print(f"output SQNR       {fid.sqnr_db:.2f} dB")
    print(f"top-1 agreement   {fid.top1_agreement:.4f}")
    print(f"top-5 containment {fid.top5_containment:.4f}")
    print(f"KL(float||quant)  {fid.kl:.5f}")
    print(f"samples           {fid.samples}")
    return 0


COMMANDS = {"inspect": cmd_inspect, "quantize": cmd_quantize, "eval": cmd_eval, "run": cmd_run, "verify": cmd_verify,
            "golden": cmd_golden, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except OnnxPtqError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt:
        hint = (" (the finished regions are checkpointed: rerun the same command with --resume to continue)"
                if args.command == "quantize" and getattr(args, "method", "rtn") != "rtn" else "")
        print(f"interrupted: nothing was written{hint}", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; lower --batch-size or --num-calib", file=sys.stderr)
        return 3
    except Exception as e:  # a bug: say so in one line; -v shows the traceback
        if args.verbose:
            raise
        print(f"error: internal error ({type(e).__name__}: {str(e)[:300]}); rerun with -v for the traceback "
              "and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
