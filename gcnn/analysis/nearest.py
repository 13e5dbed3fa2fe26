r"""The nearest GCNN: the α = ½ merge of a net with its aligned flipped twin.

With involutive matched permutations ``Q_l`` the merged weights
``W̄_l = ½ (W_l + Q_l F(W_l) Q_{l−1}ᵀ)`` satisfy ``Q_l F(W̄_l) Q_{l−1}ᵀ = W̄_l`` (``F`` mirrors the
width; ``Q² = id``), so the merged net is exactly flip-equivariant with the flip acting on
layer ``l`` as ``Q_l`` — at every input size where the exactness rule holds. Reordering each
group so its fixed points come first and its 2-cycles sit on consecutive channels turns it into
mixed fields (trivial + regular): a gcnn VGG or a torchvision ResNet then becomes the flip model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import Tensor, nn

from gcnn.analysis.graph import ModelGraph, flipped_twin, permute_model
from gcnn.analysis.merge import interpolate
from gcnn.analysis.structure import PermutationStructure
from gcnn.models.flipify import flipify
from gcnn.models.registry import family_of_class, model_families
from gcnn.nn import Fields, involution_layout


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


class _FlipClasses(Mapping[type[nn.Module], tuple[type[nn.Module], str | None]]):
    """Plain model class → (its flip class, stem conv name), read from the model registry."""

    def _families(self) -> dict[type[nn.Module], tuple[type[nn.Module], str | None]]:
        out = {}
        for family in model_families():
            plain, flip = family.model_class("plain"), family.model_class("flip")
            if plain is not None and flip is not None:
                out[plain] = (flip, family.stem)
        return out

    def __getitem__(self, cls: type[nn.Module]) -> tuple[type[nn.Module], str | None]:
        found = family_of_class(cls)
        flip = None if found is None or found[1] != "plain" else found[0].model_class("flip")
        if flip is None:
            raise KeyError(cls)
        return flip, found[0].stem  # type: ignore[index]

    def __iter__(self):  # noqa: ANN204
        return iter(self._families())

    def __len__(self) -> int:
        return len(self._families())


#: Plain model class → (its flip class, stem), for :func:`as_flip_model` (the registry's).
FLIP_CLASSES: Mapping[type[nn.Module], tuple[type[nn.Module], str | None]] = _FlipClasses()


def as_flip_model(
    merged: nn.Module, graph: ModelGraph, perms: Mapping[str, Tensor]
) -> nn.Module | None:
    """``merged`` (from :func:`nearest_gcnn`) as a gcnn flip model, or ``None`` when it cannot be.

    Possible for a model of a registered family (gcnn ``VGG``, torchvision ``ResNet``) whose
    every group has an involutive ``Q_l``, fixed points included. Each group is reordered by
    :func:`gcnn.nn.involution_layout`: its fixed points (flip-invariant channels) become the
    trivial fields, its 2-cycles the regular pairs, and every layer becomes the flip layer of
    its mixed layouts; the flip layers read their free weights off the merged (equivariant)
    filters, so the flip model computes the merged net's function; a Linear reading a
    flattened map becomes a spatial :class:`~gcnn.nn.FlipLinear`, hidden Linears with permuted
    outputs a regular/mixed one. ``None`` when a ``Q_l`` is no involution, a group has no
    permutation, or a tensor axis is shared by several groups.
    """
    found = family_of_class(type(merged))
    flip_class = None if found is None or found[1] != "plain" else found[0].model_class("flip")
    if flip_class is None or {g.name for g in graph.groups} - set(perms):
        return None
    if not all(PermutationStructure.of(p).involution for p in perms.values()):
        return None
    orders, fields = {}, {}
    for name, perm in perms.items():
        orders[name], fields[name] = involution_layout(perm)
    reordered = copy.deepcopy(permute_model(merged, graph, orders))
    layouts = _layer_layouts(reordered, graph, fields)
    if layouts is None:
        return None
    spatial = {name: (h, w) for name, (_, h, w) in graph.spatial_linears.items()}
    return flipify(reordered, flip_class, layouts=layouts, spatial=spatial)


def _layer_layouts(
    model: nn.Module, graph: ModelGraph, fields: Mapping[str, Fields]
) -> dict[str, tuple[Fields, Fields]] | None:
    """(input, output) layouts of every conv, BatchNorm and Linear of ``model``: a tensor axis
    whose channels form one group gets that group's layout (for a Linear reading a flattened
    ``C×H×W`` map: the layout of its ``C`` channels), one without a group (the image, the
    logits) is trivial; ``None`` when an axis is split between several groups."""

    def layout(key: str, axis: int, size: int) -> Fields | None:
        slots = [(g, s) for g, s in graph.slots_of(key) if s.axis == axis]
        if not slots:
            return Fields(trivial=size)
        if len(slots) > 1 or slots[0][1].offset:
            return None
        return fields[slots[0][0].name]

    layouts: dict[str, tuple[Fields, Fields]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            key, sizes = f"{name}.weight", (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            c = graph.spatial_linears.get(name, (m.in_features, 1, 1))[0]
            key, sizes = f"{name}.weight", (c, m.out_features)
        elif isinstance(m, nn.BatchNorm2d):
            key, sizes = f"{name}.running_mean", (m.num_features, m.num_features)
        else:
            continue
        out = layout(key, 0, sizes[1])
        inp = out if isinstance(m, nn.BatchNorm2d) else layout(key, 1, sizes[0])
        if inp is None or out is None:
            return None
        layouts[name] = (inp, out)
    return layouts
