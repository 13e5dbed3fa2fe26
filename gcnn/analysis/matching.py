"""Neuron matching: activation matching (correlations) and data-free weight matching.

Both return ``{group name: perm}`` with ``perm`` a ``LongTensor`` of the group's size such that
net B permuted by it (channel ``i`` of the result = channel ``perm[i]`` of B, see
:func:`~gcnn.analysis.graph.permute_model`) is aligned to net A.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from gcnn.analysis.graph import ModelGraph, Slot, permute_slot
from gcnn.analysis.involution import (
    best_involution,
    greedy_involution,
    involution_score,
    is_involution,
)
from gcnn.analysis.statistics import PairStatistics

#: Mean correlation per channel by which the best involution may trail the best permutation
#: and still count as optimal (solver resolution and float error, far below real gaps).
INVOLUTION_TOLERANCE = 1e-6


def assignment(score: Tensor) -> Tensor:
    """The permutation ``p`` maximising ``Σ_i score[i, p[i]]`` (scipy's Hungarian solver)."""
    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.from_numpy(perm).long()


@dataclass
class LayerMatch:
    """The activation matching of one group, with what can and cannot be concluded from it.

    ``perm``: the best permutation of the channels (``LongTensor (C,)``; dead channels fixed).
    When an involution is as good (within :data:`INVOLUTION_TOLERANCE`), ``perm`` *is* that
    involution: ties (dead, duplicated or too few samples) are resolved in favour of the GCNN.
    ``involution``: the best involutive matching (``None`` when not asked for).
    ``live``: ``BoolTensor (C,)``, the channels that are not constant over the data.
    ``matched_correlation`` / ``involution_correlation``: mean correlation of the live channels
    with their match under ``perm`` / ``involution`` (``None`` without live channels).
    ``decidable``: whether there are enough samples to determine the matching (``reason`` says
    why not). ``tied``: live channels whose correlation row duplicates another's (identical
    channels): their matches are interchangeable, and the tie is resolved towards an involution.
    """

    perm: Tensor
    involution: Tensor | None
    live: Tensor
    matched_correlation: float | None
    involution_correlation: float | None
    samples: int
    tied: int
    decidable: bool
    reason: str | None

    @property
    def gap(self) -> float | None:
        """``matched_correlation − involution_correlation`` (≥ 0): distance to a GCNN layer."""
        if self.matched_correlation is None or self.involution_correlation is None:
            return None
        return max(self.matched_correlation - self.involution_correlation, 0.0)

    @property
    def is_involution(self) -> bool:
        """Whether the best matching can be an involution (a permuted GCNN layer)."""
        return is_involution(self.perm)


def tied_channels(corr: Tensor, decimals: int = 9) -> int:
    """How many rows of ``corr`` repeat an earlier row (rounded to ``decimals``): ``O(n²)``."""
    seen: set[bytes] = set()
    tied = 0
    for row in corr.double().round(decimals=decimals).numpy():
        key = row.tobytes()
        tied += key in seen
        seen.add(key)
    return tied


def _embed(sub: Tensor, idx: Tensor, size: int) -> Tensor:
    """A permutation of ``range(size)`` acting as ``sub`` on ``idx`` and fixing the rest."""
    full = torch.arange(size)
    full[idx] = idx[sub]
    return full


def match_layer(stats: PairStatistics, *, involutions: bool = True) -> LayerMatch:
    """Match one group: the best permutation and (``involutions``) the best involution.

    Only live channels (:meth:`PairStatistics.dead`) take part; dead ones stay fixed. The
    group is undecidable when there are fewer samples than live channels: the correlation
    matrix is then rank-deficient and other matchings can score the same; its involution is then
    the greedy one (:func:`~gcnn.analysis.involution.greedy_involution`), not the exact optimum.
    """
    corr = stats.correlation()
    live = ~stats.dead()
    idx = live.nonzero().flatten()
    n = len(idx)
    sub = corr[idx][:, idx]
    reason = None
    if n == 0:
        reason = "every channel is constant over the data"
    elif stats.count < n:
        reason = f"{stats.count} samples for {n} live channels"
    best = assignment(sub) if n else torch.arange(0)
    inv = None
    matched = involution_score(sub, best) / n if n else None
    inv_corr = None
    if involutions:
        if is_involution(best):
            inv = best
        else:  # an exact optimum of what the data cannot determine is not worth O(n³)
            inv = greedy_involution(sub) if reason else best_involution(sub)
        inv_corr = involution_score(sub, inv) / n if n else None
        if n and matched - inv_corr <= INVOLUTION_TOLERANCE:  # type: ignore[operator]
            best, matched = inv, inv_corr
    tied = tied_channels(sub)
    size = stats.channels
    return LayerMatch(
        perm=_embed(best, idx, size),
        involution=None if inv is None else _embed(inv, idx, size),
        live=live,
        matched_correlation=matched,
        involution_correlation=inv_corr,
        samples=stats.count,
        tied=tied,
        decidable=reason is None,
        reason=reason,
    )


def match_layers(
    stats: Mapping[str, PairStatistics], *, involutions: bool = True
) -> dict[str, LayerMatch]:
    """:func:`match_layer` for every group."""
    return {name: match_layer(s, involutions=involutions) for name, s in stats.items()}


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
