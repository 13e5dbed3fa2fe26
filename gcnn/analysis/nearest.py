r"""The nearest GCNN: the α = ½ merge of a net with its aligned flipped twin.

With involutive matched permutations ``Q_l`` the merged weights
``W̄_l = ½ (W_l + Q_l F(W_l) Q_{l−1}ᵀ)`` satisfy ``Q_l F(W̄_l) Q_{l−1}ᵀ = W̄_l`` (``F`` mirrors the
width; ``Q² = id``), so the merged net is exactly flip-equivariant with the flip acting on
layer ``l`` as ``Q_l`` — at every input size where the exactness rule holds. When every ``Q_l``
is also free of fixed points, reordering each group so its 2-cycles sit on ``(2k, 2k+1)``
turns it into regular fields: a gcnn VGG or a torchvision ResNet then becomes the flip model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import Tensor, nn
from torchvision.models import ResNet

from gcnn.analysis.graph import ModelGraph, flipped_twin, permute_model
from gcnn.analysis.merge import interpolate
from gcnn.analysis.structure import PermutationStructure, pairing_permutation
from gcnn.models.flipify import flipify
from gcnn.models.resnet import FlipResNet
from gcnn.models.vgg import VGG, FlipVGG


def aligned_twin(model: nn.Module, graph: ModelGraph, perms: Mapping[str, Tensor]) -> nn.Module:
    """The flipped twin of ``model`` permuted by the matched ``perms``."""
    return permute_model(flipped_twin(model, graph), graph, perms)


def nearest_gcnn(
    model: nn.Module,
    graph: ModelGraph,
    perms: Mapping[str, Tensor],
    aligned: nn.Module | None = None,
) -> nn.Module:
    """The α = ½ merge of ``model`` with its aligned twin; raises unless every perm is an
    involution (then the merge is exactly flip-equivariant at exact sizes).

    ``aligned`` may pass :func:`aligned_twin` ``(model, graph, perms)`` when already built.
    """
    broken = [g for g, p in perms.items() if not PermutationStructure.of(p).involution]
    if broken:
        raise ValueError(
            "the merge is a GCNN only when every matched permutation is an involution; "
            f"not in {len(broken)} group(s): {', '.join(broken[:5])}"
        )
    if aligned is None:
        aligned = aligned_twin(model, graph, perms)
    return interpolate(model, aligned, 0.5)


#: Plain model class → its flip class, for :func:`as_flip_model`.
FLIP_CLASSES: dict[type[nn.Module], tuple[type[nn.Module], str | None]] = {
    VGG: (FlipVGG, None),
    ResNet: (FlipResNet, "conv1"),
}


def as_flip_model(
    merged: nn.Module, graph: ModelGraph, perms: Mapping[str, Tensor]
) -> nn.Module | None:
    """``merged`` (from :func:`nearest_gcnn`) as a gcnn flip model, or ``None`` when it cannot be.

    Possible for a gcnn ``VGG`` or torchvision ``ResNet`` whose every ``Q_l`` is a
    fixed-point-free involution (flip-invariant channels are trivial fields, which the flip
    models do not have). Each group is reordered so its 2-cycles are the pairs
    ``(2k, 2k+1)``; the flip layers then take the even filters (and pair-averaged
    BatchNorms / invariant head), which equal the merged net's function.
    """
    target = FLIP_CLASSES.get(type(merged))
    if target is None:
        return None
    if any(PermutationStructure.of(p).fixed_points for p in perms.values()):
        return None
    pairing = {g: pairing_permutation(p) for g, p in perms.items()}
    flip_class, stem = target
    return flipify(copy.deepcopy(permute_model(merged, graph, pairing)), flip_class, stem=stem)
