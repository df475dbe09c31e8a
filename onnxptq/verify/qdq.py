"""Parity of the torch simulation with onnxruntime running the exported QDQ model (DESIGN.md section 7).

Level 2 (QDQ in onnxruntime): with Po2 scales and the exporter's exact containers the quantized
outputs agree bit for bit; with float scales near-ties may flip, so the report gives the exact-match
rate, the |delta| histogram in LSB of the output scale and the maximum |delta|.

``qdq_parity`` goes further, per quant point (every QuantizeLinear of the exported model is added as a
graph output, so onnxruntime's integers can be read after its QDQ fusions):

- ``end_to_end``: the simulation run freely vs onnxruntime, on every quant point's integers;
- ``local`` (teacher forcing): each op unit is fed onnxruntime's integers of its inputs, so a delta there
  is the rounding of that one unit (at most 1 LSB unless something is wrong), not accumulated upstream;
- ``ort_exact``: the same two comparisons for the "ort-exact" evaluation (``OrtExactRunner``): the
  simulation's parameters evaluated with onnxruntime's kernel arithmetic wherever onnxruntime fuses a
  QDQ unit into an integer kernel (QLinearConv, QGemm, QLinearAdd, QLinearMul,
  QLinearGlobalAveragePool): exact int32 accumulation, the float32 requantization multiplier and the
  order of float32 operations that MLAS uses, round half to even. Units that onnxruntime runs in float
  (DequantizeLinear -> float op -> QuantizeLinear: int4 weights, grids narrower than their uint8
  container, islands) are evaluated as the simulation does (float32 torch).
  This mode is for verification only; calibration keeps the differentiable fake-quant simulation.

The ORT formulas were read from onnxruntime/MLAS (qlinearconv.cc, requantize, qladd_avx2.cpp,
qlmul.cpp, qlgavgpool.cpp) and are checked against onnxruntime by the tests, not assumed.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from ..eval import run_onnxruntime, session_feeds
from ..sim.model import SimModel

INT_LAYER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul")
INT_MERGE_KERNELS = {"Add": "QLinearAdd", "Mul": "QLinearMul", "GlobalAveragePool": "QLinearGlobalAveragePool"}


@dataclass
class ParityReport:
    tensor: str
    samples: int
    elements: int
    exact_rate: float
    max_lsb: float
    histogram: dict[int, int] = field(default_factory=dict)  # |delta| in LSB -> count

    @property
    def bit_exact(self) -> bool:
        return self.max_lsb == 0

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "samples": self.samples, "elements": self.elements,
                "exact_rate": self.exact_rate, "max_lsb": self.max_lsb, "bit_exact": self.bit_exact,
                "histogram": self.histogram}


def _report(tensor: str, delta: np.ndarray, samples: int) -> ParityReport:
    delta = np.abs(np.asarray(delta)).astype(np.int64)
    values, counts = np.unique(delta, return_counts=True)
    return ParityReport(tensor, samples, int(delta.size), float(np.mean(delta == 0)) if delta.size else 1.0,
                        float(delta.max()) if delta.size else 0.0, {int(v): int(c) for v, c in zip(values, counts)})


def qdq_output_parity(sim: SimModel, model, inputs: dict[str, np.ndarray], batch_size: int = 32) -> ParityReport:
    """Compare the simulation's first output with onnxruntime's on the exported QDQ ``model``."""
    from ..sim.model import simulate

    out = sim.qg.outputs[0]
    ort_out = run_onnxruntime(model, inputs, batch_size)
    sim_out = simulate(sim, inputs, batch_size)
    fq = sim.act_quantizer(out) if out in sim.qg.quant_points else None
    scale = float(fq.params.scale) if fq is not None and fq.params is not None else 1.0
    delta = np.rint(np.abs(ort_out.astype(np.float64) - sim_out.astype(np.float64)) / scale).astype(np.int64)
    return _report(out, delta, len(sim_out))


# ---------------------------------------------------------------------------------------------- onnxruntime side

def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.ModelProto.FromString(model)
    return onnx.load(str(model))


def _session(model_bytes: bytes, optimized_path: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def quantized_name(tensor: str) -> str:
    """The exporter's QuantizeLinear output for quant point ``tensor`` (export/qdq.py)."""
    return f"{tensor}_quantized"


def ort_kernels(model, tensors: list[str] | None = None) -> dict[str, str]:
    """Quant point -> the onnxruntime op that produces its integers after graph optimization
    ("QLinearConv", "QLinearAdd", ... for fused integer kernels; "QuantizeLinear" when the unit runs in float).

    Looked up in the optimized graph of the model with the quant points' QuantizeLinear outputs added as graph
    outputs (as ``ort_quantized_tensors`` runs it); layout Transposes (NHWC kernels) are looked through."""
    m = _with_quant_outputs(_load(model), tensors)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "opt.onnx")
        _session(m.SerializeToString(), path)
        opt = onnx.load(path)
    producer = {o: n for n in opt.graph.node for o in n.output}
    out = {}
    for o in opt.graph.output:
        if not o.name.endswith("_quantized"):
            continue
        n = producer.get(o.name)
        while n is not None and n.op_type in ("Transpose", "Identity"):
            n = producer.get(n.input[0])
        out[o.name[: -len("_quantized")]] = n.op_type if n is not None else "input"
    return out


def _with_quant_outputs(model: onnx.ModelProto, tensors: list[str] | None) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    elem = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            zp = next((i for i in m.graph.initializer if i.name == n.input[2]), None)
            if zp is not None:
                elem[n.output[0]] = zp.data_type
    for n in m.graph.node:  # a clip in the integer domain (Q -> Clip -> DQ) writes the quant point's integers
        if n.op_type == "Clip" and n.input and n.input[0] in elem:
            elem[n.output[0]] = elem[n.input[0]]
    names = [quantized_name(t) for t in tensors] if tensors is not None else list(elem)
    have = {o.name for o in m.graph.output}
    for q in names:
        if q in elem and q not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(q, elem[q], None))
    return m


def ort_quantized_tensors(model, inputs: dict[str, np.ndarray], tensors: list[str], batch_size: int = 32
                          ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the QDQ model in onnxruntime (default optimizations) with every quant point's QuantizeLinear output
    added as a graph output: (first model output, {quant point: container integers})."""
    m = _with_quant_outputs(_load(model), tensors)
    added = {o.name for o in m.graph.output[len(_load(model).graph.output):]}
    names = [t for t in tensors if quantized_name(t) in added]
    sess = _session(m.SerializeToString())
    outs, qs = [], {t: [] for t in names}
    for feed, trim in session_feeds(sess, inputs, batch_size):
        res = sess.run(None, feed)
        outs.append(trim(res[0]))
        for t, r in zip(names, res[-len(names):] if names else []):
            qs[t].append(trim(r))
    return np.concatenate(outs), {t: np.concatenate(v).astype(np.int64) for t, v in qs.items()}


# ---------------------------------------------------------------------------------------------- simulation side

def _qp(sim: SimModel, tensor: str):
    """(scale f32, grid zero point, container shift, container min, container max) of quant point ``tensor``."""
    from ..export.qdq import CONTAINERS, _act_container

    p = sim.act_quantizer(tensor).params
    elem, zp_c, _, _ = _act_container(p)
    _, lo, hi = CONTAINERS[elem]
    zp = int(np.asarray(p.zero_point).reshape(()))
    return np.float32(np.asarray(p.scale).reshape(())), zp, int(np.asarray(zp_c).reshape(())) - zp, lo, hi


def _to_int(v: torch.Tensor, scale: np.float32, zp: int) -> torch.Tensor:
    """Grid integers of a fake-quantized value v = (q - z) * s (float64 division recovers q exactly)."""
    return torch.round(v.double() / float(scale)) + zp


def _from_int(q: torch.Tensor, scale: np.float32, zp: int) -> torch.Tensor:
    """(q - z) * s in float32: what DequantizeLinear and the simulation's fake-quant produce."""
    return (q.float() - float(zp)) * torch.tensor(scale, dtype=torch.float32)


def _fma32(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """float32 fused multiply-add (one rounding): exact float64 product and sum, then one rounding to float32.
    Exact here: a is an 8-bit integer and b, c float32 values of similar magnitude (sum fits 53 bits)."""
    return (a.double() * float(b) + (c.double() if isinstance(c, torch.Tensor) else float(c))).float()


def qlinear_add_f32(a_c: torch.Tensor, b_c: torch.Tensor, s_a, z_a: int, s_b, z_b: int, s_c, z_c: int) -> torch.Tensor:
    """MLAS QLinearAdd (AVX2) before rounding: fma(a, r_a, fma(b, r_b, fixed)) on the container integers, with
    r = f32(s / s_c) and fixed = z_c - fma(r_a, z_a, f32(r_b z_b)) (the compiler contracts r_a z_a + r_b z_b).
    Measured: the only variant equal to onnxruntime on all 256 x 256 input pairs of 67 Adds (digits and
    torchvision models, W8A8 float scales); the uncontracted fixed part misses 6 pairs, a-first order 14."""
    r_a, r_b = np.float32(np.float32(s_a) / np.float32(s_c)), np.float32(np.float32(s_b) / np.float32(s_c))
    part = _fma32(torch.tensor(float(z_a)), r_a, float(np.float32(r_b * np.float32(z_b)))).item()
    fixed = float(np.float32(np.float32(z_c) - np.float32(part)))
    return _fma32(a_c, r_a, _fma32(b_c, r_b, fixed))


class OrtExactRunner:
    """Evaluate a SimModel with onnxruntime's kernel arithmetic for the units onnxruntime fuses into integer
    kernels (``kernels`` from ``ort_kernels``); every other unit runs as in the simulation."""

    def __init__(self, sim: SimModel, kernels: dict[str, str]) -> None:
        from ..calib.calibrate import integer_bias, integer_weights

        self.sim, self.kernels = sim, kernels
        self._w: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in sim.qg.layers:
            if kernels.get(layer.output) not in INT_LAYER_KERNELS:
                continue
            p = sim.weight_quantizer(layer.name).params
            q = integer_weights(sim, layer.name)
            _, zp = p.shaped_for(q.ndim)
            w_int = torch.from_numpy((q - zp).astype(np.float64))
            b_int = torch.from_numpy(integer_bias(sim, layer.name).astype(np.float64)) if layer.bias else None
            self._w[layer.name] = (w_int, b_int)

    def layer(self, node, env) -> torch.Tensor:
        """QLinearConv / QGemm: exact integer accumulation + int32 bias, then f32(acc) * f32(s_x * s_w / s_y),
        round half to even, saturate to the container, add the output zero point."""
        from ..ops.simulate import conv, gemm

        sim, layer = self.sim, node.layer
        s_x, z_x, _, _, _ = _qp(sim, sim.qg.source[layer.input])
        s_y, z_y, shift_y, lo, hi = _qp(sim, layer.output)
        x_int = _to_int(env[layer.input], s_x, z_x) - z_x
        w_int, b_int = self._w[layer.name]
        if layer.op_type == "Conv":
            acc = conv(x_int, w_int, b_int, node.attrs)
            ch = (1, -1) + (1,) * (acc.dim() - 2)
        elif layer.op_type == "Gemm":
            acc = gemm(x_int, w_int, b_int, node.attrs)
            ch = (1, -1)
        else:
            acc = torch.matmul(x_int, w_int)
            ch = (1,) * (acc.dim() - 1) + (-1,)
        s_w = sim.weight_quantizer(layer.name).params.scale.astype(np.float32).reshape(-1)
        mult = ((s_x * s_w).astype(np.float32) / s_y).astype(np.float32)
        y = acc.float() * torch.from_numpy(mult).reshape(ch)
        zc = z_y + shift_y
        q_c = torch.clamp(torch.round(y) + zc, lo, hi)
        return _from_int(q_c - shift_y, s_y, z_y)

    def merge(self, node, ins: list[torch.Tensor]) -> torch.Tensor:
        """QLinearAdd / QLinearMul / QLinearGlobalAveragePool onto the unit's output grid (an Add's fused Relu,
        dropped in the QDQ file, is the clamp at the output zero point)."""
        sim, kind = self.sim, node.op_type
        srcs = [sim.qg.source[i] for i in node.inputs[: len(ins)]]
        s_y, z_y, shift_y, lo, hi = _qp(sim, sim.qg.unit_output(node.name, node.outputs[0]))
        zc = z_y + shift_y
        if kind == "GlobalAveragePool":
            s_x, z_x, shift_x, _, _ = _qp(sim, srcs[0])
            x_c = _to_int(ins[0], s_x, z_x) + shift_x
            n = int(np.prod(x_c.shape[2:]))
            acc = x_c.sum(dim=list(range(2, x_c.dim())), keepdim=True) - (z_x + shift_x) * n
            scale = np.float32(s_x / np.float32(s_y * np.float32(n)))
            y = acc.float() * float(scale)
        else:
            (s_a, z_a, sh_a, _, _), (s_b, z_b, sh_b, _, _) = (_qp(sim, s) for s in srcs)
            a_c = _to_int(ins[0], s_a, z_a) + sh_a
            b_c = _to_int(ins[1], s_b, z_b) + sh_b
            za, zb = z_a + sh_a, z_b + sh_b
            if kind == "Add":
                y = qlinear_add_f32(a_c, b_c, s_a, za, s_b, zb, s_y, zc)
                zc = 0  # the output zero point is already inside the rounded value
            else:  # MLAS QLinearMul: f32(int product) * f32(s_a * s_b / s_c), + zc, then round
                ratio = np.float32(np.float32(s_a * s_b) / s_y)
                y = (a_c - za) * (b_c - zb)
                y = y.float() * float(ratio) + float(np.float32(zc))
                zc = 0
        q_c = torch.clamp(torch.round(y) + zc, lo, hi)
        return _from_int(q_c - shift_y, s_y, z_y)

    def handles(self, node) -> bool:
        if node.layer is not None:
            return self.kernels.get(node.layer.output) in INT_LAYER_KERNELS
        want = INT_MERGE_KERNELS.get(node.op_type)
        return want is not None and self.kernels.get(self.sim.qg.unit_output(node.name, node.outputs[0])) == want


@torch.no_grad()
def simulate_quant_points(sim: SimModel, feeds: dict[str, torch.Tensor], kernels: dict | OrtExactRunner | None = None,
                          forced: dict[str, np.ndarray] | None = None,
                          points: list[str] | None = None,
                          outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Grid integers of every quant point (or of ``points``) for one batch.

    ``kernels`` (from ``ort_kernels``, or an ``OrtExactRunner``): evaluate in ort-exact mode; ``forced`` ({quant point: onnxruntime's
    container integers}): teacher forcing, each quant point is replaced by onnxruntime's value once computed.
    ``outputs``: filled with this run's graph outputs (float), so a caller needs no second forward pass.
    """
    runner = kernels if isinstance(kernels, OrtExactRunner) else OrtExactRunner(sim, kernels) if kernels else None
    qps = sim.qg.quant_points
    info = {t: _qp(sim, t) for t in (qps if points is None else points)}
    res: dict[str, np.ndarray] = {}

    def record(name: str, env) -> None:
        s, z, shift, _, _ = info[name]
        res[name] = _to_int(env[name], s, z).to(torch.int64).cpu().numpy()
        if forced is not None and name in forced:
            env[name] = _from_int(torch.from_numpy(forced[name] - shift), s, z).to(env[name].device)

    env: dict[str, torch.Tensor] = {}
    for name in sim.qg.inputs:
        x = feeds[name]
        env[name] = sim.act_quantizer(name)(x) if name in qps else x
        if name in info:
            record(name, env)
    skip: set[str] = set()
    for k, node in enumerate(sim.nodes):
        if node.name in skip:
            continue
        if runner is not None and runner.handles(node):
            out = sim.qg.unit_output(node.name, node.outputs[0])
            env[out] = runner.layer(node, env) if node.layer is not None else runner.merge(
                node, [env[i] for i in node.inputs if i])
            outs = [out]
            if node.name in sim.qg.fused_activations:  # computed with its fused Relu / Clip
                skip.add(sim.qg.fused_activations[node.name].act_node)
        else:
            sim.run_nodes(env, k, k + 1, keep=True)
            outs = [o for o in node.outputs if o]
        for o in outs:
            if o in info:
                record(o, env)
    if outputs is not None:
        outputs.update({o: env[o].cpu().numpy() for o in sim.qg.outputs})
    return res


# ---------------------------------------------------------------------------------------------- the report

@dataclass
class QDQParity:
    """Level-2 parity of a QDQ model, end to end and per quant point (see the module docstring)."""

    output: ParityReport  # model output: simulation vs onnxruntime (LSB of the output scale)
    end_to_end: dict[str, ParityReport]  # quant point -> simulation (free run) vs onnxruntime
    local: dict[str, ParityReport]  # quant point -> teacher-forced simulation vs onnxruntime
    exact_end_to_end: dict[str, ParityReport]  # same, ort-exact evaluation
    exact_local: dict[str, ParityReport]
    kernels: dict[str, str]  # quant point -> onnxruntime kernel producing it
    bits: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _worst(d: dict[str, ParityReport]) -> float:
        return max((r.max_lsb for r in d.values()), default=0.0)

    @property
    def max_local_lsb(self) -> float:
        return max(self._worst(self.local), self._worst(self.exact_local))

    @property
    def exact_output(self) -> ParityReport:
        return self.exact_end_to_end[self.output.tensor]

    def defects(self) -> list[str]:
        """|delta| > 1 LSB that rounding alone cannot explain: any teacher-forced (local) delta > 1, or an
        ort-exact end-to-end delta > 1 at a quant point whose whole upstream runs on integer kernels."""
        bad = [f"{t}: local {r.max_lsb:g} LSB ({self.kernels.get(t, '?')})" for d in (self.local, self.exact_local)
               for t, r in d.items() if r.max_lsb > 1]
        return bad

    @staticmethod
    def _agg(d: dict[str, ParityReport]) -> dict:
        hist: dict[int, int] = {}
        for r in d.values():
            for k, v in r.histogram.items():
                hist[k] = hist.get(k, 0) + v
        n = sum(hist.values())
        return {"elements": n, "exact_rate": hist.get(0, 0) / n if n else 1.0, "max_lsb": max(hist, default=0),
                "histogram": dict(sorted(hist.items()))}

    def to_dict(self) -> dict:
        by_kernel: dict[str, list[str]] = {}
        for t, k in self.kernels.items():
            by_kernel.setdefault(k, []).append(t)
        return {
            "output": self.output.to_dict(),
            "ort_exact_output": self.exact_output.to_dict(),
            "quant_points": {name: self._agg(d) for name, d in (
                ("end_to_end", self.end_to_end), ("local", self.local),
                ("ort_exact_end_to_end", self.exact_end_to_end), ("ort_exact_local", self.exact_local))},
            "local_by_kernel": {k: self._agg({t: self.local[t] for t in ts if t in self.local})
                                for k, ts in sorted(by_kernel.items())},
            "ort_exact_local_by_kernel": {k: self._agg({t: self.exact_local[t] for t in ts if t in self.exact_local})
                                          for k, ts in sorted(by_kernel.items())},
            "defects": self.defects(),
        }


def qdq_parity(sim: SimModel, model, inputs: dict[str, np.ndarray], batch_size: int = 32) -> QDQParity:
    """Level-2 report of the exported QDQ ``model`` against ``sim`` on ``inputs`` (see the module docstring)."""
    qps = list(sim.qg.quant_points)
    kernels = ort_kernels(model, qps)
    ort_out, ort_q = ort_quantized_tensors(model, inputs, qps, batch_size)
    names = [t for t in qps if t in ort_q]
    runner = OrtExactRunner(sim, kernels)
    runs = {"e2e": {}, "local": {}, "x_e2e": {}, "x_local": {}}
    n = len(next(iter(inputs.values())))
    for i in range(0, n, batch_size):
        feeds = {k: torch.from_numpy(v[i:i + batch_size]) for k, v in inputs.items()}
        forced = {t: ort_q[t][i:i + batch_size] for t in names}
        for key, kw in (("e2e", {}), ("local", {"forced": forced}), ("x_e2e", {"kernels": runner}),
                        ("x_local", {"kernels": runner, "forced": forced})):
            got = simulate_quant_points(sim, feeds, **kw)
            for t in names:
                runs[key].setdefault(t, []).append(got[t])
    shifts = {t: _qp(sim, t)[2] for t in names}
    reps = {key: {t: _report(t, np.concatenate(v) - (ort_q[t] - shifts[t]), n) for t, v in d.items()}
            for key, d in runs.items()}
    out = sim.qg.source.get(sim.qg.outputs[0], sim.qg.outputs[0])  # output quant point (through Flatten, ...)
    if out not in reps["e2e"]:
        raise ValueError(f"the model output {sim.qg.outputs[0]!r} is not quantized; level-2 parity needs a QDQ output")
    output = reps["e2e"][out]
    return QDQParity(output, reps["e2e"], reps["local"], reps["x_e2e"], reps["x_local"],
                     {t: kernels.get(t, "?") for t in names},
                     {t: int(sim.act_quantizer(t).params.grid.bits) for t in names})


# ---------------------------------------------------------------------------------------------- QDQ file alone

@dataclass
class QdqTensorParity:
    tensor: str
    elements: int
    exact_rate: float
    max_lsb: int
    histogram: dict[int, int]


def qdq_file_parity(model: onnx.ModelProto, inputs: dict[str, np.ndarray], batch_size: int = 16) -> list[QdqTensorParity]:
    """Level 2 for a QDQ file without its simulation (``onnxptq verify model.qdq.onnx``): onnxruntime
    (fused integer kernels) vs ``runtime/`` executing the graph op by op (DequantizeLinear -> float op ->
    QuantizeLinear, the simulation's semantics), on every QuantizeLinear output, in LSB of that tensor."""
    import runtime

    m = _with_quant_outputs(model, None)
    names = [o.name for o in m.graph.output[len(model.graph.output):]]
    sess = _session(m.SerializeToString())
    rt = runtime.Session(model)
    n = len(next(iter(inputs.values())))
    acc: dict[str, list] = {x: [0, 0, {}] for x in names}
    for i in range(0, n, batch_size):
        feeds = {k: v[i:i + batch_size] for k, v in inputs.items()}
        ort_out = dict(zip(names, sess.run(names, feeds)))
        rt_out = rt.run(feeds, outputs=names)
        for x in names:
            d = np.abs(ort_out[x].astype(np.int64) - rt_out[x].astype(np.int64))
            a = acc[x]
            a[0] += int(d.size)
            a[1] += int((d == 0).sum())
            for v, c in zip(*np.unique(d, return_counts=True)):
                a[2][int(v)] = a[2].get(int(v), 0) + int(c)
    return [QdqTensorParity(x, a[0], a[1] / max(a[0], 1), max(a[2]) if a[2] else 0, dict(sorted(a[2].items())))
            for x, a in acc.items() if a[0]]
