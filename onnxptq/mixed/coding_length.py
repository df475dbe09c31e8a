"""Coding-length mixed precision (Attention Round Sec. 3.4, Eq. 8-12 and Algorithm 1).

Orientation of Eq. 12. The paper encodes a set of m vectors ``W = (w_1, ..., w_m) in R^{n x m}``: the *columns*
of its W are the vectors, n is their dimension (rows) and m their count (columns); Eq. 9's covariance
``eps^2/n I + 1/m W W^T`` is n x n. For a layer we take the vectors to be the output filters: a weight in
output-first layout (ONNX Conv ``(M, C/group, kh, kw)``; Gemm/MatMul weights must be passed as ``(out, in)``)
is reshaped to ``Wr = (Cout, Cin*kh*kw)`` and the paper's W is ``Wr^T``, so ``m = Cout`` (number of filters)
and ``n = Cin*kh*kw`` (filter length). ``vectors="columns"`` instead uses the 2-D matrix literally as the
paper's ``R^{n x m}`` (n = rows, m = columns); only the scalar ``n/m`` differs between the two readings, since
``det(I + a W W^T) = det(I + a W^T W)``.

Eq. 12 is inconsistent in the paper (the middle term carries a factor ``(m+n)/2``, the right-hand side ``1/2``);
we implement the right-hand side ``L(W) = 1/2 log2 det(I + n/(m eps^2) W W^T)``. Like Eq. 9 we use the weights
as they are (no mean subtraction: the paper *assumes* zero mean, it does not subtract it).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

# Default coding tolerance. The paper gives no value for eps. eps^2 is the squared l2 error tolerated per
# vector (Eq. 8: noise variance eps^2/n per element); a He-initialised filter has E||w||^2 = 2, so eps = 0.5
# (eps^2 = 0.25) sits at a per-filter signal-to-noise ratio of about 8: L is neither ~0 for every layer (eps much
# larger than the filter norms) nor reduced to counting dimensions (eps -> 0 makes L ~ rank/2 * log2(1/eps^2)).
DEFAULT_EPS = 0.5


def as_matrix(W: np.ndarray) -> np.ndarray:
    """Output-first weight -> 2-D float64 matrix ``(shape[0], prod(shape[1:]))`` (conv: ``(Cout, Cin*kh*kw)``)."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim < 2:
        raise ValueError(f"coding length needs a weight with >= 2 dims (out, in, ...), got shape {W.shape}")
    return W.reshape(W.shape[0], -1)


def coding_length(W: np.ndarray, eps: float = DEFAULT_EPS, vectors: Literal["rows", "columns"] = "rows") -> float:
    """Lossy coding length ``L(W) = 1/2 log2 det(I + n/(m eps^2) W W^T)`` in bits (Attention Round Eq. 12).

    ``vectors="rows"`` (default): the rows of ``as_matrix(W)`` (output filters) are the paper's m vectors of
    dimension n. ``vectors="columns"``: the columns are. Computed in float64 from the eigenvalues of the smaller
    Gram matrix (``A A^T`` or ``A^T A`` share their nonzero eigenvalues) as ``1/2 sum log2(1 + c * lambda)``.
    """
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    A = as_matrix(W)
    if not np.all(np.isfinite(A)):
        raise ValueError("weight contains non-finite values")
    if vectors == "rows":
        m, n = A.shape  # m filters (rows) of dimension n
    elif vectors == "columns":
        n, m = A.shape  # the paper's W in R^{n x m} literally
    else:
        raise ValueError(f"vectors must be 'rows' or 'columns', got {vectors!r}")
    if A.size == 0:
        return 0.0
    gram = A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A
    lam = np.clip(np.linalg.eigvalsh(gram), 0.0, None)  # PSD: clip tiny negative round-off
    c = n / (m * eps * eps)
    return float(0.5 * np.sum(np.log1p(c * lam)) / np.log(2.0))


def kmeans_1d(values: np.ndarray | list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact (globally optimal, minimum within-cluster squared error) 1-D k-means by dynamic programming.

    Works on the distinct values weighted by multiplicity, so equal values always share a cluster and every
    cluster is non-empty; ``min(k, number of distinct values)`` clusters are returned. Clusters are contiguous
    in sorted order; ``centers`` (the cluster means) are strictly ascending and ``labels[i]`` indexes
    ``centers``. Deterministic (ties between split points go to the earliest split). O(k * d^2) time for d
    distinct values.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if x.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("kmeans_1d values must be finite")
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    d = uniq.size
    k_eff = min(k, d)
    shift = uniq.mean()  # centre the data: prefix-sum SSE loses less precision
    u = uniq - shift
    w = counts.astype(np.float64)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cx = np.concatenate([[0.0], np.cumsum(w * u)])
    cxx = np.concatenate([[0.0], np.cumsum(w * u * u)])

    def sse(i: np.ndarray | int, j: int) -> np.ndarray:
        """Weighted SSE of u[i..j] (inclusive) for an array of start indices i."""
        sw = cw[j + 1] - cw[i]
        sx = cx[j + 1] - cx[i]
        return np.maximum(cxx[j + 1] - cxx[i] - sx * sx / sw, 0.0)

    # cost[c, j]: best SSE of u[0..j] in c+1 clusters; split[c, j]: start index of the last cluster.
    cost = np.full((k_eff, d), np.inf)
    split = np.zeros((k_eff, d), dtype=np.int64)
    for j in range(d):
        cost[0, j] = sse(0, j)
    for c in range(1, k_eff):
        for j in range(c, d):
            starts = np.arange(c, j + 1)  # the last cluster is u[s..j]; the first c clusters cover u[0..s-1]
            total = cost[c - 1, starts - 1] + sse(starts, j)
            best = int(np.argmin(total))
            cost[c, j] = total[best]
            split[c, j] = starts[best]
    bounds = []  # (start, end) per cluster, backtracked from the last
    j = d - 1
    for c in range(k_eff - 1, -1, -1):
        s = int(split[c, j]) if c > 0 else 0
        bounds.append((s, j))
        j = s - 1
    bounds.reverse()
    uniq_label = np.empty(d, dtype=np.int64)
    centers = np.empty(k_eff, dtype=np.float64)
    for c, (s, e) in enumerate(bounds):
        uniq_label[s:e + 1] = c
        centers[c] = float(np.sum(w[s:e + 1] * uniq[s:e + 1]) / np.sum(w[s:e + 1]))
    return uniq_label[inverse.ravel()], centers


def allocate_bits(lengths: dict[str, float], bits: list[int]) -> dict[str, int]:
    """Attention Round Algorithm 1: bit width per layer from its coding length.

    The coding lengths are clustered into ``len(bits)`` clusters by exact 1-D k-means (``kmeans_1d``); the
    cluster centres and the candidate bit widths are both sorted ascending and matched in order, so the cluster
    with the smallest centre (least information) gets the fewest bits. If there are fewer distinct lengths than
    bit widths, only ``min(len(bits), distinct)`` clusters exist and they take the smallest bit widths in order
    (the literal sequential assignment of step 8). Returns ``{layer: bits}`` in the order of ``lengths``.
    """
    if not bits:
        raise ValueError("bits must list at least one candidate bit width")
    cand = sorted(int(b) for b in bits)
    if len(set(cand)) != len(cand):
        raise ValueError(f"candidate bit widths must be distinct, got {bits}")
    if not lengths:
        return {}
    names = list(lengths)
    labels, _ = kmeans_1d(np.array([float(lengths[n]) for n in names]), len(cand))
    return {name: cand[int(lab)] for name, lab in zip(names, labels)}


def coding_lengths(weights: dict[str, np.ndarray], eps: float = DEFAULT_EPS,
                   vectors: Literal["rows", "columns"] = "rows") -> dict[str, float]:
    """``coding_length`` of every named weight (Algorithm 1 steps 1-5)."""
    return {name: coding_length(W, eps, vectors) for name, W in weights.items()}
