"""Fingerprints of quantized models over a matrix of options: proof that a refactor changed no output.

Quantizes the shipped digits models with every method, scale kind and export format (short schedules), and
records per configuration the SHA-256 of the exported model's bytes, of the simulation's output on 32
validation samples, and the output SQNR against the float model. Run it at two commits and compare:

    python tools/regression_hashes.py --out before.json            # at the old commit
    python tools/regression_hashes.py --compare before.json        # at the new one: lists what changed

Exit status 1 when ``--compare`` finds a difference.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHORT = dict(iters=20, act_iters=10, num_calib=64, recon_batch_size=8, progress=False)
CONFIGS: dict[str, dict] = {
    "rtn": dict(progress=False),
    "rtn-w4a4": dict(w_bits=4, a_bits=4, progress=False),
    "rtn-po2-int": dict(scale="po2", format="int", progress=False),
    "rtn-po2-int-portable": dict(scale="po2", format="int", int_kernels="portable", progress=False),
    "rtn-po2-qdq": dict(scale="po2", progress=False),
    "rtn-floor": dict(rounding="floor", w_bits=4, progress=False),
    "rtn-ecaq-int": dict(ecaq=True, scale="po2", format="int", a_bits=4, progress=False),
    "rtn-tensorrt": dict(target="tensorrt", progress=False),
    "rtn-openvino": dict(target="openvino", w_bits=4, progress=False),
    "mixed-coding": dict(mixed="coding-length", progress=False),
    "adaround-w4a8": dict(method="adaround", w_bits=4, **{k: v for k, v in SHORT.items() if k != "act_iters"}),
    "brecq-w3a4": dict(method="brecq", w_bits=3, a_bits=4, **SHORT),
    "brecq-fisher": dict(method="brecq", w_bits=4, a_bits=4, loss="fisher", **SHORT),
    "qdrop-w4a4": dict(method="qdrop", w_bits=4, a_bits=4, **{k: v for k, v in SHORT.items() if k != "act_iters"}),
    "rapq-w4a4-int": dict(method="rapq", w_bits=4, a_bits=4, scale="po2", format="int", **SHORT),
    "attention-w4a8": dict(method="attention", w_bits=4, **SHORT),
    "bitsplit-w4a8": dict(method="bitsplit", w_bits=4, bitsplit_points=512, bitsplit_iters=5, num_calib=64,
                          progress=False),
    "bitsplit-log-ecaq": dict(method="bitsplit", weight_grid="log", w_bits=3, ecaq=True, bitsplit_points=512,
                              bitsplit_iters=5, num_calib=64, progress=False),
}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def run(models: list[str], names: list[str]) -> dict:
    import onnxptq
    from onnxptq.eval import run_onnxruntime, sqnr_db

    calib = dict(np.load(ROOT / "models" / "digits_calib.npz"))
    val = {"input": np.load(ROOT / "models" / "digits_val.npz")["input"][:32]}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            path = ROOT / "models" / f"{model}.onnx"
            ref = run_onnxruntime(str(path), val)
            for name in names:
                t0 = time.perf_counter()
                res = onnxptq.quantize(path, calib, output=Path(tmp) / f"{model}-{name}.onnx", check_kernels=False,
                                       **CONFIGS[name])
                sim = res.simulate(val)
                out[f"{model}/{name}"] = {"model_sha": sha(res.model.SerializeToString()),
                                          "sim_sha": sha(np.ascontiguousarray(sim).tobytes()),
                                          "sqnr_db": round(float(sqnr_db(ref, sim)), 3),
                                          "seconds": round(time.perf_counter() - t0, 1)}
                print(f"{model}/{name}: {out[f'{model}/{name}']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits_resnet,digits_mbv2")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    p.add_argument("--out", default=None, help="write the fingerprints to this JSON file")
    p.add_argument("--compare", default=None, help="compare with fingerprints written by --out")
    a = p.parse_args(argv)
    names = [n for n in a.configs.split(",") if n]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        p.error(f"unknown configs {bad}; known: {', '.join(CONFIGS)}")
    got = run(a.models.split(","), names)
    if a.out:
        Path(a.out).write_text(json.dumps(got, indent=1))
    if a.compare:
        old = json.loads(Path(a.compare).read_text())
        diff = [k for k in got if k in old and (got[k]["model_sha"], got[k]["sim_sha"]) !=
                (old[k]["model_sha"], old[k]["sim_sha"])]
        for k in diff:
            print(f"changed: {k}: SQNR {old[k]['sqnr_db']} -> {got[k]['sqnr_db']} dB")
        print(f"{len(got) - len(diff)}/{len(got)} configurations identical")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
