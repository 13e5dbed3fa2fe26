"""resnet50 and resnet50_flip (every registered backend) at small exact sizes and at 224/225."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import gcnn
from gcnn.exactness import FlipExactnessWarning, flip_exactness
from gcnn.testing import assert_flip_equivariant, flip_equivariance_error
from tests.models.test_vgg import with_random_bn_state

RESNET_FLIP = sorted(n for n in gcnn.list_models() if n.startswith("resnet50_flip"))
BROKEN = 1e-4


@pytest.fixture(scope="module", params=RESNET_FLIP)
def flip_resnet(request) -> nn.Module:
    torch.manual_seed(0)
    return with_random_bn_state(gcnn.create_model(request.param, num_classes=10)).double()


@pytest.fixture(scope="module")
def plain_resnet() -> nn.Module:
    torch.manual_seed(0)
    return with_random_bn_state(gcnn.resnet50(num_classes=10)).double()


def quiet(model: nn.Module, x: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlipExactnessWarning)
        return flip_equivariance_error(model, x)


@pytest.mark.parametrize("size", [33, 65])
@pytest.mark.parametrize("train", [False, True])
def test_resnet50_flip_is_invariant_at_exact_sizes(flip_resnet, size, train, cifar_images) -> None:
    x = nn.functional.interpolate(cifar_images[:2], size=(size, size), mode="bilinear")
    assert_flip_equivariant(flip_resnet.train(train), x, rtol=1e-10)


def test_plain_resnet50_is_not_invariant(plain_resnet, cifar_images) -> None:
    """Negative control: same check, plain model, exact size."""
    x = nn.functional.interpolate(cifar_images[:2], size=(33, 33), mode="bilinear")
    assert quiet(plain_resnet.eval(), x) > BROKEN


@pytest.mark.parametrize("size", [33, 34, 47, 65, 66])
def test_rule_predicts_measured_exactness(flip_resnet, size) -> None:
    """Predicted exact ⇔ measured exact; exact exactly at widths 32k + 1."""
    predicted = flip_exactness(flip_resnet, (33, size), search=0).exact
    assert predicted == (size % 32 == 1)
    torch.manual_seed(size)
    err = quiet(flip_resnet.eval(), torch.rand(1, 3, 33, size, dtype=torch.float64))
    assert err <= 1e-10 if predicted else err > BROKEN


def test_rule_at_224_and_225(flip_resnet) -> None:
    at_224 = flip_exactness(flip_resnet, 224)
    assert not at_224.exact
    broken = {op.module for op in at_224.breaking_ops}
    assert {"conv1", "maxpool"} <= broken
    assert at_224.nearest_exact == (193, 225)
    assert flip_exactness(flip_resnet, 225).exact


def test_measured_at_224_and_225(cifar_images) -> None:
    """The ImageNet size itself, float32, one real image: exact at 225, not at 224."""
    torch.manual_seed(0)
    model = with_random_bn_state(gcnn.resnet50_flip(num_classes=10)).eval()
    image = cifar_images[:1].float()
    x225 = nn.functional.interpolate(image, size=(225, 225), mode="bilinear")
    x224 = nn.functional.interpolate(image, size=(224, 224), mode="bilinear")
    assert_flip_equivariant(model, x225)  # float32 tolerance
    assert quiet(model, x224) > BROKEN


@pytest.mark.parametrize("train", [False, True])
def test_export_is_a_torchvision_resnet_with_identical_outputs(flip_resnet, train, cifar_images):
    x = nn.functional.interpolate(cifar_images[:2], size=(33, 33), mode="bilinear")
    x = torch.cat([x, x.flip(-1)])
    flip_resnet.train(train)
    plain = flip_resnet.export()
    assert type(plain) is torchvision.models.ResNet and plain.training == train
    assert not any("Flip" in type(m).__name__ for m in plain.modules())
    reference = gcnn.resnet50(num_classes=10).double()
    reference.load_state_dict(plain.state_dict())
    expected = flip_resnet(x)
    torch.testing.assert_close(plain(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reference.train(train)(x), expected, rtol=1e-12, atol=1e-12)


def test_resnet50_is_torchvisions() -> None:
    model = gcnn.resnet50()
    reference = torchvision.models.resnet50()
    assert type(model) is torchvision.models.ResNet
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert gcnn.resnet50(num_classes=7).fc.out_features == 7
