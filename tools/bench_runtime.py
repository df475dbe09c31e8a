#!/usr/bin/env python3
"""Benchmark runtime/ (NumPy reference executor) against onnxruntime on one ONNX model.

    python tools/bench_runtime.py MODEL.onnx [--batch 1] [--iters 20] [--warmup 3] [--threads N]

Random valid inputs are generated for every graph input (float: standard normal; integers: the
type's full range; a symbolic or unknown first dimension takes ``--batch``). Both engines run
``--warmup`` untimed iterations, then ``--iters`` timed ones; the median ms/iteration of each and
the ratio runtime/onnxruntime are printed, plus whether the outputs agree (bit-exact for integer
outputs, max |diff| for float ones).

``--threads N`` sets the BLAS threads of NumPy (OPENBLAS/OMP/MKL_NUM_THREADS, before NumPy is
imported) and onnxruntime's intra-op threads, so both engines get the same cores.

Self-built demo models (float input, int8 ConvInteger inside, per DESIGN.md section 4):

    python tools/bench_runtime.py --make-demo conv OUT.onnx      # 1x32x112x112: 3x3 32->32, dw 3x3
    python tools/bench_runtime.py --make-demo effnet OUT.onnx    # EfficientNet-Lite0-shaped int8 net
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="ONNX model path (or output path with --make-demo)")
    p.add_argument("--batch", type=int, default=1, help="batch size for a symbolic first dimension")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="threads for both engines (0: defaults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--make-demo", choices=["conv", "effnet"], help="write a demo model to MODEL and exit")
    p.add_argument("--resolution", type=int, default=224, help="input resolution of --make-demo effnet")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ------------------------------------------------------------------------------ demo models


class _Builder:
    """Tiny helper to emit an integer ONNX graph in the DESIGN.md section 4 style."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, value: np.ndarray, base: str = "c") -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), nm))
        return nm

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def quantize_input(self, x: str, frac: int) -> str:
        """Model input: Mul(2^f) -> Round -> Clip -> Cast(int8)."""
        y = self.node("Mul", [x, self.const(np.float32(2.0**frac))])
        y = self.node("Round", [y])
        y = self.node("Clip", [y, self.const(np.float32(-128)), self.const(np.float32(127))])
        return self.node("Cast", [y], to=TensorProto.INT8)

    def requant(self, acc: str, shift: np.ndarray, lo: int, hi: int) -> str:
        """Exact RNE(acc / 2^n) per channel from int32 Mod/Div, then Clip and Cast(int8)."""
        d = (2 ** shift.astype(np.int64)).astype(np.int32).reshape(1, -1, 1, 1)
        dn = self.const(d, "D")
        m = self.node("Mod", [acc, dn], fmod=0)
        f = self.node("Div", [self.node("Sub", [acc, m]), dn])
        odd = self.node("Mod", [f, self.const(np.int32(2))], fmod=0)
        t = self.node("Add", [self.node("Add", [acc, self.const(d // 2 - 1, "half")]), odd])
        y = self.node("Div", [self.node("Sub", [t, self.node("Mod", [t, dn], fmod=0)]), dn])
        y = self.node("Clip", [y, self.const(np.int32(lo)), self.const(np.int32(hi))])
        return self.node("Cast", [y], to=TensorProto.INT8)

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             relu6: bool = True) -> str:
        w = self.rng.integers(-127, 128, (cout, cin // group, k, k)).astype(np.int8)
        acc = self.node("ConvInteger", [x, self.const(w, "w")], group=group, strides=[stride] * 2,
                        pads=[k // 2] * 4)
        b = self.rng.integers(-2000, 2000, (1, cout, 1, 1)).astype(np.int32)
        acc = self.node("Add", [acc, self.const(b, "b")])
        kk = cin // group * k * k
        shift = np.full(cout, max(1, int(np.log2(kk * 127 * 64)) - 7))
        return self.requant(acc, shift, 0 if relu6 else -128, 127)

    def add(self, a: str, b: str) -> str:
        s = self.node("Add", [self.node("Cast", [a], to=TensorProto.INT32),
                              self.node("Cast", [b], to=TensorProto.INT32)])
        return self.requant(s, np.ones(1, np.int64), -128, 127)

    def model(self, x_shape: list, out: str, out_frac: int) -> onnx.ModelProto:
        y = self.node("Cast", [out], to=TensorProto.FLOAT)
        y = self.node("Mul", [y, self.const(np.float32(2.0**-out_frac))])
        self.nodes[-1].output[0] = "logits"
        g = helper.make_graph(
            self.nodes, "demo",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch"] + x_shape[1:])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
            initializer=self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        m.ir_version = 10
        return m


def make_demo_conv(seed: int = 0) -> onnx.ModelProto:
    """1x32x112x112: quantize, 3x3 ConvInteger 32->32, depthwise 3x3 ConvInteger, dequantize."""
    b = _Builder(seed)
    x = b.quantize_input("input", 4)
    h = b.conv(x, 32, 32, 3)
    h = b.conv(h, 32, 32, 3, group=32)
    return b.model([1, 32, 112, 112], h, 4)


def make_demo_effnet(resolution: int = 224, seed: int = 0) -> onnx.ModelProto:
    """EfficientNet-Lite0-shaped int8 network (ReLU6, no SE), random weights, 1000 logits."""
    b = _Builder(seed)
    x = b.quantize_input("input", 5)
    h = b.conv(x, 3, 32, 3, 2)
    c = 32
    # (expansion, kernel, stride, out channels, repeats) -- EfficientNet-Lite0
    for e, k, s, co, r in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(r):
            stride = s if i == 0 else 1
            inp = h
            mid = c * e
            t = b.conv(h, c, mid, 1) if e != 1 else h
            t = b.conv(t, mid, mid, k, stride, group=mid)
            t = b.conv(t, mid, co, 1, relu6=False)
            h = b.add(inp, t) if stride == 1 and c == co else t
            c = co
    h = b.conv(h, c, 1280, 1)
    s = b.node("ReduceSum", [b.node("Cast", [h], to=TensorProto.INT32),
                             b.const(np.array([2, 3], np.int64))], keepdims=0)
    hw = (resolution // 32) ** 2
    s = b.node("Div", [s, b.const(np.int32(hw))])
    s = b.node("Cast", [b.node("Clip", [s, b.const(np.int32(-128)), b.const(np.int32(127))])],
               to=TensorProto.INT8)
    w = b.rng.integers(-127, 128, (1280, 1000)).astype(np.int8)
    logits = b.node("MatMulInteger", [s, b.const(w, "fc")])
    return b.model([1, 3, resolution, resolution], logits, 12)


# ---------------------------------------------------------------------------------- bench


def random_inputs(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif i == 0:
                shape.append(batch)
            else:
                raise SystemExit(f"input {vi.name!r}: dimension {i} is not static; cannot pick a size")
        if shape and shape[0] != batch:
            print(f"note: input {vi.name!r} has a fixed batch of {shape[0]}; --batch ignored")
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        else:
            info = np.iinfo(dtype)
            feeds[vi.name] = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    return feeds


def _time(fn, warmup: int, iters: int) -> tuple[float, float]:
    """Median wall-clock and process-CPU milliseconds per call.

    CPU time (all threads of this process) is the steadier number on a loaded machine; with
    ``--threads 1`` it is the compute cost of one iteration.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def bench(path: str, batch: int, iters: int, warmup: int, threads: int, seed: int) -> dict:
    import onnxruntime as ort

    import runtime

    model = onnx.load(path)
    feeds = random_inputs(model, batch, seed)
    t0 = time.perf_counter()
    sess = runtime.Session(path)
    load_ms = (time.perf_counter() - t0) * 1e3
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    osess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in osess.get_outputs()]
    ours = sess.run(feeds, outputs=names)
    theirs = dict(zip(names, osess.run(names, feeds)))
    agree = {}
    for n in names:
        a, b = ours[n], theirs[n]
        if a.dtype.kind in "iub":
            agree[n] = f"{np.count_nonzero(a != b)} of {a.size} differ"
        else:
            agree[n] = f"max |diff| {float(np.max(np.abs(a.astype(np.float64) - b))):.3g}"
    rt_ms, rt_cpu = _time(lambda: sess.run(feeds, outputs=names), warmup, iters)
    ort_ms, ort_cpu = _time(lambda: osess.run(names, feeds), warmup, iters)
    return {"runtime_ms": rt_ms, "ort_ms": ort_ms, "ratio": rt_ms / ort_ms, "load_ms": load_ms,
            "runtime_cpu_ms": rt_cpu, "ort_cpu_ms": ort_cpu,
            "agree": agree, "inputs": {k: (str(v.dtype), list(v.shape)) for k, v in feeds.items()}}


def main() -> None:
    a = ARGS
    if a.make_demo:
        m = make_demo_conv(a.seed) if a.make_demo == "conv" else make_demo_effnet(a.resolution, a.seed)
        onnx.save(m, a.model)
        print(f"wrote {a.model} ({len(m.graph.node)} nodes)")
        return
    r = bench(a.model, a.batch, a.iters, a.warmup, a.threads, a.seed)
    print(f"model    {a.model}")
    print(f"inputs   {r['inputs']}   threads {a.threads or 'default'}   "
          f"warm-up {a.warmup}, {a.iters} timed iterations (median)")
    print(f"runtime/      {r['runtime_ms']:9.2f} ms/iter wall  {r['runtime_cpu_ms']:9.2f} ms/iter CPU"
          f"   (session load {r['load_ms']:.0f} ms)")
    print(f"onnxruntime   {r['ort_ms']:9.2f} ms/iter wall  {r['ort_cpu_ms']:9.2f} ms/iter CPU")
    print(f"ratio runtime/onnxruntime = {r['ratio']:.2f}x wall, "
          f"{r['runtime_cpu_ms'] / r['ort_cpu_ms']:.2f}x CPU")
    for n, s in r["agree"].items():
        print(f"output {n!r}: {s}")


if __name__ == "__main__":
    main()
