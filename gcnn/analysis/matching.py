"""Neuron matching: activation matching (correlations) and data-free weight matching.

Both return ``{group name: perm}`` with ``perm`` a ``LongTensor`` of the group's size such that
net B permuted by it (channel ``i`` of the result = channel ``perm[i]`` of B, see
:func:`~gcnn.analysis.graph.permute_model`) is aligned to net A.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from gcnn.analysis.graph import ModelGraph, Slot, permute_slot
from gcnn.analysis.statistics import PairStatistics


def assignment(score: Tensor) -> Tensor:
    """The permutation ``p`` maximising ``Σ_i score[i, p[i]]`` (scipy's Hungarian solver)."""
    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.from_numpy(perm).long()


def match_activations(stats: Mapping[str, PairStatistics]) -> dict[str, Tensor]:
    """Activation matching: per group, maximise the summed correlation of matched channels."""
    return {name: assignment(s.correlation()) for name, s in stats.items()}


def slot_rows(tensor: Tensor, slot: Slot, size: int) -> Tensor:
    """The slot's part of ``tensor`` as a ``(size, -1)`` matrix: one row per channel."""
    part = tensor.narrow(slot.axis, slot.offset, size * slot.inner).movedim(slot.axis, 0)
    return part.reshape(size, -1)


def match_weights(
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    graph: ModelGraph,
    *,
    max_iter: int = 100,
    seed: int = 0,
) -> dict[str, Tensor]:
    r"""Weight matching (Git Re-Basin): coordinate descent on ``Σ_l ⟨W_l, P_l W'_l P_{l−1}ᵀ⟩``.

    Only learned weights count (running statistics and counters are skipped). Each sweep visits
    the groups in a random order (``seed``) and solves one linear assignment per group with the
    other groups' permutations fixed; it stops when a sweep improves nothing.
    """
    keys = {
        k
        for k, v in state_a.items()
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
    }
    perms = {g.name: torch.arange(g.size) for g in graph.groups}
    order = list(graph.groups)
    rng = random.Random(seed)
    for _ in range(max_iter):
        rng.shuffle(order)
        improved = False
        for group in order:
            score = torch.zeros(group.size, group.size, dtype=torch.float64)
            for slot in group.slots:
                if slot.key not in keys:
                    continue
                b = state_b[slot.key].double()
                for other_group, other in graph.slots_of(slot.key):
                    if other is not slot:
                        b = permute_slot(b, other, perms[other_group.name])
                a = slot_rows(state_a[slot.key].double(), slot, group.size)
                score += (a @ slot_rows(b, slot, group.size).T).cpu()
            new = assignment(score)
            rows = torch.arange(group.size)
            gain = score[rows, new].sum() - score[rows, perms[group.name]].sum()
            if gain > 1e-12 * score.abs().sum().clamp_min(1e-300):
                perms[group.name] = new
                improved = True
        if not improved:
            break
    return perms
