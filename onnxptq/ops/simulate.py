"""ONNX operators in torch (float32 NCHW), used by the simulation to run a (folded) ONNX graph.

Each entry maps an op type to ``fn(inputs, attrs) -> list of outputs``; ``inputs`` holds torch
tensors (``None`` for omitted optional inputs). Shape arithmetic runs on int64 tensors.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

OpFn = Callable[[list, dict], list]
OPS: dict[str, OpFn] = {}

ONNX_TO_TORCH_DTYPE = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
                       7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def op(*names: str):
    def register(fn: OpFn) -> OpFn:
        for n in names:
            OPS[n] = fn
        return fn
    return register


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


# ------------------------------------------------------------------ conv / linear

def torch_pad(pads: list[int]) -> list[int]:
    """ONNX pads [b_0, ..., b_{n-1}, e_0, ..., e_{n-1}] -> F.pad's (b_last, e_last, ..., b_0, e_0)."""
    nd = len(pads) // 2
    out: list[int] = []
    for d in reversed(range(nd)):
        out += [pads[d], pads[nd + d]]
    return out


def _conv_padding(x: torch.Tensor, w: torch.Tensor, a: dict) -> tuple[torch.Tensor, list[int]]:
    nd = w.dim() - 2
    strides = a.get("strides", [1] * nd)
    dil = a.get("dilations", [1] * nd)
    pads = a.get("pads", [0] * (2 * nd))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max(0, (out - 1) * strides[i] + (w.shape[2 + i] - 1) * dil[i] + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[nd + i] = lo, total - lo
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    return pads, strides, dil


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict) -> torch.Tensor:
    pads, strides, dil = _conv_padding(x, w, a)
    nd = w.dim() - 2
    group = a.get("group", 1)
    if all(pads[i] == pads[nd + i] for i in range(nd)):
        padding = pads[:nd]
    else:
        x = F.pad(x, torch_pad(pads))
        padding = [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=strides, padding=padding, dilation=dil, groups=group)


@op("Conv")
def _conv(i, a):
    return [conv(i[0], i[1], i[2] if len(i) > 2 else None, a)]


def gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict) -> torch.Tensor:
    if a.get("transA", 0):
        x = x.t()
    y = a.get("alpha", 1.0) * (x @ (w.t() if a.get("transB", 0) else w))
    if b is not None:
        y = y + a.get("beta", 1.0) * b
    return y


@op("Gemm")
def _gemm(i, a):
    return [gemm(i[0], i[1], i[2] if len(i) > 2 else None, a)]


@op("MatMul")
def _matmul(i, a):
    return [torch.matmul(i[0], i[1])]


# ------------------------------------------------------------------ activations / elementwise

OPS["Relu"] = lambda i, a: [F.relu(i[0])]
OPS["Sigmoid"] = lambda i, a: [torch.sigmoid(i[0])]
OPS["Tanh"] = lambda i, a: [torch.tanh(i[0])]
OPS["HardSwish"] = lambda i, a: [F.hardswish(i[0])]
OPS["Exp"] = lambda i, a: [torch.exp(i[0])]
OPS["Log"] = lambda i, a: [torch.log(i[0])]
OPS["Sqrt"] = lambda i, a: [torch.sqrt(i[0])]
OPS["Erf"] = lambda i, a: [torch.erf(i[0])]
OPS["Neg"] = lambda i, a: [-i[0]]
OPS["Abs"] = lambda i, a: [i[0].abs()]
OPS["Reciprocal"] = lambda i, a: [1.0 / i[0]]
OPS["Floor"] = lambda i, a: [torch.floor(i[0])]
OPS["Ceil"] = lambda i, a: [torch.ceil(i[0])]
OPS["Add"] = lambda i, a: [i[0] + i[1]]
OPS["Sub"] = lambda i, a: [i[0] - i[1]]
OPS["Mul"] = lambda i, a: [i[0] * i[1]]
OPS["Pow"] = lambda i, a: [torch.pow(i[0], i[1])]
OPS["Equal"] = lambda i, a: [i[0] == i[1]]
OPS["Less"] = lambda i, a: [i[0] < i[1]]
OPS["Greater"] = lambda i, a: [i[0] > i[1]]
OPS["Not"] = lambda i, a: [~i[0]]
OPS["Where"] = lambda i, a: [torch.where(i[0], i[1], i[2])]
OPS["Max"] = lambda i, a: [torch.stack(torch.broadcast_tensors(*i)).amax(0)]
OPS["Min"] = lambda i, a: [torch.stack(torch.broadcast_tensors(*i)).amin(0)]
OPS["Sum"] = lambda i, a: [torch.stack(torch.broadcast_tensors(*i)).sum(0)]
OPS["Identity"] = lambda i, a: [i[0]]
OPS["Dropout"] = lambda i, a: [i[0]]
OPS["Softplus"] = lambda i, a: [F.softplus(i[0])]
OPS["Mish"] = lambda i, a: [F.mish(i[0])]
OPS["Gelu"] = lambda i, a: [F.gelu(i[0], approximate="tanh" if a.get("approximate", b"none") in (b"tanh", "tanh") else "none")]


@op("Div")
def _div(i, a):
    x, y = i
    if not x.is_floating_point() and not y.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return [x / y]


@op("LeakyRelu")
def _leaky(i, a):
    return [F.leaky_relu(i[0], a.get("alpha", 0.01))]


@op("PRelu")
def _prelu(i, a):
    x, slope = i
    return [torch.where(x >= 0, x, x * slope)]


@op("Elu")
def _elu(i, a):
    return [F.elu(i[0], a.get("alpha", 1.0))]


OPS["Softsign"] = lambda i, a: [F.softsign(i[0])]


@op("Selu")
def _selu(i, a):
    """ONNX Selu: gamma * (x if x > 0 else alpha * (exp(x) - 1)), ONNX's default alpha and gamma."""
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    x = i[0]
    return [gamma * torch.where(x > 0, x, alpha * torch.expm1(x))]


@op("Celu")
def _celu(i, a):
    return [F.celu(i[0], a.get("alpha", 1.0))]


@op("ThresholdedRelu")
def _thresholded_relu(i, a):
    x = i[0]
    return [torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))]


@op("HardSigmoid")
def _hsig(i, a):
    return [torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0)]


@op("Clip")
def _clip(i, a):
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    lo = float(lo) if isinstance(lo, torch.Tensor) else lo
    hi = float(hi) if isinstance(hi, torch.Tensor) else hi
    return [torch.clamp(i[0], lo, hi)]


def _axis_softmax(fn):
    def run(i, a):
        return [fn(i[0], dim=a.get("axis", -1))]
    return run


OPS["Softmax"] = _axis_softmax(torch.softmax)
OPS["LogSoftmax"] = _axis_softmax(torch.log_softmax)


@op("BatchNormalization")
def _bn(i, a):
    x, g, b, m, v = i[:5]
    return [F.batch_norm(x, m, v, g, b, training=False, eps=a.get("epsilon", 1e-5))]


@op("Cast")
def _cast(i, a):
    return [i[0].to(ONNX_TO_TORCH_DTYPE[a["to"]])]


# ------------------------------------------------------------------ pooling / reductions

def _pool_pads(x, a, nd):
    pads = list(a.get("pads", [0] * (2 * nd)))
    kernel = a["kernel_shape"]
    strides = a.get("strides", [1] * nd)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        for d in range(nd):
            size = x.shape[2 + d]
            out = math.ceil(size / strides[d])
            total = max(0, (out - 1) * strides[d] + kernel[d] - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[d], pads[nd + d] = lo, total - lo
    return pads, kernel, strides


@op("MaxPool")
def _maxpool(i, a):
    x = i[0]
    nd = x.dim() - 2
    pads, kernel, strides = _pool_pads(x, a, nd)
    dil = a.get("dilations", [1] * nd)
    if any(pads[d] != pads[nd + d] for d in range(nd)):
        x = F.pad(x, torch_pad(pads), value=float("-inf"))
        pads = [0] * (2 * nd)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    return [fn(x, kernel, strides, pads[:nd], dil, ceil_mode=bool(a.get("ceil_mode", 0)))]


@op("AveragePool")
def _avgpool(i, a):
    x = i[0]
    nd = x.dim() - 2
    pads, kernel, strides = _pool_pads(x, a, nd)
    include = bool(a.get("count_include_pad", 0))
    if any(pads[d] != pads[nd + d] for d in range(nd)):
        if not include:
            raise NotImplementedError("asymmetric AveragePool padding with count_include_pad=0")
        x = F.pad(x, torch_pad(pads))
        pads = [0] * (2 * nd)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return [fn(x, kernel, strides, pads[:nd], ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=include)]


OPS["GlobalAveragePool"] = lambda i, a: [i[0].mean(dim=list(range(2, i[0].dim())), keepdim=True)]
OPS["GlobalMaxPool"] = lambda i, a: [i[0].amax(dim=list(range(2, i[0].dim())), keepdim=True)]


def _reduce(fn):
    def run(i, a):
        x = i[0]
        axes = a.get("axes")
        if axes is None and len(i) > 1 and i[1] is not None:
            axes = _ints(i[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, dim=[int(d) for d in axes], keepdim=keep)]
    return run


OPS["ReduceMean"] = _reduce(torch.mean)
OPS["ReduceSum"] = _reduce(torch.sum)
OPS["ReduceMax"] = _reduce(torch.amax)
OPS["ReduceMin"] = _reduce(torch.amin)

# ------------------------------------------------------------------ tensor shape ops


@op("Flatten")
def _flatten(i, a):
    x = i[0]
    axis = a.get("axis", 1) % max(x.dim(), 1) if x.dim() else 0
    lead = math.prod(x.shape[:axis]) if axis else 1
    return [x.reshape(lead, -1)]


@op("Reshape")
def _reshape(i, a):
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Transpose")
def _transpose(i, a):
    perm = a.get("perm") or list(reversed(range(i[0].dim())))
    return [i[0].permute(*perm)]


@op("Squeeze")
def _squeeze(i, a):
    axes = a.get("axes") or (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    x = i[0]
    if axes is None:
        return [x.squeeze()]
    for d in sorted((d % x.dim() for d in axes), reverse=True):
        x = x.squeeze(d)
    return [x]


@op("Unsqueeze")
def _unsqueeze(i, a):
    axes = a.get("axes") or _ints(i[1])
    x = i[0]
    rank = x.dim() + len(axes)
    for d in sorted(d % rank for d in axes):
        x = x.unsqueeze(d)
    return [x]


@op("Concat")
def _concat(i, a):
    return [torch.cat([t for t in i if t is not None], dim=a["axis"])]


@op("Split")
def _split(i, a):
    x = i[0]
    axis = a.get("axis", 0)
    split = a.get("split") or (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    if split is None:
        n = a.get("num_outputs") or a["_num_outputs"]
        size = math.ceil(x.shape[axis] / n)
        split = [size] * (n - 1) + [x.shape[axis] - size * (n - 1)]
    return list(torch.split(x, split, dim=axis))


@op("Slice")
def _slice(i, a):
    x = i[0]
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise NotImplementedError("Slice with negative steps")
        dim = x.shape[ax]
        s = max(0, min(dim, s + dim if s < 0 else s))
        e = max(0, min(dim, e + dim if e < 0 else e))
        idx[ax] = slice(s, e, st)
    return [x[tuple(idx)]]


@op("Gather")
def _gather(i, a):
    x, ind = i
    axis = a.get("axis", 0) % x.dim()
    ind = ind.long()
    ind = torch.where(ind < 0, ind + x.shape[axis], ind)
    out = torch.index_select(x, axis, ind.reshape(-1))
    return [out.reshape(tuple(x.shape[:axis]) + tuple(ind.shape) + tuple(x.shape[axis + 1:]))]


@op("Shape")
def _shape(i, a):
    shape = torch.tensor(list(i[0].shape), dtype=torch.int64)
    start, end = a.get("start", 0), a.get("end")
    return [shape[start:end]]


OPS["Size"] = lambda i, a: [torch.tensor(i[0].numel(), dtype=torch.int64)]
OPS["ConstantOfShape"] = lambda i, a: [torch.full(_ints(i[0]), float(a["value"].reshape(-1)[0]) if "value" in a else 0.0,
                                                  dtype=torch.as_tensor(a["value"]).dtype if "value" in a else torch.float32)]


@op("Expand")
def _expand(i, a):
    shape = _ints(i[1])
    x = i[0]
    out_shape = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return [x.expand(out_shape)]


@op("Tile")
def _tile(i, a):
    return [i[0].repeat(*_ints(i[1]))]


@op("Range")
def _range(i, a):
    return [torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype)]


@op("Pad")
def _pad(i, a):
    x = i[0]
    pads = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("pads")
    value = float(i[2]) if len(i) > 2 and i[2] is not None and i[2].numel() else a.get("value", 0.0)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n = x.dim()
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(n))
    full = [0] * (2 * n)
    for k, ax in enumerate(axes):
        full[ax % n], full[n + ax % n] = pads[k], pads[len(axes) + k]
    pad_arg = torch_pad(full)
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    if torch_mode == "constant":
        return [F.pad(x, pad_arg, value=value)]
    while pad_arg and pad_arg[-1] == 0 and pad_arg[-2] == 0:
        pad_arg = pad_arg[:-2]
    return [F.pad(x, pad_arg, mode=torch_mode)]


@op("Resize", "Upsample")
def _resize(i, a):
    x = i[0]
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    sizes = _ints(i[3]) if len(i) > 3 and i[3] is not None and i[3].numel() else None
    scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else (i[1] if len(i) == 2 else None)
    if mode != "nearest":
        raise NotImplementedError(f"Resize mode {mode}")
    if sizes is not None:
        return [F.interpolate(x, size=sizes[2:], mode="nearest")]
    return [F.interpolate(x, scale_factor=[float(s) for s in scales[2:]], mode="nearest")]
