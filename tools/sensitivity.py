"""Where a model's quantization error comes from: each layer's weights quantized alone.

    python tools/sensitivity.py MODEL.onnx CALIB.npz [--bits 8,4] [--samples 64] [--top 12] [--json out.json]
    python tools/sensitivity.py --efficientnet [--bits 8,4]   # the cached EfficientNet-Lite0 and photo crops

For every quantized layer and every bit width: the model's output SQNR (dB) against the float model on
``--samples`` calibration samples, with only that layer's weights on the grid (round-to-nearest at its
L_p per-channel scale, the calibration every method starts from) and every other layer and every
activation in float. These are the diagonal terms the mixed-precision search and the accuracy target
rank layers by (``mixed/sensitivity.py``, BRECQ Eq. 12), printed as SQNR: a layer at 30 dB alone caps
the whole quantized model at about 30 dB whatever the other layers do. Layers are listed worst first,
with their share of the summed output noise at the lowest bit width.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def sqnr_db(noise_to_signal: float) -> float:
    """Output SQNR (dB) of a noise-to-signal ratio (``mixed/sensitivity.py``'s measure)."""
    return math.inf if noise_to_signal <= 0 else -10 * math.log10(noise_to_signal)


def layer_sensitivities(model: str, calib, bits: tuple[int, ...], samples: int) -> list[dict]:
    """One dict per layer: name, op, weight count, depthwise flag, and ``sqnr_db`` {bits: dB}, worst first.
    ``calib``: a data file or a ``Dataset``."""
    import onnxptq
    from onnxptq.mixed.sensitivity import measure_sensitivities

    if not hasattr(calib, "inputs"):  # a file: read once, for the calibration and the measurement
        from onnxptq.data import load_dataset, model_input_specs
        from onnxptq.graph.load import read_model

        calib = load_dataset(calib, model_input_specs(read_model(model)), samples)
    res = onnxptq.quantize(model, calib, num_calib=samples, progress=False, check_kernels=False)
    qg, cfg = res.qgraph, res.config
    names = [layer.name for layer in qg.layers]
    diag, _ = measure_sensitivities(res.sim, calib, cfg, names, tuple(sorted(bits)), samples=samples,
                                    progress=True, pairs=False)
    rows = []
    for layer in qg.layers:
        rows.append(dict(name=layer.name, op=layer.op_type, weights=int(math.prod(layer.weight_shape)),
                         depthwise=layer.depthwise,
                         noise={b: diag[(layer.name, b)] for b in bits},
                         sqnr_db={b: sqnr_db(diag[(layer.name, b)]) for b in bits}))
    low = min(bits)
    rows.sort(key=lambda r: -r["noise"][low])
    total = sum(r["noise"][low] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["noise"][low] / total
    return rows


def table(rows: list[dict], bits: tuple[int, ...], top: int) -> str:
    low = min(bits)
    head = ["layer", "op", "weights"] + [f"alone at W{b}: SQNR dB" for b in bits] + [f"share of noise at W{low}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows[:top]:
        op = r["op"] + (" (depthwise)" if r["depthwise"] else "")
        cells = [r["name"], op, str(r["weights"])] + [f"{r['sqnr_db'][b]:.2f}" for b in bits] + [f"{r['share']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > top:
        lines.append(f"\n{len(rows) - top} more layers, each under {rows[top - 1]['share']:.1%} of the noise.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?")
    p.add_argument("calib", nargs="?")
    p.add_argument("--efficientnet", action="store_true", help="the cached EfficientNet-Lite0 and its photo crops")
    p.add_argument("--bits", default="8,4", help="weight bit widths, comma-separated (default 8,4)")
    p.add_argument("--samples", type=int, default=64, help="calibration samples the output error is measured on")
    p.add_argument("--top", type=int, default=12, help="rows printed")
    p.add_argument("--json", help="write every layer's figures here")
    p.add_argument("--out", help="markdown file whose section sensitivity-MODEL is regenerated (docs/benchmarks.md)")
    args = p.parse_args(argv)
    from bench import BenchError

    from onnxptq.errors import OnnxPtqError

    try:
        if args.efficientnet:
            from bench import efficientnet_models

            bm = efficientnet_models()[0]
            args.model, args.calib = str(bm.path), str(bm.calib)
        if not args.model or not args.calib:
            p.error("give MODEL.onnx CALIB.npz, or --efficientnet")
        try:
            bits = tuple(int(b) for b in args.bits.split(","))
        except ValueError:
            bits = ()
        if not bits or not all(2 <= b <= 8 for b in bits):
            p.error(f"--bits {args.bits!r}: give weight bit widths from 2 to 8, e.g. 8,4")
        rows = layer_sensitivities(args.model, args.calib, bits, args.samples)
    except (OnnxPtqError, BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = (f"each layer's weights alone at {', '.join(f'W{b}' for b in bits)} (round-to-nearest, L_p scales), "
            f"everything else float, output SQNR on {args.samples} calibration samples; worst first")
    print(f"{Path(args.model).name}: {what}\n")
    print(table(rows, bits, args.top))
    if args.out:
        from bench import command_line, machine_info, machine_line, write_section

        stem = Path(args.model).stem
        cmd = command_line(argv).replace("tools/bench.py", "tools/sensitivity.py", 1)
        write_section(Path(args.out), f"sensitivity-{stem}", "\n".join([
            f"## Sensitivity ({stem}): {what}", "", f"Reproduce: `{cmd}`", "",
            f"Machine: {machine_line(machine_info())}.", "", table(rows, bits, args.top)]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
