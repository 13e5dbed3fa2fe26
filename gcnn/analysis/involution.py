r"""The best *involutive* matching: a maximum-weight matching on a graph with self-loops.

For a score matrix ``S`` (``n × n``, e.g. the correlation of a net's channels with its flipped
twin's) an involution ``Q`` (every channel fixed or swapped with one partner) scores

    score(Q) = Σ_{c fixed} S[c, c] + Σ_{pairs {c, d}} (S[c, d] + S[d, c])
             = tr S + Σ_{pairs {c, d}} w(c, d),     w(c, d) = S[c, d] + S[d, c] − S[c, c] − S[d, d].

So the best involution is a maximum-weight matching of the complete graph with edge weights
``w`` (unmatched vertices are the fixed points); edges with ``w ≤ 0`` can never help and are
dropped. The matching is solved exactly by the blossom algorithm of ``rustworkx`` (Edmonds'
primal–dual method, ``O(n³)``), which takes integer weights: ``w`` is scaled so its largest
magnitude is ``10⁹`` and rounded, so the result is optimal up to ``n·max|w|·10⁻⁹``.

Since every involution is a permutation, the best involution never beats the best permutation
(:func:`~gcnn.analysis.matching.assignment`); when the best permutation already is an
involution it is also the best involution and no matching is solved.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: Largest integer edge weight after scaling (rustworkx needs integer weights).
WEIGHT_RESOLUTION = 10**9


def involution_score(score: Tensor, perm: Tensor) -> float:
    """``Σ_c score[c, perm[c]]`` (for any permutation; an involution's score as above)."""
    rows = torch.arange(len(perm))
    return float(score.double()[rows, perm.long().cpu()].sum())


def is_involution(perm: Tensor) -> bool:
    """Whether ``perm[perm[c]] == c`` for every ``c``."""
    perm = perm.long()
    return bool((perm[perm] == torch.arange(len(perm))).all())


def _edge_weights(score: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and weights ``w(c, d) > 0`` of the pairs ``c < d`` that can help."""
    s = score.detach().cpu().double().numpy()
    if not np.isfinite(s).all():
        raise ValueError("the score matrix has non-finite entries")
    diag = np.diag(s)
    w = s + s.T - diag[:, None] - diag[None, :]
    rows, cols = np.triu_indices(s.shape[0], 1)
    weights = w[rows, cols]
    keep = weights > 0
    return rows[keep], cols[keep], weights[keep]


def greedy_involution(score: Tensor) -> Tensor:
    """An involution built greedily: pairs in decreasing order of ``w(c, d) > 0`` while both
    channels are free (``O(n² log n)``; at least half the optimal gain, not optimal). Used where
    the data cannot determine the matching anyway (fewer samples than channels)."""
    _check_square(score)
    n = score.shape[0]
    perm = np.arange(n)
    rows, cols, weights = _edge_weights(score) if n > 1 else (np.empty(0),) * 3
    free = np.ones(n, dtype=bool)
    for k in np.argsort(-weights, kind="stable"):
        i, j = int(rows[k]), int(cols[k])
        if free[i] and free[j]:
            perm[i], perm[j] = j, i
            free[i] = free[j] = False
    return torch.from_numpy(perm).long()


def _check_square(score: Tensor) -> None:
    if score.dim() != 2 or score.shape[0] != score.shape[1]:
        raise ValueError(f"expected a square score matrix, got shape {tuple(score.shape)}")


def best_involution(score: Tensor) -> Tensor:
    """The involution ``Q`` (``LongTensor (n,)``, ``Q[Q] = id``) maximising ``Σ_c score[c, Q[c]]``.

    ``score``: ``(n, n)``, any real matrix (it need not be symmetric: a pair ``{c, d}`` earns
    ``score[c, d] + score[d, c]``). Exact up to the weight resolution (see the module docstring).
    """
    _check_square(score)
    n = score.shape[0]
    perm = np.arange(n)
    if n < 2:
        return torch.from_numpy(perm).long()
    rows, cols, weights = _edge_weights(score)
    if not len(weights):
        return torch.from_numpy(perm).long()
    # imported here: the rest of gcnn (models, training, the CLI) runs without it, e.g. on a
    # GPU machine where the package is installed with --no-deps
    import rustworkx as rx

    scale = WEIGHT_RESOLUTION / weights.max()
    graph = rx.PyGraph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(
        [
            (int(i), int(j), int(round(x * scale)))
            for i, j, x in zip(rows, cols, weights, strict=True)
        ]
    )
    for i, j in rx.max_weight_matching(graph, weight_fn=lambda e: e):
        perm[i], perm[j] = j, i
    return torch.from_numpy(perm).long()
