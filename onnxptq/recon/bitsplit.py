"""Bit-Split & Stitching and logarithmic weight quantization, closed form per layer (Wang et al., TPAMI 2022,
"Optimization-Based Post-Training Quantization With Bit-Split and Stitching", Sec. 3.2-3.3, Algorithm 1).

Problem (Eq. 11), batched over groups ``g`` (grouped / depthwise convs) and output channels ``m``::

    minimize_{alpha[g,m], q[g,m]}  || Y[g,:,m] - alpha[g,m] * X[g] @ q[g,m] ||^2,   q[g,m] in Q^D

with ``X`` (G, N, D) the sampled layer-input rows (im2col patches), ``Y`` (G, N, M) the target outputs and ``W``
(G, M, D) the float weights (the paper writes X as D x N and y = X^T w; here y ~ alpha * X q). Only the Gram
statistics ``H = X^T X`` (G, D, D), ``b = Y^T X`` (G, M, D) and ``diag(Y^T Y)`` are used after the first step, so
the error of a row is ``y.y - 2 alpha b.q + alpha^2 q.Hq``. Everything runs in float64 on the inputs' device and
is vectorized over all G*M rows; Python loops only run over iterations, bit planes and the D coordinates of the
cyclic coordinate descent (in blocks: within a block of coordinates only the block's slice of ``Hq`` is updated
after each coordinate, the full ``Hq`` once per block, by one matmul or row by row when few coordinates changed;
both are exact updates, so the pass is the literal sequential Eq. 18 / DCC pass).

Errors reported here are sums of squares over the N samples (Eq. 11; Eq. 9's 1/N is left out).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "BitSplitResult", "tflite_init", "split_bits", "stitch_bits", "optimal_alpha", "reconstruction_error",
    "bit_split", "log_values", "log_init", "log_quant", "nearest_q",
]

_F64 = torch.float64
MAX_BITS = 16
LOG_MIN_BITS, LOG_MAX_BITS = 2, 4


@dataclass
class BitSplitResult:
    """Per-row solution of Eq. 11: ``W[g, m] ~ alpha[g, m] * q[g, m]``.

    ``q`` int64 (G, M, D); ``alpha`` float64 (G, M), > 0; ``err_init`` / ``err_final`` float64 (G, M): the
    reconstruction error (sum over samples) of the initialization as given (Eq. 12, or its log analogue) and of
    the returned ``(q, alpha)``; ``err_final <= err_init`` per row. ``iterations``: outer iterations run.
    """

    q: Tensor
    alpha: Tensor
    err_init: Tensor
    err_final: Tensor
    iterations: int = 0


# ---------------------------------------------------------------------------------------------- helpers


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _check_uniform_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 3 <= bits <= MAX_BITS:
        raise ValueError(f"bit_split needs an integer bit width in [3, {MAX_BITS}] (sign + at least 2 magnitude "
                         f"bits, Eq. 13 splits q into bits-1 >= 2 ternary planes), got {bits!r}")


def _check_log_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not LOG_MIN_BITS <= bits <= LOG_MAX_BITS:
        raise ValueError(f"log_quant supports integer bit widths in [{LOG_MIN_BITS}, {LOG_MAX_BITS}] (Sec. 3.3.2 "
                         f"uses M <= 4; 5 bits would need |q| up to 2^14, beyond int8), got {bits!r}")


def _check_problem(X: Tensor, Y: Tensor, W: Tensor | None = None) -> tuple[int, int, int, int]:
    if X.dim() != 3 or Y.dim() != 3:
        raise ValueError(f"X must be (G, N, D) and Y (G, N, M), got shapes {tuple(X.shape)} and {tuple(Y.shape)}")
    G, N, D = X.shape
    if Y.shape[0] != G or Y.shape[1] != N:
        raise ValueError(f"Y {tuple(Y.shape)} does not match X {tuple(X.shape)}: expected ({G}, {N}, M)")
    M = Y.shape[2]
    if W is not None and tuple(W.shape) != (G, M, D):
        raise ValueError(f"W must be (G, M, D) = ({G}, {M}, {D}), got {tuple(W.shape)}")
    return G, N, D, M


def _prepare(name: str, X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor, iters: int, block: int):
    """Checks shared by the uniform and the logarithmic solver, then the statistics both read (``_stats``)."""
    _check_problem(X, Y, W)
    if iters < 0 or block < 1:
        raise ValueError(f"{name} needs iters >= 0 and block >= 1, got iters={iters}, block={block}")
    return _stats(X, Y)


def _stats(X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gram statistics of Eq. 17/20: H = X^T X (G,D,D), b = Y^T X (G,M,D), y.y (G,M), diag(H) (G,D)."""
    X = X.to(_F64)
    Y = Y.to(_F64)
    H = torch.matmul(X.transpose(1, 2), X)
    H = 0.5 * (H + H.transpose(1, 2))
    b = torch.matmul(Y.transpose(1, 2), X)
    yy = (Y * Y).sum(1)
    return H, b, yy, torch.diagonal(H, dim1=1, dim2=2).contiguous()


def _quad_error(b: Tensor, yy: Tensor, q: Tensor, Hq: Tensor, alpha: Tensor) -> Tensor:
    """Eq. 20: J = y.y - 2 alpha b.q + alpha^2 q.Hq per row (clamped at 0 against rounding)."""
    bq = (b * q).sum(-1)
    qHq = (q * Hq).sum(-1)
    return (yy - 2.0 * alpha * bq + alpha * alpha * qHq).clamp_min(0.0)


def _alpha_step(b: Tensor, q: Tensor, Hq: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 14 / Eq. 21: alpha* = b.q / q.Hq. Rows with q.Hq = 0 or b.q = 0 keep their alpha. Returns the new
    positive alpha and a sign (G, M) (+-1) to multiply q by: a negative alpha* is folded into q (the grid is
    symmetric, so (alpha, q) and (-alpha, -q) are the same solution)."""
    num = (b * q).sum(-1)
    den = (q * Hq).sum(-1)
    new = num / torch.where(den > 0, den, torch.ones_like(den))
    ok = (den > 0) & (num != 0) & torch.isfinite(new)
    sign = torch.where(ok & (new < 0), -1.0, 1.0).to(_F64)
    return torch.where(ok, new.abs(), alpha), sign


def _stalled(prev: Tensor | None, err: Tensor, tol: float) -> bool:
    """Convergence test: the mean relative error decrease of the last iteration (rows with error > 0) <= tol."""
    if prev is None or tol <= 0:
        return False
    pos = prev > 0
    if not bool(pos.any()):
        return True
    return float(((prev - err)[pos] / prev[pos]).mean()) <= tol


def _finish(best: list[Tensor], q0: Tensor, a0: Tensor, b: Tensor, yy: Tensor, H: Tensor, err_init: Tensor,
            n_it: int) -> BitSplitResult:
    """Exact error of the kept iterate (the passes update q H incrementally); a row that is not below the init
    after this recomputation returns the init, so err_final <= err_init holds exactly."""
    q = best[0]
    err = _quad_error(b, yy, q, torch.matmul(q, H), best[1])
    worse = err > err_init
    q = torch.where(worse[..., None], q0.to(_F64), q).round().to(torch.int64)
    alpha = torch.where(worse, a0, best[1])
    return BitSplitResult(q, alpha, err_init, torch.where(worse, err_init, err), n_it)


def _keep_best(best: list[Tensor], q: Tensor, alpha: Tensor, err: Tensor) -> None:
    """Keep, per row, the iterate with the lowest error (strict improvement only)."""
    better = err < best[2]
    best[0] = torch.where(better[..., None], q, best[0])
    best[1] = torch.where(better, alpha, best[1])
    best[2] = torch.where(better, err, best[2])


def _add_block_update(Hq: Tensor, dK: Tensor, H: Tensor, k0: int, scale: float = 1.0) -> None:
    """Hq[g, m] += scale * sum_j dK[j, g, m] H[g, k0 + j] for a coordinate-major block dK (B, G, M): by one
    matmul, or, when few coordinates changed (the usual case after the first passes), row by row."""
    B, G, M = dK.shape
    nz = dK.nonzero()
    if nz.shape[0] * 8 >= dK.numel():
        Hq.add_(torch.matmul(dK.permute(1, 2, 0), H[:, k0:k0 + B, :]), alpha=scale)
        return
    j, g, m = nz.unbind(1)
    rows = H[g, k0 + j, :] * (scale * dK[j, g, m])[:, None]
    Hq.view(G * M, -1).index_add_(0, g * M + m, rows)


# ---------------------------------------------------------------------------------------------- public API


@torch.no_grad()
def tflite_init(W: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Eq. 12 (TF-Lite, per output channel): alpha = max|w| / (2^(b-1) - 1), q = round(w / alpha).

    ``W`` (..., D) -> ``q`` int64 (..., D) on [-(2^(b-1)-1), 2^(b-1)-1], ``alpha`` float64 (...). The paper
    writes max(w); the symmetric grid needs max|w|. All-zero rows get alpha = 1, q = 0. Ties round half to even.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= MAX_BITS:
        raise ValueError(f"tflite_init needs an integer bit width in [2, {MAX_BITS}], got {bits!r}")
    W = W.to(_F64)
    amax = W.abs().amax(-1)
    alpha = torch.where(amax > 0, amax / _qmax(bits), torch.ones_like(amax))
    return nearest_q(W, alpha, bits), alpha


def split_bits(q: Tensor, bits: int) -> Tensor:
    """Bit-split (Eq. 13): q = sum_i 2^(i-1) q_i with ternary q_i = sign(q) * (i-th bit of |q|).

    ``q`` integer (...) on the b-bit symmetric grid -> int64 (b-1, ...); plane ``p`` (0-based) has base 2^p.
    """
    _check_uniform_bits(bits)
    q = q.to(torch.int64)
    if q.numel() and int(q.abs().max()) > _qmax(bits):
        raise ValueError(f"split_bits: |q| exceeds 2^(b-1)-1 = {_qmax(bits)} for bits={bits}")
    mag, sgn = q.abs(), torch.sign(q)
    return torch.stack([sgn * ((mag >> p) & 1) for p in range(bits - 1)])


def stitch_bits(planes: Tensor) -> Tensor:
    """Bit-stitching (Eq. 19): q' = 2^0 q'_1 + ... + 2^(b-2) q'_(b-1) for planes (b-1, ...) (any dtype)."""
    weights = (2 ** torch.arange(planes.shape[0], device=planes.device)).to(planes.dtype)
    return (planes * weights.reshape(-1, *([1] * (planes.dim() - 1)))).sum(0)


@torch.no_grad()
def optimal_alpha(X: Tensor, Y: Tensor, q: Tensor) -> Tensor:
    """Eq. 14 / Eq. 21 from the data: alpha = y^T X q / (q^T X^T X q) per row -> (G, M); 0 where X q = 0."""
    _check_problem(X, Y)
    Xq = torch.matmul(X.to(_F64), q.to(_F64).transpose(1, 2))  # (G, N, M)
    num = (Y.to(_F64) * Xq).sum(1)
    den = (Xq * Xq).sum(1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


@torch.no_grad()
def reconstruction_error(X: Tensor, Y: Tensor, q: Tensor, alpha: Tensor) -> Tensor:
    """Eq. 11: ||Y[g,:,m] - alpha[g,m] X[g] q[g,m]||^2 per row -> float64 (G, M), computed from the data."""
    _check_problem(X, Y)
    pred = torch.matmul(X.to(_F64), q.to(_F64).transpose(1, 2)) * alpha.to(_F64)[:, None, :]
    return ((Y.to(_F64) - pred) ** 2).sum(1)


# ---------------------------------------------------------------------------------------------- Bit-split


@torch.no_grad()
def _sweep_plane(H: Tensor, hdiag: Tensor, b: Tensor, Hq: Tensor, plane: Tensor, alpha: Tensor, base: float,
                 block: int = 64) -> bool:
    """One cyclic pass of Eq. 18 over the D coordinates of one ternary plane, for all rows at once.

    With everything but ``q_m`` fixed (Eq. 15-16: y_m = y - alpha X sum_{i!=m} 2^(i-1) q_i, alpha_m =
    alpha 2^(m-1) = ``alpha * base``; the printed Eq. 16 has 2^(m-1) inside the sum and alpha 2^(m-2), typos
    against the bases of Eq. 13/19), Eq. 17 gives A = alpha_m^2 H and s = -2 alpha_m X^T y_m, hence
    r_k = s_k + 2 sum_{i!=k} A_ki q_m^(i) = 2 alpha_m (alpha (Hq)_k - b_k - alpha_m H_kk q_m^(k)) with q the full
    stitched vector, and Eq. 18: q_m^(k) = -sign(r_k) if |r_k| > A_kk else 0. Dividing by -2 alpha_m^2 H_kk
    (alpha > 0): with z_k = q_m^(k) + (b_k - alpha (Hq)_k) / (alpha_m H_kk), q_m^(k) <- sign(z_k) if |z_k| > 1/2
    else 0, i.e. round(clamp(z_k, -1, 1)) (ties to 0). A change d of q_m^(k) moves z_j by -d H_kj / H_jj; a
    coordinate with H_kk = 0 (dead input) is left as is. ``plane``, ``Hq = q H`` (G,M,D) are updated in place;
    returns whether any coordinate changed.
    """
    D = plane.shape[-1]
    am = (alpha * base)[..., None]  # alpha_m (G, M, 1)
    live = hdiag > 0
    inv = torch.where(live, 1.0 / torch.where(live, hdiag, torch.ones_like(hdiag)), torch.zeros_like(hdiag))
    changed = False
    for k0 in range(0, D, block):
        k1 = min(D, k0 + block)
        # coordinate-major block layout (B, G, M): step j only touches contiguous slices
        old = plane[..., k0:k1].permute(2, 0, 1).contiguous()
        w = ((b[..., k0:k1] - alpha[..., None] * Hq[..., k0:k1]) / am * inv[:, None, k0:k1]).permute(2, 0, 1)
        w = w.contiguous()  # z_j = w_j + q_j before step j
        step = (-H[:, k0:k1, k0:k1] * inv[:, None, k0:k1]).permute(1, 2, 0).unsqueeze(-1).contiguous()
        new = torch.empty_like(old)
        dK = torch.empty_like(old)
        ws, olds, news, ds, steps = w.unbind(0), old.unbind(0), new.unbind(0), dK.unbind(0), step.unbind(0)
        for j in range(k1 - k0):
            z = torch.add(ws[j], olds[j], out=news[j])
            z.clamp_(-1.0, 1.0).round_()
            d = torch.sub(z, olds[j], out=ds[j])
            w.addcmul_(steps[j], d)  # (B, G, 1) * (G, M)
        if bool(dK.any()):
            changed = True
            plane[..., k0:k1] = new.permute(1, 2, 0)
            _add_block_update(Hq, dK, H, k0, base)
    return changed


def _alternate(H: Tensor, b: Tensor, yy: Tensor, q0: Tensor, a0: Tensor, iters: int, tol: float,
               sweep: Callable[[Tensor, Tensor, Tensor], tuple[bool, Tensor]],
               flip: Callable[[Tensor], None] | None = None) -> tuple[list, Tensor, int]:
    """The alternating driver of ``bit_split`` and ``log_quant``: alpha <- its closed form (Eq. 14 / 21, a
    negative alpha folded into q's sign, ``flip`` told of it), keep the best (q, alpha) per row, stop (rules
    of ``bit_split``) or ``sweep(q, Hq, alpha) -> (changed, q)`` the integers. Returns (best, err_init, passes)."""
    alpha = a0
    q = q0.to(_F64)
    Hq = torch.matmul(q, H)
    err_init = _quad_error(b, yy, q, Hq, alpha)
    best = [q.clone(), alpha.clone(), err_init.clone()]
    changed, n_it, prev = True, 0, None
    for it in range(iters + 1):
        alpha, sign = _alpha_step(b, q, Hq, alpha)
        if bool((sign < 0).any()):
            s = sign[..., None]
            q, Hq = q * s, Hq * s
            if flip is not None:
                flip(s)
        err = _quad_error(b, yy, q, Hq, alpha)
        _keep_best(best, q, alpha, err)
        if it == iters or not changed or _stalled(prev, err, tol):
            break
        prev = err
        changed, q = sweep(q, Hq, alpha)
        n_it += 1
    return best, err_init, n_it


@torch.no_grad()
def bit_split(W: Tensor, X: Tensor, Y: Tensor, bits: int, iters: int = 30, tol: float = 1e-4,
              block: int = 64) -> BitSplitResult:
    """Bit-Split & Stitching (Sec. 3.3.1, Algorithm 1 lines 10-20) for b-bit symmetric uniform weights.

    1. Eq. 12: TF-Lite init ``(q0, alpha0)`` (``err_init`` is its error).
    2. Eq. 13: split q0 into b-1 ternary planes (``split_bits``).
    3. Repeat ("while alpha not converge"): alpha <- Eq. 14; for each plane m, one cyclic pass of Eq. 15-18
       (``_sweep_plane``); stitch with Eq. 19. Stops when q (hence alpha) no longer changes, when the mean
       relative error decrease of an iteration is <= ``tol`` (0 disables), or after ``iters`` passes; the
       last q gets its alpha from Eq. 14 too.
    Each plane gets one cyclic pass per iteration (as in the authors' code). Every (q, alpha*(q)) iterate and the
    plain TF-Lite init are candidates; the lowest-error one per row is returned, so ``err_final <= err_init``.
    Stitched q lies on [-(2^(b-1)-1), 2^(b-1)-1]; alpha > 0 (a negative Eq. 14 alpha is folded into q's sign).
    ``bits`` in [3, 16]; ``block``: coordinates per lazy ``Hq`` update (speed only, results do not depend on it).
    """
    _check_uniform_bits(bits)
    H, b, yy, hdiag = _prepare("bit_split", X, Y, W, iters, block)
    q0, a0 = tflite_init(W.to(X.device), bits)
    planes = [split_bits(q0, bits).to(_F64)]  # (b-1, G, M, D), replaced when a sign flips

    def flip(s: Tensor) -> None:
        planes[0] = planes[0] * s

    def sweep(q: Tensor, Hq: Tensor, alpha: Tensor) -> tuple[bool, Tensor]:
        changed = False
        for p in range(bits - 1):  # Eq. 15-18, plane p has base 2^p
            changed |= _sweep_plane(H, hdiag, b, Hq, planes[0][p], alpha, float(2 ** p), block)
        return changed, stitch_bits(planes[0])  # Eq. 19 (Hq was kept equal to q H by the passes)

    best, err_init, n_it = _alternate(H, b, yy, q0, a0, iters, tol, sweep, flip)  # alpha: Eq. 14
    return _finish(best, q0, a0, b, yy, H, err_init, n_it)


# ---------------------------------------------------------------------------------------------- logarithmic


def log_values(bits: int) -> Tensor:
    """The M-bit logarithmic set (Sec. 3.3.2): one sign bit and an (M-1)-bit exponent code, one code for zero:
    {0} U {+-2^k : k = 0 .. 2^(M-1) - 2}. M=2: {0, +-1}; M=3: {0, +-1, +-2, +-4}; M=4: {0, +-1, ..., +-64}
    (2^M codes, 2^M - 1 distinct values, |q| <= 64 fits int8). Returns sorted int64."""
    _check_log_bits(bits)
    mags = 2 ** torch.arange(2 ** (bits - 1) - 1, dtype=torch.int64)
    return torch.cat([-mags.flip(0), torch.zeros(1, dtype=torch.int64), mags])


@torch.no_grad()
def log_init(W: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Initialization for ``log_quant`` (TF-Lite analogue of Eq. 12): alpha = max|w| / 2^(2^(M-1)-2) so the
    largest weight maps to the largest set value, q = nearest value of ``log_values(bits)`` to w / alpha (ties
    to the lower value). The paper does not state its log init; this mirrors Eq. 12. Zero rows get alpha = 1,
    q = 0. ``W`` (..., D) -> q int64 (..., D), alpha float64 (...)."""
    W = W.to(_F64)
    amax = W.abs().amax(-1)
    alpha = torch.where(amax > 0, amax / float(log_values(bits)[-1]), torch.ones_like(amax))
    return nearest_q(W, alpha, bits, log=True), alpha


@torch.no_grad()
def _dcc_sweep(H: Tensor, hdiag: Tensor, b: Tensor, q: Tensor, Hq: Tensor, vals: Tensor, block: int = 64) -> bool:
    """One Discrete Cyclic Coordinate descent pass on Eq. 22 over the D coordinates, for all rows at once.

    For coordinate k with the rest q' = q - q_k e_k fixed (S0 = b.q', Q0 = q'.Hq', h0 = (Hq')_k), every set value
    v is tried: Eq. 22's ratio is (S0 + b_k v)^2 / (Q0 + 2 h0 v + H_kk v^2); the best value is taken only if it
    beats the current ratio by a relative 1e-12 (ties keep q_k, so the pass terminates). ``q``, ``Hq`` (G,M,D)
    are updated in place; returns whether any coordinate changed.
    """
    D = q.shape[-1]
    S = (b * q).sum(-1)
    Q = (q * Hq).sum(-1)
    floor = (1e-12 * hdiag.mean(-1).clamp_min(torch.finfo(_F64).tiny))[:, None, None]  # (G, 1, 1)
    R = S * S / torch.maximum(Q, floor[..., 0])  # current ratio of Eq. 22
    vals2 = 2.0 * vals
    cv2 = hdiag[:, :, None] * (vals * vals)  # (G, D, V): H_kk v^2
    bT = b.permute(2, 0, 1).contiguous()  # (D, G, M)
    changed = False
    for k0 in range(0, D, block):
        k1 = min(D, k0 + block)
        hq = Hq[..., k0:k1].permute(2, 0, 1).contiguous()  # (B, G, M)
        old = q[..., k0:k1].permute(2, 0, 1).contiguous()
        step = H[:, k0:k1, k0:k1].permute(1, 2, 0).unsqueeze(-1).contiguous()  # (B, B, G, 1)
        new = torch.empty_like(old)
        dK = torch.empty_like(old)
        hs, olds, news, ds, steps = hq.unbind(0), old.unbind(0), new.unbind(0), dK.unbind(0), step.unbind(0)
        for j in range(k1 - k0):
            k = k0 + j
            qk, h, bk = olds[j], hs[j], bT[k]
            c = hdiag[:, k, None]  # (G, 1)
            S0 = torch.addcmul(S, bk, qk, value=-1.0)
            h0 = torch.addcmul(h, c, qk, value=-1.0)
            Q0 = torch.addcmul(Q, qk, h + h0, value=-1.0)  # Q - 2 q_k h + H_kk q_k^2
            num = torch.addcmul(S0[..., None], bk[..., None], vals).square_()
            den = (Q0[..., None] + cv2[:, k, None, :]).addcmul_(h0[..., None], vals2)
            rbest, ibest = num.div_(torch.maximum(den, floor)).max(-1)
            take = rbest > R * (1.0 + 1e-12)
            vnew = torch.where(take, vals[ibest], qk, out=news[j])
            d = torch.sub(vnew, qk, out=ds[j])
            S = torch.addcmul(S0, bk, vnew)
            Q = torch.addcmul(Q0, vnew, h0 + torch.addcmul(h0, c, vnew))  # Q0 + 2 h0 v + H_kk v^2
            R = torch.where(take, rbest, R)
            hq.addcmul_(steps[j], d)
        if bool(dK.any()):
            changed = True
            q[..., k0:k1] = new.permute(1, 2, 0)
            _add_block_update(Hq, dK, H, k0)
    return changed


@torch.no_grad()
def log_quant(W: Tensor, X: Tensor, Y: Tensor, bits: int, iters: int = 30, tol: float = 1e-4,
              block: int = 64) -> BitSplitResult:
    """Logarithmic weight quantization (Sec. 3.3.2): q in ``log_values(bits)``, alpha per row.

    Init with ``log_init`` (``err_init`` is its error), then repeat alpha <- Eq. 21; one DCC pass maximizing
    Eq. 22 (``_dcc_sweep``), with the stopping rules of ``bit_split``; the last q gets its alpha too. The
    lowest-error candidate per row (the init included) is returned, so ``err_final <= err_init``; alpha > 0.
    """
    _check_log_bits(bits)
    H, b, yy, hdiag = _prepare("log_quant", X, Y, W, iters, block)
    q0, a0 = log_init(W.to(X.device), bits)
    vals = log_values(bits).to(device=X.device, dtype=_F64)

    def sweep(q: Tensor, Hq: Tensor, alpha: Tensor) -> tuple[bool, Tensor]:
        return _dcc_sweep(H, hdiag, b, q, Hq, vals, block), q  # Eq. 22 (updates q and Hq = q H in place)

    best, err_init, n_it = _alternate(H, b, yy, q0, a0, iters, tol, sweep)  # alpha: Eq. 21
    return _finish(best, q0, a0, b, yy, H, err_init, n_it)


@torch.no_grad()
def nearest_q(W: Tensor, alpha: Tensor, bits: int, log: bool = False) -> Tensor:
    """The grid point nearest to w / alpha for a given per-row alpha (the rounding of Eq. 12 and ``log_init``,
    also used at other scales): uniform ``round(w / alpha)`` on [-(2^(b-1)-1), 2^(b-1)-1] (ties to even), or the nearest
    value of ``log_values(bits)`` (ties to the lower value). ``W`` (..., D), ``alpha`` (...) > 0 -> int64 (..., D).
    """
    W = W.to(_F64)
    r = W / alpha.to(W)[..., None]
    if not log:  # bits are checked by the callers (tflite_init also takes 2 bits)
        return torch.round(r).clamp(-_qmax(bits), _qmax(bits)).to(torch.int64)
    vals = log_values(bits).to(device=W.device, dtype=_F64)
    mid = 0.5 * (vals[1:] + vals[:-1])  # decision thresholds between consecutive set values
    return vals[torch.bucketize(r.contiguous(), mid)].to(torch.int64)
