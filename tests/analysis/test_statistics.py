"""Streaming statistics equal the direct computation, in any batching."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from gcnn.analysis.statistics import CORRELATION_EPS, PairStatistics, as_samples


def _direct_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    sa, sb = as_samples(a), as_samples(b)
    ca, cb = sa - sa.mean(0), sb - sb.mean(0)
    cov = ca.T @ cb / sa.shape[0]
    std_a, std_b = ca.pow(2).mean(0).sqrt(), cb.pow(2).mean(0).sqrt()
    return cov / (torch.outer(std_a, std_b) + CORRELATION_EPS)


@given(
    channels=st.integers(1, 6),
    spatial=st.sampled_from([(), (3,), (2, 5)]),
    splits=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_direct_in_any_batching(channels, spatial, splits, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    n = sum(splits)
    a = torch.randn(n, channels, *spatial, generator=g) * 3 + 1
    b = torch.randn(n, channels, *spatial, generator=g) + a.roll(1, dims=1)
    stats = PairStatistics(channels)
    for chunk_a, chunk_b in zip(a.split(splits), b.split(splits), strict=True):
        stats.update(chunk_a, chunk_b)
    assert stats.count == as_samples(a).shape[0]
    torch.testing.assert_close(stats.correlation(), _direct_correlation(a, b))
    perm = torch.randperm(channels, generator=g)
    sa, sb = as_samples(a), as_samples(b)
    direct = float((sa - sb[:, perm]).pow(2).sum() / sa.pow(2).sum())
    assert abs(stats.relative_sq_error(perm) - direct) <= 1e-9 * max(1.0, direct)


def test_identical_activations_have_zero_error_and_unit_correlation() -> None:
    a = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    stats = PairStatistics(4)
    stats.update(a, a)
    assert stats.relative_sq_error() < 1e-14
    assert torch.all(stats.correlation().diagonal() > 0.99)
    shuffled = PairStatistics(4)
    shuffled.update(a, a[:, [1, 0, 3, 2]])  # the negative control: channels swapped
    assert shuffled.relative_sq_error() > 0.5
    assert shuffled.relative_sq_error(torch.tensor([1, 0, 3, 2])) < 1e-14


def test_mismatched_shapes_are_rejected() -> None:
    stats = PairStatistics(3)
    try:
        stats.update(torch.zeros(2, 3), torch.zeros(2, 4))
    except ValueError as err:
        assert "do not fit" in str(err)
    else:
        raise AssertionError("expected a ValueError")
