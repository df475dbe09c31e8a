"""SimModel: runs a QGraph in torch with fake-quantizers exactly where the deployed model has integers.

Float mode (all quantizers off) reproduces the ONNX model; quantized mode applies, per DESIGN.md
section 3, weight quantizers (per channel), the int32 bias with scale s_x * s_w, and activation
quantizers at every quant point. Regions of the graph can be run alone (for reconstruction).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedOpError
from ..eval import kept_rows, padded_rows
from ..graph.qgraph import Layer, QGraph, attrs_of
from ..quant import QParams, fake_quantize
from ..quant.grid import BIAS_GRID
from .fake_quant import FakeQuant, round_ste
from .state import QuantState
from ..ops.registry import REGISTRY
from ..ops.simulate import conv, conv_transpose, gemm


def _key(name: str) -> str:
    """ModuleDict keys may not contain dots; keep them readable and unique."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name) + f"_{zlib.crc32(name.encode()):08x}"


@dataclass
class SimNode:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    layer: Layer | None
    fn: Callable[[list, dict], list] | None = None  # onnx2torch's simulation of an op outside REGISTRY


class SimModel(nn.Module):
    def __init__(self, qg: QGraph) -> None:
        super().__init__()
        self.qg = qg
        g = qg.model.graph
        layer_by_node = {layer.name: layer for layer in qg.layers}
        weight_names = {layer.weight for layer in qg.layers} | {layer.bias for layer in qg.layers if layer.bias}
        self.consts: dict[str, torch.Tensor] = {}
        self.weights = nn.ParameterDict()
        self._wkey: dict[str, str] = {}
        for init in g.initializer:
            arr = np.array(qg.initializer(init.name))
            t = torch.from_numpy(arr.copy())
            if init.name in weight_names:
                self._wkey[init.name] = _key(init.name)
                self.weights[self._wkey[init.name]] = nn.Parameter(t.float(), requires_grad=False)
            else:
                self.consts[init.name] = t
        self.nodes: list[SimNode] = []
        for n in g.node:
            a = attrs_of(n)
            if n.op_type == "Constant":
                self.consts[n.output[0]] = torch.as_tensor(np.array(a["value"])) if "value" in a else \
                    torch.as_tensor(np.array(next(iter(a.values()))))
                continue
            if n.op_type == "Split":
                a["_num_outputs"] = len(n.output)
            self.nodes.append(SimNode(n.name, n.op_type, list(n.input), list(n.output), a, layer_by_node.get(n.name),
                                      qg.fallback.get(n.name)))
        self._state = QuantState()
        self.act_fq = nn.ModuleDict({_key(t): FakeQuant(t, 8) for t in qg.quant_points})
        self.w_fq = nn.ModuleDict({_key(layer.name): FakeQuant(layer.weight, 8, layer.weight_axis) for layer in qg.layers})
        self._act_key = {t: _key(t) for t in qg.quant_points}
        for t, k in self._act_key.items():
            self.act_fq[k].bind(self._state.act_params, t, self._state.ecaq_scales)
        for layer in qg.layers:
            self.w_fq[_key(layer.name)].bind(self._state.weight_params, layer.name)
        self.quantize_bias = True
        self._input_taps: list[Callable[[Layer, torch.Tensor], None]] = []  # sim/capture.py
        self._last_use = self._compute_last_use()
        batch = qg.import_info.get("batch") or {}
        # a graph whose fixed batch could not be made symbolic (graph/batch.py) runs in chunks of that batch
        self.chunk = batch.get("fixed") if batch.get("mode") == "chunks" else None
        self._batched = set(qg.float_tensors) | set(qg.inputs)

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> QuantState:
        """The live quantization state (sim/state.py); the weights it runs are ``weights``."""
        return self._state

    @property
    def device(self) -> torch.device:
        """Where the weights (and so the simulation) live; the CPU for a model without weights."""
        return next(iter(self.weights.values())).device if len(self.weights) else torch.device("cpu")

    @property
    def bias_delta(self) -> dict[str, torch.Tensor]:
        """``state.bias_delta`` (kept while reconstruction moves to ``state``)."""
        return self._state.bias_delta

    @property
    def input_means(self) -> dict[str, torch.Tensor]:
        """``state.input_means`` (kept while reconstruction moves to ``state``)."""
        return self._state.input_means

    def float_weight(self, init_name: str) -> torch.Tensor:
        """Weight or bias ``init_name`` of the float model (float32, CPU): the imported graph's, or its
        function-preserving replacement in ``state.float_weights`` (ECAQ's W_beta)."""
        w = self._state.float_weights.get(init_name)
        if w is not None:
            return w.detach().cpu().clone()
        return torch.from_numpy(np.array(self.qg.initializer(init_name))).float()

    @torch.no_grad()
    def export_state(self) -> QuantState:
        """A detached copy of ``state``, with the weights that differ from the float weights as overrides."""
        out = self._state.detached()
        for name, key in self._wkey.items():
            w = self.weights[key].detach().cpu()
            if not torch.equal(w, self.float_weight(name)):
                out.weight_overrides[name] = w.clone()
        return out

    @torch.no_grad()
    def load_state(self, state: QuantState) -> None:
        """Make a copy of ``state`` this simulation's state: weights = imported graph + overrides, quantizer
        parameters, bias corrections, ECAQ scales, input means. Which quantizers are enabled is unchanged."""
        layers = {x.name: x for x in self.qg.layers}
        unknown = sorted((set(state.weight_overrides) - set(self._wkey)) | (set(state.float_weights) - set(self._wkey))
                         | (set(state.weight_params) - set(layers))
                         | (set(state.act_params) - set(self._act_key)) | (set(state.ecaq_scales) - set(self._act_key)))
        if unknown:
            raise ValueError(f"the state names {unknown[:5]} which this model does not have (a state of another model?)")
        state = state.detached()
        device = self.device
        self._state.float_weights.clear()
        self._state.float_weights.update(state.float_weights)
        for name, key in self._wkey.items():
            self.weights[key].copy_(state.weight_overrides.get(name, self.float_weight(name)))
        for mine, theirs in ((self._state.bias_delta, state.bias_delta), (self._state.input_means, state.input_means)):
            mine.clear()
            mine.update({k: v.to(device) for k, v in theirs.items()})
        self._state.ecaq_scales.clear()
        self._state.ecaq_scales.update(state.ecaq_scales)
        for name, layer in layers.items():
            self._set(self.weight_quantizer(name), state.weight_params.get(name), len(layer.weight_shape))
        for t, k in self._act_key.items():
            p = state.act_params.get(t)
            self._set(self.act_fq[k], p, None if p is None or p.axis is None else len(self.qg.shapes[t]))

    @staticmethod
    def _set(fq: FakeQuant, params: QParams | None, ndim: int | None) -> None:
        if params is None:
            fq.params = None
        else:
            fq.bits = params.grid.bits
            fq.set_params(params, ndim)

    # ------------------------------------------------------------------ accessors
    def act_quantizer(self, tensor: str) -> FakeQuant:
        return self.act_fq[self._act_key[tensor]]

    def weight_quantizer(self, layer: str) -> FakeQuant:
        return self.w_fq[_key(layer)]

    def set_act_quantizer(self, tensor: str, fq: FakeQuant) -> FakeQuant:
        """Put ``fq`` at quant point ``tensor`` (e.g. a learned-step quantizer); returns the one it replaces."""
        old = self.act_fq[self._act_key[tensor]]
        self.act_fq[self._act_key[tensor]] = fq
        return old

    def weight(self, init_name: str) -> nn.Parameter:
        return self.weights[self._wkey[init_name]]

    def act_quantizers(self):
        return ((t, self.act_fq[k]) for t, k in self._act_key.items())

    def set_quant(self, weights: bool | None = None, acts: bool | None = None) -> None:
        """Turn weight and/or activation quantization on or off.

        After a learned rounding the weights themselves hold the hard-rounded values (``Region.finish_rounding``),
        so weights off is not the float model there: its weights are ``float_weight(name)``."""
        if weights is not None:
            for fq in self.w_fq.values():
                fq.enabled = weights
        if acts is not None:
            for fq in self.act_fq.values():
                fq.enabled = acts

    # ------------------------------------------------------------------ execution
    def _compute_last_use(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for k, n in enumerate(self.nodes):
            for i in n.inputs:
                last[i] = k
        for o in self.qg.outputs:
            last[o] = len(self.nodes)
        return last

    def _layer_forward(self, node: SimNode, x: torch.Tensor) -> torch.Tensor:
        layer = node.layer
        for tap in self._input_taps:
            tap(layer, x)
        wq = self.weight_quantizer(layer.name)
        w = wq(self.weight(layer.weight))
        b = self.effective_bias(layer) if layer.bias else None
        if b is not None and self.quantize_bias:
            b = self._quantized_bias(layer, b)
        if layer.op_type == "Conv":
            return conv(x, w, b, node.attrs)
        if layer.op_type == "ConvTranspose":
            return conv_transpose(x, w, b, node.attrs)
        if layer.op_type == "Gemm":
            return gemm(x, w, b, node.attrs)
        return torch.matmul(x, w)

    def effective_bias(self, layer: Layer, quantized_weights: bool | None = None) -> torch.Tensor:
        """The float bias, minus its bias correction when the weights are quantized (default: if enabled)."""
        b = self.weight(layer.bias)
        delta = self._state.bias_delta.get(layer.name)
        if quantized_weights is None:
            quantized_weights = self.weight_quantizer(layer.name).enabled
        if delta is not None and quantized_weights:
            b = b - delta.to(b.device)
        return b

    def _quantized_bias(self, layer: Layer, b: torch.Tensor) -> torch.Tensor:
        """int32 bias with scale s_x * s_w[c] when both the input and the weight are quantized."""
        wq = self.weight_quantizer(layer.name)
        src = self.qg.source.get(layer.input)
        aq = self.act_quantizer(src) if src is not None else None
        if not (wq.enabled and wq.params is not None and aq is not None and aq.enabled and aq.params is not None):
            return b
        s_b = torch.as_tensor(self.bias_scale(layer), device=b.device)
        return fake_quantize(b, s_b, 0, BIAS_GRID, round_ste)

    def input_scale(self, layer: Layer) -> float:
        """s_x of the layer's input: its quant point's scale, or 1 for an ECAQ point (integer codes,
        the per-channel scales live in the weights: calib/ecaq.py)."""
        fq = self.act_quantizer(self.qg.source[layer.input])
        return 1.0 if fq.ecaq else float(fq.params.scale)

    def bias_scale(self, layer: Layer) -> np.ndarray:
        """float32 s_x * s_w[c]: the exported bias DequantizeLinear scale (DESIGN.md section 4)."""
        s_w = self.weight_quantizer(layer.name).params.scale
        return (np.float32(self.input_scale(layer)) * s_w.astype(np.float32)).astype(np.float32)

    def run_nodes(self, env: dict[str, torch.Tensor], start: int = 0, stop: int | None = None,
                  keep: bool = False) -> dict[str, torch.Tensor]:
        """Execute nodes[start:stop] on ``env`` (tensor name -> value), quantizing at quant points.

        A graph that fixes its batch (``self.chunk``) runs ``chunk`` samples at a time; the activations
        (float tensors and graph inputs) are split and joined along their first axis. A last chunk that is not
        full is filled with copies of the last sample and those rows are dropped from every result (exact where
        the graph keeps samples apart, the usual case; a graph that mixes samples across its batch depends on
        which samples share a chunk anyway)."""
        n = next((len(v) for k, v in env.items() if k in self._batched and v.dim()), 0)
        if self.chunk is None or n in (0, self.chunk):
            return self._run_nodes(env, start, stop, keep)
        size = self.chunk
        real = n - (n - 1) // size * size  # real samples in the last chunk

        def rows(v: torch.Tensor, i: int) -> torch.Tensor:
            if i + size <= n:
                return v[i:i + size]
            return v.index_select(0, torch.from_numpy(padded_rows(i, size, n)).to(v.device))

        parts = []
        for i in range(0, n, size):
            part = {k: rows(v, i) if k in self._batched and v.dim() and len(v) == n else v for k, v in env.items()}
            parts.append(self._run_nodes(part, start, stop, keep))
        joined = {k: torch.cat([p[k] for p in parts[:-1]] + [v[:kept_rows(len(v), size, real)]])
                  if k in self._batched and v.dim() else v for k, v in parts[-1].items()}
        env.clear()
        env.update(joined)
        return env

    def _run_nodes(self, env: dict[str, torch.Tensor], start: int, stop: int | None,
                   keep: bool) -> dict[str, torch.Tensor]:
        stop = len(self.nodes) if stop is None else stop
        for k in range(start, stop):
            node = self.nodes[k]
            if node.layer is not None:
                outs = [self._layer_forward(node, env[node.inputs[0]])]
            else:
                ins = [None if not i else env[i] if i in env else self.consts[i] for i in node.inputs]
                try:
                    outs = (node.fn if node.fn is not None else REGISTRY[node.op_type].simulate)(ins, node.attrs)
                except NotImplementedError as e:  # an attribute value the op's simulation does not cover
                    raise UnsupportedOpError([(node.name, f"{node.op_type}: {e}")]) from None
            for name, v in zip(node.outputs, outs):
                if not name:
                    continue
                key = self._act_key.get(name)
                env[name] = self.act_fq[key](v) if key is not None else v
            if not keep:
                for i in node.inputs:
                    if i in env and self._last_use.get(i, -1) <= k:
                        del env[i]
        return env

    def input_env(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph inputs as node 0 sees them: quantized where they are quant points."""
        env: dict[str, torch.Tensor] = {}
        for name in self.qg.inputs:
            if name not in feeds:
                raise KeyError(f"missing model input {name!r}")
            x = feeds[name]
            key = self._act_key.get(name)
            env[name] = self.act_fq[key](x) if key is not None else x
        return env

    def forward(self, feeds: dict[str, torch.Tensor], keep: bool = False) -> dict[str, torch.Tensor]:
        env = self.run_nodes(self.input_env(feeds), keep=keep)
        return env if keep else {o: env[o] for o in self.qg.outputs}

    def node_index(self, name: str) -> int:
        for k, n in enumerate(self.nodes):
            if n.name == name:
                return k
        raise KeyError(name)


@torch.no_grad()
def simulate_outputs(sim: SimModel, inputs: dict[str, np.ndarray], batch_size: int = 32,
                     names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The simulation's graph outputs (or ``names`` of them) over ``inputs``, run ``batch_size`` samples at a
    time in its current quantization mode."""
    device = sim.device
    names = list(sim.qg.outputs) if names is None else names
    n = len(next(iter(inputs.values())))
    outs: dict[str, list[np.ndarray]] = {o: [] for o in names}
    for i in range(0, n, batch_size):
        feeds = {k: torch.from_numpy(v[i:i + batch_size]).to(device) for k, v in inputs.items()}
        r = sim(feeds)
        for o in names:
            outs[o].append(r[o].cpu().numpy())
    return {o: np.concatenate(v) for o, v in outs.items()}


def simulate(sim: SimModel, inputs: dict[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
    """The simulation's first graph output over ``inputs`` (``simulate_outputs``)."""
    return simulate_outputs(sim, inputs, batch_size, sim.qg.outputs[:1])[sim.qg.outputs[0]]
