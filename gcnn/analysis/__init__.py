"""Analysis: permutation groups, the flipped twin, statistics, matching and merging."""

from gcnn.analysis.graph import (
    ActivationProbe,
    ModelGraph,
    PermGroup,
    Slot,
    UnsupportedGraphError,
    analyse_graph,
    flipped_twin,
    permute_model,
    random_permutations,
)

__all__ = [
    "ActivationProbe",
    "ModelGraph",
    "PermGroup",
    "Slot",
    "UnsupportedGraphError",
    "analyse_graph",
    "flipped_twin",
    "permute_model",
    "random_permutations",
]
