"""``check_flip_symmetry``: is a trained CNN a channel permutation of a GCNN?

One call runs the whole published analysis on a model and data:

1. trace the model and find its permutation groups (:func:`~gcnn.analysis.graph.analyse_graph`);
2. one pass over the statistics images — every image *and its mirror image*, so the statistics
   are closed under the flip — collects, for every group, the moments of the model's
   activations ``a_l(x)`` and of its flipped twin's ``t_l(x)`` on the same inputs, at the
   group's probe nodes (by default every ReLU output carrying it, before pooling);
3. per group, channels constant over the data are set aside (``dead_channels``), activation
   matching gives the best permutation and the best *involution* of the live channels, their
   mean matched correlations and the gap between them; the best permutation ``Q_l`` (the
   involution when it is as good) gives the cycle structure and the layerwise equivariance
   error ``‖a_l(x) − Q_l t_l(x)‖² / ‖a_l(x)‖²`` before (``Q = id``) and after alignment, also
   normalised by its chance level, plus the weight-space error
   ``‖W_l − Q_l F(W_l) Q_{l−1}ᵀ‖ / ‖W_l‖``;
4. the interpolation curve between the model and its aligned twin over α — plain, with BN
   reset, with REPAIR folded into BN/conv, and with REPAIR at every activation (block
   outputs) — and its loss and accuracy barriers;
5. the nearest GCNN: the α = ½ merge with the twin aligned by the best involutions (always
   exactly flip-equivariant at exact sizes), and its measured invariance error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from gcnn.analysis.graph import (
    ModelGraph,
    analyse_graph,
    flipped_twin,
    permute_model,
)
from gcnn.analysis.matching import LayerMatch, match_layers
from gcnn.analysis.merge import Evaluation, barrier, evaluate, interpolate, reset_batchnorm
from gcnn.analysis.nearest import as_flip_model, nearest_gcnn
from gcnn.analysis.probes import MultiProbe, ProbeSpec, probe_nodes
from gcnn.analysis.repair import (
    activation_statistics,
    channel_statistics,
    repair,
    repair_activations,
    repair_points,
)
from gcnn.analysis.statistics import (
    Batches,
    PairStatistics,
    collect_twin_statistics,
    probe_function,
)
from gcnn.analysis.structure import PermutationStructure, filter_symmetry
from gcnn.exactness import ExactnessReport, flip_exactness
from gcnn.testing import TOLERANCES, flip_equivariance_error

DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: A group is aligned *exactly* when its equivariance error after alignment is at most this
#: fraction of its chance level (float32 activations of a permuted GCNN reach ~1e-12).
EXACT_TOLERANCE = 1e-6
METHODS: tuple[str, ...] = ("interpolate", "bn_reset", "repair", "repair_activations")


@dataclass
class LayerReport:
    """One permutation group: its matching, the permutation's structure, equivariance errors.

    Counts of fixed points, 2-cycles and longer cycles are over the live channels.
    ``equivariance_error_*`` are ``‖a − Q t‖² / ‖a‖²`` (uncentred, over the probe nodes);
    ``equivariance_error_chance`` is the expected error of a random permutation of the live
    channels and ``equivariance_error_normalized = after / chance`` (0: aligned exactly,
    1: no better than chance), comparable across layers. ``correlation_distance`` is
    ``1 − matched_correlation``; ``involution_gap = matched − involution correlation``.
    """

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
    dead_channels: int = 0
    live_channels: int = 0
    channels_in_longer_cycles: int = 0
    decidable: bool = True
    undecided_reason: str | None = None
    samples: int = 0
    tied_channels: int = 0
    matched_correlation: float | None = None
    involution_correlation: float | None = None
    involution_gap: float | None = None
    correlation_distance: float | None = None
    correlation_asymmetry: float | None = None
    equivariance_error_chance: float | None = None
    equivariance_error_normalized: float | None = None
    probe_nodes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Aligned to float precision (the partner's group is a permutation of this one on the
        data; for the flipped twin with an involution: a permuted GCNN layer)."""
        e = self.equivariance_error_normalized
        return e is not None and e <= EXACT_TOLERANCE


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
    statistics: dict[str, object] = field(default_factory=dict)
    verdict: dict[str, object] = field(default_factory=dict)
    kind: str = "flip"
    seconds: dict[str, float] = field(default_factory=dict)
    permutations: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("permutations")
        for layer, entry in zip(self.layers, out["layers"], strict=True):
            entry["exact"] = layer.exact
        out["image_size"] = list(self.image_size)
        return out


def validate_alphas(alphas: Sequence[float]) -> list[float]:
    """The sorted grid; raises unless it lies in [0, 1] and contains 0, 0.5 and 1."""
    grid = sorted({float(a) for a in alphas})
    if not {0.0, 0.5, 1.0} <= set(grid) or grid[0] < 0 or grid[-1] > 1:
        raise ValueError(f"alphas must lie in [0, 1] and contain 0, 0.5 and 1; got {grid}")
    return grid


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


def _asymmetry(corr: Tensor, live: Tensor) -> float | None:
    sub = corr[live][:, live]
    norm = float(sub.norm())
    return float((sub - sub.T).norm()) / norm if norm > 0 else None


def layer_reports(
    model: nn.Module,
    twin: nn.Module,
    aligned: nn.Module,
    graph: ModelGraph,
    stats: Mapping[str, PairStatistics],
    matches: Mapping[str, LayerMatch],
    nodes: Mapping[str, list[str]] | None = None,
) -> list[LayerReport]:
    """Per group: matching, permutation structure and equivariance errors.

    ``twin`` is the partner before alignment (the flipped twin, or a second net), ``aligned``
    the partner permuted by the matches' ``perm``.
    """
    state, keys = model.state_dict(), _weight_keys(graph)
    twin, aligned = twin.state_dict(), aligned.state_dict()
    out = []
    for group in graph.groups:
        m, st = matches[group.name], stats[group.name]
        live_idx = m.live.nonzero().flatten()
        position = torch.full((group.size,), -1, dtype=torch.long)
        position[live_idx] = torch.arange(len(live_idx))
        on_live = position[m.perm[live_idx]]  # the permutation restricted to live channels
        # (weight matching may send a live channel to a dead one: then the whole permutation)
        s = PermutationStructure.of(m.perm if bool((on_live < 0).any()) else on_live)
        after = st.relative_sq_error(m.perm)
        chance = st.chance_sq_error(m.live)
        out.append(
            LayerReport(
                name=group.name,
                channels=group.size,
                involution=m.is_involution,
                fixed_points=s.fixed_points,
                two_cycles=s.two_cycles,
                longer_cycles=s.longer_cycles,
                equivariance_error_before=st.relative_sq_error(None),
                equivariance_error_after=after,
                weight_error_before=_relative_distance(state, twin, keys[group.name]),
                weight_error_after=_relative_distance(state, aligned, keys[group.name]),
                dead_channels=int((~m.live).sum()),
                live_channels=len(live_idx),
                channels_in_longer_cycles=s.channels - s.fixed_points - 2 * s.two_cycles,
                decidable=m.decidable,
                undecided_reason=m.reason,
                samples=m.samples,
                tied_channels=m.tied,
                matched_correlation=m.matched_correlation,
                involution_correlation=m.involution_correlation,
                involution_gap=m.gap,
                correlation_distance=None
                if m.matched_correlation is None
                else 1 - m.matched_correlation,
                correlation_asymmetry=_asymmetry(st.correlation(), m.live),
                equivariance_error_chance=chance,
                equivariance_error_normalized=after / chance if chance > 0 else None,
                probe_nodes=list(nodes.get(group.name, [])) if nodes else [],
            )
        )
    return out


def validate_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` in :data:`METHODS` order; ``interpolate`` is always measured (the endpoints)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown merge methods {unknown}; choose from {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in methods or m == "interpolate")


def curves(
    model: nn.Module,
    partner: nn.Module,
    alphas: Sequence[float],
    train_batches: Batches,
    eval_batches: Batches,
    graph: ModelGraph,
    device: torch.device | str = "cpu",
    methods: Sequence[str] = METHODS,
) -> dict[str, list[Evaluation]]:
    """The interpolation curve ``θ(α)`` of ``model`` and an aligned ``partner``, per method.

    ``interpolate``: plain; ``bn_reset``: BatchNorm statistics re-estimated; ``repair``: REPAIR
    folded into every BatchNorm (every conv without BN); ``repair_activations``: REPAIR at
    every activation output (block outputs and conv(+BN)+ReLU units; see
    :func:`~gcnn.analysis.repair.repair_activations`).
    """
    methods = validate_methods(methods)
    if "repair" in methods:
        names = repair_points(model)
        endpoint_stats = (
            channel_statistics(model, names, train_batches, device),
            channel_statistics(partner, names, train_batches, device),
        )
    if "repair_activations" in methods:
        nodes = sorted({n for ns in probe_nodes(graph, "activation").values() for n in ns})
        activation_stats = (
            activation_statistics(model, graph, nodes, train_batches, device),
            activation_statistics(partner, graph, nodes, train_batches, device),
        )
    out: dict[str, list[Evaluation]] = {m: [] for m in methods}
    for alpha in alphas:
        merged = interpolate(model, partner, alpha)
        out["interpolate"].append(evaluate(merged, eval_batches, device))
        if "bn_reset" in methods:
            reset_batchnorm(merged, train_batches, device)
            out["bn_reset"].append(evaluate(merged, eval_batches, device))
        if "repair" in methods:
            repaired = repair(model, partner, alpha, train_batches, device, endpoint_stats)
            out["repair"].append(evaluate(repaired, eval_batches, device))
        if "repair_activations" in methods:
            repaired = repair_activations(
                model, partner, alpha, train_batches, graph, activation_stats, device
            )
            out["repair_activations"].append(evaluate(repaired, eval_batches, device))
    return out


def _nearest_gcnn_report(
    model: nn.Module,
    twin: nn.Module,
    graph: ModelGraph,
    involutions: Mapping[str, Tensor],
    x: Tensor,
    exact: bool,
) -> dict[str, object]:
    aligned = permute_model(twin, graph, involutions)
    merged = nearest_gcnn(model, graph, involutions, aligned=aligned)
    error = flip_equivariance_error(merged, x)
    tol = TOLERANCES.get(x.dtype, 1e-5)
    flip_model = as_flip_model(merged, graph, involutions)
    with torch.no_grad():
        y = model(x)
        distance = float((merged(x) - y).norm() / y.norm().clamp_min(1e-300))
    report: dict[str, object] = {
        "built": True,
        "invariance_error": error,
        "output_difference_to_model": distance,
        "weight_distance_to_model": _relative_distance(
            model.state_dict(), merged.state_dict(), list(_float_keys(model))
        ),
        "certified": bool(exact and error <= tol),
        "tolerance": tol,
        "flip_model": type(flip_model).__name__ if flip_model is not None else None,
    }
    if flip_model is not None:
        with torch.no_grad():
            a, b = merged(x), flip_model.eval()(x)
        report["flip_model_difference"] = float((a - b).norm() / a.norm().clamp_min(1e-300))
    return report


def _float_keys(model: nn.Module) -> list[str]:
    return [
        k
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
    ]


def verdict(layers: Sequence[LayerReport], require_involution: bool = True) -> dict[str, object]:
    """Is the net a permuted GCNN? Judged on the decidable layers only.

    ``gcnn``: ``True`` when every decidable layer is aligned *exactly* (:attr:`LayerReport.exact`)
    by an involution, ``False`` when one is not, ``None`` when none is decidable.
    An involutive best matching alone is weak evidence: with mirror-closed statistics the
    correlation matrix is symmetric, and on a symmetric matrix every even cycle of an optimal
    permutation can be split into an involution of equal score — a plain random CNN's best
    matchings are mostly involutions too. So the verdict needs the alignment to be exact, and
    the distance to a GCNN is read off the normalised errors, the matched correlations and the
    barriers. ``require_involution=False`` (two different nets): exact alignment alone.
    """
    decidable = [la for la in layers if la.decidable]
    exact = [la for la in decidable if la.exact and (la.involution or not require_involution)]
    normalized = [
        la.equivariance_error_normalized
        for la in decidable
        if la.equivariance_error_normalized is not None
    ]
    return {
        "gcnn": None if not decidable else len(exact) == len(decidable),
        "exact_layers": len(exact),
        "involutive_layers": sum(la.involution for la in decidable),
        "decidable_layers": len(decidable),
        "undecided_layers": len(layers) - len(decidable),
        "not_exact": [la.name for la in decidable if not la.exact],
        "mean_equivariance_error_normalized": sum(normalized) / len(normalized)
        if normalized
        else None,
    }


#: The report's name of each method's α = ½ point.
MERGED_POINT = {
    "interpolate": "merged",
    "bn_reset": "merged_bn_reset",
    "repair": "merged_repair",
    "repair_activations": "merged_repair_activations",
}


def measure_merge(
    model: nn.Module,
    partner: nn.Module,
    graph: ModelGraph,
    train_batches: Batches,
    eval_batches: Batches,
    alphas: Sequence[float],
    device: torch.device | str,
    methods: Sequence[str] = METHODS,
) -> tuple[dict[str, list[Evaluation]], dict[str, object], dict[str, Evaluation]]:
    """Curves, barriers and the named points of merging ``model`` with an aligned ``partner``.

    The top-level barrier is REPAIR's (folded) when measured, else the last method's.
    """
    found = curves(model, partner, alphas, train_batches, eval_batches, graph, device, methods)
    half = list(alphas).index(0.5)
    points = {
        "model": found["interpolate"][0],
        "twin": found["interpolate"][-1],  # the aligned partner: its function, permuted
    }
    points |= {MERGED_POINT[m]: curve[half] for m, curve in found.items()}
    by_method = {m: asdict(barrier(alphas, curve)) for m, curve in found.items()}
    top = "repair" if "repair" in found else list(found)[-1]
    return found, {**by_method[top], "method": top, "by_method": by_method}, points


def align_and_merge(
    model: nn.Module,
    other: nn.Module,
    graph: ModelGraph,
    stats: Mapping[str, PairStatistics],
    matches: Mapping[str, LayerMatch],
    nodes: Mapping[str, list[str]],
    batches: tuple[Batches, Batches],
    alphas: Sequence[float],
    device: torch.device | str,
    methods: Sequence[str],
) -> tuple[list[LayerReport], dict[str, list[Evaluation]], dict[str, object], dict]:
    """Permute ``other`` by the matches, then the per-layer reports and the merge curves:
    ``(layers, curves, barriers, points)``. ``batches``: (statistics, evaluation)."""
    partner = permute_model(other, graph, {name: m.perm for name, m in matches.items()})
    layers = layer_reports(model, other, partner, graph, stats, matches, nodes)
    found, barriers, points = measure_merge(
        model, partner, graph, batches[0], batches[1], alphas, device, methods
    )
    return layers, found, barriers, points


def assemble_report(
    model: nn.Module,
    measured: tuple[list[LayerReport], dict[str, list[Evaluation]], dict[str, object], dict],
    matches: Mapping[str, LayerMatch],
    batches: tuple[Batches, Batches],
    *,
    arch: str,
    alphas: Sequence[float],
    statistics: dict[str, object],
    kind: str,
    nearest: dict[str, object],
    clock: dict[str, float],
    exactness: ExactnessReport | None = None,
) -> CheckReport:
    """The :class:`CheckReport` of a flip check (``kind="flip"``) or a two-net comparison.

    ``exactness``: :func:`~gcnn.flip_exactness` of ``model`` at the size, when already known.
    """
    layers, found, barriers, points = measured
    size = statistics["size"]
    if exactness is None:
        exactness = flip_exactness(model, tuple(size))  # type: ignore[arg-type]
    images = sum(x.shape[0] for x, _ in batches[0])
    return CheckReport(
        arch=arch,
        image_size=(int(size[0]), int(size[1])),  # type: ignore[index]
        exact_size=exactness.exact,
        breaking_ops=[op.describe() for op in exactness.breaking_ops],
        statistics_images=images,
        eval_images=sum(x.shape[0] for x, _ in batches[1]),
        accuracy={k: e.accuracy for k, e in points.items()},
        loss={k: e.loss for k, e in points.items()},
        alphas=list(alphas),
        curves={
            m: [asdict(e) | {"alpha": a} for a, e in zip(alphas, curve, strict=True)]
            for m, curve in found.items()
        },
        barrier=barriers,
        layers=layers,
        filters=[asdict(f) for f in filter_symmetry(model)],
        nearest_gcnn=nearest,
        statistics={"images": images, **statistics, "exact_size": exactness.exact},
        verdict=verdict(layers, require_involution=kind == "flip"),
        kind=kind,
        seconds=clock,
        permutations={name: m.perm.tolist() for name, m in matches.items()},
    )


def statistics_block(
    mirror_closed: bool, probe: ProbeSpec, size: tuple[int, ...], partner: str
) -> dict[str, object]:
    """The ``statistics`` entry of a report (images and exactness are added by the report)."""
    return {
        "mirror_closed": mirror_closed,
        "samples": "images and their mirror images" if mirror_closed else "images",
        "probe": probe if isinstance(probe, str) else "custom",
        "size": [int(size[0]), int(size[1])],
        "partner": partner,
    }


def check_flip_symmetry(
    model: nn.Module,
    train_batches: Batches,
    eval_batches: Batches | None = None,
    *,
    arch: str = "model",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    mirror_closed: bool = True,
    probe: ProbeSpec = "activation",
    methods: Sequence[str] = METHODS,
    device: torch.device | str = "cpu",
) -> CheckReport:
    """Run the whole analysis (see the module docstring) on ``model``.

    ``train_batches``: re-iterable ``(x, y)`` batches of normalised training images
    ``(B, C, H, W)`` for the statistics, BN reset and REPAIR; ``eval_batches``: labelled (or
    unlabelled: accuracies are then ``None``) batches for the curves, default the same.
    ``alphas`` must contain 0, 0.5 and 1. ``mirror_closed``: collect the statistics on every
    image and its mirror (default; ``False`` uses the images as they are). ``probe``: where
    each group is measured (:func:`~gcnn.analysis.probes.probe_nodes`). ``methods``: the merge
    curves to measure (default all of :data:`METHODS`; the plain one always).
    """
    alphas = validate_alphas(alphas)
    methods = validate_methods(methods)
    eval_batches = train_batches if eval_batches is None else eval_batches
    clock: dict[str, float] = {}
    start = time.perf_counter()
    model = model.to(device).eval()
    first = next(iter(train_batches))[0][:2].to(device)
    size = tuple(first.shape[-2:])
    graph = analyse_graph(model, first)
    exactness = flip_exactness(model, size)
    nodes = probe_nodes(graph, probe)
    twin = flipped_twin(model, graph)
    clock["graph"] = time.perf_counter() - start

    t = time.perf_counter()
    stats = collect_twin_statistics(
        probe_function(MultiProbe(model, graph, nodes)),
        probe_function(MultiProbe(twin, graph, nodes)),
        train_batches,
        mirror_closed=mirror_closed,
        device=device,
    )
    matches = match_layers(stats, involutions=True)
    clock["statistics_and_matching"] = time.perf_counter() - t

    t = time.perf_counter()
    batches = (train_batches, eval_batches)
    measured = align_and_merge(
        model, twin, graph, stats, matches, nodes, batches, alphas, device, methods
    )
    clock["curves"] = time.perf_counter() - t
    involutions = {name: m.involution for name, m in matches.items()}
    nearest = _nearest_gcnn_report(model, twin, graph, involutions, first, exactness.exact)  # type: ignore[arg-type]
    clock["total"] = time.perf_counter() - start
    return assemble_report(
        model,
        measured,
        matches,
        batches,
        arch=arch,
        alphas=alphas,
        statistics=statistics_block(
            mirror_closed, probe, size, "flipped twin (conv filters mirrored), on the same inputs"
        ),
        kind="flip",
        nearest=nearest,
        clock=clock,
        exactness=exactness,
    )
