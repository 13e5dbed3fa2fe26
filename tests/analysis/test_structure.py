"""Cycle structure of permutations and mirror symmetry of filters."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gcnn
from gcnn.analysis.structure import (
    PermutationStructure,
    cycles,
    filter_symmetry,
    mean_kernel_symmetry,
    pairing_permutation,
    symmetric_energy_share,
)


@given(st.permutations(list(range(9))))
def test_cycles_partition_and_follow_the_permutation(values: list[int]) -> None:
    perm = torch.tensor(values)
    found = cycles(perm)
    assert sorted(i for c in found for i in c) == list(range(9))
    for cycle in found:
        for i, j in zip(cycle, cycle[1:] + cycle[:1], strict=True):
            assert int(perm[i]) == j
    s = PermutationStructure.of(perm)
    assert s.involution == bool(torch.equal(perm[perm], torch.arange(9)))
    assert s.fixed_points + 2 * s.two_cycles + sum(len(c) for c in found if len(c) > 2) == 9


def test_pair_swap_structure_and_pairing() -> None:
    swap = torch.tensor([3, 2, 1, 0, 4, 5])  # (0 3)(1 2), fixed 4 and 5
    s = PermutationStructure.of(swap)
    assert (s.involution, s.fixed_points, s.two_cycles, s.longer_cycles) == (True, 2, 2, 0)
    assert not PermutationStructure.of(torch.tensor([1, 2, 0])).involution
    free = torch.tensor([3, 2, 1, 0])
    order = pairing_permutation(free)
    # after reordering, the involution is the interleaved pair swap (2k ↔ 2k+1)
    inverse = torch.argsort(order)
    assert torch.equal(inverse[free[order]], torch.tensor([1, 0, 3, 2]))
    with pytest.raises(ValueError, match="fixed-point-free"):
        pairing_permutation(swap)
    with pytest.raises(ValueError, match="not a permutation"):
        cycles(torch.tensor([0, 0, 1]))


def test_filter_symmetry_scores() -> None:
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    symmetric, antisymmetric = w + w.flip(-1), w - w.flip(-1)
    assert symmetric_energy_share(symmetric) == pytest.approx(1.0)
    assert symmetric_energy_share(antisymmetric) == pytest.approx(0.0, abs=1e-12)
    assert mean_kernel_symmetry(symmetric) == pytest.approx(1.0)
    # random 3×3 filters: 6 of 9 dimensions are symmetric, so the expected share is 2/3
    many = torch.randn(512, 64, 3, 3, dtype=torch.float64)
    assert symmetric_energy_share(many) == pytest.approx(2 / 3, abs=0.01)


def test_mean_kernel_of_a_gcnn_layer_is_mirror_symmetric() -> None:
    """A flip conv's filters come in mirror pairs, so the layer's mean kernel is symmetric;
    a plain conv's is not (the negative control)."""
    torch.manual_seed(0)
    flip = gcnn.vgg11_flip(width=0.25).export()
    plain = gcnn.vgg11(width=0.25)
    flip_scores = {f.name: f.mean_kernel_symmetry for f in filter_symmetry(flip)}
    plain_scores = {f.name: f.mean_kernel_symmetry for f in filter_symmetry(plain)}
    assert len(flip_scores) == 8
    assert all(s == pytest.approx(1.0, abs=1e-12) for s in flip_scores.values())
    assert all(s < 0.99 for s in plain_scores.values())
