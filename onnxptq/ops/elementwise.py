"""Elementwise ops and activations in torch (activations with one float input lower to lookup tables)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ONNX_TO_TORCH_DTYPE, OPS, op

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    ("add", "merge", "add", ("Add", "Sub", "Sum")),
    ("mul", "merge", "mul", ("Mul",)),
    ("pass-through", "carry", "carry", ("Identity",)),
    ("pass-through without integer form", "carry", None, ("Dropout",)),
    ("activations as lookup tables", "island", "lut",
     ("Relu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Softplus", "Mish", "Gelu",
      "Erf", "Neg", "Abs", "Exp", "Selu", "Celu", "Softsign", "ThresholdedRelu", "Sin", "Cos", "Tan", "Atan")),
    # one activation with scalar constants: a lookup table (export/intplan.py); two activations: no integer form
    ("elementwise as lookup tables", "island", "lut", ("Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Pow", "Div")),
    ("softmax", "island", "softmax", ("Softmax",)),  # exp table, integer sum and division (export/intplan.py)
    ("batchnorm", "island", "batchnorm", ("BatchNormalization",)),  # a per-channel affine step (intplan)
    ("float ops", "island", None, ("PRelu", "LogSoftmax", "Cast")),
    ("comparisons and selection", "island", None, ("Equal", "Less", "Greater", "Not", "Where", "Max", "Min")),
    ("logic, masks and scans", "island", None,
     ("And", "Or", "Xor", "IsNaN", "IsInf", "LessOrEqual", "GreaterOrEqual", "Sign", "Round", "Mod", "CumSum",
      "Trilu")),
]


OPS["Relu"] = lambda i, a: [F.relu(i[0])]
OPS["Sigmoid"] = lambda i, a: [torch.sigmoid(i[0])]
OPS["Tanh"] = lambda i, a: [torch.tanh(i[0])]
OPS["HardSwish"] = lambda i, a: [F.hardswish(i[0])]
OPS["Exp"] = lambda i, a: [torch.exp(i[0])]
OPS["Log"] = lambda i, a: [torch.log(i[0])]
OPS["Sqrt"] = lambda i, a: [torch.sqrt(i[0])]
OPS["Erf"] = lambda i, a: [torch.erf(i[0])]
OPS["Sin"] = lambda i, a: [torch.sin(i[0])]
OPS["Cos"] = lambda i, a: [torch.cos(i[0])]
OPS["Tan"] = lambda i, a: [torch.tan(i[0])]
OPS["Atan"] = lambda i, a: [torch.atan(i[0])]
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
    # 0 / 0 is 0, not NaN: a divisor quantized to 0 (x / (norm + eps) with eps below the grid) then gives what the
    # integer Div gives (quant.requant.div_round: x / 0 saturates, 0 / 0 = 0) instead of NaN through the model
    return [torch.where((y == 0) & (x == 0), torch.zeros((), dtype=x.dtype, device=x.device), x / y)]


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
    if lo is not None and hi is not None and lo < hi and i[0].is_floating_point():
        # the same values as clamp; its gradient in one kernel (clamp's backward builds masks: a fifth of
        # EfficientNet-Lite0's reconstruction step went into ReLU6's)
        return [F.hardtanh(i[0], lo, hi)]
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


OPS["And"] = lambda i, a: [i[0] & i[1]]
OPS["Or"] = lambda i, a: [i[0] | i[1]]
OPS["Xor"] = lambda i, a: [i[0] ^ i[1]]
OPS["IsNaN"] = lambda i, a: [torch.isnan(i[0])]
OPS["LessOrEqual"] = lambda i, a: [i[0] <= i[1]]
OPS["GreaterOrEqual"] = lambda i, a: [i[0] >= i[1]]
OPS["Sign"] = lambda i, a: [torch.sign(i[0])]
OPS["Round"] = lambda i, a: [torch.round(i[0])]  # half to even, as ONNX


@op("IsInf")
def _isinf(i, a):
    x = i[0]
    pos = torch.isposinf(x) if a.get("detect_positive", 1) else torch.zeros_like(x, dtype=torch.bool)
    return [(pos | torch.isneginf(x)) if a.get("detect_negative", 1) else pos]


@op("Mod")
def _mod(i, a):
    """fmod=1: the dividend's sign (C fmod); fmod=0 (integers): the divisor's sign (Python %)."""
    return [torch.fmod(i[0], i[1]) if a.get("fmod", 0) else torch.remainder(i[0], i[1])]


@op("CumSum")
def _cumsum(i, a):
    x = i[0]
    axis = int(i[1].reshape(-1)[0]) % x.dim()
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, dim=axis, dtype=x.dtype)
    if a.get("exclusive", 0):
        y = torch.cat([torch.zeros_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)], dim=axis)
    return [y.flip(axis) if a.get("reverse", 0) else y]


@op("Trilu")
def _trilu(i, a):
    k = int(i[1].reshape(-1)[0]) if len(i) > 1 and i[1] is not None else 0
    return [torch.triu(i[0], k) if a.get("upper", 1) else torch.tril(i[0], k)]
