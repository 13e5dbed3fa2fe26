r"""The flip structure of matched permutations and of conv filters.

Permutations: a matched ``Q`` is an *involution* when ``Q² = id``, i.e. every channel is fixed
(a flip-invariant channel) or swapped with one partner (a mirror pair, a 2-cycle). When every
``Q_l`` is an involution, the α = ½ merge with the aligned twin is exactly flip-equivariant.

Filters (``W`` of shape ``(O, I, kh, kw)``, ``F`` mirrors the kernel width):

* symmetric energy share ``Σ‖(W + F W)/2‖² / Σ‖W‖²``: 1 for mirror-symmetric filters, about
  ``⌈kw/2⌉/kw`` (2/3 for 3×3) for random ones;
* mean-kernel symmetry (Alsallakh et al. 2025): the same share for the mean kernel
  ``K = mean_{o,i} W[o, i]``, a ``(kh, kw)`` matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def cycles(perm: Tensor) -> list[list[int]]:
    """The cycles of ``perm`` (``i ↦ perm[i]``), fixed points included, each from its minimum."""
    p = [int(v) for v in perm.tolist()]
    if sorted(p) != list(range(len(p))):
        raise ValueError("not a permutation")
    seen, out = [False] * len(p), []
    for start in range(len(p)):
        if seen[start]:
            continue
        cycle, i = [], start
        while not seen[i]:
            seen[i] = True
            cycle.append(i)
            i = p[i]
        out.append(cycle)
    return out


@dataclass(frozen=True)
class PermutationStructure:
    """Cycle structure of one matched permutation."""

    channels: int
    involution: bool
    fixed_points: int  # channels the flip maps to themselves
    two_cycles: int  # mirror pairs
    longer_cycles: int  # cycles of length ≥ 3 (only in non-involutions)

    @classmethod
    def of(cls, perm: Tensor) -> PermutationStructure:
        lengths = [len(c) for c in cycles(perm)]
        return cls(
            channels=len(perm),
            involution=max(lengths, default=1) <= 2,
            fixed_points=lengths.count(1),
            two_cycles=lengths.count(2),
            longer_cycles=sum(1 for n in lengths if n > 2),
        )


def symmetric_energy_share(weight: Tensor) -> float:
    """``‖(W + F W)/2‖² / ‖W‖²`` of a conv weight ``(O, I, kh, kw)`` (or a single kernel)."""
    w = weight.detach().double()
    total = w.pow(2).sum()
    if total == 0:
        return float("nan")
    return float(((w + w.flip(-1)) / 2).pow(2).sum() / total)


def mean_kernel_symmetry(weight: Tensor) -> float:
    """Symmetric energy share of the layer's mean kernel ``mean_{o,i} W[o, i]``, shape (kh, kw)."""
    return symmetric_energy_share(weight.detach().double().mean(dim=(0, 1)))


@dataclass(frozen=True)
class FilterSymmetry:
    """Mirror symmetry of one conv layer's filters."""

    name: str
    kernel: tuple[int, int]
    symmetric_energy_share: float
    mean_kernel_symmetry: float


def filter_symmetry(model: nn.Module) -> list[FilterSymmetry]:
    """Per conv layer with kernel width > 1: the two filter-symmetry scores."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size[1] > 1:
            out.append(
                FilterSymmetry(
                    name,
                    tuple(m.kernel_size),
                    symmetric_energy_share(m.weight),
                    mean_kernel_symmetry(m.weight),
                )
            )
    return out


def pairing_permutation(perm: Tensor) -> Tensor:
    """For a fixed-point-free involution, the order that puts each 2-cycle on ``(2k, 2k+1)``.

    Permuting a group by the result turns ``perm`` into the pair swap of a regular field.
    """
    structure = cycles(perm)
    if any(len(c) != 2 for c in structure):
        raise ValueError("only a fixed-point-free involution pairs every channel")
    return torch.tensor([i for c in structure for i in c], dtype=torch.long)
