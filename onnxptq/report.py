"""``onnxptq quantize --report report.md|report.html``: what the run chose and how it went, per layer.

Sections: the run (config, sizes, times); per-layer table (op, weight shape, weight bits, input bits,
scale kind and range, Po2 exponents, reconstruction loss before/after and time of the layer's region);
per-activation table (bits, scale or exponent, zero point, output SQNR of the quantized model at that
point against the float model, on up to ``SQNR_SAMPLES`` calibration samples); plots (matplotlib PNGs
next to the report, when matplotlib is installed): bits per layer, SQNR per quant point, region loss
before/after, loss curves of the reconstruction (region loss every 25 iterations).
"""
from __future__ import annotations

import html
import math
import time
from pathlib import Path

import numpy as np
import torch

from .data import Dataset

SQNR_SAMPLES = 8


def _sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    noise = float((ref.double() - x.double()).pow(2).sum())
    sig = float(ref.double().pow(2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(sig / noise) if sig > 0 else -math.inf


@torch.no_grad()
def quant_point_sqnr(sim, data: Dataset, samples: int = SQNR_SAMPLES) -> dict[str, float]:
    """SQNR (dB) of the quantized model's tensor at every quant point against the float model's, end to end
    (errors accumulated from the input), on the first ``samples`` calibration samples."""
    from .recon.float_weights import FloatWeights

    device = sim.device
    feeds = {k: torch.from_numpy(v[:samples]).to(device) for k, v in data.inputs.items()}
    points = set(sim.qg.quant_points)
    was_training = sim.training
    sim.eval()
    try:
        with FloatWeights(sim):
            sim.set_quant(weights=False, acts=False)
            ref = {k: v for k, v in sim(feeds, keep=True).items() if k in points}
        sim.set_quant(weights=True, acts=True)
        got = {k: v for k, v in sim(feeds, keep=True).items() if k in points}
    finally:
        sim.set_quant(weights=True, acts=True)
        sim.train(was_training)
    out = {}
    for t in sim.qg.quant_points:
        if t in ref and t in got:
            q = got[t]
            fq = sim.act_quantizer(t)
            if fq.ecaq:  # the quantized stream holds integer codes: back to values
                q = q * fq.scale
            out[t] = _sqnr_db(ref[t], q)
    return out


def _scale_text(p) -> tuple[str, str]:
    """(scale summary, Po2 exponents summary) of a QParams."""
    s = np.asarray(p.scale).reshape(-1)
    scale = f"{s[0]:.4g}" if s.size == 1 else f"{s.min():.4g} .. {s.max():.4g}"
    if not p.po2:
        return scale, ""
    e = p.exponents.reshape(-1)
    return scale, (f"2^{e[0]}" if e.size == 1 else f"2^{e.min()} .. 2^{e.max()}")


def collect(res, data: Dataset | None) -> dict:
    """Everything the report shows, as plain data."""
    sim, qg, plan = res.sim, res.qgraph, res.plan
    region_of = {}
    if res.recon is not None:
        for r in res.recon.regions:
            for name in r.layers:
                region_of[name] = r
    int_steps = {st.node: st.attrs for st in res.program.steps if st.kind == "layer"} if res.program else {}
    layers = []
    for x in qg.layers:
        p = sim.weight_quantizer(x.name).params
        scale, exps = _scale_text(p) if p is not None else ("float", "")  # None: left in float (accuracy target)
        r = region_of.get(x.name)
        layers.append({"layer": x.name, "op": x.op_type + (" dw" if x.depthwise else ""),
                       "shape": "x".join(map(str, x.weight_shape)), "w_bits": p.grid.bits if p is not None else 32,
                       "in_bits": plan.a_bits.get(qg.source.get(x.input, ""), None), "scale": scale, "po2": exps,
                       "region": r.name if r else "", "loss_before": r.loss_before if r else None,
                       "loss_after": r.loss_after if r else None, "seconds": r.seconds if r else None,
                       "reverted": bool(r and r.reverted),
                       **({"int_form": f"{int_steps[x.name]['form']} ({int_steps[x.name]['kernel']})",
                           "int_form_why": int_steps[x.name]["form_why"]} if x.name in int_steps else {})})
    sqnr = quant_point_sqnr(sim, data) if data is not None else {}
    acts = []
    for t, fq in sim.act_quantizers():
        p = fq.params
        scale, exps = _scale_text(p)
        zp = np.asarray(p.zero_point).reshape(-1)
        acts.append({"tensor": t, "kind": qg.quant_points[t].kind, "bits": p.grid.bits, "grid": str(p.grid),
                     "scale": scale + (" (ECAQ per channel)" if fq.ecaq else ""), "po2": exps,
                     "zero_point": str(zp[0]) if zp.size == 1 or np.all(zp == zp[0]) else f"{zp.min()}..{zp.max()}",
                     "sqnr_db": sqnr.get(t)})
    regions = [] if res.recon is None else [
        {"region": r.name, "layers": len(r.layers), "loss_before": r.loss_before, "loss_after": r.loss_after,
         "seconds": r.seconds, "reverted": r.reverted, "bias_corrected": r.bias_corrected,
         "crop": getattr(r, "crop", 1.0), "phase_seconds": dict(getattr(r, "phase_seconds", {})),
         "curve": list(getattr(r, "curve", []))}
        for r in res.recon.regions]
    acc = getattr(res, "accuracy_control", None)
    return {"summary": res.summary(), "config": res.config.to_dict(), "layers": layers, "activations": acts,
            "regions": regions, "mixed": res.mixed.to_dict() if res.mixed is not None else None,
            "accuracy_control": acc.to_dict() if acc is not None else None}


def plots(info: dict, stem: Path) -> list[Path]:
    """PNGs next to the report; [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    layers = info["layers"]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(layers) + 2), 3.2))
    ax.bar(range(len(layers)), [x["w_bits"] for x in layers], color="#4477aa")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("weight bits")
    ax.set_yticks(sorted({x["w_bits"] for x in layers}))
    ax.set_title("weight bits per layer")
    fig.tight_layout()
    out.append(stem.with_name(stem.name + "_bits.png"))
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    acts = [a for a in info["activations"] if a["sqnr_db"] is not None and math.isfinite(a["sqnr_db"])]
    if acts:
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(acts) + 2), 3.2))
        ax.plot(range(len(acts)), [a["sqnr_db"] for a in acts], marker="o", ms=3, color="#228833")
        ax.set_xlabel("activation quant point (execution order)")
        ax.set_ylabel("SQNR vs float (dB)")
        ax.set_title("quantized model vs float model at each quant point")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out.append(stem.with_name(stem.name + "_sqnr.png"))
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    curves = [r for r in info["regions"] if r.get("curve") and r["loss_before"] > 0]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        cmap = plt.get_cmap("viridis")
        for k, r in enumerate(curves):
            pts = r["curve"]
            offsets, xs, total = {}, [], 0
            for phase, it, _ in pts:  # phases one after another on one iteration axis
                if phase not in offsets:
                    offsets[phase] = total
                xs.append(offsets[phase] + it)
                total = max(total, xs[-1] + 1)
            ax.plot(xs, [v / r["loss_before"] for _, _, v in pts], color=cmap(k / max(1, len(curves) - 1)), lw=1,
                    alpha=0.8)
        ax.axhline(1.0, color="#888888", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("iteration within the region (phases in order: scales, rounding, steps)")
        ax.set_ylabel("region loss / calibrated loss")
        ax.set_title(f"reconstruction loss curves ({len(curves)} regions, early = dark)")
        fig.tight_layout()
        out.append(stem.with_name(stem.name + "_curves.png"))
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    regs = [r for r in info["regions"] if r["loss_before"] > 0]
    if regs:
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(regs) + 2), 3.2))
        xs = np.arange(len(regs))
        ax.bar(xs - 0.2, [r["loss_before"] for r in regs], 0.4, label="calibrated (RTN)", color="#bbbbbb")
        ax.bar(xs + 0.2, [r["loss_after"] for r in regs], 0.4, label="reconstructed", color="#ee6677")
        ax.set_yscale("log")
        ax.set_xticks(xs[:: max(1, len(xs) // 20)])  # region numbers are integers
        ax.set_xlabel("region (execution order)")
        ax.set_ylabel("region loss")
        ax.set_title("reconstruction loss per region")
        ax.legend()
        fig.tight_layout()
        out.append(stem.with_name(stem.name + "_loss.png"))
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def _phases(seconds: dict) -> str:
    """``RegionResult.phase_seconds`` as "rounding 5.1, steps 3, cache 1.2, ...", largest first."""
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(seconds.items(), key=lambda kv: -kv[1]))


def _tables(info: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    s = info["summary"]
    run = [[k, _fmt(v) if not isinstance(v, dict) else ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items())]
           for k, v in s.items() if k != "weight_bits_per_layer"]
    lay_cols = ["layer", "op", "shape", "w_bits", "in_bits", "scale", "po2", "region", "loss_before", "loss_after",
                "seconds", "reverted"]
    if any("int_form" in x for x in info["layers"]):  # integer export: the ONNX form of each layer
        lay_cols += ["int_form", "int_form_why"]
    act_cols = ["tensor", "kind", "bits", "grid", "scale", "po2", "zero_point", "sqnr_db"]
    out = [("Run", ["field", "value"], run),
           ("Layers", lay_cols, [[_fmt(x[c]) for c in lay_cols] for x in info["layers"]]),
           ("Activations", act_cols, [[_fmt(a[c]) for c in act_cols] for a in info["activations"]])]
    if info["regions"]:
        cols = ["region", "layers", "loss_before", "loss_after", "seconds", "crop", "bias_corrected",
                "reverted"]  # no curve
        rows = [[_fmt(r[c]) for c in cols] + [_phases(r.get("phase_seconds") or {})] for r in info["regions"]]
        out.append(("Reconstruction regions", cols + ["seconds_by_phase"], rows))
    acc = info.get("accuracy_control")
    if acc is not None:
        out.append(_accuracy_table(acc))
        if acc.get("rounds"):
            cols = ["round", "goal", "kept", "calibrated_sqnr_db", "reconstructed_sqnr_db", "reconstructed_metric",
                    "seconds"]
            out.append(("Accuracy target rounds before reconstruction", cols, [
                [str(k), r["goal"], str(r["kept"]), _fmt(r["calibrated"]["sqnr_db"]),
                 _fmt(r["reconstructed"]["sqnr_db"]), _fmt(r["reconstructed"]["metric"]), _fmt(r["seconds"])]
                for k, r in enumerate(acc["rounds"], 1)]))
    return out


def _accuracy_table(acc: dict) -> tuple[str, list[str], list[list[str]]]:
    """The accuracy target's steps (accuracy/report.py), the state before them first."""
    cols = ["step", "layer", "change", "weights", "input", "measured_on", "alone_sqnr_db", "sensitivity", "sqnr_db",
            "metric", "weight_bytes", "kept"]
    b = acc["before"]
    rows = [["0", "(quantized)", "", "", "", "quantized", "", "", _fmt(b["sqnr_db"]), _fmt(b["metric"]),
             _fmt(acc["weight_bytes_before"]), ""]]
    for k, s in enumerate(acc["steps"], 1):
        on = f"calibrated, round {s['round']}" if s.get("round") else "quantized"
        rows.append([str(k), s["layer"], s["action"], s["w_bits"], s["in_bits"], on, _fmt(s["alone"]["sqnr_db"]),
                     _fmt(s["sensitivity"]), _fmt(s["measure"]["sqnr_db"]), _fmt(s["measure"]["metric"]),
                     _fmt(s["weight_bytes"]), "yes" if s["kept"] else "no (no gain)"])
    latency = "" if acc["latency_ms_before"] is None else (
        f", onnxruntime latency {acc['latency_ms_before']:.3f} -> {acc['latency_ms_after']:.3f} ms")
    title = (f"Accuracy target: {acc['target']}, {'met' if acc['met'] else 'MISSED'} on {acc['eval_samples']} samples "
             f"({acc['eval_source']}); weights {_fmt(acc['weight_bytes_before'])} -> {_fmt(acc['weight_bytes_after'])} "
             f"bytes{latency}")
    return title, cols, rows


def write_report(res, path: str | Path, data: Dataset | None = None) -> list[Path]:
    """Write the report (markdown for .md, else HTML) and its PNGs; returns every file written."""
    path = Path(path)
    t0 = time.perf_counter()
    info = collect(res, data)
    pngs = plots(info, path.with_suffix(""))
    title = f"onnxptq report: {res.qgraph.model.graph.name or 'model'} ({res.config.method}, W{res.config.w_bits}" \
            f"A{res.config.a_bits}, {res.config.scale} scales)"
    if path.suffix.lower() == ".md":
        lines = [f"# {title}", ""]
        lines += [f"![{p.stem}]({p.name})" for p in pngs] + ([""] if pngs else ["(matplotlib not installed: no plots)", ""])
        for name, cols, rows in _tables(info):
            lines += [f"## {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows] + [""]
        lines.append(f"Report written in {time.perf_counter() - t0:.1f} s; SQNR per quant point on "
                     f"{min(SQNR_SAMPLES, len(data)) if data is not None else 0} calibration samples.")
        path.write_text("\n".join(lines) + "\n")
    else:
        e = html.escape
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
                 "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
                 "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style></head><body>",
                 f"<h1>{e(title)}</h1>"]
        parts += [f"<p><img src='{e(p.name)}' alt='{e(p.stem)}'></p>" for p in pngs]
        for name, cols, rows in _tables(info):
            parts.append(f"<h2>{e(name)}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table>")
        parts.append("</body></html>")
        path.write_text("\n".join(parts))
    return [path, *pngs]
