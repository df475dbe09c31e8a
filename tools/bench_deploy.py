"""``python tools/bench.py deploy``: the quantized files where they run (issue 15).

For EfficientNet-Lite0 and the shipped digits models: the float model, onnxruntime ``quantize_static``
W8A8 (MinMax, U8/S8, per channel, after ``quant_pre_process``), onnxptq W8A8 float scales, W8A8 ``--scale
po2``, ``--scale po2 --format int`` (the target's kernels: u8 x s8 for onnxruntime) and the same with
``--int-kernels portable``. Per file: median latency / the float model's median in the same
runtime at each batch (one thread by default), in onnxruntime (CPU EP, ORT_ENABLE_ALL) and OpenVINO (CPU,
f32 precision hint; skipped with a note when not installed); layers on integer kernels ``k/n`` in both;
output SQNR vs float (onnxruntime, ``onnxptq.eval.fidelity``). ``--target a,b``: the onnxptq rows once per
deployment target (``QuantConfig.target``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import bench as B
from onnxptq.deploy.bench import available_runtimes, bench_models

ONNXPTQ_ROWS = (("W8A8 float", dict(w_bits=8, a_bits=8, scale="float")),
                ("W8A8 po2", dict(w_bits=8, a_bits=8, scale="po2")),
                ("W8A8 po2 int", dict(w_bits=8, a_bits=8, scale="po2", format="int")),
                ("W8A8 po2 int portable", dict(w_bits=8, a_bits=8, scale="po2", format="int", int_kernels="portable")))
ORT_ROW = ("MinMax U8/S8", "MinMax", "QUInt8", "QInt8", False)


def bench_deploy_model(bm: B.BenchModel, args, runtimes: list[str], targets: list[str | None], work: Path) -> dict:
    print(f"\n== {bm.name}: {bm.path}", flush=True)
    calib = B.load_data(bm.calib, bm.path, args.num_calib or bm.default_calib)
    eval_ds = B.load_data(bm.eval, bm.path, args.num_eval or bm.default_eval)
    float_out = B.run_onnxruntime(str(bm.path), eval_ds.inputs, B.EVAL_BATCH)
    rows = [{"label": "float", "target": "", "path": bm.path}]
    pre_path, pre_s, _ = B.ort_preprocess(bm.path, work)
    ort_out = work / f"{bm.name}.ort-w8a8.onnx"
    row = B.guarded(lambda: B.run_ort_static(pre_path, pre_s, calib, ort_out, *ORT_ROW), ("onnxruntime", ORT_ROW[0]))
    rows.append({"label": "onnxruntime quantize_static W8A8", "target": "", "path": ort_out, "error": row.error})
    for target in targets:
        for label, kw in ONNXPTQ_ROWS:
            out = work / f"{bm.name}.{label.replace(' ', '-')}.{target or 'default'}.onnx"
            extra = {"target": target} if target else {}
            row = B.guarded(lambda o=out, lb=label, k={**kw, **extra}: B.run_onnxptq(bm.path, calib, o, lb, **k),
                            ("onnxptq", label))
            rows.append({"label": f"onnxptq {label}", "target": target or "", "path": out, "error": row.error})
    ok = [r for r in rows if not r.get("error")]
    for r in rows:
        if r.get("error"):
            print(f"   {r['label']}: FAILED {r['error']}", flush=True)
    for r in ok:
        q = B.run_onnxruntime(str(r["path"]), eval_ds.inputs, B.EVAL_BATCH)
        r["sqnr_db"] = None if r["label"] == "float" else B.fidelity(float_out, q, None).sqnr_db
    timed = bench_models([r["path"] for r in ok], args.batch, args.threads, args.runs, args.warmup, runtimes)
    for r, mb in zip(ok, timed.models):  # the float row first: the reference of the ratios
        r["ms"] = {f"{t.runtime} b{t.batch}": t.median_ms for t in mb.timings}
        r["ratio"] = {} if r is ok[0] else {f"{rt} b{b}": v for rt, per in mb.ratios.items() for b, v in per.items()}
        r["int"] = {rt: k.count() for rt, k in mb.kernels.items()}
        r["errors"] = dict(mb.errors)
        print(f"   {r['label']} {r['target']}: int {r['int']} ratio "
              f"{ {k: round(v, 2) for k, v in r['ratio'].items()} } SQNR {r['sqnr_db']}", flush=True)
    for r in rows:
        r["path"] = str(r["path"])
    return {"model": bm.name, "rows": rows}


def markdown(res: dict, runtimes: list[str], batches: list[int], with_target: bool) -> str:
    cols = [f"{rt} b{b}" for rt in runtimes for b in batches]
    head = ["file"] + (["target"] if with_target else []) + [f"{c} x float" for c in cols]
    head += [f"int8 layers {rt}" for rt in runtimes] + ["SQNR dB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    reasons: dict[str, int] = {}  # a runtime's load error (the file's path dropped) -> footnote number

    def not_loaded(rt: str, err: str) -> str:
        why = f"{rt}: " + (err.split(".onnx:", 1)[1].strip() if ".onnx:" in err else err)[:300]
        return f"not loaded [{reasons.setdefault(why, len(reasons) + 1)}]"

    for r in res["rows"]:
        cells = [r["label"]] + ([r["target"] or "-"] if with_target else [])
        if r.get("error"):
            cells += [f"**failed**: {r['error']}"] + [""] * (len(head) - len(cells) - 1)
        else:
            if r["label"] == "float":
                cells += [f"1.00 ({r['ms'][c]:.2f} ms)" if c in r["ms"] else "-" for c in cols]
            else:
                cells += [B._f(r["ratio"].get(c), ".2f") for c in cols]
            cells += [r["int"].get(rt) or not_loaded(rt, r["errors"].get(rt, "")) for rt in runtimes]
            cells.append(B._f(r.get("sqnr_db"), ".2f"))
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += [""] + [f"[{k}] {why}" for why, k in reasons.items()] if reasons else []
    return "\n".join(lines)


NOTES = """\
- Latency: random inputs, {warmup} warm-up then {runs} timed runs per file, runtime and batch, {threads} thread(s);
  the cells are median / the float model's median in the same runtime (the float row gives its median in ms).
  onnxruntime: CPU EP, ORT_ENABLE_ALL, sequential; OpenVINO: CPU plugin, `INFERENCE_PRECISION_HINT f32`
  (fixed: OpenVINO would pick bf16 for float layers on AVX512-bf16 CPUs), synchronous infer requests.
- int8 layers: Conv/ConvTranspose/Gemm/MatMul with constant weights (ConvInteger/MatMulInteger in integer files)
  that run on integer kernels (`onnxptq bench` lists the others with the reason): onnxruntime's optimized graph
  (QLinearConv, QGemm, MatMulIntegerToFloat, ConvInteger, ...), OpenVINO's runtime model (runtimePrecision u8/i8).
- SQNR: first output vs the float model in onnxruntime (default session options) on the evaluation samples.
- Times are wall-clock on a shared machine: compare within a run only."""


def cmd_deploy(args) -> int:
    groups = B.select_groups(args.models)
    only = set(args.only.split(",")) if args.only else None
    runtimes, notes = available_runtimes()
    targets: list[str | None] = args.target.split(",") if args.target else [None]
    machine, cmd = B.machine_info(), B.command_line()
    results: dict[str, list[dict]] = {}
    t_all = time.perf_counter()
    with B.work_dir(args.keep, "onnxptq-bench-deploy-") as work:
        for group, models in groups.items():
            results[group] = [bench_deploy_model(bm, args, runtimes, targets, work) for bm in models
                              if only is None or bm.name in only]
    with_target = targets != [None]
    for group, res in results.items():
        if not res:
            continue
        parts = [f"## Deploy: latency and integer kernels in onnxruntime and OpenVINO, {group}", "",
                 f"Reproduce: `{cmd}`", "", f"Machine: {B.machine_line(machine)}; load average "
                 f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} at end.", "",
                 *(f"Note: {n}." for n in notes), "",
                 NOTES.format(warmup=args.warmup, runs=args.runs, threads=args.threads), ""]
        for r in res:
            parts += [f"### {r['model']}", "", markdown(r, runtimes, args.batch, with_target), ""]
        body = "\n".join(parts)
        print("\n" + body)
        if args.out:
            B.write_section(Path(args.out), f"deploy-{group}", body)
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "deploy", "command": cmd, "machine": machine,
                                               "notes": notes, "results": results}, indent=1, default=float) + "\n")
    print(f"total {time.perf_counter() - t_all:.1f} s")
    failed = [r["label"] for res in results.values() for m in res for r in m["rows"] if r.get("error")]
    return 1 if failed else 0


def _batches(text: str) -> list[int]:
    return [B._positive(v) for v in text.split(",") if v.strip()]


def add_parser(sub) -> None:
    d = sub.add_parser("deploy", help="latency ratio to float and int8 layers in onnxruntime and OpenVINO (issue 15)")
    d.add_argument("--models", choices=[*B.GROUPS, "all"], default="all")
    d.add_argument("--only", default=None, help="comma-separated model names (default: every model of the group)")
    d.add_argument("--batch", type=_batches, default=[1, 8], help="batch sizes (default 1,8)")
    d.add_argument("--threads", type=B._positive, default=1)
    d.add_argument("--runs", type=B._positive, default=50)
    d.add_argument("--warmup", type=int, default=10)
    d.add_argument("--target", default=None, help="comma-separated deployment targets: the onnxptq rows once per "
                                                  "target (needs QuantConfig.target)")
    d.add_argument("--num-calib", type=B._positive, default=None, help="calibration samples (default 256)")
    d.add_argument("--num-eval", type=B._positive, default=None,
                   help="evaluation samples for SQNR (default: digits all 447, EfficientNet 512)")
    B.add_common(d)
    d.set_defaults(func=cmd_deploy)
