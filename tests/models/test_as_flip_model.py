"""The nearest GCNN of a trained CNN exports as a flip model with mixed fields.

For any involutive ``Q_l`` (fixed points included) the α = ½ merge with the aligned twin is
exactly flip-equivariant; :func:`gcnn.analysis.nearest.as_flip_model` must turn it into a
``FlipVGG`` / ``FlipResNet`` whose fixed points are trivial fields and whose 2-cycles are
pairs, computing the merged net's function. The involutions here are drawn at random with a
different share of fixed points per group (none, some, all), so every kind of layout occurs;
the merge does not depend on how good the matching is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

import gcnn
from gcnn.analysis.graph import analyse_graph
from gcnn.analysis.nearest import FLIP_CLASSES, as_flip_model, nearest_gcnn
from gcnn.data.samples import load_samples
from gcnn.models import VGG, FlipResNet, FlipTorchvisionVGG, FlipVGG
from gcnn.nn import FlipConv2d, FlipLinear
from gcnn.testing import assert_flip_equivariant, assert_same_outputs, flip_equivariance_error
from tests.models.test_vgg import with_random_bn_state

ROOT = Path(__file__).resolve().parents[2]


def random_involution(n: int, fixed: int, gen: torch.Generator) -> Tensor:
    """An involution of ``n`` channels with ``fixed`` fixed points (same parity as ``n``)."""
    order = torch.randperm(n, generator=gen)
    perm = torch.arange(n)
    pairs = order[fixed:].view(-1, 2)
    perm[pairs[:, 0]], perm[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    return perm


def involutions(graph, seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    perms = {}
    for i, group in enumerate(graph.groups):
        share = (0.0, 0.3, 1.0)[i % 3]
        fixed = int(share * group.size)
        fixed += (group.size - fixed) % 2  # the rest must pair up
        perms[group.name] = random_involution(group.size, min(fixed, group.size), gen)
    return perms


def mixed_layouts(flip: nn.Module) -> int:
    return sum(1 for m in flip.modules() if isinstance(m, FlipConv2d) and m.out_fields.trivial > 0)


def merged_trained_cnn() -> tuple[nn.Module, Tensor, object, dict[str, Tensor], nn.Module]:
    """The committed trained CNN ``models/vgg11-w025-fmnist-cnn`` (float64, eval), the shipped
    Fashion-MNIST images padded to 32 (an exact size), its graph, random involutions (fixed
    points included) and the α = ½ merge with the twin they align."""
    folder = ROOT / "models" / "vgg11-w025-fmnist-cnn"
    meta = json.loads((folder / "model.json").read_text())
    model = gcnn.create_model(
        meta["arch"], weights=folder / "model.safetensors", **meta["arch_kwargs"]
    )
    model = model.double().eval()
    images, _ = load_samples("fashion-mnist")
    x = nn.functional.pad(images.double() / 255, (2, 2, 2, 2))  # 28 → 32: an exact size
    graph = analyse_graph(model, x[:1])
    perms = involutions(graph)
    return model, x, graph, perms, nearest_gcnn(model, graph, perms)


def test_merged_trained_cnn_exports_as_a_flip_model_with_mixed_fields() -> None:
    model, x, graph, perms, merged = merged_trained_cnn()
    flip = as_flip_model(merged, graph, perms)
    assert type(flip) is FlipVGG
    assert mixed_layouts(flip) >= 2
    assert_same_outputs(merged, flip, x, rtol=1e-10)
    assert_flip_equivariant(flip, x)  # layouts inferred: trivial image in, logits out
    plain = flip.export()
    assert type(plain) is VGG
    assert_same_outputs(merged, plain, x, rtol=1e-10)
    # negative controls: the trained CNN is not invariant, and a 3-cycle is no involution
    assert flip_equivariance_error(model, x) > 1e-3
    broken = dict(perms)
    name = next(n for n, p in perms.items() if len(p) >= 3)
    broken[name] = torch.arange(len(perms[name])).roll(1)
    assert as_flip_model(merged, graph, broken) is None


def test_merged_resnet_exports_with_mixed_residual_streams(cifar_images) -> None:
    """A torchvision ResNet18 (the same family as ResNet50): residual streams share one
    layout across convs, BatchNorms and downsamples."""
    torch.manual_seed(0)
    model = with_random_bn_state(torchvision.models.resnet18(num_classes=5)).double().eval()
    x = nn.functional.interpolate(cifar_images[:3], size=(33, 33), mode="bilinear")
    graph = analyse_graph(model, x[:1])
    perms = involutions(graph, seed=1)
    merged = nearest_gcnn(model, graph, perms)
    flip = as_flip_model(merged, graph, perms)
    assert type(flip) is FlipResNet and mixed_layouts(flip) >= 2
    assert_same_outputs(merged, flip, x, rtol=1e-10)
    assert_flip_equivariant(flip, x)
    assert flip_equivariance_error(model, x) > 1e-3  # negative control


def test_flip_classes_come_from_the_registry() -> None:
    assert FLIP_CLASSES[VGG] == (FlipVGG, None)
    assert FLIP_CLASSES[torchvision.models.ResNet] == (FlipResNet, "conv1")
    assert VGG in set(FLIP_CLASSES)
    with pytest.raises(KeyError):
        FLIP_CLASSES[nn.Sequential]


def test_merged_torchvision_vgg_exports_with_a_spatial_flip_linear(cifar_images) -> None:
    """torchvision's VGG layout: the Linear on the flattened 7×7 map becomes a spatial
    FlipLinear with mixed input channels, the hidden Linear a mixed→mixed FlipLinear."""
    torch.manual_seed(0)
    model = gcnn.create_model("tv_vgg11_bn", width=1 / 8, hidden=12, num_classes=4)
    model = with_random_bn_state(model).double().eval()
    x = cifar_images[:3]
    graph = analyse_graph(model, x[:1])
    perms = involutions(graph, seed=2)
    merged = nearest_gcnn(model, graph, perms)
    flip = as_flip_model(merged, graph, perms)
    assert type(flip) is FlipTorchvisionVGG
    head = flip.classifier[0]
    assert isinstance(head, FlipLinear) and head.spatial == (7, 7)
    assert isinstance(flip.classifier[3], FlipLinear)
    assert_same_outputs(merged, flip, x, rtol=1e-10)
    assert_flip_equivariant(flip, x)
    assert flip_equivariance_error(model, x) > 1e-3  # negative control
