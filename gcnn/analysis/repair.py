r"""REPAIR (Jordan et al. 2023): restore the merged net's per-unit statistics, then fold.

For every *repair point* (each BatchNorm's output; in a net without BatchNorm, each conv's
output) and channel ``c``, the endpoints' output mean and std over data give the target

    μ_c = (1 − α) μ_c^A + α μ_c^B,        σ_c = (1 − α) σ_c^A + α σ_c^B.

A renormalising layer ``y ↦ σ_c (y − m_c) / sqrt(v_c + ε) + μ_c`` is put after each point of
the interpolated net; its ``m, v`` (and every BatchNorm's running statistics) are estimated in
one train-mode pass. The layers are then folded into the point's own weights
(``scale = σ / sqrt(v + ε)``, ``W ← scale·W``, ``b ← scale·(b − m) + μ``; for BatchNorm the
affine ``γ, β``), so the result has the original architecture.

On a BatchNorm net that correction is what a BN reset already does. :func:`repair_activations`
is REPAIR as in the REPAIR paper's and the published notebook's ResNets: at the *outputs* of
residual blocks and of conv(+BN)+ReLU units, after the nonlinearity, where a BN reset does
not act.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, fx, nn

from gcnn.analysis.graph import ModelGraph
from gcnn.analysis.merge import interpolate, reset_batchnorm
from gcnn.analysis.probes import copy_graph, probe_nodes, tap_nodes
from gcnn.analysis.progress import progress
from gcnn.analysis.statistics import Batches, as_samples


def _applies_activation(bn: nn.Module) -> bool:
    """A BatchNorm that applies its activation itself (timm's ``BatchNormAct2d``: batch norm,
    then ``self.drop``, then ``self.act``): its output is *after* the nonlinearity."""
    return isinstance(getattr(bn, "drop", None), nn.Module) and hasattr(bn, "act")


def repair_points(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs REPAIR corrects: every BatchNorm, or every conv if
    there is none. For a BatchNorm that applies its own activation (timm's ``BatchNormAct2d``)
    the point is its ``drop`` submodule, whose output is the normalised, pre-activation map."""
    norms = [
        f"{n}.drop" if _applies_activation(m) else n
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if norms:
        return norms
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _fold_target(model: nn.Module, name: str) -> nn.Module:
    """The module whose weights absorb the correction measured at ``name``."""
    parent, _, child = name.rpartition(".")
    if child == "drop" and parent:
        owner = model.get_submodule(parent)
        if isinstance(owner, nn.modules.batchnorm._BatchNorm) and _applies_activation(owner):
            return owner
    return model.get_submodule(name)


@torch.no_grad()
def channel_statistics(
    model: nn.Module, names: Iterable[str], batches: Batches, device: torch.device | str = "cpu"
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel mean and std (float64, ``(C,)`` each) of the named modules' outputs.

    One pass in eval mode; pixels count as samples.
    """
    sums: dict[str, list[Tensor | int]] = {}

    def hook(name: str):  # noqa: ANN202
        def record(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            s = as_samples(output)
            if name not in sums:
                sums[name] = [0, torch.zeros_like(s[0]), torch.zeros_like(s[0])]
            acc = sums[name]
            acc[0] += s.shape[0]  # type: ignore[operator]
            acc[1] += s.sum(0)  # type: ignore[operator]
            acc[2] += (s * s).sum(0)  # type: ignore[operator]

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        model.eval()
        for x, _ in progress(batches, desc="REPAIR statistics"):
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n  # type: ignore[operator]
        out[name] = (mean, (s2 / n - mean**2).clamp_min(0).sqrt())  # type: ignore[operator]
    return out


class _Renormalise(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over any ``(B, C, ...)`` input whose affine output has the target statistics."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected (B, C, ...), got {x.dim()}-D")


class _Repaired(nn.Module):
    def __init__(self, point: nn.Module, renorm: _Renormalise) -> None:
        super().__init__()
        self.point, self.renorm = point, renorm

    def forward(self, x: Tensor) -> Tensor:
        return self.renorm(self.point(x))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def _fold(point: nn.Module, renorm: _Renormalise) -> None:
    scale = renorm.weight / (renorm.running_var + renorm.eps).sqrt()
    shift = renorm.bias - renorm.running_mean * scale
    if isinstance(point, nn.modules.batchnorm._BatchNorm):
        if not point.affine:
            raise ValueError("REPAIR needs affine BatchNorms to fold into")
        point.weight.mul_(scale)
        point.bias.mul_(scale).add_(shift)
        return
    shape = (-1,) + (1,) * (point.weight.dim() - 1)
    point.weight.mul_(scale.view(shape))
    if point.bias is None:
        point.bias = nn.Parameter(torch.zeros_like(shift))
        point.bias.copy_(shift)
    else:
        point.bias.mul_(scale).add_(shift)


@torch.no_grad()
def repair(
    model_a: nn.Module,
    model_b: nn.Module,
    alpha: float,
    batches: Batches,
    device: torch.device | str = "cpu",
    endpoint_stats: tuple[dict, dict] | None = None,
) -> nn.Module:
    """The REPAIRed interpolation ``θ(α)`` of two aligned nets, an ordinary model of A's class.

    ``batches`` are training images (labels unused). ``endpoint_stats`` may pass precomputed
    ``(channel_statistics(A), channel_statistics(B))`` to skip two passes when sweeping α.
    A net whose conv biases are absent gets biases (a conv ``bias=False`` becomes biased).
    """
    names = repair_points(model_a)
    if endpoint_stats is None:
        endpoint_stats = (
            channel_statistics(model_a, names, batches, device),
            channel_statistics(model_b, names, batches, device),
        )
    stats_a, stats_b = endpoint_stats
    merged = interpolate(model_a, model_b, alpha)
    wrappers = {}
    for name in names:
        (mean_a, std_a), (mean_b, std_b) = stats_a[name], stats_b[name]
        point = merged.get_submodule(name)
        ref = next(_fold_target(merged, name).parameters())
        renorm = _Renormalise(mean_a.numel(), momentum=None).to(ref)
        renorm.weight.copy_(torch.lerp(std_a, std_b, alpha))
        renorm.bias.copy_(torch.lerp(mean_a, mean_b, alpha))
        wrappers[name] = _Repaired(point, renorm)
        _set_submodule(merged, name, wrappers[name])
    reset_batchnorm(merged, batches, device)
    for name, wrapper in wrappers.items():
        _set_submodule(merged, name, wrapper.point)
        _fold(_fold_target(merged, name), wrapper.renorm)
    return merged.eval()


# --------------------------------------------------------------------------- at activations


@torch.no_grad()
def activation_statistics(
    model: nn.Module,
    graph: ModelGraph,
    nodes: Sequence[str],
    batches: Batches,
    device: torch.device | str = "cpu",
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel mean and std (float64 ``(C,)`` each) of the named fx nodes' outputs.

    ``model`` has the architecture ``graph`` was traced from; one pass in eval mode, pixels
    count as samples.
    """
    probe = _NodeTaps(model, graph, nodes)
    sums: dict[str, list] = {}
    model.eval()
    for x, _ in progress(batches, desc="activation statistics"):
        for name, out in probe(x.to(device)).items():
            s = as_samples(out)
            acc = sums.setdefault(name, [0, torch.zeros_like(s[0]), torch.zeros_like(s[0])])
            acc[0] += s.shape[0]
            acc[1] += s.sum(0)
            acc[2] += (s * s).sum(0)
    out_stats = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / n
        out_stats[name] = (mean, (s2 / n - mean**2).clamp_min(0).sqrt())
    return out_stats


class _NodeTaps(nn.Module):
    """``forward(x) -> {node name: output}`` for the named nodes (cloned where computed)."""

    def __init__(self, model: nn.Module, graph: ModelGraph, nodes: Sequence[str]) -> None:
        super().__init__()
        self.traced = tap_nodes(model, graph, {n: n for n in nodes})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.traced(x)[1]


def renormalised(
    model: nn.Module, graph: ModelGraph, targets: dict[str, tuple[Tensor, Tensor]]
) -> fx.GraphModule:
    """``model`` re-traced with a renormalising layer after each target node.

    ``targets``: ``{node name: (mean (C,), std (C,))}``. Each layer is a BatchNorm
    (``momentum=None``) whose affine output has the target mean and std once its running
    statistics are estimated (:func:`~gcnn.analysis.merge.reset_batchnorm`). Returns an
    ``fx.GraphModule`` sharing ``model``'s parameters; the new layers (``repair_0``,
    ``repair_1``, …) are added to ``model`` (pass a copy).
    """
    new, output, by_name = copy_graph(graph)
    ref = next(model.parameters())
    for i, (name, (mean, std)) in enumerate(sorted(targets.items())):
        renorm = _Renormalise(mean.numel(), momentum=None).to(ref)
        with torch.no_grad():
            renorm.weight.copy_(std)
            renorm.bias.copy_(mean)
        model.add_module(f"repair_{i}", renorm)
        node = by_name[name]
        with new.inserting_after(node):
            fixed = new.call_module(f"repair_{i}", (node,))
        node.replace_all_uses_with(fixed, delete_user_cb=lambda user, f=fixed: user is not f)
    new.output(output)
    return fx.GraphModule(model, new, type(model).__name__ + "Repaired")


@torch.no_grad()
def repair_activations(
    model_a: nn.Module,
    model_b: nn.Module,
    alpha: float,
    batches: Batches,
    graph: ModelGraph,
    endpoint_stats: tuple[dict, dict] | None = None,
    device: torch.device | str = "cpu",
    nodes: Sequence[str] | None = None,
) -> nn.Module:
    r"""REPAIR at every activation output: the outputs of residual blocks and of conv(+BN)+ReLU
    units (every ReLU-like node carrying a permutation group, on maps ≥ 2 px wide).

    Each such node of ``θ(α)`` gets a renormalising layer with the interpolated target
    ``μ = (1 − α) μ^A + α μ^B``, ``σ = (1 − α) σ^A + α σ^B``; the layers' statistics and every
    BatchNorm's are then estimated in one train-mode pass over ``batches``. A shift after a
    ReLU cannot be folded into the weights before it, so the result is an ``fx.GraphModule``
    with one extra per-channel affine layer per node (unlike :func:`repair`, which keeps the
    architecture). On a BatchNorm net this differs from a BN reset, which only restores the
    statistics *before* each ReLU.
    """
    if nodes is None:
        nodes = sorted({n for ns in probe_nodes(graph, "activation").values() for n in ns})
    if endpoint_stats is None:
        endpoint_stats = (
            activation_statistics(model_a, graph, nodes, batches, device),
            activation_statistics(model_b, graph, nodes, batches, device),
        )
    stats_a, stats_b = endpoint_stats
    targets = {
        n: (
            torch.lerp(stats_a[n][0], stats_b[n][0], alpha),
            torch.lerp(stats_a[n][1], stats_b[n][1], alpha),
        )
        for n in nodes
    }
    merged = interpolate(model_a, model_b, alpha)
    repaired = renormalised(merged, graph, targets)
    reset_batchnorm(repaired, batches, device)
    return repaired.eval()
