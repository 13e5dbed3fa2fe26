"""Model families in the registry: which models belong together, asked by name or by class."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

import gcnn
from gcnn.models import FlipResNet, FlipVGG, registry
from gcnn.models.registry import (
    ModelFamily,
    class_twin,
    family_of_class,
    is_flip_arch,
    model_entry,
    register_family,
    register_model,
    twin_name,
)
from gcnn.models.vgg import VGG


@pytest.mark.parametrize(
    ("name", "kind", "plain", "flip", "escnn"),
    [
        ("vgg11", "plain", "vgg11", "vgg11_flip", "vgg11_flip_escnn"),
        ("vgg11_flip_escnn", "escnn", "vgg11", "vgg11_flip", "vgg11_flip_escnn"),
        ("resnet50_flip", "flip", "resnet50", "resnet50_flip", "resnet50_flip_escnn"),
    ],
)
def test_every_model_knows_its_twins(name, kind, plain, flip, escnn) -> None:
    entry = model_entry(name)
    assert entry is not None and entry.kind == kind
    assert is_flip_arch(name) == (kind != "plain")
    assert (twin_name(name, "plain"), twin_name(name, "flip"), twin_name(name, "escnn")) == (
        plain,
        flip,
        escnn,
    )


def test_classes_know_their_family() -> None:
    assert class_twin(FlipVGG, "plain") is VGG and class_twin(VGG, "flip") is FlipVGG
    assert class_twin(FlipResNet, "plain") is torchvision.models.ResNet
    assert family_of_class(torchvision.models.ResNet)[0].stem == "conv1"  # type: ignore[index]
    assert family_of_class(nn.Sequential) is None and class_twin(nn.Sequential, "flip") is None
    from gcnn.escnn import EscnnVGG

    assert class_twin(FlipVGG, "escnn") is EscnnVGG and class_twin(EscnnVGG, "flip") is FlipVGG


def test_names_are_not_tested_by_substring(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain model whose name contains "flip" is plain; a flip model without it is flip
    (the old ``"flip" in arch`` test got both wrong)."""
    from gcnn.train.regimes import is_flip_model

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    register_model("flipper", gcnn.vgg11, variant="flipper", kind="plain", family="vgg")
    register_model("gcnn_vgg", gcnn.vgg11_flip, variant="flipper", kind="flip", family="vgg")
    assert not is_flip_arch("flipper") and is_flip_arch("gcnn_vgg")
    assert twin_name("flipper", "flip") == "gcnn_vgg"
    plain = gcnn.create_model("flipper", width=0.0625)
    assert not is_flip_model("flipper", plain)
    assert is_flip_model("gcnn_vgg", gcnn.create_model("gcnn_vgg", width=0.0625))
    assert not is_flip_arch("not_registered")


def test_registration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    with pytest.raises(ValueError, match="already registered"):
        register_model("vgg11", gcnn.vgg11)
    with pytest.raises(ValueError, match="unknown model family"):
        register_model("x_model", gcnn.vgg11, family="nope")
    with pytest.raises(ValueError, match="kind must be one of"):
        register_model("x_model", gcnn.vgg11, kind="gcnn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        register_family(ModelFamily("vgg"))
    with pytest.raises(ValueError, match="unknown kinds"):
        register_family(ModelFamily("new", {"quantum": VGG}))  # type: ignore[dict-item]
