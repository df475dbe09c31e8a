"""Bit-Split & Stitching and logarithmic weight quantization (onnxptq.recon.bitsplit): hand-computed values of
Eq. 12/14, the split/stitch helpers (Eq. 13/19), the vectorized Eq. 18 and Eq. 22 passes against literal per-row
implementations, and the guarantees (never worse than the initialization, values on the grid / log set)."""
from __future__ import annotations

import itertools

import pytest
import torch

from onnxptq.recon.bitsplit import (_add_block_update, _dcc_sweep, _stats, _sweep_plane, bit_split, log_init,
                                    log_quant, log_values, optimal_alpha, reconstruction_error, split_bits,
                                    stitch_bits, tflite_init)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems: intra-op threads only add contention (conftest sets cpu_count // workers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def problem(seed: int, G: int = 1, N: int = 200, D: int = 12, M: int = 6, corr: float = 0.0, noise: float = 0.0):
    """Random layer: X (G,N,D) (optionally with correlated columns), W (G,M,D), Y = X W^T (+ noise)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(G, N, D, generator=g, dtype=F64)
    if corr:
        mix = torch.eye(D, dtype=F64) + corr * torch.randn(G, D, D, generator=g, dtype=F64) / D ** 0.5
        X = torch.relu(X @ mix)
    W = torch.randn(G, M, D, generator=g, dtype=F64) / D ** 0.5
    Y = X @ W.transpose(1, 2) + noise * torch.randn(G, N, M, generator=g, dtype=F64)
    return X, Y, W


def close_or_below(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a <= b up to float64 rounding of the Gram-form errors."""
    return bool((a <= b + 1e-9 * (1.0 + b.abs())).all())


# ------------------------------------------------------------------------------------------ hand-computed


def test_tflite_init_eq12_hand_values():
    W = torch.tensor([[[1.0, 0.5, -0.25], [0.0, 0.0, 0.0], [-2.0, 0.2, 1.0]]])
    q, alpha = tflite_init(W, 3)  # qmax = 3
    assert torch.allclose(alpha, torch.tensor([[1 / 3, 1.0, 2 / 3]], dtype=F64))
    # w / alpha = [3, 1.5, -0.75] -> [3, 2, -1] (half to even); zero row -> 0; [-3, 0.3, 1.5] -> [-3, 0, 2]
    assert q.tolist() == [[[3, 2, -1], [0, 0, 0], [-3, 0, 2]]] and q.dtype == torch.int64


def test_optimal_alpha_eq14_hand_value_and_least_squares():
    X = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=F64)  # N=3, D=2
    q = torch.tensor([[[3, 2]]])
    Y = torch.tensor([[[1.0], [0.5], [1.5]]], dtype=F64)  # y = X [1, 0.5]
    # X q = [3, 2, 5]: y.Xq = 3 + 1 + 7.5 = 11.5, ||Xq||^2 = 9 + 4 + 25 = 38
    a = optimal_alpha(X, Y, q)
    assert torch.allclose(a, torch.tensor([[11.5 / 38]], dtype=F64))
    lstsq = torch.linalg.lstsq((X[0] @ q[0].T.to(F64)), Y[0]).solution
    assert torch.allclose(a, lstsq.T)
    err = reconstruction_error(X, Y, q, a)
    assert torch.allclose(err, torch.tensor([[3.5 - 11.5 ** 2 / 38]], dtype=F64))  # ||y||^2 - (y.Xq)^2/||Xq||^2
    # bit_split on this row: init q = [3, 2], alpha0 = 1/3; err_init = ||y - [1, 2/3, 5/3]||^2
    res = bit_split(torch.tensor([[[1.0, 0.5]]], dtype=F64), X, Y, 3)
    assert torch.allclose(res.err_init, torch.tensor([[0 + 1 / 36 + 1 / 36]], dtype=F64))
    assert float(res.err_final) <= float(err) + 1e-12  # at least the Eq. 14 re-scaled init
    assert torch.allclose(res.alpha, optimal_alpha(X, Y, res.q))
    assert torch.allclose(reconstruction_error(X, Y, res.q, res.alpha), res.err_final)


def test_brute_force_tiny_problem_bounds():
    """D=3, 3 bits: the result lies between the global optimum (exhaustive over 7^3 q) and the TF-Lite init."""
    grid = torch.tensor(list(itertools.product(range(-3, 4), repeat=3)), dtype=F64)  # (343, 3)
    for seed in range(5):
        X, Y, W = problem(seed, N=30, D=3, M=2, corr=1.0, noise=0.05)
        res = bit_split(W, X, Y, 3)
        Xq = X[0] @ grid.T  # (N, 343)
        num, den = Y[0].T @ Xq, (Xq * Xq).sum(0)  # (M, 343)
        best = (Y[0] ** 2).sum(0)[:, None] - torch.where(den > 0, num ** 2 / den.clamp_min(1e-300), 0.0)
        opt = best.min(1).values
        assert close_or_below(opt, res.err_final[0]) and close_or_below(res.err_final, res.err_init)


# ------------------------------------------------------------------------------------------ split / stitch


@pytest.mark.parametrize("bits", [3, 4, 5, 8])
def test_split_stitch_roundtrip_all_grid_values(bits):
    qmax = 2 ** (bits - 1) - 1
    q = torch.arange(-qmax, qmax + 1)
    planes = split_bits(q, bits)
    assert planes.shape == (bits - 1, q.numel())
    assert set(planes.unique().tolist()) <= {-1, 0, 1}
    assert bool(((planes * torch.sign(q)) >= 0).all())  # bit-split: one shared sign per integer
    assert torch.equal(stitch_bits(planes), q)
    assert torch.equal(stitch_bits(split_bits(q.reshape(1, 1, -1), bits)), q.reshape(1, 1, -1))
    # any ternary planes stitch onto the symmetric grid (Eq. 19), e.g. the paper's Fig. 1 example
    allp = torch.tensor(list(itertools.product([-1, 0, 1], repeat=bits - 1))).T
    s = stitch_bits(allp)
    assert int(s.abs().max()) == qmax
    if bits == 4:
        assert int(stitch_bits(torch.tensor([1, -1, -1]))) == -5
    with pytest.raises(ValueError):
        split_bits(torch.tensor([qmax + 1]), bits)


# ------------------------------------------------------------------------------------------ Eq. 18 / Eq. 22 passes


def test_sweep_plane_matches_literal_eq15_18():
    X, Y, W = problem(3, G=2, N=50, D=7, M=3, corr=1.0, noise=0.1)
    bits = 4
    H, b, yy, hdiag = _stats(X, Y)
    q0, alpha = tflite_init(W, bits)
    alpha = alpha * 1.1
    for m in range(bits - 1):
        planes = split_bits(q0, bits).to(F64)
        expect = planes[m].clone()
        for g in range(2):
            for o in range(3):
                # Eq. 16: y_m, alpha_m; Eq. 17: A, s; Eq. 18 cyclic over k (plane m has base 2^m here)
                rest = sum(2 ** i * planes[i, g, o] for i in range(bits - 1) if i != m)
                y_m = Y[g, :, o] - alpha[g, o] * X[g] @ rest
                a_m = alpha[g, o] * 2 ** m
                A = a_m ** 2 * X[g].T @ X[g]
                s = -2 * a_m * X[g].T @ y_m
                qm = expect[g, o]
                for k in range(7):
                    r = s[k] + 2 * (A[k] @ qm - A[k, k] * qm[k])
                    qm[k] = -torch.sign(r) if r.abs() > A[k, k] else 0.0
        Hq = stitch_bits(planes) @ H
        _sweep_plane(H, hdiag, b, Hq, planes[m], alpha, float(2 ** m), block=3)
        assert torch.equal(planes[m], expect)
        assert torch.allclose(Hq, stitch_bits(planes) @ H)


def test_dcc_sweep_matches_literal_eq22():
    X, Y, W = problem(4, G=2, N=60, D=6, M=3, corr=1.0, noise=0.1)
    H, b, _, hdiag = _stats(X, Y)
    vals = log_values(3).to(F64)
    q0, _ = log_init(W, 3)
    q = q0.to(F64)
    expect = q.clone()
    for g in range(2):
        for o in range(3):
            qq = expect[g, o]
            for k in range(6):
                def ratio(v):
                    t = qq.clone()
                    t[k] = v
                    den = t @ H[g] @ t
                    return float((b[g, o] @ t) ** 2 / den) if den > 0 else 0.0
                scores = [ratio(v) for v in vals]
                i = max(range(len(vals)), key=lambda j: scores[j])
                if scores[i] > ratio(qq[k]) * (1 + 1e-12):
                    qq[k] = vals[i]
    Hq = q @ H
    _dcc_sweep(H, hdiag, b, q, Hq, vals, block=4)
    assert torch.equal(q, expect)
    assert torch.allclose(Hq, q @ H)


@pytest.mark.parametrize("density", [0.02, 0.5])  # row-by-row and matmul paths
def test_add_block_update_paths(density):
    g = torch.Generator().manual_seed(5)
    G, M, D, B, k0 = 3, 7, 20, 6, 8
    H = torch.randn(G, D, D, generator=g, dtype=F64)
    dK = torch.randint(-2, 3, (B, G, M), generator=g).to(F64) * (torch.rand(B, G, M, generator=g) < density)
    Hq = torch.randn(G, M, D, generator=g, dtype=F64)
    expect = Hq + 4.0 * torch.einsum("jgm,gjd->gmd", dK, H[:, k0:k0 + B, :])
    _add_block_update(Hq, dK, H, k0, 4.0)
    assert torch.allclose(Hq, expect)


def test_results_do_not_depend_on_block_size():
    X, Y, W = problem(21, G=2, N=300, D=140, M=6, corr=1.5, noise=0.1)
    for fn, bits in ((bit_split, 4), (log_quant, 3)):
        a = fn(W, X, Y, bits, iters=5)
        b = fn(W, X, Y, bits, iters=5, block=7)
        assert torch.equal(a.q, b.q) and torch.allclose(a.alpha, b.alpha)
        assert close_or_below(a.err_final, a.err_init)


# ------------------------------------------------------------------------------------------ guarantees


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
def test_bit_split_never_worse_than_init_and_on_grid(bits):
    qmax = 2 ** (bits - 1) - 1
    for seed in range(12):
        G = 1 + seed % 3
        X, Y, W = problem(100 * bits + seed, G=G, N=80, D=10 + seed, M=5, corr=seed % 2, noise=0.2 * (seed % 3))
        res = bit_split(W, X, Y, bits, iters=15)
        assert res.q.dtype == torch.int64 and res.q.shape == W.shape and res.alpha.shape == (G, 5)
        assert int(res.q.abs().max()) <= qmax and bool((res.alpha > 0).all())
        assert close_or_below(res.err_final, res.err_init)
        q0, a0 = tflite_init(W, bits)
        assert torch.allclose(reconstruction_error(X, Y, q0, a0), res.err_init, rtol=1e-8, atol=1e-9)
        assert torch.allclose(reconstruction_error(X, Y, res.q, res.alpha), res.err_final, rtol=1e-8, atol=1e-9)
        assert torch.allclose(res.alpha, optimal_alpha(X, Y, res.q), rtol=1e-6)


def test_bit_split_beats_tflite_on_correlated_inputs():
    ratios = []
    for bits in (3, 4):
        for seed in range(3):
            X, Y, W = problem(7 + seed, N=400, D=32, M=16, corr=2.0)
            res = bit_split(W, X, Y, bits)
            assert close_or_below(res.err_final, res.err_init)
            ratios.append(float((res.err_final / res.err_init).mean()))
    assert max(ratios) < 0.9 and sum(ratios) / len(ratios) < 0.8, ratios


def test_grouped_rows_are_independent():
    X, Y, W = problem(11, G=3, N=60, D=9, M=4, corr=1.0, noise=0.1)
    for fn, bits in ((bit_split, 4), (log_quant, 3)):
        joint = fn(W, X, Y, bits, iters=200, tol=0.0)
        for g in range(3):
            alone = fn(W[g:g + 1], X[g:g + 1], Y[g:g + 1], bits, iters=200, tol=0.0)
            assert torch.equal(joint.q[g:g + 1], alone.q)
            assert torch.allclose(joint.alpha[g:g + 1], alone.alpha)


def test_log_values_documented_sets():
    assert log_values(2).tolist() == [-1, 0, 1]
    assert log_values(3).tolist() == [-4, -2, -1, 0, 1, 2, 4]
    assert log_values(4).tolist() == [-64, -32, -16, -8, -4, -2, -1, 0, 1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_log_quant_values_int8_and_never_worse(bits):
    allowed = set(log_values(bits).tolist())
    for seed in range(4):
        G = 1 + seed % 2
        X, Y, W = problem(500 + 10 * bits + seed, G=G, N=80, D=12, M=5, corr=seed % 2, noise=0.1 * seed)
        res = log_quant(W, X, Y, bits, iters=10)
        assert set(res.q.unique().tolist()) <= allowed
        assert int(res.q.abs().max()) <= 127
        assert torch.equal(res.q.to(torch.int8).to(torch.int64), res.q)
        assert bool((res.alpha > 0).all()) and close_or_below(res.err_final, res.err_init)
        q0, a0 = log_init(W, bits)
        assert set(q0.unique().tolist()) <= allowed
        assert torch.allclose(reconstruction_error(X, Y, q0, a0), res.err_init, rtol=1e-8, atol=1e-9)
        assert torch.allclose(reconstruction_error(X, Y, res.q, res.alpha), res.err_final, rtol=1e-8, atol=1e-9)


def test_log_quant_improves_on_its_init():
    X, Y, W = problem(9, N=300, D=24, M=8, corr=2.0)
    res = log_quant(W, X, Y, 4)
    assert float((res.err_final / res.err_init).mean()) < 0.9


# ------------------------------------------------------------------------------------------ edge cases


def test_invalid_bits_raise():
    X, Y, W = problem(0, N=20, D=4, M=2)
    for bad in (0, 1, 2, 17, 3.0, True):
        with pytest.raises(ValueError, match="bit"):
            bit_split(W, X, Y, bad)
    for bad in (0, 1, 5, 8, 2.0):
        with pytest.raises(ValueError, match="bit"):
            log_quant(W, X, Y, bad)
        with pytest.raises(ValueError):
            log_values(bad)
    with pytest.raises(ValueError):
        split_bits(torch.tensor([1]), 2)
    with pytest.raises(ValueError):
        bit_split(W, X, Y[:, :10], 4)  # N mismatch
    with pytest.raises(ValueError):
        bit_split(W[:, :, :3], X, Y, 4)  # D mismatch


def test_zero_rows_and_dead_inputs_are_finite():
    X, Y, W = problem(1, G=2, N=40, D=6, M=4)
    W[0, 1] = 0.0
    W[1, :] = 0.0
    X[:, :, 2] = 0.0  # a dead input column: H_kk = 0
    Y = X @ W.transpose(1, 2)
    for res in (bit_split(W, X, Y, 4), log_quant(W, X, Y, 3), bit_split(W.float(), X.float(), Y.float(), 3)):
        for t in (res.alpha, res.err_init, res.err_final):
            assert bool(torch.isfinite(t).all())
        assert bool((res.q[0, 1] == 0).all()) and bool((res.q[1] == 0).all())
        assert float(res.err_final[0, 1]) == 0.0 and bool((res.alpha > 0).all())
        assert res.alpha.dtype == F64 and close_or_below(res.err_final, res.err_init)


def test_negative_alpha_is_folded_into_q():
    """Y -> -Y: Eq. 14 gives a negative alpha for the init; it is folded into q, so q flips and alpha stays > 0."""
    X, Y, W = problem(13, N=100, D=16, M=5, corr=1.0, noise=0.1)
    pos, neg = bit_split(W, X, Y, 4), bit_split(W, X, -Y, 4)
    assert torch.equal(neg.q, -pos.q) and torch.allclose(neg.alpha, pos.alpha) and bool((neg.alpha > 0).all())
    assert torch.allclose(neg.err_final, pos.err_final) and bool((neg.err_init > pos.err_init).all())
