"""QDQ ONNX export (DESIGN.md section 4, "QDQ export conventions"; section 8, deployment targets).

- weights: quantized initializers + DequantizeLinear, int8 (int4 for b <= 4), zero point 0 when symmetric,
  per channel (axis 0 for Conv and Gemm transB=1, axis 1 for MatMul / Gemm transB=0), for every target;
- bias: int32 initializer + DequantizeLinear with scale s_x * s_w (axis 0);
- activations: one QuantizeLinear -> DequantizeLinear pair per quant point, shared by all consumers, in the
  target's container (``targets.Target``: uint8, signed grids shifted by +128; or int8 for TensorRT);
- clipping (a ReLU/ReLU6/Clip fused into a layer or an Add, or a grid narrower than its container): with
  ``Target.clip_in_integer_domain`` the float activation node is dropped and the clip is written on the
  integer codes between QuantizeLinear and DequantizeLinear (exact: RNE is monotone, so
  Q(clip(x, lo, hi)) == clip(Q(x), Q(lo), Q(hi))), which the runtimes' QDQ fusion accepts; otherwise a
  float Clip to the grid's range stays in front of the QuantizeLinear;
- carried tensors (MaxPool, Flatten, Reshape, ... of a quant point) get a Q/DQ pair repeating their
  quantization (no value changes) in front of every layer that reads them, and with
  ``Target.qdq_on_add_inputs`` in front of Add inputs too, so each quantized op reads a DequantizeLinear.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..quant import QParams, quantize
from ..quant.observer import SATURATING
from ..calib.calibrate import integer_bias, integer_weights
from ..sim.model import SimModel
from ..targets import Target, get_target

INT4_MAX_BITS = 4
CONTAINERS = {  # ONNX elem type -> (numpy storage dtype, min, max)
    TensorProto.INT4: (np.int8, -8, 7),
    TensorProto.INT8: (np.int8, -128, 127),
    TensorProto.UINT8: (np.uint8, 0, 255),
    TensorProto.INT16: (np.int16, -32768, 32767),
    TensorProto.UINT16: (np.uint16, 0, 65535),
}


def saturating_scale(p: QParams | None) -> bool:
    """A quant point whose scale is at least ``SATURATING`` (1e30): the float minimum of an attention mask
    (values 0 and -3.4e38, ``quant/observer.py``). Its Q/DQ pair is left out of the QDQ model: onnxruntime's
    QLinearAdd turns the scale ratio of ~2^120 into garbage, while the float values act as -inf in the sum's
    quantization exactly as the quantized ones do (both clip to the grid's end; 0 stays 0)."""
    return p is not None and float(np.max(p.scale)) >= SATURATING


def _container(bits: int, for_weight: bool) -> tuple[int, np.dtype, int, int]:
    """(ONNX elem type, numpy dtype, container min, container max) of a signed b-bit grid."""
    if for_weight and bits <= INT4_MAX_BITS:
        elem = TensorProto.INT4
    else:
        elem = TensorProto.INT8 if bits <= 8 else TensorProto.INT16
    return (elem, *CONTAINERS[elem])


def _act_container(p: QParams, target: Target | None = None) -> tuple[int, np.ndarray, int, int]:
    """Container type, container zero point and the grid's range inside the container.

    uint8 containers (onnxruntime, OpenVINO, QNN): a signed grid shifts by +128 (q_u8 = q + 128, zero
    point z + 128: the same values). int8 containers (TensorRT): the signed grid as it is. 16-bit grids
    keep their own container (an unsigned grid [0, 65535] does not fit int16).
    """
    target = target or get_target("onnxruntime")
    zp = p.zero_point.astype(np.int64)
    if p.grid.bits > 8:
        return (TensorProto.INT16 if p.grid.signed else TensorProto.UINT16), zp, p.grid.qmin, p.grid.qmax
    if target.activation_container == "int8":
        if not p.grid.signed:
            raise ValueError(f"an unsigned {p.grid.bits}-bit grid does not fit target {target.name}'s int8 container")
        return TensorProto.INT8, zp, p.grid.qmin, p.grid.qmax
    shift = 128 if p.grid.signed else 0
    return TensorProto.UINT8, zp + shift, p.grid.qmin + shift, p.grid.qmax + shift


class QDQWriter:
    def __init__(self, sim: SimModel, opset: int = 21, target: Target | None = None) -> None:
        self.sim, self.qg, self.opset = sim, sim.qg, opset
        self.target = target or get_target("onnxruntime")
        self.model = onnx.ModelProto.FromString(self.qg.model.SerializeToString())
        convert_opset(self.model, opset)
        self.g = self.model.graph
        self.new_inits: list[onnx.TensorProto] = []
        self.new_nodes: list[tuple[int, onnx.NodeProto]] = []  # (insert after node index, node)
        self.dropped: set[str] = set()  # fused activation nodes whose clip moved onto the integer codes

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
            if p is None:  # a layer left in float (the accuracy target): float weight and bias initializers
                continue
            elem, dtype, lo, hi = _container(p.grid.bits, for_weight=True)
            q = integer_weights(self.sim, layer.name)
            zp = p.zero_point.reshape(-1).astype(np.int64)
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
        # unit output -> the bounds of its fused Relu / Clip (a layer's or an Add's)
        fused = {f.output: f.act_bounds for f in self.qg.fused_activations.values()}
        for t, fq in self.sim.act_quantizers():
            p = fq.params
            if saturating_scale(p):  # an attention mask of the float minimum: kept float (``saturating_scale``)
                continue
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
            bounds = None
            if t in fused and self.target.clip_in_integer_domain:
                act = self.g.node[at]  # the fused Relu/Clip: dropped, its bounds go onto the codes
                src, bounds = act.input[0], fused[t]
                self.dropped.add(act.name)
            self._write_pair(t, p, src, dq_out, at, bounds)

    def _write_pair(self, t: str, p: QParams, src: str, dq_out: str, at: int,
                    bounds: tuple[float, float] | None = None) -> None:
        """QuantizeLinear -> [integer Clip] -> DequantizeLinear of quant point ``t`` (``bounds``: the float clip
        of a dropped fused activation, applied to the codes as clip(Q(x), Q(lo), Q(hi)))."""
        elem, zp_c, c_lo, c_hi = _act_container(p, self.target)
        dtype, cont_lo, cont_hi = CONTAINERS[elem]
        s32, z = float(np.float32(p.scale.reshape(()))), int(zp_c.reshape(()))
        lo, hi = c_lo, c_hi
        if bounds is not None:  # the codes of the clip bounds: QuantizeLinear of lo and hi, in the container
            lo, hi = (int(quantize(np.float32(v), p.scale.reshape(()), p.zero_point.reshape(()), p.grid)) + c_lo - p.grid.qmin
                      for v in bounds)
        scale = self._const(f"{t}_scale", p.scale.reshape(()).astype(np.float32))
        zp = self._const(f"{t}_zero_point", zp_c.reshape(()).astype(dtype))
        integer_clip = lo > cont_lo or hi < cont_hi
        codes = f"{t}_quantized"  # the final codes keep this name (verify reads it)
        q_in, q_out = src, (f"{t}_quantized_unclipped" if integer_clip and self.target.clip_in_integer_domain else codes)
        if integer_clip and not self.target.clip_in_integer_domain:
            q_in = f"{t}_clipped"
            f_lo, f_hi = (np.float32((v - z) * s32).reshape(()) for v in (lo, hi))
            self.new_nodes.append((at, helper.make_node(
                "Clip", [src, self._const(f"{t}_clip_min", f_lo), self._const(f"{t}_clip_max", f_hi)],
                [q_in], name=f"{t}_grid_Clip")))
        self.new_nodes.append((at, helper.make_node("QuantizeLinear", [q_in, scale, zp], [q_out],
                                                    name=f"{t}_QuantizeLinear")))
        if integer_clip and self.target.clip_in_integer_domain:
            self.new_nodes.append((at, helper.make_node(
                "Clip", [q_out, self._const(f"{t}_code_min", np.array(lo, dtype)),
                         self._const(f"{t}_code_max", np.array(hi, dtype))], [codes], name=f"{t}_code_Clip")))
            q_out = codes
        self.new_nodes.append((at, helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out],
                                                    name=f"{t}_DequantizeLinear")))

    def write_carried_pairs(self) -> None:
        """A Q/DQ pair in front of each layer input (and, with ``Target.qdq_on_add_inputs``, each Add input)
        that a carry op (MaxPool, Flatten, Reshape, ...) produced from an earlier quant point. The pair
        repeats that quant point's quantization, so no value changes (the carried tensor is on its grid),
        but every quantized layer then reads a DequantizeLinear directly: onnxruntime left a Gemm after a
        Flatten in float without it, and TensorRT's placement rules ask for it on both Add inputs."""
        producer_index = {o: k for k, n in enumerate(self.g.node) for o in n.output}
        layer_nodes = {layer.name for layer in self.qg.layers}
        pairs: dict[str, str] = {}
        for n in list(self.g.node):
            if n.name in layer_nodes:
                slots = [0]
            elif n.op_type == "Add" and self.target.qdq_on_add_inputs:
                slots = list(range(len(n.input)))
            else:
                continue
            for k in slots:
                i = n.input[k]
                src = self.qg.source.get(i)
                if src is None or src == i or i not in producer_index or saturating_scale(self.sim.act_quantizer(src).params):
                    continue
                if i not in pairs:
                    pairs[i] = f"{i}_requantized"
                    self._write_pair(pairs[i], self.sim.act_quantizer(src).params, i, pairs[i], producer_index[i])
                n.input[k] = pairs[i]

    def _write_ecaq(self, t: str, fq, src: str, dq_out: str, at: int) -> None:
        """ECAQ point (recon/ecaq.py): [Min to the grid's top] -> QuantizeLinear with the per-channel scales
        beta (axis 1) -> DequantizeLinear with scale 1: the consumers read the integer codes, their weights
        hold beta. Unsigned grid, zero point 0 (``ecaq.candidates``)."""
        p = fq.params
        elem, zp_c, c_lo, c_hi = _act_container(p, self.target)
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
        self.write_carried_pairs()
        old = list(self.g.node)
        before = [n for at, n in self.new_nodes if at == -1]
        after: dict[int, list[onnx.NodeProto]] = {}
        for at, n in self.new_nodes:
            if at >= 0:
                after.setdefault(at, []).append(n)
        nodes = list(before)
        for k, n in enumerate(old):
            if n.name not in self.dropped:
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


def export_qdq(sim: SimModel, opset: int = 21, target: Target | str | None = None) -> onnx.ModelProto:
    if isinstance(target, str):
        target = get_target(target)
    return QDQWriter(sim, opset, target).build()
