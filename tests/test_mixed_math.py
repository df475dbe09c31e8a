"""Mixed-precision math: coding length (Attention Round Eq. 12), Algorithm 1 allocation, budgets and BRECQ's GA."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from onnxptq.mixed import (SearchResult, allocate_bits, bops, coding_length, genetic_search, kmeans_1d,
                           layer_size_bytes, model_size_bytes, parse_count, parse_size, total_sensitivity)


def _direct(W: np.ndarray, eps: float) -> float:
    """Eq. 12 literally with the paper's W in R^{n x m} (columns are the vectors): n x n log2 det."""
    n, m = W.shape
    sign, logdet = np.linalg.slogdet(np.eye(n) + n / (m * eps ** 2) * W @ W.T)
    assert sign > 0
    return 0.5 * logdet / math.log(2.0)


# ---------------------------------------------------------------- coding length

@pytest.mark.parametrize("shape", [(3, 7), (7, 3), (5, 5), (1, 4), (6, 1)])
@pytest.mark.parametrize("eps", [0.1, 0.5, 2.0])
def test_coding_length_matches_direct_logdet(shape: tuple[int, int], eps: float) -> None:
    W = np.random.default_rng(sum(shape)).normal(size=shape)
    # "columns": the matrix is the paper's W; "rows" (default): the rows are the vectors, i.e. the paper's W is W^T.
    assert coding_length(W, eps, vectors="columns") == pytest.approx(_direct(W, eps), rel=1e-10, abs=1e-10)
    assert coding_length(W, eps) == pytest.approx(_direct(W.T, eps), rel=1e-10, abs=1e-10)


def test_coding_length_conv_reshape_and_float32() -> None:
    W = np.random.default_rng(0).normal(scale=0.1, size=(8, 3, 3, 3)).astype(np.float32)
    expect = _direct(W.reshape(8, -1).astype(np.float64).T, 0.5)
    assert coding_length(W) == pytest.approx(expect, rel=1e-9)


def test_coding_length_zero_and_monotone_in_scale() -> None:
    assert coding_length(np.zeros((4, 9))) == 0.0
    assert coding_length(np.zeros((4, 9)), vectors="columns") == 0.0
    W = np.random.default_rng(1).normal(size=(16, 36))
    values = [coding_length(s * W) for s in (0.01, 0.1, 1.0, 10.0)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert coding_length(W, eps=1.0) < coding_length(W, eps=0.1)  # tighter tolerance costs more bits


def test_coding_length_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        coding_length(np.ones(5))
    with pytest.raises(ValueError):
        coding_length(np.ones((2, 2)), eps=0.0)
    with pytest.raises(ValueError):
        coding_length(np.ones((2, 2)), vectors="diagonal")  # type: ignore[arg-type]


# ---------------------------------------------------------------- k-means and Algorithm 1

def test_kmeans_1d_exact_clusters() -> None:
    values = [10.2, 0.1, 5.0, 10.0, 0.0, 5.1, 0.2, 9.9, 4.9]
    labels, centers = kmeans_1d(values, 3)
    np.testing.assert_allclose(centers, [0.1, 5.0, 10.033333333333333])
    np.testing.assert_array_equal(labels, [2, 0, 1, 2, 0, 1, 0, 2, 1])


def test_kmeans_1d_is_optimal_against_brute_force() -> None:
    x = np.random.default_rng(3).normal(size=9)
    order = np.sort(x)
    best = min(sum(((g - g.mean()) ** 2).sum() for g in np.split(order, cuts))
               for cuts in itertools.combinations(range(1, 9), 2))
    labels, centers = kmeans_1d(x, 3)
    assert sum(((x - centers[labels]) ** 2)) == pytest.approx(best, rel=1e-12)


def test_kmeans_1d_k_exceeds_distinct_values() -> None:
    labels, centers = kmeans_1d([3.0, 1.0, 3.0, 1.0], 5)
    np.testing.assert_array_equal(centers, [1.0, 3.0])
    np.testing.assert_array_equal(labels, [1, 0, 1, 0])
    labels, centers = kmeans_1d([2.0, 2.0], 3)
    np.testing.assert_array_equal(labels, [0, 0])
    assert kmeans_1d([], 2)[0].size == 0


def test_allocate_bits_ascending() -> None:
    lengths = {"first": 900.0, "down": 12.0, "mid_a": 300.0, "mid_b": 310.0, "down2": 15.0, "last": 880.0,
               "mid_c": 500.0, "mid_d": 520.0}
    assert allocate_bits(lengths, [6, 3, 5, 4]) == {"first": 6, "down": 3, "mid_a": 4, "mid_b": 4, "down2": 3,
                                                   "last": 6, "mid_c": 5, "mid_d": 5}
    # fewer distinct lengths than bit widths: the clusters take the smallest widths in order
    assert allocate_bits({"a": 1.0, "b": 2.0, "c": 1.0}, [3, 4, 5, 6]) == {"a": 3, "b": 4, "c": 3}
    assert allocate_bits({}, [4, 8]) == {}
    with pytest.raises(ValueError):
        allocate_bits({"a": 1.0}, [])
    with pytest.raises(ValueError):
        allocate_bits({"a": 1.0}, [4, 4])


# ---------------------------------------------------------------- size, BOPs, parsing

def test_size_and_bops_hand_computed() -> None:
    assert layer_size_bytes(1000, 4) == 500.0
    assert layer_size_bytes(3, 3) == 1.125
    weights = {"a": 1000, "b": 64}
    assert model_size_bytes(weights, {"a": 8, "b": 2}) == 1000 + 16
    assert model_size_bytes(weights, {"a": 4, "b": 4}, fixed_bytes=100) == 500 + 32 + 100
    with pytest.raises(ValueError):
        model_size_bytes(weights, {"a": 8})
    assert bops({"a": 100, "b": 10}, {"a": 4, "b": 8}, {"a": 8, "b": 2}) == 100 * 32 + 10 * 16
    with pytest.raises(ValueError):
        bops({"a": 100}, {"a": 4}, {"b": 8})


@pytest.mark.parametrize("text, expect", [
    ("1.5MB", 1.5e6), ("800kB", 8e5), ("800KB", 8e5), ("1200000", 1.2e6), ("1.2MiB", 1.2 * 2 ** 20),
    ("2 KiB", 2048.0), ("  3GB ", 3e9), ("512B", 512.0), ("1e6", 1e6), ("0.5M", 5e5), (".5mb", 5e5),
])
def test_parse_size(text: str, expect: float) -> None:
    assert parse_size(text) == pytest.approx(expect, rel=1e-15)


@pytest.mark.parametrize("text, expect", [
    ("3.2G", 3.2e9), ("500M", 5e8), ("1e9", 1e9), ("12k", 1.2e4), ("42", 42.0), ("3.2GBOPs", 3.2e9),
    ("1.5 T", 1.5e12), ("2.5e3M", 2.5e9),
])
def test_parse_count(text: str, expect: float) -> None:
    assert parse_count(text) == pytest.approx(expect, rel=1e-15)


@pytest.mark.parametrize("text", ["", "MB", "1.5XB", "abc", "-1MB", "1.5 M B", "1,5MB", "inf", "nan", "1e400"])
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["", "G", "3.2X", "3.2GB", "-5", "five", "1e400k"])
def test_parse_count_errors(text: str) -> None:
    with pytest.raises(ValueError, match="count"):
        parse_count(text)


# ---------------------------------------------------------------- genetic search

LAYERS = [f"l{i}" for i in range(6)]
CHOICES = (2, 4, 8)
NUM_WEIGHTS = {name: n for name, n in zip(LAYERS, [100, 400, 250, 800, 50, 300])}


def _problem(seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    diag = {}
    for name in LAYERS:
        base = rng.uniform(0.5, 5.0)
        diag.update({(name, 2): base, (name, 4): base * rng.uniform(0.05, 0.2), (name, 8): base * 0.01})
    # intra-block 2-bit interactions (blocks {l0,l1,l2} and {l3,l4,l5}), one given in reversed order
    offdiag = {(("l0", 2), ("l1", 2)): 1.5, (("l2", 2), ("l1", 2)): 0.8, (("l0", 2), ("l2", 2)): -0.3,
               (("l3", 2), ("l4", 2)): 2.0, (("l4", 2), ("l5", 2)): 1.0, (("l3", 4), ("l5", 2)): 0.4}
    return diag, offdiag


def _size(bits: dict[str, int]) -> float:
    return model_size_bytes(NUM_WEIGHTS, bits)


def _brute_force(diag: dict, offdiag: dict, budget: float) -> tuple[float, dict[str, int]]:
    best = (math.inf, {})
    for combo in itertools.product(CHOICES, repeat=len(LAYERS)):
        bits = dict(zip(LAYERS, combo))
        if _size(bits) <= budget:
            best = min(best, (total_sensitivity(bits, diag, offdiag), bits), key=lambda t: t[0])
    return best


@pytest.mark.parametrize("budget_bits", [2.5, 3.0, 4.0, 5.5])
def test_genetic_finds_brute_force_optimum(budget_bits: float) -> None:
    diag, offdiag = _problem()
    budget = sum(NUM_WEIGHTS.values()) * budget_bits / 8
    res = genetic_search(LAYERS, CHOICES, diag=diag, offdiag=offdiag, cost_fn=_size, budget=budget,
                         population=30, iterations=40, seed=0)
    best_fit, best_bits = _brute_force(diag, offdiag, budget)
    assert isinstance(res, SearchResult)
    assert res.fitness == pytest.approx(best_fit, rel=1e-12)
    assert res.bits == best_bits
    assert res.cost == _size(res.bits) <= budget
    assert res.fitness == pytest.approx(total_sensitivity(res.bits, diag, offdiag), rel=1e-12)
    assert len(res.history) == 41 and all(a >= b for a, b in zip(res.history, res.history[1:]))
    assert res.history[-1] == res.fitness and res.seconds >= 0


def test_genetic_uses_offdiag_and_improves_on_initial_population() -> None:
    diag, offdiag = _problem()
    budget = sum(NUM_WEIGHTS.values()) * 2.5 / 8
    # the intra-block terms change the optimum here, so the GA must be adding them
    assert _brute_force(diag, offdiag, budget)[1] != _brute_force(diag, {}, budget)[1]
    res = genetic_search(LAYERS, CHOICES, diag=diag, offdiag=offdiag, cost_fn=_size, budget=budget,
                         population=10, iterations=40, seed=0, seeded=False)
    assert res.bits == _brute_force(diag, offdiag, budget)[1]
    assert res.history[0] > res.fitness  # found by crossover/mutation, not by the initial sample


def test_seeded_search_never_loses_to_uniform_and_ends_at_a_local_optimum() -> None:
    """The seeds (uniform configurations that fit, the greedy knapsack) and the final polish: at the size of
    unified 4 bits the result is never worse than all-4, and no single change or one-up/one-down pair that
    fits improves it."""
    rng = np.random.default_rng(5)
    layers = [f"m{i}" for i in range(14)]
    sizes = {name: int(rng.integers(50, 5000)) for name in layers}
    diag = {}
    for name in layers:  # 2-bit far worse than 4, 8 a little better than 4 (the shape measured on real nets)
        s4 = float(rng.uniform(1e-4, 2e-3))
        diag.update({(name, 2): s4 * float(rng.uniform(20, 300)), (name, 4): s4, (name, 8): s4 / 300})

    def size(bits):
        return sum(sizes[name] * b / 8 for name, b in bits.items())

    uniform = {name: 4 for name in layers}
    budget = size(uniform)
    for seed in range(3):
        res = genetic_search(layers, CHOICES, diag=diag, cost_fn=size, budget=budget, population=20,
                             iterations=10, seed=seed)
        plain = genetic_search(layers, CHOICES, diag=diag, cost_fn=size, budget=budget, population=20,
                               iterations=10, seed=seed, seeded=False)
        assert res.fitness <= total_sensitivity(uniform, diag) + 1e-15 and res.fitness <= plain.fitness
        assert size(res.bits) <= budget
        idx = {b: j for j, b in enumerate(CHOICES)}
        for a in layers:
            for b in CHOICES:  # single changes
                c = {**res.bits, a: b}
                assert size(c) > budget or total_sensitivity(c, diag) >= res.fitness - 1e-15
            for z in layers:  # one layer up a choice, another down
                if a == z or idx[res.bits[a]] == len(CHOICES) - 1 or idx[res.bits[z]] == 0:
                    continue
                c = {**res.bits, a: CHOICES[idx[res.bits[a]] + 1], z: CHOICES[idx[res.bits[z]] - 1]}
                assert size(c) > budget or total_sensitivity(c, diag) >= res.fitness - 1e-15


def test_genetic_reproducible_and_always_feasible() -> None:
    diag, offdiag = _problem(1)
    budget = sum(NUM_WEIGHTS.values()) * 3.0 / 8
    seen: list[float] = []

    def cost(bits: dict[str, int]) -> float:
        seen.append(_size(bits))
        return seen[-1]

    runs = [genetic_search(LAYERS, CHOICES, diag=diag, offdiag=offdiag, cost_fn=cost, budget=budget,
                           population=20, iterations=10, seed=s) for s in (7, 7, 8)]
    assert runs[0].bits == runs[1].bits and runs[0].history == runs[1].history
    assert all(r.cost <= budget for r in runs)
    # a tight budget with a short search: the returned candidate still fits
    tight = sum(NUM_WEIGHTS.values()) * 2.2 / 8
    res = genetic_search(LAYERS, CHOICES, diag=diag, offdiag=offdiag, cost_fn=_size, budget=tight,
                         population=10, iterations=3, seed=3)
    assert _size(res.bits) <= tight
    # the all-minimum configuration exactly at the budget is feasible and the only choice
    floor = sum(NUM_WEIGHTS.values()) * 2 / 8
    res = genetic_search(LAYERS, CHOICES, diag=diag, cost_fn=_size, budget=floor, iterations=2)
    assert set(res.bits.values()) == {2}


def test_genetic_errors() -> None:
    diag, offdiag = _problem()
    with pytest.raises(ValueError, match="infeasible"):
        genetic_search(LAYERS, CHOICES, diag=diag, offdiag=offdiag, cost_fn=_size,
                       budget=sum(NUM_WEIGHTS.values()) * 2 / 8 - 1)
    with pytest.raises(ValueError, match="diag"):
        genetic_search(LAYERS, CHOICES, diag={k: v for k, v in diag.items() if k != ("l3", 4)}, cost_fn=_size,
                       budget=1e9)
    with pytest.raises(ValueError, match="both orders"):
        genetic_search(LAYERS, CHOICES, diag=diag, offdiag={(("l0", 2), ("l1", 2)): 1.0, (("l1", 2), ("l0", 2)): 1.0},
                       cost_fn=_size, budget=1e9)
    with pytest.raises(ValueError, match="unknown layer"):
        genetic_search(LAYERS, CHOICES, diag=diag, offdiag={(("l0", 3), ("l1", 2)): 1.0}, cost_fn=_size, budget=1e9)
