"""Analysis: is a trained CNN a channel permutation of a GCNN?

* :mod:`~gcnn.analysis.graph`: permutation groups, permuting, the flipped twin, probes;
* :mod:`~gcnn.analysis.statistics`: activation moments of two nets in one pass;
* :mod:`~gcnn.analysis.matching`: activation and weight matching;
* :mod:`~gcnn.analysis.merge`, :mod:`~gcnn.analysis.repair`: interpolation, BN reset, REPAIR;
* :mod:`~gcnn.analysis.structure`, :mod:`~gcnn.analysis.nearest`: involutions, filter symmetry,
  the nearest GCNN;
* :mod:`~gcnn.analysis.check`, :mod:`~gcnn.analysis.report`: the whole check and its report.
"""

from gcnn.analysis.check import CheckReport, LayerReport, check_flip_symmetry
from gcnn.analysis.graph import (
    ActivationProbe,
    ModelGraph,
    PermGroup,
    Slot,
    UnsupportedGraphError,
    analyse_graph,
    flipped_twin,
    permute_model,
    permute_slot,
    random_permutations,
)
from gcnn.analysis.matching import match_activations, match_weights
from gcnn.analysis.merge import (
    Evaluation,
    barrier,
    evaluate,
    interpolate,
    interpolate_state,
    reset_batchnorm,
)
from gcnn.analysis.nearest import aligned_twin, as_flip_model, nearest_gcnn
from gcnn.analysis.repair import channel_statistics, repair
from gcnn.analysis.report import write_report
from gcnn.analysis.statistics import PairStatistics, collect_pair_statistics, probe_function
from gcnn.analysis.structure import PermutationStructure, filter_symmetry

__all__ = [
    "ActivationProbe",
    "CheckReport",
    "Evaluation",
    "LayerReport",
    "ModelGraph",
    "PairStatistics",
    "PermGroup",
    "PermutationStructure",
    "Slot",
    "UnsupportedGraphError",
    "aligned_twin",
    "analyse_graph",
    "as_flip_model",
    "barrier",
    "channel_statistics",
    "check_flip_symmetry",
    "collect_pair_statistics",
    "evaluate",
    "filter_symmetry",
    "flipped_twin",
    "interpolate",
    "interpolate_state",
    "match_activations",
    "match_weights",
    "nearest_gcnn",
    "permute_model",
    "permute_slot",
    "probe_function",
    "random_permutations",
    "repair",
    "reset_batchnorm",
    "write_report",
]
