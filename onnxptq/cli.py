"""``onnxptq`` command line: a thin shell over ``onnxptq.api``.

User mistakes (missing files, bad data, bad options) print ``error: ...`` and exit 2 with no
traceback; Ctrl-C exits 130 and leaves no partial output file; a missed accuracy target (``--min-sqnr`` /
``--max-drop``) exits 4 after writing the best model it found.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from . import __version__
from dataclasses import MISSING, fields

from .config import GRANULARITIES, GROUPS, QuantConfig, cli_flag
from .targets import TARGETS
from .mixed.budget import parse_count, parse_size
from .errors import OnnxPtqError


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


PARSERS = {  # QuantConfig field metadata "parse" -> how the CLI reads the text
    "size": _parsed(parse_size), "count": _parsed(parse_count), "mib": _parsed(lambda t: parse_size(t) / 2**20),
    "bits-list": _bits_list, "bits-or-same": _bits_or_same, "shapes": _shape_arg,
    "names": lambda t: tuple(s for s in t.split(",") if s),
}


def add_config_args(p: argparse.ArgumentParser) -> None:
    """One flag per QuantConfig field, from its metadata (config.py): type, choices, help and default come from the
    declaration, so the CLI and the Python API cannot drift. Flags not given keep the QuantConfig default."""
    from .recon.methods import METHODS

    groups = {k: p.add_argument_group(title) for k, title in GROUPS.items()}
    for f in fields(QuantConfig):
        m = f.metadata
        kw = {"dest": f.name, "default": argparse.SUPPRESS}
        help_ = m["help"]
        if f.type == "bool":
            kw["action"] = "store_false" if f.default is True else "store_true"
        else:
            kw["type"] = PARSERS[m["parse"]] if m.get("parse") else (
                int if f.type.startswith("int") else float if f.type.startswith("float") else str)
            choices = m.get("choices") or (tuple(METHODS) if f.name == "method" else
                                           tuple(TARGETS) if f.name == "target" else None)
            if choices:
                kw["choices"] = choices
            else:
                kw["metavar"] = cli_flag(f)[2:].upper().replace("-", "_")
            if f.default is not None and f.default is not MISSING:
                help_ += f" (default {f.default})"
        if f.name == "target":
            help_ += ": " + "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())
        groups[m["group"]].add_argument(cli_flag(f), help=help_.replace("%", "%%"), **kw)  # argparse %-formats help


def config_from_args(args: argparse.Namespace) -> QuantConfig:
    """The QuantConfig of the flags given (the others keep their defaults)."""
    return QuantConfig(**{f.name: getattr(args, f.name) for f in fields(QuantConfig) if hasattr(args, f.name)})


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
    add_config_args(q)
    add_image_args(q)
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
    from .data import load_dataset, model_input_dtypes, model_input_specs

    return load_dataset(path, model_input_specs(model), limit, single_sample=True,
                        dtypes=model_input_dtypes(model)).inputs


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
    batch = info.get("batch") or {}
    if batch.get("fixed") is not None:
        print(f"fixed batch {batch['fixed']}: " + (batch.get("detail") or f"runs in chunks ({batch.get('reason')})"))
    print(f"\n{len(info['layers'])} quantizable layers")
    print(f"  {'#':>3} {'op':<6} {'weight':<18} {'grp':>4} {'act':<14} {'BN':<3} {'MACs':>12}  name")
    for k, x in enumerate(info["layers"]):
        print(f"  {k:>3} {x['op']:<6} {str(tuple(x['weight_shape'])):<18} {x['groups']:>4} {str(x['activation'] or '-'):<14} "
              f"{'yes' if x['bn_gamma'] else '-':<3} {x['macs']:>12}  {x['name']}")
    kinds: dict[str, int] = {}
    for q in info["quant_points"]:
        kinds[q["kind"]] = kinds.get(q["kind"], 0) + 1
    print(f"\n{len(info['quant_points'])} activation quant points: " + ", ".join(f"{v} {k}" for k, v in kinds.items()))
    if info["merge_activations"]:
        n = len(info["merge_activations"])
        print(f"  {n} Add/Sub/Sum node{'s' if n > 1 else ''} with {'their' if n > 1 else 'its'} Relu/Clip fused "
              "(quantized once, after the activation)")
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

    cfg = config_from_args(args)
    t0 = time.perf_counter()
    res = quantize(args.model, args.calib, cfg, args.output, force=args.force, report=args.report,
                   preprocess=preprocess_from_args(args), check_kernels=not args.no_kernel_check)
    cfg = res.config  # as the run resolved it (loss, samples, kernels)
    s = res.summary()
    s["total_s"] = round(time.perf_counter() - t0, 2)
    s["output"] = str(res.output)
    s["warnings"] = list(res.warnings)
    s["diagnostics"] = res.diagnostics.to_dict()
    acc = res.accuracy_control
    missed = TARGET_MISSED if acc is not None and not acc.met else 0
    if acc is not None:
        s["accuracy_control"] = acc.to_dict()
    if args.json:
        print(json.dumps(s, indent=1, default=float))
        return missed
    rows = [
        ("output", s["output"]),
        ("method", f"{s['method']} ({cfg.scale} scales{', ' + cfg.po2_method if cfg.scale == 'po2' else ''}"
                   + (f"; {res.recon.granularity} regions, {cfg.loss} loss, {cfg.preset} preset" if res.recon else "")
                   + ")"),
        ("target", f"{s['target']} ({TARGETS[s['target']].description})"),
        ("layers", f"{s['layers']} quantized, {s['quant_points']} activation quant points"
                   + (f" ({s['po2_rescaled_points']} rescaled onto power-of-two scales)"
                      if s.get("po2_rescaled_points") else "")
                   + (f" ({s['po2_equalized_points']} with weight channels equalized onto power-of-two scales)"
                      if s.get("po2_equalized_points") else "")),
        ("weight bits", ", ".join(f"{'float' if b == 32 else f'{b}-bit'} x{n}" for b, n in s["weight_bits"].items())
                        + (f" ({s['mixed']}: {_fmt_layer_bits(s['weight_bits_per_layer'])})" if "mixed" in s else "")),
        ("activation bits", ", ".join(f"{b}-bit x{n}" for b, n in s["activation_bits"].items())),
        ("weights size", f"{_fmt_bytes(s['weights_float_bytes'])} -> {_fmt_bytes(s['weights_quant_bytes'])} "
                         f"({s['compression']:.1f}x)"),
        ("file size", _fmt_bytes(s["file_bytes"])),
        *([("integer layers", s["integer_forms"])] if "integer_forms" in s else []),
        *([("lowering check", s["lowering_check"])] if "lowering_check" in s else []),
        *([("report", ", ".join(str(p) for p in res.report_files))] if res.report_files else []),
        ("time", f"{s['total_s']:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in s["timings_s"].items()) + ")"),
    ]
    if cfg.max_memory_mb:
        rows.append(("memory", f"peak {s['peak_rss_mb']:.0f} MiB (--max-memory {cfg.max_memory_mb:.0f} MiB)"))
    rows += [("fallback", line) for line in s["fallbacks"]] or [("fallbacks", "none")]
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    if acc is not None:
        print("accuracy " + "\n".join(acc.lines()))
    for warning in res.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if cfg.max_memory_mb and s["peak_rss_mb"] > cfg.max_memory_mb:
        print(f"warning: the peak resident set ({s['peak_rss_mb']:.0f} MiB) exceeded --max-memory "
              f"({cfg.max_memory_mb:.0f} MiB): the cached activations spilled to disk, but torch, the model, the "
              "calibration data and one batch's tensors did not fit; raise --max-memory, or lower --num-calib, "
              "--batch-size or --recon-batch-size", file=sys.stderr)
    return missed


TARGET_MISSED = 4  # exit code of a quantize run whose accuracy target was missed (the best model is written)


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
    _cpu_note(args.quant_model)
    return 0


def _cpu_note(path) -> None:
    """On stderr: when onnxruntime on this CPU saturates the model's uint8 x int8 layers (targets.py)."""
    import onnx

    from .targets import cpu_saturation_note

    try:
        note = cpu_saturation_note(onnx.load(str(path), load_external_data=False))
    except Exception:  # a note only: never fail an evaluation that succeeded
        return
    if note:
        print(f"note: {note}", file=sys.stderr)


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
