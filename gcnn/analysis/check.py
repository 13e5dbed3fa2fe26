"""``check_flip_symmetry``: is a trained CNN a channel permutation of a GCNN?

One call runs the whole published analysis on a model and data:

1. trace the model and find its permutation groups (:func:`~gcnn.analysis.graph.analyse_graph`);
2. one pass over the statistics images collects, for every group, the moments of the model's
   activations ``a_l(x)`` and of its flipped self ``flip(a_l(flip x))`` (the flipped twin's
   activations at an exact size);
3. activation matching gives ``Q_l``; its cycle structure, and the layerwise equivariance error
   ``‖a_l(x) − Q_l⁻¹ flip(a_l(flip x))‖² / ‖a_l(x)‖²`` before (``Q = id``) and after alignment,
   plus the weight-space error ``‖W_l − Q_l F(W_l) Q_{l−1}ᵀ‖ / ‖W_l‖``;
4. the interpolation curve between the model and its aligned twin over α — plain, with BN
   reset, and with REPAIR — and its loss and accuracy barriers;
5. when every ``Q_l`` is an involution, the nearest GCNN (α = ½ merge) and its measured
   invariance error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from gcnn.analysis.graph import (
    ActivationProbe,
    ModelGraph,
    analyse_graph,
    flipped_twin,
    permute_model,
)
from gcnn.analysis.matching import match_activations
from gcnn.analysis.merge import Evaluation, barrier, evaluate, interpolate, reset_batchnorm
from gcnn.analysis.nearest import as_flip_model, nearest_gcnn
from gcnn.analysis.repair import channel_statistics, repair, repair_points
from gcnn.analysis.statistics import (
    Batches,
    PairStatistics,
    collect_pair_statistics,
    probe_function,
)
from gcnn.analysis.structure import PermutationStructure, filter_symmetry
from gcnn.exactness import flip_exactness
from gcnn.testing import TOLERANCES, flip_equivariance_error

DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
METHODS: tuple[str, ...] = ("interpolate", "bn_reset", "repair")


@dataclass
class LayerReport:
    """One permutation group: matched permutation structure and equivariance errors."""

    name: str
    channels: int
    involution: bool
    fixed_points: int
    two_cycles: int
    longer_cycles: int
    equivariance_error_before: float
    equivariance_error_after: float
    weight_error_before: float | None
    weight_error_after: float | None


@dataclass
class CheckReport:
    """Everything :func:`check_flip_symmetry` measured; ``to_json()`` for ``report.json``."""

    arch: str
    image_size: tuple[int, int]
    exact_size: bool
    breaking_ops: list[str]
    statistics_images: int
    eval_images: int
    accuracy: dict[str, float | None]
    loss: dict[str, float | None]
    alphas: list[float]
    curves: dict[str, list[dict[str, float | None]]]
    barrier: dict[str, object]
    layers: list[LayerReport]
    filters: list[dict[str, object]]
    nearest_gcnn: dict[str, object]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        return out


def validate_alphas(alphas: Sequence[float]) -> list[float]:
    """The sorted grid; raises unless it lies in [0, 1] and contains 0, 0.5 and 1."""
    grid = sorted({float(a) for a in alphas})
    if not {0.0, 0.5, 1.0} <= set(grid) or grid[0] < 0 or grid[-1] > 1:
        raise ValueError(f"alphas must lie in [0, 1] and contain 0, 0.5 and 1; got {grid}")
    return grid


def spatial_probes(graph: ModelGraph) -> dict[str, str]:
    """Per group, the last node carrying its channels on a map at least 2 pixels wide.

    The default probe of the last group before a global-pool head is the pooled ``(B, C)``
    vector (or a 1×1 map), which is flip-invariant for *any* net, so it cannot tell mirror
    pairs from invariant channels; a map before pooling can.
    """
    nodes = {n.name: n for n in graph.graph_module.graph.nodes}

    def wide(name: str) -> bool:
        shape = getattr(nodes[name].meta.get("tensor_meta"), "shape", ())
        return len(shape) >= 3 and shape[-1] > 1

    out = {}
    for group in graph.groups:
        spatial = [name for name in group.nodes if wide(name)]
        if spatial and spatial[-1] != group.probe:
            out[group.name] = spatial[-1]
    return out


def _weight_keys(graph: ModelGraph) -> dict[str, list[str]]:
    """Per group, the conv/linear weights that produce its channels (axis 0, ≥ 2-D)."""
    state = graph.graph_module.state_dict()
    return {
        g.name: [
            s.key
            for s in g.slots
            if s.axis == 0 and s.key.endswith("weight") and state[s.key].dim() >= 2
        ]
        for g in graph.groups
    }


def _relative_distance(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: list[str]
) -> float | None:
    if not keys:
        return None
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(a[k].double().pow(2).sum()) for k in keys)
    return (num / den) ** 0.5 if den > 0 else None


def layer_reports(
    model: nn.Module,
    twin: nn.Module,
    aligned: nn.Module,
    graph: ModelGraph,
    stats: Mapping[str, PairStatistics],
    perms: Mapping[str, Tensor],
) -> list[LayerReport]:
    """Per group: permutation structure and equivariance errors before and after alignment.

    ``twin`` is the flipped twin of ``model``, ``aligned`` the twin permuted by ``perms``.
    """
    state, keys = model.state_dict(), _weight_keys(graph)
    twin, aligned = twin.state_dict(), aligned.state_dict()
    out = []
    for group in graph.groups:
        s = PermutationStructure.of(perms[group.name])
        out.append(
            LayerReport(
                name=group.name,
                channels=group.size,
                involution=s.involution,
                fixed_points=s.fixed_points,
                two_cycles=s.two_cycles,
                longer_cycles=s.longer_cycles,
                equivariance_error_before=stats[group.name].relative_sq_error(None),
                equivariance_error_after=stats[group.name].relative_sq_error(perms[group.name]),
                weight_error_before=_relative_distance(state, twin, keys[group.name]),
                weight_error_after=_relative_distance(state, aligned, keys[group.name]),
            )
        )
    return out


def _curves(
    model: nn.Module,
    partner: nn.Module,
    alphas: Sequence[float],
    train_batches: Batches,
    eval_batches: Batches,
    device: torch.device | str,
) -> dict[str, list[Evaluation]]:
    names = repair_points(model)
    endpoint_stats = (
        channel_statistics(model, names, train_batches, device),
        channel_statistics(partner, names, train_batches, device),
    )
    curves: dict[str, list[Evaluation]] = {m: [] for m in METHODS}
    for alpha in alphas:
        merged = interpolate(model, partner, alpha)
        curves["interpolate"].append(evaluate(merged, eval_batches, device))
        reset_batchnorm(merged, train_batches, device)
        curves["bn_reset"].append(evaluate(merged, eval_batches, device))
        repaired = repair(model, partner, alpha, train_batches, device, endpoint_stats)
        curves["repair"].append(evaluate(repaired, eval_batches, device))
    return curves


def _nearest_gcnn_report(
    model: nn.Module,
    partner: nn.Module,
    graph: ModelGraph,
    perms: Mapping[str, Tensor],
    x: Tensor,
    exact: bool,
) -> dict[str, object]:
    try:
        merged = nearest_gcnn(model, graph, perms, aligned=partner)
    except ValueError as err:
        return {"built": False, "reason": str(err)}
    error = flip_equivariance_error(merged, x)
    tol = TOLERANCES.get(x.dtype, 1e-5)
    flip_model = as_flip_model(merged, graph, perms)
    with torch.no_grad():
        y = model(x)
        distance = float((merged(x) - y).norm() / y.norm().clamp_min(1e-300))
    report: dict[str, object] = {
        "built": True,
        "invariance_error": error,
        "output_difference_to_model": distance,
        "certified": bool(exact and error <= tol),
        "tolerance": tol,
        "flip_model": type(flip_model).__name__ if flip_model is not None else None,
    }
    if flip_model is not None:
        with torch.no_grad():
            a, b = merged(x), flip_model.eval()(x)
        report["flip_model_difference"] = float((a - b).norm() / a.norm().clamp_min(1e-300))
    return report


def check_flip_symmetry(
    model: nn.Module,
    train_batches: Batches,
    eval_batches: Batches | None = None,
    *,
    arch: str = "model",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    device: torch.device | str = "cpu",
) -> CheckReport:
    """Run the whole analysis (see the module docstring) on ``model``.

    ``train_batches``: re-iterable ``(x, y)`` batches of normalised training images
    ``(B, C, H, W)`` for the statistics, BN reset and REPAIR; ``eval_batches``: labelled (or
    unlabelled: accuracies are then ``None``) batches for the curves, default the same.
    ``alphas`` must contain 0, 0.5 and 1.
    """
    alphas = validate_alphas(alphas)
    eval_batches = train_batches if eval_batches is None else eval_batches
    clock: dict[str, float] = {}
    start = time.perf_counter()
    model = model.to(device).eval()
    first = next(iter(train_batches))[0][:2].to(device)
    size = tuple(first.shape[-2:])
    exactness = flip_exactness(model, size)
    graph = analyse_graph(model, first)
    probe = probe_function(ActivationProbe(model, graph, spatial_probes(graph)))
    clock["graph"] = time.perf_counter() - start

    t = time.perf_counter()
    stats = collect_pair_statistics(probe, probe, train_batches, flip_b=True, device=device)
    perms = match_activations(stats)
    clock["statistics_and_matching"] = time.perf_counter() - t

    t = time.perf_counter()
    twin = flipped_twin(model, graph)
    partner = permute_model(twin, graph, perms)
    layers = layer_reports(model, twin, partner, graph, stats, perms)
    curves = _curves(model, partner, alphas, train_batches, eval_batches, device)
    clock["curves"] = time.perf_counter() - t

    half = alphas.index(0.5)
    points = {
        "model": curves["interpolate"][0],
        "twin": curves["interpolate"][-1],  # the aligned twin: the twin's function, permuted
        "merged": curves["interpolate"][half],
        "merged_bn_reset": curves["bn_reset"][half],
        "merged_repair": curves["repair"][half],
    }
    by_method = {m: asdict(barrier(alphas, curves[m])) for m in METHODS}
    nearest = _nearest_gcnn_report(model, partner, graph, perms, first, exactness.exact)
    clock["total"] = time.perf_counter() - start
    return CheckReport(
        arch=arch,
        image_size=(int(size[0]), int(size[1])),
        exact_size=exactness.exact,
        breaking_ops=[op.describe() for op in exactness.breaking_ops],
        statistics_images=sum(x.shape[0] for x, _ in train_batches),
        eval_images=sum(x.shape[0] for x, _ in eval_batches),
        accuracy={k: e.accuracy for k, e in points.items()},
        loss={k: e.loss for k, e in points.items()},
        alphas=list(alphas),
        curves={
            m: [asdict(e) | {"alpha": a} for a, e in zip(alphas, curves[m], strict=True)]
            for m in METHODS
        },
        barrier={**by_method["repair"], "method": "repair", "by_method": by_method},
        layers=layers,
        filters=[asdict(f) for f in filter_symmetry(model)],
        nearest_gcnn=nearest,
        seconds=clock,
    )
