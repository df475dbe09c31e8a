"""Integer simulation: executes an ``IntProgram`` in torch, computing the integers of the integer model.

Container values are held exactly in float64 tensors (integers far below 2^53), so convolutions run
as float64 torch convolutions of the centred inputs (x - z_x) and the centred int8 weights: exact.
Requantization, additions and average pools go through ``quant.requant`` on int64 tensors, the same
functions whose integer-op recipe the exporter writes to ONNX. This is the simulation that
``onnxptq verify`` compares with onnxruntime, ``runtime/`` and the ONNX reference evaluator.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..export.intplan import IntProgram, Step, TInt
from ..quant.requant import div_round, floor_sqrt, requant_shift, rne_div, round_sqrt, shift_float
from ..ops.registry import REGISTRY
from ..ops.simulate import conv, torch_pad


#: Step kind -> executor method; covers every integer-lowering kind of ops.registry (tests/test_opspec.py).
#: "carry" (and "pass") steps run the op's torch function on the containers (_generic).
EXECUTORS = {"layer": "_layer", "add": "_add", "mul": "_mul", "affine": "_affine", "matmul": "_matmul",
             "concat": "_concat", "avgpool": "_avgpool", "softmax": "_softmax", "lut": "_lut",
             "layernorm": "_layernorm", "batchnorm": "_affine", "l2norm": "_l2norm", "div": "_div", "carry": "_generic",
             "dilate": "_dilate", "intcast": "_intcast", "einsum": "_einsum",
             "select": "_select"}
# executors that take the list of inputs
_NARY = frozenset({"add", "mul", "matmul", "concat", "div", "einsum", "select"})


def _per_channel(v: np.ndarray, cdim: int, ndim: int, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v, dtype=np.int64), device=device)
    shape = [1] * ndim
    shape[cdim] = -1
    return t.reshape(shape)


class IntSim:
    """``IntSim(program, consts).run({input: float array}) -> {tensor: array}`` (containers as int64)."""

    def __init__(self, program: IntProgram, consts: dict[str, np.ndarray | torch.Tensor], device: str = "cpu") -> None:
        self.p, self.device = program, torch.device(device)
        self.consts = {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.array(v))).to(self.device)
                       for k, v in consts.items()}
        self.w = {k: torch.as_tensor(v.astype(np.float64), device=self.device) for k, v in program.arrays.items()
                  if k.endswith(".weight")}
        self.b = {k: v.astype(np.int64) for k, v in program.arrays.items() if k.endswith(".bias")}

    # ------------------------------------------------------------------ helpers
    def _requant(self, a: torch.Tensor, shift, pre: int, step: Step) -> torch.Tensor:
        """R(a * 2^pre, shift + pre) + z, clipped. Steps the lowering proved to fit int32 take the exact
        float64 path (``quant.requant.shift_float``, exact below 2^52); "wide" steps the int64 recipe."""
        if step.attrs.get("wide"):
            y = requant_shift(a.to(torch.int64), shift, pre, self.p.rounding).double()
        else:
            y = shift_float(a, shift, self.p.rounding)
        y = (y + step.attrs["y_zp"]).clamp(step.attrs["lo"], None)
        hi = step.attrs["hi"]
        if isinstance(hi, np.ndarray):  # per output channel (an ECAQ output with a fused Relu6 / Clip)
            return torch.minimum(y, _per_channel(hi, step.attrs["cdim"], y.dim(), self.device).double())
        return y.clamp(None, hi)

    def _val(self, env: dict, name: str):
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.consts:
            return self.consts[name]
        return torch.as_tensor(self.p.arrays[name].astype(np.int64), device=self.device)  # a quantized constant

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _codes(v: torch.Tensor, frac: int, zp: int, lo: int, hi: int) -> torch.Tensor:
        """float64 values to their codes: rne(v 2^f) + z, clamped to [lo, hi] (the writer's ``quantize``)."""
        return (torch.round(v * 2.0 ** frac) + zp).clamp(lo, hi)

    def _input(self, step: Step, x: np.ndarray) -> torch.Tensor:
        t: TInt = self.p.tensors[step.outputs[0]]
        xf = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device).double()
        return self._codes(xf, t.frac, t.zp, t.lo, t.hi)

    def _intcast(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        a = step.attrs
        return self._codes(x.double(), a["frac"], a["y_zp"], a["lo"], a["hi"])

    def _layer(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        a = step.attrs
        xz = x - a["x_zp"]
        w = self.w[a["weight"]]
        if a.get("w_zp"):  # uint8 weights for u8 x u8 kernels: centred again
            w = w - a["w_zp"]
        if a["op_type"] != "Conv" and w.dim() == 4:  # Gemm/MatMul stored as a 1x1 QLinearConv weight (M, K, 1, 1)
            w = w.reshape(w.shape[0], -1).T
        if a.get("conv_bound", 1 << 53) < 2**24:  # every partial sum is an integer below 2^24: float32 is exact
            xz, w = xz.float(), w.float()
        if a["op_type"] == "Conv":
            acc = conv(xz, w, None, a["conv"])
        else:
            acc = torch.matmul(xz, w)
        acc = torch.round(acc.double())
        if a["bias"] is not None:
            acc = acc + _per_channel(self.b[a["bias"]], a["cdim"], acc.dim(), self.device).double()
        shift = _per_channel(a["shift"], a["cdim"], acc.dim(), self.device)
        return self._requant(acc, shift, a["pre"], step)

    def _dilate(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        """stride - 1 zero points between neighbours (``IntegerWriter.s_dilate``)."""
        st = step.attrs["strides"]
        out = torch.full((*x.shape[:2], *[(d - 1) * s + 1 for d, s in zip(x.shape[2:], st)]), float(step.attrs["zp"]),
                         dtype=x.dtype, device=x.device)
        out[(slice(None), slice(None), *[slice(None, None, s) for s in st])] = x
        return out

    def _add(self, step: Step, ins: list[torch.Tensor]) -> torch.Tensor:
        a = step.attrs
        total = None
        for x, zp, left, sign in zip(ins, a["zps"], a["left"], a["signs"]):
            if a["wide"]:  # aligned operands may pass 2^53: int64
                v = (x.to(torch.int64) - zp) * (2 ** left) * sign
            else:  # below 2^31: exact in float64
                v = (x - zp) * float(2 ** left * sign)
            total = v if total is None else total + v
        return self._requant(total, a["shift"], a["pre"], step)

    def _mul(self, step: Step, ins: list[torch.Tensor]) -> torch.Tensor:
        a = step.attrs
        prod = (ins[0] - a["zps"][0]) * (ins[1] - a["zps"][1])  # |prod| < 2^16: exact
        return self._requant(prod, a["shift"], a["pre"], step)

    def _affine(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        a = step.attrs
        v = (x.to(torch.int64) - a["x_zp"]) * torch.as_tensor(self.p.arrays[a["mult"]].astype(np.int64), device=x.device)
        if a["offset"]:
            v = v + torch.as_tensor(self.p.arrays[a["offset"]].astype(np.int64), device=x.device)
        return self._requant(v if a["wide"] else v.double(), a["shift"], a["pre"], step)

    def _matmul(self, step: Step, ins: list[torch.Tensor]) -> torch.Tensor:
        a = step.attrs
        # float64 (a quantized constant operand arrives as int64 codes), |acc| < 2^31: exact
        acc = torch.matmul(ins[0].double() - a["zps"][0], ins[1].double() - a["zps"][1])
        return self._requant(acc, a["shift"], a["pre"], step)

    def _einsum(self, step: Step, ins: list[torch.Tensor]) -> torch.Tensor:
        a = step.attrs
        acc = torch.einsum(a["equation"], *(v.to(torch.int64) - z for v, z in zip(ins, a["zps"])))
        return self._requant(acc if a["wide"] else acc.double(), a["shift"], a["pre"], step)

    def _softmax(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        a = step.attrs
        c = x.to(torch.int64)
        e = torch.as_tensor(a["table"].astype(np.int64), device=x.device)[c.amax(a["axis"], keepdim=True) - c]
        s = e.sum(a["axis"], keepdim=True)
        y = rne_div(e * 2 ** a["up"], s * 2 ** a["down"], self.p.rounding) + a["y_zp"]
        return y.clamp(a["lo"], a["hi"]).double()

    def _concat(self, step: Step, ins: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(self._onto_output_grid(step, ins), dim=step.attrs["axis"])

    def _select(self, step: Step, ins: list[torch.Tensor]) -> torch.Tensor:
        a, b = self._onto_output_grid(step, ins[1:3])
        return torch.where(ins[0].bool(), a, b)

    def _onto_output_grid(self, step: Step, ins: list[torch.Tensor]) -> list[torch.Tensor]:
        parts = []
        for x, part in zip(ins, step.attrs["parts"]):
            if part["same"]:
                parts.append(x)
            else:
                parts.append(self._requant(x - part["zp"], part["shift"], part["pre"], step))
        return parts

    def _avgpool(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        a = step.attrs
        xz = x - a["x_zp"]
        if a["op_type"] == "AveragePool":
            k = a["kernel"]
            nd = len(k)
            pads = a["pads"]
            if any(pads):
                xz = F.pad(xz, torch_pad(pads))
            ones = torch.ones((xz.shape[1], 1, *k), dtype=xz.dtype, device=xz.device)
            fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
            s = fn(xz, ones, None, a["strides"], 0, 1, xz.shape[1])
        elif a["op_type"] == "Resize" and "taps" in a:  # two taps per output along H, then along W
            s = xz.to(torch.int64)
            for axis, (i0, i1, w0, w1) in zip((2, 3), a["taps"]):
                shape = [1, 1, -1, 1] if axis == 2 else [1, 1, 1, -1]
                take = [torch.as_tensor(np.asarray(i), device=s.device) for i in (i0, i1)]
                ws = [torch.as_tensor(np.asarray(w, np.int64), device=s.device).reshape(shape) for w in (w0, w1)]
                s = s.index_select(axis, take[0]) * ws[0] + s.index_select(axis, take[1]) * ws[1]
        elif a["op_type"] == "Resize":  # every output phase's 3x3 sum over the edge-padded input
            w = torch.as_tensor(np.tile(a["weights"], (xz.shape[1], 1, 1))[:, None], dtype=xz.dtype, device=xz.device)
            s = F.conv2d(F.pad(xz, (1, 1, 1, 1), mode="replicate"), w, None, 1, 0, 1, xz.shape[1])
        else:
            s = xz.sum(dim=a["axes"], keepdim=bool(a.get("keepdims", 1)))
        s = torch.round(s).to(torch.int64) * (2 ** a["up"])
        d = a["divisor"]
        d = torch.as_tensor(d, device=s.device) if isinstance(d, np.ndarray) else d  # per position: count_include_pad=0
        y = (rne_div(s, d, self.p.rounding) + a["y_zp"]).clamp(a["lo"], a["hi"]).double()
        if a["op_type"] == "Resize" and "taps" not in a:  # (N, C r_h r_w, H, W) -> (N, C, H r_h, W r_w)
            (rh, rw), (h, w), c = a["factors"], a["in_hw"], a["channels"]
            y = y.reshape(-1, c, rh, rw, h, w).permute(0, 1, 4, 2, 5, 3).reshape(-1, c, h * rh, w * rw)
        return y

    def _layernorm(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        """The integer LayerNormalization of ``integer.s_layernorm`` in int64."""
        a, dev = step.attrs, x.device
        v = x.to(torch.int64) - a["x_zp"]
        s1 = v.sum(dim=a["axes"], keepdim=True)
        u = a["count"] * v - s1
        if a.get("form", "q") == "moments":  # P = N sum v^2 - (sum v)^2 = Q / N, no division
            m = (a["count"] * (v * v).sum(dim=a["axes"], keepdim=True) - s1 * s1) * 2 ** a["sq_shift"] + a["eps_term"]
        else:
            m = ((u * u).sum(dim=a["axes"], keepdim=True) * 2 ** a["sq_shift"] + a["eps_term"]) // a["count"]
        r = floor_sqrt(m).clamp(min=1)
        t = rne_div(u * 2 ** a["num_shift"], r, self.p.rounding).clamp(-a["t_max"], a["t_max"])
        p = t * torch.as_tensor(a["gamma"], device=dev) + torch.as_tensor(a["beta"], device=dev)
        y = requant_shift(p, a["shift"], 0, self.p.rounding) + a["y_zp"]
        return y.clamp(a["lo"], a["hi"]).double()

    def _l2norm(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        a = step.attrs
        v = x.to(torch.int64) - a["x_zp"]
        s = (v * v).sum(dim=a["axes"], keepdim=bool(a["keepdims"]))
        return (round_sqrt(s, a["k"], self.p.rounding) + a["y_zp"]).clamp(a["lo"], a["hi"]).double()

    def _div(self, step: Step, ins: list[torch.Tensor]) -> torch.Tensor:
        a = step.attrs
        num = (ins[0].to(torch.int64) - a["zps"][0]) * 2 ** a["up"]
        den = (ins[1].to(torch.int64) - a["zps"][1]) * 2 ** a["down"]
        return (div_round(num, den, self.p.rounding) + a["y_zp"]).clamp(a["lo"], a["hi"]).double()

    def _lut(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        table = torch.as_tensor(step.attrs["table"].astype(np.float64), device=x.device)
        return table[(x.to(torch.int64) - step.attrs["offset"])]

    def _generic(self, step: Step, env: dict) -> list:
        ins = [self._val(env, i) for i in step.inputs]
        attrs = dict(step.attrs.get("attrs", {}))
        if step.attrs.get("pad_value") is not None:
            ins = (ins + [None, None])[:3] if len(ins) < 3 else ins
            ins[2] = torch.tensor(float(step.attrs["pad_value"]), dtype=torch.float64)
        return REGISTRY[step.attrs["op_type"]].simulate(ins, attrs)

    # ------------------------------------------------------------------ run
    @torch.no_grad()
    def run(self, feeds: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
        """Integer containers of the graph outputs (and of every tensor with ``keep``) plus the float
        outputs under their graph names. Containers are returned as int64 arrays keyed ``<tensor>.q``."""
        env: dict[str, torch.Tensor] = {}
        result: dict[str, np.ndarray] = {}
        for name in self.p.inputs:  # inputs that are no activation (token ids, masks) enter as they are
            if name not in self.p.tensors and name in feeds:
                env[name] = torch.as_tensor(np.asarray(feeds[name]), device=self.device)
        for step in self.p.steps:
            k = step.kind
            if k == "input":
                env[step.outputs[0]] = self._input(step, feeds[step.inputs[0]])
            elif k in ("carry", "pass"):
                if step.attrs["op_type"] == "Constant":
                    continue
                outs = self._generic(step, env)
                for name, v in zip(step.outputs, outs):
                    if name:
                        env[name] = v
            elif k == "output":
                t = self.p.tensors[step.inputs[0]]
                c = env[step.inputs[0]]
                result[step.outputs[0]] = ((c - t.zp) * 2.0 ** -t.frac).float().cpu().numpy()
            else:
                fn = getattr(self, EXECUTORS[k])
                env[step.outputs[0]] = fn(step, [self._val(env, i) for i in step.inputs] if k in _NARY
                                          else env[step.inputs[0]])
        for name, t in self.p.tensors.items():
            if name in env and (keep or name in self.p.outputs):
                result[f"{name}.q"] = env[name].to(torch.int64).cpu().numpy()
        return result

    def run_batched(self, inputs: dict[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
        """First float output over a dataset, batch by batch."""
        n = len(next(iter(inputs.values())))
        outs = [self.run({k: v[i:i + batch_size] for k, v in inputs.items()})[self.p.outputs[0]]
                for i in range(0, n, batch_size)]
        return np.concatenate(outs)
