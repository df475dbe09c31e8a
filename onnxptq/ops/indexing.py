"""Index-producing and index-consuming ops in torch (TopK, ArgMax, gathers, scatters, NonZero, NMS, OneHot)."""

from __future__ import annotations

import math

import torch

from .base import op

#: (family, role, integer-lowering kind, op types) for ops/registry.py (roles and kinds: ops/spec.py)
FAMILIES = [
    ("element gathers", "carry", "carry", ("GatherElements",)),  # moves integers as they are (runtime/ runs it)
    ("nd gathers", "carry", None, ("GatherND",)),
    ("index ops", "island", None,
     ("TopK", "ArgMax", "ArgMin", "ScatterND", "ScatterElements", "Scatter", "NonZero", "NonMaxSuppression",
      "OneHot")),
]


def _wrap(ind: torch.Tensor, n: int) -> torch.Tensor:
    ind = ind.long()
    return torch.where(ind < 0, ind + n, ind)


@op("TopK")
def _topk(i, a):
    """Values and int64 indices of the k largest (smallest) along axis; ties: the lower index first."""
    x, k = i[0], int(i[1].reshape(-1)[0])
    axis = a.get("axis", -1) % x.dim()
    largest = bool(a.get("largest", 1))
    idx = torch.sort(x, dim=axis, descending=largest, stable=True).indices.narrow(axis, 0, k)
    return [torch.gather(x, axis, idx), idx]


def _arg(largest: bool):
    def run(i, a):
        x = i[0]
        axis = a.get("axis", 0) % x.dim()
        last = bool(a.get("select_last_index", 0))
        xs = x.flip(axis) if last else x
        idx = xs.argmax(axis, keepdim=True) if largest else xs.argmin(axis, keepdim=True)
        if last:
            idx = x.shape[axis] - 1 - idx
        return [idx if a.get("keepdims", 1) else idx.squeeze(axis)]
    return run


op("ArgMax")(_arg(True))
op("ArgMin")(_arg(False))


@op("GatherElements")
def _gather_elements(i, a):
    x, ind = i
    axis = a.get("axis", 0) % x.dim()
    return [torch.gather(x, axis, _wrap(ind, x.shape[axis]))]


def _nd_linear(data_shape, ind: torch.Tensor) -> torch.Tensor:
    """Row-major linear index into data_shape[:k] of each k-tuple in ind[..., k] (negative indices wrapped)."""
    k = ind.shape[-1]
    lin = torch.zeros(ind.shape[:-1], dtype=torch.long, device=ind.device)
    for d in range(k):
        lin = lin * data_shape[d] + _wrap(ind[..., d], data_shape[d])
    return lin


@op("GatherND")
def _gather_nd(i, a):
    x, ind = i
    b = a.get("batch_dims", 0)
    bshape = tuple(x.shape[:b])
    nb = math.prod(bshape)
    k = ind.shape[-1]
    xf = x.reshape((nb,) + tuple(x.shape[b:]))
    xf = xf.reshape((nb, math.prod(x.shape[b:b + k])) + tuple(x.shape[b + k:]))
    indf = ind.reshape(nb, -1, k)
    lin = _nd_linear(x.shape[b:], indf)  # (nb, m)
    out = xf[torch.arange(nb, device=x.device)[:, None], lin]
    return [out.reshape(bshape + tuple(ind.shape[b:-1]) + tuple(x.shape[b + k:]))]


_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def _reduction(a) -> str:
    r = a.get("reduction", b"none")
    return r.decode() if isinstance(r, bytes) else r


@op("ScatterND")
def _scatter_nd(i, a):
    data, ind, upd = i
    k = ind.shape[-1]
    rest = tuple(data.shape[k:])
    out = data.clone().reshape((-1,) + rest)
    lin = _nd_linear(data.shape, ind).reshape(-1)
    u = upd.reshape((-1,) + rest).to(data.dtype)
    red = _reduction(a)
    if red == "none":
        out[lin] = u
    else:
        index = lin.reshape((-1,) + (1,) * len(rest)).expand(u.shape)
        out.scatter_reduce_(0, index, u, {"add": "sum", **_REDUCE}[red], include_self=True)
    return [out.reshape(data.shape)]


@op("ScatterElements", "Scatter")
def _scatter_elements(i, a):
    data, ind, upd = i
    axis = a.get("axis", 0) % data.dim()
    ind = _wrap(ind, data.shape[axis])
    red = _reduction(a)
    if red == "none":
        return [data.scatter(axis, ind, upd)]
    return [data.scatter_reduce(axis, ind, upd, {"add": "sum", **_REDUCE}[red], include_self=True)]


@op("NonZero")
def _nonzero(i, a):
    x = i[0]
    return [torch.nonzero(x.reshape(1) if x.dim() == 0 else x).T.contiguous()]


def _boxes_corners(b: torch.Tensor, center: bool) -> tuple[torch.Tensor, ...]:
    """(x_min, y_min, x_max, y_max), float32 as onnxruntime computes them."""
    if center:
        xc, yc, w2, h2 = b[:, 0], b[:, 1], b[:, 2] / 2, b[:, 3] / 2
        return xc - w2, yc - h2, xc + w2, yc + h2
    return (torch.minimum(b[:, 1], b[:, 3]), torch.minimum(b[:, 0], b[:, 2]),
            torch.maximum(b[:, 1], b[:, 3]), torch.maximum(b[:, 0], b[:, 2]))


def _scalar(i: list, k: int, default):
    """The one value of optional input k, or default when it is omitted or empty."""
    return i[k].reshape(-1)[0].item() if len(i) > k and i[k] is not None and i[k].numel() else default


@op("NonMaxSuppression")
def _nms(i, a):
    """selected_indices [n, 3] (batch, class, box): per batch and class, boxes of score > score_threshold in
    descending score (ties: lower box index first), each kept unless its IoU with a kept box is > iou_threshold."""
    boxes, scores = i[0], i[1]
    max_out, iou_thr, score_thr = int(_scalar(i, 2, 0)), float(_scalar(i, 3, 0.0)), _scalar(i, 4, None)
    center = bool(a.get("center_point_box", 0))
    sel = []
    if max_out <= 0:
        return [torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)]
    for n in range(boxes.shape[0]):
        x0, y0, x1, y1 = _boxes_corners(boxes[n].float(), center)
        area = (x1 - x0) * (y1 - y0)
        ix = torch.minimum(x1[:, None], x1[None]) - torch.maximum(x0[:, None], x0[None])
        iy = torch.minimum(y1[:, None], y1[None]) - torch.maximum(y0[:, None], y0[None])
        inter = ix * iy
        union = area[:, None] + area[None] - inter
        ok = (ix > 0) & (iy > 0) & (inter > 0) & (area[:, None] > 0) & (area[None] > 0) & (union > 0)
        suppress = (ok & (inter / union > iou_thr)).tolist()
        for c in range(scores.shape[1]):
            s = scores[n, c].float()
            order = torch.sort(s, descending=True, stable=True).indices.tolist()
            vals = s.tolist()
            kept: list[int] = []
            for b in order:
                if score_thr is not None and not vals[b] > score_thr:  # both float32 values
                    break
                if not any(suppress[b][k] for k in kept):
                    kept.append(b)
                    if len(kept) == max_out:
                        break
            sel += [[n, c, b] for b in kept]
    return [torch.tensor(sel, dtype=torch.int64, device=boxes.device).reshape(-1, 3)]


@op("OneHot")
def _onehot(i, a):
    ind, depth, values = i
    depth = int(depth.reshape(-1)[0])
    ind = ind.long()
    ind = torch.where(ind < 0, ind + depth, ind)
    axis = a.get("axis", -1)
    axis = axis % (ind.dim() + 1)
    hot = ind.unsqueeze(-1) == torch.arange(depth, device=ind.device)
    out = torch.where(hot, values[1], values[0])
    return [out.movedim(-1, axis)]
