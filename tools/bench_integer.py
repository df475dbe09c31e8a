#!/usr/bin/env python3
"""Integer export benchmark (issue 3): level-1 parity, fidelity and runtime/ speed vs onnxruntime.

    python tools/bench_integer.py [--models digits|efficientnet|all] [--configs W8A8,W4A8,W4A4]
                                  [--num-calib 256] [--num-eval N] [--reference-samples 2]
                                  [--speed-iters 5] [--out docs/benchmarks.md]
    python tools/bench_integer.py --latency [--models ...] [--configs W8A8] [--latency-iters 50]

For each model and Po2 configuration: quantize with ``--format int`` (and the same calibration as
QDQ), then on the evaluation data
- level-1 parity: integer simulation vs onnxruntime vs runtime/ on every integer tensor (and
  onnx.reference on the first ``--reference-samples`` samples);
- the integer model's output vs the fake-quant Po2 simulation (which the QDQ model reproduces bit for
  bit in onnxruntime): identical integers -> identical fidelity;
- fidelity vs the float model (SQNR, top-1 agreement, KL; accuracy with labels);
and runtime/ vs onnxruntime latency on the integer model at batch 1 and 32 (median of
``--speed-iters`` runs after one warm-up, same process, same threads).
Writes the section ``integer-<models>`` of docs/benchmarks.md.

``--latency`` (issue 15): only float vs ``--format int`` latency, onnxruntime (ORT_ENABLE_ALL,
intra_op_num_threads=1) and OpenVINO (CPU, one stream, one thread) where installed, batch 1 and 8,
median of ``--latency-iters`` runs after warm-up, plus the integer model's layer forms
(QLinearConv/QLinearMatMul vs shift recipe). Prints a table; writes nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench import (BenchError, command_line, load_data, machine_info, machine_line, select_groups,  # noqa: E402
                   write_section)

import onnxptq  # noqa: E402
from onnxptq.eval import fidelity, run_onnxruntime  # noqa: E402
from onnxptq.verify.integer import verify_integer  # noqa: E402

CONFIGS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4), "W2A4": (2, 4)}


def _time(fn, iters: int) -> float:
    fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


def speed(model, x: np.ndarray, name: str, iters: int) -> dict:
    import onnxruntime as ort

    import runtime

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rt = runtime.Session(model)
    out = {}
    for b in (1, 32):
        xb = x[:b] if len(x) >= b else np.concatenate([x] * (b // len(x) + 1))[:b]
        ms_ort = _time(lambda: sess.run(None, {name: xb}), iters)
        ms_rt = _time(lambda: rt.run({name: xb}), iters)
        out[b] = (ms_rt, ms_ort)
    return out


def _ort_session(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _ov_runner(model_bytes: bytes, name: str, shape: tuple[int, ...]):
    """OpenVINO CPU, one thread, or None when OpenVINO is missing or refuses the model."""
    try:
        import openvino as ov

        core = ov.Core()
        m = core.read_model(model_bytes, b"")
        m.reshape({name: list(shape)})
        c = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                          "PERFORMANCE_HINT": "LATENCY"})
        req = c.create_infer_request()
        return lambda x: req.infer({name: x})
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"openvino: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        return None


def layer_forms(model) -> str:
    """``k/n layers as QLinear*, m with the shift recipe`` from the program recorded in the model."""
    from onnxptq.verify.integer import load_program

    program, _, _ = load_program(model)
    layers = [s.attrs for s in program.steps if s.kind == "layer"]
    kinds = sorted({a.get("kernel", "s8s8") for a in layers})
    return f"{sum(a.get('form', 'shift') != 'shift' for a in layers)}/{len(layers)} QLinear ({'+'.join(kinds)})"


def latency(bm, cfgs: list[str], args) -> list[dict]:
    """Float vs integer model latency (onnxruntime one thread ORT_ENABLE_ALL; OpenVINO where it runs), for
    both ``--int-kernels`` (portable and vnni), with level-1 parity of each integer model on 16 samples."""
    calib = load_data(bm.calib, bm.path, args.num_calib or bm.default_calib)
    name = next(iter(calib.inputs))
    x0 = calib.inputs[name]
    float_bytes = Path(bm.path).read_bytes()
    rows = []
    for cfg in cfgs:
        w, a = CONFIGS[cfg]
        for kernels in ("portable", "vnni"):
            res = onnxptq.quantize(bm.path, calib, scale="po2", format="int", w_bits=w, a_bits=a, progress=False,
                                   int_kernels=kernels)
            rep = verify_integer(res.model, {name: x0[:16]}, batch_size=16, reference_samples=0,
                                 engines=("sim", "onnxruntime", "runtime"))
            int_bytes = res.model.SerializeToString()
            for b in (1, 8):
                xb = np.ascontiguousarray(np.concatenate([x0] * (b // len(x0) + 1))[:b])
                r = {"model": bm.name, "config": cfg, "kernels": kernels, "batch": b, "forms": layer_forms(res.model),
                     "level1": rep.ok}
                for label, mb in (("float", float_bytes), ("int", int_bytes)):
                    sess = _ort_session(mb)
                    r[f"ort_{label}"] = _time(lambda: sess.run(None, {name: xb}), args.latency_iters)
                    ov = _ov_runner(mb, name, xb.shape)
                    r[f"ov_{label}"] = _time(lambda: ov(xb), args.latency_iters) if ov else None
                rows.append(r)
                print(r, file=sys.stderr, flush=True)
    return rows


def latency_table(rows: list[dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{v:.2f}"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}"

    lines = ["| model | config | --int-kernels | level-1 (16 samples) | batch | layer forms | ORT float ms | ORT int ms | "
             "int/float | OpenVINO float ms | OpenVINO int ms | int/float |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['model']} | {r['config']} | {r.get('kernels', '-')} | {'identical' if r.get('level1') else 'MISMATCH'} "
                     f"| {r['batch']} | {r['forms']} | {ms(r['ort_float'])} | "
                     f"{ms(r['ort_int'])} | {ratio(r['ort_int'], r['ort_float'])} | {ms(r['ov_float'])} | "
                     f"{ms(r['ov_int'])} | {ratio(r['ov_int'], r['ov_float'])} |")
    return "\n".join(lines)


def bench(bm, cfgs: list[str], args) -> list[dict]:
    calib = load_data(bm.calib, bm.path, args.num_calib or bm.default_calib)
    ev = load_data(bm.eval, bm.path, args.num_eval or bm.default_eval)
    name = next(iter(ev.inputs))
    float_out = run_onnxruntime(str(bm.path), ev.inputs)
    rows = []
    for cfg in cfgs:
        w, a = CONFIGS[cfg]
        print(f"[{bm.name} {cfg}] quantizing", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = onnxptq.quantize(bm.path, calib, scale="po2", format="int", w_bits=w, a_bits=a, progress=False)
        q_s = time.perf_counter() - t0
        print(f"[{bm.name} {cfg}] verifying on {len(ev)} samples", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        vin = {k: v[:args.verify_samples] for k, v in ev.inputs.items()} if args.verify_samples else ev.inputs
        rep = verify_integer(res.model, vin, batch_size=16, reference_samples=args.reference_samples)
        v_s = time.perf_counter() - t0
        int_out = run_onnxruntime(res.model.SerializeToString(), ev.inputs)
        sim_out = onnxptq.api.simulate(res.sim, ev.inputs)
        fid = fidelity(float_out, int_out, ev.labels)
        sp = speed(res.model, ev.inputs[name], name, args.speed_iters)
        rows.append({"model": bm.name, "config": cfg, "level1": rep.ok, "tensors": rep.tensors,
                     "samples": rep.samples, "ref_samples": rep.reference_samples, "first": str(rep.first or ""),
                     "same_as_sim": bool(np.array_equal(int_out, sim_out)),
                     "sqnr": fid.sqnr_db, "agree": fid.top1_agreement, "kl": fid.kl, "acc": fid.quant_accuracy,
                     "float_acc": fid.float_accuracy, "quant_s": q_s, "verify_s": v_s, "speed": sp})
        r = rows[-1]
        print(f"[{bm.name} {cfg}] level1 {r['level1']} same_as_sim {r['same_as_sim']} sqnr {r['sqnr']:.2f} "
              f"speed {sp}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| model | config | level-1 parity (tensors x samples) | int output == Po2 simulation | SQNR dB | "
            "top-1 agree | KL | accuracy | runtime/ ms b1 | onnxruntime ms b1 | ratio b1 | runtime/ ms b32 | "
            "onnxruntime ms b32 | ratio b32 |\n|" + "---|" * 14)
    lines = [head]
    for r in rows:
        (rt1, o1), (rt32, o32) = r["speed"][1], r["speed"][32]
        par = (f"identical ({r['tensors']} x {r['samples']}, reference {r['ref_samples']})" if r["level1"]
               else f"MISMATCH: {r['first']}")
        acc = "-" if r["acc"] is None else f"{r['acc']:.4f} (float {r['float_acc']:.4f})"
        lines.append(f"| {r['model']} | {r['config']} | {par} | {'yes' if r['same_as_sim'] else 'NO'} | "
                     f"{r['sqnr']:.2f} | {r['agree']:.4f} | {r['kl']:.5f} | {acc} | {rt1:.1f} | {o1:.1f} | "
                     f"{rt1 / o1:.2f} | {rt32:.1f} | {o32:.1f} | {rt32 / o32:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", choices=("digits", "efficientnet", "all"), default="all")
    p.add_argument("--configs", default="W8A8,W4A8,W4A4")
    p.add_argument("--num-calib", type=int, default=None)
    p.add_argument("--num-eval", type=int, default=None)
    p.add_argument("--reference-samples", type=int, default=2)
    p.add_argument("--verify-samples", type=int, default=None,
                   help="level-1 parity on the first N evaluation samples (default: all); fidelity uses all")
    p.add_argument("--speed-iters", type=int, default=5)
    p.add_argument("--latency", action="store_true",
                   help="only float vs integer latency (onnxruntime 1 thread, OpenVINO); prints, writes nothing")
    p.add_argument("--latency-iters", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    cfgs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in cfgs if c not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {sorted(CONFIGS)}")
    try:
        groups = select_groups(args.models)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.latency:
        rows = [r for g in groups.values() for bm in g for r in latency(bm, cfgs, args)]
        print(f"Reproduce: python tools/bench_integer.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        print(f"Machine: {machine_line(machine_info())}; load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
        print(latency_table(rows))
        return 0
    m0 = machine_info()
    t0 = time.perf_counter()
    rows = [r for g in groups.values() for bm in g for r in bench(bm, cfgs, args)]
    m1 = machine_info()
    cmd = command_line(argv, drop=("--out",)).replace("tools/bench.py", "tools/bench_integer.py")
    body = (f"## Integer ONNX (issue 3): level-1 parity, fidelity, runtime/ speed\n\nReproduce: `{cmd}`\n\n"
            f"Machine: {machine_line(m0)}; load average (1/5/15 min) at end {'/'.join(f'{v:.1f}' for v in os.getloadavg())}. Took {time.perf_counter() - t0:.0f} s.\n\n"
            "Po2 scales, RTN (`onnxptq quantize --scale po2 --format int`), default calibration (256 samples); "
            "parity and fidelity on the evaluation data (digits: 447 validation images; EfficientNet-Lite0: 512 "
            "photo crops). Level 1 compares every integer tensor of the integer simulation, onnxruntime, runtime/ "
            "and (first samples) onnx.reference. Latency: median of runs after a warm-up, same process.\n\n"
            + table(rows))
    write_section(args.out, f"integer-{args.models}", body)
    print(table(rows))
    print(f"wrote section integer-{args.models} of {args.out}")
    return 0 if all(r["level1"] and r["same_as_sim"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
