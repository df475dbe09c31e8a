"""``python tools/bench_memory.py``: peak resident memory of a reconstruction under ``--max-memory`` (issue 8).

Runs ``onnxptq quantize`` on EfficientNet-Lite0 with its 1024 real-photo calibration crops (built by
``python tools/make_models.py --efficientnet`` into ~/.cache/onnxptq) under ``/usr/bin/time -v`` once per
budget, with a short BRECQ schedule (the iteration count does not change what is cached, only the time),
and writes the peak RSS, the spilled cache and the time as the ``memory`` section of docs/benchmarks.md.

    python tools/bench_memory.py [--budgets 3GB,5GB,none] [--num-calib 1024] [--iters 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench as B

ROOT = Path(__file__).resolve().parents[1]


def run_one(model: Path, calib: Path, budget: str, args, work: Path) -> dict:
    out = work / f"q_{budget}.onnx"
    cmd = [sys.executable, "-m", "onnxptq", "quantize", str(model), "--calib", str(calib), "-o", str(out), "--force",
           "--method", "brecq", "--w-bits", "4", "--a-bits", "8", "--num-calib", str(args.num_calib),
           "--iters", str(args.iters), "--act-iters", str(args.iters), "--no-progress", "--json"]
    if budget != "none":
        cmd += ["--max-memory", budget]
    timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
    t0 = time.perf_counter()
    r = subprocess.run(timed, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        # onnxptq's own line, not /usr/bin/time's report that follows it
        said = [ln for ln in r.stderr.splitlines() if "error:" in ln or ln.startswith("interrupted")]
        return {"budget": budget, "error": said[-1] if said else f"exit code {r.returncode}"}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    return {"budget": budget, "peak_rss_mb": int(m.group(1)) / 1024 if m else None, "wall_s": wall,
            "timings_s": summary.get("timings_s", {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default="3GB,none", help="comma-separated --max-memory values; none = no bound")
    p.add_argument("--num-calib", type=int, default=1024)
    p.add_argument("--iters", type=int, default=2)
    B.add_common(p)
    args = p.parse_args(argv)
    budgets = [b.strip() for b in args.budgets.split(",")]
    for budget in budgets:  # a typo must not cost a run, nor overwrite the section
        if budget != "none":
            try:
                _size(budget)
            except Exception as e:  # noqa: BLE001 - parse_size's message names the accepted units
                print(f"error: --budgets {budget!r}: {e}", file=sys.stderr)
                return 2
    model, calib = B.cache_dir() / "efficientnet_lite0.onnx", B.cache_dir() / "photos_calib.npz"
    if not model.exists() or not calib.exists():
        print("error: EfficientNet-Lite0 not built: run python tools/make_models.py --efficientnet", file=sys.stderr)
        return 2
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="onnxptq-mem-") as d:
        for budget in budgets:
            print(f"== --max-memory {budget} ...", flush=True)
            rows.append(run_one(model, calib, budget, args, Path(d)))
            print("  ", rows[-1], flush=True)
            if args.out and not all("error" in r for r in rows):  # after every run: a stopped sweep keeps its rows
                B.write_section(Path(args.out), "memory", section(rows, args, len(rows), len(budgets)))
    if all("error" in r for r in rows):
        print("error: every run failed; the section was not written", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def section(rows: list[dict], args, done: int, total: int) -> str:
    lines = ["## Memory: peak resident set under --max-memory (EfficientNet-Lite0, 1024 calibration crops)", "",
             f"Reproduce: `{B.command_line()}`", "", f"Machine: {B.machine_line(B.machine_info())}.", "",
             f"`onnxptq quantize efficientnet_lite0.onnx --calib photos_calib.npz --num-calib {args.num_calib} "
             f"--method brecq --w-bits 4 --a-bits 8 --iters {args.iters} --act-iters {args.iters} --max-memory B` "
             "under `/usr/bin/time -v` (peak RSS = its 'Maximum resident set size', MiB; a budget of 3GB is "
             "3e9 bytes = 2861 MiB). The calibration arrays "
             f"alone are {args.num_calib * 3 * 224 * 224 * 4 / 2**20:.0f} MiB. The short schedule changes only "
             "the time: what is cached per region is the same as with the fast preset.", "",
             "| --max-memory | budget MiB | peak RSS MiB | within budget | wall s | reconstruct s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['budget']} | | failed: {r['error']} | | | |")
            continue
        lim = None if r["budget"] == "none" else _size(r["budget"]) / 2**20
        ok = "" if lim is None else ("yes" if r["peak_rss_mb"] <= lim else "**no**")
        lines.append(f"| {r['budget']} | {'-' if lim is None else f'{lim:.0f}'} | {r['peak_rss_mb']:.0f} | {ok} | "
                     f"{r['wall_s']:.0f} | {r['timings_s'].get('reconstruct', float('nan')):.0f} |")
    if done < total:
        lines += ["", f"Partial: {done} of {total} budgets run so far."]
    return "\n".join(lines)


def _size(text: str) -> float:
    from onnxptq.mixed.budget import parse_size

    return parse_size(text)


if __name__ == "__main__":
    sys.exit(main())
