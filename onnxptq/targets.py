"""Deployment targets as data (DESIGN.md section 8; in the spirit of MQBench's backends).

A ``Target`` says what a runtime's integer kernels accept; the calibration and the QDQ writer read its
fields and never its name. Every target stores weights as int8 (int4 for <= 4 bits), zero point 0, per
output channel: onnxruntime's QLinearConv/QGemm and OpenVINO's low-precision convolutions take exactly
that (measured on EfficientNet-Lite0: uint8 weights with zero point 128 kept all 49 convolutions in f32 in
OpenVINO 2026.4 and on the slower u8u8 path in onnxruntime 1.32).

Fields:
- ``weight_max_bits``: 7 is onnxruntime's ``reduce_range`` (weights on [-64, 63]): with it a uint8 x
  int8 pair product sum never saturates the int16 accumulator of AVX2 CPUs without VNNI
  (255 * 64 * 2 = 32640 < 32767), so fused kernels are exact there too, for one bit of weight precision.
- ``unsigned_activations``: non-negative tensors may use the unsigned grid [0, 2^b - 1] (uint8
  container); False for TensorRT, whose Q/DQ are int8 with zero point 0 only.
- ``symmetric_activations``: every activation grid has zero point 0 (TensorRT).
- ``activation_container``: ``uint8`` (signed grids shifted by +128) or ``int8``.
- ``qdq_on_add_inputs``: a Q/DQ pair directly in front of each input of a residual Add, also where the
  input is a carried tensor (MaxPool, Reshape, ...) of an earlier quant point: TensorRT fuses the Add into
  the convolution only then (its "Q/DQ placement" guide). The pair repeats the carried quantization, so
  it changes no value.
- ``clip_in_integer_domain``: a clipping activation (ReLU6, a fused Clip, a grid narrower than its
  container) is written as QuantizeLinear -> Clip on the integer container -> DequantizeLinear instead of
  a float Clip in front of the QuantizeLinear. RNE rounding is monotone, so Q(clip(x, lo, hi)) ==
  clip(Q(x), Q(lo), Q(hi)) exactly; onnxruntime cannot fuse a float Clip whose bounds are not the
  quantization range (6.0 is not the top of a power-of-two grid), so Po2 models lost 33 of 49
  EfficientNet-Lite0 convolutions to float kernels.
- ``exact_u8s8``: the target's CPUs multiply uint8 x int8 without int16 pair saturation (x86 with
  AVX512-VNNI / AVX-VNNI, ARM); the integer format (``--format int``) then uses u8 x s8 kernels everywhere
  (``--int-kernels vnni``: 0.66x float latency on EfficientNet-Lite0 against 1.47x portable), and
  otherwise only where no pair can saturate (``portable``, exact on every x86).
- ``runtime``: the runtime ``onnxptq bench`` and the float-layer check use for this target (None: none
  installable here).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ConfigError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    weight_max_bits: int = 8
    unsigned_activations: bool = True
    symmetric_activations: bool = False
    activation_container: str = "uint8"  # uint8 | int8
    qdq_on_add_inputs: bool = False
    clip_in_integer_domain: bool = True
    exact_u8s8: bool = False
    opset: int = 21
    runtime: str | None = "onnxruntime"

    def weight_bits(self, bits: int) -> int:
        """The weight grid a b-bit layer gets on this target (reduce range caps 8 bits at 7)."""
        return min(bits, self.weight_max_bits)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnxruntime", "onnxruntime CPU (QLinearConv/QGemm): uint8 activations, int8 weights; exact "
           "with VNNI (AVX512-VNNI / AVX-VNNI) and on ARM", exact_u8s8=True),
    Target("onnxruntime-avx2", "onnxruntime on x86 without VNNI: 7-bit weights (reduce_range) so u8 x s8 "
           "kernels never saturate", weight_max_bits=7),
    # OpenVINO folds a float Clamp in front of its FakeQuantize and runs every conv in u8 either way; the float
    # form was 5-7 % faster (EfficientNet-Lite0 Po2 W8A8: b1 3.55-3.90 vs 3.85-3.94 ms, b8 25.4 vs 27.3 ms;
    # `python tools/bench.py deploy --target onnxruntime,openvino`), while onnxruntime runs it 5x slower.
    Target("openvino", "OpenVINO CPU: uint8 activations, int8 weights (low-precision transformations)",
           clip_in_integer_domain=False, runtime="openvino"),
    Target("tensorrt", "TensorRT: int8 symmetric Q/DQ only (zero point 0), Q/DQ on both residual Add inputs",
           unsigned_activations=False, symmetric_activations=True, activation_container="int8",
           qdq_on_add_inputs=True, runtime=None),
    Target("qnn", "Qualcomm QNN (HTP): uint8 asymmetric activations, int8 symmetric per-channel weights",
           exact_u8s8=True, runtime=None),
    Target("generic", "any QDQ runtime: uint8 activations, int8 per-channel weights, standard opset-21 ops"),
)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None


def cpu_flags() -> set[str]:
    """The x86 feature flags of this machine (empty where /proc/cpuinfo is missing or not x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_vnni(flags: set[str] | None = None) -> bool:
    """AVX512-VNNI or AVX-VNNI: onnxruntime's u8 x s8 kernels accumulate in int32 and are exact."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


def exact_onnxruntime_target(flags: set[str] | None = None) -> str:
    """The onnxruntime profile whose fused kernels are bit-exact on this CPU (docs/design-notes.md section 2):
    ``onnxruntime`` with VNNI or on non-x86 CPUs, ``onnxruntime-avx2`` (7-bit weights) on x86 without VNNI."""
    flags = cpu_flags() if flags is None else flags
    x86 = bool({"sse2", "avx2"} & flags)
    return "onnxruntime" if cpu_has_vnni(flags) or not x86 else "onnxruntime-avx2"


PAIR_SAFE = 2**15 - 1  # AVX2 u8 x s8 (vpmaddubsw) sums pairs of products in int16


def u8s8_pairs_safe(x_max: int, w_max: int) -> bool:
    """No pair of uint8 x int8 products (|x| <= x_max, |w| <= w_max) can pass int16 in onnxruntime's AVX2 kernels
    without VNNI: x_max * 2 w_max <= 2^15 - 1 (DESIGN.md section 4)."""
    return x_max * 2 * w_max <= PAIR_SAFE


def saturating_u8s8_node(model: onnx.ModelProto) -> str | None:
    """The first layer that onnxruntime runs as uint8 x int8 with weights wide enough for a pair of products to
    pass int16 (255 * 2 |w| > 2^15 - 1, i.e. beyond 7 bits): QDQ (DequantizeLinear of uint8 activations and of an
    int8 weight initializer into Conv/ConvTranspose/Gemm/MatMul) or the integer format (QLinearConv/QLinearMatMul);
    None if there is none."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def dq_of(t: str, elem: int):
        n = producer.get(t)
        if n is None or n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            return None
        return n if inits[n.input[2]].data_type == elem else None

    def wide(w) -> bool:
        return not u8s8_pairs_safe(255, int(np.abs(numpy_helper.to_array(w).astype(np.int32)).max(initial=0)))

    U8, S8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1:
            wdq = dq_of(n.input[1], S8)
            if wdq is not None and wdq.input[0] in inits and dq_of(n.input[0], U8) is not None \
                    and wide(inits[wdq.input[0]]):
                return n.name
        elif n.op_type in ("QLinearConv", "QLinearMatMul") and len(n.input) > 3:
            x_zp, w = inits.get(n.input[2]), inits.get(n.input[3])
            if x_zp is not None and w is not None and x_zp.data_type == U8 and w.data_type == S8 and wide(w):
                return n.name
    return None


def cpu_saturation_note(model: onnx.ModelProto, flags: set[str] | None = None) -> str:
    """A note when onnxruntime on this CPU (x86 without VNNI) saturates one of ``model``'s uint8 x int8 layers
    (onnxruntime's documented AVX2 limit): outputs measured here are then off although the file is exact on VNNI
    and ARM CPUs. Empty otherwise."""
    if exact_onnxruntime_target(flags) == "onnxruntime":
        return ""
    node = saturating_u8s8_node(model)
    if node is None:
        return ""
    return (f"layer {node!r} multiplies uint8 by int8 weights beyond 7 bits, which onnxruntime saturates on x86 CPUs "
            "without VNNI such as this one, so outputs measured here may be off; the file is exact on VNNI and "
            "ARM CPUs. To deploy on x86 without VNNI, quantize with --target onnxruntime-avx2 (7-bit weights)")
