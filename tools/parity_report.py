"""Level-2 parity report (DESIGN.md sections 4 and 7): simulation vs onnxruntime on exported QDQ models.

For each model and configuration: quantize (RTN), export QDQ, then ``onnxptq.verify.qdq.qdq_parity``:
exact-match rate, |delta| histogram (LSB) and max |delta| at the model output and over every quant point,
for the fake-quant simulation and for the ort-exact evaluation, end to end and teacher-forced (local),
split by the onnxruntime kernel that produces each quant point.

    .venv/bin/python tools/parity_report.py                         # digits models, W8A8 W4A8 W8A4 W4A4, float scales
    .venv/bin/python tools/parity_report.py --tv resnet18 googlenet --configs 8,8 --samples 16
    .venv/bin/python tools/parity_report.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DIGITS = ("digits_resnet", "digits_mbv2", "digits_regnet")


def _model(name: str, tmp: Path, samples: int):
    if name.startswith("digits"):
        with np.load(ROOT / "models" / "digits_val.npz") as z:
            x = z["input"][:samples]
        return ROOT / "models" / f"{name}.onnx", ROOT / "models" / "digits_calib.npz", x
    from helpers import TV_INPUT, build_tv, export_torch_model  # the test suite's torchvision builders

    path = tmp / f"{name}.onnx"
    if not path.exists():
        export_torch_model(build_tv(name), torch.randn(*TV_INPUT), path)
    calib = np.random.default_rng(0).standard_normal((16, *TV_INPUT[1:])).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((samples, *TV_INPUT[1:])).astype(np.float32)
    return path, calib, x


def _fmt(d: dict) -> str:
    return f"{100 * d['exact_rate']:.4f} % exact, max {d['max_lsb']:g} LSB, hist {d['histogram']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(DIGITS))
    ap.add_argument("--tv", nargs="*", default=[], help="torchvision architectures (random weights, 1x3x64x64)")
    ap.add_argument("--configs", nargs="*", default=["8,8", "4,8", "8,4", "4,4"], help="w_bits,a_bits")
    ap.add_argument("--scale", default="float", choices=["float", "po2"])
    ap.add_argument("--samples", type=int, default=0, help="evaluation inputs (0: all digits_val / 16 for torchvision)")
    ap.add_argument("--json", help="write the full reports here")
    ap.add_argument("--tmp", default="/tmp/onnxptq_parity")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from onnxptq.api import quantize
    from onnxptq.verify.qdq import qdq_parity

    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    results, worst_local = [], 0.0
    for name in list(args.models) + list(args.tv):
        samples = args.samples or (10**9 if name.startswith("digits") else 16)
        src, calib, x = _model(name, tmp, samples)
        for cfg in args.configs:
            w, a = (int(v) for v in cfg.split(","))
            out = tmp / f"{name}_W{w}A{a}_{args.scale}.qdq.onnx"
            res = quantize(src, calib, output=out, force=True, progress=False, w_bits=w, a_bits=a,
                           scale=args.scale, num_calib=64)
            t0 = time.perf_counter()
            rep = qdq_parity(res.sim, out, {res.qgraph.inputs[0]: x})
            d = rep.to_dict()
            d.update(model=name, w_bits=w, a_bits=a, scale=args.scale, samples=len(x),
                     seconds=round(time.perf_counter() - t0, 1))
            results.append(d)
            worst_local = max(worst_local, rep.max_local_lsb)
            qp = d["quant_points"]
            print(f"{name} W{w}A{a} {args.scale} ({len(x)} inputs, {d['seconds']} s)")
            print(f"  output, simulation    : {_fmt(d['output'])}")
            print(f"  output, ort-exact     : {_fmt(d['ort_exact_output'])}")
            for k in ("end_to_end", "local", "ort_exact_end_to_end", "ort_exact_local"):
                print(f"  quant points {k:21s}: {_fmt(qp[k])}")
            for k, v in d["local_by_kernel"].items():
                x_v = d["ort_exact_local_by_kernel"][k]
                print(f"    local {k:26s} sim {_fmt(v)} | ort-exact {_fmt(x_v)}")
            if d["defects"]:
                print(f"  DEFECTS: {d['defects']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"worst local (teacher-forced) |delta|: {worst_local:g} LSB")
    return 0 if worst_local <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
