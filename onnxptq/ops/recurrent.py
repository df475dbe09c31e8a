"""Recurrent layers in torch: ONNX LSTM and GRU, run step by step as the ONNX operator defines them.

They stay float in the quantized model (role ``island``: the outputs get their own quant points, the weights
are not quantized; no integer form), so a model with an LSTM (timm's Sequencer, a CRNN text recognizer, a speech
encoder) simulates, calibrates and exports to QDQ with the recurrence left float.

Supported: every direction (forward, reverse, bidirectional), both layouts, biases, initial states, LSTM
peepholes and ``input_forget``, ``clip``, GRU ``linear_before_reset`` 0 and 1, the default activations (or
Sigmoid / Tanh / Relu named explicitly), and ``sequence_lens`` where every sequence has the full length (what
exporters write). Anything else raises NotImplementedError naming the attribute.
"""
from __future__ import annotations

import torch

from .base import OPS

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    ("recurrent layers (float)", "island", None, ("LSTM", "GRU")),
]

_ACTIVATIONS = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _activations(a: dict, op_type: str, n_dirs: int, defaults: tuple[str, ...]) -> list[tuple]:
    """The activation functions of each direction (f, g[, h])."""
    names = [_text(v) for v in a.get("activations", [])] or list(defaults) * n_dirs
    if len(names) != len(defaults) * n_dirs:
        raise NotImplementedError(f"{op_type} with {len(names)} activations for {n_dirs} direction(s)")
    unknown = sorted({n for n in names if n not in _ACTIVATIONS})
    if unknown:
        raise NotImplementedError(f"{op_type} activations {unknown} (supported: {', '.join(_ACTIVATIONS)})")
    k = len(defaults)
    return [tuple(_ACTIVATIONS[n] for n in names[d * k:(d + 1) * k]) for d in range(n_dirs)]


def _prepare(i: list, a: dict, op_type: str, gates: int):
    """Inputs in layout 0 (seq, batch, input) with the optional ones filled in."""
    x, w, r = i[0], i[1], i[2]
    layout = int(a.get("layout", 0))
    if layout:
        x = x.transpose(0, 1)
    seq, batch = x.shape[0], x.shape[1]
    n_dirs, hidden = w.shape[0], r.shape[-1]
    direction = _text(a.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional") or (direction == "bidirectional") != (n_dirs == 2):
        raise NotImplementedError(f"{op_type} direction {direction!r} with {n_dirs} weight set(s)")
    lens = i[4] if len(i) > 4 else None
    if lens is not None and bool((lens != seq).any()):
        raise NotImplementedError(f"{op_type} with sequence_lens shorter than the sequence (variable lengths)")
    b = i[3] if len(i) > 3 and i[3] is not None else x.new_zeros(n_dirs, 2 * gates * hidden)
    h0 = i[5] if len(i) > 5 and i[5] is not None else x.new_zeros(n_dirs, batch, hidden)
    return x, w, r, b, h0, layout, direction, n_dirs, hidden


def _outputs(ys: list[torch.Tensor], hs: list[torch.Tensor], cs: list[torch.Tensor] | None, layout: int) -> list:
    """Y (seq, dirs, batch, hidden) or (batch, seq, dirs, hidden); Y_h, Y_c (dirs, batch, hidden) or batch first."""
    y = torch.stack(ys, dim=1)
    y_h = torch.stack(hs)
    y_c = torch.stack(cs) if cs is not None else None
    if layout:
        y = y.permute(2, 0, 1, 3)
        y_h = y_h.transpose(0, 1)
        y_c = y_c.transpose(0, 1) if y_c is not None else None
    return [y, y_h] + ([y_c] if y_c is not None else [])


def _order(seq: int, reverse: bool) -> range:
    return range(seq - 1, -1, -1) if reverse else range(seq)


def lstm(i: list, a: dict) -> list[torch.Tensor]:
    """ONNX LSTM (gates i, o, f, c): i = f(X Wi + H Ri + Pi C + b), f likewise, c~ = g(...),
    C' = f C + i c~, o = f(X Wo + H Ro + Po C' + b), H' = o h(C')."""
    x, w, r, b, h0, layout, direction, n_dirs, hidden = _prepare(i, a, "LSTM", 4)
    c0 = i[6] if len(i) > 6 and i[6] is not None else torch.zeros_like(h0)
    p = i[7] if len(i) > 7 and i[7] is not None else None
    if layout:
        h0, c0 = h0.transpose(0, 1), c0.transpose(0, 1)
    clip = a.get("clip")
    couple = bool(a.get("input_forget", 0))
    acts = _activations(a, "LSTM", n_dirs, ("Sigmoid", "Tanh", "Tanh"))
    seq = x.shape[0]
    ys, hs, cs = [], [], []
    for d in range(n_dirs):
        f_act, g_act, h_act = acts[d]
        xw = torch.matmul(x, w[d].t()) + b[d, :4 * hidden] + b[d, 4 * hidden:]  # (seq, batch, 4H) at once
        h, c = h0[d], c0[d]
        out = [None] * seq
        for t in _order(seq, direction == "reverse" or d == 1):
            z = xw[t] + torch.matmul(h, r[d].t())
            if clip is not None:
                z = z.clamp(-float(clip), float(clip))
            zi, zo, zf, zc = z.split(hidden, dim=-1)
            if p is not None:
                zi, zf = zi + p[d, :hidden] * c, zf + p[d, 2 * hidden:] * c
            gi = f_act(zi)
            gf = 1 - gi if couple else f_act(zf)
            c = gf * c + gi * g_act(zc)
            if p is not None:
                zo = zo + p[d, hidden:2 * hidden] * c
            h = f_act(zo) * h_act(c)
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    return _outputs(ys, hs, cs, layout)


def gru(i: list, a: dict) -> list[torch.Tensor]:
    """ONNX GRU (gates z, r, h): z = f(X Wz + H Rz + b), r = f(...), h~ = g(X Wh + (r H) Rh + b) (or
    g(X Wh + r (H Rh + Rbh)) with linear_before_reset), H' = (1 - z) h~ + z H."""
    x, w, r, b, h0, layout, direction, n_dirs, hidden = _prepare(i, a, "GRU", 3)
    if layout:
        h0 = h0.transpose(0, 1)
    clip = a.get("clip")
    before = bool(a.get("linear_before_reset", 0))
    acts = _activations(a, "GRU", n_dirs, ("Sigmoid", "Tanh"))
    seq = x.shape[0]
    ys, hs = [], []
    for d in range(n_dirs):
        f_act, g_act = acts[d]
        wb, rb = b[d, :3 * hidden], b[d, 3 * hidden:]
        xw = torch.matmul(x, w[d].t()) + wb
        rz, rr, rh = r[d].split(hidden, dim=0)
        h = h0[d]
        out = [None] * seq
        for t in _order(seq, direction == "reverse" or d == 1):
            xz, xr, xh = xw[t].split(hidden, dim=-1)
            pre_z = xz + torch.matmul(h, rz.t()) + rb[:hidden]
            pre_r = xr + torch.matmul(h, rr.t()) + rb[hidden:2 * hidden]
            if clip is not None:
                pre_z, pre_r = pre_z.clamp(-float(clip), float(clip)), pre_r.clamp(-float(clip), float(clip))
            gz, gr = f_act(pre_z), f_act(pre_r)
            if before:
                pre_h = xh + gr * (torch.matmul(h, rh.t()) + rb[2 * hidden:])
            else:
                pre_h = xh + torch.matmul(gr * h, rh.t()) + rb[2 * hidden:]
            if clip is not None:
                pre_h = pre_h.clamp(-float(clip), float(clip))
            h = (1 - gz) * g_act(pre_h) + gz * h
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
    return _outputs(ys, hs, None, layout)


OPS["LSTM"] = lstm
OPS["GRU"] = gru
