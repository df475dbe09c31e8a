"""Lowering a calibrated Po2 model to an integer program (DESIGN.md section 4).

``lower(sim)`` turns the QGraph and the simulation's quantizers into an ``IntProgram``: one step per
ONNX node, each holding the exact integer parameters (container zero points, per-channel shifts,
clip bounds, lookup tables, accumulator bounds and the int32/int64 choice). Two back ends read it:

- ``export/integer.py`` writes it as standard ONNX: each Conv/Gemm/MatMul step in the compact form
  (``QLinearConv`` / ``QLinearMatMul``) where ``qlinear_form`` proves onnxruntime's float32
  requantization exact, else the shift recipe (ConvInteger, MatMulInteger, Mod, Div, ...);
- ``sim/integer.py`` executes it in torch with ``quant.requant`` (the integer simulation).

Containers: every 2-8-bit activation is a uint8 tensor ``c`` (``IntProgram.container``; int8 in
programs written before the compact form) with zero point ``z`` and ``f`` fractional bits, value
(c - z) * 2^-f; signed grids are shifted to start at 0 (+128 for 8 bits; int8 containers: unsigned
8-bit grids by -128).
Weights are centred (q - z_w, which fits int8 for symmetric grids and for asymmetric grids of at most
7 bits) and stored int8 for u8 x s8 kernels or as uint8 q - z_w + 128 with weight zero point 128 for
u8 x u8 kernels (``weight_kernel``).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np
import torch

from ..errors import ConfigError, UnsupportedOpError
from ..graph.fold import bn_affine, bn_epsilon
from ..graph.qgraph import attrs_of
from ..ops.registry import REGISTRY
from ..ops.shape import pad_constant
from ..quant import quantize
from ..quant.requant import (F32_EXACT, ROUNDING_MODES, exact_in_float32, int16_multiplier, po2_frac, requant_shift,
                             shift_bound)
from ..quant.rounding import rne
from ..sim.model import SimModel
from ..targets import u8s8_pairs_safe

INT8_MIN, INT8_MAX = -128, 127
CONTAINERS = {"int8": (-128, 127), "uint8": (0, 255)}
SCALE_EXP_MAX = 100  # 2^-e with |e| <= 100 and products of two such stay normal float32
FORM_SHIFT = "shift"
COMPARISONS = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")  # on codes only within one grid
_MIRROR = {"Less": "Greater", "Greater": "Less", "LessOrEqual": "GreaterOrEqual", "GreaterOrEqual": "LessOrEqual"}
AFFINE_OPS = ("Add", "Sub", "Mul", "Div")  # x op constant-per-position: one integer multiply-add (``affine``)
CONST_BITS = 8  # an added constant keeps this many fractional bits beyond the output's
SOFTMAX_BITS = 16  # exp table T[k] = round(2^16 exp(-k 2^-f)): T[0] = 2^16


@dataclass
class TInt:
    """An integer tensor: int8 container values c, zero point z, value (c - z) * 2^-frac."""

    name: str  # the float tensor it represents
    frac: int
    zp: int
    lo: int  # grid bounds inside the container
    hi: int
    bits: int
    signed: bool

    @property
    def max_abs(self) -> int:
        """Largest |c - z| on the grid."""
        return max(abs(self.lo - self.zp), abs(self.hi - self.zp))


@dataclass
class Step:
    kind: str  # input | layer | add | mul | affine | matmul | concat | avgpool | softmax | lut | intcast | carry | pass | output
    node: str  # ONNX node name (the tensor name for input/output steps)
    inputs: list[str]  # float tensor names read (container tensors for integer operands)
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class IntProgram:
    tensors: dict[str, TInt]  # every integer tensor (quant points and carried tensors)
    steps: list[Step]
    arrays: dict[str, np.ndarray]  # large constants (weights, biases) by key
    inputs: list[str]
    outputs: list[str]
    rounding: str = "rne"
    opset: int = 21
    container: str = "int8"  # activation container type: int8 or uint8 (docs/integer.md, "Tensors")

    def to_json(self) -> dict:
        """JSON-able record (large arrays by sha256), embedded in the exported model's metadata."""
        return {"rounding": self.rounding, "opset": self.opset, "container": self.container,
                "inputs": self.inputs, "outputs": self.outputs,
                "tensors": {k: asdict(v) for k, v in self.tensors.items()},
                "steps": [{"kind": s.kind, "node": s.node, "inputs": s.inputs, "outputs": s.outputs,
                           "attrs": _jsonable(s.attrs)} for s in self.steps],
                "arrays": {k: {"sha256": _digest(v), "shape": list(v.shape), "dtype": str(v.dtype)}
                           for k, v in self.arrays.items()}}


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return {"__array__": v.tolist(), "dtype": str(v.dtype)}
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, bytes):
        return v.decode()
    return v


def from_jsonable(v):
    if isinstance(v, dict):
        if "__array__" in v:
            return np.array(v["__array__"], dtype=v["dtype"])
        return {k: from_jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_jsonable(x) for x in v]
    return v


def program_from_json(d: dict, arrays: dict[str, np.ndarray]) -> IntProgram:
    steps = [Step(s["kind"], s["node"], s["inputs"], s["outputs"], from_jsonable(s["attrs"])) for s in d["steps"]]
    return IntProgram({k: TInt(**v) for k, v in d["tensors"].items()}, steps, arrays, d["inputs"], d["outputs"],
                      d["rounding"], d["opset"], d.get("container", "int8"))


# ---------------------------------------------------------------------------------------------- lowering

class _Lowering:
    def __init__(self, sim: SimModel, rounding: str, opset: int, container: str = "uint8",
                 u8s8: str = "proven") -> None:
        if container not in CONTAINERS:
            raise ConfigError(f"container must be one of {', '.join(CONTAINERS)}; got {container!r}")
        if u8s8 not in ("proven", "always"):
            raise ConfigError(f"u8s8 must be 'proven' or 'always'; got {u8s8!r}")
        self.container, self.u8s8 = container, u8s8
        if rounding not in ROUNDING_MODES:
            raise ConfigError(f"rounding must be one of {', '.join(ROUNDING_MODES)}; got {rounding!r}")
        self.sim, self.qg, self.rounding, self.opset = sim, sim.qg, rounding, opset
        self.tensors: dict[str, TInt] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.steps: list[Step] = []
        self.layer_by_node = {layer.name: layer for layer in self.qg.layers}
        # computed by their layer's or Add's step
        self.fused_act = {f.act_node for f in self.qg.fused_activations.values()}
        self.node_by_name = {n.name: n for n in self.qg.model.graph.node}
        self.chain_inner = {m for _, names in self.qg.chains.values() for m in names[:-1]}
        self.errors: list[tuple[str, str, str]] = []

    @property
    def cdtype(self) -> type:
        """The numpy type of the program's containers."""
        return np.uint8 if self.container == "uint8" else np.int8

    # -------------------------------------------------------------- tensors
    def quant_point(self, t: str) -> TInt:
        fq = self.sim.act_quantizer(t)
        p = fq.params
        if p is None or not fq.enabled:
            raise ConfigError(f"activation {t!r} is not quantized; the integer format needs every activation quantized")
        if not p.po2:
            raise ConfigError(f"activation {t!r} has a non-power-of-two scale {float(p.scale)}; "
                              "the integer format needs --scale po2")
        if p.grid.bits > 8:
            raise ConfigError(f"activation {t!r} has {p.grid.bits} bits; the integer format stores 2-8-bit "
                              "activations in 8-bit containers (use --a-bits <= 8 or --format qdq)")
        if self.container == "uint8":  # signed grids shifted to start at 0 (small inputs keep u8 x s8 pairs safe)
            off = -p.grid.qmin if p.grid.signed else 0
        else:  # int8: unsigned 8-bit grids shifted by -128, every other grid as it is
            off = -128 if (not p.grid.signed and p.grid.bits == 8) else 0
        if fq.ecaq:  # integer codes at scale 1 for the consumers; the producer requantizes per channel (ecaq_frac)
            return TInt(t, 0, off, p.grid.qmin + off, p.grid.qmax + off, p.grid.bits, p.grid.signed)
        return TInt(t, int(po2_frac(p.scale).reshape(())), int(p.zero_point.reshape(())) + off,
                    p.grid.qmin + off, p.grid.qmax + off, p.grid.bits, p.grid.signed)

    def ecaq_frac(self, t: str) -> np.ndarray | None:
        """Per-channel fractional bits of an ECAQ point (Bit-Split Eq. 23: X = beta X^, beta = 2^-f per
        channel), None for per-tensor points. ``quant_point`` has already required powers of two."""
        fq = self.sim.act_quantizer(t)
        return po2_frac(fq.params.scale).reshape(-1).astype(np.int64) if fq.ecaq else None

    def tint(self, t: str) -> TInt:
        if t not in self.tensors:
            src = self.qg.source.get(t)
            if src is None:
                raise _Unsupported(f"tensor {t!r} has no integer form (a constant or a float tensor)")
            base = self.tensors.get(src) or self.quant_point(src)
            self.tensors[src] = base
            self.tensors[t] = TInt(t, base.frac, base.zp, base.lo, base.hi, base.bits, base.signed)
        return self.tensors[t]

    def is_int(self, t: str) -> bool:
        return bool(t) and t in self.qg.source

    # -------------------------------------------------------------- build
    def run(self) -> IntProgram:
        for t in self.qg.inputs:
            if self.is_int(t):
                self.steps.append(Step("input", t, [t], [t]))
                self.tint(t)
        for n in self.qg.model.graph.node:
            if n.op_type == "Constant":
                self.steps.append(Step("pass", n.name, list(n.input), list(n.output), {"op_type": "Constant"}))
                continue
            if n.name in self.fused_act:
                continue
            try:
                self.node(n)
            except _Unsupported as e:
                self.errors.append((n.name, n.op_type, str(e)))
        produced = {t for s in self.steps for t in s.outputs}
        for o in self.qg.outputs:
            if o not in self.qg.float_tensors and o in produced:
                continue  # a non-float output (ArgMax's class index): computed as it is, no dequantization
            if not self.is_int(o):
                self.errors.append((o, "output", "the graph output is not an integer tensor"))
                continue
            self.steps.append(Step("output", o, [o], [o]))
        if self.errors:
            raise UnsupportedOpError([(name, f"{op}: {why}") for name, op, why in self.errors], what="export as integer ONNX")
        return IntProgram(self.tensors, self.steps, self.arrays, list(self.qg.inputs), list(self.qg.outputs),
                          self.rounding, self.opset, self.container)

    def node(self, n) -> None:
        if n.name in self.qg.fallback:
            raise _Unsupported("it runs through the onnx2torch fallback, which has no integer form")
        a = attrs_of(n)
        float_in = [i for i in n.input if i in self.qg.float_tensors]
        float_out = [o for o in n.output if o in self.qg.float_tensors]
        if not float_in and not float_out:
            self.steps.append(Step("pass", n.name, list(n.input), list(n.output), {"op_type": n.op_type, "attrs": a}))
            return
        if n.name in self.layer_by_node:
            self.layer(n, a)
            return
        if n.name in self.chain_inner:  # computed inside its chain's lookup table
            return
        if n.output and n.output[0] in self.qg.chains:
            self.lut(n, a)
            return
        if any(not self.is_int(i) for i in float_in):
            raise _Unsupported("reads a float tensor that has no integer form (a layer left float, e.g. by --skip-nodes)")
        if not float_out:  # e.g. Shape of an activation: runs on the container
            if self.threshold(n, float_in) or self.never_special(n, float_in):
                return
            self.codes_only(n, float_in)
            self.steps.append(Step("pass", n.name, list(n.input), list(n.output), {"op_type": n.op_type, "attrs": a}))
            return
        out = float_out[0]
        spec = REGISTRY[n.op_type]
        lowering = spec.lowering_of(a)  # Resize: by its mode (ops/shape.py)
        if not float_in and lowering == "carry" and n.input and n.input[0] in self.sim.consts:
            self.constant_carry(n, a, out)  # e.g. a class token expanded to the batch: quantized, then moved
        elif not float_in and n.op_type == "Where" and all(i in self.sim.consts for i in n.input[1:3]):
            self.constant_select(n, a, out)  # e.g. an attention mask: Where(mask, 0, -inf) from the input ids
        elif (n.op_type == "Cast" and not float_in and n.input[0] not in self.sim.consts
              and n.input[0] not in self.qg.float_tensors):
            self.int_to_grid(n, out)  # e.g. attention_mask.float() for a masked mean
        elif (n.op_type == "Where" and len(float_in) == 1 and float_in[0] in n.input[1:3]
              and all(i in self.sim.consts for i in n.input[1:3] if i != float_in[0])):
            self.masked_select(n, a, out, float_in[0])  # masked_fill: Where(mask, -inf, scores)
        elif n.op_type == "Where" and len(float_in) == 2 and float_in == list(n.input[1:3]):
            self.select(n, out)  # Where(cond, a, b) of two activations
        elif lowering in ("add", "mul", "lut") and len(float_in) == 1 and len(n.output) == 1:
            if n.op_type in AFFINE_OPS and self.positional_const(n, float_in[0]):
                self.affine(n, float_in[0])  # x + P, x * gamma with a constant per position / channel
            else:
                self.lut(n, a)  # one activation and scalar constants (x * c, x + c, erf(x), ...): a lookup table
        elif lowering == "layer" and n.op_type == "MatMul":  # not a layer: both operands are activations
            self.matmul(n)
        elif n.op_type == "Div" and len(float_in) == 2:  # kind "lut" for a constant divisor
            self.divide(n)
        elif lowering == "einsum":
            self.einsum(n, a)
        elif lowering == "l2norm":
            self.l2norm(n, a)
        elif lowering == "softmax":
            self.softmax(n, a)
        elif spec.role_of(a) == "carry" and self.qg.source.get(out) != out:
            self.carry(n, a, lowering)
        elif lowering == "add":
            self.add(n)
        elif lowering == "mul":
            self.mul(n)
        elif lowering == "concat":
            self.concat(n, a)
        elif lowering == "avgpool":
            self.avgpool(n, a)
        elif lowering == "layernorm":
            self.layernorm(n, a)
        elif lowering == "batchnorm":
            self.batchnorm(n)
        else:
            raise _Unsupported("no exact integer form (supported: Conv/Gemm/MatMul, Add/Sub/Sum, Mul, Div, Concat, "
                               "average pools, ReduceSum, ReduceL2, linear Resize, Softmax, LayerNormalization, "
                               "Einsum, elementwise activations as lookup tables, data-movement ops)")

    # -------------------------------------------------------------- steps
    def layer(self, n, a: dict) -> None:
        layer = self.layer_by_node[n.name]
        x = self.tint(layer.input)
        y = self.tint(layer.output)
        wq = self.sim.weight_quantizer(layer.name)
        p = wq.params
        if p is None or not wq.enabled:
            raise _Unsupported("its weights are not quantized")
        if not p.po2:
            raise _Unsupported("its weight scales are not powers of two (use --scale po2)")
        from ..calib.calibrate import integer_bias, integer_weights

        q = integer_weights(self.sim, layer.name)
        zp = p.zero_point.reshape(-1).astype(np.int64)
        shape = [1] * q.ndim
        shape[layer.weight_axis] = -1
        w = q - zp.reshape(shape)
        if w.min() < INT8_MIN or w.max() > INT8_MAX:
            raise _Unsupported(f"asymmetric {p.grid.bits}-bit weights do not fit int8 once centred; "
                               "use symmetric weights or at most 7 bits")
        f_w = po2_frac(p.scale).reshape(-1)
        op_type, x_in = layer.op_type, layer.input
        if op_type == "ConvTranspose":  # as a Conv over the zero-point-dilated input (transpose_as_conv)
            w = np.ascontiguousarray(np.flip(w, axis=tuple(range(2, w.ndim))).swapaxes(0, 1))
            x_in, a = self.transpose_as_conv(n, layer, x, a, w.shape)
            op_type = "Conv"
        if op_type == "Conv":
            w_store = w.astype(np.int8)
            per_out = np.abs(w).reshape(w.shape[0], -1).sum(1)
            cdim = 1
        else:  # Gemm / MatMul: stored as B of MatMulInteger, shape (K, M)
            w_store = (w.T if layer.weight_axis == 0 else w).astype(np.int8)
            per_out = np.abs(w_store.astype(np.int64)).sum(0)
            cdim = -1
        bias = integer_bias(self.sim, layer.name) if layer.bias else None
        conv_bound = int((per_out * x.max_abs).max())
        if conv_bound >= 2**31:
            raise _Unsupported(f"its accumulator can reach {conv_bound} >= 2^31 inside ConvInteger/MatMulInteger")
        acc_max = per_out.astype(object) * x.max_abs + (np.abs(bias).astype(object) if bias is not None else 0)
        # per output channel; an ECAQ output (recon/ecaq.py) has its own exponent per channel as well
        y_frac = self.ecaq_frac(self.qg.source.get(layer.output, layer.output))
        if y_frac is not None and (op_type != "Conv" or len(y_frac) != len(f_w)):
            raise _Unsupported("an ECAQ output needs a Conv producer with one scale per output channel")
        y_frac = y.frac if y_frac is None else y_frac
        n_shift = cap_shift(x.frac + f_w - y_frac, acc_max)
        pre = max(0, 1 - int(n_shift.min()))
        acc_bound = int(max(acc_max))
        bound = shift_bound(acc_bound, int((n_shift + pre).max()), pre, self.rounding)
        lo, hi = act_codes(y, y_frac, layer.act_bounds)  # fused Relu / Clip (per channel under ECAQ)
        if isinstance(lo, np.ndarray):
            raise _Unsupported("a lower activation bound that differs per channel (ECAQ with a Clip min > 0)")
        rank = 2 if op_type == "Gemm" else len(self.qg.shapes.get(layer.input, ()) or ())  # Gemm A is 2-D
        ecaq = isinstance(y_frac, np.ndarray) or isinstance(hi, np.ndarray)
        conv_c = per_out.astype(object) * x.max_abs
        form, why = qlinear_form(op_type, x, y, n_shift, conv_c, bias, lo, hi, rank, ecaq=ecaq,
                                 rounding=self.rounding, container=self.container)
        folded: list[int] = []
        # a channel past the float32 bound may still be one constant (not for ECAQ: its bounds are per channel)
        if form == FORM_SHIFT and bias is not None and not ecaq:
            w2, b2, n2, folded = fold_constant_channels(w_store, cdim, bias, conv_c, n_shift, y.zp, int(lo), int(hi))
            form2, why2 = qlinear_form(layer.op_type, x, y, n2, conv_c, b2, lo, hi, rank, ecaq=ecaq,
                                       rounding=self.rounding, container=self.container)
            if folded and form2 != FORM_SHIFT:  # the folded channels' shift is 0: recompute pre and the bound
                form, why, w_store, bias, n_shift = form2, f"{why2}; constant channels {folded} folded", w2, b2, n2
                pre = max(0, 1 - int(n2.min()))
                bound = shift_bound(int(max(conv_c + np.abs(b2).astype(object))), int((n2 + pre).max()), pre,
                                    self.rounding)
            else:
                folded = []
        if form == "QLinearConv" and op_type != "Conv":  # Gemm/MatMul as a 1x1 conv: weight (M, K, 1, 1)
            w_store = np.ascontiguousarray(w_store.T).reshape(w_store.shape[1], w_store.shape[0], 1, 1)
        kernel = weight_kernel(self.container, max(x.hi, x.zp), int(np.abs(w).max()), self.u8s8)
        w_zp = 128 if kernel == "u8u8" else 0
        if w_zp:  # stored as uint8 w + 128 with weight zero point 128 (exact u8 x u8 kernels)
            w_store = (w_store.astype(np.int16) + w_zp).astype(np.uint8)
        key = layer.name
        self.arrays[f"{key}.weight"] = w_store
        if bias is not None:
            self.arrays[f"{key}.bias"] = bias if _wide(bound, n_shift + pre) else bias.astype(np.int32)
        conv_attrs = {k: v for k, v in a.items() if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        if op_type == "Conv" and x.zp != 0 and conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise _Unsupported("auto_pad SAME_* with a non-zero input zero point; re-export the model with explicit pads")
        self.steps.append(Step("layer", n.name, [x_in], [layer.output], {
            "op_type": op_type, "conv": conv_attrs, "x_zp": x.zp, "weight": f"{key}.weight",
            "bias": f"{key}.bias" if bias is not None else None, "shift": n_shift.astype(np.int64), "pre": pre,
            "cdim": cdim, "y_zp": y.zp, "lo": lo, "hi": hi, "wide": _wide(bound, n_shift + pre), "bound": bound,
            "conv_bound": conv_bound, "form": form, "form_why": why, "x_frac": x.frac, "y_frac": y.frac,
            "kernel": kernel, "w_zp": w_zp, "folded": folded}))

    def transpose_as_conv(self, n, layer, x: TInt, a: dict, conv_w_shape: tuple) -> tuple[str, dict]:
        """A ConvTranspose as a Conv with the flipped, transposed kernel (``conv_w_shape``, from ``layer``) over
        its input with stride - 1 zero points inserted between neighbours (a ``dilate`` step: they add
        (z - z) w = 0), padded by dilation (k - 1) - pads (+ output_padding at the end), stride 1: the same
        sums in the same integers. Returns (the Conv's input tensor, its attributes)."""
        from ..ops.conv import conv_transpose_pads

        spatial = list(self.qg.shapes.get(layer.input, ()) or ())[2:]
        if not spatial or any(d <= 0 for d in spatial):
            raise _Unsupported("a ConvTranspose needs the static spatial size of its input (set --input-shapes)")
        k = list(conv_w_shape[2:])
        strides, dil, opad, pads = conv_transpose_pads(spatial, k, a)
        nd = len(k)
        begin = [dil[i] * (k[i] - 1) - pads[i] for i in range(nd)]
        end = [dil[i] * (k[i] - 1) - pads[nd + i] + opad[i] for i in range(nd)]
        if min(begin + end) < 0:
            raise _Unsupported("ConvTranspose pads wider than the kernel's reach (they would crop the output)")
        attrs = {"dilations": dil, "kernel_shape": k, "pads": begin + end, "strides": [1] * nd, "group": 1}
        if all(s == 1 for s in strides):
            return layer.input, attrs
        out = f"{layer.input}/dilated_for/{layer.name}"
        self.tensors[out] = TInt(out, x.frac, x.zp, x.lo, x.hi, x.bits, x.signed)
        self.steps.append(Step("dilate", f"{n.name}/dilate", [layer.input], [out],
                               {"strides": strides, "spatial": spatial, "zp": x.zp}))
        return out, attrs

    def add(self, n) -> None:
        """The integer sum of the aligned inputs, requantized; with a fused Relu / Clip (``QGraph.merge_acts``)
        onto the activation's grid, clipped to its bounds there."""
        ins = [self.tint(i) for i in n.input]
        fused = self.qg.merge_acts.get(n.name)
        y = self.tint(fused.output if fused else n.output[0])
        lo, hi = act_codes(y, y.frac, fused.act_bounds if fused else None)
        F = max(t.frac for t in ins)
        left = [F - t.frac for t in ins]
        total = sum(t.max_abs * 2**s for t, s in zip(ins, left))
        n_shift = int(cap_shift(F - y.frac, total))
        left = saturating_lefts(ins, left, n_shift, y.hi - y.lo)
        total = sum(t.max_abs * 2**s for t, s in zip(ins, left))
        pre = max(0, 1 - n_shift)
        bound = shift_bound(total, n_shift + pre, pre, self.rounding)
        signs = [1] + [(-1 if n.op_type == "Sub" else 1)] * (len(ins) - 1)
        self.steps.append(Step("add", n.name, list(n.input), [y.name], {
            "zps": [t.zp for t in ins], "left": left, "signs": signs, "shift": n_shift, "pre": pre, "y_zp": y.zp,
            "lo": int(lo), "hi": int(hi), "wide": _wide(bound, n_shift + pre),
            "form": float_form(total, [s - n_shift for s in left], self.rounding)}))

    def shift_plan(self, shift: int, total: int) -> tuple[int, int, int]:
        """R(v 2^pre, n + pre) for |v| <= ``total`` and the requantization shift ``shift``: n capped where it
        would zero every result (``cap_shift``), pre = max(0, 1 - n), and the largest intermediate
        (``shift_bound``); returns (n, pre, bound)."""
        n_shift = int(cap_shift(shift, total))
        pre = max(0, 1 - n_shift)
        return n_shift, pre, shift_bound(total, n_shift + pre, pre, self.rounding)

    def mul(self, n) -> None:
        if not all(self.is_int(i) for i in n.input):
            raise _Unsupported("Mul by a constant has no exact integer form; only activation x activation")
        a, b = self.tint(n.input[0]), self.tint(n.input[1])
        y = self.tint(n.output[0])
        n_shift, pre, bound = self.shift_plan(a.frac + b.frac - y.frac, a.max_abs * b.max_abs)
        self.steps.append(Step("mul", n.name, list(n.input), [n.output[0]], {
            "zps": [a.zp, b.zp], "shift": n_shift, "pre": pre, "y_zp": y.zp, "lo": y.lo, "hi": y.hi,
            "wide": _wide(bound, n_shift + pre), "form": float_form(a.max_abs * b.max_abs, [-n_shift], self.rounding)}))

    def concat(self, n, a: dict) -> None:
        """Each input requantized to the output grid (or taken as it is where the grids agree); a float constant
        input (a class token concatenated without an Expand in a fixed-batch graph) is quantized to the output
        grid at lowering time (program array ``<node>.input<k>_q``): the output quantizer rounds those values
        alone, so the integers are the same."""
        y = self.tint(n.output[0])
        parts, inputs = [], list(n.input)
        for k, name in enumerate(n.input):
            if not self.is_int(name) and name in self.sim.consts:
                inputs[k] = self.const_on_grid(name, n.output[0], f"{n.name}.input{k}_q")
                parts.append({"zp": y.zp, "shift": 0, "pre": 0, "same": True, "const": True})
                continue
            parts.append(self.onto_grid(self.tint(name), y))
        self.steps.append(Step("concat", n.name, inputs, [n.output[0]], {
            "axis": int(a.get("axis", 1)), "parts": parts, "y_zp": y.zp, "lo": y.lo, "hi": y.hi}))

    def select(self, n, out: str) -> None:
        """Where(cond, a, b) of two activations (Funnel's token-type attention): a and b each requantized onto the
        output grid as a Concat part, then Where on the containers. Exact: the output quantizer rounds each chosen
        value alone, Q_y(where(c, a, b)) = where(c, Q_y(a), Q_y(b))."""
        y = self.tint(out)
        parts = [self.onto_grid(self.tint(t), y) for t in n.input[1:3]]
        self.steps.append(Step("select", n.name, list(n.input), [out], {
            "parts": parts, "y_zp": y.zp, "lo": y.lo, "hi": y.hi}))

    def int_to_grid(self, n, out: str) -> None:
        """Cast of an integer tensor v to float: its codes rne(v 2^f) + z, clipped to the grid, computed in
        float64 (exact for |v| < 2^53), which is what the output quantizer does to the cast values."""
        y = self.tint(out)
        self.steps.append(Step("intcast", n.name, [n.input[0]], [out],
                               {"frac": y.frac, "y_zp": y.zp, "lo": y.lo, "hi": y.hi}))

    def threshold(self, n, float_in: list[str]) -> bool:
        """Less / LessOrEqual / Greater / GreaterOrEqual of one activation x and a scalar constant c (either
        order): one comparison of x's codes q with an integer threshold (program array ``<node>.threshold``).
        Exact: with b = z + c 2^f, x < c <=> q <= ceil(b) - 1, x <= c <=> q <= floor(b), x > c <=>
        q >= floor(b) + 1, x >= c <=> q >= ceil(b); a threshold past the container's range becomes the
        comparison that is always true or always false there. False (nothing emitted) for other nodes."""
        if n.op_type not in _MIRROR or len(float_in) != 1 or len(n.input) != 2:
            return False
        k_x = list(n.input).index(float_in[0])
        c = self.sim.consts.get(n.input[1 - k_x])
        if c is None or c.numel() != 1 or not c.is_floating_point():
            return False
        op = n.op_type if k_x == 0 else _MIRROR[n.op_type]  # c < x is x > c
        x = self.tint(float_in[0])
        b = x.zp + float(c.reshape(()).item()) * 2.0 ** x.frac  # exact in float64: a float32 times 2^f, plus z
        lo_c, hi_c = CONTAINERS[self.container]
        if op in ("Less", "LessOrEqual"):
            op, t = "LessOrEqual", (math.ceil(b) - 1 if op == "Less" else math.floor(b))
            if t < lo_c:
                op, t = "Less", lo_c  # no code is below the container: always false
            t = min(t, hi_c)
        else:
            op, t = "GreaterOrEqual", (math.floor(b) + 1 if op == "Greater" else math.ceil(b))
            if t > hi_c:
                op, t = "Greater", hi_c  # always false
            t = max(t, lo_c)
        self.code_comparison(n, float_in[0], op, t)
        return True

    def code_comparison(self, n, x_name: str, op: str, t: int) -> None:
        """``op(codes of x, t)``: a comparison with the integer threshold t (program array ``<node>.threshold``)
        that computes node ``n``'s outputs on the containers."""
        key = f"{n.name}.threshold"
        self.arrays[key] = np.array(t, dtype=self.cdtype)
        self.steps.append(Step("pass", n.name, [x_name, key], list(n.output),
                               {"op_type": op, "attrs": {}, "int_inputs": {1: key}}))

    def never_special(self, n, float_in: list[str]) -> bool:
        """IsNaN / IsInf of an activation (a guard such as DETR's ``where(isnan(attn), 0, attn)``): a quantized
        value is a finite grid point, so the answer is false everywhere, written as ``Less(q, lo)`` with lo the
        container's lowest code, as ``threshold`` writes "always false": ONNX defines neither op on integers.
        False (nothing emitted) for other nodes."""
        if n.op_type not in ("IsNaN", "IsInf") or len(float_in) != 1:
            return False
        self.code_comparison(n, float_in[0], "Less", CONTAINERS[self.container][0])
        return True

    def codes_only(self, n, float_in: list[str]) -> None:
        """An op reading activations with no float output runs on their containers; refuse it where the codes
        would give another answer than the values: a comparison with a float constant or across grids, a Cast
        of an activation to another type."""
        if n.op_type == "Cast":
            raise _Unsupported("a Cast of an activation to a non-float type has no exact integer form")
        if n.op_type not in COMPARISONS:
            return
        grids = {(self.tint(i).frac, self.tint(i).zp) for i in float_in}
        if len(float_in) != len([i for i in n.input if i]) or len(grids) != 1:
            raise _Unsupported("compares an activation with a constant or with an activation on another grid: "
                               "its container integers would give another answer (no exact integer form yet)")

    def onto_grid(self, t: TInt, y: TInt) -> dict:
        """A concat part: ``t``'s integers requantized to ``y``'s grid (a right shift, RNE; taken as they are
        where the grids agree)."""
        n_shift, pre, bound = self.shift_plan(t.frac - y.frac, t.max_abs)
        if _wide(bound, n_shift + pre):
            raise _Unsupported(f"input {t.name!r} needs a shift of {t.frac - y.frac} bits to the output scale")
        return {"zp": t.zp, "shift": n_shift, "pre": pre,
                "same": n_shift == 0 and t.zp == y.zp and t.lo >= y.lo and t.hi <= y.hi}

    def masked_select(self, n, a: dict, out: str, x_name: str) -> None:
        """Where(cond, C, x) or Where(cond, x, C) with a constant C (masked_fill of attention scores): x
        requantized to the output's grid (a one-input concat step into ``<node>/x_on_grid``), C quantized to it
        at lowering time, then Where on the integers. Exact: selection is elementwise, so
        Q(Where(c, C, x)) = Where(c, Q(C), Q(x))."""
        y, x = self.tint(out), self.tint(x_name)
        on_grid = f"{n.name}/x_on_grid"
        self.tensors[on_grid] = TInt(on_grid, y.frac, y.zp, y.lo, y.hi, y.bits, y.signed)
        self.steps.append(Step("concat", f"{n.name}/requant", [x_name], [on_grid], {
            "axis": 0, "parts": [self.onto_grid(x, y)], "y_zp": y.zp, "lo": y.lo, "hi": y.hi}))
        ins, keys = list(n.input), {}
        for k in (1, 2):
            if n.input[k] == x_name:
                ins[k] = on_grid
            else:
                ins[k] = keys[k] = self.const_on_grid(n.input[k], out, f"{n.name}.input{k}_q")
        self.steps.append(Step("carry", n.name, ins, list(n.output), {"op_type": "Where", "attrs": a,
                                                                    "int_inputs": keys}))

    def avgpool(self, n, a: dict) -> None:
        if n.op_type == "Resize":
            self.resize_linear(n, a)
            return
        x = self.tint(n.input[0])
        y = self.tint(n.output[0])
        shape = self.qg.shapes.get(n.input[0], ())
        attrs: dict = {"op_type": n.op_type}
        if n.op_type == "AveragePool":
            k = list(a["kernel_shape"])
            pads = list(a.get("pads", [0] * 2 * len(k)))
            strides = list(a.get("strides", [1] * len(k)))
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                raise _Unsupported("AveragePool with auto_pad SAME_* (write explicit pads)")
            if a.get("ceil_mode", 0):  # the last windows hang over the end: pads that never count
                extra = ceil_mode_overhang(shape, k, pads, strides)
                if any(extra) and a.get("count_include_pad", 0):
                    raise _Unsupported("AveragePool with ceil_mode and count_include_pad=1 (runtimes disagree on "
                                       "whether the overhang counts)")
                pads = pads[:len(k)] + [p + e for p, e in zip(pads[len(k):], extra)]
            count = int(np.prod(k))
            if any(pads) and not a.get("count_include_pad", 0):  # the divisor is the window's non-pad count
                count = self.valid_counts(shape, k, pads, strides)
            if len(shape) < 2 or shape[1] is None or shape[1] <= 0:
                raise _Unsupported("AveragePool input with an unknown channel count")
            attrs.update(channels=int(shape[1]), kernel=k, pads=pads, strides=strides)
        else:
            if n.op_type in ("ReduceMean", "ReduceSum"):
                axes = a.get("axes")
                if axes is None and len(n.input) > 1:
                    axes = self.qg.initializer(n.input[1]).tolist() if n.input[1] else None
                if not axes:
                    raise _Unsupported(f"{n.op_type} over every axis (the batch included)")
                if not a.get("keepdims", 1):
                    attrs["keepdims"] = 0
                axes = sorted(int(v) % len(shape) for v in axes)  # any static axes: spatial, tokens, channels
            else:
                axes = list(range(2, len(shape)))
            dims = [shape[d] for d in axes]
            if not dims or any(d is None or d <= 0 for d in dims):
                raise _Unsupported(f"average over the non-static dims {dims} of {shape}")
            count = int(np.prod(dims))
            attrs["axes"] = axes
            if n.op_type == "ReduceSum":  # the sum itself, requantized: an average whose divisor is 1
                self.average(n, x, y, 1, attrs, terms=count)
                return
        self.average(n, x, y, count, attrs)

    def resize_linear(self, n, a: dict) -> None:
        """Linear Resize of an NCHW tensor over H and W, two integer forms.

        By power-of-two factors r_h, r_w with half-pixel centres (align_corners=False: torch's bilinear
        upsampling, feature pyramids, segmentation heads) or asymmetric coordinates (TensorFlow's
        resize_bilinear without half-pixel centres): output ``r j + t`` on an axis interpolates at ``j + f``:
        half-pixel ``f = (2t + 1 - r) / 2r``, ``-f`` of ``x_(j-1)`` and ``1 + f`` of ``x_j`` for ``f < 0``,
        ``1 - f`` of ``x_j`` and ``f`` of ``x_(j+1)`` otherwise; asymmetric ``f = t / r``. Both clamp at the
        edges as onnxruntime does. So each of the r_h r_w output phases is a 3x3 depthwise sum over the
        edge-padded input with integer weights in units of ``1 / (4 r_h r_w)``, a power of two: with power-of-two
        scales the float interpolation of the dequantized input is exact and its quantization is this integer
        average (``resize_phases``); the phases are then interleaved.

        Any other static sizes, and align_corners (DPT's and many segmentation heads' upsampling): each axis's
        source coordinates are exact fractions num / den (``resize_taps``), so the output is the two-tap sum
        S = sum w0 x_i0 + w1 x_i1 per axis in integers, divided by den_h den_w with exact rounding."""
        ctm = a.get("coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        if a.get("antialias", 0):
            raise _Unsupported("linear Resize with antialias has no integer form")
        shape_in, shape_out = self.qg.shapes.get(n.input[0], ()), self.qg.shapes.get(n.output[0], ())
        if len(shape_in) != 4 or len(shape_out) != 4 or any(not isinstance(d, int) or d <= 0
                                                            for d in (*shape_in[1:], *shape_out[1:])):
            raise _Unsupported(f"linear Resize of the non-static or non-NCHW shape {shape_in} -> {shape_out}")
        if shape_in[1] != shape_out[1]:
            raise _Unsupported("linear Resize along the channel axis")
        x, y = self.tint(n.input[0]), self.tint(n.output[0])
        attrs = {"op_type": "Resize", "channels": int(shape_in[1]), "in_hw": [int(shape_in[2]), int(shape_in[3])]}
        r = [shape_out[d] // shape_in[d] for d in (2, 3)]
        exact = all(shape_out[d] == rd * shape_in[d] for d, rd in zip((2, 3), r))
        weights = resize_phases(*r, asymmetric=ctm == "asymmetric") if exact and ctm in (
            "half_pixel", "pytorch_half_pixel", "asymmetric") else None
        if weights is not None:
            self.average(n, x, y, 4 * r[0] * r[1], {**attrs, "factors": r, "weights": weights})
            return
        scales = self.sim.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        scales = scales.reshape(-1).tolist() if scales is not None and scales.numel() else None
        axes = [int(d) % 4 for d in a.get("axes", range(4))]  # opset 18: scales for these axes only
        taps = []
        for d in (2, 3):
            scale = scales[axes.index(d)] if scales is not None and d in axes else None
            if ctm != "align_corners" and scale is not None and scale * shape_in[d] != shape_out[d]:
                raise _Unsupported(f"linear Resize by the scale {scale}, which is not {shape_out[d]} / {shape_in[d]} "
                                   "(onnxruntime samples by the scale)")
            t = resize_taps(int(shape_in[d]), int(shape_out[d]), ctm)
            if t is None:
                raise _Unsupported(f"linear Resize with coordinate_transformation_mode {ctm!r} (the integer form "
                                   "covers half_pixel, pytorch_half_pixel, asymmetric and align_corners)")
            taps.append(t)
        self.average(n, x, y, taps[0][4] * taps[1][4], {**attrs, "taps": [list(t[:4]) for t in taps]})

    def average(self, n, x: TInt, y: TInt, count: int | np.ndarray, attrs: dict, terms: int | None = None) -> None:
        """An ``avgpool`` step: output = clip(RNE(S 2^up / (count 2^down)) + z_y) for the (weighted) window sum S
        of ``x - z_x``, whose weights add up to ``count``; ``terms`` (ReduceSum: divisor 1): the weights add up
        to this instead, for the bound on S."""
        up = max(0, y.frac - x.frac)
        per_position = isinstance(count, np.ndarray)
        c_max = int(count.max()) if per_position else count
        s_max = (c_max if terms is None else terms) * x.max_abs * 2**up
        down = int(cap_shift(max(0, x.frac - y.frac), s_max))  # |S| < divisor / 2 rounds to 0 either way
        divisor = count * 2**down
        bound = 2 * s_max + c_max * 2**down + 1
        # a power of two: the division is a shift, exact in float32 below 2^24 (one divisor for all positions)
        pow2 = not per_position and divisor & (divisor - 1) == 0
        attrs.update(x_zp=x.zp, count=count, up=up, divisor=divisor, y_zp=y.zp, lo=y.lo, hi=y.hi,
                     wide=bool(bound >= 2**31),
                     form=float_form(s_max, [up - divisor.bit_length() + 1], self.rounding) if pow2 else FORM_SHIFT)
        if bound >= 2**62:
            raise _Unsupported("the average needs more than 62 bits")
        self.steps.append(Step("avgpool", n.name, [n.input[0]], [n.output[0]], attrs))

    @staticmethod
    def valid_counts(shape: tuple, kernel: list[int], pads: list[int], strides: list[int]) -> np.ndarray:
        """Per output position, how many non-pad inputs an AveragePool window holds (its count_include_pad=0
        divisor), shaped (1, 1, *out_spatial) to broadcast over the window sums."""
        spatial = list(shape[2:])
        if any(d is None or d <= 0 for d in spatial):
            raise _Unsupported("AveragePool with count_include_pad=0 on a non-static spatial shape")
        nd = len(kernel)
        ones = torch.ones((1, 1, *spatial), dtype=torch.float64)
        padded = torch.nn.functional.pad(ones, [p for d in reversed(range(nd)) for p in (pads[d], pads[nd + d])])
        box = torch.ones((1, 1, *kernel), dtype=torch.float64)
        conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[nd]
        return conv(padded, box, stride=strides).round().to(torch.int64).numpy()

    def layernorm(self, n, a: dict) -> None:
        """LayerNormalization over the axes from ``axis`` (InstanceNormalization: over the spatial axes, scale and
        bias per channel) with constant scale and bias (``layernorm_params``)."""
        g = self.qg.model.graph
        used = {i for m in g.node for i in m.input} | {o.name for o in g.output}
        if any(o in used for o in n.output[1:] if o):
            raise _Unsupported("its Mean / InvStdDev outputs are used (only Y has an integer form)")
        if any(i not in self.sim.consts for i in n.input[1:] if i):
            raise _Unsupported("its scale and bias must be constants")
        x, y = self.tint(n.input[0]), self.tint(n.output[0])
        shape = self.qg.shapes.get(n.input[0], ())
        if not shape:
            raise _Unsupported("input of unknown rank")
        instance = n.op_type == "InstanceNormalization"  # over the spatial axes, scale and bias per channel
        axes = list(range(2 if instance else int(a.get("axis", -1)) % len(shape), len(shape)))
        dims = [shape[i] for i in axes]
        if any(d is None or d <= 0 for d in dims):
            raise _Unsupported(f"normalized dimensions {dims} are not static")
        per_channel = (-1, *([1] * (len(shape) - 2))) if instance else None
        gamma = self.sim.consts[n.input[1]].double().cpu().numpy()
        beta = self.sim.consts[n.input[2]].double().cpu().numpy() if len(n.input) > 2 and n.input[2] else None
        if per_channel is not None:
            gamma = gamma.reshape(per_channel)
            beta = None if beta is None else beta.reshape(per_channel)
        try:
            p = layernorm_params(int(np.prod(dims)), x.hi - x.lo, x.frac, y.frac, float(a.get("epsilon", 1e-5)),
                                 gamma, beta)
        except ValueError as e:
            raise _Unsupported(str(e)) from None
        self.steps.append(Step("layernorm", n.name, [n.input[0]], [n.output[0]], {
            "axes": axes, "x_zp": x.zp, **p, "pre": 0, "y_zp": y.zp, "lo": y.lo, "hi": y.hi, "wide": True}))

    def lut(self, n, a: dict) -> None:
        """A lookup table over the input's grid: one elementwise op with scalar constants, or a whole chain
        of them (``QGraph.chains``: GELU, SiLU written out), evaluated in float32 as the simulation does."""
        chain = self.qg.chains.get(n.output[0])
        x_name = chain[0] if chain else next(i for i in n.input if self.is_int(i))
        nodes = [self.node_by_name[m] for m in chain[1]] if chain else [n]
        x = self.tint(x_name)
        y = self.tint(n.output[0])
        for m in nodes:
            per_position = [i for i in m.input if i and i in self.sim.consts and self.sim.consts[i].numel() != 1]
            if per_position:  # the output would depend on the position, not on the input value alone
                raise _Unsupported(f"its constant {per_position[0]!r} holds one value per position; only scalar "
                                   "constants make a lookup table")
        c = np.arange(x.lo, x.hi + 1, dtype=np.int64)
        xf = torch.from_numpy(((c - x.zp).astype(np.float32) * np.float32(2.0 ** -x.frac)).astype(np.float32))
        env = {x_name: xf}
        with torch.no_grad():
            for m in nodes:
                args = [env[i] if i in env else (self.sim.consts[i].reshape(()) if i else None) for i in m.input]
                env[m.output[0]] = REGISTRY[m.op_type].simulate(args, attrs_of(m))[0]
        v = env[n.output[0]].to(torch.float32).numpy()
        if not np.all(np.isfinite(v)):
            raise _Unsupported("the function is not finite on the input grid")
        fq = self.sim.act_quantizer(self.qg.source[n.output[0]])
        q = quantize(v, np.float32(fq.params.scale), np.float32(fq.params.zero_point), fq.params.grid)
        table = (q.astype(np.int64) + (y.zp - int(fq.params.zero_point))).astype(self.cdtype)
        self.steps.append(Step("lut", n.name, [x_name], [n.output[0]], {"op_type": n.op_type, "table": table,
                                                                      "offset": x.lo}))

    def positional_const(self, n, x_name: str) -> bool:
        """True when the op's constant operand holds more than one value (no single lookup table)."""
        return any(i and i != x_name and i in self.sim.consts and self.sim.consts[i].numel() != 1 for i in n.input)

    def affine(self, n, x_name: str) -> None:
        """x + P, x - P, P - x, x * g, x / g with a constant of any broadcastable shape (position embeddings,
        layer scales): y = clip(R((c - z) * M + B, n) + z_y, lo, hi). An added P is B = round(P 2^f_c) at
        f_c = max(f_x, f_y + CONST_BITS) with M = +-2^(f_c - f_x); a factor g (1/g for Div) is the int16
        M = round(g 2^f_m) with the most bits f_m that fit, B absent. M and B keep the constant's shape."""
        x, y = self.tint(x_name), self.tint(n.output[0])
        k = 1 - list(n.input).index(x_name)
        c = self.sim.consts[n.input[k]].double().cpu().numpy()
        if n.op_type in ("Add", "Sub"):
            f_c = max(x.frac, y.frac + CONST_BITS)
            mult = np.array((-1 if n.op_type == "Sub" and k == 0 else 1) * 2 ** (f_c - x.frac), np.int64)
            offset = rne(c * 2.0 ** f_c).astype(np.int64) * (-1 if n.op_type == "Sub" and k == 1 else 1)
        else:
            if n.op_type == "Div" and k == 0:
                raise _Unsupported("a constant divided by an activation has no exact integer form")
            g = 1.0 / c if n.op_type == "Div" else c
            if not np.all(np.isfinite(g)):
                raise _Unsupported("its constant factor is not finite")
            mult, f_m = int16_multiplier(g)
            offset, f_c = None, x.frac + f_m
        self._affine_step(n, x_name, x, y, mult, offset, f_c)

    def batchnorm(self, n) -> None:
        """Inference BatchNormalization not folded into a layer nor rewritten as a depthwise conv (a 2-D input:
        BatchNorm1d after a Flatten): the per-channel affine y = k x + b, k = gamma / sqrt(var + eps),
        b = beta - mean k, as an affine step with the int16 multipliers M = round(k 2^f_m) and
        B = round(b 2^(f_x + f_m)) on channel axis 1."""
        if any(i not in self.sim.consts for i in n.input[1:5]):
            raise _Unsupported("its scale, bias, mean and variance must be constants")
        x, y = self.tint(n.input[0]), self.tint(n.output[0])
        k, b = bn_affine(*(self.sim.consts[i].double().cpu().numpy() for i in n.input[1:5]), bn_epsilon(n))
        rank = len(self.qg.shapes.get(n.input[0], ())) or 2
        shape = (-1, *([1] * (rank - 2)))
        mult, f_m = int16_multiplier(k)
        f_c = x.frac + f_m
        mult = mult.reshape(shape)
        offset = rne(b * 2.0 ** f_c).astype(np.int64).reshape(shape)
        self._affine_step(n, n.input[0], x, y, mult, offset, f_c)

    def _affine_step(self, n, x_name: str, x: TInt, y: TInt, mult: np.ndarray, offset: np.ndarray | None,
                     f_c: int) -> None:
        """clip(R((c - z) M + B, f_c - f_y) + z_y): the bounds, the int32/int64 choice and the step."""
        total = x.max_abs * int(np.abs(mult).max()) + (int(np.abs(offset).max()) if offset is not None else 0)
        n_shift, pre, bound = self.shift_plan(f_c - y.frac, total)
        if bound >= 2**62:
            raise _Unsupported("the constant needs more than 62 bits")
        wide = _wide(bound, n_shift + pre)
        dt = np.int64 if wide else np.int32
        self.arrays[f"{n.name}.mult"] = mult.astype(dt)
        if offset is not None:
            self.arrays[f"{n.name}.offset"] = offset.astype(dt)
        self.steps.append(Step("affine", n.name, [x_name], [n.output[0]], {
            "op_type": n.op_type, "x_zp": x.zp, "mult": f"{n.name}.mult",
            "offset": f"{n.name}.offset" if offset is not None else None, "const_frac": f_c, "shift": n_shift,
            "pre": pre, "y_zp": y.zp, "lo": y.lo, "hi": y.hi, "wide": wide,
            "form": float_form(total, [-n_shift], self.rounding)}))

    def matmul(self, n) -> None:
        """MatMul of two activations (attention's Q K^T, P V): R((a - z_a) @ (b - z_b), f_a + f_b - f_y) as
        ``QLinearMatMul`` where ``qlinear_form`` proves onnxruntime's requantization exact, else
        ``MatMulInteger`` and the shift recipe."""
        if not all(self.is_int(i) for i in n.input):
            raise _Unsupported("MatMul with a constant operand that is not a 2-D weight")
        a, b = self.tint(n.input[0]), self.tint(n.input[1])
        y = self.tint(n.output[0])
        sa, sb = self.qg.shapes.get(n.input[0]) or (), self.qg.shapes.get(n.input[1]) or ()
        k = next((d for d in (sa[-1:] or [None]) + (sb[-2:-1] or [None]) if isinstance(d, int) and d > 0), None)
        if k is None:
            raise _Unsupported("the contraction length is not static (no accumulator bound)")
        acc = k * a.max_abs * b.max_abs
        if acc >= 2**31:
            raise _Unsupported(f"its accumulator can reach {acc} >= 2^31 inside MatMulInteger")
        n_shift, pre, bound = self.shift_plan(a.frac + b.frac - y.frac, acc)
        form, why = qlinear_form("MatMul", a, y, np.array([n_shift]), np.array([acc], dtype=object), None, y.lo, y.hi,
                                 rank=max(3, len(sa)), rounding=self.rounding, container=self.container)
        if form != FORM_SHIFT and not CONTAINERS[self.container][0] <= b.zp <= CONTAINERS[self.container][1]:
            form, why = FORM_SHIFT, f"zero point outside {self.container}"
        self.steps.append(Step("matmul", n.name, list(n.input), [n.output[0]], {
            "zps": [a.zp, b.zp], "shift": n_shift, "pre": pre, "y_zp": y.zp, "lo": y.lo, "hi": y.hi,
            "wide": _wide(bound, n_shift + pre), "bound": acc, "form": form, "form_why": why,
            "x_frac": a.frac, "y_frac": y.frac}))

    def einsum(self, n, a: dict) -> None:
        """Einsum of two activations (Funnel's and Transformer-XL's attention, written with einsum): the same
        contraction of the centred integers, R(einsum(a - z_a, b - z_b), f_a + f_b - f_y), in int32 where
        (product of the contracted dims) |a - z_a| |b - z_b| stays below 2^31, else in int64. Constant operands
        reach it as activations (graph/constant_operands.py)."""
        if len(n.input) != 2 or not all(self.is_int(i) for i in n.input):
            raise _Unsupported("the integer Einsum covers two activation operands")
        eq = a["equation"]
        eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
        lhs, _, out = eq.partition("->")
        terms = lhs.split(",")
        if "." in eq or not out or len(terms) != 2:
            raise _Unsupported(f"Einsum {eq!r}: the integer form needs an explicit output and no ellipsis")
        sizes: dict[str, int] = {}
        for t, name in zip(terms, n.input):
            shape = self.qg.shapes.get(name) or ()
            if len(shape) == len(t):
                for letter, d in zip(t, shape):
                    if isinstance(d, int) and d > 0:
                        sizes[letter] = d
        summed = set("".join(terms)) - set(out)
        if any(letter not in sizes for letter in summed):
            raise _Unsupported(f"Einsum {eq!r}: the contracted dims are not static (no accumulator bound)")
        x0, x1, y = self.tint(n.input[0]), self.tint(n.input[1]), self.tint(n.output[0])
        acc = math.prod(sizes[letter] for letter in summed) * x0.max_abs * x1.max_abs
        n_shift, pre, bound = self.shift_plan(x0.frac + x1.frac - y.frac, acc)
        if bound >= 2**62:
            raise _Unsupported("the Einsum needs more than 62 bits")
        self.steps.append(Step("einsum", n.name, list(n.input), [n.output[0]], {
            "equation": eq, "zps": [x0.zp, x1.zp], "shift": n_shift, "pre": pre, "y_zp": y.zp, "lo": y.lo,
            "hi": y.hi, "wide": _wide(bound, n_shift + pre), "bound": acc}))

    def softmax(self, n, a: dict) -> None:
        """Softmax over one axis: d = max(c) - c along the axis (value difference d 2^-f_x), e = T[d] with
        T[k] = round(2^16 exp(-k 2^-f_x)), S = sum(e), y = clip(RNE(e 2^f_y / S) + z_y, lo, hi) (an exact
        integer division by the tensor S)."""
        x, y = self.tint(n.input[0]), self.tint(n.output[0])
        shape = self.qg.shapes.get(n.input[0]) or ()
        opset = next((o.version for o in self.qg.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        axis = int(a.get("axis", -1 if opset >= 13 else 1))
        if opset < 13 and (not shape or axis % len(shape) != len(shape) - 1):
            raise _Unsupported("Softmax before opset 13 over more than the last axis (flattened axes)")
        length = shape[axis] if shape and isinstance(shape[axis], int) and shape[axis] > 0 else None
        table = rne(2.0 ** SOFTMAX_BITS * np.exp(-np.arange(x.hi - x.lo + 1) * 2.0 ** -x.frac)).astype(np.int64)
        up, down = max(0, y.frac), max(0, -y.frac)
        s_max = (length or 0) * 2 ** (SOFTMAX_BITS + down)
        wide = length is None or 2 * s_max + 2 ** (SOFTMAX_BITS + up) + 2 >= 2**31
        self.steps.append(Step("softmax", n.name, [n.input[0]], [n.output[0]], {
            "axis": axis, "table": table, "up": up, "down": down, "y_zp": y.zp, "lo": y.lo, "hi": y.hi,
            "wide": bool(wide)}))

    def l2norm(self, n, a: dict) -> None:
        """ReduceL2: S = sum (c - z_x)^2 over the axes (int64), y = clip(round(sqrt(S) 2^(f_y - f_x)) + z_y), exact
        by ``quant.requant.round_sqrt`` (floor square root in float64, exact below 2^52)."""
        x, y = self.tint(n.input[0]), self.tint(n.output[0])
        shape = self.qg.shapes.get(n.input[0]) or ()
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = [int(v) for v in self.sim.consts[n.input[1]].reshape(-1).tolist()]
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                raise _Unsupported("ReduceL2 with no axes and noop_with_empty_axes (|x|, a lookup table) is not lowered")
            axes = list(range(len(shape)))
        dims = [shape[d] if -len(shape) <= d < len(shape) else None for d in axes] if shape else [None]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise _Unsupported("the reduced axes are not static (no bound on the sum of squares)")
        k = y.frac - x.frac
        s_max = math.prod(dims) * x.max_abs ** 2 * 4 ** max(k, 0)
        if s_max >= 2**52:
            raise _Unsupported(f"its scaled sum of squares can reach {s_max} >= 2^52 (the float64 square root is "
                               "exact below)")
        self.steps.append(Step("l2norm", n.name, [n.input[0]], [n.output[0]], {
            "axes": [int(d) for d in axes], "keepdims": int(a.get("keepdims", 1)), "x_zp": x.zp, "k": int(k),
            "y_zp": y.zp, "lo": y.lo, "hi": y.hi}))

    def divide(self, n) -> None:
        """Div of two activations: y = clip(round((a - z_a) 2^up / ((b - z_b) 2^down)) + z_y) with
        up - down = f_y + f_b - f_a (``quant.requant.div_round``: a zero divisor saturates, as x / 0 does)."""
        if not all(self.is_int(i) for i in n.input):
            raise _Unsupported("Div reads a float tensor that has no integer form")
        a, b, y = self.tint(n.input[0]), self.tint(n.input[1]), self.tint(n.output[0])
        e = y.frac + b.frac - a.frac
        up, down = max(e, 0), max(-e, 0)
        if 2 * max(a.max_abs * 2**up, b.max_abs * 2**down) >= 2**62:
            raise _Unsupported(f"the aligned operands need 2^{up} / 2^{down}: beyond int64")
        self.steps.append(Step("div", n.name, list(n.input), [n.output[0]], {
            "zps": [a.zp, b.zp], "up": int(up), "down": int(down), "y_zp": y.zp, "lo": y.lo, "hi": y.hi}))

    def constant_carry(self, n, a: dict, out: str) -> None:
        """A data-movement op on a float constant whose output is a quant point (Expand of a class token,
        Tile of a learned query): the constant is quantized to the output's grid at lowering time
        (program array ``<node>.input_q``) and the op moves its integers."""
        key = self.const_on_grid(n.input[0], out, f"{n.name}.input_q")
        self.steps.append(Step("carry", n.name, [key, *n.input[1:]], list(n.output),
                               {"op_type": n.op_type, "attrs": a, "int_input": key}))

    def const_on_grid(self, const: str, out: str, key: str) -> str:
        """Float constant ``const`` quantized to quant point ``out``'s grid, in ``out``'s container: program
        array ``key``."""
        y, p = self.tint(out), self.sim.act_quantizer(out).params
        c = self.sim.consts[const].detach().cpu().numpy().astype(np.float32)
        q = quantize(c, np.float32(p.scale), np.float32(p.zero_point), p.grid).astype(np.int64)
        self.arrays[key] = (q + (y.zp - int(p.zero_point))).astype(self.cdtype)
        return key

    def constant_select(self, n, a: dict, out: str) -> None:
        """Where(cond, A, B) with constant A and B and a quant point as output: every output value is a value of
        A or B, so quantizing A and B to the output's grid at lowering time (program arrays ``<node>.input<k>_q``)
        and selecting their integers is exact: Q(Where(c, A, B)) = Where(c, Q(A), Q(B))."""
        ins, keys = list(n.input), {}
        for k in (1, 2):
            ins[k] = keys[k] = self.const_on_grid(n.input[k], out, f"{n.name}.input{k}_q")
        self.steps.append(Step("carry", n.name, ins, list(n.output), {"op_type": n.op_type, "attrs": a,
                                                                    "int_inputs": keys}))

    def carry(self, n, a: dict, lowering: str | None) -> None:
        if lowering != "carry":
            raise _Unsupported("data-movement op without an integer form")
        x = self.tint(n.input[0])
        for o in n.output:
            if o in self.qg.float_tensors:
                self.tint(o)
        attrs: dict = {"op_type": n.op_type, "attrs": a}
        if n.op_type == "Pad":
            v = pad_constant(a, self.sim.consts[n.input[2]] if len(n.input) > 2 and n.input[2] else None)
            if v is not None:
                qv = v * 2.0 ** x.frac
                if qv != np.round(qv) or not x.lo <= x.zp + int(qv) <= x.hi:
                    raise _Unsupported(f"pad value {v} is not on the input's integer grid")
                attrs["pad_value"] = x.zp + int(qv)
        if n.op_type == "GlobalMaxPool":  # written as ReduceMax over the spatial axes
            attrs["rank"] = len(self.qg.shapes.get(n.input[0], ())) or 4
        self.steps.append(Step("carry", n.name, list(n.input), list(n.output), attrs))


class _Unsupported(Exception):
    pass


def resize_phases(r_h: int, r_w: int, asymmetric: bool = False) -> np.ndarray | None:
    """The 3x3 integer kernels (units ``1 / (4 r_h r_w)``) of the r_h r_w output phases of a linear Resize by
    power-of-two factors (``_Lowering.resize_linear``), half-pixel or asymmetric coordinates, phase
    ``t_h r_w + t_w`` first; None for a factor that is no power of two. Each kernel adds up to ``4 r_h r_w``;
    its largest weight is ``(2r_h - 1)(2r_w - 1)`` (half-pixel) or ``4 r_h r_w`` (asymmetric, phase 0)."""
    if any(r < 1 or r & (r - 1) for r in (r_h, r_w)):
        return None

    def taps(r: int) -> np.ndarray:  # (r, 3): weights of x_(j-1), x_j, x_(j+1) in units 1 / 2r
        if asymmetric:  # output r j + t samples j + t / r: (r - t) / r of x_j, t / r of x_(j+1)
            t = np.arange(r)
            return np.stack([np.zeros(r, np.int64), 2 * (r - t), 2 * t], axis=1)
        k = 2 * np.arange(r) + 1 - r
        return np.stack([np.maximum(-k, 0), 2 * r - np.abs(k), np.maximum(k, 0)], axis=1)

    th, tw = taps(r_h), taps(r_w)
    return (th[:, None, :, None] * tw[None, :, None, :]).reshape(r_h * r_w, 3, 3).astype(np.int64)


def resize_taps(n_in: int, n_out: int, ctm: str) -> tuple | None:
    """Linear Resize along one axis in exact fractions: output o samples the source coordinate num_o / den
    (align_corners: o (n_in - 1) / (n_out - 1); asymmetric: o n_in / n_out; half_pixel and pytorch_half_pixel:
    ((2o + 1) n_in - n_out) / (2 n_out); one output: 0 for align_corners and pytorch_half_pixel), clamped to
    [0, n_in - 1] as onnxruntime does. Returns (i0, i1, w0, w1, den): int64 source indices, i1 = min(i0 + 1,
    n_in - 1), and integer weights with w0 + w1 = den, the fraction reduced; None for other modes."""
    o = np.arange(n_out, dtype=np.int64)
    if ctm == "align_corners" or (ctm == "pytorch_half_pixel" and n_out == 1):
        num, den = (o * (n_in - 1), n_out - 1) if n_out > 1 else (np.zeros(1, np.int64), 1)
    elif ctm == "asymmetric":
        num, den = o * n_in, n_out
    elif ctm in ("half_pixel", "pytorch_half_pixel"):
        num, den = (2 * o + 1) * n_in - n_out, 2 * n_out
    else:
        return None
    num = np.clip(num, 0, (n_in - 1) * den)
    i0 = num // den
    f = num - i0 * den
    g = int(np.gcd.reduce(np.append(f, den)))
    f, den = f // g, den // g
    return i0, np.minimum(i0 + 1, n_in - 1), den - f, f, int(den)


def ceil_mode_overhang(shape: tuple, kernel: list[int], pads: list[int], strides: list[int]) -> list[int]:
    """Per spatial dim, how far the last window of a ceil_mode pool reaches past the end pad: ceil_mode gives
    ceil((L + p_begin + p_end - k) / s) + 1 outputs, one fewer when the last window would start past the
    input and its begin pad (PyTorch's and onnxruntime's rule)."""
    nd = len(kernel)
    spatial = list(shape[2:]) if len(shape) == nd + 2 else []
    if len(spatial) != nd or any(not isinstance(d, int) or d <= 0 for d in spatial):
        raise _Unsupported("AveragePool with ceil_mode on a non-static spatial shape")
    extra = []
    for d in range(nd):
        span = spatial[d] + pads[d] + pads[nd + d]
        out = -(-(span - kernel[d]) // strides[d]) + 1
        if (out - 1) * strides[d] >= spatial[d] + pads[d]:
            out -= 1
        extra.append(max(0, (out - 1) * strides[d] + kernel[d] - span))
    return extra


def act_codes(y: TInt, y_frac, bounds: tuple[float, float] | None) -> tuple:
    """The output codes (lo, hi) a step clips to: ``y``'s grid, narrowed to a fused Relu / Clip's ``bounds``
    rounded onto it (``y_frac``: its fractional bits, one per channel under ECAQ). Exact: RNE is monotone, so
    Q(clip(x, a, b)) = clip(Q(x), Q(a), Q(b)). Scalars where every channel agrees (``_shared``)."""
    lo, hi = y.lo, y.hi
    if bounds is None:
        return lo, hi
    scale_up = 2.0 ** np.asarray(y_frac, dtype=np.float64)
    if np.isfinite(bounds[0]):
        lo = np.maximum(lo, y.zp + rne(np.float64(bounds[0]) * scale_up).astype(np.int64))
    if np.isfinite(bounds[1]):
        hi = np.minimum(hi, y.zp + rne(np.float64(bounds[1]) * scale_up).astype(np.int64))
    return _shared(lo), _shared(hi)


def _shared(v) -> int | np.ndarray:
    """One int when every channel has the same bound, else the int64 vector (per output channel)."""
    a = np.asarray(v).reshape(-1)
    return int(a[0]) if (a == a[0]).all() else a.astype(np.int64)


def saturating_lefts(ins: list[TInt], left: list[int], n_shift: int, span: int) -> list[int]:
    """The alignment shifts of a sum's inputs, each capped where any non-zero value of that input already
    saturates the output: a term of at least ``2^left_k`` (when ``x_k != z_k``) beyond every other term's bound
    plus the output span (in the sum's units, ``2^n_shift`` per output step) clamps to the same end whatever
    ``left_k`` is, so a smaller ``left_k`` with that property gives the same integers. It keeps the shifts of an
    attention mask (0 or the float minimum, a scale near 2^127) inside int64."""
    out = list(left)
    for k, t in enumerate(ins):
        others = sum(u.max_abs * 2**s for j, (u, s) in enumerate(zip(ins, out)) if j != k)
        limit = others + (span + 2) * 2**n_shift
        if t.max_abs > 0 and 2**out[k] > limit:
            out[k] = min(out[k], int(limit).bit_length())  # 2^bit_length(limit) > limit
    return out


def cap_shift(n, max_abs):
    """Shifts beyond what the operand can reach give 0 either way: R(a, n) = 0 for |a| < 2^(n-1).
    Capping n at bitlength(max|a|) + 1 keeps every result and keeps 2^n inside int64."""
    cap = np.asarray(max_abs, dtype=object)
    cap = np.vectorize(lambda v: int(v).bit_length() + 1, otypes=[np.int64])(cap)
    return np.minimum(np.asarray(n, dtype=np.int64), cap)


def qlinear_form(op_type: str, x: TInt, y: TInt, n_shift: np.ndarray, conv_max: np.ndarray, bias: np.ndarray | None,
                 lo: int, hi: int, rank: int, ecaq: bool = False, rounding: str = "rne",
                 container: str = "int8") -> tuple[str, str]:
    """The layer's ONNX form: ``QLinearConv`` / ``QLinearMatMul`` where onnxruntime's requantization is
    provably the exact shift, else ``shift`` (the ConvInteger + R recipe); and why (docs/integer.md).

    onnxruntime computes ``v = acc + b`` in int32 and ``clip(RNE(float32(v) * float32(s_x s_w[c] / s_y)) + z_y)``.
    With Po2 scales the multiplier is exactly 2^-n[c] and the product by it is exact, so the result is
    R(v, n) + z_y whenever float32(v) = v, i.e. |v| <= 2^24 (``exact_in_float32``). Both sides are
    monotone in v, so a channel whose range passes 2^24 is still exact when R(+-2^24, n) already
    saturates to the clip bound on that side. Saturating to int8 then clipping to [lo, hi] equals the
    recipe's Clip. QLinearMatMul has no bias: Gemm/MatMul on a 2-D input run as a 1x1 QLinearConv.
    """
    if rounding != "rne":
        return FORM_SHIFT, f"{rounding} rounding (onnxruntime rounds half to even)"
    if ecaq:
        return FORM_SHIFT, "ECAQ output (one output exponent per channel)"
    n = np.asarray(n_shift, dtype=np.int64).reshape(-1)
    exps = np.concatenate([[x.frac, y.frac], n, n + y.frac, n + y.frac - x.frac])  # s_x, s_y, s_w, s_x s_w, multiplier
    if np.abs(exps).max() > SCALE_EXP_MAX:
        return FORM_SHIFT, "scale exponents outside the float32 normal range"
    c_lo, c_hi = CONTAINERS[container]
    if not all(c_lo <= z <= c_hi for z in (x.zp, y.zp)):
        return FORM_SHIFT, f"zero point outside {container}"
    conv = np.broadcast_to(np.asarray(conv_max, dtype=object).reshape(-1), n.shape)
    b = np.zeros(n.shape, dtype=object) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1).astype(object)
    for c in range(n.size):
        why = exact_in_float32(int(b[c]) - int(conv[c]), int(b[c]) + int(conv[c]), int(n[c]), y.zp, int(lo), int(hi))
        if why:
            return FORM_SHIFT, f"channel {c}: {why}"
    tight = max(abs(int(b[c])) + int(conv[c]) for c in range(n.size))
    if op_type == "Conv":
        return "QLinearConv", f"accumulator bound {tight}"
    if rank == 2:
        return "QLinearConv", f"accumulator bound {tight} (2-D input as a 1x1 conv)"
    if bias is None:
        return "QLinearMatMul", f"accumulator bound {tight}"
    return FORM_SHIFT, f"MatMul with a bias on a rank-{rank} input (QLinearMatMul has no bias)"


LN_GUARD = 8  # bits of t and of gamma kept below the output LSB (errors <= 2^-9 LSB each)


def layernorm_params(count: int, span: int, x_frac: int, y_frac: int, eps: float, gamma: np.ndarray,
                     beta: np.ndarray | None) -> dict:
    """Integer constants of LayerNormalization on N = ``count`` values v = c - z of a grid ``span`` = hi - lo
    wide, input 2^-x_frac, output 2^-y_frac (docs/integer.md, "LayerNormalization").

    u = N v - sum v = N (v - mean); Q = sum u^2; the normalized value is u / sqrt(Q/N + E N^2), E = eps 2^(2 x_frac).
    r = floor_sqrt(M), M = floor((Q 2^(2s) + eps_term) / N), eps_term = round(E N^3 2^(2s)), so r ~ 2^s sqrt(Q/N + E N^2);
    t = clip(RNE(u 2^(k+s) / r), +-t_max) ~ normalized 2^k; y = R(t G + B, k + g - y_frac) with G = round(gamma 2^g),
    B = round(beta 2^(k+g)). s is the largest with M < 2^52 (floor_sqrt exact) and every intermediate below 2^62.
    When Q (of order N^3) cannot fit, the "moments" form computes P = N sum v^2 - (sum v)^2 = Q/N directly and
    M = P 2^(2s) + round(E N^2 2^(2s)). Raises ValueError when no s >= 0 fits either form.
    """
    u_max, q_max = count * span, count**3 * span**2 // 4  # |v - mean| <= span; sum (v - mean)^2 <= N span^2 / 4
    norm_max = math.isqrt(max(count - 1, 0)) + 1  # |normalized| <= sqrt(N - 1)
    g_abs = float(np.abs(gamma).max()) if gamma.size else 0.0
    k = max(0, y_frac + (math.frexp(g_abs)[1] if g_abs else 0) + LN_GUARD)  # t: 2^-k steps of the normalized value
    g = max(0, y_frac + norm_max.bit_length() + LN_GUARD)  # gamma: 2^-g steps

    power = 3  # the "q" form's eps term is E N^3 2^(2s); the moments form's E N^2 2^(2s)

    def eps_term(s: int) -> int:
        return round(Fraction(eps) * Fraction(2) ** (2 * x_frac + 2 * s) * count**power)

    def fits(s: int) -> bool:
        if power == 3:
            num = q_max * 4**s + eps_term(s)
            return num < 2**62 and num // count < 2**52 and u_max * 2 ** (k + s) < 2**62
        return (count**2 * span**2 < 2**62 and (count**2 * span**2 // 4) * 4**s + eps_term(s) < 2**52
                and u_max * 2 ** (k + s) < 2**62)

    form = "q"
    if not fits(0):
        # moments form for large N (normalizations over whole feature maps): P = N sum v^2 - (sum v)^2 = Q / N
        # exactly, with no N^3 term; M = P 2^(2s) + round(E N^2 2^(2s)) needs no division
        form, power = "moments", 2
        if not fits(0):
            raise ValueError(f"the variance of {count} values needs more than 62 bits")
    s = 0
    while s < 40 and fits(s + 1):
        s += 1
    G = np.round(np.asarray(gamma, np.float64) * 2.0**g).astype(np.int64)
    B = np.round(np.asarray(beta if beta is not None else 0.0, np.float64) * 2.0 ** (k + g)).astype(np.int64)
    t_max = norm_max * 2**k
    shift = k + g - y_frac
    if t_max * int(np.abs(G).max(initial=0)) + int(np.abs(B).max(initial=0)) + 2**shift >= 2**62:
        raise ValueError("scale times the normalized value needs more than 62 bits")
    return {"count": count, "form": form, "sq_shift": 2 * s, "eps_term": eps_term(s), "num_shift": k + s, "t_max": t_max,
            "gamma": G, "beta": B, "shift": shift}


def float_form(total: int, exps: list[int], rounding: str) -> str:
    """``float32`` when an Add/Mul step may run as float32 ops: every partial sum is an integer multiple
    of 2^-n below 2^24 * 2^-n in magnitude (``total`` bounds the centred, aligned sum), so each Cast,
    Sub, Mul by 2^e and Add is exact and ``Round`` (half to even) gives R(v, n) -- the argument of
    ``qlinear_form``, without Mod/Div. Otherwise ``shift`` (the integer recipe)."""
    if rounding != "rne" or total > F32_EXACT or max(abs(e) for e in exps) > SCALE_EXP_MAX:
        return FORM_SHIFT
    return "float32"


def fold_constant_channels(w: np.ndarray, cdim: int, bias: np.ndarray, conv_max: np.ndarray, n_shift: np.ndarray,
                           zp: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Channels whose float32 requantization is not provably exact but whose exact output is one constant
    k = R(b - C, n) = R(b + C, n) (R is monotone; a huge bias beside tiny weights, e.g. a dead BN channel)
    become weights 0, bias k, shift 0: the same integers, and exact in float32. Returns the new weights,
    bias and shifts, and the folded channels."""
    w, b, n = w.copy(), np.asarray(bias).astype(np.int64).copy(), np.asarray(n_shift, dtype=np.int64).copy()
    folded = []
    for c in range(n.size):
        v_min, v_max = int(b[c]) - int(conv_max[c]), int(b[c]) + int(conv_max[c])
        if not exact_in_float32(v_min, v_max, int(n[c]), zp, lo, hi):
            continue
        pre = max(0, 1 - int(n[c]))
        k = int(requant_shift(v_min, int(n[c]), pre))
        if k != int(requant_shift(v_max, int(n[c]), pre)) or abs(k) >= 2**24:
            continue
        if cdim == 1:
            w[c] = 0
        else:
            w[..., c] = 0
        b[c], n[c] = k, 0
        folded.append(c)
    return w, b.astype(bias.dtype), n, folded


def weight_kernel(container: str, x_max: int, w_max: int, u8s8: str = "proven") -> str:
    """Which integer kernel onnxruntime runs: ``s8s8`` for int8 containers; for uint8 containers ``u8s8``
    (twice as fast as u8 x u8 on x86) when no int16 pair can saturate on AVX2 without VNNI
    (x_max * 2 w_max <= 2^15 - 1, DESIGN.md section 4) or ``u8s8="always"`` (a VNNI target), else
    ``u8u8`` (weights + 128, exact on every x86 kernel)."""
    if container == "int8":
        return "s8s8"
    if u8s8 == "always" or u8s8_pairs_safe(x_max, w_max):
        return "u8s8"
    return "u8u8"


def form_summary(program: IntProgram) -> str:
    """One line: how many layers use each form, and the names of those left to the shift recipe."""
    layers = [s for s in program.steps if s.kind == "layer"]
    counts: dict[str, int] = {}
    for s in layers:
        counts[s.attrs.get("form", FORM_SHIFT)] = counts.get(s.attrs.get("form", FORM_SHIFT), 0) + 1
    parts = [f"{counts[f]}/{len(layers)} layers as {f}" for f in ("QLinearConv", "QLinearMatMul") if counts.get(f)]
    shift = [s.node for s in layers if s.attrs.get("form", FORM_SHIFT) == FORM_SHIFT]
    parts.append(f"{len(shift)} with the shift recipe" + (f": {', '.join(shift)}" if shift else ""))
    return ", ".join(parts)


def _wide(bound: int, n_plus_pre) -> bool:
    """int64 unless every intermediate and the divisor 2^(n + pre) fit in int32."""
    return bool(bound >= 2**31 or int(np.max(n_plus_pre)) >= 31)


def lower(sim: SimModel, rounding: str = "rne", opset: int = 21, container: str = "uint8",
          u8s8: str = "proven") -> IntProgram:
    """The integer program of a calibrated Po2 simulation; unsupported nodes are reported together.
    ``container``: activation container type; ``u8s8``: "proven" uses u8 x s8 kernels only where no
    AVX2 pair can saturate, "always" everywhere (exact on VNNI CPUs only; see ``weight_kernel``)."""
    return _Lowering(sim, rounding, opset, container, u8s8).run()
