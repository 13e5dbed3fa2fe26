"""PairPool and InvariantLinear: invariance, export, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gcnn.nn import InvariantLinear, PairPool
from gcnn.testing import assert_flip_equivariant, flip_equivariance_error


@given(st.sampled_from(["mean", "max"]), st.integers(1, 3), st.integers(1, 4), st.integers(1, 7))
def test_pair_pool_maps_regular_to_trivial(mode: str, b: int, pairs: int, w: int) -> None:
    x = torch.randn(b, 2 * pairs, 3, w, dtype=torch.float64)
    assert_flip_equivariant(PairPool(mode), x, "regular", "trivial")
    assert PairPool(mode)(x).shape == (b, pairs, 3, w)


def test_pair_pool_of_a_non_regular_input_is_not_invariant() -> None:
    """Negative control: pooling neighbouring channels that are not a pair breaks it."""
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    shifted = nn.Sequential(nn.Identity())
    shifted.forward = lambda t: PairPool("mean")(t.roll(1, dims=1))  # type: ignore[method-assign]
    assert flip_equivariance_error(shifted, x, "regular", "trivial") > 1e-3


@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 5), st.booleans())
def test_invariant_linear(b: int, pairs: int, out: int, bias: bool) -> None:
    lin = InvariantLinear(2 * pairs, out, bias=bias, dtype=torch.float64)
    x = torch.randn(b, 2 * pairs, dtype=torch.float64)
    assert_flip_equivariant(lin, x, "regular", "trivial")
    plain = lin.export()
    assert type(plain) is nn.Linear
    torch.testing.assert_close(plain(x), lin(x), rtol=0, atol=0)
    # Negative control: the plain Linear with random weights is not invariant.
    nn.init.normal_(plain.weight)
    if pairs > 0:
        assert flip_equivariance_error(plain, x, "regular", "trivial") > 1e-3


def test_invariant_linear_equals_mean_pool_then_linear() -> None:
    lin = InvariantLinear(6, 2, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = nn.functional.linear(
        PairPool("mean")(x.unsqueeze(-1)).squeeze(-1), 2 * lin.weight, lin.bias
    )
    torch.testing.assert_close(lin(x), expected)


def test_errors() -> None:
    with pytest.raises(ValueError, match="mode"):
        PairPool("median")
    with pytest.raises(ValueError, match="even"):
        PairPool()(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="even in_features"):
        InvariantLinear(5, 2)
