"""The best involutive matching is exact: brute force on small cases, planted ground truth."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnn.analysis.involution import (
    best_involution,
    greedy_involution,
    involution_score,
    is_involution,
)
from gcnn.analysis.matching import assignment


def _involutions(n: int):
    """Every involution of ``range(n)`` (brute force)."""
    for perm in itertools.permutations(range(n)):
        if all(perm[perm[i]] == i for i in range(n)):
            yield torch.tensor(perm)


def _score_matrix(n: int, seed: int, symmetric: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (s + s.T) / 2 if symmetric else s


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(0, 2**31 - 1), st.booleans())
def test_best_involution_equals_brute_force(n: int, seed: int, symmetric: bool) -> None:
    score = _score_matrix(n, seed, symmetric)
    found = best_involution(score)
    assert is_involution(found)
    best = max(involution_score(score, q) for q in _involutions(n))
    assert involution_score(score, found) >= best - 1e-7


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(0, 2**31 - 1))
def test_a_planted_involution_is_the_unconstrained_optimum_and_is_found(n, seed) -> None:
    """Correlations of a permuted GCNN layer: ~1 on a planted involution, small elsewhere."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    planted = torch.arange(n)
    for i in range(0, n - 1, 2):  # pair up channels perm[0]↔perm[1], …; odd one out is fixed
        planted[perm[i]], planted[perm[i + 1]] = perm[i + 1], perm[i]
    noise = 0.3 * torch.rand(n, n, generator=g, dtype=torch.float64)
    score = (noise + noise.T) / 2
    score[torch.arange(n), planted] = 1.0
    unconstrained = assignment(score)
    assert torch.equal(unconstrained, planted)
    assert torch.equal(best_involution(score), planted)


def test_the_best_permutation_can_beat_every_involution() -> None:
    """The negative control: a 3-cycle of high scores is no involution, so the gap is real."""
    score = torch.full((3, 3), 0.0, dtype=torch.float64)
    score[0, 1] = score[1, 2] = score[2, 0] = 1.0
    cycle = assignment(score)
    assert not is_involution(cycle) and involution_score(score, cycle) == 3.0
    assert involution_score(score, best_involution(score)) == 1.0  # one pair {c, d}: 1 + 0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_greedy_involution_is_an_involution_with_half_the_optimal_gain(n: int, seed: int) -> None:
    score = _score_matrix(n, seed, symmetric=True)
    greedy, best = greedy_involution(score), best_involution(score)
    assert is_involution(greedy)
    base = float(score.diagonal().sum())  # the identity: every channel fixed
    gain_greedy = involution_score(score, greedy) - base
    gain_best = involution_score(score, best) - base
    assert gain_best >= gain_greedy - 1e-9 and gain_greedy >= 0.5 * gain_best - 1e-9
