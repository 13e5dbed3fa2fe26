"""``compare_models``: merge two different nets of one architecture, measured like the flip check.

The paper's comparison — is it easier to merge a net with its flipped self than with another
net? — needs both merges measured identically. :func:`compare_models` therefore uses the same
pieces as :func:`~gcnn.analysis.check.check_flip_symmetry`: the same probe nodes, statistics
closed under the flip (both nets see every image and its mirror), dead-channel handling,
activation matching (or Git Re-Basin weight matching), the same four merge curves and barriers,
and the same report (``kind="compare"``; the ``twin`` entries are the aligned second net).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from gcnn.analysis.check import (
    DEFAULT_ALPHAS,
    METHODS,
    CheckReport,
    align_and_merge,
    assemble_report,
    statistics_block,
    validate_alphas,
    validate_methods,
)
from gcnn.analysis.graph import analyse_graph
from gcnn.analysis.matching import match_layers, match_weights
from gcnn.analysis.probes import MultiProbe, ProbeSpec, probe_nodes
from gcnn.analysis.statistics import Batches, collect_pair_statistics, probe_function

MATCHINGS = ("activation", "weight")


def same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise ``ValueError`` naming the first difference unless the state dicts have the same
    keys and shapes."""
    a, b = model_a.state_dict(), model_b.state_dict()
    if a.keys() != b.keys():
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the two nets differ in architecture: keys {only[:4]} are in one only")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(
                f"the two nets differ in architecture: {k} has shape {tuple(a[k].shape)} and "
                f"{tuple(b[k].shape)}"
            )


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    train_batches: Batches,
    eval_batches: Batches | None = None,
    *,
    arch: str = "model",
    matching: str = "activation",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    mirror_closed: bool = True,
    probe: ProbeSpec = "activation",
    methods: Sequence[str] = METHODS,
    device: torch.device | str = "cpu",
) -> CheckReport:
    """Align ``model_b`` to ``model_a`` and measure their merge (see the module docstring).

    ``matching``: ``"activation"`` (correlations of the live channels, as in the flip check) or
    ``"weight"`` (data-free weight matching; the statistics still give the per-layer numbers).
    """
    if matching not in MATCHINGS:
        raise ValueError(f"unknown matching {matching!r}; choose one of {', '.join(MATCHINGS)}")
    same_architecture(model_a, model_b)
    alphas = validate_alphas(alphas)
    methods = validate_methods(methods)
    eval_batches = train_batches if eval_batches is None else eval_batches
    clock: dict[str, float] = {}
    start = time.perf_counter()
    model_a, model_b = model_a.to(device).eval(), model_b.to(device).eval()
    first = next(iter(train_batches))[0][:2].to(device)
    size = tuple(first.shape[-2:])
    graph = analyse_graph(model_a, first)
    nodes = probe_nodes(graph, probe)
    stats = collect_pair_statistics(
        probe_function(MultiProbe(model_a, graph, nodes)),
        probe_function(MultiProbe(model_b, graph, nodes)),
        train_batches,
        mirror_closed=mirror_closed,
        device=device,
    )
    matches = match_layers(stats, involutions=False)
    if matching == "weight":
        by_weights = match_weights(model_a.state_dict(), model_b.state_dict(), graph)
        for name, m in matches.items():
            live = m.live.nonzero().flatten()
            corr, perm = stats[name].correlation(), by_weights[name]
            matched = float(corr[live, perm[live]].mean()) if len(live) else None
            matches[name] = replace(m, perm=perm, matched_correlation=matched)
    clock["statistics_and_matching"] = time.perf_counter() - start

    t = time.perf_counter()
    batches = (train_batches, eval_batches)
    measured = align_and_merge(
        model_a, model_b, graph, stats, matches, nodes, batches, alphas, device, methods
    )
    clock["curves"] = time.perf_counter() - t
    clock["total"] = time.perf_counter() - start
    block = statistics_block(
        mirror_closed, probe, size, "a second net of the same architecture, on the same inputs"
    )
    return assemble_report(
        model_a,
        measured,
        matches,
        batches,
        arch=arch,
        alphas=alphas,
        statistics={**block, "matching": matching},
        kind="compare",
        nearest={},
        clock=clock,
    )
