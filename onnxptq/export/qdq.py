"""QDQ ONNX export (DESIGN.md section 4, "QDQ export conventions").

- weights: quantized initializers (int8 container for b >= 5, int4 for b <= 4) + DequantizeLinear,
  per channel (axis 0 for Conv and Gemm transB=1, axis 1 for MatMul / Gemm transB=0);
- bias: int32 initializer + DequantizeLinear with scale s_x * s_w (axis 0);
- activations: one QuantizeLinear -> DequantizeLinear pair per quant point, shared by all consumers.
  Containers are uint8 (int16 for 16-bit), and 8-bit weights read by uint8 activations are stored as
  uint8 with zero point 128 (see ``_act_container`` for the measurements behind this). Grids narrower
  than their container get a Clip to the grid's float range in front of the QuantizeLinear, so Q
  saturates exactly as the simulation does.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant import QParams
from ..recon.calibrate import integer_bias, integer_weights
from ..sim.model import SimModel

INT4_MAX_BITS = 4
CONTAINERS = {  # ONNX elem type -> (numpy storage dtype, min, max)
    TensorProto.INT4: (np.int8, -8, 7),
    TensorProto.INT8: (np.int8, -128, 127),
    TensorProto.UINT8: (np.uint8, 0, 255),
    TensorProto.INT16: (np.int16, -32768, 32767),
    TensorProto.UINT16: (np.uint16, 0, 65535),
}


def _container(bits: int, for_weight: bool) -> tuple[int, np.dtype, int, int]:
    """(ONNX elem type, numpy dtype, container min, container max) of a signed b-bit grid."""
    if for_weight and bits <= INT4_MAX_BITS:
        elem = TensorProto.INT4
    else:
        elem = TensorProto.INT8 if bits <= 8 else TensorProto.INT16
    return (elem, *CONTAINERS[elem])


def _act_container(p: QParams) -> tuple[int, np.ndarray, int, int]:
    """Container type, container zero point and the grid's range inside the container.

    Every activation of 8 bits or fewer is stored as uint8: a signed grid shifts by +128
    (q_u8 = q + 128, zero point z + 128: same values). Measured on onnxruntime 1.32 (AVX2, no VNNI):
    QLinearConv with an int8 input and a uint8 output is off by up to 47 LSB, and uint8 x int8 with
    8-bit weights saturates, while uint8 x uint8 and uint8 x (<= 7-bit int8) are exact; one uint8
    container for all activations plus uint8 8-bit weights keeps every fused kernel exact.
    """
    zp = p.zero_point.astype(np.int64)
    if p.grid.bits > 8:  # 16-bit: the grid's own container (an unsigned grid [0, 65535] does not fit int16)
        return (TensorProto.INT16 if p.grid.signed else TensorProto.UINT16), zp, p.grid.qmin, p.grid.qmax
    shift = 128 if p.grid.signed else 0
    return TensorProto.UINT8, zp + shift, p.grid.qmin + shift, p.grid.qmax + shift


class QDQWriter:
    def __init__(self, sim: SimModel, opset: int = 21) -> None:
        self.sim, self.qg, self.opset = sim, sim.qg, opset
        self.model = onnx.ModelProto.FromString(self.qg.model.SerializeToString())
        convert_opset(self.model, opset)
        self.g = self.model.graph
        self.new_inits: list[onnx.TensorProto] = []
        self.new_nodes: list[tuple[int, onnx.NodeProto]] = []  # (insert after node index, node)

    # ------------------------------------------------------------------ helpers
    def _const(self, name: str, arr: np.ndarray, elem: int | None = None) -> str:
        if elem in (TensorProto.INT4, TensorProto.UINT4):
            t = helper.make_tensor(name, elem, arr.shape, arr.reshape(-1).astype(np.int64).tolist())
        else:
            t = numpy_helper.from_array(arr, name)
        self.new_inits.append(t)
        return name

    def _scalar_or_vec(self, arr: np.ndarray, axis: int | None) -> np.ndarray:
        return arr.reshape(()) if axis is None else arr.reshape(-1)

    # ------------------------------------------------------------------ weights and biases
    def write_weights(self) -> None:
        for layer in self.qg.layers:
            fq = self.sim.weight_quantizer(layer.name)
            p = fq.params
            elem, dtype, lo, hi = _container(p.grid.bits, for_weight=True)
            q = integer_weights(self.sim, layer.name)
            zp = p.zero_point.reshape(-1).astype(np.int64)
            in_params = self.sim.act_quantizer(self.qg.source[layer.input]).params
            if p.grid.bits == 8 and _act_container(in_params)[0] == TensorProto.UINT8:
                # uint8 x int8 saturates on AVX2 without VNNI; uint8 x uint8 is exact: shift the
                # weight grid by +128 (same values: (q + 128) - (zp + 128) = q - zp).
                elem, (dtype, lo, hi) = TensorProto.UINT8, CONTAINERS[TensorProto.UINT8]
                q, zp = q + 128, zp + 128
            assert q.min() >= lo and q.max() <= hi
            q_name = self._const(f"{layer.name}.weight_quantized", q.astype(dtype), elem)
            s_name = self._const(f"{layer.name}.weight_scale", p.scale.reshape(-1).astype(np.float32))
            z_name = self._const(f"{layer.name}.weight_zero_point", zp.astype(dtype), elem)
            dq_out = f"{layer.name}.weight_dequantized"
            dq = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out],
                                  name=f"{layer.name}_weight_DequantizeLinear", axis=layer.weight_axis)
            self.new_nodes.append((-1, dq))
            node = self._node(layer.name)
            node.input[1] = dq_out
            if layer.bias:
                s_b = self.sim.bias_scale(layer).reshape(-1)
                b_q = integer_bias(self.sim, layer.name).astype(np.int32)
                bq_name = self._const(f"{layer.name}.bias_quantized", b_q)
                bs_name = self._const(f"{layer.name}.bias_scale", s_b.astype(np.float32))
                bz_name = self._const(f"{layer.name}.bias_zero_point", np.zeros_like(b_q))
                b_out = f"{layer.name}.bias_dequantized"
                self.new_nodes.append((-1, helper.make_node("DequantizeLinear", [bq_name, bs_name, bz_name], [b_out],
                                                            name=f"{layer.name}_bias_DequantizeLinear", axis=0)))
                node.input[2] = b_out

    def _node(self, name: str) -> onnx.NodeProto:
        for n in self.g.node:
            if n.name == name:
                return n
        raise KeyError(name)

    # ------------------------------------------------------------------ activations
    def write_activations(self) -> None:
        producer_index = {o: k for k, n in enumerate(self.g.node) for o in n.output}
        graph_inputs = set(self.qg.inputs)
        for t, fq in self.sim.act_quantizers():
            p = fq.params
            elem, zp_c, c_lo, c_hi = _act_container(p)
            dtype, cont_lo, cont_hi = CONTAINERS[elem]
            if t in graph_inputs:
                src, dq_out = t, f"{t}_dequantized"
                for n in self.g.node:
                    for k, i in enumerate(n.input):
                        if i == t:
                            n.input[k] = dq_out
                at = -1
            else:
                # The producer writes t_float; Q/DQ restore the original name t for all consumers.
                src, dq_out = f"{t}_float", t
                at = producer_index[t]
                prod = self.g.node[at]
                prod.output[list(prod.output).index(t)] = src
            if fq.ecaq:
                self._write_ecaq(t, fq, src, dq_out, at)
                continue
            scale = self._const(f"{t}_scale", p.scale.reshape(()).astype(np.float32))
            zp = self._const(f"{t}_zero_point", zp_c.reshape(()).astype(dtype))
            q_in = src
            if c_lo > cont_lo or c_hi < cont_hi:
                lo = np.float32((c_lo - zp_c) * p.scale)
                hi = np.float32((c_hi - zp_c) * p.scale)
                q_in = f"{t}_clipped"
                self.new_nodes.append((at, helper.make_node(
                    "Clip", [src, self._const(f"{t}_clip_min", lo.reshape(())), self._const(f"{t}_clip_max", hi.reshape(()))],
                    [q_in], name=f"{t}_grid_Clip")))
            q_out = f"{t}_quantized"
            self.new_nodes.append((at, helper.make_node("QuantizeLinear", [q_in, scale, zp], [q_out], name=f"{t}_QuantizeLinear")))
            self.new_nodes.append((at, helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out], name=f"{t}_DequantizeLinear")))

    def _write_ecaq(self, t: str, fq, src: str, dq_out: str, at: int) -> None:
        """ECAQ point (recon/ecaq.py): [Min to the grid's top] -> QuantizeLinear with the per-channel scales
        beta (axis 1) -> DequantizeLinear with scale 1: the consumers read the integer codes, their weights
        hold beta. Unsigned grid, zero point 0 (``ecaq.candidates``)."""
        p = fq.params
        elem, zp_c, c_lo, c_hi = _act_container(p)
        dtype, _, cont_hi = CONTAINERS[elem]
        beta = p.scale.reshape(-1).astype(np.float32)
        q_in = src
        if c_hi < cont_hi:
            hi = (np.float32(c_hi) * beta).reshape(1, -1, 1, 1).astype(np.float32)
            q_in = f"{t}_clipped"
            self.new_nodes.append((at, helper.make_node("Min", [src, self._const(f"{t}_grid_max", hi)], [q_in],
                                                        name=f"{t}_grid_Min")))
        q_out = f"{t}_quantized"
        self.new_nodes.append((at, helper.make_node(
            "QuantizeLinear", [q_in, self._const(f"{t}_scale", beta), self._const(f"{t}_zero_point", zp_c.reshape(-1).astype(dtype))],
            [q_out], name=f"{t}_QuantizeLinear", axis=1)))
        self.new_nodes.append((at, helper.make_node(
            "DequantizeLinear", [q_out, self._const(f"{t}_codes_scale", np.float32(1.0).reshape(())),
                                 self._const(f"{t}_codes_zero_point", np.zeros((), dtype))],
            [dq_out], name=f"{t}_DequantizeLinear")))

    # ------------------------------------------------------------------ assemble
    def build(self) -> onnx.ModelProto:
        self.write_weights()
        self.write_activations()
        old = list(self.g.node)
        before = [n for at, n in self.new_nodes if at == -1]
        after: dict[int, list[onnx.NodeProto]] = {}
        for at, n in self.new_nodes:
            if at >= 0:
                after.setdefault(at, []).append(n)
        nodes = list(before)
        for k, n in enumerate(old):
            nodes.append(n)
            nodes.extend(after.get(k, []))
        del self.g.node[:]
        self.g.node.extend(nodes)
        used = {i for n in self.g.node for i in n.input}
        keep = [i for i in self.g.initializer if i.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep + self.new_inits)
        del self.g.value_info[:]
        self.model.producer_name = "onnxptq"
        return self.model


def convert_opset(model: onnx.ModelProto, opset: int) -> None:
    """Convert the float model to ``opset`` before Q/DQ nodes are added (IR 10 for int4 support)."""
    from onnx import version_converter

    from ..errors import ModelError

    current = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    if current > opset:
        raise ModelError(f"the model uses opset {current}; export with --opset {current} or newer")
    if current < opset:
        try:
            model.CopyFrom(version_converter.convert_version(model, opset))
        except Exception as e:
            raise ModelError(f"cannot convert the model from opset {current} to {opset}: {str(e)[:200]}") from None
    model.ir_version = max(model.ir_version, 10)


def export_qdq(sim: SimModel, opset: int = 21) -> onnx.ModelProto:
    return QDQWriter(sim, opset).build()
