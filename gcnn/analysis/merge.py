r"""Interpolating two aligned networks: the merged model, BN reset, evaluation and barriers.

``θ(α) = (1 − α) θ_A + α θ_B`` over the whole state dict (integer buffers such as
``num_batches_tracked`` are taken from A). Barriers, with ``L`` the loss and ``acc`` the accuracy:

* loss barrier ``max_α [L(θ(α)) − ((1 − α) L(θ_A) + α L(θ_B))]``,
* accuracy barrier ``(acc(θ_A) + acc(θ_B)) / 2 − acc(θ(0.5))``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gcnn.analysis.progress import progress
from gcnn.analysis.statistics import Batches


def interpolate_state(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """``(1 − α)·A + α·B`` for every floating tensor; A's value for the others."""
    if state_a.keys() != state_b.keys():
        raise ValueError("the two state dicts have different keys: not one architecture")
    return {
        k: torch.lerp(a, state_b[k].to(a), alpha) if a.is_floating_point() else a.clone()
        for k, a in state_a.items()
    }


def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A copy of ``model_a`` holding ``θ(α)``; both inputs are left untouched."""
    merged = copy.deepcopy(model_a)
    merged.load_state_dict(interpolate_state(model_a.state_dict(), model_b.state_dict(), alpha))
    return merged.eval()


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm with running statistics in ``model``."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def reset_batchnorm(
    model: nn.Module, batches: Batches, device: torch.device | str = "cpu"
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (in place; returned).

    ``momentum=None`` (a cumulative average), ``reset_running_stats()``, then a forward pass in
    train mode without gradients; the model is left in eval mode. A model without BatchNorm is
    returned unchanged.
    """
    norms = batchnorms(model)
    if not norms:
        return model.eval()
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.momentum = None
        bn.reset_running_stats()
    model.train()
    for x, _ in progress(batches, desc="BN reset"):
        model(x.to(device))
    for bn, momentum in zip(norms, saved, strict=True):
        bn.momentum = momentum
    return model.eval()


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy and top-1 accuracy (in %) over a dataset; ``None`` without labels."""

    loss: float | None
    accuracy: float | None
    images: int


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device | str = "cpu") -> Evaluation:
    """Evaluate ``model`` (eval mode) on labelled ``batches``; unlabelled data gives ``None``s."""
    model.eval()
    loss_sum, correct, count, labelled = 0.0, 0, 0, True
    for x, y in progress(batches, desc="evaluate"):
        logits = model(x.to(device))
        count += logits.shape[0]
        if y is None:
            labelled = False
            continue
        y = y.to(logits.device)
        loss_sum += float(nn.functional.cross_entropy(logits.double(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    if count == 0:
        raise ValueError("no data to evaluate on")
    if not labelled:
        return Evaluation(None, None, count)
    return Evaluation(loss_sum / count, 100.0 * correct / count, count)


@dataclass(frozen=True)
class Barrier:
    """Loss and accuracy barriers of one interpolation curve (``None`` without labels)."""

    loss: float | None
    accuracy: float | None


def barrier(alphas: Sequence[float], curve: Sequence[Evaluation]) -> Barrier:
    """Barriers of a curve evaluated at ``alphas`` (must contain 0, 0.5 and 1)."""
    points = dict(zip(alphas, curve, strict=True))
    for needed in (0.0, 0.5, 1.0):
        if needed not in points:
            raise ValueError(f"the α grid must contain {needed}; got {sorted(points)}")
    a, b, mid = points[0.0], points[1.0], points[0.5]
    if a.loss is None or b.loss is None or mid.accuracy is None:
        return Barrier(None, None)
    loss = max(e.loss - ((1 - t) * a.loss + t * b.loss) for t, e in points.items())  # type: ignore[operator]
    accuracy = (a.accuracy + b.accuracy) / 2 - mid.accuracy  # type: ignore[operator]
    return Barrier(loss, accuracy)
