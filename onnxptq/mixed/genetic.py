"""Budget-constrained bit-width search by genetic algorithm (BRECQ Sec. 3.4 Eq. 12, Algorithm 2, Appendix B.4.2).

Problem (BRECQ Eq. 12): ``min_c L(c)  s.t.  H(c) <= delta,  c in choices^n``. The fitness is the total
sensitivity (lower is better), the diagonal loss plus the intra-block off-diagonal loss of Sec. 3.4::

    L(c) = sum_l diag[(l, c_l)] + sum_{((a, b_a), (b, b_b)) in offdiag, c_a == b_a, c_b == b_b} offdiag[...]

i.e. every off-diagonal term whose two (layer, bits) conditions both hold is added (BRECQ measures them only for
layer pairs inside one block and, in practice, only for 2-bit pairs; the search itself makes no such assumption).
A pair may be given in either order, but not in both.

Algorithm 2 as implemented, per generation: evaluate the population's fitness; merge it into TopK (the ``top_k``
best distinct configurations seen so far, sorted by fitness, ties by configuration); then breed a new
population of size S: S//2 children by uniform crossover of two TopK parents (each gene from either parent with
probability 1/2) and S - S//2 by mutation of one TopK parent (each gene, with probability ``mutation_prob``,
replaced by a different choice drawn uniformly). A child is kept only if ``cost_fn(child) <= budget``
(the paper writes ``<``; Eq. 12 writes ``<=``, which we follow); infeasible children are rejected and redrawn, and
after ``MAX_REDRAWS`` rounds of rejection the remaining slots are filled with repaired children (see below) so the
loop always terminates. The initial population is drawn uniformly and repaired. The final population is evaluated
too, so ``history`` holds ``iterations + 1`` values: the best fitness after the initial population and after each
generation (non-increasing, TopK is elitist).

Seeding and polish (practical additions, not in Algorithm 2): the initial population also holds every uniform
configuration that fits and the greedy knapsack solution (from all-minimum, repeatedly raise the one layer whose
next choice buys the largest loss decrease per unit of cost, while it fits), and the best configuration is
finally polished by local search (single-layer changes and one-up/one-down pairs that fit, while the loss
drops). Without them the search, started from random repaired configurations, returned on digits_resnet at the
unified 4-bit size a configuration with 5.7x the loss of all-4-bit (docs/design-notes.md section 10).

Repair lowers a randomly chosen layer whose bits are above the minimum by one choice until the cost fits; this
assumes ``cost_fn`` is non-decreasing in every layer's bits (true for size and BOPs) and that the all-minimum
configuration fits, which is checked up front (ValueError otherwise). Everything is deterministic for a seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MAX_REDRAWS = 20  # rejection rounds per half-population before infeasible children are repaired instead

Key = tuple[str, int]


@dataclass
class SearchResult:
    """Best configuration found: ``bits`` per layer, its ``fitness`` (total sensitivity) and ``cost`` H(c)."""

    bits: dict[str, int]
    fitness: float
    cost: float
    history: list[float] = field(default_factory=list)  # best fitness after the initial population and each generation
    seconds: float = 0.0


class _Fitness:
    """Vectorised BRECQ Eq. 12 loss over a population of choice indices (P, n_layers)."""

    def __init__(self, layers: list[str], choices: tuple[int, ...], diag: dict[Key, float],
                 offdiag: dict[tuple[Key, Key], float]) -> None:
        lidx = {name: i for i, name in enumerate(layers)}
        cidx = {b: j for j, b in enumerate(choices)}
        missing = [(name, b) for name in layers for b in choices if (name, b) not in diag]
        if missing:
            raise ValueError(f"diag lacks {len(missing)} (layer, bits) entries, e.g. {missing[:3]}")
        self.diag = np.array([[float(diag[(name, b)]) for b in choices] for name in layers], dtype=np.float64)
        terms: dict[tuple[int, int, int, int], float] = {}
        for pair, value in offdiag.items():
            try:
                (la, ba), (lb, bb) = pair
            except (TypeError, ValueError):
                raise ValueError(f"offdiag keys must be ((layer_a, bits_a), (layer_b, bits_b)), got {pair!r}") from None
            for name, b in ((la, ba), (lb, bb)):
                if name not in lidx or b not in cidx:
                    raise ValueError(f"offdiag key {pair!r}: unknown layer {name!r} or bits {b} not in {choices}")
            if la == lb:
                raise ValueError(f"offdiag key {pair!r} pairs a layer with itself")
            a, b_ = (lidx[la], cidx[ba]), (lidx[lb], cidx[bb])
            key = (*a, *b_) if a[0] < b_[0] else (*b_, *a)
            if key in terms:
                raise ValueError(f"offdiag pair {pair!r} is given in both orders")
            terms[key] = float(value)
        arr = np.array(list(terms), dtype=np.int64).reshape(-1, 4)
        self.ia, self.ka, self.ib, self.kb = arr.T
        self.values = np.array(list(terms.values()), dtype=np.float64)
        if not (np.all(np.isfinite(self.diag)) and np.all(np.isfinite(self.values))):
            raise ValueError("sensitivities must be finite")
        self.rows = np.arange(len(layers))

    def __call__(self, pop: np.ndarray) -> np.ndarray:
        fit = self.diag[self.rows, pop].sum(axis=1)
        if self.values.size:
            hit = (pop[:, self.ia] == self.ka) & (pop[:, self.ib] == self.kb)  # (P, terms)
            fit = fit + hit.astype(np.float64) @ self.values
        return fit


def total_sensitivity(bits: dict[str, int], diag: dict[Key, float],
                      offdiag: dict[tuple[Key, Key], float] | None = None) -> float:
    """BRECQ Eq. 12 loss of one configuration: diagonal terms plus every off-diagonal term whose pair matches."""
    total = sum(float(diag[(name, b)]) for name, b in bits.items())
    for ((la, ba), (lb, bb)), value in (offdiag or {}).items():
        if bits.get(la) == ba and bits.get(lb) == bb:
            total += float(value)
    return total


def genetic_search(layers: list[str], choices: tuple[int, ...] = (2, 4, 8), *,
                   diag: dict[Key, float], offdiag: dict[tuple[Key, Key], float] | None = None,
                   cost_fn: Callable[[dict[str, int]], float], budget: float,
                   population: int = 50, iterations: int = 100, mutation_prob: float = 0.1, top_k: int = 10,
                   seed: int = 0, seeded: bool = True) -> SearchResult:
    """BRECQ Algorithm 2: minimise the Eq. 12 sensitivity over ``choices^len(layers)`` with ``cost_fn(c) <= budget``.

    ``diag[(layer, bits)]`` must cover every layer and choice; ``offdiag`` holds the intra-block pair terms
    (added when both conditions hold). Raises ValueError if the all-minimum-bits configuration exceeds the budget.
    ``seeded=False``: Algorithm 2 alone (random initial population, no polish).
    """
    t0 = time.perf_counter()
    layers = list(layers)
    if not layers or len(set(layers)) != len(layers):
        raise ValueError("layers must be a non-empty list of distinct names")
    choices = tuple(sorted(int(b) for b in choices))
    if not choices or len(set(choices)) != len(choices):
        raise ValueError(f"choices must be distinct bit widths, got {choices}")
    if population < 2 or iterations < 0 or top_k < 1 or not 0.0 <= mutation_prob <= 1.0:
        raise ValueError("need population >= 2, iterations >= 0, top_k >= 1 and 0 <= mutation_prob <= 1")
    fitness = _Fitness(layers, choices, diag, offdiag or {})
    n, k = len(layers), len(choices)
    rng = np.random.default_rng(seed)
    cache: dict[bytes, float] = {}

    def to_bits(row: np.ndarray) -> dict[str, int]:
        return {name: choices[j] for name, j in zip(layers, row.tolist())}

    def cost(row: np.ndarray) -> float:
        key = row.tobytes()
        if key not in cache:
            cache[key] = float(cost_fn(to_bits(row)))
        return cache[key]

    def feasible(rows: np.ndarray) -> np.ndarray:
        return np.array([cost(r) <= budget for r in rows], dtype=bool)

    floor = np.zeros(n, dtype=np.int64)
    if not cost(floor) <= budget:
        raise ValueError(f"budget {budget:g} is infeasible: even all layers at {choices[0]} bits cost {cost(floor):g}")

    def repair(row: np.ndarray) -> np.ndarray:
        row = row.copy()
        while cost(row) > budget:
            above = np.flatnonzero(row > 0)  # non-empty: all-minimum fits, so we stop before reaching it at worst
            row[above[rng.integers(above.size)]] -= 1
        return row

    def breed(count: int, make: Callable[[int], np.ndarray]) -> np.ndarray:
        kept: list[np.ndarray] = []
        for _ in range(MAX_REDRAWS):
            cand = make(count - len(kept))
            kept.extend(cand[feasible(cand)])
            if len(kept) >= count:
                break
        else:
            kept.extend(repair(r) for r in make(count - len(kept)))
        return np.stack(kept[:count]).astype(np.int64)

    def one(row: np.ndarray) -> float:
        return float(fitness(row[None])[0])

    def greedy() -> np.ndarray:
        row = floor.copy()
        while True:
            ups = np.flatnonzero(row < k - 1)
            cands = np.repeat(row[None], ups.size, axis=0)
            cands[np.arange(ups.size), ups] += 1
            ok = feasible(cands) if ups.size else np.zeros(0, dtype=bool)
            if not ok.any():
                return row
            cands = cands[ok]
            gain = one(row) - fitness(cands)
            dc = np.array([cost(c) for c in cands]) - cost(row)
            ratio = np.where(dc > 0, gain / np.maximum(dc, 1e-300), np.where(gain > 0, np.inf, -np.inf))
            best = int(np.argmax(ratio))
            if gain[best] <= 0:
                return row
            row = cands[best]

    def polish(row: np.ndarray) -> np.ndarray:
        """Local search: single-layer changes and (one layer up, another down) pairs that fit, best first."""
        cur = one(row)
        while True:
            moves = []
            for i in range(n):
                for j in range(k):
                    if j != row[i]:
                        c = row.copy()
                        c[i] = j
                        moves.append(c)
            ups, downs = np.flatnonzero(row < k - 1), np.flatnonzero(row > 0)
            for i in ups:
                for j in downs:
                    if i != j:
                        c = row.copy()
                        c[i] += 1
                        c[j] -= 1
                        moves.append(c)
            if not moves:
                return row
            cands = np.stack(moves)
            fit = fitness(cands)
            for idx in np.argsort(fit, kind="stable"):
                if fit[idx] >= cur:
                    return row
                if cost(cands[idx]) <= budget:
                    row, cur = cands[idx], float(fit[idx])
                    break
            else:
                return row

    seeds = []
    if seeded:
        uniform = [np.full(n, j, dtype=np.int64) for j in range(k)]
        seeds = ([r for r in uniform if cost(r) <= budget] + [greedy()])[:population]
    randoms = [repair(r) for r in rng.integers(0, k, size=(population - len(seeds), n))]
    pop = np.stack(seeds + randoms)
    top = np.zeros((0, n), dtype=np.int64)
    top_fit = np.zeros(0)
    history: list[float] = []
    for gen in range(iterations + 1):
        # Evaluate and update TopK: the top_k best distinct configurations seen so far.
        merged = np.concatenate([top, pop])
        merged_fit = np.concatenate([top_fit, fitness(pop)])
        merged, first = np.unique(merged, axis=0, return_index=True)
        merged_fit = merged_fit[first]
        order = np.lexsort((*merged.T[::-1], merged_fit))[:top_k]  # fitness, then configuration
        top, top_fit = merged[order], merged_fit[order]
        history.append(float(top_fit[0]))
        if gen == iterations:
            break

        def crossover(m: int) -> np.ndarray:
            parents = rng.integers(0, len(top), size=(m, 2))
            mask = rng.random((m, n)) < 0.5
            return np.where(mask, top[parents[:, 0]], top[parents[:, 1]])

        def mutate(m: int) -> np.ndarray:
            parent = top[rng.integers(0, len(top), size=m)]
            mask = rng.random((m, n)) < mutation_prob
            other = (parent + rng.integers(1, k, size=(m, n))) % k if k > 1 else parent
            return np.where(mask, other, parent)

        half = population // 2
        pop = np.concatenate([breed(half, crossover), breed(population - half, mutate)])
    best = polish(top[0]) if seeded else top[0]
    best_fit = one(best)
    if best_fit < history[-1]:
        history.append(best_fit)
    return SearchResult(bits=to_bits(best), fitness=best_fit, cost=cost(best), history=history,
                        seconds=time.perf_counter() - t0)
