"""Shift-based integer ONNX (DESIGN.md section 4): standard ops only, every arithmetic step exact.

Writes an ``IntProgram`` (``export/intplan.py``) as ONNX on uint8 activation containers (int8 for
programs recorded before the compact form):
- model input: ``Mul(2^f) -> Round -> Add(z) -> Clip -> Cast``; outputs: ``(Cast(c) - z) * 2^-f``;
- Conv/Gemm/MatMul, compact form (where ``intplan.qlinear_form`` proved it exact): ``QLinearConv`` /
  ``QLinearMatMul`` with Po2 scales (multiplier exactly 2^-n[c]), then a ``Clip`` on the container when
  the grid or a fused Relu/ReLU6 is narrower; Gemm with a 2-D input as a 1x1 QLinearConv between two
  Reshapes (QLinearMatMul has no bias);
- Conv/Gemm/MatMul, shift recipe otherwise: ``ConvInteger`` / ``MatMulInteger`` with the input zero
  point (explicit ``Pad`` with the zero point when the input has one), + int32 bias, then the
  per-channel RNE shift R(a, n) built from ``Mod``/``Div`` (floor via ``a - Mod(a, D)``: exact for any
  integer), ``+ z_y``, ``Clip`` to the grid (fused Relu/ReLU6 bounds included), ``Cast``;
- Add/Sub/Sum, Mul and power-of-two average pools: exact float32 ops (``Cast``, ``Mul`` by 2^e, ``Add``,
  ``Round``) where ``intplan.float_form`` bounds every value by 2^24, else operands shifted left to the
  common fraction, added in int32/int64, then R;
- MatMul of two activations: ``QLinearMatMul`` where proven exact, else ``MatMulInteger`` and R;
- an activation and a constant per position (x + P, x * gamma): (c - z) * M + B with integer constants, R;
- Softmax: ``ReduceMax`` - c indexes an exp table (``Gather``), ``ReduceSum``, exact RNE division by the sum;
- Concat (each input requantized), other average pools (``ReduceSum`` or a ones-kernel ``ConvInteger``,
  then exact RNE division), elementwise activations (``Gather`` lookup tables over the input grid),
  data movement (``MaxPool``, ``Reshape``, ``Pad`` with the zero point, ...) directly on the containers.
- LayerNormalization in int64 with one float64 ``Sqrt`` of an integer below 2^52 (exact; ``s_layernorm``).
Accumulators switch to int64 where the lowering could not prove |a| + 2^(n-1) < 2^31.
The program itself is embedded as JSON metadata (``onnxptq.program``) so ``onnxptq verify`` can
replay the quantizer's integer simulation against the file.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .intplan import CONTAINERS, IntProgram, Step, TInt

PROGRAM_KEY = "onnxptq.program"
FORMAT_KEY = "onnxptq.format"


#: Step kind -> writer method; covers every integer-lowering kind of ops.registry (tests/test_opspec.py).
WRITERS = {"input": "s_input", "layer": "s_layer", "add": "s_add", "mul": "s_mul", "affine": "s_affine",
           "matmul": "s_matmul", "concat": "s_concat", "avgpool": "s_avgpool", "softmax": "s_softmax", "lut": "s_lut",
           "layernorm": "s_layernorm", "batchnorm": "s_affine", "l2norm": "s_l2norm", "div": "s_div", "carry": "s_copy",
           "pass": "s_copy", "output": "s_output", "dilate": "s_dilate", "intcast": "s_intcast",
           "einsum": "s_einsum", "select": "s_select"}


def qname(t: str) -> str:
    """Name of the integer container tensor of float tensor ``t``."""
    return f"{t}.q"


def weight_digits(w: np.ndarray, base: int = 128) -> list[np.ndarray]:
    """Non-negative integer weights as base-``base`` digits, lowest first: ``w = sum_k base^k d_k`` with every
    ``0 <= d_k < base`` (a ConvInteger weight in int8 or uint8); one digit when ``w < base``."""
    w = np.asarray(w, dtype=np.int64)
    if (w < 0).any():
        raise ValueError("weight_digits takes non-negative weights")
    digits = [w % base]
    rest = w // base
    while rest.any():
        digits.append(rest % base)
        rest //= base
    return digits


class IntegerWriter:
    def __init__(self, program: IntProgram, source: onnx.ModelProto) -> None:
        self.p, self.src = program, source
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self.cdt = np.dtype(program.container)  # activation container dtype (int8 or uint8)
        self.celem = TensorProto.UINT8 if program.container == "uint8" else TensorProto.INT8

    # ------------------------------------------------------------------ helpers
    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def const(self, base: str, arr) -> str:
        name = self._unique(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, out: str | None = None, **attrs) -> str:
        out = out or self._unique(base)
        self._names.add(out)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._unique(f"{base}/{op_type}"), **attrs))
        return out

    def int_of(self, t: str) -> str:
        return qname(t) if t in self.p.tensors else t

    @staticmethod
    def _dt(wide: bool):
        return (TensorProto.INT64, np.int64) if wide else (TensorProto.INT32, np.int32)

    def widen(self, c: str, zp: int, wide: bool, base: str) -> str:
        """Container (int8 or uint8) -> centred int32/int64 value c - z."""
        elem, np_dt = self._dt(wide)
        v = self.op("Cast", [c], f"{base}/wide", to=elem)
        if zp:
            v = self.op("Sub", [v, self.const(f"{base}/zp", np_dt(zp))], f"{base}/centred")
        return v

    def requant(self, a: str, shift, pre: int, wide: bool, base: str, shape: list[int] | None = None) -> str:
        """R(a * 2^pre, n + pre) (``quant.requant.requant_shift``) from Mul/Mod/Div/Add/Sub."""
        elem, np_dt = self._dt(wide)
        n = np.asarray(shift, dtype=np.int64) + pre
        if pre:
            a = self.op("Mul", [a, self.const(f"{base}/pre", np_dt(2 ** pre))], f"{base}/pre_shifted")
        uniform = n.size == 1 or np.all(n == n.reshape(-1)[0])
        d = (np.int64(1) << (n.reshape(-1)[:1] if uniform else n)).astype(np_dt)
        if uniform:
            d = d.reshape(())
        elif shape is not None:
            d = d.reshape(shape)
        D = self.const(f"{base}/D", d)
        if self.p.rounding == "half_up":
            t = self.op("Add", [a, self.const(f"{base}/half", (d // 2).astype(np_dt))], f"{base}/biased")
        else:
            m = self.op("Mod", [a, D], f"{base}/mod")
            f = self.op("Div", [self.op("Sub", [a, m], f"{base}/floor_num"), D], f"{base}/floor")
            odd = self.op("Mod", [f, self.const(f"{base}/two", np_dt(2))], f"{base}/odd")
            t = self.op("Add", [self.op("Add", [a, self.const(f"{base}/half_m1", (d // 2 - 1).astype(np_dt))],
                                        f"{base}/biased0"), odd], f"{base}/biased")
        return self.op("Div", [self.op("Sub", [t, self.op("Mod", [t, D], f"{base}/tmod")], f"{base}/tfloor"), D],
                       f"{base}/rounded")

    def finish(self, v: str, step: Step, out: str, wide: bool, base: str,
               channel_shape: list[int] | None = None) -> str:
        """+ z_y, Clip to the grid, Cast to the container. ``channel_shape``: how a per-output-channel top
        broadcasts."""
        _, np_dt = self._dt(wide)
        a = step.attrs
        if a["y_zp"]:
            v = self.op("Add", [v, self.const(f"{base}/y_zp", np_dt(a["y_zp"]))], f"{base}/with_zp")
        hi = a["hi"]
        per_channel = isinstance(hi, np.ndarray)
        v = self.op("Clip", [v, self.const(f"{base}/lo", np_dt(a["lo"])),
                             self.const(f"{base}/hi", np_dt(hi.max() if per_channel else hi))], f"{base}/clipped")
        if per_channel:  # ECAQ output with a fused Relu6 / Clip: one top per output channel (Clip takes scalars)
            v = self.op("Min", [v, self.const(f"{base}/hi_per_channel", hi.astype(np_dt).reshape(channel_shape))],
                        f"{base}/clipped_per_channel")
        return self.op("Cast", [v], base, out=out, to=self.celem)

    def pad_zp(self, x: str, pads: list[int], zp: int, base: str) -> str:
        """Explicit constant Pad of an NCHW container tensor with its zero point (real value 0)."""
        nd = len(pads) // 2
        full = [0, 0, *pads[:nd], 0, 0, *pads[nd:]]
        return self.op("Pad", [x, self.const(f"{base}/pads", np.array(full, np.int64)),
                               self.const(f"{base}/pad_value", self.cdt.type(zp))], f"{base}/padded", mode="constant")

    # ------------------------------------------------------------------ steps
    def quantize(self, v: str, frac: int, zp: int, lo: int, hi: int, base: str, out: str, ftype=np.float32) -> str:
        """Float values ``v`` (of numpy type ``ftype``) to their codes: Mul(2^f), Round (half to even), + z,
        Clip to [lo, hi], Cast to the container."""
        v = self.op("Mul", [v, self.const(f"{base}/scale", ftype(2.0 ** frac))], f"{base}/scaled")
        v = self.op("Round", [v], f"{base}/rounded")
        if zp:
            v = self.op("Add", [v, self.const(f"{base}/zp", ftype(zp))], f"{base}/with_zp")
        v = self.op("Clip", [v, self.const(f"{base}/lo", ftype(lo)), self.const(f"{base}/hi", ftype(hi))],
                    f"{base}/clipped")
        return self.op("Cast", [v], base, out=out, to=self.celem)

    def s_input(self, step: Step) -> None:
        t: TInt = self.p.tensors[step.outputs[0]]
        x = step.inputs[0]
        self.quantize(x, t.frac, t.zp, t.lo, t.hi, f"{step.node}/quantize", qname(x))

    def s_intcast(self, step: Step) -> None:
        """An integer tensor to its codes: Cast(double) (exact below 2^53), then ``quantize`` in float64."""
        a, base = step.attrs, step.node
        v = self.op("Cast", [step.inputs[0]], f"{base}/double", to=TensorProto.DOUBLE)
        self.quantize(v, a["frac"], a["y_zp"], a["lo"], a["hi"], base, qname(step.outputs[0]), np.float64)

    def s_layer(self, step: Step) -> None:
        if step.attrs.get("form", "shift") != "shift":
            self.s_layer_qlinear(step)
            return
        a, base = step.attrs, step.node
        wide = a["wide"]
        x = qname(step.inputs[0])
        w = self.p.arrays[a["weight"]]
        w_name = self.const(a["weight"], w)
        x_zp = self.const(f"{base}/x_zp", self.cdt.type(a["x_zp"]))
        zps = [x_zp, self.const(f"{base}/w_zp", w.dtype.type(a["w_zp"]))] if a.get("w_zp") else [x_zp]
        if a["op_type"] == "Conv":
            conv_attrs = dict(a["conv"])
            pads = list(conv_attrs.get("pads", []))
            if a["x_zp"] and any(pads):
                x = self.pad_zp(x, pads, a["x_zp"], base)
                conv_attrs.pop("pads")
            acc = self.op("ConvInteger", [x, w_name, *zps], f"{base}/acc", **conv_attrs)
            shape = [-1] + [1] * (w.ndim - 2)
        else:
            acc = self.op("MatMulInteger", [x, w_name, *zps], f"{base}/acc")
            shape = [-1]
        elem, np_dt = self._dt(wide)
        if wide:
            acc = self.op("Cast", [acc], f"{base}/acc64", to=elem)
        if a["bias"] is not None:
            b = self.p.arrays[a["bias"]].astype(np_dt).reshape(shape)
            acc = self.op("Add", [acc, self.const(a["bias"], b)], f"{base}/acc_bias")
        r = self.requant(acc, a["shift"], a["pre"], wide, f"{base}/requant", shape)
        self.finish(r, step, qname(step.outputs[0]), wide, f"{base}/out", shape)

    def s_layer_qlinear(self, step: Step) -> None:
        """QLinearConv / QLinearMatMul with s_x = 2^-f_x, s_y = 2^-f_y, s_w[c] = 2^-(n[c] + f_y - f_x), so
        that onnxruntime's multiplier s_x s_w[c] / s_y is exactly 2^-n[c] (``intplan.qlinear_form``)."""
        a, base = step.attrs, step.node
        fx, fy = int(a["x_frac"]), int(a["y_frac"])
        n = np.asarray(a["shift"], dtype=np.int64).reshape(-1)
        w = self.p.arrays[a["weight"]]
        m = w.shape[0] if a["form"] == "QLinearConv" else w.shape[1]
        w_scale = np.broadcast_to(np.exp2(-(n + fy - fx).astype(np.float64)), (m,)).astype(np.float32)
        x = qname(step.inputs[0])
        args = [self.const(f"{base}/x_scale", np.float32(2.0 ** -fx)),
                self.const(f"{base}/x_zp", self.cdt.type(a["x_zp"])),
                self.const(a["weight"], w), self.const(f"{base}/w_scale", w_scale),
                self.const(f"{base}/w_zp", w.dtype.type(a.get("w_zp", 0))),
                self.const(f"{base}/y_scale", np.float32(2.0 ** -fy)),
                self.const(f"{base}/y_zp", self.cdt.type(a["y_zp"]))]
        out = qname(step.outputs[0])
        y = self.qlinear_target(step, out, base)
        if a["form"] == "QLinearMatMul":
            self.op("QLinearMatMul", [x, *args], base, out=y)
        else:
            flat = a["op_type"] != "Conv"  # Gemm/MatMul on (N, K): a 1x1 conv on (N, K, 1, 1)
            if flat:
                x = self.op("Reshape", [x, self.const(f"{base}/as_nchw", np.array([0, -1, 1, 1], np.int64))],
                            f"{base}/x_nchw")
            bias = [self.const(a["bias"], self.p.arrays[a["bias"]].astype(np.int32))] if a["bias"] is not None else []
            conv_attrs = {} if flat else dict(a["conv"])
            y_conv = self.op("QLinearConv", [x, *args, *bias], base, out=None if flat else y, **conv_attrs)
            if flat:
                self.op("Reshape", [y_conv, self.const(f"{base}/as_2d", np.array([0, -1], np.int64))], base, out=y)
        self.clip_container(y, step, out, base)

    def qlinear_target(self, step: Step, out: str, base: str) -> str:
        """Where a QLinear op writes: ``out`` itself unless the grid is narrower than the container."""
        c_lo, c_hi = CONTAINERS[self.p.container]
        return self._unique(f"{base}/qlinear") if step.attrs["lo"] > c_lo or step.attrs["hi"] < c_hi else out

    def clip_container(self, y: str, step: Step, out: str, base: str) -> None:
        """Clip(lo, hi) on the container from ``y`` to ``out`` (nothing when ``qlinear_target`` gave ``out``)."""
        if y != out:
            lo, hi = (self.const(f"{base}/{k}", self.cdt.type(step.attrs[k])) for k in ("lo", "hi"))
            self.op("Clip", [y, lo, hi], base, out=out)

    def finish_float(self, v: str, step: Step, out: str, base: str) -> str:
        """Round (half to even) a float32 value v = a / 2^n that is exact, + z_y, Clip, Cast to the container."""
        a = step.attrs
        v = self.op("Round", [v], f"{base}/rounded")
        if a["y_zp"]:
            v = self.op("Add", [v, self.const(f"{base}/y_zp", np.float32(a["y_zp"]))], f"{base}/with_zp")
        lo, hi = self.const(f"{base}/lo", np.float32(a["lo"])), self.const(f"{base}/hi", np.float32(a["hi"]))
        v = self.op("Clip", [v, lo, hi], f"{base}/clipped")
        return self.op("Cast", [v], base, out=out, to=self.celem)

    def centred_float(self, c: str, zp: int, scale: float, base: str) -> str:
        """(c - z) * scale in float32 (exact: |c - z| <= 255, scale a power of two)."""
        v = self.op("Cast", [c], f"{base}/float", to=TensorProto.FLOAT)
        if zp:
            v = self.op("Sub", [v, self.const(f"{base}/zp", np.float32(zp))], f"{base}/centred")
        if scale != 1.0:
            v = self.op("Mul", [v, self.const(f"{base}/scale", np.float32(scale))], f"{base}/scaled")
        return v

    def s_add(self, step: Step) -> None:
        a, base = step.attrs, step.node
        if a.get("form") == "float32":  # intplan.float_form: every partial sum exact in float32
            total = None
            for k, (t, zp, left, sign) in enumerate(zip(step.inputs, a["zps"], a["left"], a["signs"])):
                v = self.centred_float(qname(t), zp, 2.0 ** (left - a["shift"]), f"{base}/in{k}")
                total = v if total is None else self.op("Sub" if sign < 0 else "Add", [total, v], f"{base}/sum{k}")
            self.finish_float(total, step, qname(step.outputs[0]), f"{base}/out")
            return
        _, np_dt = self._dt(a["wide"])
        total = None
        for k, (t, zp, left, sign) in enumerate(zip(step.inputs, a["zps"], a["left"], a["signs"])):
            v = self.widen(qname(t), zp, a["wide"], f"{base}/in{k}")
            if left:
                v = self.op("Mul", [v, self.const(f"{base}/in{k}/align", np_dt(2 ** left))], f"{base}/in{k}/aligned")
            total = v if total is None else self.op("Sub" if sign < 0 else "Add", [total, v], f"{base}/sum{k}")
        r = self.requant(total, a["shift"], a["pre"], a["wide"], f"{base}/requant")
        self.finish(r, step, qname(step.outputs[0]), a["wide"], f"{base}/out")

    def s_mul(self, step: Step) -> None:
        a, base = step.attrs, step.node
        if a.get("form") == "float32":  # |product| <= 2^24: exact in float32
            u = self.centred_float(qname(step.inputs[0]), a["zps"][0], 1.0, f"{base}/in0")
            v = self.centred_float(qname(step.inputs[1]), a["zps"][1], 2.0 ** -a["shift"], f"{base}/in1")
            self.finish_float(self.op("Mul", [u, v], f"{base}/product"), step, qname(step.outputs[0]), f"{base}/out")
            return
        u = self.widen(qname(step.inputs[0]), a["zps"][0], a["wide"], f"{base}/in0")
        v = self.widen(qname(step.inputs[1]), a["zps"][1], a["wide"], f"{base}/in1")
        prod = self.op("Mul", [u, v], f"{base}/product")
        r = self.requant(prod, a["shift"], a["pre"], a["wide"], f"{base}/requant")
        self.finish(r, step, qname(step.outputs[0]), a["wide"], f"{base}/out")

    def s_concat(self, step: Step) -> None:
        parts = self.onto_output_grid(step, step.inputs)
        self.op("Concat", parts, step.node, out=qname(step.outputs[0]), axis=step.attrs["axis"])

    def s_select(self, step: Step) -> None:
        """Where(cond, a, b): both value inputs on the output grid, then Where on the containers."""
        a_, b_ = self.onto_output_grid(step, step.inputs[1:3])
        self._copy_initializer(step.inputs[0])  # a constant condition (none where it is computed)
        self.op("Where", [step.inputs[0], a_, b_], step.node, out=qname(step.outputs[0]))

    def onto_output_grid(self, step: Step, inputs: list[str]) -> list[str]:
        """The containers of ``inputs`` requantized onto the step's output grid, one per ``attrs["parts"]``."""
        a, base = step.attrs, step.node
        parts = []
        for k, (t, part) in enumerate(zip(inputs, a["parts"])):
            if part.get("const"):  # a constant quantized to the output grid at lowering time
                parts.append(self.const(t, self.p.arrays[t]))
                continue
            if part["same"]:
                parts.append(qname(t))
                continue
            v = self.widen(qname(t), part["zp"], False, f"{base}/in{k}")
            r = self.requant(v, part["shift"], part["pre"], False, f"{base}/in{k}/requant")
            parts.append(self.finish(r, step, self._unique(f"{base}/in{k}/q"), False, f"{base}/in{k}/out"))
        return parts

    def s_avgpool(self, step: Step) -> None:
        a, base = step.attrs, step.node
        wide = a["wide"]
        elem, np_dt = self._dt(wide)
        x = qname(step.inputs[0])
        phases = a["op_type"] == "Resize" and "taps" not in a
        if a["op_type"] == "Resize" and not phases:  # two taps per output along H, then along W
            s = self.widen(x, a["x_zp"], wide, f"{base}/in")
            for axis, (i0, i1, w0, w1) in zip((2, 3), a["taps"]):
                shape = [1, 1, -1, 1] if axis == 2 else [1, 1, 1, -1]
                tap = f"{base}/axis{axis}"
                terms = []
                for j, (i, w) in enumerate(((i0, w0), (i1, w1))):
                    g = self.op("Gather", [s, self.const(f"{tap}/i{j}", np.asarray(i, np.int64))], f"{tap}/x{j}",
                                axis=axis)
                    terms.append(self.op("Mul", [g, self.const(f"{tap}/w{j}", np_dt(w).reshape(shape))], f"{tap}/t{j}"))
                s = self.op("Add", terms, f"{tap}/sum")
        elif a["op_type"] in ("AveragePool", "Resize"):
            x_zp = self.const(f"{base}/x_zp", self.cdt.type(a["x_zp"]))
            if a["op_type"] == "Resize":  # edge padding, then every output phase's 3x3 sum (interleaved after)
                x = self.op("Pad", [x, self.const(f"{base}/pads", np.array([0, 0, 1, 1] * 2, np.int64))],
                            f"{base}/edge", mode="edge")
                w = np.tile(a["weights"], (a["channels"], 1, 1))[:, None].astype(np.int64)
                kernel, strides = [3, 3], [1, 1]
            else:
                if any(a["pads"]):
                    x = self.pad_zp(x, a["pads"], a["x_zp"], base)
                w = np.ones((a["channels"], 1, *a["kernel"]), np.int64)  # u8 x u8 or s8 x s8: exact
                kernel, strides = a["kernel"], a["strides"]
            # weights above 127 (Resize by 8 or more) in base-128 digits, one ConvInteger each:
            # S = sum_k 128^k S_k, every S_k exact in int32 and S bounded by the step's (wide) container
            digits = weight_digits(w)
            for k, d in enumerate(digits):
                tag = f"_d{k}" if k else ""  # the one-digit case keeps the names it always had
                sk = self.op("ConvInteger", [x, self.const(f"{base}/weights{tag}", d.astype(self.cdt)), x_zp],
                             f"{base}/window_sum{tag}", group=a["channels"], kernel_shape=kernel, strides=strides)
                if wide:
                    sk = self.op("Cast", [sk], f"{base}/sum64{tag}", to=elem)
                if k == 0:
                    s = sk
                    continue
                sk = self.op("Mul", [sk, self.const(f"{base}/digit{k}", np_dt(128 ** k))], f"{base}/digit{k}_sum")
                s = self.op("Add", [s, sk], f"{base}/window_sum_{k}")
        else:
            v = self.widen(x, a["x_zp"], wide, f"{base}/in")
            s = self.op("ReduceSum", [v, self.const(f"{base}/axes", np.array(a["axes"], np.int64))], f"{base}/sum",
                        keepdims=int(a.get("keepdims", 1)))
        out = self._unique(f"{base}/phases") if phases else qname(step.outputs[0])
        if a.get("form") == "float32":  # divisor 2^k, |sum| <= 2^24: Cast, Mul(2^(up - k)), Round are exact
            k = int(a["divisor"]).bit_length() - 1
            v = self.op("Cast", [s], f"{base}/sum_float", to=TensorProto.FLOAT)
            v = self.op("Mul", [v, self.const(f"{base}/scale", np.float32(2.0 ** (a["up"] - k)))], f"{base}/scaled")
            self.finish_float(v, step, out, f"{base}/out")
        else:
            if a["up"]:
                s = self.op("Mul", [s, self.const(f"{base}/up", np_dt(2 ** a["up"]))], f"{base}/aligned")
            D = self.const(f"{base}/divisor", np_dt(a["divisor"]))
            y = self.rne_divide(s, D, self.const(f"{base}/divisor_p1", np_dt(a["divisor"] + 1)), np_dt, base)
            self.finish(y, step, out, wide, f"{base}/out")
        if phases:  # (N, C r_h r_w, H, W) -> (N, C, H r_h, W r_w)
            (rh, rw), (h, w), c = a["factors"], a["in_hw"], a["channels"]
            v = self.op("Reshape", [out, self.const(f"{base}/split", np.array([0, c, rh, rw, h, w], np.int64))],
                        f"{base}/by_phase")
            v = self.op("Transpose", [v], f"{base}/interleaved", perm=[0, 1, 4, 2, 5, 3])
            self.op("Reshape", [v, self.const(f"{base}/merged", np.array([0, c, h * rh, w * rw], np.int64))],
                    f"{base}/merge", out=qname(step.outputs[0]))

    def rne_divide(self, s: str, D: str, D_plus_1: str, np_dt, base: str) -> str:
        """round(s / D) for a positive integer divisor D (a constant, or a tensor broadcasting against s):
        q, r floor quotient and remainder; rne rounds up iff 2r + (q mod 2) >= D + 1, i.e. adds
        Div(2r + q mod 2, D + 1) in {0, 1} (``quant.requant.rne_div``); half_up adds Div(2r, D)."""
        r = self.op("Mod", [s, D], f"{base}/rem")
        q = self.op("Div", [self.op("Sub", [s, r], f"{base}/floor_num"), D], f"{base}/floor")
        twice = self.op("Mul", [r, self.const(f"{base}/two", np_dt(2))], f"{base}/twice_rem")
        if self.p.rounding == "half_up":
            up = self.op("Div", [twice, D], f"{base}/round_up")
        else:
            odd = self.op("Mod", [q, self.const(f"{base}/two_", np_dt(2))], f"{base}/odd")
            up = self.op("Div", [self.op("Add", [twice, odd], f"{base}/tie"), D_plus_1], f"{base}/round_up")
        return self.op("Add", [q, up], f"{base}/rounded")

    def s_softmax(self, step: Step) -> None:
        """d = ReduceMax(c) - c, e = Gather(T, d), S = ReduceSum(e), clip(RNE(e 2^up / (S 2^down)) + z_y)."""
        a, base = step.attrs, step.node
        elem, np_dt = self._dt(a["wide"])
        c = self.op("Cast", [qname(step.inputs[0])], f"{base}/wide", to=elem)
        axes = self.const(f"{base}/axes", np.array([a["axis"]], np.int64))
        m = self.op("ReduceMax", [c, axes], f"{base}/max", keepdims=1)
        d = self.op("Sub", [m, c], f"{base}/below_max")
        e = self.op("Gather", [self.const(f"{base}/exp_table", a["table"].astype(np_dt)), d], f"{base}/exp", axis=0)
        s = self.op("ReduceSum", [e, axes], f"{base}/sum", keepdims=1)
        if a["up"]:
            e = self.op("Mul", [e, self.const(f"{base}/up", np_dt(2 ** a["up"]))], f"{base}/exp_scaled")
        if a["down"]:
            s = self.op("Mul", [s, self.const(f"{base}/down", np_dt(2 ** a["down"]))], f"{base}/sum_scaled")
        s1 = self.op("Add", [s, self.const(f"{base}/one", np_dt(1))], f"{base}/sum_p1")
        y = self.rne_divide(e, s, s1, np_dt, base)
        self.finish(y, step, qname(step.outputs[0]), a["wide"], f"{base}/out")

    def s_matmul(self, step: Step) -> None:
        """Activation x activation: QLinearMatMul with scales 2^-f_a, 2^-(n + f_y - f_a), 2^-f_y (multiplier
        exactly 2^-n, proven exact by ``intplan.qlinear_form``), else MatMulInteger + R."""
        a, base = step.attrs, step.node
        (qa, qb), out = (qname(t) for t in step.inputs), qname(step.outputs[0])
        za, zb = (self.const(f"{base}/zp{k}", self.cdt.type(z)) for k, z in enumerate(a["zps"]))
        if a["form"] == "QLinearMatMul":
            fx, fy, n = int(a["x_frac"]), int(a["y_frac"]), int(a["shift"])
            scales = [self.const(f"{base}/scale{k}", np.float32(2.0 ** -e)) for k, e in enumerate((fx, n + fy - fx, fy))]
            y = self.qlinear_target(step, out, base)
            self.op("QLinearMatMul", [qa, scales[0], za, qb, scales[1], zb, scales[2],
                                      self.const(f"{base}/y_zp", self.cdt.type(a["y_zp"]))], base, out=y)
            self.clip_container(y, step, out, base)
            return
        acc = self.op("MatMulInteger", [qa, qb, za, zb], f"{base}/acc")
        if a["wide"]:
            acc = self.op("Cast", [acc], f"{base}/acc64", to=TensorProto.INT64)
        r = self.requant(acc, a["shift"], a["pre"], a["wide"], f"{base}/requant")
        self.finish(r, step, out, a["wide"], f"{base}/out")

    def s_einsum(self, step: Step) -> None:
        """Einsum of the centred int32 (int64 where wide) operands, then R."""
        a, base = step.attrs, step.node
        ins = [self.widen(qname(t), z, a["wide"], f"{base}/in{k}")
               for k, (t, z) in enumerate(zip(step.inputs, a["zps"]))]
        acc = self.op("Einsum", ins, f"{base}/acc", equation=a["equation"])
        r = self.requant(acc, a["shift"], a["pre"], a["wide"], f"{base}/requant")
        self.finish(r, step, qname(step.outputs[0]), a["wide"], f"{base}/out")

    def s_affine(self, step: Step) -> None:
        """(c - z) * M + B requantized by 2^-n: exact float32 ops where ``intplan.float_form`` bounds the
        value by 2^24 (M, B written as integers and cast, which onnxruntime folds), else int32/int64 and R."""
        a, base = step.attrs, step.node
        arrays = [a["mult"]] + ([a["offset"]] if a["offset"] else [])
        consts = [self.const(k, self.p.arrays[k]) for k in arrays]
        if a["form"] == "float32":
            consts = [self.op("Cast", [c], f"{c}/float", to=TensorProto.FLOAT) for c in consts]
            v = self.centred_float(qname(step.inputs[0]), a["x_zp"], 1.0, f"{base}/in")
        else:
            v = self.widen(qname(step.inputs[0]), a["x_zp"], a["wide"], f"{base}/in")
        v = self.op("Mul", [v, consts[0]], f"{base}/scaled")
        if len(consts) > 1:
            v = self.op("Add", [v, consts[1]], f"{base}/offset")
        if a["form"] == "float32":
            if a["shift"]:
                v = self.op("Mul", [v, self.const(f"{base}/shift", np.float32(2.0 ** -a["shift"]))], f"{base}/shifted")
            self.finish_float(v, step, qname(step.outputs[0]), f"{base}/out")
            return
        r = self.requant(v, a["shift"], a["pre"], a["wide"], f"{base}/requant")
        self.finish(r, step, qname(step.outputs[0]), a["wide"], f"{base}/out")

    def s_layernorm(self, step: Step) -> None:
        """LayerNormalization (``intplan.layernorm_params``), int64 throughout: u = N v - ReduceSum(v),
        Q = ReduceSum(u u), r = max(1, floor_sqrt((Q 2^(2s) + eps_term) / N)) by Cast(double), Sqrt, Floor,
        Cast; t = clip(RNE(u 2^(k+s) / r)); R(t G + B, shift) + z_y, Clip, Cast."""
        a, base = step.attrs, step.node
        i64 = np.int64
        axes = self.const(f"{base}/axes", np.array(a["axes"], i64))
        v = self.widen(qname(step.inputs[0]), a["x_zp"], True, f"{base}/in")
        total = self.op("ReduceSum", [v, axes], f"{base}/sum", keepdims=1)
        n_v = self.op("Mul", [v, self.const(f"{base}/count", i64(a["count"]))], f"{base}/n_v")
        u = self.op("Sub", [n_v, total], f"{base}/u")
        moments = a.get("form", "q") == "moments"
        if moments:  # P = N sum v^2 - (sum v)^2 = Q / N
            s2 = self.op("ReduceSum", [self.op("Mul", [v, v], f"{base}/v_sq"), axes], f"{base}/s2", keepdims=1)
            q = self.op("Sub", [self.op("Mul", [s2, self.const(f"{base}/count_s2", i64(a["count"]))], f"{base}/n_s2"),
                                self.op("Mul", [total, total], f"{base}/s1_sq")], f"{base}/p")
        else:
            q = self.op("ReduceSum", [self.op("Mul", [u, u], f"{base}/u_sq"), axes], f"{base}/q", keepdims=1)
        if a["sq_shift"]:
            q = self.op("Mul", [q, self.const(f"{base}/sq_scale", i64(2 ** a["sq_shift"]))], f"{base}/q_scaled")
        if a["eps_term"]:
            q = self.op("Add", [q, self.const(f"{base}/eps_term", i64(a["eps_term"]))], f"{base}/q_eps")
        m = q if moments else self.op("Div", [q, self.const(f"{base}/count_", i64(a["count"]))], f"{base}/m")
        sq = self.op("Sqrt", [self.op("Cast", [m], f"{base}/m_double", to=TensorProto.DOUBLE)], f"{base}/sqrt")
        r = self.op("Cast", [self.op("Floor", [sq], f"{base}/sqrt_floor")], f"{base}/r0", to=TensorProto.INT64)
        r = self.op("Max", [r, self.const(f"{base}/one", i64(1))], f"{base}/r")
        if a["num_shift"]:
            u = self.op("Mul", [u, self.const(f"{base}/num_scale", i64(2 ** a["num_shift"]))], f"{base}/u_scaled")
        r_p1 = self.op("Add", [r, self.const(f"{base}/one_", i64(1))], f"{base}/r_p1")
        t = self.rne_divide(u, r, r_p1, i64, f"{base}/t")
        t = self.op("Clip", [t, self.const(f"{base}/t_lo", i64(-a["t_max"])), self.const(f"{base}/t_hi", i64(a["t_max"]))],
                    f"{base}/t_clipped")
        p = self.op("Mul", [t, self.const(f"{base}/gamma", a["gamma"].astype(i64))], f"{base}/scaled")
        if np.any(a["beta"]):
            p = self.op("Add", [p, self.const(f"{base}/beta", a["beta"].astype(i64))], f"{base}/biased")
        r = self.requant(p, a["shift"], 0, True, f"{base}/requant")
        self.finish(r, step, qname(step.outputs[0]), True, f"{base}/out")

    def s_l2norm(self, step: Step) -> None:
        """ReduceL2 (``quant.requant.round_sqrt``), int64: S = ReduceSum(v v); k >= 0: m = S 4^k,
        r = floor_sqrt(m), r + (m > r^2 + r); k < 0: r = floor_sqrt(S), Where(r^2 = S, R(r, -k), (r + 2^(-k-1)) / 2^-k)."""
        a, base = step.attrs, step.node
        i64 = np.int64
        v = self.widen(qname(step.inputs[0]), a["x_zp"], True, f"{base}/in")
        axes = self.const(f"{base}/axes", np.array(a["axes"], i64))
        m = self.op("ReduceSum", [self.op("Mul", [v, v], f"{base}/v_sq"), axes], f"{base}/sum_sq",
                    keepdims=a["keepdims"])
        k = a["k"]
        if k > 0:
            m = self.op("Mul", [m, self.const(f"{base}/scale", i64(4 ** k))], f"{base}/sum_sq_scaled")
        sq = self.op("Sqrt", [self.op("Cast", [m], f"{base}/m_double", to=TensorProto.DOUBLE)], f"{base}/sqrt")
        r = self.op("Cast", [self.op("Floor", [sq], f"{base}/sqrt_floor")], f"{base}/r", to=TensorProto.INT64)
        r_sq = self.op("Mul", [r, r], f"{base}/r_sq")
        if k >= 0:
            up = self.op("Greater", [m, self.op("Add", [r_sq, r], f"{base}/r_sq_r")], f"{base}/round_up")
            y = self.op("Add", [r, self.op("Cast", [up], f"{base}/round_up_int", to=TensorProto.INT64)], f"{base}/y")
        else:
            D = self.const(f"{base}/D", i64(2 ** -k))
            half_up = self.op("Div", [self.op("Add", [r, self.const(f"{base}/half", i64(2 ** (-k - 1)))], f"{base}/r_half"),
                                      D], f"{base}/half_up")
            tie = self.rne_divide(r, D, self.const(f"{base}/D_p1", i64(2 ** -k + 1)), i64, f"{base}/exact")
            y = self.op("Where", [self.op("Equal", [r_sq, m], f"{base}/is_square"), tie, half_up], f"{base}/y")
        self.finish(y, step, qname(step.outputs[0]), True, f"{base}/out")

    def s_div(self, step: Step) -> None:
        """Div of two activations (``quant.requant.div_round``), int64: num = (a - z_a) 2^up, den = (b - z_b) 2^down,
        RNE(num Sign(den) / Max(|den|, 1)), and Sign(num) 2^40 where den = 0."""
        a, base = step.attrs, step.node
        i64 = np.int64
        num, den = (self.widen(qname(t), z, True, f"{base}/in{k}") for k, (t, z) in enumerate(zip(step.inputs, a["zps"])))
        if a["up"]:
            num = self.op("Mul", [num, self.const(f"{base}/up", i64(2 ** a["up"]))], f"{base}/num")
        if a["down"]:
            den = self.op("Mul", [den, self.const(f"{base}/down", i64(2 ** a["down"]))], f"{base}/den")
        d = self.op("Abs", [den], f"{base}/den_abs")
        zero = self.op("Cast", [self.op("Equal", [d, self.const(f"{base}/zero", i64(0))], f"{base}/den_zero")],
                       f"{base}/den_zero_int", to=TensorProto.INT64)
        d = self.op("Add", [d, zero], f"{base}/den_safe")
        n_signed = self.op("Mul", [num, self.op("Sign", [den], f"{base}/den_sign")], f"{base}/num_signed")
        q = self.rne_divide(n_signed, d, self.op("Add", [d, self.const(f"{base}/one", i64(1))], f"{base}/den_p1"), i64,
                            f"{base}/q")
        sat = self.op("Mul", [self.op("Sign", [num], f"{base}/num_sign"), self.const(f"{base}/saturate", i64(2**40))],
                      f"{base}/saturated")
        q = self.op("Add", [q, self.op("Mul", [sat, zero], f"{base}/saturated_where_zero")], f"{base}/y")
        self.finish(q, step, qname(step.outputs[0]), True, f"{base}/out")

    def s_lut(self, step: Step) -> None:
        a, base = step.attrs, step.node
        idx = self.op("Cast", [qname(step.inputs[0])], f"{base}/index_wide", to=TensorProto.INT32)
        if a["offset"]:
            idx = self.op("Sub", [idx, self.const(f"{base}/offset", np.int32(a["offset"]))], f"{base}/index")
        self.op("Gather", [self.const(f"{base}/table", a["table"].astype(self.cdt)), idx], base,
                out=qname(step.outputs[0]), axis=0)

    def s_dilate(self, step: Step) -> None:
        """stride - 1 zero points between neighbours of an NCHW container (a ConvTranspose lowered as a Conv):
        Reshape to (N, C, S1, 1, S2, 1, ...), Pad the unit axes to the strides with the zero point, Reshape to
        (N, C, S1 s1, S2 s2, ...), Slice off the trailing zero points."""
        a, base = step.attrs, step.node
        sp, st = list(a["spatial"]), list(a["strides"])
        split = [0, 0] + [v for d in sp for v in (d, 1)]
        x = self.op("Reshape", [qname(step.inputs[0]), self.const(f"{base}/split", np.array(split, np.int64))],
                    f"{base}/split")
        ends = [0, 0] + [v for s in st for v in (0, s - 1)]
        x = self.op("Pad", [x, self.const(f"{base}/pads", np.array([0] * len(ends) + ends, np.int64)),
                            self.const(f"{base}/pad_value", self.cdt.type(a["zp"]))], f"{base}/spread", mode="constant")
        merged = [0, 0] + [d * s for d, s in zip(sp, st)]
        x = self.op("Reshape", [x, self.const(f"{base}/merge", np.array(merged, np.int64))], f"{base}/merged")
        nd = len(sp)
        self.op("Slice", [x, self.const(f"{base}/starts", np.zeros(nd, np.int64)),
                          self.const(f"{base}/ends", np.array([(d - 1) * s + 1 for d, s in zip(sp, st)], np.int64)),
                          self.const(f"{base}/axes", np.arange(2, 2 + nd, dtype=np.int64))],
                f"{base}/dilated", out=qname(step.outputs[0]))

    def s_copy(self, step: Step) -> None:
        """Data movement on the containers (carry) or non-activation computations (pass), inputs renamed."""
        a = step.attrs
        op_type = a["op_type"]
        attrs = {k: v for k, v in a.get("attrs", {}).items()}
        ins = [self.int_of(i) if i else "" for i in step.inputs]
        outs = [self.int_of(o) if o else "" for o in step.outputs]
        if op_type == "Constant":
            src = next(n for n in self.src.graph.node if n.name == step.node and n.op_type == "Constant")
            node = onnx.NodeProto()
            node.CopyFrom(src)
            node.name = self._unique(step.node)
            self.nodes.append(node)
            return
        if a.get("pad_value") is not None:
            ins = (ins + ["", ""])[:3] if len(ins) < 3 else ins
            ins[2] = self.const(f"{step.node}/pad_value", self.cdt.type(a["pad_value"]))
            attrs.pop("value", None)
        if op_type in ("ReduceMax", "ReduceMin") and "axes" in attrs:  # an attribute before opset 18, an input since
            ins = [ins[0], self.const(f"{step.node}/axes", np.array(attrs.pop("axes"), np.int64))]
        if op_type == "GlobalMaxPool":
            self.nodes.append(helper.make_node("ReduceMax", [ins[0], self.const(f"{step.node}/axes", np.arange(2, a["rank"]))],
                                               outs, name=self._unique(step.node), keepdims=1))
            return
        # constants quantized at lowering time (intplan.const_on_grid): constant_carry's input 0, constant_select's
        lowered = {**({0: a["int_input"]} if a.get("int_input") else {}), **a.get("int_inputs", {})}
        for k, key in lowered.items():
            ins[int(k)] = self.const(key, self.p.arrays[key])
        for i in step.inputs:
            if i and i not in self.p.tensors and i not in lowered.values():
                self._copy_initializer(i)
        self.nodes.append(helper.make_node(op_type, ins, outs, name=self._unique(step.node), **attrs))

    def _copy_initializer(self, name: str) -> None:
        if name in self._names:
            return
        for init in self.src.graph.initializer:
            if init.name == name:
                self.inits.append(init)
                self._names.add(name)
                return

    def s_output(self, step: Step) -> None:
        t: TInt = self.p.tensors[step.inputs[0]]
        base = f"{step.node}/dequantize"
        v = self.widen(qname(step.inputs[0]), t.zp, False, base)
        v = self.op("Cast", [v], f"{base}/float", to=TensorProto.FLOAT)
        self.op("Mul", [v, self.const(f"{base}/scale", np.float32(2.0 ** -t.frac))], base, out=step.outputs[0])

    # ------------------------------------------------------------------ assemble
    def build(self) -> onnx.ModelProto:
        for step in self.p.steps:
            getattr(self, WRITERS[step.kind])(step)
        g = self.src.graph
        inputs = [i for i in g.input if i.name in self.p.inputs]
        # quantized outputs are dequantized to float; others (ArgMax's int64 class index) keep their type
        outputs = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT if o.name in self.p.tensors else
                                                 o.type.tensor_type.elem_type, _dims(o)) for o in g.output]
        graph = helper.make_graph(self.nodes, f"{g.name or 'model'}_integer", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.p.opset)],
                                  producer_name="onnxptq")
        model.ir_version = 10
        helper.set_model_props(model, {FORMAT_KEY: "integer", PROGRAM_KEY: json.dumps(self.p.to_json())})
        return model


def _dims(vi: onnx.ValueInfoProto):
    if not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
            for d in vi.type.tensor_type.shape.dim]


def export_integer(program: IntProgram, source: onnx.ModelProto) -> onnx.ModelProto:
    """The integer ONNX model of ``program``; ``source`` is the folded float model it was lowered from."""
    return IntegerWriter(program, source).build()
