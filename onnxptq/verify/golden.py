"""Golden integer tensors for hardware teams: every integer tensor of one input, from ``runtime/``.

``dump_golden(model, inputs, out_dir)`` writes, for each integer tensor in execution order:
``NNNN_<name>.npy`` and its bytes (little-endian, C order) at an offset of ``golden.bin``, plus
``index.json`` listing name, file, shape, dtype, byte offset/length and, for activation containers
(uint8; int8 in older programs), the fractional bits f and zero point z (value = (c - z) * 2^-f).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from ..errors import OutputError


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_")[:80] or "tensor"


def dump_golden(model: onnx.ModelProto, inputs: dict[str, np.ndarray], out_dir: str | os.PathLike,
                force: bool = False) -> dict:
    """Write the golden tensors of ``inputs`` (one sample or a small batch) to ``out_dir``."""
    import runtime

    from ..export.integer import qname
    from .integer import is_integer_model, load_program

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputError(f"{out} exists and is not empty; pass --force to replace it")
    info: dict[str, dict] = {}
    if is_integer_model(model):
        program, _, _ = load_program(model)
        info = {qname(t): {"frac_bits": v.frac, "zero_point": v.zp, "bits": v.bits, "signed": v.signed}
                for t, v in program.tensors.items()}
    sess = runtime.Session(model)
    env = sess.run(inputs, keep=True)
    order = [o for n in model.graph.node for o in n.output if o]
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        entries, offset = [], 0
        with open(tmp / "golden.bin", "wb") as binf:
            for k, name in enumerate([n for n in inputs] + order):
                if name not in env:
                    continue
                a = np.ascontiguousarray(env[name])
                if a.dtype.kind not in "iu":
                    continue
                le = a.astype(a.dtype.newbyteorder("<"), copy=False)
                fname = f"{len(entries):04d}_{_safe(name)}.npy"
                np.save(tmp / fname, a)
                data = le.tobytes()
                binf.write(data)
                entries.append({"name": name, "file": fname, "shape": list(a.shape), "dtype": str(a.dtype),
                                "offset": offset, "nbytes": len(data), **info.get(name, {})})
                offset += len(data)
        index = {"model_inputs": {k: list(v.shape) for k, v in inputs.items()}, "tensors": entries,
                 "binary": "golden.bin", "byte_order": "little", "layout": "C order"}
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return index
